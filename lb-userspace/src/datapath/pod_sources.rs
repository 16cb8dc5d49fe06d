//! The addresses each pod may send from, for the datapath's source checks
//! (lb-ebpf `spoof.rs`): what the node's host routes send through the pod's
//! interface — the /32 routes a routed CNI (ptp, kindnet, Calico) installs
//! for each pod. An interface without such a route is not checked: its
//! addresses are unknown (a bridge CNI, a pod being set up).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData};
use lb_common::PodSource;

/// Host routes (prefix length 32) of the main table, by interface, from
/// the text of /proc/net/route.
pub fn host_routes(table: &str) -> BTreeMap<String, BTreeSet<Ipv4Addr>> {
    let mut out: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(iface), Some(dest), Some(mask)) = (cols.first(), cols.get(1), cols.get(7)) else {
            continue;
        };
        // Hex of the address as the kernel holds it (network order).
        let (Ok(dest), Ok(mask)) = (u32::from_str_radix(dest, 16), u32::from_str_radix(mask, 16))
        else {
            continue;
        };
        if mask == u32::MAX && dest != 0 {
            out.entry(iface.to_string())
                .or_default()
                .insert(Ipv4Addr::from(u32::from_be(dest)));
        }
    }
    out
}

/// What `pod_sources` holds, kept in step with the wanted addresses.
#[derive(Default)]
pub struct PodSources {
    written: BTreeMap<u32, BTreeSet<Ipv4Addr>>,
}

fn key(ifindex: u32, ip: Option<Ipv4Addr>) -> PodSource {
    PodSource {
        ifindex,
        ip_be: ip.map_or(0, crate::datapath::addr::ip_be),
    }
}

impl PodSources {
    /// Writes the difference between what the map holds and `wanted`
    /// (interface index → its pod's addresses).
    pub fn sync(
        &mut self,
        map: &mut BpfHashMap<&mut MapData, PodSource, u8>,
        wanted: BTreeMap<u32, BTreeSet<Ipv4Addr>>,
    ) -> Result<()> {
        for (ifindex, addrs) in &self.written {
            let kept = wanted.get(ifindex);
            for ip in addrs
                .iter()
                .filter(|ip| !kept.is_some_and(|k| k.contains(ip)))
            {
                let _ = map.remove(&key(*ifindex, Some(*ip)));
            }
            if kept.is_none() {
                let _ = map.remove(&key(*ifindex, None));
            }
        }
        for (ifindex, addrs) in &wanted {
            let had = self.written.get(ifindex);
            for ip in addrs
                .iter()
                .filter(|ip| !had.is_some_and(|h| h.contains(ip)))
            {
                map.insert(key(*ifindex, Some(*ip)), 1, 0)
                    .context("writing pod_sources")?;
            }
            // The interface is checked once its addresses are in.
            if had.is_none() {
                map.insert(key(*ifindex, None), 1, 0)
                    .context("writing pod_sources")?;
            }
        }
        self.written = wanted;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_routes_of_pod_interfaces_are_read_from_the_route_table() {
        // /proc/net/route of a node with a ptp CNI: a default route, the
        // node's subnet, another node's pod CIDR and two pods' /32 routes.
        let table = "\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\tFE00630A\t0003\t0\t0\t0\t00000000\t0\t0\t0
eth0\t0000630A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth0\t0001F40A\t0200630A\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0
veth1a2b\t0300F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
veth3c4d\t0400F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
";
        let routes = host_routes(table);
        assert_eq!(routes.len(), 2, "{routes:?}");
        assert_eq!(
            routes["veth1a2b"],
            BTreeSet::from([Ipv4Addr::new(10, 244, 0, 3)])
        );
        assert_eq!(
            routes["veth3c4d"],
            BTreeSet::from([Ipv4Addr::new(10, 244, 0, 4)])
        );
    }
}

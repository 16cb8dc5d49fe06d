//! Which pods' sockets the socket hooks translate (`--socket-lb pods`):
//! `sock_pods` maps the network namespace (cookie) of each pod of this node
//! to the pod's address, for every pod found in its namespace and not
//! opted out. The node's pods are the addresses its host routes send
//! through attached pod interfaces (as for the source checks); a pod whose
//! namespace is not found yet is left to the tc programs until it is.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData};
use tracing::{debug, info};

use super::pod_netns::{self, Netns};

/// Pods not found in a namespace are looked for again at most this often.
const RESCAN_UNFOUND: Duration = Duration::from_secs(1);

/// Pods by interface index: the addresses routed through each.
pub type PodAddresses = BTreeMap<u32, BTreeSet<Ipv4Addr>>;

/// A pod whose sockets are translated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketPod {
    pub ip: Ipv4Addr,
    pub netns: PathBuf,
}

pub struct SocketPods {
    /// Where namespaces are bound by name, and the processes' directory.
    netns_dir: PathBuf,
    proc: PathBuf,
    pods: PodAddresses,
    excluded: BTreeSet<Ipv4Addr>,
    /// Namespace cookie → the pod found in it, from the last scan.
    found: BTreeMap<u64, SocketPod>,
    last_scan: Option<Instant>,
    /// What `sock_pods` holds.
    written: BTreeMap<u64, Ipv4Addr>,
}

impl SocketPods {
    pub fn new(netns_dir: PathBuf, proc: PathBuf) -> Self {
        Self {
            netns_dir,
            proc,
            pods: PodAddresses::new(),
            excluded: BTreeSet::new(),
            found: BTreeMap::new(),
            last_scan: None,
            written: BTreeMap::new(),
        }
    }

    /// This node's pods changed (or not): the namespaces are scanned again
    /// when they did, or while some pod's namespace is still unknown.
    pub fn set_pods(&mut self, pods: PodAddresses) {
        if pods != self.pods {
            self.pods = pods;
            self.last_scan = None;
        }
    }

    /// Pods whose sockets are left alone (`switchyard.io/socket-lb: "off"`).
    pub fn set_excluded(&mut self, excluded: BTreeSet<Ipv4Addr>) {
        self.excluded = excluded;
    }

    /// The pods whose sockets are translated now, by namespace cookie.
    pub fn translated(&self) -> impl Iterator<Item = (&u64, &SocketPod)> {
        self.found
            .iter()
            .filter(|(cookie, _)| self.written.contains_key(cookie))
    }

    fn wanted_ips(&self) -> BTreeSet<Ipv4Addr> {
        self.pods
            .values()
            .flatten()
            .filter(|ip| !self.excluded.contains(ip))
            .copied()
            .collect()
    }

    fn scan_due(&self) -> bool {
        let unfound = self
            .wanted_ips()
            .into_iter()
            .any(|ip| !self.found.values().any(|p| p.ip == ip));
        match self.last_scan {
            None => true,
            Some(at) => unfound && at.elapsed() >= RESCAN_UNFOUND,
        }
    }

    fn scan(&mut self) {
        let all: BTreeSet<Ipv4Addr> = self.pods.values().flatten().copied().collect();
        let candidates = pod_netns::candidates(&self.netns_dir, &self.proc);
        self.found = pods_in(pod_netns::list(candidates), &all);
        self.last_scan = Some(Instant::now());
        debug!(
            found = self.found.len(),
            pods = all.len(),
            "pod namespaces scanned"
        );
    }

    /// Scans if due, then writes the difference into `sock_pods`.
    pub fn sync(&mut self, map: &mut BpfHashMap<MapData, u64, u32>) -> Result<()> {
        if self.scan_due() {
            self.scan();
        }
        let wanted: BTreeMap<u64, Ipv4Addr> = self
            .found
            .iter()
            .filter(|(_, pod)| !self.excluded.contains(&pod.ip))
            .map(|(cookie, pod)| (*cookie, pod.ip))
            .collect();
        if wanted == self.written {
            return Ok(());
        }
        for cookie in self.written.keys().filter(|c| !wanted.contains_key(c)) {
            let _ = map.remove(cookie);
        }
        for (cookie, ip) in &wanted {
            if self.written.get(cookie) != Some(ip) {
                map.insert(cookie, super::addr::ip_be(*ip), 0)
                    .with_context(|| format!("writing sock_pods for pod {ip}"))?;
            }
        }
        info!(pods = wanted.len(), "pods with socket load balancing");
        self.written = wanted;
        Ok(())
    }
}

/// The namespaces holding exactly one of `pods`' addresses, by cookie. A
/// namespace with none is not one of this node's pods (the node's own,
/// another node's pods sharing the kernel); one with several is not a pod.
fn pods_in(namespaces: Vec<Netns>, pods: &BTreeSet<Ipv4Addr>) -> BTreeMap<u64, SocketPod> {
    namespaces
        .into_iter()
        .filter_map(|ns| {
            let mut ours = ns.addrs.iter().filter(|ip| pods.contains(ip));
            let (Some(ip), None) = (ours.next(), ours.next()) else {
                return None;
            };
            Some((
                ns.cookie,
                SocketPod {
                    ip: *ip,
                    netns: ns.path,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(cookie: u64, addrs: &[[u8; 4]]) -> Netns {
        Netns {
            path: format!("/run/netns/n{cookie}").into(),
            cookie,
            addrs: addrs.iter().map(|a| Ipv4Addr::from(*a)).collect(),
        }
    }

    #[test]
    fn a_pod_namespace_holds_exactly_one_of_the_nodes_pod_addresses() {
        let pods: BTreeSet<Ipv4Addr> = [[10, 0, 1, 5], [10, 0, 1, 6]]
            .into_iter()
            .map(Ipv4Addr::from)
            .collect();
        let found = pods_in(
            vec![
                ns(1, &[[127, 0, 0, 1], [10, 0, 1, 5]]),
                // Another node's pod on the same kernel.
                ns(2, &[[10, 0, 2, 5]]),
                // The node itself, routing to both.
                ns(3, &[[10, 0, 1, 5], [10, 0, 1, 6], [192, 168, 0, 1]]),
                ns(4, &[[10, 0, 1, 6]]),
            ],
            &pods,
        );
        let got: Vec<(u64, Ipv4Addr)> = found.iter().map(|(c, p)| (*c, p.ip)).collect();
        assert_eq!(
            got,
            vec![
                (1, Ipv4Addr::new(10, 0, 1, 5)),
                (4, Ipv4Addr::new(10, 0, 1, 6))
            ]
        );
    }
}

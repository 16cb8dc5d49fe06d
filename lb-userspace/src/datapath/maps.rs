//! Typed handles on the pinned maps, shared by the agent and `inspect`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray};
use lb_common::{
    AffinityEntry, AffinityKey, Backend, BackendId, BackendSlot, ConnEntry, FlowKey,
    InterfaceStatus, NatConfig, SERVICE_NAME_LEN, ServiceCounters, ServiceKey, ServiceName,
    SourceRange, map_names,
};

pub struct PinnedMaps {
    pub services: HashMap<MapData, ServiceKey, BackendSlot>,
    pub backends: HashMap<MapData, BackendId, Backend>,
    pub conntrack: HashMap<MapData, FlowKey, ConnEntry>,
    pub service_names: HashMap<MapData, u32, ServiceName>,
    pub reason_stats: PerCpuArray<MapData, u64>,
    pub service_stats: aya::maps::PerCpuHashMap<MapData, u32, ServiceCounters>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityEntry>,
    pub nat_config: Array<MapData, NatConfig>,
    pub source_ranges: LpmTrie<MapData, SourceRange, u8>,
    pub interfaces: HashMap<MapData, u32, InterfaceStatus>,
    pub admission: Array<MapData, lb_common::Admission>,
    pub ct_sources: HashMap<MapData, u32, u32>,
    pub sock_lb: HashMap<MapData, lb_common::SockKey, lb_common::SockAddr>,
    pub sock_pods: HashMap<MapData, u64, u32>,
    pub backend_flows: HashMap<MapData, BackendId, lb_common::BackendFlows>,
    pub policy_pods: HashMap<MapData, u32, lb_common::PodIsolation>,
    pub policy_rules: LpmTrie<MapData, lb_common::PolicyRuleKey, lb_common::PolicyPorts>,
    pub policy_notes: HashMap<MapData, u32, lb_common::PolicyNote>,
    pub policy_active: Array<MapData, u32>,
    pub policy_stats:
        aya::maps::PerCpuHashMap<MapData, lb_common::PolicyStatsKey, lb_common::PolicyCounters>,
    pub policy_hits: aya::maps::PerCpuArray<MapData, lb_common::PolicyHits>,
    pub policy_names: HashMap<MapData, u32, lb_common::PolicyNote>,
}

fn open(pin_dir: &Path, name: &str) -> Result<Map> {
    let path: PathBuf = pin_dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "opening pinned map {} (is the agent running, or was it started with another --pin-dir?)",
            path.display()
        )
    })?;
    Map::from_map_data(data).with_context(|| format!("map {}", path.display()))
}

impl PinnedMaps {
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Ok(Self {
            services: HashMap::try_from(open(pin_dir, map_names::SERVICES)?)?,
            backends: HashMap::try_from(open(pin_dir, map_names::BACKENDS)?)?,
            conntrack: HashMap::try_from(open(pin_dir, map_names::CONNTRACK)?)?,
            service_names: HashMap::try_from(open(pin_dir, map_names::SERVICE_NAMES)?)?,
            reason_stats: PerCpuArray::try_from(open(pin_dir, map_names::REASON_STATS)?)?,
            service_stats: aya::maps::PerCpuHashMap::try_from(open(
                pin_dir,
                map_names::SERVICE_STATS,
            )?)?,
            affinity: HashMap::try_from(open(pin_dir, map_names::AFFINITY)?)?,
            nat_config: Array::try_from(open(pin_dir, map_names::NAT_CONFIG)?)?,
            source_ranges: LpmTrie::try_from(open(pin_dir, map_names::SOURCE_RANGES)?)?,
            interfaces: HashMap::try_from(open(pin_dir, map_names::INTERFACES)?)?,
            admission: Array::try_from(open(pin_dir, map_names::ADMISSION)?)?,
            ct_sources: HashMap::try_from(open(pin_dir, map_names::CT_SOURCES)?)?,
            sock_lb: HashMap::try_from(open(pin_dir, map_names::SOCK_LB)?)?,
            sock_pods: HashMap::try_from(open(pin_dir, map_names::SOCK_PODS)?)?,
            backend_flows: HashMap::try_from(open(pin_dir, map_names::BACKEND_FLOWS)?)?,
            policy_pods: HashMap::try_from(open(pin_dir, map_names::POLICY_PODS)?)?,
            policy_rules: LpmTrie::try_from(open(pin_dir, map_names::POLICY_RULES)?)?,
            policy_notes: HashMap::try_from(open(pin_dir, map_names::POLICY_NOTES)?)?,
            policy_active: Array::try_from(open(pin_dir, map_names::POLICY_ACTIVE)?)?,
            policy_stats: aya::maps::PerCpuHashMap::try_from(open(
                pin_dir,
                map_names::POLICY_STATS,
            )?)?,
            policy_hits: aya::maps::PerCpuArray::try_from(open(pin_dir, map_names::POLICY_HITS)?)?,
            policy_names: HashMap::try_from(open(pin_dir, map_names::POLICY_NAMES)?)?,
        })
    }

    /// The service name stored for `service_id`, if any.
    pub fn service_name(&self, service_id: u32) -> Option<String> {
        let stored = self.service_names.get(&service_id, 0).ok()?;
        decode_name(&stored)
    }

    /// Sum of a per-CPU counter over all CPUs.
    pub fn reason_count(&self, reason: u32) -> u64 {
        self.reason_stats
            .get(&reason, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    /// Entries in the affinity map (walks the keys).
    pub fn affinity_entries(&self) -> Result<usize> {
        let mut n = 0;
        for key in self.affinity.keys() {
            key.context("reading affinity keys")?;
            n += 1;
        }
        Ok(n)
    }

    pub fn service_counters(&self, service_id: u32) -> ServiceCounters {
        let mut total = ServiceCounters::default();
        if let Ok(per_cpu) = self.service_stats.get(&service_id, 0) {
            for c in per_cpu.iter() {
                total.packets += c.packets;
                total.bytes += c.bytes;
                total.new_flows += c.new_flows;
                total.no_backend += c.no_backend;
            }
        }
        total
    }
}

pub fn encode_name(name: &str) -> ServiceName {
    let mut stored = ServiceName::default();
    // Truncate on a char boundary so the stored bytes stay valid UTF-8.
    let mut end = name.len().min(SERVICE_NAME_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    stored.name[..end].copy_from_slice(&name.as_bytes()[..end]);
    stored
}

pub fn decode_name(stored: &ServiceName) -> Option<String> {
    let end = stored
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(SERVICE_NAME_LEN);
    if end == 0 {
        return None;
    }
    Some(String::from_utf8_lossy(&stored.name[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_truncate_on_char_boundary() {
        assert_eq!(
            decode_name(&encode_name("default/web:http")).as_deref(),
            Some("default/web:http")
        );
        assert_eq!(decode_name(&ServiceName::default()), None);
        let long = "é".repeat(SERVICE_NAME_LEN);
        let decoded = decode_name(&encode_name(&long)).expect("non-empty");
        assert!(decoded.len() <= SERVICE_NAME_LEN);
        assert!(decoded.chars().all(|c| c == 'é'));
    }
}

mod service_maps_impl {
    use anyhow::{Context, Result};
    use aya::maps::PerCpuValues;
    use lb_common::{Backend, BackendId, BackendSlot, ServiceCounters, ServiceKey, map_names};

    use std::net::Ipv4Addr;

    use aya::maps::lpm_trie::Key;
    use lb_common::SourceRange;

    use super::{PinnedMaps, decode_name, encode_name};
    use crate::datapath::addr::{ip_be, ip_from_be};

    /// The trie matches the service ID in full, then the source prefix.
    fn range_key(service_id: u32, ip: Ipv4Addr, prefix_len: u8) -> Key<SourceRange> {
        Key::new(
            32 + u32::from(prefix_len.min(32)),
            SourceRange {
                service_id_be: service_id.to_be(),
                src_ip_be: ip_be(ip),
            },
        )
    }
    use crate::datapath::sync::{MapError, ServiceMaps};

    /// Runs a map insert, retrying while the kernel reports ENOMEM.
    ///
    /// Hash maps with BPF_F_NO_PREALLOC take elements from per-CPU caches
    /// that the kernel refills asynchronously (irq_work); inserting tens of
    /// thousands of entries back to back (a full sync at 100 000 services)
    /// can find a cache empty for a moment, which is not a lack of memory.
    /// A short wait lets the refill run. A full map (E2BIG) is not retried.
    fn with_alloc_retry(
        mut insert: impl FnMut() -> Result<(), aya::maps::MapError>,
    ) -> Result<(), aya::maps::MapError> {
        const ATTEMPTS: u32 = 8;
        let mut wait = std::time::Duration::from_micros(50);
        for _ in 1..ATTEMPTS {
            match insert() {
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOMEM) =>
                {
                    std::thread::sleep(wait);
                    wait *= 2;
                }
                other => return other,
            }
        }
        insert()
    }

    /// `bpf_map_update_elem` flag: only if no entry exists.
    const CREATE_ONLY: u64 = 1;

    /// An entry that exists already is fine to create: it stays as it is.
    fn ignore_exists(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
        match r {
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// Absent keys are fine to delete: the goal state is "not there".
    fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<()> {
        match r {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    impl PinnedMaps {
        /// Removes the affinity pins of backends that left their service, so
        /// their clients are balanced afresh. Returns how many went.
        pub fn flush_affinity(
            &mut self,
            departed: &[crate::datapath::sync::Departure],
        ) -> Result<usize> {
            // Only frontends with affinity have pins: no walk of the map
            // for the rest (a rollout of a service without affinity).
            let gone: std::collections::BTreeSet<(u32, u32)> = departed
                .iter()
                .filter(|d| d.affinity)
                .map(|d| (d.service_id, d.backend_id))
                .collect();
            if gone.is_empty() {
                return Ok(0);
            }
            let stale: Vec<lb_common::AffinityKey> = self
                .affinity
                .iter()
                .filter_map(|r| r.ok())
                .filter(|(k, v)| gone.contains(&(k.service_id, v.backend_id)))
                .map(|(k, _)| k)
                .collect();
            for key in &stale {
                ignore_missing(self.affinity.remove(key)).context("removing affinity pin")?;
            }
            Ok(stale.len())
        }
    }

    impl crate::datapath::conntrack::ConntrackTable for PinnedMaps {
        fn entries(&self) -> Result<Vec<(lb_common::FlowKey, lb_common::ConnEntry)>> {
            // Entries can vanish (LRU eviction, the datapath) while we walk.
            Ok(self.conntrack.iter().filter_map(|r| r.ok()).collect())
        }

        fn get(&self, key: &lb_common::FlowKey) -> Result<Option<lb_common::ConnEntry>> {
            match self.conntrack.get(key, 0) {
                Ok(entry) => Ok(Some(entry)),
                Err(aya::maps::MapError::KeyNotFound) => Ok(None),
                Err(e) => Err(e).context("reading conntrack entry"),
            }
        }

        fn remove(&mut self, key: &lb_common::FlowKey) -> Result<()> {
            ignore_missing(self.conntrack.remove(key)).context("removing conntrack entry")
        }

        /// BPF_MAP_LOOKUP_AND_DELETE_ELEM takes the entry out and returns it
        /// in one step; one that turns out to be newer (its tuple reused
        /// since the sweep looked) is put back at once, unless the datapath
        /// has already made an even newer one.
        fn remove_if_created(&mut self, key: &lb_common::FlowKey, created_ns: u64) -> Result<bool> {
            use aya::maps::IterableMap;
            use std::os::fd::{AsFd, AsRawFd};
            let fd = IterableMap::<lb_common::FlowKey, lb_common::ConnEntry>::map(&self.conntrack)
                .fd()
                .as_fd()
                .as_raw_fd();
            let Some(taken) = lookup_and_delete(fd, key)? else {
                return Ok(false);
            };
            if taken.created_ns == created_ns {
                return Ok(true);
            }
            match self.conntrack.insert(key, taken, BPF_NOEXIST) {
                Ok(()) => {}
                // The datapath made a newer one meanwhile: that one stays.
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e).context("putting back a reused conntrack entry"),
            }
            Ok(false)
        }
    }

    /// `bpf_map_update_elem` flag: only if no entry exists.
    const BPF_NOEXIST: u64 = 1;

    /// The raw BPF_MAP_LOOKUP_AND_DELETE_ELEM (aya has no wrapper for
    /// hash maps): the entry removed, or None if there was none.
    fn lookup_and_delete(
        fd: std::os::fd::RawFd,
        key: &lb_common::FlowKey,
    ) -> Result<Option<lb_common::ConnEntry>> {
        #[repr(C)]
        struct Attr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value: u64,
            flags: u64,
        }
        const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
        let mut value = lb_common::ConnEntry::default();
        let attr = Attr {
            map_fd: fd as u32,
            _pad: 0,
            key: key as *const lb_common::FlowKey as u64,
            value: &mut value as *mut lb_common::ConnEntry as u64,
            flags: 0,
        };
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_AND_DELETE_ELEM,
                &attr as *const Attr,
                std::mem::size_of::<Attr>(),
            )
        };
        if rc == 0 {
            return Ok(Some(value));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOENT) {
            return Ok(None);
        }
        Err(err).context("taking a conntrack entry out (BPF_MAP_LOOKUP_AND_DELETE_ELEM)")
    }

    /// A write to `map` that failed: full (E2BIG), or anything else.
    fn written(
        map: &'static str,
        what: impl FnOnce() -> String,
        r: Result<(), aya::maps::MapError>,
    ) -> Result<(), MapError> {
        match r {
            Ok(()) => Ok(()),
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::E2BIG) =>
            {
                Err(MapError::Full { map })
            }
            Err(e) => Err(MapError::Os {
                what: what(),
                source: e.into(),
            }),
        }
    }

    /// A removal that failed; an absent key is fine.
    fn removed(
        what: impl FnOnce() -> String,
        r: Result<(), aya::maps::MapError>,
    ) -> Result<(), MapError> {
        ignore_missing(r).map_err(|source| MapError::Os {
            what: what(),
            source,
        })
    }

    impl ServiceMaps for PinnedMaps {
        /// A new backend also gets its open-flow counter, at 0, before any
        /// slot names it; a rewritten one keeps its count.
        fn put_backend(&mut self, id: BackendId, backend: Backend) -> Result<(), MapError> {
            let r =
                with_alloc_retry(|| ignore_exists(self.backend_flows.insert(id, 0, CREATE_ONLY)));
            written(
                map_names::BACKEND_FLOWS,
                || format!("counting backend {id}'s flows"),
                r,
            )?;
            let r = with_alloc_retry(|| self.backends.insert(id, backend, 0));
            written(map_names::BACKENDS, || format!("writing backend {id}"), r)
        }

        fn delete_backend(&mut self, id: BackendId) -> Result<(), MapError> {
            removed(
                || format!("removing backend {id}"),
                self.backends.remove(&id),
            )?;
            removed(
                || format!("removing backend {id}'s flow counter"),
                self.backend_flows.remove(&id),
            )
        }

        fn put_service(&mut self, key: ServiceKey, value: BackendSlot) -> Result<(), MapError> {
            let r = with_alloc_retry(|| self.services.insert(key, value, 0));
            written(
                map_names::SERVICES,
                || format!("writing services entry, slot {}", key.slot),
                r,
            )
        }

        fn delete_service(&mut self, key: ServiceKey) -> Result<(), MapError> {
            removed(
                || format!("removing services entry, slot {}", key.slot),
                self.services.remove(&key),
            )
        }

        fn assign_service_id(&mut self, service_id: u32, name: &str) -> Result<(), MapError> {
            let r =
                with_alloc_retry(|| self.service_names.insert(service_id, encode_name(name), 0));
            written(
                map_names::SERVICE_NAMES,
                || format!("naming service ID {service_id}"),
                r,
            )?;
            let cpus = aya::util::nr_cpus().map_err(|(what, e)| MapError::Os {
                what: what.to_string(),
                source: e.into(),
            })?;
            let r = with_alloc_retry(|| {
                let zero = PerCpuValues::try_from(vec![ServiceCounters::default(); cpus])
                    .map_err(aya::maps::MapError::from)?;
                self.service_stats.insert(service_id, zero, 0)
            });
            written(
                map_names::SERVICE_STATS,
                || format!("zeroing counters of service ID {service_id}"),
                r,
            )
        }

        fn release_service_id(&mut self, service_id: u32) -> Result<(), MapError> {
            removed(
                || format!("removing the name of service ID {service_id}"),
                self.service_names.remove(&service_id),
            )?;
            removed(
                || format!("removing the counters of service ID {service_id}"),
                self.service_stats.remove(&service_id),
            )
        }

        fn read_services(&self) -> Result<Vec<(ServiceKey, BackendSlot)>> {
            self.services
                .iter()
                .map(|r| r.map_err(Into::into))
                .collect()
        }

        fn read_backends(&self) -> Result<Vec<(BackendId, Backend)>> {
            self.backends
                .iter()
                .map(|r| r.map_err(Into::into))
                .collect()
        }

        fn put_source_range(
            &mut self,
            service_id: u32,
            ip: Ipv4Addr,
            prefix_len: u8,
        ) -> Result<(), MapError> {
            let r = self
                .source_ranges
                .insert(&range_key(service_id, ip, prefix_len), 1, 0);
            written(
                map_names::SOURCE_RANGES,
                || format!("writing source range {ip}/{prefix_len} of service ID {service_id}"),
                r,
            )
        }

        fn delete_source_range(
            &mut self,
            service_id: u32,
            ip: Ipv4Addr,
            prefix_len: u8,
        ) -> Result<(), MapError> {
            removed(
                || format!("removing source range {ip}/{prefix_len}"),
                self.source_ranges
                    .remove(&range_key(service_id, ip, prefix_len)),
            )
        }

        fn read_source_ranges(&self, service_id: u32) -> Vec<(Ipv4Addr, u8)> {
            self.source_ranges
                .keys()
                .filter_map(|k| k.ok())
                .filter(|k| u32::from_be(k.data().service_id_be) == service_id)
                .map(|k| {
                    (
                        ip_from_be(k.data().src_ip_be),
                        (k.prefix_len().saturating_sub(32)) as u8,
                    )
                })
                .collect()
        }

        fn read_service_name(&self, service_id: u32) -> Option<String> {
            self.service_names
                .get(&service_id, 0)
                .ok()
                .and_then(|n| decode_name(&n))
        }
    }

    #[cfg(test)]
    mod tests {
        use super::with_alloc_retry;
        use aya::maps::MapError;

        fn failing(errno: i32) -> MapError {
            MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_elem",
                io_error: std::io::Error::from_raw_os_error(errno),
            })
        }

        #[test]
        fn a_momentarily_empty_element_cache_is_waited_out_but_a_full_map_is_not() {
            let mut calls = 0;
            let r = with_alloc_retry(|| {
                calls += 1;
                if calls < 4 {
                    Err(failing(libc::ENOMEM))
                } else {
                    Ok(())
                }
            });
            assert!(r.is_ok());
            assert_eq!(calls, 4);

            let mut calls = 0;
            let r = with_alloc_retry(|| {
                calls += 1;
                Err(failing(libc::E2BIG))
            });
            assert!(r.is_err());
            assert_eq!(calls, 1, "a full map is reported at once");

            let mut calls = 0;
            let r = with_alloc_retry(|| {
                calls += 1;
                Err(failing(libc::ENOMEM))
            });
            assert!(r.is_err(), "gives up in the end");
            assert_eq!(calls, 8);
        }
    }
}

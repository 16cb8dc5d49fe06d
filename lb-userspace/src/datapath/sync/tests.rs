//! Map sync against in-memory maps that check the datapath's invariants
//! after every write.

use super::*;
use crate::datapath::addr::ip_from_be;
use crate::model::{Algorithm, Endpoint, ServicePort, ServicePortName, ServiceType};
use lb_common::service_flags;
use std::net::Ipv4Addr;

/// In-memory maps that check, after every write, what the datapath would
/// check: every slot a master's count covers is present and points at an
/// existing backend.
#[derive(Default)]
pub struct FakeMaps {
    pub services: BTreeMap<ServiceKey, BackendSlot>,
    pub backends: BTreeMap<BackendId, Backend>,
    pub names: BTreeMap<u32, String>,
    pub ranges: BTreeSet<(u32, Ipv4Addr, u8)>,
    pub writes: usize,
}

impl FakeMaps {
    fn check(&self) {
        for (key, master) in self.services.iter().filter(|(k, _)| k.slot == 0) {
            for slot in 1..=master.count {
                let slot_key = ServiceKey { slot, ..*key };
                let entry = self.services.get(&slot_key).unwrap_or_else(|| {
                    panic!(
                        "window: {key:?} count {} but slot {slot} missing",
                        master.count
                    )
                });
                assert!(
                    self.backends.contains_key(&entry.backend_id),
                    "window: slot {slot} of {key:?} points at missing backend {}",
                    entry.backend_id
                );
            }
        }
    }
}

impl ServiceMaps for FakeMaps {
    fn put_backend(&mut self, id: BackendId, backend: Backend) -> Result<(), MapError> {
        self.backends.insert(id, backend);
        self.writes += 1;
        self.check();
        Ok(())
    }
    fn delete_backend(&mut self, id: BackendId) -> Result<(), MapError> {
        self.backends.remove(&id);
        self.writes += 1;
        self.check();
        Ok(())
    }
    fn put_service(&mut self, key: ServiceKey, value: BackendSlot) -> Result<(), MapError> {
        self.services.insert(key, value);
        self.writes += 1;
        self.check();
        Ok(())
    }
    fn delete_service(&mut self, key: ServiceKey) -> Result<(), MapError> {
        self.services.remove(&key);
        self.writes += 1;
        self.check();
        Ok(())
    }
    fn assign_service_id(&mut self, service_id: u32, name: &str) -> Result<(), MapError> {
        self.names.insert(service_id, name.to_string());
        Ok(())
    }
    fn release_service_id(&mut self, service_id: u32) -> Result<(), MapError> {
        self.names.remove(&service_id);
        Ok(())
    }
    fn read_services(&self) -> Result<Vec<(ServiceKey, BackendSlot)>> {
        Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn read_backends(&self) -> Result<Vec<(BackendId, Backend)>> {
        Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
    }
    fn read_service_name(&self, service_id: u32) -> Option<String> {
        self.names.get(&service_id).cloned()
    }
    fn put_source_range(&mut self, service_id: u32, ip: Ipv4Addr, len: u8) -> Result<(), MapError> {
        self.ranges.insert((service_id, ip, len));
        Ok(())
    }
    fn delete_source_range(
        &mut self,
        service_id: u32,
        ip: Ipv4Addr,
        len: u8,
    ) -> Result<(), MapError> {
        self.ranges.remove(&(service_id, ip, len));
        Ok(())
    }
    fn read_source_ranges(&self, service_id: u32) -> Vec<(Ipv4Addr, u8)> {
        self.ranges
            .iter()
            .filter(|(id, _, _)| *id == service_id)
            .map(|(_, ip, len)| (*ip, *len))
            .collect()
    }
}

fn frontend(last: u8, port: u16) -> Frontend {
    Frontend::new(Ipv4Addr::new(10, 96, 0, last), port, Protocol::Tcp)
}

fn state(services: &[(Frontend, &[u8])]) -> DesiredState {
    let mut d = DesiredState::default();
    for (f, backends) in services {
        d.services.insert(
            *f,
            ServicePort::cluster_ip(
                ServicePortName {
                    namespace: "default".into(),
                    name: format!("svc{}", f.ip.octets()[3]),
                    port_name: String::new(),
                },
                *f,
                backends
                    .iter()
                    .map(|last| {
                        Endpoint::ready(BackendAddr {
                            ip: Ipv4Addr::new(10, 244, 0, *last),
                            port: 8080,
                            protocol: Protocol::Tcp,
                        })
                    })
                    .collect(),
            ),
        );
    }
    d
}

impl FakeMaps {
    /// The maps as one canonical line: each frontend (by key order) as
    /// `address:port#service-id[name]` with its slots' backends in slot
    /// order (`-` for a hole), then the backends map by ID.
    pub fn dump(&self) -> String {
        let mut frontends = Vec::new();
        for (key, master) in self.services.iter().filter(|(k, _)| k.slot == 0) {
            let slots: Vec<String> = (1..=master.count)
                .map(|slot| {
                    let id = self
                        .services
                        .get(&ServiceKey { slot, ..*key })
                        .map(|s| s.backend_id);
                    id.map_or("-".into(), |id| format!("b{id}"))
                })
                .collect();
            frontends.push(format!(
                "{}:{}#{}[{}] {}",
                ip_from_be(key.vip_be),
                u16::from_be(key.port_be),
                master.service_id,
                self.names
                    .get(&master.service_id)
                    .map_or("?", |n| n.as_str()),
                if slots.is_empty() {
                    "(no slots)".to_string()
                } else {
                    slots.join(",")
                }
            ));
        }
        let backends: Vec<String> = self
            .backends
            .iter()
            .map(|(id, b)| format!("b{id}={}:{}", ip_from_be(b.ip_be), u16::from_be(b.port_be)))
            .collect();
        format!("{} | {}", frontends.join("; "), backends.join(" "))
    }
}

fn backend_ips(sync: &MapSync<FakeMaps>, f: &Frontend) -> Vec<u8> {
    let m = sync.maps();
    let master = m.services[&frontend_key(f, 0)];
    let mut ips: Vec<u8> = (1..=master.count)
        .map(|s| {
            let id = m.services[&frontend_key(f, s)].backend_id;
            ip_from_be(m.backends[&id].ip_be).octets()[3]
        })
        .collect();
    ips.sort();
    ips
}

#[test]
fn creates_updates_and_deletes_without_windows() {
    let a = frontend(1, 80);
    let b = frontend(2, 53);
    let mut sync = MapSync::adopt(FakeMaps::default()).expect("adopt");
    let r = sync.apply(&state(&[(a, &[1, 2, 3]), (b, &[])]));
    assert_eq!((r.services_created, r.backends_created), (2, 3));
    assert_eq!(backend_ips(&sync, &a), vec![1, 2, 3]);
    assert_eq!(sync.maps().services[&frontend_key(&b, 0)].count, 0);

    // Shrink, grow and replace.
    sync.apply(&state(&[(a, &[2]), (b, &[4])]));
    assert_eq!(backend_ips(&sync, &a), vec![2]);
    assert_eq!(backend_ips(&sync, &b), vec![4]);
    assert_eq!(sync.maps().backends.len(), 2, "backends 1 and 3 removed");
    assert!(!sync.maps().services.contains_key(&frontend_key(&a, 2)));

    let r = sync.apply(&state(&[(b, &[4, 5])]));
    assert_eq!(r.services_deleted, 1);
    assert!(!sync.maps().services.contains_key(&frontend_key(&a, 0)));
    assert_eq!(sync.maps().services.len(), 3, "b master + 2 slots");
    assert_eq!(sync.maps().names.len(), 1);
}

/// The same steps as above, the whole maps read back as text after each:
/// what is written, and what is not (IDs kept, slots in place).
#[test]
fn map_contents_after_each_step_match_the_golden_text() {
    let (a, b) = (frontend(1, 80), frontend(2, 53));
    let mut sync = MapSync::adopt(FakeMaps::default()).expect("adopt");
    let steps: [(&str, DesiredState, &str); 3] = [
        (
            "create",
            state(&[(a, &[1, 2, 3]), (b, &[])]),
            "10.96.0.1:80#1[default/svc1] b1,b2,b3; 10.96.0.2:53#2[default/svc2] (no slots) | b1=10.244.0.1:8080 b2=10.244.0.2:8080 b3=10.244.0.3:8080",
        ),
        (
            "shrink, grow and replace",
            state(&[(a, &[2]), (b, &[4])]),
            "10.96.0.1:80#1[default/svc1] b2; 10.96.0.2:53#2[default/svc2] b4 | b2=10.244.0.2:8080 b4=10.244.0.4:8080",
        ),
        (
            "delete a, grow b",
            state(&[(b, &[4, 5])]),
            "10.96.0.2:53#2[default/svc2] b4,b5 | b4=10.244.0.4:8080 b5=10.244.0.5:8080",
        ),
    ];
    for (step, desired, golden) in steps {
        assert!(sync.apply(&desired).errors.is_empty(), "{step}");
        assert_eq!(sync.maps().dump(), golden, "after {step}");
    }
}

#[test]
fn udp_backends_that_leave_are_reported_for_flushing() {
    let mut udp = frontend(5, 53);
    udp.protocol = Protocol::Udp;
    let mut d = state(&[(udp, &[1, 2])]);
    d.services = d
        .services
        .into_values()
        .map(|mut sp| {
            sp.frontend = udp;
            for e in &mut sp.endpoints {
                e.addr.protocol = Protocol::Udp;
            }
            (udp, sp)
        })
        .collect();
    let mut sync = MapSync::adopt(FakeMaps::default()).expect("adopt");
    assert!(sync.apply(&d).udp_backends_gone().is_empty());
    let mut shrunk = d.clone();
    for sp in shrunk.services.values_mut() {
        sp.endpoints.retain(|e| e.addr.ip.octets()[3] == 2);
    }
    let gone = sync.apply(&shrunk).udp_backends_gone();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].1.ip, Ipv4Addr::new(10, 244, 0, 1));
    let gone = sync.apply(&DesiredState::default()).udp_backends_gone();
    assert_eq!(
        gone.len(),
        1,
        "deleting the service flushes its last backend"
    );
    // TCP frontends never report: their flows end by themselves.
    let tcp = frontend(6, 80);
    sync.apply(&state(&[(tcp, &[1, 2])]));
    let report = sync.apply(&state(&[(tcp, &[2])]));
    assert!(report.udp_backends_gone().is_empty());
    assert_eq!(
        report.departed.len(),
        1,
        "departures of every protocol reach the affinity flush"
    );
}

#[test]
fn source_ranges_follow_the_service() {
    let lb = Ipv4Addr::new(192, 0, 2, 10);
    let mut d = state(&[(frontend(1, 80), &[1])]);
    let set_ranges = |d: &mut DesiredState, ranges: Vec<(Ipv4Addr, u8)>| {
        for sp in d.services.values_mut() {
            sp.external.load_balancer_ips = vec![lb];
            sp.external.source_ranges = ranges.clone();
        }
    };
    set_ranges(&mut d, vec![(Ipv4Addr::new(10, 10, 0, 100), 32)]);
    let mut sync = MapSync::adopt(FakeMaps::default()).expect("adopt");
    sync.apply(&d);
    let lb_frontend = Frontend::new(lb, 80, Protocol::Tcp);
    let id = sync.programmed()[&lb_frontend].service_id;
    assert_eq!(
        sync.maps().read_source_ranges(id),
        vec![(Ipv4Addr::new(10, 10, 0, 100), 32)]
    );
    assert_ne!(
        sync.maps().services[&frontend_key(&lb_frontend, 0)].flags & service_flags::SOURCE_RANGES,
        0
    );
    set_ranges(&mut d, vec![(Ipv4Addr::new(10, 99, 0, 0), 16)]);
    sync.apply(&d);
    assert_eq!(
        sync.maps().read_source_ranges(id),
        vec![(Ipv4Addr::new(10, 99, 0, 0), 16)]
    );
    set_ranges(&mut d, vec![]);
    sync.apply(&d);
    assert!(sync.maps().ranges.is_empty());
    assert_eq!(
        sync.maps().services[&frontend_key(&lb_frontend, 0)].flags & service_flags::SOURCE_RANGES,
        0
    );
    // The cluster IP frontend never carries the ranges.
    assert_eq!(sync.programmed()[&frontend(1, 80)].flags, 0);
}

#[test]
fn maglev_slots_are_the_table_and_change_little() {
    let a = frontend(1, 80);
    let mut sync = MapSync::adopt(FakeMaps::default())
        .expect("adopt")
        .with_selection(Selection::new(Algorithm::Maglev, 251));
    sync.apply(&state(&[(a, &[1, 2, 3, 4, 5])]));
    let master = sync.maps().services[&frontend_key(&a, 0)];
    assert_eq!(master.count, 251);
    assert_ne!(master.flags & service_flags::MAGLEV, 0);
    assert_eq!(
        backend_ips(&sync, &a).iter().collect::<BTreeSet<_>>().len(),
        5
    );
    let before = sync.programmed()[&a].slots.clone();
    let writes = sync.maps().writes;
    let report = sync.apply(&state(&[(a, &[1, 2, 4, 5])]));
    assert_eq!(report.departed.len(), 1);
    let after = sync.programmed()[&a].slots.clone();
    let changed = before.iter().zip(&after).filter(|(x, y)| x != y).count();
    // About a fifth of the table belonged to the removed backend.
    assert!(changed < 251 * 30 / 100, "{changed} of 251 entries changed");
    assert!(
        sync.maps().writes - writes < 251 * 30 / 100 + 5,
        "only changed slots are written"
    );
}

/// A Service's own algorithm (its annotation) beats the agent's default,
/// and changing it rewrites only the master entry's flag.
#[test]
fn each_service_port_gets_its_own_scheduler_flag() {
    let (plain, rr, lc, mg) = (
        frontend(1, 80),
        frontend(2, 80),
        frontend(3, 80),
        frontend(4, 80),
    );
    let mut d = state(&[
        (plain, &[1, 2]),
        (rr, &[1, 2]),
        (lc, &[1, 2]),
        (mg, &[1, 2]),
    ]);
    let choose = |d: &mut DesiredState, f: &Frontend, a: Option<Algorithm>| {
        d.services.get_mut(f).expect("port").algorithm = a;
    };
    choose(&mut d, &rr, Some(Algorithm::RoundRobin));
    choose(&mut d, &lc, Some(Algorithm::LeastConnection));
    choose(&mut d, &mg, Some(Algorithm::Maglev));
    let mut sync = MapSync::adopt(FakeMaps::default())
        .expect("adopt")
        .with_selection(Selection::new(Algorithm::LeastConnection, 251));
    sync.apply(&d);
    let scheduler = |sync: &MapSync<FakeMaps>, f: &Frontend| {
        let master = sync.maps().services[&frontend_key(f, 0)];
        let flags = service_flags::MAGLEV | service_flags::ROUND_ROBIN | service_flags::LEAST_CONN;
        (master.flags & flags, master.count)
    };
    assert_eq!(
        scheduler(&sync, &plain),
        (service_flags::LEAST_CONN, 2),
        "the default"
    );
    assert_eq!(scheduler(&sync, &rr), (service_flags::ROUND_ROBIN, 2));
    assert_eq!(scheduler(&sync, &lc), (service_flags::LEAST_CONN, 2));
    assert_eq!(scheduler(&sync, &mg), (service_flags::MAGLEV, 251));
    let writes = sync.maps().writes;
    choose(&mut d, &rr, Some(Algorithm::Random));
    sync.apply(&d);
    assert_eq!(scheduler(&sync, &rr), (0, 2));
    assert_eq!(
        sync.maps().writes - writes,
        1,
        "only the master entry is rewritten"
    );
}

#[test]
fn backend_locality_follows_the_node_name() {
    let a = frontend(1, 80);
    let mut d = state(&[(a, &[1, 2])]);
    for sp in d.services.values_mut() {
        for e in &mut sp.endpoints {
            e.node = Some(format!("n{}", e.addr.ip.octets()[3]));
        }
    }
    let mut sync = MapSync::adopt(FakeMaps::default()).expect("adopt");
    sync.apply(&d);
    assert!(
        sync.maps()
            .backends
            .values()
            .all(|b| b.flags & backend_flags::LOCAL == 0)
    );
    let mut sync = sync.with_node(Some("n1".into()));
    sync.apply(&d);
    let local: Vec<u8> = sync
        .maps()
        .backends
        .values()
        .filter(|b| b.flags & backend_flags::LOCAL != 0)
        .map(|b| ip_from_be(b.ip_be).octets()[3])
        .collect();
    assert_eq!(local, vec![1]);
    let writes = sync.maps().writes;
    sync.apply(&d);
    assert_eq!(sync.maps().writes, writes, "stable once written");
}

#[test]
fn unchanged_state_writes_nothing() {
    let a = frontend(1, 80);
    let mut sync = MapSync::adopt(FakeMaps::default()).expect("adopt");
    sync.apply(&state(&[(a, &[1, 2])]));
    let writes = sync.maps().writes;
    let r = sync.apply(&state(&[(a, &[2, 1])]));
    assert!(!r.changed());
    assert_eq!(sync.maps().writes, writes);
}

#[test]
fn adopting_existing_maps_keeps_ids_and_writes_nothing() {
    let a = frontend(1, 80);
    let b = frontend(2, 80);
    let desired = state(&[(a, &[1, 2]), (b, &[2, 3])]);
    let mut first = MapSync::adopt(FakeMaps::default()).expect("adopt");
    first.apply(&desired);
    let before = first.programmed().clone();
    let mut maps = std::mem::take(&mut first.maps);
    maps.writes = 0;

    let mut restarted = MapSync::adopt(maps).expect("adopt");
    assert_eq!(restarted.programmed(), &before);
    let r = restarted.apply(&desired);
    assert!(!r.changed(), "{r:?}");
    assert_eq!(restarted.maps().writes, 0);

    // Something that vanished while the agent was down is removed.
    let r = restarted.apply(&state(&[(a, &[1, 2])]));
    assert_eq!((r.services_deleted, r.backends_deleted), (1, 1));
}

#[test]
fn adoption_removes_orphan_and_excess_slots() {
    let a = frontend(1, 80);
    let mut maps = FakeMaps::default();
    maps.backends.insert(
        7,
        backend_value(
            &BackendAddr {
                ip: Ipv4Addr::new(10, 244, 0, 7),
                port: 8080,
                protocol: Protocol::Tcp,
            },
            false,
        ),
    );
    maps.services.insert(
        frontend_key(&a, 0),
        BackendSlot {
            service_id: 3,
            count: 1,
            ..Default::default()
        },
    );
    maps.services.insert(
        frontend_key(&a, 1),
        BackendSlot {
            backend_id: 7,
            ..Default::default()
        },
    );
    maps.services.insert(
        frontend_key(&a, 2),
        BackendSlot {
            backend_id: 7,
            ..Default::default()
        },
    );
    maps.services.insert(
        frontend_key(&frontend(9, 9), 1),
        BackendSlot {
            backend_id: 7,
            ..Default::default()
        },
    );
    let sync = MapSync::adopt(maps).expect("adopt");
    assert_eq!(sync.maps().services.len(), 2);
    assert_eq!(sync.programmed()[&a].slots, vec![7]);
}

#[test]
fn ids_are_not_reused_immediately() {
    let mut alloc = IdAllocator::new(3);
    assert_eq!(alloc.allocate(), Some(1));
    assert_eq!(alloc.allocate(), Some(2));
    alloc.release(1);
    assert_eq!(alloc.allocate(), Some(3));
    assert_eq!(alloc.allocate(), Some(1), "wraps to the freed one");
    assert_eq!(alloc.allocate(), None);
}

/// What the maps say, by address rather than ID: frontend → backends in
/// slot order, and every backend entry.
fn resolved(sync: &MapSync<FakeMaps>) -> (BTreeMap<ServiceKey, Vec<u8>>, BTreeSet<u8>) {
    let m = sync.maps();
    let ip = |id: &BackendId| ip_from_be(m.backends[id].ip_be).octets()[3];
    let frontends = m
        .services
        .iter()
        .filter(|(k, _)| k.slot == 0)
        .map(|(k, master)| {
            let slots = (1..=master.count)
                .map(|s| ip(&m.services[&ServiceKey { slot: s, ..*k }].backend_id))
                .collect();
            (*k, slots)
        })
        .collect();
    (frontends, m.backends.keys().map(ip).collect())
}

/// The keys whose service port differs between two states.
fn changed_keys(old: &DesiredState, new: &DesiredState) -> BTreeSet<Frontend> {
    old.services
        .keys()
        .chain(new.services.keys())
        .filter(|k| old.services.get(k) != new.services.get(k))
        .copied()
        .collect()
}

#[test]
fn scoped_sync_matches_full_sync() {
    // Deterministic pseudo-random walk over states of 6 frontends drawing
    // from 8 shared backends, external frontends included.
    let mut seed: u64 = 0x5eed_1234_abcd_0001;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut scoped = MapSync::adopt(FakeMaps::default())
        .expect("adopt")
        .with_node_ips(vec![Ipv4Addr::new(10, 10, 0, 1)]);
    let mut full = MapSync::adopt(FakeMaps::default())
        .expect("adopt")
        .with_node_ips(vec![Ipv4Addr::new(10, 10, 0, 1)]);
    let mut previous = DesiredState::default();
    for step in 0..300 {
        let mut services: Vec<(Frontend, Vec<u8>)> = Vec::new();
        for f in 1..=6u8 {
            if next(4) == 0 {
                continue;
            }
            let backends = (1..=8u8).filter(|_| next(2) == 0).collect();
            services.push((frontend(f, 80), backends));
        }
        let as_slices: Vec<(Frontend, &[u8])> =
            services.iter().map(|(f, b)| (*f, b.as_slice())).collect();
        let mut desired = state(&as_slices);
        for sp in desired.services.values_mut() {
            if next(3) == 0 {
                sp.service_type = ServiceType::NodePort;
                sp.external.node_port = Some(30000 + u16::from(sp.frontend.ip.octets()[3]));
            }
        }
        let keys = changed_keys(&previous, &desired);
        let r = scoped.apply_scoped(&desired, Scope::Only(&keys));
        assert!(r.errors.is_empty(), "step {step}: {:?}", r.errors);
        full.apply(&desired);
        assert_eq!(resolved(&scoped), resolved(&full), "step {step}");
        previous = desired;
    }
}

#[test]
fn scoped_sync_leaves_other_services_alone() {
    let a = frontend(1, 80);
    let b = frontend(2, 80);
    let mut sync = MapSync::adopt(FakeMaps::default()).expect("adopt");
    sync.apply(&state(&[(a, &[1, 2]), (b, &[2, 3])]));
    // b changed in the cluster, but only a is in scope: b keeps its slots.
    let desired = state(&[(a, &[1]), (b, &[4])]);
    let r = sync.apply_scoped(&desired, Scope::Only(&BTreeSet::from([a])));
    assert_eq!(r.services_updated, 1);
    assert_eq!(backend_ips(&sync, &a), vec![1]);
    assert_eq!(backend_ips(&sync, &b), vec![2, 3]);
    // Backend 2 is still b's: it stays in the backends map.
    assert_eq!(r.backends_deleted, 0);
    let r = sync.apply_scoped(&desired, Scope::Only(&BTreeSet::from([b])));
    assert_eq!(backend_ips(&sync, &b), vec![4]);
    assert_eq!(r.backends_deleted, 2, "2 and 3 have no user left");
}

//! Map synchronisation: brings the pinned maps from what they hold to the
//! desired state, writing only the difference, in an order that never lets
//! the datapath see a frontend with a missing or wrong backend:
//!
//! 1. backends that are new get their `backends` entry first;
//! 2. per frontend, backend slots are written before the master entry that
//!    publishes their count, and slots beyond a smaller count are removed only
//!    after the count shrank; a live frontend is updated in place, never
//!    deleted and re-added;
//! 3. backends nothing points at any more are removed last.
//!
//! IDs (service IDs, backend IDs) are allocated next-fit, so a freed ID is
//! reused only after the rest of the space, keeping counters and conntrack
//! entries that mention an old ID from being confused with a new owner.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use anyhow::{Context, Result, anyhow};
use lb_common::{
    Backend, BackendId, BackendSlot, MAX_BACKENDS, MAX_SERVICES, ServiceKey, backend_flags,
    frontend_scope, map_names, service_flags,
};
use tracing::{debug, warn};

use crate::datapath::addr::{ip_be, ip_from_be, port_be, port_from_be};
use crate::datapath::capacity::is_map_full;
use crate::datapath::maglev;
use crate::model::{BackendAddr, DesiredState, Frontend, FrontendScope, Protocol, ServicePort};

/// The map operations sync needs; implemented by the pinned maps and by an
/// in-memory fake in tests.
pub trait ServiceMaps {
    fn put_backend(&mut self, id: BackendId, backend: Backend) -> Result<()>;
    fn delete_backend(&mut self, id: BackendId) -> Result<()>;
    fn put_service(&mut self, key: ServiceKey, value: BackendSlot) -> Result<()>;
    fn delete_service(&mut self, key: ServiceKey) -> Result<()>;
    /// Stores the name and zeroes the counters of a newly assigned service ID.
    fn assign_service_id(&mut self, service_id: u32, name: &str) -> Result<()>;
    fn release_service_id(&mut self, service_id: u32) -> Result<()>;
    fn read_services(&self) -> Result<Vec<(ServiceKey, BackendSlot)>>;
    fn read_backends(&self) -> Result<Vec<(BackendId, Backend)>>;
    fn read_service_name(&self, service_id: u32) -> Option<String>;
    fn put_source_range(&mut self, service_id: u32, ip: Ipv4Addr, prefix_len: u8) -> Result<()>;
    fn delete_source_range(&mut self, service_id: u32, ip: Ipv4Addr, prefix_len: u8) -> Result<()>;
    fn read_source_ranges(&self, service_id: u32) -> Vec<(Ipv4Addr, u8)>;
}

/// Next-fit allocator over `1..=max`.
#[derive(Debug)]
struct IdAllocator {
    max: u32,
    cursor: u32,
    used: BTreeSet<u32>,
}

impl IdAllocator {
    fn new(max: u32) -> Self {
        Self {
            max,
            cursor: 0,
            used: BTreeSet::new(),
        }
    }

    fn mark_used(&mut self, id: u32) {
        self.used.insert(id);
        self.cursor = self.cursor.max(id);
    }

    fn allocate(&mut self) -> Option<u32> {
        if self.used.len() as u32 >= self.max {
            return None;
        }
        loop {
            self.cursor = if self.cursor >= self.max {
                1
            } else {
                self.cursor + 1
            };
            if self.used.insert(self.cursor) {
                return Some(self.cursor);
            }
        }
    }

    fn release(&mut self, id: u32) {
        self.used.remove(&id);
    }
}

/// What the maps hold for one frontend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgrammedService {
    pub service_id: u32,
    pub name: String,
    /// Session affinity timeout in seconds, 0 for none.
    pub affinity_timeout_s: u32,
    /// `lb_common::service_flags`.
    pub flags: u16,
    /// loadBalancerSourceRanges, when `flags` has SOURCE_RANGES.
    pub source_ranges: Vec<(Ipv4Addr, u8)>,
    /// `slots[i]` is the backend in slot `i + 1`.
    pub slots: Vec<BackendId>,
}

/// How a frontend's slots choose a backend for a new flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// One slot per backend, picked at random (kube-proxy's behaviour).
    Random,
    /// A Maglev table per frontend, sized for its backend count up to this
    /// (prime) size (`maglev::table_size_for`): the same flow maps to the
    /// same backend on every node, and few flows move when backends change.
    Maglev { table_size: usize },
}

/// Which service ports (keys of [`DesiredState::services`]) a sync pass
/// looks at.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// Everything: also removes frontends nothing in the desired state owns
    /// (e.g. left by an earlier run).
    All,
    /// Only these service ports, present or gone; the rest is untouched.
    Only(&'a BTreeSet<Frontend>),
}

/// What one frontend should look like, before backend IDs are known.
struct FrontendPlan {
    /// The service port (its key in the desired state) it belongs to.
    owner: Frontend,
    name: String,
    backends: Vec<BackendAddr>,
    affinity_timeout_s: u32,
    flags: u16,
    source_ranges: Vec<(Ipv4Addr, u8)>,
}

/// Counts of one sync pass, for logs and metrics.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub services_created: usize,
    pub services_updated: usize,
    pub services_deleted: usize,
    pub backends_created: usize,
    pub backends_deleted: usize,
    /// One line per frontend or backend that could not be written; the rest
    /// of the state was still applied.
    pub errors: Vec<String>,
    /// Backends that stopped serving a frontend (or whose frontend went
    /// away): state pinned to them (UDP flows, affinity) must be flushed.
    pub departed: Vec<Departure>,
    /// Maps that were full when something had to be added to them.
    pub full_maps: BTreeSet<&'static str>,
}

/// A backend that left a frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Departure {
    pub frontend: Frontend,
    pub service_id: u32,
    pub backend_id: BackendId,
    pub backend: BackendAddr,
    /// The frontend had ClientIP affinity: pins to the backend may exist.
    pub affinity: bool,
}

impl SyncReport {
    /// The departures of UDP frontends, whose flows must be flushed.
    pub fn udp_backends_gone(&self) -> Vec<(Frontend, BackendAddr)> {
        self.departed
            .iter()
            .filter(|d| d.frontend.protocol == Protocol::Udp)
            .map(|d| (d.frontend, d.backend))
            .collect()
    }
}

impl SyncReport {
    pub fn changed(&self) -> bool {
        self.services_created
            + self.services_updated
            + self.services_deleted
            + self.backends_created
            + self.backends_deleted
            > 0
    }
}

pub struct MapSync<M: ServiceMaps> {
    maps: M,
    /// This node, for node-local traffic policies.
    node: Option<String>,
    /// This node's zone, for topology hints.
    zone: Option<String>,
    /// This node's addresses, where node ports are served.
    node_ips: Vec<Ipv4Addr>,
    selection: Selection,
    services: BTreeMap<Frontend, ProgrammedService>,
    /// The service port each programmed frontend was planned from; frontends
    /// adopted from an earlier run have none until the first full sync.
    owners: HashMap<Frontend, Frontend>,
    /// The reverse: each service port's programmed frontends.
    owned: HashMap<Frontend, BTreeSet<Frontend>>,
    /// How many programmed frontends have each backend in their slots.
    backend_users: HashMap<BackendId, usize>,
    backend_ids: HashMap<BackendAddr, BackendId>,
    /// The reverse of `backend_ids` (every ID in the map, duplicates of an
    /// adopted address included), so a pass never walks all backends.
    backend_addrs: HashMap<BackendId, BackendAddr>,
    /// Whether each backend is marked as on this node in the map.
    backend_local: HashMap<BackendId, bool>,
    service_ids: IdAllocator,
    backend_id_alloc: IdAllocator,
}

/// Adds `delta` to the user count of every distinct backend in `slots`.
fn count_users(users: &mut HashMap<BackendId, usize>, slots: &[BackendId], delta: isize) {
    for id in slots.iter().collect::<BTreeSet<_>>() {
        let n = users.entry(*id).or_default();
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            users.remove(id);
        }
    }
}

fn frontend_key(f: &Frontend, slot: u16) -> ServiceKey {
    let scope = match f.scope {
        FrontendScope::All => frontend_scope::ALL,
        FrontendScope::InCluster => frontend_scope::IN_CLUSTER,
    };
    ServiceKey::scoped(
        ip_be(f.ip),
        port_be(f.port),
        f.protocol.number(),
        scope,
        slot,
    )
}

fn backend_value(b: &BackendAddr, local: bool) -> Backend {
    Backend {
        ip_be: ip_be(b.ip),
        port_be: port_be(b.port),
        proto: b.protocol.number(),
        flags: if local { backend_flags::LOCAL } else { 0 },
    }
}

/// What the maps hold, read back into the in-memory view.
struct Held {
    services: BTreeMap<Frontend, ProgrammedService>,
    backend_ids: HashMap<BackendAddr, BackendId>,
    backend_addrs: HashMap<BackendId, BackendAddr>,
    backend_local: HashMap<BackendId, bool>,
    backend_users: HashMap<BackendId, usize>,
    service_ids: IdAllocator,
    backend_id_alloc: IdAllocator,
}

/// Reads the programmed state from the maps, removing what no frontend can
/// reach (slots beyond a master's count, slots without a master, unknown
/// protocols or scopes).
fn read_held<M: ServiceMaps>(maps: &mut M) -> Result<Held> {
    let mut service_ids = IdAllocator::new(MAX_SERVICES - 1);
    let mut backend_id_alloc = IdAllocator::new(MAX_BACKENDS);
    let mut backend_ids = HashMap::new();
    let mut backend_addrs = HashMap::new();
    let mut backend_local = HashMap::new();
    for (id, b) in maps.read_backends().context("reading the backends map")? {
        backend_local.insert(id, b.flags & backend_flags::LOCAL != 0);
        let Some(protocol) = Protocol::from_number(b.proto) else {
            warn!(
                backend_id = id,
                proto = b.proto,
                "removing backend with unknown protocol"
            );
            maps.delete_backend(id)?;
            continue;
        };
        let addr = BackendAddr {
            ip: ip_from_be(b.ip_be),
            port: port_from_be(b.port_be),
            protocol,
        };
        backend_id_alloc.mark_used(id);
        backend_addrs.insert(id, addr);
        if let Some(dup) = backend_ids.insert(addr, id) {
            // Two IDs for one address: keep one, the other is removed
            // once no slot refers to it.
            backend_ids.insert(addr, dup.min(id));
        }
    }
    let entries = maps.read_services().context("reading the services map")?;
    let mut slots: HashMap<(u32, u16, u8, u8), BTreeMap<u16, BackendId>> = HashMap::new();
    let mut services = BTreeMap::new();
    let mut masters = Vec::new();
    for (key, value) in &entries {
        if key.slot == 0 {
            masters.push((*key, *value));
        } else {
            slots
                .entry((key.vip_be, key.port_be, key.proto, key.scope))
                .or_default()
                .insert(key.slot, value.backend_id);
        }
    }
    for (key, master) in masters {
        let Some(protocol) = Protocol::from_number(key.proto) else {
            continue;
        };
        let frontend = Frontend::new(ip_from_be(key.vip_be), port_from_be(key.port_be), protocol);
        let frontend = match key.scope {
            frontend_scope::ALL => frontend,
            frontend_scope::IN_CLUSTER => frontend.in_cluster(),
            _ => {
                // A scope this version does not know: not ours to keep.
                maps.delete_service(key)?;
                continue;
            }
        };
        let own = slots
            .remove(&(key.vip_be, key.port_be, key.proto, key.scope))
            .unwrap_or_default();
        let mut programmed = Vec::with_capacity(master.count as usize);
        for slot in 1..=master.count {
            match own.get(&slot) {
                Some(id) => programmed.push(*id),
                None => {
                    // A hole: treat as unknown so the next sync rewrites it.
                    programmed.push(0);
                }
            }
        }
        for (&slot, _) in own.range(master.count + 1..) {
            maps.delete_service(frontend_key(&frontend, slot))?;
        }
        service_ids.mark_used(master.service_id);
        let name = maps
            .read_service_name(master.service_id)
            .unwrap_or_default();
        services.insert(
            frontend,
            ProgrammedService {
                service_id: master.service_id,
                name,
                affinity_timeout_s: master.affinity_timeout_s,
                flags: master.flags,
                source_ranges: maps.read_source_ranges(master.service_id),
                slots: programmed,
            },
        );
    }
    // Slots without a master belong to nothing the datapath can reach.
    for ((vip_be, port_be, proto, scope), orphan) in slots {
        for slot in orphan.keys() {
            maps.delete_service(ServiceKey::scoped(vip_be, port_be, proto, scope, *slot))?;
        }
    }
    debug!(
        services = services.len(),
        backends = backend_ids.len(),
        "adopted existing map state"
    );
    let mut backend_users = HashMap::new();
    for programmed in services.values() {
        count_users(&mut backend_users, &programmed.slots, 1);
    }
    Ok(Held {
        services,
        backend_ids,
        backend_addrs,
        backend_local,
        backend_users,
        service_ids,
        backend_id_alloc,
    })
}

impl<M: ServiceMaps> MapSync<M> {
    /// Adopts whatever the maps already hold (from an earlier run of the
    /// agent), so the first sync only changes what differs and established
    /// connections are not disturbed.
    pub fn adopt(mut maps: M) -> Result<Self> {
        let held = read_held(&mut maps)?;
        Ok(Self {
            maps,
            owners: HashMap::new(),
            owned: HashMap::new(),
            backend_users: held.backend_users,
            backend_addrs: held.backend_addrs,
            backend_local: held.backend_local,
            node: None,
            zone: None,
            node_ips: Vec::new(),
            selection: Selection::Random,
            services: held.services,
            backend_ids: held.backend_ids,
            service_ids: held.service_ids,
            backend_id_alloc: held.backend_id_alloc,
        })
    }

    /// Re-reads what the maps hold, as at start, keeping this node's
    /// settings, so that the full [`MapSync::apply`] that follows repairs
    /// whatever the maps lost or gained behind the in-memory view (a write
    /// that failed half-way, an entry removed by hand). On error nothing
    /// changes.
    pub fn readopt(&mut self) -> Result<()> {
        let held = read_held(&mut self.maps)?;
        let max_backends = self.backend_id_alloc.max;
        self.owners.clear();
        self.owned.clear();
        self.backend_users = held.backend_users;
        self.backend_addrs = held.backend_addrs;
        self.backend_local = held.backend_local;
        self.services = held.services;
        self.backend_ids = held.backend_ids;
        self.service_ids = held.service_ids;
        self.backend_id_alloc = held.backend_id_alloc;
        self.backend_id_alloc.max = max_backends;
        Ok(())
    }

    /// Sets the node whose local endpoints node-local policies select.
    pub fn with_node(mut self, node: Option<String>) -> Self {
        self.node = node;
        self
    }

    /// The number of backend IDs the backends map has room for.
    pub fn with_backend_capacity(mut self, entries: u32) -> Self {
        self.backend_id_alloc.max = entries;
        self
    }

    /// Sets how new flows choose among a frontend's backends.
    pub fn with_selection(mut self, selection: Selection) -> Self {
        self.selection = selection;
        self
    }

    /// Changes this node's zone (`topology.kubernetes.io/zone`), which
    /// zone topology hints select by; takes effect with the next full
    /// [`MapSync::apply`].
    pub fn set_zone(&mut self, zone: Option<String>) {
        self.zone = zone;
    }

    /// Sets the addresses node ports are served on.
    pub fn with_node_ips(mut self, ips: Vec<Ipv4Addr>) -> Self {
        self.node_ips = ips;
        self
    }

    /// Changes the addresses node ports are served on; takes effect with
    /// the next full [`MapSync::apply`].
    pub fn set_node_ips(&mut self, ips: Vec<Ipv4Addr>) {
        self.node_ips = ips;
    }

    pub fn node_ips(&self) -> &[Ipv4Addr] {
        &self.node_ips
    }

    /// Backends in the backends map.
    pub fn backend_count(&self) -> usize {
        self.backend_ids.len()
    }

    pub fn programmed(&self) -> &BTreeMap<Frontend, ProgrammedService> {
        &self.services
    }

    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// Applies all of `desired`. Errors on single frontends or backends are
    /// collected in the report; everything else is still applied.
    pub fn apply(&mut self, desired: &DesiredState) -> SyncReport {
        self.apply_scoped(desired, Scope::All)
    }

    /// Applies the part of `desired` in `scope`: the cost is that of the
    /// changed service ports, not of the whole cluster.
    pub fn apply_scoped(&mut self, desired: &DesiredState, scope: Scope<'_>) -> SyncReport {
        let mut report = SyncReport::default();
        let wanted = self.plan(desired, scope, &mut report);
        let ports: Vec<&ServicePort> = match scope {
            Scope::All => desired.services.values().collect(),
            Scope::Only(keys) => keys
                .iter()
                .filter_map(|k| desired.services.get(k))
                .collect(),
        };
        let local: BTreeSet<BackendAddr> = ports
            .iter()
            .flat_map(|sp| sp.endpoints.iter())
            .filter(|e| self.node.is_some() && e.node == self.node)
            .map(|e| e.addr)
            .collect();

        // 1. New backends first.
        let needed: BTreeSet<BackendAddr> = wanted
            .values()
            .flat_map(|plan| plan.backends.iter().copied())
            .collect();
        for addr in &needed {
            let is_local = local.contains(addr);
            if let Some(&id) = self.backend_ids.get(addr) {
                // Locality can change (the node name became known): rewrite
                // the entry in place, the address stays the same.
                if self.backend_local.get(&id) != Some(&is_local) {
                    match self.maps.put_backend(id, backend_value(addr, is_local)) {
                        Ok(()) => {
                            self.backend_local.insert(id, is_local);
                        }
                        Err(e) => report.errors.push(format!("backend {addr}: {e:#}")),
                    }
                }
                continue;
            }
            let Some(id) = self.backend_id_alloc.allocate() else {
                report.errors.push(format!(
                    "backend {addr}: backends map full ({} entries in use)",
                    self.backend_id_alloc.max
                ));
                report.full_maps.insert(map_names::BACKENDS);
                continue;
            };
            match self.maps.put_backend(id, backend_value(addr, is_local)) {
                Ok(()) => {
                    self.backend_ids.insert(*addr, id);
                    self.backend_addrs.insert(id, *addr);
                    self.backend_local.insert(id, is_local);
                    report.backends_created += 1;
                }
                Err(e) => {
                    self.backend_id_alloc.release(id);
                    if is_map_full(&e) {
                        report.full_maps.insert(map_names::BACKENDS);
                    }
                    report.errors.push(format!("backend {addr}: {e:#}"));
                }
            }
        }

        // Backends that may have lost their last user in this pass.
        let mut maybe_unused: BTreeSet<BackendId> = BTreeSet::new();

        // 2. Frontends: create or update in place, then delete the gone ones.
        for (frontend, plan) in &wanted {
            let name = &plan.name;
            let present: Vec<(BackendAddr, BackendId)> = plan
                .backends
                .iter()
                .filter_map(|b| self.backend_ids.get(b).map(|id| (*b, *id)))
                .collect();
            let (slots, flags): (Vec<BackendId>, u16) = match self.selection {
                Selection::Random => (present.iter().map(|(_, id)| *id).collect(), plan.flags),
                Selection::Maglev { table_size } => {
                    let addrs: Vec<BackendAddr> = present.iter().map(|(a, _)| *a).collect();
                    let size = maglev::table_size_for(addrs.len(), table_size);
                    let table = maglev::table(&addrs, size);
                    (
                        table.iter().map(|i| present[*i].1).collect(),
                        plan.flags | service_flags::MAGLEV,
                    )
                }
            };
            let target = ProgrammedService {
                service_id: 0,
                name: name.clone(),
                affinity_timeout_s: plan.affinity_timeout_s,
                flags,
                source_ranges: plan.source_ranges.clone(),
                slots,
            };
            if let Some(previous) = self.owners.insert(*frontend, plan.owner)
                && previous != plan.owner
                && let Some(set) = self.owned.get_mut(&previous)
            {
                set.remove(frontend);
            }
            self.owned.entry(plan.owner).or_default().insert(*frontend);
            let result = match self.services.get(frontend).cloned() {
                None => self
                    .create_service(frontend, target)
                    .map(|()| report.services_created += 1),
                Some(current)
                    if current
                        == ProgrammedService {
                            service_id: current.service_id,
                            ..target.clone()
                        } =>
                {
                    Ok(())
                }
                Some(current) => {
                    let still: BTreeSet<BackendId> = target.slots.iter().copied().collect();
                    let before: BTreeSet<BackendId> = current.slots.iter().copied().collect();
                    let departed: Vec<Departure> = before
                        .iter()
                        .filter(|id| !still.contains(id))
                        .filter_map(|id| {
                            self.backend_addrs.get(id).map(|backend| Departure {
                                frontend: *frontend,
                                service_id: current.service_id,
                                backend_id: *id,
                                backend: *backend,
                                affinity: current.affinity_timeout_s > 0,
                            })
                        })
                        .collect();
                    maybe_unused.extend(departed.iter().map(|d| d.backend_id));
                    self.update_service(frontend, current, target).map(|()| {
                        report.services_updated += 1;
                        report.departed.extend(departed);
                    })
                }
            };
            if let Err(e) = result {
                if is_map_full(&e) {
                    report.full_maps.insert(map_names::SERVICES);
                }
                report
                    .errors
                    .push(format!("service {name} ({frontend}): {e:#}"));
            }
        }
        let gone: Vec<Frontend> = match scope {
            Scope::All => self
                .services
                .keys()
                .filter(|f| !wanted.contains_key(f))
                .copied()
                .collect(),
            // Only the frontends of the service ports in scope: no walk
            // over every programmed frontend.
            Scope::Only(keys) => keys
                .iter()
                .filter_map(|k| self.owned.get(k))
                .flatten()
                .filter(|f| !wanted.contains_key(f) && self.services.contains_key(f))
                .copied()
                .collect(),
        };
        for frontend in gone {
            let departed: Vec<Departure> = self
                .services
                .get(&frontend)
                .map(|current| {
                    current
                        .slots
                        .iter()
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .filter_map(|id| {
                            self.backend_addrs.get(id).map(|backend| Departure {
                                frontend,
                                service_id: current.service_id,
                                backend_id: *id,
                                backend: *backend,
                                affinity: current.affinity_timeout_s > 0,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            maybe_unused.extend(departed.iter().map(|d| d.backend_id));
            match self.delete_service(&frontend) {
                Ok(()) => {
                    report.services_deleted += 1;
                    report.departed.extend(departed);
                }
                Err(e) => report.errors.push(format!("deleting {frontend}: {e:#}")),
            }
        }

        // 3. Backends no slot refers to any more. A full pass looks at all of
        // them (adopted maps may hold strays), a scoped one at those that
        // lost a user in it.
        let candidates: Vec<(BackendAddr, BackendId)> = match scope {
            Scope::All => self.backend_ids.iter().map(|(a, i)| (*a, *i)).collect(),
            Scope::Only(_) => maybe_unused
                .iter()
                .filter_map(|id| self.backend_addrs.get(id).map(|a| (*a, *id)))
                .collect(),
        };
        let unused: Vec<(BackendAddr, BackendId)> = candidates
            .into_iter()
            .filter(|(addr, id)| !needed.contains(addr) && !self.backend_users.contains_key(id))
            .collect();
        for (addr, id) in unused {
            match self.maps.delete_backend(id) {
                Ok(()) => {
                    self.backend_ids.remove(&addr);
                    self.backend_addrs.remove(&id);
                    self.backend_local.remove(&id);
                    self.backend_id_alloc.release(id);
                    report.backends_deleted += 1;
                }
                Err(e) => report
                    .errors
                    .push(format!("deleting backend {addr}: {e:#}")),
            }
        }
        report
    }

    /// The concrete frontends of `desired` on this node: each service port's
    /// cluster IP, and for externally reachable ones this node's addresses
    /// at the node port, the load-balancer IPs and the external IPs.
    fn plan(
        &self,
        desired: &DesiredState,
        scope: Scope<'_>,
        report: &mut SyncReport,
    ) -> BTreeMap<Frontend, FrontendPlan> {
        let node = self.node.as_deref();
        let zone = self.zone.as_deref();
        let mut wanted: BTreeMap<Frontend, FrontendPlan> = BTreeMap::new();
        let ports: Vec<&ServicePort> = match scope {
            Scope::All => desired.services.values().collect(),
            Scope::Only(keys) => keys
                .iter()
                .filter_map(|k| desired.services.get(k))
                .collect(),
        };
        // A frontend stays with the service port that has it, when that one
        // is outside this pass and still wanted.
        let held_elsewhere = |frontend: &Frontend| -> Option<String> {
            let Scope::Only(keys) = scope else {
                return None;
            };
            let owner = self.owners.get(frontend)?;
            if keys.contains(owner) || !desired.services.contains_key(owner) {
                return None;
            }
            self.services.get(frontend).map(|p| p.name.clone())
        };
        for sp in ports {
            let name = sp.name.to_string();
            let usable_anywhere = sp.has_usable_endpoints();
            let affinity_timeout_s = sp
                .affinity
                .map_or(0, |d| d.as_secs().clamp(1, u32::MAX as u64) as u32);
            wanted.insert(
                sp.frontend,
                FrontendPlan {
                    owner: sp.frontend,
                    name: name.clone(),
                    backends: sp.backends_at(node, zone),
                    affinity_timeout_s,
                    // Local policy, none here but some elsewhere: drop, as
                    // kube-proxy does (no endpoints at all: refuse).
                    flags: if sp.internal_traffic_local && usable_anywhere {
                        service_flags::DROP_IF_EMPTY
                    } else {
                        0
                    },
                    source_ranges: Vec::new(),
                },
            );
            let ext = &sp.external;
            if !ext.is_exposed() {
                continue;
            }
            let external_backends = sp.external_backends_at(node, zone);
            let base_flags = service_flags::EXTERNAL
                | if ext.traffic_local && usable_anywhere {
                    service_flags::DROP_IF_EMPTY
                } else {
                    0
                };
            let at = |ip: Ipv4Addr, port: u16| Frontend::new(ip, port, sp.frontend.protocol);
            let mut frontends: Vec<(Frontend, bool)> = Vec::new();
            if let Some(node_port) = ext.node_port {
                frontends.extend(self.node_ips.iter().map(|ip| (at(*ip, node_port), false)));
            }
            frontends.extend(
                ext.load_balancer_ips
                    .iter()
                    .map(|ip| (at(*ip, sp.frontend.port), true)),
            );
            frontends.extend(
                ext.external_ips
                    .iter()
                    .map(|ip| (at(*ip, sp.frontend.port), false)),
            );
            // Node-local for outside clients only: pods and the node's own
            // processes reach these addresses over every endpoint.
            if ext.traffic_local {
                let in_cluster: Vec<(Frontend, bool)> = frontends
                    .iter()
                    .map(|(f, is_lb)| (f.in_cluster(), *is_lb))
                    .collect();
                frontends.extend(in_cluster);
            }
            let cluster_wide = sp.cluster_wide_backends(node, zone);
            for (frontend, is_lb) in frontends {
                let in_cluster = frontend.scope == FrontendScope::InCluster;
                let ranged = is_lb && !ext.source_ranges.is_empty();
                let plan = FrontendPlan {
                    owner: sp.frontend,
                    name: name.clone(),
                    backends: if in_cluster {
                        cluster_wide.clone()
                    } else {
                        external_backends.clone()
                    },
                    affinity_timeout_s,
                    flags: if in_cluster {
                        service_flags::EXTERNAL
                    } else if ext.traffic_local {
                        base_flags | service_flags::HAS_IN_CLUSTER
                    } else {
                        base_flags
                    } | if ranged {
                        service_flags::SOURCE_RANGES
                    } else {
                        0
                    },
                    source_ranges: if ranged {
                        ext.source_ranges.clone()
                    } else {
                        Vec::new()
                    },
                };
                if let Some(existing) = wanted
                    .get(&frontend)
                    .map(|p| p.name.clone())
                    .or_else(|| held_elsewhere(&frontend))
                {
                    report.errors.push(format!(
                        "service {name}: {frontend} is already served by {existing}; not programmed twice",
                    ));
                    continue;
                }
                wanted.insert(frontend, plan);
            }
        }
        wanted
    }

    fn write_slots(
        &mut self,
        frontend: &Frontend,
        old: &[BackendId],
        new: &[BackendId],
    ) -> Result<()> {
        for (i, id) in new.iter().enumerate() {
            if old.get(i) != Some(id) {
                let slot = u16::try_from(i + 1).map_err(|_| anyhow!("too many backends"))?;
                self.maps.put_service(
                    frontend_key(frontend, slot),
                    BackendSlot {
                        backend_id: *id,
                        ..Default::default()
                    },
                )?;
            }
        }
        Ok(())
    }

    fn master_value(service_id: u32, target: &ProgrammedService) -> Result<BackendSlot> {
        let count = target.slots.len();
        Ok(BackendSlot {
            backend_id: 0,
            service_id,
            count: u16::try_from(count)
                .map_err(|_| anyhow!("{count} backends exceed the {} slot limit", u16::MAX))?,
            flags: target.flags,
            affinity_timeout_s: target.affinity_timeout_s,
        })
    }

    fn create_service(&mut self, frontend: &Frontend, target: ProgrammedService) -> Result<()> {
        // Validated before an ID is taken.
        Self::master_value(0, &target)?;
        let service_id = self
            .service_ids
            .allocate()
            .ok_or_else(|| anyhow!("no free service ID ({} in use)", MAX_SERVICES - 1))?;
        let written = (|| {
            self.maps.assign_service_id(service_id, &target.name)?;
            for (ip, len) in &target.source_ranges {
                self.maps.put_source_range(service_id, *ip, *len)?;
            }
            self.write_slots(frontend, &[], &target.slots)?;
            // Publishing the master last makes the frontend visible only
            // once all its slots are filled.
            self.maps.put_service(
                frontend_key(frontend, 0),
                Self::master_value(service_id, &target)?,
            )
        })();
        if let Err(e) = written {
            self.service_ids.release(service_id);
            return Err(e);
        }
        count_users(&mut self.backend_users, &target.slots, 1);
        self.services.insert(
            *frontend,
            ProgrammedService {
                service_id,
                ..target
            },
        );
        Ok(())
    }

    fn update_service(
        &mut self,
        frontend: &Frontend,
        current: ProgrammedService,
        target: ProgrammedService,
    ) -> Result<()> {
        let service_id = current.service_id;
        if current.name != target.name {
            self.maps.assign_service_id(service_id, &target.name)?;
        }
        for (ip, len) in target
            .source_ranges
            .iter()
            .filter(|r| !current.source_ranges.contains(r))
        {
            self.maps.put_source_range(service_id, *ip, *len)?;
        }
        self.write_slots(frontend, &current.slots, &target.slots)?;
        if current.slots.len() != target.slots.len()
            || current.affinity_timeout_s != target.affinity_timeout_s
            || current.flags != target.flags
        {
            self.maps.put_service(
                frontend_key(frontend, 0),
                Self::master_value(service_id, &target)?,
            )?;
        }
        // Only now that the count no longer covers them.
        for slot in target.slots.len() + 1..=current.slots.len() {
            self.maps
                .delete_service(frontend_key(frontend, slot as u16))?;
        }
        for (ip, len) in current
            .source_ranges
            .iter()
            .filter(|r| !target.source_ranges.contains(r))
        {
            self.maps.delete_source_range(service_id, *ip, *len)?;
        }
        count_users(&mut self.backend_users, &current.slots, -1);
        count_users(&mut self.backend_users, &target.slots, 1);
        self.services.insert(
            *frontend,
            ProgrammedService {
                service_id,
                ..target
            },
        );
        Ok(())
    }

    fn delete_service(&mut self, frontend: &Frontend) -> Result<()> {
        let Some(current) = self.services.get(frontend).cloned() else {
            return Ok(());
        };
        // Master first: the frontend disappears as a whole.
        self.maps.delete_service(frontend_key(frontend, 0))?;
        self.services.remove(frontend);
        if let Some(owner) = self.owners.remove(frontend)
            && let Some(set) = self.owned.get_mut(&owner)
        {
            set.remove(frontend);
            if set.is_empty() {
                self.owned.remove(&owner);
            }
        }
        count_users(&mut self.backend_users, &current.slots, -1);
        for slot in 1..=current.slots.len() {
            if let Err(e) = self
                .maps
                .delete_service(frontend_key(frontend, slot as u16))
            {
                warn!(%frontend, slot, "leaving an unreachable slot behind: {e:#}");
            }
        }
        for (ip, len) in &current.source_ranges {
            self.maps
                .delete_source_range(current.service_id, *ip, *len)?;
        }
        self.maps.release_service_id(current.service_id)?;
        self.service_ids.release(current.service_id);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{Endpoint, ServicePort, ServicePortName, ServiceType};
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
        fn put_backend(&mut self, id: BackendId, backend: Backend) -> Result<()> {
            self.backends.insert(id, backend);
            self.writes += 1;
            self.check();
            Ok(())
        }
        fn delete_backend(&mut self, id: BackendId) -> Result<()> {
            self.backends.remove(&id);
            self.writes += 1;
            self.check();
            Ok(())
        }
        fn put_service(&mut self, key: ServiceKey, value: BackendSlot) -> Result<()> {
            self.services.insert(key, value);
            self.writes += 1;
            self.check();
            Ok(())
        }
        fn delete_service(&mut self, key: ServiceKey) -> Result<()> {
            self.services.remove(&key);
            self.writes += 1;
            self.check();
            Ok(())
        }
        fn assign_service_id(&mut self, service_id: u32, name: &str) -> Result<()> {
            self.names.insert(service_id, name.to_string());
            Ok(())
        }
        fn release_service_id(&mut self, service_id: u32) -> Result<()> {
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
        fn put_source_range(&mut self, service_id: u32, ip: Ipv4Addr, len: u8) -> Result<()> {
            self.ranges.insert((service_id, ip, len));
            Ok(())
        }
        fn delete_source_range(&mut self, service_id: u32, ip: Ipv4Addr, len: u8) -> Result<()> {
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
                ServicePort {
                    name: ServicePortName {
                        namespace: "default".into(),
                        name: format!("svc{}", f.ip.octets()[3]),
                        port_name: String::new(),
                    },
                    frontend: *f,
                    service_type: ServiceType::ClusterIP,
                    affinity: None,
                    internal_traffic_local: false,
                    external: Default::default(),
                    endpoints: backends
                        .iter()
                        .map(|last| Endpoint {
                            addr: BackendAddr {
                                ip: Ipv4Addr::new(10, 244, 0, *last),
                                port: 8080,
                                protocol: Protocol::Tcp,
                            },
                            ready: true,
                            serving: true,
                            terminating: false,
                            node: None,
                            hints: None,
                        })
                        .collect(),
                },
            );
        }
        d
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
            sync.maps().services[&frontend_key(&lb_frontend, 0)].flags
                & service_flags::SOURCE_RANGES,
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
            sync.maps().services[&frontend_key(&lb_frontend, 0)].flags
                & service_flags::SOURCE_RANGES,
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
            .with_selection(Selection::Maglev { table_size: 251 });
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
}

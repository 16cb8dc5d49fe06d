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
//! A pass is a fixed sequence: plan (desired state → this node's concrete
//! frontends, `plan.rs`), ensure backends, write frontends, remove the gone
//! ones, release unused backends (`write.rs`). `adopt.rs` reads back what
//! the maps hold at start and on resyncs; `ids.rs` allocates IDs.

mod adopt;
mod errors;
mod plan;
mod write;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use anyhow::Result;
use lb_common::{
    Backend, BackendId, BackendSlot, MAX_BACKENDS, MAX_SERVICES, ServiceKey, backend_flags,
    frontend_scope,
};

use crate::datapath::addr::{ip_be, port_be};
use crate::datapath::ids::IdAllocator;
use crate::datapath::maglev;
use crate::model::{Algorithm, BackendAddr, DesiredState, Frontend, FrontendScope, Protocol};
pub use errors::{MapError, SyncError};

/// The map operations sync needs; implemented by the pinned maps and by an
/// in-memory fake in tests.
pub trait ServiceMaps {
    fn put_backend(&mut self, id: BackendId, backend: Backend) -> Result<(), MapError>;
    fn delete_backend(&mut self, id: BackendId) -> Result<(), MapError>;
    fn put_service(&mut self, key: ServiceKey, value: BackendSlot) -> Result<(), MapError>;
    fn delete_service(&mut self, key: ServiceKey) -> Result<(), MapError>;
    /// Stores the name and zeroes the counters of a newly assigned service ID.
    fn assign_service_id(&mut self, service_id: u32, name: &str) -> Result<(), MapError>;
    fn release_service_id(&mut self, service_id: u32) -> Result<(), MapError>;
    fn read_services(&self) -> Result<Vec<(ServiceKey, BackendSlot)>>;
    fn read_backends(&self) -> Result<Vec<(BackendId, Backend)>>;
    fn read_service_name(&self, service_id: u32) -> Option<String>;
    fn put_source_range(
        &mut self,
        service_id: u32,
        ip: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), MapError>;
    fn delete_source_range(
        &mut self,
        service_id: u32,
        ip: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), MapError>;
    fn read_source_ranges(&self, service_id: u32) -> Vec<(Ipv4Addr, u8)>;
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

/// How frontends' slots choose a backend for a new flow: each service
/// port's own algorithm (its Service's annotation), else the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selection {
    /// The agent's `--algorithm`.
    pub default: Algorithm,
    /// The largest Maglev table: a Maglev frontend's table is sized for its
    /// backend count up to this (prime) size (`maglev::table_size_for`), so
    /// the same flow maps to the same backend on every node and few flows
    /// move when backends change.
    pub maglev_table_size: usize,
}

impl Selection {
    pub const fn new(default: Algorithm, maglev_table_size: usize) -> Self {
        Self {
            default,
            maglev_table_size,
        }
    }
}

impl Default for Selection {
    /// Random, kube-proxy's behaviour.
    fn default() -> Self {
        Self::new(Algorithm::Random, maglev::DEFAULT_TABLE_SIZE)
    }
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

/// Counts of one sync pass, for logs and metrics.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub services_created: usize,
    pub services_updated: usize,
    pub services_deleted: usize,
    pub backends_created: usize,
    pub backends_deleted: usize,
    /// One line per frontend or backend that could not be written; the rest
    /// of the state was still applied.
    pub errors: Vec<SyncError>,
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
    /// Notes what failed, and the map that was full if that was why.
    pub(super) fn fail(&mut self, error: SyncError) {
        if let Some(map) = error.full_map() {
            self.full_maps.insert(map);
        }
        self.errors.push(error);
    }

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

impl<M: ServiceMaps> MapSync<M> {
    /// Adopts whatever the maps already hold (from an earlier run of the
    /// agent), so the first sync only changes what differs and established
    /// connections are not disturbed.
    pub fn adopt(maps: M) -> Result<Self> {
        let mut sync = Self {
            maps,
            node: None,
            zone: None,
            node_ips: Vec::new(),
            selection: Selection::default(),
            services: BTreeMap::new(),
            owners: HashMap::new(),
            owned: HashMap::new(),
            backend_users: HashMap::new(),
            backend_ids: HashMap::new(),
            backend_addrs: HashMap::new(),
            backend_local: HashMap::new(),
            service_ids: IdAllocator::new(MAX_SERVICES - 1),
            backend_id_alloc: IdAllocator::new(MAX_BACKENDS),
        };
        sync.readopt()?;
        Ok(sync)
    }

    /// Re-reads what the maps hold, as at start, keeping this node's
    /// settings, so that the full [`MapSync::apply`] that follows repairs
    /// whatever the maps lost or gained behind the in-memory view (a write
    /// that failed half-way, an entry removed by hand). On error nothing
    /// changes.
    pub fn readopt(&mut self) -> Result<()> {
        let held = adopt::read_held(&mut self.maps)?;
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
        let ports = plan::ports_in_scope(desired, scope);
        let wanted = self.plan(desired, &ports, scope, &mut report);
        let needed = plan::needed_backends(&wanted);
        let local = self.local_backends(&ports);
        // Backends that may lose their last user in this pass.
        let mut maybe_unused = BTreeSet::new();
        self.ensure_backends(&needed, &local, &mut report);
        self.write_frontends(&wanted, &mut maybe_unused, &mut report);
        self.remove_gone(&wanted, scope, &mut maybe_unused, &mut report);
        self.release_unused(&needed, scope, &maybe_unused, &mut report);
        report
    }
}

#[cfg(test)]
pub(crate) mod tests;

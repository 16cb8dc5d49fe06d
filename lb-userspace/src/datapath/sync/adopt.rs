//! Adoption: reading back what the pinned maps hold (from an earlier run,
//! or behind the agent's back) into the in-memory view, and removing what no
//! frontend can reach.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};
use lb_common::{BackendId, MAX_BACKENDS, MAX_SERVICES, ServiceKey, backend_flags, frontend_scope};
use tracing::{debug, warn};

use super::{ProgrammedService, ServiceMaps, count_users, frontend_key};
use crate::datapath::addr::{ip_from_be, port_from_be};
use crate::datapath::ids::IdAllocator;
use crate::model::{BackendAddr, Frontend, Protocol};

/// What the maps hold, read back into the in-memory view.
pub(super) struct Held {
    pub(super) services: BTreeMap<Frontend, ProgrammedService>,
    pub(super) backend_ids: HashMap<BackendAddr, BackendId>,
    pub(super) backend_addrs: HashMap<BackendId, BackendAddr>,
    pub(super) backend_local: HashMap<BackendId, bool>,
    pub(super) backend_users: HashMap<BackendId, usize>,
    pub(super) service_ids: IdAllocator,
    pub(super) backend_id_alloc: IdAllocator,
}

/// Reads the programmed state from the maps, removing what no frontend can
/// reach (slots beyond a master's count, slots without a master, unknown
/// protocols or scopes).
pub(super) fn read_held<M: ServiceMaps>(maps: &mut M) -> Result<Held> {
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

//! ClientIP session affinity: a client's new connections to a service go to
//! the backend it used last, until `timeoutSeconds` pass without a new
//! connection (kube-proxy's semantics) or the backend goes away.

use aya_ebpf::bindings::BPF_ANY;
use lb_common::{AffinityEntry, AffinityKey, Backend, BackendId, BackendSlot, FlowKey, reason};

use crate::{
    lookup,
    maps::{affinity, backends},
    stats,
};

/// Picks the backend of a new flow, honouring the service's affinity.
#[inline(always)]
pub fn choose_backend(
    flow: &FlowKey,
    master: &BackendSlot,
    scope: u8,
    now: u64,
) -> Option<(BackendId, Backend)> {
    if master.affinity_timeout_s == 0 {
        return lookup::pick_backend(flow, master, scope);
    }
    let key = AffinityKey {
        client_ip_be: flow.src_ip_be,
        service_id: master.service_id,
    };
    let timeout_ns = master.affinity_timeout_s as u64 * 1_000_000_000;
    if let Some(pinned) = affinity.get_ptr_mut(key) {
        let pinned = unsafe { &mut *pinned };
        // User space removes pins to backends that leave the service; the
        // lookup also guards against a backend deleted in between.
        if now.wrapping_sub(pinned.last_used_ns) < timeout_ns
            && let Some(backend) = unsafe { backends.get(pinned.backend_id) }
        {
            pinned.last_used_ns = now;
            stats::count(reason::AFFINITY_HIT);
            return Some((pinned.backend_id, *backend));
        }
    }
    let (backend_id, backend) = lookup::pick_backend(flow, master, scope)?;
    let pin = AffinityEntry {
        backend_id,
        _pad: 0,
        last_used_ns: now,
    };
    // Failure only costs stickiness for this client, never the connection.
    let _ = affinity.insert(key, pin, BPF_ANY as u64);
    Some((backend_id, backend))
}

//! Service lookup and backend selection.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{
    Backend, BackendId, BackendSlot, FlowKey, LEAST_CONN_CHOICES, ServiceKey, SourceRange,
    flow_hash, frontend_scope, service_flags,
};

use crate::load;
use crate::maps::{backends, rr_cursors, services, source_ranges};

/// The master entry of the frontend this flow is addressed to, if any, and
/// its scope: for a client inside the cluster the frontend's in-cluster
/// entry when it has one (flagged on the ordinary entry, so other frontends
/// cost one lookup).
#[inline(always)]
pub fn service_of(flow: &FlowKey, in_cluster: bool) -> Option<(BackendSlot, u8)> {
    let key = ServiceKey::new(flow.dst_ip_be, flow.dst_port_be, flow.proto, 0);
    let master = unsafe { services.get(key) }.copied()?;
    if in_cluster && master.flags & service_flags::HAS_IN_CLUSTER != 0 {
        let key = ServiceKey::scoped(
            flow.dst_ip_be,
            flow.dst_port_be,
            flow.proto,
            frontend_scope::IN_CLUSTER,
            0,
        );
        if let Some(inside) = unsafe { services.get(key) } {
            return Some((*inside, frontend_scope::IN_CLUSTER));
        }
    }
    Some((master, frontend_scope::ALL))
}

/// Picks a backend for a new flow by the frontend's scheduler: uniformly at
/// random among the slots (kube-proxy's iptables mode), the Maglev table
/// entry the flow's 5-tuple hashes to (the same on every node), the next
/// slot in turn, or the slot whose backend has the fewest open flows.
#[inline(always)]
pub fn pick_backend(
    flow: &FlowKey,
    master: &BackendSlot,
    scope: u8,
) -> Option<(BackendId, Backend)> {
    let count = master.count as u32;
    if count == 0 {
        return None;
    }
    let slots = Slots { flow, scope, count };
    let backend_id = if master.flags & service_flags::LEAST_CONN != 0 {
        slots.least_loaded()?
    } else {
        let draw = if master.flags & service_flags::MAGLEV != 0 {
            flow_hash(
                flow.src_ip_be,
                flow.dst_ip_be,
                flow.src_port_be,
                flow.dst_port_be,
                flow.proto,
            )
        } else if master.flags & service_flags::ROUND_ROBIN != 0 {
            next_in_turn(master.service_id)
        } else {
            unsafe { bpf_get_prandom_u32() }
        };
        slots.backend_at(draw % count)?
    };
    let backend = unsafe { backends.get(backend_id) }?;
    Some((backend_id, *backend))
}

/// The slots of the frontend a flow is addressed to, in one scope.
struct Slots<'a> {
    flow: &'a FlowKey,
    scope: u8,
    count: u32,
}

impl Slots<'_> {
    /// The backend in slot `index + 1` (`index < count`).
    #[inline(always)]
    fn backend_at(&self, index: u32) -> Option<BackendId> {
        let key = ServiceKey::scoped(
            self.flow.dst_ip_be,
            self.flow.dst_port_be,
            self.flow.proto,
            self.scope,
            (index + 1) as u16,
        );
        Some(unsafe { services.get(key) }?.backend_id)
    }

    /// Least connection: the backend with the fewest open flows among
    /// `LEAST_CONN_CHOICES` consecutive slots from a random one (all of
    /// them when there are no more). Equals are drawn from evenly
    /// (reservoir sampling): taking the first of equals would hand the
    /// turns of a busy backend to the slot after it.
    #[inline(always)]
    fn least_loaded(&self) -> Option<BackendId> {
        let start = unsafe { bpf_get_prandom_u32() } % self.count;
        // Backend IDs start at 1: 0 is "none yet".
        let (mut best, mut least, mut equals) = (0, u32::MAX, 0u32);
        for i in 0..LEAST_CONN_CHOICES {
            if i >= self.count {
                break;
            }
            let Some(id) = self.backend_at((start + i) % self.count) else {
                continue;
            };
            let flows = load::of(id);
            if flows > least {
                continue;
            }
            if flows == least {
                equals += 1;
                // The new equal wins with chance 1/equals (checked_rem:
                // a plain % would bring in a division-by-zero panic path).
                let draw = unsafe { bpf_get_prandom_u32() };
                if draw.checked_rem(equals) != Some(0) {
                    continue;
                }
            } else {
                equals = 1;
            }
            (best, least) = (id, flows);
        }
        (best != 0).then_some(best)
    }
}

/// Round robin: this CPU's next turn at the frontend. Each CPU keeps its
/// own cursor (no contention, no atomics), started at a random slot so
/// CPUs do not move in step: over any run, backends' shares differ by at
/// most one flow per CPU.
#[inline(always)]
fn next_in_turn(service_id: u32) -> u32 {
    if let Some(cursor) = rr_cursors.get_ptr_mut(service_id) {
        let cursor = unsafe { &mut *cursor };
        *cursor = cursor.wrapping_add(1);
        return *cursor;
    }
    let first = unsafe { bpf_get_prandom_u32() };
    // Failure (the map full) only costs the turn order: random instead.
    let _ = rr_cursors.insert(service_id, first, 0);
    first
}

/// Whether the flow's source is in the service's loadBalancerSourceRanges.
#[inline(always)]
pub fn source_allowed(flow: &FlowKey, service_id: u32) -> bool {
    let key = Key::new(
        64,
        SourceRange {
            service_id_be: service_id.to_be(),
            src_ip_be: flow.src_ip_be,
        },
    );
    source_ranges.get(&key).is_some()
}

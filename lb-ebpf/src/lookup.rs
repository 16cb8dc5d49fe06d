//! Service lookup and backend selection.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use aya_ebpf::maps::lpm_trie::Key;
use lb_common::{
    Backend, BackendId, BackendSlot, FlowKey, ServiceKey, SourceRange, flow_hash, frontend_scope,
    service_flags,
};

use crate::maps::{backends, services, source_ranges};

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

/// Picks a backend for a new flow: uniformly at random among the slots,
/// like kube-proxy's iptables mode, or for a Maglev frontend the table
/// entry the flow's 5-tuple hashes to (the same on every node).
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
    let draw = if master.flags & service_flags::MAGLEV != 0 {
        flow_hash(
            flow.src_ip_be,
            flow.dst_ip_be,
            flow.src_port_be,
            flow.dst_port_be,
            flow.proto,
        )
    } else {
        unsafe { bpf_get_prandom_u32() }
    };
    let slot = (draw % count) + 1;
    let key = ServiceKey::scoped(
        flow.dst_ip_be,
        flow.dst_port_be,
        flow.proto,
        scope,
        slot as u16,
    );
    let backend_id = unsafe { services.get(key) }?.backend_id;
    let backend = unsafe { backends.get(backend_id) }?;
    Some((backend_id, *backend))
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

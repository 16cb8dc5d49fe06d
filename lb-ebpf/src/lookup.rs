//! Service lookup and backend selection.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{Backend, BackendId, BackendSlot, FlowKey, ServiceKey};

use crate::maps::{backends, services};

/// The master entry of the frontend this flow is addressed to, if any.
#[inline(always)]
pub fn service_of(flow: &FlowKey) -> Option<BackendSlot> {
    let key = ServiceKey::new(flow.dst_ip_be, flow.dst_port_be, flow.proto, 0);
    unsafe { services.get(key) }.copied()
}

/// Picks a backend uniformly at random among the service's slots, like
/// kube-proxy's iptables mode does for each new connection.
#[inline(always)]
pub fn pick_backend(flow: &FlowKey, master: &BackendSlot) -> Option<(BackendId, Backend)> {
    let count = master.count as u32;
    if count == 0 {
        return None;
    }
    let slot = (unsafe { bpf_get_prandom_u32() } % count) + 1;
    let key = ServiceKey::new(flow.dst_ip_be, flow.dst_port_be, flow.proto, slot as u16);
    let backend_id = unsafe { services.get(key) }?.backend_id;
    let backend = unsafe { backends.get(backend_id) }?;
    Some((backend_id, *backend))
}

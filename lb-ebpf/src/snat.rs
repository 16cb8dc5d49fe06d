//! Source ports for flows this node SNATs (external client → backend on
//! another node). The range is reserved from local sockets by the agent;
//! a port is free when no reply entry for (backend, node, port) exists.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{Backend, FlowKey};

use crate::maps::{conntrack, nat_config};

/// Tries a few random ports of the range; a busy range fails the flow
/// rather than sharing a port between two flows to the same backend.
const ATTEMPTS: u32 = 4;

/// (SNAT address, source port in network order) for a new flow.
#[inline(always)]
pub fn allocate(flow: &FlowKey, backend: &Backend) -> Option<(u32, u16)> {
    let cfg = nat_config.get(0)?;
    if cfg.snat_ip_be == 0 || cfg.port_max < cfg.port_min {
        return None;
    }
    let span = (cfg.port_max - cfg.port_min) as u32 + 1;
    for _ in 0..ATTEMPTS {
        let port = cfg.port_min as u32 + unsafe { bpf_get_prandom_u32() } % span;
        let port_be = (port as u16).to_be();
        let reply_key = FlowKey {
            src_ip_be: backend.ip_be,
            dst_ip_be: cfg.snat_ip_be,
            src_port_be: backend.port_be,
            dst_port_be: port_be,
            proto: flow.proto,
            _pad: [0; 3],
        };
        if conntrack.get_ptr(reply_key).is_none() {
            return Some((cfg.snat_ip_be, port_be));
        }
    }
    None
}

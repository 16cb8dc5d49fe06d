//! Source ports for flows this node SNATs (external client → backend on
//! another node). The range is reserved from local sockets by the agent;
//! a port is free when no reply entry for (backend, node, port) exists.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{Backend, BackendId, FlowKey, reason};

use crate::maps::nat_config;
use crate::stats;

/// Ports tried per new flow: consecutive ones from a random offset, so a
/// nearly full range is still searched (four random probes gave up at 60 %
/// occupancy). A busy range fails the flow rather than sharing a port
/// between two flows to the same backend.
const PROBES: u32 = 32;

/// Finds a free SNAT port towards `backend` and records the flow on it:
/// (SNAT address, port in network order). A port is free when its reply
/// entry (backend → node:port) can be inserted with `BPF_NOEXIST`, which
/// also settles a race with another CPU. Counts and returns None when no
/// port is free or conntrack refuses.
#[inline(always)]
pub fn claim(
    flow: &FlowKey,
    backend_id: BackendId,
    backend: &Backend,
    service_id: u32,
    (tcp_flags, seq): (u8, u32),
    (source_ip_be, now): (u32, u64),
) -> Option<(u32, u16)> {
    const EEXIST: i32 = -17;
    let cfg = nat_config.get(0)?;
    // The egress device's address, as MASQUERADE picks it; the configured
    // node address when the route gave none.
    let snat_ip = if source_ip_be != 0 {
        source_ip_be
    } else {
        cfg.snat_ip_be
    };
    if snat_ip == 0 || cfg.port_max < cfg.port_min {
        return None;
    }
    let min = cfg.port_min as u32;
    let span = (cfg.port_max - cfg.port_min) as u32 + 1;
    let start = unsafe { bpf_get_prandom_u32() };
    for i in 0..PROBES {
        let port_be = ((min + start.wrapping_add(i) % span) as u16).to_be();
        match crate::conntrack::create_snat(
            flow,
            backend_id,
            backend,
            service_id,
            (snat_ip, port_be),
            (tcp_flags, seq),
            now,
        ) {
            Ok(()) => return Some((snat_ip, port_be)),
            Err(e) if e == EEXIST => continue,
            Err(_) => {
                stats::count(reason::CONNTRACK_FULL);
                return None;
            }
        }
    }
    stats::count(reason::SNAT_PORTS_EXHAUSTED);
    None
}

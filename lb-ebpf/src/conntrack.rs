//! Connection tracking: one entry per direction of each translated flow, so
//! later packets keep their backend and replies get the VIP back.

use aya_ebpf::bindings::BPF_ANY;
use lb_common::{Backend, BackendId, ConnEntry, FlowKey, conn_kind, tcp_seen};

use crate::maps::conntrack;

/// Refresh `last_seen_ns` at most this often, to keep map writes off the fast path.
const TOUCH_INTERVAL_NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn lookup(flow: &FlowKey) -> Option<*mut ConnEntry> {
    conntrack.get_ptr_mut(flow)
}

/// Whether a new flow is balanced to the client itself.
#[inline(always)]
pub fn is_hairpin(flow: &FlowKey, backend: &Backend) -> bool {
    flow.src_ip_be == backend.ip_be
}

/// Records a new flow `client → VIP` DNATed to `backend`.
#[inline(always)]
pub fn create(
    flow: &FlowKey,
    backend_id: BackendId,
    backend: &Backend,
    service_id: u32,
    tcp_flags: u8,
    now: u64,
) -> Result<(), i32> {
    let hairpin = is_hairpin(flow, backend);
    let forward = ConnEntry {
        nat_ip_be: backend.ip_be,
        nat_port_be: backend.port_be,
        kind: if hairpin {
            conn_kind::HAIRPIN_FORWARD
        } else {
            conn_kind::FORWARD
        },
        tcp_flags: tcp_flags & TRACKED_FLAGS,
        backend_id,
        service_id,
        second_ip_be: 0,
        second_port_be: 0,
        _pad: 0,
        created_ns: now,
        last_seen_ns: now,
    };
    // The reply travels backend → client; its source gets the VIP back. A
    // hairpin flow was SNATed to the VIP, so its reply is addressed there.
    let reply_key = FlowKey {
        src_ip_be: backend.ip_be,
        dst_ip_be: if hairpin {
            flow.dst_ip_be
        } else {
            flow.src_ip_be
        },
        src_port_be: backend.port_be,
        dst_port_be: flow.src_port_be,
        proto: flow.proto,
        _pad: [0; 3],
    };
    let reply = ConnEntry {
        nat_ip_be: flow.dst_ip_be,
        nat_port_be: flow.dst_port_be,
        kind: if hairpin {
            conn_kind::HAIRPIN_REPLY
        } else {
            conn_kind::REPLY
        },
        tcp_flags: 0,
        ..forward
    };
    // Reply first: once the forward entry exists the backend may answer.
    conntrack.insert(reply_key, reply, BPF_ANY as u64)?;
    conntrack.insert(flow, forward, BPF_ANY as u64)
}

const TRACKED_FLAGS: u8 = tcp_seen::SYN | tcp_seen::FIN | tcp_seen::RST | tcp_seen::ACK;

/// Notes activity on an existing entry.
#[inline(always)]
pub fn touch(entry: &mut ConnEntry, tcp_flags: u8, now: u64) {
    let flags = entry.tcp_flags | (tcp_flags & TRACKED_FLAGS);
    if flags != entry.tcp_flags {
        entry.tcp_flags = flags;
    }
    if now.wrapping_sub(entry.last_seen_ns) > TOUCH_INTERVAL_NS {
        entry.last_seen_ns = now;
    }
}

/// A SYN on a flow that was closed is a new connection reusing the same
/// ports: it must be balanced afresh, not sent to the old (maybe gone) backend.
#[inline(always)]
pub fn is_reopened(entry: &ConnEntry, tcp_flags: u8) -> bool {
    tcp_flags & (tcp_seen::SYN | tcp_seen::ACK) == tcp_seen::SYN
        && entry.tcp_flags & (tcp_seen::FIN | tcp_seen::RST) != 0
}

/// Records a new external flow `client → frontend` DNATed to a backend on
/// another node and SNATed to `(snat_ip, snat_port)` of this node.
#[inline(always)]
pub fn create_snat(
    flow: &FlowKey,
    backend_id: BackendId,
    backend: &Backend,
    service_id: u32,
    snat: (u32, u16),
    tcp_flags: u8,
    now: u64,
) -> Result<(), i32> {
    let forward = ConnEntry {
        nat_ip_be: backend.ip_be,
        nat_port_be: backend.port_be,
        kind: conn_kind::FORWARD_SNAT,
        tcp_flags: tcp_flags & TRACKED_FLAGS,
        backend_id,
        service_id,
        second_ip_be: snat.0,
        second_port_be: snat.1,
        _pad: 0,
        created_ns: now,
        last_seen_ns: now,
    };
    let reply_key = FlowKey {
        src_ip_be: backend.ip_be,
        dst_ip_be: snat.0,
        src_port_be: backend.port_be,
        dst_port_be: snat.1,
        proto: flow.proto,
        _pad: [0; 3],
    };
    let reply = ConnEntry {
        nat_ip_be: flow.dst_ip_be,
        nat_port_be: flow.dst_port_be,
        kind: conn_kind::REPLY_SNAT,
        tcp_flags: 0,
        second_ip_be: flow.src_ip_be,
        second_port_be: flow.src_port_be,
        ..forward
    };
    conntrack.insert(reply_key, reply, BPF_ANY as u64)?;
    conntrack.insert(flow, forward, BPF_ANY as u64)
}

/// A client may open a direct connection to a backend from the source port
/// of a closed connection it made to that backend through a VIP (TIME_WAIT
/// reuse): the new connection's replies would then match the old flow's
/// reply entry and be rev-NATed to the VIP. On the new connection's SYN, the
/// old flow is forgotten if it is closed. (An open one is left alone: the two
/// flows then share a reply tuple, which only source-port remapping — not
/// done yet — could separate.)
#[inline(always)]
pub fn release_closed_clash(flow: &FlowKey, tcp_flags: u8) {
    if flow.proto != lb_common::PROTO_TCP
        || tcp_flags & tcp_seen::SYN == 0
        || tcp_flags & tcp_seen::ACK != 0
    {
        return;
    }
    let reply_key = flow.reversed();
    let Some(reply) = (unsafe { conntrack.get(reply_key) }).copied() else {
        return;
    };
    if reply.kind != conn_kind::REPLY {
        return;
    }
    let forward_key = FlowKey {
        dst_ip_be: reply.nat_ip_be,
        dst_port_be: reply.nat_port_be,
        ..*flow
    };
    if let Some(forward) = unsafe { conntrack.get(forward_key) }
        && forward.tcp_flags & (tcp_seen::FIN | tcp_seen::RST) == 0
    {
        return;
    }
    let _ = conntrack.remove(reply_key);
    let _ = conntrack.remove(forward_key);
}

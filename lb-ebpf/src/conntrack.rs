//! Connection tracking: one entry per direction of each translated flow, so
//! later packets keep their backend and replies get the VIP back.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_get_prandom_u32,
};
use lb_common::{
    Backend, BackendId, ConnEntry, FlowKey, SEQ_MARK_STEP, SEQ_WINDOW, conn_kind, reason, tcp_seen,
};

use crate::{load, maps::conntrack, stats};

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

/// Why a new flow could not be recorded.
pub enum CreateError {
    /// The map refused the insert.
    Full,
    /// The flow's reply tuple belongs to another open flow and no free
    /// source port was found to move this one to.
    Clash,
}

impl CreateError {
    /// Counts the failure and says whether the packet may still go, and
    /// with which source port (0: its own): a full map still lets it
    /// through, translated and untracked (the next packet is balanced
    /// again, to the same backend unless the service changed); a clash with
    /// no free port drops it (the client retransmits).
    #[inline(always)]
    pub fn fallback(self) -> Option<u16> {
        match self {
            Self::Full => {
                stats::count(reason::CONNTRACK_FULL);
                Some(0)
            }
            Self::Clash => {
                stats::count(reason::SOURCE_PORT_CLASH_DROPPED);
                None
            }
        }
    }
}

/// Source ports a clashing flow is moved to: below Linux's default
/// ephemeral range (32768–60999), where the client's own connections
/// to the backend are unlikely to be.
const REMAP_PORT_MIN: u32 = 1024;
const REMAP_PORT_SPAN: u32 = 32768 - REMAP_PORT_MIN;
const REMAP_ATTEMPTS: u32 = 4;

/// Records a new flow `client → VIP` DNATed to `backend`; returns the
/// source port (network order) the flow must be given, or 0 to keep its own.
///
/// Two open flows of a client may share a source port when they go to
/// different frontends (the kernel only keeps 4-tuples unique), and if the
/// frontends share a backend, both flows would have the same reply tuple:
/// the second would steal the first one's replies. The second is then moved
/// to a free source port, as netfilter's NAT does for clashing tuples.
#[inline(always)]
pub fn create(
    flow: &FlowKey,
    backend_id: BackendId,
    backend: &Backend,
    service_id: u32,
    tcp_flags: u8,
    seq: u32,
    now: u64,
) -> Result<u16, CreateError> {
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
        seq_mark: seq,
        _pad2: 0,
        created_ns: now,
        last_seen_ns: now,
    };
    // The reply travels backend → client; its source gets the VIP back. A
    // hairpin flow was SNATed to the VIP, so its reply is addressed there
    // (and cannot clash: the tuple names the frontend).
    let reply_key = flow.reply_key(&forward);
    let reply = ConnEntry {
        nat_ip_be: flow.dst_ip_be,
        nat_port_be: flow.dst_port_be,
        kind: if hairpin {
            conn_kind::HAIRPIN_REPLY
        } else {
            conn_kind::REPLY
        },
        tcp_flags: 0,
        // The backend's sequence numbers are its own.
        seq_mark: 0,
        ..forward
    };
    // Reply first: once the forward entry exists the backend may answer.
    // Inserted only if absent, so the common case costs one insert and an
    // existing entry is judged only when there is one.
    let source_port_be = if hairpin {
        insert(&reply_key, &reply, BPF_ANY)?;
        0
    } else if insert(&reply_key, &reply, BPF_NOEXIST).is_ok() {
        0
    } else if !reply_taken(&reply_key, flow) {
        insert(&reply_key, &reply, BPF_ANY)?;
        0
    } else {
        // Remapped: the reply entry restores the client's own port.
        let moved = ConnEntry {
            second_port_be: flow.src_port_be,
            ..reply
        };
        let port = claim_client_port(&reply_key, &moved).ok_or(CreateError::Clash)?;
        stats::count(reason::SOURCE_PORT_REMAPPED);
        port
    };
    let forward = ConnEntry {
        // Remapped: the client's address with its new source port.
        second_ip_be: if source_port_be != 0 {
            flow.src_ip_be
        } else {
            0
        },
        second_port_be: source_port_be,
        ..forward
    };
    insert(flow, &forward, BPF_ANY)?;
    load::opened(backend_id);
    Ok(source_port_be)
}

#[inline(always)]
fn insert(key: &FlowKey, entry: &ConnEntry, flags: u32) -> Result<(), CreateError> {
    conntrack
        .insert(key, entry, flags as u64)
        .map_err(|_| CreateError::Full)
}

/// Whether `reply_key` is the reply tuple of another flow that is still
/// tracked (open, or closing and not yet swept). A stale entry — its flow
/// forgotten, or this very flow reopened — may be taken over.
#[inline(always)]
fn reply_taken(reply_key: &FlowKey, flow: &FlowKey) -> bool {
    let Some(existing) = (unsafe { conntrack.get(reply_key) }).copied() else {
        return false;
    };
    if existing.kind != conn_kind::REPLY {
        return true;
    }
    let owner = reply_key.forward_key(&existing);
    if owner == *flow {
        return false;
    }
    conntrack.get_ptr(owner).is_some()
}

/// Records `reply` under a random free source port of the client (the
/// reply tuple `(backend, client, port)` not in use); returns the port
/// (network order).
#[inline(always)]
fn claim_client_port(reply_key: &FlowKey, reply: &ConnEntry) -> Option<u16> {
    for _ in 0..REMAP_ATTEMPTS {
        let port = REMAP_PORT_MIN + unsafe { bpf_get_prandom_u32() } % REMAP_PORT_SPAN;
        let candidate = FlowKey {
            dst_port_be: (port as u16).to_be(),
            ..*reply_key
        };
        if insert(&candidate, reply, BPF_NOEXIST).is_ok() {
            return Some(candidate.dst_port_be);
        }
    }
    None
}

const TRACKED_FLAGS: u8 = tcp_seen::SYN | tcp_seen::FIN | tcp_seen::RST | tcp_seen::ACK;
const CLOSING: u8 = tcp_seen::FIN | tcp_seen::RST;

/// What a packet did to its direction's entry.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// Noted; the flow stays as it was.
    Seen,
    /// This packet is the sender's first FIN or RST on the flow.
    Closed,
    /// A RST or FIN whose sequence number its sender cannot have sent:
    /// forged by someone guessing the flow. The entry is left alone and the
    /// caller drops the packet.
    OutOfWindow,
}

/// Notes activity on an existing entry: TCP flags, the sender's sequence
/// mark, the time.
#[inline(always)]
pub fn touch(entry: &mut ConnEntry, tcp_flags: u8, seq: u32, now: u64) -> Touch {
    if tcp_flags & CLOSING != 0 && !within_window(entry.seq_mark, seq) {
        stats::count(reason::TCP_OUT_OF_WINDOW_DROPPED);
        return Touch::OutOfWindow;
    }
    advance_mark(entry, seq);
    let before = entry.tcp_flags;
    let flags = before | (tcp_flags & TRACKED_FLAGS);
    if flags != before {
        entry.tcp_flags = flags;
    }
    if now.wrapping_sub(entry.last_seen_ns) > TOUCH_INTERVAL_NS {
        entry.last_seen_ns = now;
    }
    if before & CLOSING == 0 && flags & CLOSING != 0 {
        if conn_kind::is_forward(entry.kind) {
            load::closed(entry.backend_id);
        }
        Touch::Closed
    } else {
        Touch::Seen
    }
}

/// Whether `seq` is near what the direction's sender has sent (an unknown
/// mark believes anything: the first answer of a backend may be a RST).
#[inline(always)]
fn within_window(mark: u32, seq: u32) -> bool {
    let ahead = seq.wrapping_sub(mark) as i32;
    mark == 0 || (-(SEQ_WINDOW as i32)..=(SEQ_WINDOW + SEQ_MARK_STEP) as i32).contains(&ahead)
}

/// Moves the mark up to `seq` once the sender is a step past it — but only
/// by a plausible distance, so a forged segment far ahead cannot drag it to
/// where a forged RST would then fit. UDP (seq 0) leaves it at 0.
#[inline(always)]
fn advance_mark(entry: &mut ConnEntry, seq: u32) {
    let ahead = seq.wrapping_sub(entry.seq_mark);
    if entry.seq_mark == 0 || (ahead > SEQ_MARK_STEP && ahead <= SEQ_WINDOW) {
        entry.seq_mark = seq;
    }
}

/// A SYN on a flow that was closed — by the client (its forward entry saw
/// FIN or RST) or by the backend (its reply entry did) — is a new
/// connection reusing the same ports: it must be balanced afresh, not sent
/// to the old (maybe gone) backend.
#[inline(always)]
pub fn is_reopened(flow: &FlowKey, entry: &ConnEntry, tcp_flags: u8) -> bool {
    const CLOSED: u8 = CLOSING;
    if tcp_flags & (tcp_seen::SYN | tcp_seen::ACK) != tcp_seen::SYN {
        return false;
    }
    if entry.tcp_flags & CLOSED != 0 {
        return true;
    }
    // Rare (a SYN on an entry): one more lookup for the backend's side.
    lookup(&flow.reply_key(entry)).is_some_and(|reply| unsafe { (*reply).tcp_flags } & CLOSED != 0)
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
    (tcp_flags, seq): (u8, u32),
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
        seq_mark: seq,
        _pad2: 0,
        created_ns: now,
        last_seen_ns: now,
    };
    let reply_key = flow.reply_key(&forward);
    let reply = ConnEntry {
        nat_ip_be: flow.dst_ip_be,
        nat_port_be: flow.dst_port_be,
        kind: conn_kind::REPLY_SNAT,
        tcp_flags: 0,
        seq_mark: 0,
        second_ip_be: flow.src_ip_be,
        second_port_be: flow.src_port_be,
        ..forward
    };
    // NOEXIST: the port is claimed only if no other flow took it since it
    // was found free (EEXIST: the caller picks another).
    conntrack.insert(reply_key, reply, BPF_NOEXIST as u64)?;
    conntrack.insert(flow, forward, BPF_ANY as u64)?;
    load::opened(backend_id);
    Ok(())
}

/// A client may open a direct connection to a backend from the source port
/// of a closed connection it made to that backend through a VIP (TIME_WAIT
/// reuse): the new connection's replies would then match the old flow's
/// reply entry and be rev-NATed to the VIP. On the new connection's SYN, the
/// old flow is forgotten if it is closed. (An open one is left alone: the
/// datapath cannot see direct connections, so it cannot move them.)
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
    let forward_key = reply_key.forward_key(&reply);
    if let Some(forward) = unsafe { conntrack.get(forward_key) }
        && forward.tcp_flags & (tcp_seen::FIN | tcp_seen::RST) == 0
    {
        return;
    }
    let _ = conntrack.remove(reply_key);
    let _ = conntrack.remove(forward_key);
}

//! Switchyard datapath: tc programs on the host side of pod interfaces and
//! on the node's external interface.
//!
//! - `from_pod` (tc ingress on a pod's host-side interface: packets leaving
//!   the pod) and `from_world` (tc ingress on the external interface) DNAT
//!   traffic addressed to a service frontend to one of its backends and
//!   record the flow; flows from outside to a backend on another node are
//!   also SNATed to this node and forwarded by FIB lookup.
//! - `to_pod` and `to_world` (tc egress) restore the frontend as the source
//!   of replies, so clients only ever talk to the address they chose.
//! - `sock_*` (cgroup socket hooks) do the same for processes of the node
//!   itself, at connect()/sendmsg() time (sock.rs).
#![no_std]
#![no_main]
// BPF inline assembly: the atomic add of load.rs.
#![feature(asm_experimental_arch)]
#![allow(non_upper_case_globals)]

mod admission;
mod affinity;
mod clock;
mod conntrack;
mod fib;
mod fragment;
mod icmp;
mod load;
mod lookup;
mod maps;
mod nat;
mod parse;
mod policy;
mod reject;
mod snat;
mod sock;
mod spoof;
mod stats;
mod xdp;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use lb_common::{
    Backend, BackendId, BackendSlot, ConnEntry, backend_flags, conn_kind, reason, service_flags,
    tcp_seen,
};

use crate::{
    conntrack::Touch,
    nat::End,
    parse::{Packet, Parsed},
};

/// Where a packet entered the node.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// From a local pod.
    Pod,
    /// From outside, on the external interface.
    World,
}

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    ingress(&ctx, Side::Pod)
}

#[classifier]
pub fn from_world(ctx: TcContext) -> i32 {
    ingress(&ctx, Side::World)
}

/// XDP on the external interface: the fast path for external flows.
#[xdp]
pub fn xdp_world(ctx: XdpContext) -> u32 {
    xdp::handle(&ctx)
}

/// Host processes' connect(): TCP and connected UDP to a service go
/// straight to a backend.
#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx)
}

/// Host processes' unconnected UDP datagrams to a service.
#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::to_backend(&ctx)
}

/// Replies to host processes' UDP sockets come from the service address.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::to_service(&ctx)
}

/// getpeername() of a host socket connected through a service.
#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::to_service(&ctx)
}

/// Packets entering a pod: replies get their service address back, and so
/// do ICMP errors about the pod's translated flows (path-MTU discovery).
/// Also where NetworkPolicy judges what may enter the pod.
#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    egress(&ctx, Side::Pod)
}

#[classifier]
pub fn to_world(ctx: TcContext) -> i32 {
    egress(&ctx, Side::World)
}

/// One call site each for `forward` and `reply`, fragments included: the
/// programs stay within the verifier's limits.
#[inline(always)]
fn ingress(ctx: &TcContext, side: Side) -> i32 {
    let parsed = parse::parse(ctx);
    if matches!(parsed, Parsed::Other) {
        // Not TCP or UDP: nothing to translate; a pod's egress policy may
        // still have its say (ICMP, SCTP).
        let denied = side == Side::Pod && !policy::admits_other_out_of_pod(ctx);
        return if denied { TC_ACT_SHOT } else { TC_ACT_OK };
    }
    let Some(pkt) = fragment::flow_packet(parsed) else {
        return TC_ACT_OK;
    };
    if side == Side::Pod && sock::is_direct(ctx, pkt.flow.src_ip_be) {
        stats::count(reason::SOCK_DIRECT_PASSED);
        return TC_ACT_OK;
    }
    let action = forward(ctx, &pkt, side);
    if action != TC_ACT_SHOT {
        fragment::remember(&pkt);
    }
    action
}

/// Packets leaving by an interface towards `side`.
#[inline(always)]
fn egress(ctx: &TcContext, side: Side) -> i32 {
    match parse::parse(ctx) {
        // An ICMP error about a translated flow (a pod's, or an external
        // client's node-port flow) quotes the backend: give it the service
        // address back.
        Parsed::Other => {
            if side == Side::Pod && !policy::admits_other_into_pod(ctx) {
                return TC_ACT_SHOT;
            }
            icmp::restore_quoted_service(ctx);
        }
        parsed => {
            if let Some(pkt) = fragment::flow_packet(parsed) {
                match reply(ctx, &pkt) {
                    Reply::Dropped => return TC_ACT_SHOT,
                    // Not a reply of a service flow: into a pod, the pod's
                    // ingress policy decides.
                    Reply::NotOne if side == Side::Pod && !policy::admits_into_pod(ctx, &pkt) => {
                        return TC_ACT_SHOT;
                    }
                    _ => {}
                }
                fragment::remember(&pkt);
            }
        }
    }
    TC_ACT_OK
}

/// A TCP segment that cannot open a connection (no SYN).
#[inline(always)]
fn is_mid_flow_tcp(pkt: &Packet) -> bool {
    pkt.flow.proto == lb_common::PROTO_TCP && pkt.tcp_flags & tcp_seen::SYN == 0
}

/// A TCP segment that opens or closes a connection.
#[inline(always)]
fn is_tcp_control(pkt: &Packet) -> bool {
    pkt.flow.proto == lb_common::PROTO_TCP
        && pkt.tcp_flags & (tcp_seen::SYN | tcp_seen::FIN | tcp_seen::RST) != 0
}

#[inline(always)]
fn forward(ctx: &TcContext, pkt: &Packet, side: Side) -> i32 {
    let now = crate::clock::now();

    // A pod's segments that change connection state must be its own.
    if side == Side::Pod && is_tcp_control(pkt) && !spoof::source_allowed(ctx, pkt.flow.src_ip_be) {
        return TC_ACT_SHOT;
    }
    // Established flows first: they keep their backend even if the service
    // changed or disappeared since, as with kube-proxy's conntrack.
    if let Some(entry) = conntrack::lookup(&pkt.flow)
        && let Some(action) = tracked(ctx, pkt, unsafe { &mut *entry }, now)
    {
        return action;
    }
    new_flow(ctx, pkt, side, now)
}

/// A packet whose tuple has an entry: the client side of a flow, or a reply
/// this program finishes itself (hairpin, SNAT). `None` when the entry does
/// not decide: a closed flow's tuple reopened by a SYN, or a reply that
/// the egress program translates.
#[inline(always)]
fn tracked(ctx: &TcContext, pkt: &Packet, entry: &mut ConnEntry, now: u64) -> Option<i32> {
    let kind = entry.kind;
    if conn_kind::is_forward(kind) {
        if conntrack::is_reopened(&pkt.flow, entry, pkt.tcp_flags) {
            return None;
        }
        return Some(established(ctx, pkt, entry, now));
    }
    if kind != conn_kind::HAIRPIN_REPLY && kind != conn_kind::REPLY_SNAT {
        return None;
    }
    if conntrack::touch(entry, pkt.tcp_flags, pkt.tcp_seq, now) == Touch::OutOfWindow {
        return Some(TC_ACT_SHOT);
    }
    let front = (entry.nat_ip_be, entry.nat_port_be);
    Some(if kind == conn_kind::HAIRPIN_REPLY {
        hairpin_reply(ctx, pkt, front)
    } else {
        snat_reply(
            ctx,
            pkt,
            front,
            (entry.second_ip_be, entry.second_port_be),
            now,
        )
    })
}

/// The client's packet of an established flow, sent where its entry says.
#[inline(always)]
fn established(ctx: &TcContext, pkt: &Packet, entry: &mut ConnEntry, now: u64) -> i32 {
    match conntrack::touch(entry, pkt.tcp_flags, pkt.tcp_seq, now) {
        Touch::OutOfWindow => return TC_ACT_SHOT,
        // The client is done: its quota place is free again.
        Touch::Closed => admission::release(pkt.flow.src_ip_be),
        Touch::Seen => {}
    }
    let backend = (entry.nat_ip_be, entry.nat_port_be);
    let action = if entry.kind == conn_kind::FORWARD_SNAT {
        translate_snat(
            ctx,
            pkt,
            backend,
            (entry.second_ip_be, entry.second_port_be),
            now,
        )
    } else {
        let hairpin = entry.kind == conn_kind::HAIRPIN_FORWARD;
        translate(ctx, pkt, backend, entry.second_port_be, hairpin)
    };
    if action != TC_ACT_SHOT {
        stats::established(entry.service_id, pkt.len as u64);
    }
    action
}

/// Pod:backend-port → VIP:client-port becomes VIP:port → pod:client-port,
/// bounced straight back into the pod.
#[inline(always)]
fn hairpin_reply(ctx: &TcContext, pkt: &Packet, (vip, vport): (u32, u16)) -> i32 {
    let rewritten = nat::rewrite(ctx, pkt, End::Source, vip, vport).and_then(|()| {
        nat::rewrite(
            ctx,
            pkt,
            End::Destination,
            pkt.flow.src_ip_be,
            pkt.flow.dst_port_be,
        )
    });
    finish_reply(rewritten.and_then(|()| nat::bounce(ctx)))
}

/// Backend → node:snat-port becomes frontend → client, forwarded by us.
#[inline(always)]
fn snat_reply(
    ctx: &TcContext,
    pkt: &Packet,
    (front_ip, front_port): (u32, u16),
    (client_ip, client_port): (u32, u16),
    now: u64,
) -> i32 {
    let hop = match fib::lookup(ctx, pkt, front_ip, client_ip) {
        Ok(hop) => hop,
        Err(e) => return unsendable(ctx, pkt, e, now),
    };
    let rewritten = nat::rewrite(ctx, pkt, End::Source, front_ip, front_port)
        .and_then(|()| nat::rewrite(ctx, pkt, End::Destination, client_ip, client_port))
        .and_then(|()| hop.send(ctx));
    finish_reply(rewritten)
}

/// A packet without an entry: to a frontend, it may open a flow.
#[inline(always)]
fn new_flow(ctx: &TcContext, pkt: &Packet, side: Side, now: u64) -> i32 {
    if !pkt.has_l4() {
        // A later fragment of a datagram that was not translated: only a
        // first fragment (with ports) may open a flow.
        return TC_ACT_OK;
    }
    // Pods are inside the cluster: an external frontend's in-cluster entry
    // (all endpoints) applies to them, the outside-world entry to the rest.
    let Some((master, scope)) = lookup::service_of(&pkt.flow, side == Side::Pod) else {
        conntrack::release_closed_clash(&pkt.flow, pkt.tcp_flags);
        let to = (pkt.flow.dst_ip_be, pkt.flow.dst_port_be);
        if side == Side::Pod && !policy::admits_out_of_pod(pkt, to) {
            return TC_ACT_SHOT;
        }
        return TC_ACT_OK;
    };
    if is_mid_flow_tcp(pkt) {
        // No entry and no SYN: a connection we never saw open (evicted,
        // rebooted, forged). A random backend would answer RST.
        stats::count(reason::TCP_NO_ENTRY_DROPPED);
        return TC_ACT_SHOT;
    }
    if master.flags & service_flags::SOURCE_RANGES != 0
        && !lookup::source_allowed(&pkt.flow, master.service_id)
    {
        stats::count(reason::SOURCE_RANGE_DENIED);
        return TC_ACT_SHOT;
    }
    if master.count == 0 {
        return refuse(ctx, pkt, &master, now);
    }
    // A new flow, too (UDP has no SYN), before it spends a quota.
    if side == Side::Pod && !spoof::source_allowed(ctx, pkt.flow.src_ip_be) {
        return TC_ACT_SHOT;
    }
    if !admission::admit(pkt.flow.src_ip_be) {
        return TC_ACT_SHOT;
    }
    let Some((backend_id, backend)) = affinity::choose_backend(&pkt.flow, &master, scope, now)
    else {
        // A slot or backend missing: user space is mid-update or the maps
        // are inconsistent. Dropping is safer than guessing an address.
        stats::count(reason::BACKEND_MISSING);
        return TC_ACT_SHOT;
    };
    // Egress policy judges the backend the flow was given.
    if side == Side::Pod && !policy::admits_out_of_pod(pkt, (backend.ip_be, backend.port_be)) {
        admission::release(pkt.flow.src_ip_be);
        return TC_ACT_SHOT;
    }
    let action = open(
        ctx,
        pkt,
        side,
        (backend_id, &backend),
        master.service_id,
        now,
    );
    if action != TC_ACT_SHOT {
        stats::new_flow(master.service_id, pkt.len as u64);
    }
    action
}

/// A service without endpoints: refused with ICMP (at the rejects' rate),
/// or dropped where `externalTrafficPolicy: Local` says so.
#[inline(always)]
fn refuse(ctx: &TcContext, pkt: &Packet, master: &BackendSlot, now: u64) -> i32 {
    stats::service(master.service_id, |c| c.no_backend += 1);
    if master.flags & service_flags::DROP_IF_EMPTY != 0 {
        stats::count(reason::NO_LOCAL_BACKEND_DROPPED);
        return TC_ACT_SHOT;
    }
    if !reject::within_rate(now) {
        stats::count(reason::REJECT_RATE_LIMITED);
        return TC_ACT_SHOT;
    }
    counted(
        reject::port_unreachable(ctx, pkt),
        reason::NO_BACKEND_REJECTED,
        reason::NO_BACKEND_DROPPED,
    )
}

/// Records the new flow to `backend` and translates its first packet:
/// from outside to another node also SNATed, so the reply comes back here.
#[inline(always)]
fn open(
    ctx: &TcContext,
    pkt: &Packet,
    side: Side,
    (backend_id, backend): (BackendId, &Backend),
    service_id: u32,
    now: u64,
) -> i32 {
    let to = (backend.ip_be, backend.port_be);
    if side == Side::World && backend.flags & backend_flags::LOCAL == 0 {
        let hop = match fib::lookup_from_node(ctx, pkt, backend.ip_be) {
            Ok(hop) => hop,
            Err(e) => return unsendable(ctx, pkt, e, now),
        };
        let seen = (pkt.tcp_flags, pkt.tcp_seq);
        let at = (hop.source(), now);
        let Some(snat) = snat::claim(&pkt.flow, backend_id, backend, service_id, seen, at) else {
            return TC_ACT_SHOT;
        };
        return send_snat(ctx, pkt, &hop, to, snat);
    }
    let created = conntrack::create(
        &pkt.flow,
        backend_id,
        backend,
        service_id,
        pkt.tcp_flags,
        pkt.tcp_seq,
        now,
    );
    let source_port = match created {
        Ok(port) => port,
        Err(e) => match e.fallback() {
            Some(port) => port,
            None => return TC_ACT_SHOT,
        },
    };
    let hairpin = conntrack::is_hairpin(&pkt.flow, backend);
    translate(ctx, pkt, to, source_port, hairpin)
}

/// DNATs a client → frontend packet to its backend, and moves it to
/// `source_port_be` if its flow was remapped (non-zero). A hairpin packet
/// (the client is its own backend) is also SNATed to the VIP and sent
/// straight back to the pod; without that the pod would answer itself
/// internally, from an address its client socket does not expect.
#[inline(always)]
fn translate(
    ctx: &TcContext,
    pkt: &Packet,
    (ip_be, port_be): (u32, u16),
    source_port_be: u16,
    hairpin: bool,
) -> i32 {
    let mut result = nat::rewrite(ctx, pkt, End::Destination, ip_be, port_be);
    if source_port_be != 0 {
        result = result
            .and_then(|()| nat::rewrite(ctx, pkt, End::Source, pkt.flow.src_ip_be, source_port_be));
    }
    if hairpin {
        result = result
            .and_then(|()| {
                nat::rewrite(
                    ctx,
                    pkt,
                    End::Source,
                    pkt.flow.dst_ip_be,
                    pkt.flow.src_port_be,
                )
            })
            .and_then(|()| nat::bounce(ctx).map(|_| ()));
    }
    match result {
        Ok(()) if hairpin => TC_ACT_REDIRECT,
        Ok(()) => TC_ACT_OK,
        Err(_) => {
            stats::count(reason::NAT_FAILED);
            TC_ACT_SHOT
        }
    }
}

/// DNATs to `backend`, SNATs to `snat` and forwards the packet ourselves.
#[inline(always)]
fn translate_snat(
    ctx: &TcContext,
    pkt: &Packet,
    backend: (u32, u16),
    snat: (u32, u16),
    now: u64,
) -> i32 {
    match fib::lookup(ctx, pkt, snat.0, backend.0) {
        Ok(hop) => send_snat(ctx, pkt, &hop, backend, snat),
        Err(e) => unsendable(ctx, pkt, e, now),
    }
}

/// Rewrites to `snat → backend` and sends the packet to `hop`.
#[inline(always)]
fn send_snat(
    ctx: &TcContext,
    pkt: &Packet,
    hop: &fib::NextHop,
    backend: (u32, u16),
    snat: (u32, u16),
) -> i32 {
    let result = nat::rewrite(ctx, pkt, End::Destination, backend.0, backend.1)
        .and_then(|()| nat::rewrite(ctx, pkt, End::Source, snat.0, snat.1))
        .and_then(|()| hop.send(ctx));
    match result {
        Ok(action) => action,
        Err(_) => {
            stats::count(reason::NAT_FAILED);
            TC_ACT_SHOT
        }
    }
}

/// A packet we must forward but cannot: too big for the route onward is
/// answered with "fragmentation needed" when its sender set DF (at the
/// rejects' rate), as a router does; anything else is dropped and counted.
#[inline(always)]
fn unsendable(ctx: &TcContext, pkt: &Packet, why: fib::Unsendable, now: u64) -> i32 {
    let fib::Unsendable::TooBig { mtu } = why else {
        stats::count(reason::FIB_LOOKUP_FAILED);
        return TC_ACT_SHOT;
    };
    if pkt.dont_fragment
        && reject::within_rate(now)
        && let Ok(action) = reject::fragmentation_needed(ctx, pkt, mtu)
    {
        stats::count(reason::FRAGMENTATION_NEEDED_SENT);
        return action;
    }
    stats::count(reason::TOO_BIG_DROPPED);
    TC_ACT_SHOT
}

#[inline(always)]
fn finish_reply(result: Result<i32, i64>) -> i32 {
    counted(result, reason::REPLY_REV_NAT, reason::NAT_FAILED)
}

/// The action of `result`, counted as `ok`; a failure is dropped and
/// counted as `failed`.
#[inline(always)]
fn counted(result: Result<i32, i64>, ok: u32, failed: u32) -> i32 {
    match result {
        Ok(action) => {
            stats::count(ok);
            action
        }
        Err(_) => {
            stats::count(failed);
            TC_ACT_SHOT
        }
    }
}

/// What [`reply`] made of a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// A service flow's reply, given its frontend back.
    Translated,
    /// No reply of a tracked service flow.
    NotOne,
    /// A RST or FIN outside what the backend has sent, forged in its name.
    Dropped,
}

/// Egress towards a client: a reply gets its frontend back as source.
#[inline(always)]
fn reply(ctx: &TcContext, pkt: &Packet) -> Reply {
    let Some(entry) = conntrack::lookup(&pkt.flow) else {
        return Reply::NotOne;
    };
    let entry = unsafe { &mut *entry };
    if entry.kind != conn_kind::REPLY {
        return Reply::NotOne;
    }
    let now = crate::clock::now();
    if conntrack::touch(entry, pkt.tcp_flags, pkt.tcp_seq, now) == Touch::OutOfWindow {
        return Reply::Dropped;
    }
    let (ip, port) = (entry.nat_ip_be, entry.nat_port_be);
    let client_port = entry.second_port_be;
    let mut result = nat::rewrite(ctx, pkt, End::Source, ip, port);
    if client_port != 0 {
        // The flow was moved to another source port: give the client its own.
        result = result.and_then(|()| {
            nat::rewrite(ctx, pkt, End::Destination, pkt.flow.dst_ip_be, client_port)
        });
    }
    if result.is_ok() {
        stats::count(reason::REPLY_REV_NAT);
    } else {
        stats::count(reason::NAT_FAILED);
    }
    Reply::Translated
}

/// The kernel lets only GPL-compatible programs call helpers such as
/// `bpf_fib_lookup`; this crate is dual-licensed Apache-2.0 OR GPL-2.0.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

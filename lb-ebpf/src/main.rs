//! Switchyard datapath: tc programs on the host side of pod interfaces.
//!
//! `from_pod` (tc ingress: packets leaving a pod) DNATs traffic addressed to
//! a service frontend to one of its backends and records the flow;
//! `to_pod` (tc egress: packets entering a pod) restores the VIP as the
//! source of replies, so the client only ever talks to the service address.
#![no_std]
#![no_main]
#![allow(non_upper_case_globals)]

mod affinity;
mod conntrack;
mod lookup;
mod maps;
mod nat;
mod parse;
mod reject;
mod stats;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    macros::classifier,
    programs::TcContext,
};
use lb_common::{conn_kind, reason};

use crate::{
    nat::End,
    parse::{Packet, Parsed},
};

#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    match parse::parse(&ctx) {
        Parsed::Flow(pkt) => forward(&ctx, &pkt),
        Parsed::Fragment { dst_ip_be } => {
            // Only the first fragment carries ports; translating it alone
            // would split the datagram. Counted so it shows up when it matters.
            let _ = dst_ip_be;
            stats::count(reason::FRAGMENT_PASSED);
            TC_ACT_OK
        }
        Parsed::Other => TC_ACT_OK,
    }
}

#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    if let Parsed::Flow(pkt) = parse::parse(&ctx) {
        reply(&ctx, &pkt);
    }
    TC_ACT_OK
}

#[inline(always)]
fn forward(ctx: &TcContext, pkt: &Packet) -> i32 {
    let now = unsafe { bpf_ktime_get_ns() };

    // Established flows first: they keep their backend even if the service
    // changed or disappeared since, as with kube-proxy's conntrack.
    if let Some(entry) = conntrack::lookup(&pkt.flow) {
        let entry = unsafe { &mut *entry };
        let kind = entry.kind;
        let is_forward = kind == conn_kind::FORWARD || kind == conn_kind::HAIRPIN_FORWARD;
        if is_forward && !conntrack::is_reopened(entry, pkt.tcp_flags) {
            conntrack::touch(entry, pkt.tcp_flags, now);
            let (ip, port, service_id) = (entry.nat_ip_be, entry.nat_port_be, entry.service_id);
            let hairpin = kind == conn_kind::HAIRPIN_FORWARD;
            let action = translate(ctx, pkt, ip, port, hairpin);
            if action != TC_ACT_SHOT {
                stats::count(reason::ESTABLISHED);
                stats::service(service_id, |c| {
                    c.packets += 1;
                    c.bytes += pkt.len as u64;
                });
            }
            return action;
        }
        if kind == conn_kind::HAIRPIN_REPLY {
            conntrack::touch(entry, pkt.tcp_flags, now);
            let (vip, vport) = (entry.nat_ip_be, entry.nat_port_be);
            // Pod:backend-port → VIP:client-port becomes VIP:port → pod:client-port.
            let rewritten = nat::rewrite(ctx, pkt, End::Source, vip, vport).and_then(|()| {
                nat::rewrite(
                    ctx,
                    pkt,
                    End::Destination,
                    pkt.flow.src_ip_be,
                    pkt.flow.dst_port_be,
                )
            });
            return match rewritten.and_then(|()| nat::bounce(ctx)) {
                Ok(action) => {
                    stats::count(reason::REPLY_REV_NAT);
                    action
                }
                Err(_) => {
                    stats::count(reason::NAT_FAILED);
                    TC_ACT_SHOT
                }
            };
        }
    }

    let Some(master) = lookup::service_of(&pkt.flow) else {
        return TC_ACT_OK;
    };
    let service_id = master.service_id;
    if master.count == 0 {
        stats::service(service_id, |c| c.no_backend += 1);
        return match reject::port_unreachable(ctx, pkt) {
            Ok(action) => {
                stats::count(reason::NO_BACKEND_REJECTED);
                action
            }
            Err(_) => {
                stats::count(reason::NO_BACKEND_DROPPED);
                TC_ACT_SHOT
            }
        };
    }
    let Some((backend_id, backend)) = affinity::choose_backend(&pkt.flow, &master, now) else {
        // A slot or backend missing: user space is mid-update or the maps
        // are inconsistent. Dropping is safer than guessing an address.
        stats::count(reason::BACKEND_MISSING);
        return TC_ACT_SHOT;
    };
    if conntrack::create(
        &pkt.flow,
        backend_id,
        &backend,
        service_id,
        pkt.tcp_flags,
        now,
    )
    .is_err()
    {
        stats::count(reason::CONNTRACK_FULL);
    }
    let hairpin = conntrack::is_hairpin(&pkt.flow, &backend);
    let action = translate(ctx, pkt, backend.ip_be, backend.port_be, hairpin);
    if action != TC_ACT_SHOT {
        stats::count(reason::NEW_FLOW);
        stats::service(service_id, |c| {
            c.packets += 1;
            c.bytes += pkt.len as u64;
            c.new_flows += 1;
        });
    }
    action
}

/// DNATs a client → VIP packet to its backend. A hairpin packet (the client
/// is its own backend) is also SNATed to the VIP and sent straight back to
/// the pod; without that the pod would answer itself internally, from an
/// address its client socket does not expect.
#[inline(always)]
fn translate(ctx: &TcContext, pkt: &Packet, ip_be: u32, port_be: u16, hairpin: bool) -> i32 {
    let mut result = nat::rewrite(ctx, pkt, End::Destination, ip_be, port_be);
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

#[inline(always)]
fn reply(ctx: &TcContext, pkt: &Packet) {
    let Some(entry) = conntrack::lookup(&pkt.flow) else {
        return;
    };
    let entry = unsafe { &mut *entry };
    if entry.kind != conn_kind::REPLY {
        return;
    }
    conntrack::touch(entry, pkt.tcp_flags, unsafe { bpf_ktime_get_ns() });
    let (ip, port) = (entry.nat_ip_be, entry.nat_port_be);
    if nat::rewrite(ctx, pkt, End::Source, ip, port).is_ok() {
        stats::count(reason::REPLY_REV_NAT);
    } else {
        stats::count(reason::NAT_FAILED);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

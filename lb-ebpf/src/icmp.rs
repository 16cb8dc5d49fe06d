//! ICMP errors about translated flows (path-MTU discovery through a VIP).
//!
//! A client pod talks to VIP:port, but after DNAT its packets travel as
//! client → backend. When a router on the way answers one with an ICMP error
//! (fragmentation needed, unreachable, time exceeded), the error quotes the
//! translated packet, client → backend, which matches no socket of the
//! client: PMTU discovery would black-hole. On its way into the pod the
//! quoted destination is turned back into VIP:port, found through the flow's
//! reply entry in conntrack, with the quoted IP header checksum and the ICMP
//! checksum updated to match.

use aya_ebpf::programs::TcContext;
use lb_common::{FlowKey, PROTO_TCP, PROTO_UDP, conn_kind, csum, reason};

use crate::{conntrack, parse::ETH_HLEN, stats};

const PROTO_ICMP: u8 = 1;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

#[inline(always)]
fn load<T>(ctx: &TcContext, offset: usize) -> Result<T, ()> {
    ctx.load::<T>(offset).map_err(|_| ())
}

#[inline(always)]
fn store<T>(ctx: &TcContext, offset: usize, value: &T) -> Result<(), ()> {
    ctx.store(offset, value, 0).map_err(|_| ())
}

/// Translates an ICMP error quoting a DNATed flow; returns whether it did.
#[inline(always)]
pub fn restore_quoted_service(ctx: &TcContext) -> bool {
    try_restore(ctx).unwrap_or_default()
}

#[inline(always)]
fn try_restore(ctx: &TcContext) -> Result<bool, ()> {
    if load::<u16>(ctx, 12)? != 0x0800u16.to_be() {
        return Ok(false);
    }
    let ver_ihl: u8 = load(ctx, ETH_HLEN)?;
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 || load::<u8>(ctx, ETH_HLEN + 9)? != PROTO_ICMP {
        return Ok(false);
    }
    // A truncated or padded outer packet is not ours to rewrite: the stack
    // drops it, or the quote ends beyond it.
    let total = u16::from_be(load::<u16>(ctx, ETH_HLEN + 2)?) as usize;
    if ETH_HLEN + total > ctx.len() as usize {
        return Ok(false);
    }
    let icmp = ETH_HLEN + ihl;
    let kind: u8 = load(ctx, icmp)?;
    if kind != ICMP_DEST_UNREACH && kind != ICMP_TIME_EXCEEDED && kind != ICMP_PARAMETER_PROBLEM {
        return Ok(false);
    }
    // The quoted packet: its IP header and at least the ports.
    let inner = icmp + 8;
    let inner_ver_ihl: u8 = load(ctx, inner)?;
    let inner_ihl = ((inner_ver_ihl & 0x0f) as usize) * 4;
    if inner_ver_ihl >> 4 != 4
        || !(20..=60).contains(&inner_ihl)
        || inner + inner_ihl + 4 > ETH_HLEN + total
    {
        return Ok(false);
    }
    let proto: u8 = load(ctx, inner + 9)?;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(false);
    }
    let src: u32 = load(ctx, inner + 12)?;
    let dst: u32 = load(ctx, inner + 16)?;
    let inner_l4 = inner + inner_ihl;
    let ports: [u16; 2] = load(ctx, inner_l4)?;
    // The quoted packet went client → backend: its flow's reply entry
    // (backend → client) knows the service address.
    let reply = FlowKey {
        src_ip_be: dst,
        dst_ip_be: src,
        src_port_be: ports[1],
        dst_port_be: ports[0],
        proto,
        _pad: [0; 3],
    };
    let Some(entry) = conntrack::lookup(&reply) else {
        return Ok(false);
    };
    let entry = unsafe { &*entry };
    if entry.kind != conn_kind::REPLY {
        return Ok(false);
    }
    let (vip, vport) = (entry.nat_ip_be, entry.nat_port_be);
    // A flow moved to another source port quotes that port: the client's
    // socket has its own.
    let client_port = if entry.second_port_be != 0 {
        entry.second_port_be
    } else {
        ports[0]
    };

    let inner_check: u16 = load(ctx, inner + 10)?;
    let new_inner_check = csum::replace4(inner_check, dst, vip);
    let mut icmp_check: u16 = load(ctx, icmp + 2)?;
    icmp_check = csum::replace4(icmp_check, dst, vip);
    icmp_check = csum::replace2(icmp_check, ports[1], vport);
    icmp_check = csum::replace2(icmp_check, ports[0], client_port);
    icmp_check = csum::replace2(icmp_check, inner_check, new_inner_check);

    store(ctx, inner + 16, &vip)?;
    store(ctx, inner + 10, &new_inner_check)?;
    store(ctx, inner_l4, &client_port)?;
    store(ctx, inner_l4 + 2, &vport)?;
    store(ctx, icmp + 2, &icmp_check)?;
    stats::count(reason::ICMP_ERROR_TRANSLATED);
    Ok(true)
}

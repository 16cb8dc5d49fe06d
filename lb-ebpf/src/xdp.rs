//! XDP fast path on the external interface: external flows to a service
//! frontend, before the kernel allocates an skb.
//!
//! It shares service lookup, backend choice, affinity, SNAT ports and
//! conntrack with the tc path and differs only at the edges: direct packet
//! access and checksums updated by hand (no skb helpers in XDP). It handles
//! flows to backends on this node (DNAT, then the kernel delivers to the
//! pod), with `--xdp-snat` client → backend packets of flows to other
//! nodes (DNAT + SNAT, then out again by FIB lookup with XDP_TX or a
//! redirect), and the early drops
//! (source ranges, `externalTrafficPolicy: Local` without local endpoints).
//! What it does not finish — replies of SNAT flows, a next hop whose
//! neighbour is not resolved yet, ICMP rejects, IP options, fragments — is
//! passed on *untouched* to the tc program `from_world`, which finds the
//! same conntrack entries and does the rest.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC, bpf_fib_lookup,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{
    FlowKey, PROTO_TCP, PROTO_UDP, backend_flags, conn_kind, csum, nat_flags, reason,
    service_flags, tcp_seen,
};

use crate::{
    admission, affinity,
    conntrack::{self, Touch},
    lookup,
    maps::nat_config,
    nat::End,
    parse::ETH_HLEN,
    snat, stats,
};

const ETH_P_IP_BE: u16 = 0x0800u16.to_be();

/// Offsets within the IPv4 header (no options: packets with options go to tc).
const IP_CHECK: usize = 10;
const IP_SADDR: usize = 12;
const IP_DADDR: usize = 16;

#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *mut T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, ()> {
    Ok(unsafe { ptr_at::<T>(ctx, offset)?.read_unaligned() })
}

#[inline(always)]
fn write<T>(ctx: &XdpContext, offset: usize, value: T) -> Result<(), ()> {
    unsafe { ptr_at::<T>(ctx, offset)?.write_unaligned(value) };
    Ok(())
}

/// A TCP/UDP over IPv4 (no options, not fragmented) packet XDP can handle.
struct XdpPacket {
    flow: FlowKey,
    tcp_flags: u8,
    /// Sequence number, host order (0 for UDP).
    tcp_seq: u32,
    /// Offset of the L4 checksum field.
    l4_check: usize,
    udp_no_checksum: bool,
    len: u64,
}

const L4: usize = ETH_HLEN + 20;

#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<XdpPacket, ()> {
    if read::<u16>(ctx, 12)? != ETH_P_IP_BE || read::<u8>(ctx, ETH_HLEN)? != 0x45 {
        return Err(());
    }
    let tot_len = u16::from_be(read::<u16>(ctx, ETH_HLEN + 2)?);
    let frag = u16::from_be(read::<u16>(ctx, ETH_HLEN + 6)?);
    let proto = read::<u8>(ctx, ETH_HLEN + 9)?;
    if frag & 0x3fff != 0 || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return Err(());
    }
    let (l4_len, l4_check) = if proto == PROTO_TCP {
        (20, L4 + 16)
    } else {
        (8, L4 + 6)
    };
    let len = (ctx.data_end() - ctx.data()) as u64;
    if (tot_len as usize) < 20 + l4_len || ETH_HLEN + tot_len as usize > len as usize {
        return Err(());
    }
    // Bounds for everything the rewrite touches.
    ptr_at::<[u8; 20]>(ctx, L4)?;
    let ports: [u16; 2] = read(ctx, L4)?;
    let (tcp_flags, tcp_seq) = if proto == PROTO_TCP {
        (
            read::<u8>(ctx, L4 + 13)?,
            u32::from_be(read::<u32>(ctx, L4 + 4)?),
        )
    } else {
        (0, 0)
    };
    Ok(XdpPacket {
        flow: FlowKey {
            src_ip_be: read(ctx, ETH_HLEN + IP_SADDR)?,
            dst_ip_be: read(ctx, ETH_HLEN + IP_DADDR)?,
            src_port_be: ports[0],
            dst_port_be: ports[1],
            proto,
            _pad: [0; 3],
        },
        tcp_flags,
        tcp_seq,
        l4_check,
        udp_no_checksum: proto == PROTO_UDP && read::<u16>(ctx, l4_check)? == 0,
        len,
    })
}

/// Rewrites one end (source or destination) of the packet.
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    pkt: &XdpPacket,
    end: End,
    ip_be: u32,
    port_be: u16,
) -> Result<(), ()> {
    let (ip_off, port_off, old_ip, old_port) = if let End::Destination = end {
        (
            ETH_HLEN + IP_DADDR,
            L4 + 2,
            pkt.flow.dst_ip_be,
            pkt.flow.dst_port_be,
        )
    } else {
        (
            ETH_HLEN + IP_SADDR,
            L4,
            pkt.flow.src_ip_be,
            pkt.flow.src_port_be,
        )
    };
    let ip_check: u16 = read(ctx, ETH_HLEN + IP_CHECK)?;
    write(
        ctx,
        ETH_HLEN + IP_CHECK,
        csum::replace4(ip_check, old_ip, ip_be),
    )?;
    write(ctx, ip_off, ip_be)?;
    if !pkt.udp_no_checksum {
        let mut check: u16 = read(ctx, pkt.l4_check)?;
        check = csum::replace4(check, old_ip, ip_be);
        check = csum::replace2(check, old_port, port_be);
        if pkt.flow.proto == PROTO_UDP && check == 0 {
            check = 0xffff; // zero would mean "no checksum"
        }
        write(ctx, pkt.l4_check, check)?;
    }
    write(ctx, port_off, port_be)
}

/// The FIB's answer for a packet from `src` (0: let it pick, with
/// `BPF_FIB_LOOKUP_SRC`) to `dst`, as forwarded from the ingress interface.
#[inline(always)]
fn fib(
    ctx: &XdpContext,
    pkt: &XdpPacket,
    (src, dst): (u32, u32),
    flags: u32,
) -> (i64, bpf_fib_lookup) {
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = 2;
    params.l4_protocol = pkt.flow.proto;
    params.__bindgen_anon_1.tot_len = (pkt.len as u16).saturating_sub(ETH_HLEN as u16);
    params.__bindgen_anon_3.ipv4_src = src;
    params.__bindgen_anon_4.ipv4_dst = dst;
    params.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let rc = unsafe {
        fib_lookup(
            ctx.ctx as *mut _,
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            flags,
        )
    };
    (rc, params)
}

/// Where a packet from `src` to `dst` leaves: (ifindex, destination MAC,
/// source MAC), when the FIB knows the route and the neighbour.
#[inline(always)]
fn next_hop(ctx: &XdpContext, pkt: &XdpPacket, src: u32, dst: u32) -> Option<(u32, [u8; 12])> {
    let (rc, params) = fib(ctx, pkt, (src, dst), 0);
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    let mut macs = [0u8; 12];
    macs[..6].copy_from_slice(&params.dmac);
    macs[6..].copy_from_slice(&params.smac);
    Some((params.ifindex, macs))
}

/// The address this node sends from towards `dst` (the egress device's,
/// as MASQUERADE picks it), or 0 when the FIB cannot tell.
#[inline(always)]
fn snat_source(ctx: &XdpContext, pkt: &XdpPacket, dst: u32) -> u32 {
    let (rc, params) = fib(ctx, pkt, (0, dst), BPF_FIB_LOOKUP_SRC);
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 || rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        unsafe { params.__bindgen_anon_3.ipv4_src }
    } else {
        0
    }
}

/// Sends the rewritten frame on: back out of the interface it came in on
/// (XDP_TX), or redirected to another.
#[inline(always)]
fn transmit(ctx: &XdpContext, ifindex: u32, macs: [u8; 12]) -> Result<u32, ()> {
    write(ctx, 0, macs)?;
    if ifindex == unsafe { (*ctx.ctx).ingress_ifindex } {
        Ok(XDP_TX)
    } else {
        Ok(unsafe { bpf_redirect(ifindex, 0) } as u32)
    }
}

/// Client → frontend becomes node:snat-port → backend, sent on. `None`
/// when the next hop is not known here: tc does it (the entry exists).
#[inline(always)]
fn forward_snat(
    ctx: &XdpContext,
    pkt: &XdpPacket,
    backend: (u32, u16),
    snat: (u32, u16),
) -> Result<Option<u32>, ()> {
    let Some((ifindex, macs)) = next_hop(ctx, pkt, snat.0, backend.0) else {
        return Ok(None);
    };
    rewrite(ctx, pkt, End::Destination, backend.0, backend.1)?;
    rewrite(ctx, pkt, End::Source, snat.0, snat.1)?;
    transmit(ctx, ifindex, macs).map(Some)
}

/// Whether the agent asked XDP to forward SNAT flows (`--xdp-snat`).
#[inline(always)]
fn xdp_snat_enabled() -> bool {
    nat_config
        .get(0)
        .is_some_and(|c| c.flags & nat_flags::XDP_SNAT != 0)
}

pub fn handle(ctx: &XdpContext) -> u32 {
    let Ok(pkt) = parse(ctx) else {
        return XDP_PASS;
    };
    match try_handle(ctx, &pkt) {
        Ok(action) => action,
        Err(()) => XDP_PASS,
    }
}

#[inline(always)]
fn try_handle(ctx: &XdpContext, pkt: &XdpPacket) -> Result<u32, ()> {
    let now = crate::clock::now();
    if let Some(entry) = conntrack::lookup(&pkt.flow) {
        let entry = unsafe { &mut *entry };
        let kind = entry.kind;
        if kind == conn_kind::FORWARD && !conntrack::is_reopened(&pkt.flow, entry, pkt.tcp_flags) {
            match conntrack::touch(entry, pkt.tcp_flags, pkt.tcp_seq, now) {
                Touch::OutOfWindow => return Ok(XDP_DROP),
                Touch::Closed => admission::release(pkt.flow.src_ip_be),
                Touch::Seen => {}
            }
            let (ip, port, service_id) = (entry.nat_ip_be, entry.nat_port_be, entry.service_id);
            let source_port = entry.second_port_be;
            rewrite(ctx, pkt, End::Destination, ip, port)?;
            if source_port != 0 {
                rewrite(ctx, pkt, End::Source, pkt.flow.src_ip_be, source_port)?;
            }
            stats::established(service_id, pkt.len);
            stats::count(reason::XDP_TRANSLATED);
            return Ok(XDP_PASS);
        }
        if kind == conn_kind::FORWARD_SNAT
            && xdp_snat_enabled()
            && !conntrack::is_reopened(&pkt.flow, entry, pkt.tcp_flags)
        {
            let backend = (entry.nat_ip_be, entry.nat_port_be);
            let snat = (entry.second_ip_be, entry.second_port_be);
            let service_id = entry.service_id;
            if pkt.tcp_flags & (tcp_seen::FIN | tcp_seen::RST) != 0 {
                // Closing segments are judged (window, quota) by tc.
                return Ok(XDP_PASS);
            }
            if let Some(action) = forward_snat(ctx, pkt, backend, snat)? {
                conntrack::touch(entry, pkt.tcp_flags, pkt.tcp_seq, now);
                stats::established(service_id, pkt.len);
                stats::count(reason::XDP_TRANSLATED);
                return Ok(action);
            }
            return Ok(XDP_PASS);
        }
        // Replies of SNAT flows (and reopened flows, hairpin kinds): tc.
        // Replies sent back out with XDP_TX were lost on veth in native
        // mode (generic mode delivered them), so they stay on the tc path
        // until that is understood; see docs/architecture.md.
        return Ok(XDP_PASS);
    }

    // Only traffic from outside the node arrives here.
    let Some((master, scope)) = lookup::service_of(&pkt.flow, false) else {
        return Ok(XDP_PASS);
    };
    // No entry and no SYN: not a new flow; tc counts and drops it.
    if pkt.flow.proto == PROTO_TCP && pkt.tcp_flags & tcp_seen::SYN == 0 {
        return Ok(XDP_PASS);
    }
    let service_id = master.service_id;
    if master.flags & service_flags::SOURCE_RANGES != 0
        && !lookup::source_allowed(&pkt.flow, service_id)
    {
        stats::count(reason::SOURCE_RANGE_DENIED);
        return Ok(XDP_DROP);
    }
    if master.count == 0 {
        if master.flags & service_flags::DROP_IF_EMPTY != 0 {
            stats::service(service_id, |c| c.no_backend += 1);
            stats::count(reason::NO_LOCAL_BACKEND_DROPPED);
            return Ok(XDP_DROP);
        }
        // Refusing needs a new packet: tc builds the ICMP error.
        return Ok(XDP_PASS);
    }
    if !admission::admit(pkt.flow.src_ip_be) {
        return Ok(XDP_DROP);
    }
    let Some((backend_id, backend)) = affinity::choose_backend(&pkt.flow, &master, scope, now)
    else {
        stats::count(reason::BACKEND_MISSING);
        return Ok(XDP_DROP);
    };
    if backend.flags & backend_flags::LOCAL == 0 {
        // To another node: SNAT to this node so the reply comes back here.
        // The choice is recorded here even when tc does the forwarding: a
        // second draw in tc would skew the balance (remote backends would
        // get their share of only the flows XDP did not keep).
        let source = snat_source(ctx, pkt, backend.ip_be);
        let Some(snat) = snat::claim(
            &pkt.flow,
            backend_id,
            &backend,
            service_id,
            (pkt.tcp_flags, pkt.tcp_seq),
            (source, now),
        ) else {
            return Ok(XDP_DROP);
        };
        stats::new_flow(service_id, pkt.len);
        if !xdp_snat_enabled() {
            // tc finds the entry and forwards the packet.
            return Ok(XDP_PASS);
        }
        return match forward_snat(ctx, pkt, (backend.ip_be, backend.port_be), snat)? {
            Some(action) => {
                stats::count(reason::XDP_TRANSLATED);
                Ok(action)
            }
            // The entry is made: tc finds it and forwards the same way.
            None => Ok(XDP_PASS),
        };
    }
    let source_port = match conntrack::create(
        &pkt.flow,
        backend_id,
        &backend,
        service_id,
        pkt.tcp_flags,
        pkt.tcp_seq,
        now,
    ) {
        Ok(port) => port,
        Err(e) => match e.fallback() {
            Some(port) => port,
            None => return Ok(XDP_DROP),
        },
    };
    rewrite(ctx, pkt, End::Destination, backend.ip_be, backend.port_be)?;
    if source_port != 0 {
        rewrite(ctx, pkt, End::Source, pkt.flow.src_ip_be, source_port)?;
    }
    stats::new_flow(service_id, pkt.len);
    stats::count(reason::XDP_TRANSLATED);
    Ok(XDP_PASS)
}

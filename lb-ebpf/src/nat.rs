//! Address rewriting with incremental checksum updates.
//!
//! The kernel helpers update the L3 checksum and the L4 checksum (including
//! its pseudo-header) from the old and new values, and cope with
//! CHECKSUM_PARTIAL skbs from local sockets. A UDP checksum of zero means "no
//! checksum" and must stay zero (BPF_F_MARK_MANGLED_0).

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};

use crate::parse::{Packet, ipv4_off};

/// Which end of the packet to rewrite.
#[derive(Clone, Copy)]
pub enum End {
    /// DNAT: client → VIP becomes client → backend.
    Destination,
    /// Reverse NAT: backend → client becomes VIP → client.
    Source,
}

#[inline(always)]
pub fn rewrite(
    ctx: &TcContext,
    pkt: &Packet,
    end: End,
    ip_be: u32,
    port_be: u16,
) -> Result<(), i64> {
    let (old_ip, old_port, ip_off, port_off) = match end {
        End::Destination => (
            pkt.flow.dst_ip_be,
            pkt.flow.dst_port_be,
            ipv4_off::DADDR,
            pkt.l4_off + 2,
        ),
        End::Source => (
            pkt.flow.src_ip_be,
            pkt.flow.src_port_be,
            ipv4_off::SADDR,
            pkt.l4_off,
        ),
    };
    let csum_off = pkt.l4_csum_off();
    let mangled = if pkt.is_tcp() {
        0
    } else {
        BPF_F_MARK_MANGLED_0 as u64
    };
    // A UDP datagram without checksum keeps none: skip the L4 update
    // entirely. A later fragment has no L4 header: its ports and checksum
    // are in the first fragment, rewritten there.
    let has_l4 = pkt.has_l4();
    let update_l4 = has_l4 && !pkt.udp_csum_zero;

    if ip_be != old_ip {
        if update_l4 {
            ctx.l4_csum_replace(
                csum_off,
                old_ip as u64,
                ip_be as u64,
                BPF_F_PSEUDO_HDR as u64 | mangled | 4,
            )?;
        }
        ctx.l3_csum_replace(ipv4_off::CHECK, old_ip as u64, ip_be as u64, 4)?;
        ctx.store(ip_off, &ip_be, 0)?;
    }
    if has_l4 && port_be != old_port {
        if update_l4 {
            ctx.l4_csum_replace(csum_off, old_port as u64, port_be as u64, mangled | 2)?;
        }
        ctx.store(port_off, &port_be, 0)?;
    }
    Ok(())
}

/// Sends the packet back out of the interface it arrived on, towards the
/// pod it came from (hairpin), with the Ethernet addresses swapped.
#[inline(always)]
pub fn bounce(ctx: &TcContext) -> Result<i32, i64> {
    let macs: [u8; 12] = ctx.load(0)?;
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &swapped, 0)?;
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    Ok(unsafe { aya_ebpf::helpers::bpf_redirect(ifindex, 0) } as i32)
}

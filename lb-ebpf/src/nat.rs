//! Address rewriting with incremental checksum updates.
//!
//! The L4 checksum (including its pseudo-header) is updated by the kernel's
//! helper: only the kernel knows whether an skb's checksum is partial (from
//! a local socket: the field then holds the pseudo-header's sum alone). A
//! UDP checksum of zero means "no checksum" and must stay zero
//! (BPF_F_MARK_MANGLED_0). The address, the IPv4 checksum (RFC 1624) and
//! the port are written straight into the packet when its headers are in
//! the skb's linear part and carry no IP options (nearly always): three
//! helper calls fewer per rewrite than storing through the helpers, which
//! remain the way for the rest.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use lb_common::csum;

use crate::parse::{ETH_HLEN, Packet, ipv4_off};

/// Offset of the L4 header of a packet without IP options.
const L4_PLAIN: usize = ETH_HLEN + 20;

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

    if update_l4 {
        if ip_be != old_ip {
            ctx.l4_csum_replace(
                csum_off,
                old_ip as u64,
                ip_be as u64,
                BPF_F_PSEUDO_HDR as u64 | mangled | 4,
            )?;
        }
        if port_be != old_port {
            ctx.l4_csum_replace(csum_off, old_port as u64, port_be as u64, mangled | 2)?;
        }
    }
    let port = (has_l4 && port_be != old_port).then_some(port_be);
    if pkt.l4_off == L4_PLAIN && write_direct(ctx, end, (old_ip, ip_be), port) {
        return Ok(());
    }
    if ip_be != old_ip {
        ctx.l3_csum_replace(ipv4_off::CHECK, old_ip as u64, ip_be as u64, 4)?;
        ctx.store(ip_off, &ip_be, 0)?;
    }
    if let Some(port_be) = port {
        ctx.store(port_off, &port_be, 0)?;
    }
    Ok(())
}

/// Writes the address with the IPv4 checksum, and the port, straight into
/// a packet without IP options; false (nothing written) when its headers
/// are not all in the skb's linear part. The verifier un-clones the skb
/// before a program that writes this way runs.
#[inline(always)]
fn write_direct(ctx: &TcContext, end: End, (old_ip, ip_be): (u32, u32), port: Option<u16>) -> bool {
    // Constant offsets, which the verifier checks against the bound below.
    let (ip_off, port_off) = match end {
        End::Destination => (ipv4_off::DADDR, L4_PLAIN + 2),
        End::Source => (ipv4_off::SADDR, L4_PLAIN),
    };
    let data = ctx.data();
    // Both ports: whichever end is rewritten.
    if data + L4_PLAIN + 4 > ctx.data_end() {
        return false;
    }
    // SAFETY: every offset written lies below L4_PLAIN + 4, checked above
    // against the end of the linear data.
    unsafe {
        if ip_be != old_ip {
            let check = (data + ipv4_off::CHECK) as *mut u16;
            check.write_unaligned(csum::replace4(check.read_unaligned(), old_ip, ip_be));
            ((data + ip_off) as *mut u32).write_unaligned(ip_be);
        }
        if let Some(port_be) = port {
            ((data + port_off) as *mut u16).write_unaligned(port_be);
        }
    }
    true
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

//! ICMP errors the datapath answers with, built from the offending packet:
//! - "port unreachable" from the VIP when a service has no ready backend,
//!   as kube-proxy refuses: `connect()` fails at once with ECONNREFUSED
//!   (TCP) and a connected UDP socket sees ECONNREFUSED, instead of waiting
//!   for a timeout;
//! - "fragmentation needed" when a packet with DF set is too big for the
//!   route onward to a backend (or back to a client), as a router answers,
//!   so the sender's path MTU discovery works instead of black-holing.
//!
//! The packet is turned into the ICMP error in place and sent back out of the
//! interface it came in on.

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    helpers::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes},
    programs::TcContext,
};
use lb_common::PROTO_ICMP;

use crate::parse::{ETH_HLEN, Packet};

const IPV4_HLEN: usize = 20;
const ICMP_HLEN: usize = 8;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;

// How much of the original packet the error quotes (RFC 792 asks for the IP
// header and 8 bytes; more is allowed). The error must end exactly where the
// packet ends: a packet from a local socket may be CHECKSUM_PARTIAL, and the
// kernel then refuses to cut it, or to trim padding on receive, anywhere
// before its L4 checksum field (offset 16 in TCP, 6 in UDP). So TCP errors
// quote 18 bytes of the TCP header, UDP errors the 8 bytes of UDP header.
const TCP_QUOTE: usize = IPV4_HLEN + 18;
const UDP_QUOTE: usize = IPV4_HLEN + 8;

#[repr(C, align(4))]
struct Words<const N: usize>([u8; N]);

/// Ones' complement checksum of `bytes` (length a multiple of 4).
#[inline(always)]
fn checksum<const N: usize>(bytes: &mut Words<N>) -> u16 {
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            bytes.0.as_mut_ptr() as *mut u32,
            N as u32,
            0,
        )
    };
    let mut s = sum as u64 & 0xffff_ffff;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Reads exactly N bytes (aya's `load_bytes` clamps the length, which the
/// verifier rejects as a possibly zero-sized read).
#[inline(always)]
fn load_exact<const N: usize>(
    ctx: &TcContext,
    offset: usize,
    dst: &mut [u8; N],
) -> Result<(), i64> {
    let ret = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            offset as u32,
            dst.as_mut_ptr() as *mut _,
            N as u32,
        )
    };
    if ret == 0 { Ok(()) } else { Err(ret) }
}

/// Rewrites `pkt` into an ICMP port-unreachable for its sender and redirects
/// it back. Returns the tc action, or an error when the packet cannot be
/// answered (the caller drops it then).
#[inline(always)]
pub fn port_unreachable(ctx: &TcContext, pkt: &Packet) -> Result<i32, i64> {
    answer(ctx, pkt, ICMP_PORT_UNREACH, 0)
}

/// Rewrites `pkt` into an ICMP fragmentation-needed naming `mtu` (the
/// next-hop MTU, RFC 1191) and redirects it back to its sender. Coalesced
/// (GSO) packets are not answered: their segments were sent at a size that
/// fit the way in, and the sender learns from its retransmissions.
#[inline(always)]
pub fn fragmentation_needed(ctx: &TcContext, pkt: &Packet, mtu: u16) -> Result<i32, i64> {
    if crate::fib::is_gso(ctx) {
        return Err(-1);
    }
    answer(ctx, pkt, ICMP_FRAG_NEEDED, mtu)
}

/// A destination-unreachable error with `code`; `mtu` fills the last two
/// bytes of the ICMP header (zero but for fragmentation needed).
#[inline(always)]
fn answer(ctx: &TcContext, pkt: &Packet, code: u8, mtu: u16) -> Result<i32, i64> {
    // Packets with IP options would need a longer quote; they are dropped.
    if pkt.l4_off != ETH_HLEN + IPV4_HLEN {
        return Err(-1);
    }
    if pkt.is_tcp() {
        // ICMP header + quote, rounded up to whole words for bpf_csum_diff.
        emit::<TCP_QUOTE, 48>(ctx, pkt, code, mtu)
    } else {
        emit::<UDP_QUOTE, 36>(ctx, pkt, code, mtu)
    }
}

/// `QUOTE`: bytes of the original packet quoted; `WORDS`: ICMP header plus
/// quote rounded up to a multiple of 4 (zero padding leaves the sum alone).
#[inline(always)]
fn emit<const QUOTE: usize, const WORDS: usize>(
    ctx: &TcContext,
    pkt: &Packet,
    code: u8,
    mtu: u16,
) -> Result<i32, i64> {
    let mut eth = [0u8; ETH_HLEN];
    load_exact(ctx, 0, &mut eth)?;

    // [eth][ip][l4...] → [eth][28 new bytes][ip][l4...]: the original IP
    // header and L4 bytes are then exactly where the quote belongs.
    ctx.adjust_room((IPV4_HLEN + ICMP_HLEN) as i32, BPF_ADJ_ROOM_MAC, 0)?;
    let total = ETH_HLEN + IPV4_HLEN + ICMP_HLEN + QUOTE;
    let ret = unsafe { bpf_skb_change_tail(ctx.skb.skb, total as u32, 0) };
    if ret != 0 {
        return Err(ret);
    }

    // Ethernet: back to where it came from.
    let mut new_eth = [0u8; ETH_HLEN];
    new_eth[0..6].copy_from_slice(&eth[6..12]);
    new_eth[6..12].copy_from_slice(&eth[0..6]);
    new_eth[12..14].copy_from_slice(&eth[12..14]);
    ctx.store(0, &new_eth, 0)?;

    // IPv4: from the address the sender addressed (the VIP, the node), to
    // the sender.
    let mut ip = Words([0u8; IPV4_HLEN]);
    ip.0[0] = 0x45;
    ip.0[1] = 0xc0; // precedence "internetwork control", as the kernel sends
    ip.0[2..4].copy_from_slice(&((IPV4_HLEN + ICMP_HLEN + QUOTE) as u16).to_be_bytes());
    ip.0[8] = 64;
    ip.0[9] = PROTO_ICMP;
    ip.0[12..16].copy_from_slice(&pkt.flow.dst_ip_be.to_ne_bytes());
    ip.0[16..20].copy_from_slice(&pkt.flow.src_ip_be.to_ne_bytes());
    let ip_csum = checksum(&mut ip);
    ip.0[10..12].copy_from_slice(&ip_csum.to_ne_bytes());
    ctx.store(ETH_HLEN, &ip.0, 0)?;

    // ICMP header + quote, checksummed together.
    let mut icmp_hdr = [0u8; ICMP_HLEN];
    icmp_hdr[0] = ICMP_DEST_UNREACH;
    icmp_hdr[1] = code;
    icmp_hdr[6..8].copy_from_slice(&mtu.to_be_bytes());
    let mut icmp = Words([0u8; WORDS]);
    icmp.0[..ICMP_HLEN].copy_from_slice(&icmp_hdr);
    let mut quote = [0u8; QUOTE];
    load_exact(ctx, ETH_HLEN + IPV4_HLEN + ICMP_HLEN, &mut quote)?;
    icmp.0[ICMP_HLEN..ICMP_HLEN + QUOTE].copy_from_slice(&quote);
    let icmp_csum = checksum(&mut icmp);
    icmp_hdr[2..4].copy_from_slice(&icmp_csum.to_ne_bytes());
    ctx.store(ETH_HLEN + IPV4_HLEN, &icmp_hdr, 0)?;

    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let action = unsafe { bpf_redirect(ifindex, 0) } as i32;
    if action != TC_ACT_REDIRECT {
        return Err(action as i64);
    }
    Ok(action)
}

/// Takes one reject from this CPU's token bucket; false when it is empty
/// (the packet is then dropped rather than answered).
#[inline(always)]
pub fn within_rate(now: u64) -> bool {
    use lb_common::{REJECT_BURST, REJECTS_PER_SEC};
    let Some(budget) = crate::maps::reject_budget.get_ptr_mut(0) else {
        return true;
    };
    let budget = unsafe { &mut *budget };
    let per_token_ns = 1_000_000_000 / REJECTS_PER_SEC;
    let earned = now.wrapping_sub(budget.last_refill_ns) / per_token_ns;
    if earned > 0 {
        if budget.tokens + earned >= REJECT_BURST {
            budget.tokens = REJECT_BURST;
            budget.last_refill_ns = now;
        } else {
            budget.tokens += earned;
            budget.last_refill_ns = budget.last_refill_ns.wrapping_add(earned * per_token_ns);
        }
    }
    if budget.tokens == 0 {
        return false;
    }
    budget.tokens -= 1;
    true
}

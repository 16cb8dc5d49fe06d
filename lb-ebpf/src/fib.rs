//! Forwarding a translated packet ourselves: after SNAT its source is this
//! node, and the kernel's input path would drop it as a martian. The FIB
//! tells where it goes; the packet is redirected straight to that interface.
//!
//! The route is looked up before the packet is rewritten, so a packet too
//! big for it can still be answered with an ICMP error quoting what its
//! sender sent.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
        BPF_FIB_LOOKUP_SRC, bpf_check_mtu_flags::BPF_MTU_CHK_SEGS, bpf_fib_lookup, bpf_redir_neigh,
    },
    helpers::{bpf_check_mtu, bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};

use crate::parse::Packet;

const AF_INET: u8 = 2;

/// Why a packet cannot be forwarded.
pub enum Unsendable {
    /// Bigger than the route onward allows (`mtu`, host order); for a
    /// coalesced (GSO) packet, its segments are.
    TooBig { mtu: u16 },
    /// No route or no usable next hop (the FIB's code).
    NoRoute,
}

/// Where the FIB sends a packet: its interface, and either the MACs to
/// write or a next hop for the neighbour subsystem to resolve.
pub struct NextHop {
    params: bpf_fib_lookup,
    resolved: bool,
}

/// Whether the kernel coalesced this packet (GRO) or will segment it (GSO):
/// its IP total length is then the sum of its segments', not what goes on
/// the wire.
#[inline(always)]
pub fn is_gso(ctx: &TcContext) -> bool {
    unsafe { (*ctx.skb.skb).gso_size != 0 }
}

/// Looks up the route of `pkt` once rewritten to `src_ip_be → dst_ip_be`.
#[inline(always)]
pub fn lookup(
    ctx: &TcContext,
    pkt: &Packet,
    src_ip_be: u32,
    dst_ip_be: u32,
) -> Result<NextHop, Unsendable> {
    lookup_with(ctx, pkt, src_ip_be, dst_ip_be, 0)
}

/// Looks up the route of `pkt` to `dst_ip_be` from this node, and the
/// source address the kernel would give it there (`NextHop::source`): the
/// egress device's, as MASQUERADE picks.
#[inline(always)]
pub fn lookup_from_node(
    ctx: &TcContext,
    pkt: &Packet,
    dst_ip_be: u32,
) -> Result<NextHop, Unsendable> {
    lookup_with(ctx, pkt, 0, dst_ip_be, BPF_FIB_LOOKUP_SRC)
}

#[inline(always)]
fn lookup_with(
    ctx: &TcContext,
    pkt: &Packet,
    src_ip_be: u32,
    dst_ip_be: u32,
    flags: u32,
) -> Result<NextHop, Unsendable> {
    let gso = is_gso(ctx);
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = pkt.flow.proto;
    // A non-zero length turns on a plain `length > MTU` check, which every
    // coalesced packet fails; with 0 the kernel checks GSO packets by
    // their segments.
    params.__bindgen_anon_1.tot_len = if gso { 0 } else { pkt.ip_len };
    params.__bindgen_anon_3.ipv4_src = src_ip_be;
    params.__bindgen_anon_4.ipv4_dst = dst_ip_be;
    // Looked up as the kernel forwards a packet that came in here: an
    // output lookup would be bound to this interface and miss routes
    // through any other (a tunnel device, a second NIC).
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb as *mut _,
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            flags,
        )
    };
    let resolved = match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => true,
        BPF_FIB_LKUP_RET_NO_NEIGH => false,
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            return Err(Unsendable::TooBig {
                mtu: unsafe { params.__bindgen_anon_1.mtu_result },
            });
        }
        _ => return Err(Unsendable::NoRoute),
    };
    if gso {
        segments_fit(ctx, params.ifindex)?;
    }
    Ok(NextHop { params, resolved })
}

/// A coalesced packet is cut into segments of its original size on the
/// way out: each must fit the egress interface.
#[inline(always)]
fn segments_fit(ctx: &TcContext, ifindex: u32) -> Result<(), Unsendable> {
    let mut mtu: u32 = 0;
    let rc = unsafe {
        bpf_check_mtu(
            ctx.skb.skb as *mut _,
            ifindex,
            &mut mtu,
            0,
            BPF_MTU_CHK_SEGS as u64,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Unsendable::TooBig { mtu: mtu as u16 })
    }
}

impl NextHop {
    /// The source address the lookup picked (`lookup_from_node`), or the
    /// one it was given.
    #[inline(always)]
    pub fn source(&self) -> u32 {
        unsafe { self.params.__bindgen_anon_3.ipv4_src }
    }

    /// Sends the (now rewritten) packet on; returns the tc action.
    #[inline(always)]
    pub fn send(&self, ctx: &TcContext) -> Result<i32, i64> {
        let params = &self.params;
        if self.resolved {
            let mut macs = [0u8; 12];
            macs[..6].copy_from_slice(&params.dmac);
            macs[6..].copy_from_slice(&params.smac);
            ctx.store(0, &macs, 0)?;
            return Ok(unsafe { bpf_redirect(params.ifindex, 0) } as i32);
        }
        // The lookup left the next hop in ipv4_dst; let the neighbour
        // subsystem resolve it.
        let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
        nh.nh_family = AF_INET as u32;
        nh.__bindgen_anon_1.ipv4_nh = unsafe { params.__bindgen_anon_4.ipv4_dst };
        Ok(unsafe {
            bpf_redirect_neigh(
                params.ifindex,
                &mut nh,
                core::mem::size_of::<bpf_redir_neigh>() as i32,
                0,
            )
        } as i32)
    }
}

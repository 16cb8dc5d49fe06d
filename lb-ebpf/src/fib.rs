//! Forwarding a translated packet ourselves: after SNAT its source is this
//! node, and the kernel's input path would drop it as a martian. The FIB
//! tells where it goes; the packet is redirected straight to that interface.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, bpf_fib_lookup,
        bpf_redir_neigh,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};

const AF_INET: u8 = 2;

/// Redirects the (already rewritten) IPv4 packet towards `dst_ip_be`.
#[inline(always)]
pub fn redirect(
    ctx: &TcContext,
    proto: u8,
    src_ip_be: u32,
    dst_ip_be: u32,
    tot_len: u16,
) -> Result<i32, i64> {
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = proto;
    params.__bindgen_anon_1.tot_len = tot_len;
    params.__bindgen_anon_3.ipv4_src = src_ip_be;
    params.__bindgen_anon_4.ipv4_dst = dst_ip_be;
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let rc = unsafe {
        fib_lookup(
            ctx.skb.skb as *mut _,
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        )
    };
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&params.dmac);
        macs[6..].copy_from_slice(&params.smac);
        ctx.store(0, &macs, 0)?;
        return Ok(unsafe { bpf_redirect(params.ifindex, 0) } as i32);
    }
    if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        // The lookup left the next hop in ipv4_dst; let the neighbour
        // subsystem resolve it.
        let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
        nh.nh_family = AF_INET as u32;
        nh.__bindgen_anon_1.ipv4_nh = unsafe { params.__bindgen_anon_4.ipv4_dst };
        return Ok(unsafe {
            bpf_redirect_neigh(
                params.ifindex,
                &mut nh,
                core::mem::size_of::<bpf_redir_neigh>() as i32,
                0,
            )
        } as i32);
    }
    Err(rc)
}

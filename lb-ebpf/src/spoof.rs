//! Source-address checks on pods' packets. Any pod with CAP_NET_RAW (in
//! the default container capabilities) can forge packets with another
//! pod's source address: a RST or FIN that closes the victim's tracked
//! connection, a SYN that re-balances it, new flows that spend the victim's
//! admission quota. So the packets that change conntrack state — segments
//! with SYN, FIN or RST, and the first packet of a new flow — must come
//! from an address of the pod behind the interface, as the node's host
//! routes say (user space fills `pod_sources`). Plain data of established
//! flows is not checked: forging it changes nothing here, and it is the
//! hot path. An interface whose addresses are unknown is not checked.

use aya_ebpf::programs::TcContext;
use lb_common::{PodSource, reason};

use crate::maps::pod_sources;
use crate::stats;

/// Whether the pod behind the interface `ctx` arrived on may send from
/// `src_ip_be`; counts a refusal.
#[inline(always)]
pub fn source_allowed(ctx: &TcContext, src_ip_be: u32) -> bool {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let own = PodSource {
        ifindex,
        ip_be: src_ip_be,
    };
    if unsafe { pod_sources.get(own) }.is_some() {
        return true;
    }
    let checked = PodSource { ifindex, ip_be: 0 };
    if unsafe { pod_sources.get(checked) }.is_none() {
        return true;
    }
    stats::count(reason::SPOOFED_SOURCE_DROPPED);
    false
}

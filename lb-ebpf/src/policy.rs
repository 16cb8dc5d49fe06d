//! NetworkPolicy at the pods' interfaces. A pod some policy selects for a
//! direction (`policy_pods`) is default-deny that way: a new flow passes
//! only if a rule of the pod allows its peer address and port
//! (`policy_rules`, longest prefix match). Allowed flows are remembered
//! (`policy_flows`), so their replies pass whatever the other direction
//! says, as netfilter's ESTABLISHED rule does for other policy engines.
//!
//! Ingress is judged where packets enter the pod (`to_pod`), after any
//! service translation: a client reaches a pod through its ClusterIP or a
//! node port only if it may reach the pod itself. Egress is judged where
//! packets leave it (`from_pod`), on the backend a service flow was given.
//! Traffic from the node itself (kubelet probes, host-network pods) is
//! always let in, as Kubernetes expects.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::programs::TcContext;
use lb_common::{
    FlowKey, POLICY_FLOW_IDLE_TCP_NS, POLICY_FLOW_IDLE_UDP_NS, POLICY_PORT_RANGES, PROTO_TCP,
    PolicyRuleKey, policy_direction, reason,
};

use crate::maps::{policy_active, policy_flows, policy_pods, policy_rules};
use crate::parse::Packet;
use crate::stats;

/// How often a remembered flow's timestamp is refreshed.
const TOUCH_INTERVAL_NS: u64 = 1_000_000_000;

/// Whether a packet entering the pod it is addressed to may pass (it is
/// not a reply of one of the pod's service flows: those always do).
#[inline(always)]
pub fn admits_into_pod(ctx: &TcContext, pkt: &Packet) -> bool {
    let flow = &pkt.flow;
    if !active() {
        return true;
    }
    let Some(isolation) = (unsafe { policy_pods.get(flow.dst_ip_be) }).copied() else {
        return true;
    };
    // Made on this node (ingress_ifindex 0): the node's own traffic.
    if unsafe { (*ctx.skb.skb).ingress_ifindex } == 0 {
        return true;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    // This flow let in before, or the reply of one the pod was let send.
    if remembered(flow, INTO_POD, now) || remembered(&flow.reversed(), OUT_OF_POD, now) {
        return true;
    }
    if isolation.ingress != 0 {
        let peer = (flow.src_ip_be, flow.dst_port_be);
        if !allows(flow.dst_ip_be, policy_direction::INGRESS, peer, flow.proto) {
            stats::count(reason::POLICY_INGRESS_DENIED);
            return false;
        }
        stats::count(reason::POLICY_ALLOWED);
    }
    remember(flow, INTO_POD, now);
    true
}

/// Whether a pod may send a new flow to `(ip, port)` (for a service flow,
/// the backend it was given).
#[inline(always)]
pub fn admits_out_of_pod(pkt: &Packet, (ip_be, port_be): (u32, u16)) -> bool {
    if !active() {
        return true;
    }
    let Some(isolation) = (unsafe { policy_pods.get(pkt.flow.src_ip_be) }).copied() else {
        return true;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let flow = FlowKey {
        dst_ip_be: ip_be,
        dst_port_be: port_be,
        ..pkt.flow
    };
    // This flow let out before, or the reply of one the pod was let receive.
    if remembered(&flow, OUT_OF_POD, now) || remembered(&flow.reversed(), INTO_POD, now) {
        return true;
    }
    if isolation.egress != 0 {
        let peer = (ip_be, port_be);
        if !allows(flow.src_ip_be, policy_direction::EGRESS, peer, flow.proto) {
            stats::count(reason::POLICY_EGRESS_DENIED);
            return false;
        }
        stats::count(reason::POLICY_ALLOWED);
    }
    remember(&flow, OUT_OF_POD, now);
    true
}

/// Whether any pod here is isolated at all.
#[inline(always)]
fn active() -> bool {
    policy_active.get(0).is_some_and(|n| *n != 0)
}

/// Whether `pod`'s rules for `direction` let `peer` (address, and the
/// port: the pod's for ingress, the peer's for egress) through.
#[inline(always)]
fn allows(pod_ip_be: u32, direction: u32, (peer_ip_be, port_be): (u32, u16), proto: u8) -> bool {
    let key = Key::new(
        96,
        PolicyRuleKey {
            pod_ip_be,
            direction_be: direction.to_be(),
            peer_ip_be,
        },
    );
    let Some(ports) = policy_rules.get(&key) else {
        return false;
    };
    let port = u16::from_be(port_be);
    for i in 0..POLICY_PORT_RANGES {
        if i as u32 >= ports.count {
            break;
        }
        let range = &ports.ranges[i];
        if range.proto == 0 || (range.proto == proto && range.first <= port && port <= range.last) {
            return true;
        }
    }
    false
}

/// Which way a remembered flow was allowed, kept in the key's padding: a
/// flow between two pods of one node is allowed out of one and into the
/// other separately (the first must not vouch for the second).
const INTO_POD: u8 = 1;
const OUT_OF_POD: u8 = 2;

#[inline(always)]
fn marked(flow: &FlowKey, way: u8) -> FlowKey {
    FlowKey {
        _pad: [way, 0, 0],
        ..*flow
    }
}

/// Whether `flow` was allowed `way` and has been active lately; refreshes it.
#[inline(always)]
fn remembered(flow: &FlowKey, way: u8, now: u64) -> bool {
    let Some(seen) = policy_flows.get_ptr_mut(marked(flow, way)) else {
        return false;
    };
    let seen = unsafe { &mut *seen };
    let idle = if flow.proto == PROTO_TCP {
        POLICY_FLOW_IDLE_TCP_NS
    } else {
        POLICY_FLOW_IDLE_UDP_NS
    };
    let since = now.wrapping_sub(*seen);
    if since > idle {
        return false;
    }
    if since > TOUCH_INTERVAL_NS {
        *seen = now;
    }
    true
}

#[inline(always)]
fn remember(flow: &FlowKey, way: u8, now: u64) {
    // Failure only costs the replies' shortcut: they are judged as new.
    let _ = policy_flows.insert(marked(flow, way), now, 0);
}

//! NetworkPolicy at the pods' interfaces. A pod some policy selects for a
//! direction (`policy_pods`) is default-deny that way: a new flow passes
//! only if the pod's rule set for that direction allows its peer address
//! and port (`policy_rules`, longest prefix match; pods whose policies say
//! the same share a set). Each allowed flow is counted for the policy
//! whose rule let it through (`policy_hits`). Allowed flows are remembered
//! (`policy_flows`), so their replies pass whatever the other direction
//! says, as netfilter's ESTABLISHED rule does for other policy engines.
//!
//! Ingress is judged where packets enter the pod (`to_pod`), after any
//! service translation: a client reaches a pod through its ClusterIP or a
//! node port only if it may reach the pod itself. Egress is judged where
//! packets leave it (`from_pod`), on the backend a service flow was given.
//! Traffic from the node itself (kubelet probes, host-network pods) is
//! always let in, as Kubernetes expects.

use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::programs::TcContext;
use lb_common::{
    FlowKey, POLICY_FLOW_IDLE_TCP_NS, POLICY_FLOW_IDLE_UDP_NS, POLICY_PORT_RANGES, PROTO_TCP,
    PolicyRuleKey, PolicyStatsKey, policy_direction, reason,
};

use crate::maps::{
    policy_active, policy_flows, policy_hits, policy_pods, policy_rules, policy_stats,
};
use crate::parse::{ETH_HLEN, Packet};
use crate::stats;

/// How often a remembered flow's timestamp is refreshed.
const TOUCH_INTERVAL_NS: u64 = 1_000_000_000;

/// Whether a packet entering the pod it is addressed to may pass (it is
/// not a reply of one of the pod's service flows: those always do).
#[inline(always)]
pub fn admits_into_pod(ctx: &TcContext, pkt: &Packet) -> bool {
    admits_flow_into_pod(ctx, &pkt.flow)
}

#[inline(always)]
fn admits_flow_into_pod(ctx: &TcContext, flow: &FlowKey) -> bool {
    // Made on this node (ingress_ifindex 0): the node's own traffic.
    !active() || unsafe { (*ctx.skb.skb).ingress_ifindex } == 0 || admits(flow, Way::IntoPod)
}

/// Whether a pod may send a new flow to `(ip, port)` (for a service flow,
/// the backend it was given).
#[inline(always)]
pub fn admits_out_of_pod(pkt: &Packet, (ip_be, port_be): (u32, u16)) -> bool {
    let flow = FlowKey {
        dst_ip_be: ip_be,
        dst_port_be: port_be,
        ..pkt.flow
    };
    admits_flow_out_of_pod(&flow)
}

#[inline(always)]
fn admits_flow_out_of_pod(flow: &FlowKey) -> bool {
    !active() || admits(flow, Way::OutOfPod)
}

/// Which way a flow crosses the pod's interface, seen from the pod.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    IntoPod,
    OutOfPod,
}

/// The policy decision for a flow entering or leaving its pod: open if
/// no policy isolates the pod; else a flow remembered that way, or the
/// reply of one remembered the other way, or one the pod's rules for that
/// direction allow (then remembered, also when only the other direction
/// is isolated, so that its replies get back).
#[inline(always)]
fn admits(flow: &FlowKey, way: Way) -> bool {
    let (pod, peer, direction, mark, reply_mark) = match way {
        Way::IntoPod => (
            flow.dst_ip_be,
            flow.src_ip_be,
            policy_direction::INGRESS,
            INTO_POD,
            OUT_OF_POD,
        ),
        Way::OutOfPod => (
            flow.src_ip_be,
            flow.dst_ip_be,
            policy_direction::EGRESS,
            OUT_OF_POD,
            INTO_POD,
        ),
    };
    let Some(isolation) = (unsafe { policy_pods.get(pod) }).copied() else {
        return true;
    };
    let now = crate::clock::now();
    if remembered(flow, mark, now) || remembered(&flow.reversed(), reply_mark, now) {
        return true;
    }
    let rule_set = match way {
        Way::IntoPod => isolation.ingress_set,
        Way::OutOfPod => isolation.egress_set,
    };
    if rule_set != 0 {
        // The port is the pod's for ingress, the peer's for egress: the
        // destination's either way.
        let by = allowed_by(rule_set, (peer, flow.dst_port_be), flow.proto);
        counted(pod, direction, by);
        if by.is_none() {
            return false;
        }
    }
    remember(flow, mark, now);
    true
}

/// ICMP, SCTP and other protocols without a parsed flow, into a pod:
/// judged like a flow (echo requests and SCTP by their rules — ICMP only
/// by rules for every protocol, as NetworkPolicy has no ICMP), except ICMP
/// errors, which belong to another flow (netfilter's RELATED).
#[inline(always)]
pub fn admits_other_into_pod(ctx: &TcContext) -> bool {
    if !active() {
        return true;
    }
    match other_flow(ctx) {
        Some((flow, false)) => admits_flow_into_pod(ctx, &flow),
        _ => true,
    }
}

/// The same, out of a pod.
#[inline(always)]
pub fn admits_other_out_of_pod(ctx: &TcContext) -> bool {
    if !active() {
        return true;
    }
    match other_flow(ctx) {
        Some((flow, false)) => admits_flow_out_of_pod(&flow),
        _ => true,
    }
}

const PROTO_ICMP: u8 = 1;
const PROTO_SCTP: u8 = 132;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO: u8 = 8;

/// An IPv4 packet that is not TCP or UDP as policy sees it: its flow (an
/// ICMP echo's identifier as the port of the side that chose it, so a
/// reply is its request reversed; SCTP's ports; else no ports) and whether
/// it is an ICMP error. None: not IPv4, or a later fragment.
#[inline(always)]
fn other_flow(ctx: &TcContext) -> Option<(FlowKey, bool)> {
    let load_u8 = |off: usize| ctx.load::<u8>(off).ok();
    let load_u16 = |off: usize| ctx.load::<u16>(off).ok();
    if load_u16(12)? != 0x0800u16.to_be() {
        return None;
    }
    let ihl = usize::from(load_u8(ETH_HLEN)? & 0x0f) * 4;
    if ihl < 20 || u16::from_be(load_u16(ETH_HLEN + 6)?) & 0x1fff != 0 {
        return None;
    }
    let proto = load_u8(ETH_HLEN + 9)?;
    let mut flow = FlowKey {
        src_ip_be: ctx.load::<u32>(ETH_HLEN + 12).ok()?,
        dst_ip_be: ctx.load::<u32>(ETH_HLEN + 16).ok()?,
        proto,
        ..FlowKey::default()
    };
    let l4 = ETH_HLEN + ihl;
    match proto {
        PROTO_ICMP => match load_u8(l4)? {
            ICMP_ECHO => flow.src_port_be = load_u16(l4 + 4)?,
            ICMP_ECHO_REPLY => flow.dst_port_be = load_u16(l4 + 4)?,
            3 | 11 | 12 => return Some((flow, true)),
            _ => {}
        },
        PROTO_SCTP => {
            flow.src_port_be = load_u16(l4)?;
            flow.dst_port_be = load_u16(l4 + 2)?;
        }
        _ => {}
    }
    Some((flow, false))
}

/// Counts a judged new flow by reason, for the pod and direction, and
/// for the policy that allowed it.
#[inline(always)]
fn counted(pod_ip_be: u32, direction: u32, allowed_by: Option<u16>) {
    let allowed = allowed_by.is_some();
    if let Some(hits) = allowed_by.and_then(|id| policy_hits.get_ptr_mut(u32::from(id))) {
        unsafe { (*hits).allowed += 1 };
    }
    stats::count(match (allowed, direction) {
        (true, _) => reason::POLICY_ALLOWED,
        (false, policy_direction::INGRESS) => reason::POLICY_INGRESS_DENIED,
        (false, _) => reason::POLICY_EGRESS_DENIED,
    });
    let key = PolicyStatsKey {
        pod_ip_be,
        direction,
    };
    if let Some(c) = policy_stats.get_ptr_mut(key) {
        let c = unsafe { &mut *c };
        if allowed {
            c.allowed += 1;
        } else {
            c.denied += 1;
        }
    }
}

/// Whether some policy isolates `pod_ip` in either direction (its flows
/// are then remembered both ways, so its replies get back).
#[inline(always)]
pub fn isolates(pod_ip_be: u32) -> bool {
    active() && unsafe { policy_pods.get(pod_ip_be) }.is_some()
}

/// Whether any pod here is isolated at all.
#[inline(always)]
fn active() -> bool {
    policy_active.get(0).is_some_and(|n| *n != 0)
}

/// Whether a rule set lets `peer` (address, and the port: the pod's for
/// ingress, the peer's for egress) through: the ID of the policy whose
/// rule does (0 if unknown), None if none does.
#[inline(always)]
fn allowed_by(rule_set: u32, (peer_ip_be, port_be): (u32, u16), proto: u8) -> Option<u16> {
    let key = Key::new(
        64,
        PolicyRuleKey {
            rule_set_be: rule_set.to_be(),
            peer_ip_be,
        },
    );
    let ports = policy_rules.get(&key)?;
    let port = u16::from_be(port_be);
    for i in 0..POLICY_PORT_RANGES {
        if i as u32 >= ports.count {
            break;
        }
        let range = &ports.ranges[i];
        if range.proto == 0 || (range.proto == proto && range.first <= port && port <= range.last) {
            return Some(range.policy);
        }
    }
    None
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

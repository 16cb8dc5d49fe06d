//! NetworkPolicy as the cluster wants it enforced, per pod: which
//! directions some policy isolates it in, and which peers and ports the
//! rules of those policies allow. Built from Pods, Namespaces and
//! NetworkPolicies by [`compile`]; written to the datapath by
//! `datapath/policy_sync.rs`. Knows nothing of BPF.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;

pub mod cidr;
pub mod compile;
pub mod selector;
pub mod socket_opt_out;

pub use cidr::Cidr;
pub use compile::compile;

/// Every pod some NetworkPolicy selects, by address; and, read from the
/// same Pods and Namespaces, the pods that opted out of socket-level load
/// balancing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PolicyState {
    pub pods: BTreeMap<Ipv4Addr, PodPolicy>,
    /// Addresses of pods annotated `switchyard.io/socket-lb: "off"`, or in
    /// a namespace so annotated (see [`socket_opt_out`]).
    pub socket_lb_excluded: BTreeSet<Ipv4Addr>,
}

/// What NetworkPolicy says about one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PodPolicy {
    /// `namespace/name`.
    pub pod: String,
    /// Isolated for ingress (by these policies), with what they allow in.
    pub ingress: Option<Isolation>,
    /// Isolated for egress, with what they allow out.
    pub egress: Option<Isolation>,
}

/// A direction some policies isolate a pod in: default deny, except what
/// their rules allow (the union of all of them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Isolation {
    /// `namespace/name` of the policies selecting the pod this way.
    pub policies: BTreeSet<String>,
    pub rules: Vec<PeerRule>,
}

/// Peers (disjoint address prefixes, exceptions already taken out) and
/// the ports they may use: the pod's for ingress, the peer's for egress.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct PeerRule {
    /// `namespace/name` of the policy the rule is from.
    pub policy: String,
    pub peers: Vec<Cidr>,
    /// Empty: every protocol and port.
    pub ports: Vec<PortRange>,
}

/// A protocol's inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortRange {
    /// IP protocol number: 6 TCP, 17 UDP, 132 SCTP.
    pub protocol: u8,
    pub first: u16,
    pub last: u16,
}

/// The IP protocol numbers NetworkPolicy names.
const PROTOCOLS: [(&str, u8); 3] = [("TCP", 6), ("UDP", 17), ("SCTP", 132)];

/// "TCP" → 6; `None` for a name NetworkPolicy does not know.
pub fn protocol_number(name: &str) -> Option<u8> {
    PROTOCOLS.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

/// 6 → "TCP"; "?" for others.
pub fn protocol_name(number: u8) -> &'static str {
    PROTOCOLS
        .iter()
        .find(|(_, p)| *p == number)
        .map_or("?", |(n, _)| n)
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = protocol_name(self.protocol);
        if self.first == self.last {
            write!(f, "{}/{proto}", self.first)
        } else {
            write!(f, "{}-{}/{proto}", self.first, self.last)
        }
    }
}

//! What the cluster wants, independent of how the datapath realises it.
//!
//! Sources (standalone manifests, the API server) produce a [`DesiredState`];
//! the map-sync layer turns it into BPF map entries. Nothing here knows about
//! BPF.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::PROTO_TCP,
            Protocol::Udp => lb_common::PROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            lb_common::PROTO_TCP => Some(Protocol::Tcp),
            lb_common::PROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// How a service port's new flows choose among its endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    /// Uniformly at random (kube-proxy's iptables and nftables modes).
    Random,
    /// Consistent hashing of the 5-tuple: the same endpoint on every node.
    Maglev,
    /// Each endpoint in turn (IPVS `rr`).
    RoundRobin,
    /// The endpoint with the fewest open flows (IPVS `lc`).
    LeastConnection,
}

impl Algorithm {
    pub const ALL: [Algorithm; 4] = [
        Algorithm::Random,
        Algorithm::Maglev,
        Algorithm::RoundRobin,
        Algorithm::LeastConnection,
    ];

    /// The name in `--algorithm` and the `switchyard.io/lb-algorithm`
    /// annotation.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Random => "random",
            Algorithm::Maglev => "maglev",
            Algorithm::RoundRobin => "round-robin",
            Algorithm::LeastConnection => "least-connection",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `namespace/name:port-name`, the identity kube-proxy gives a service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    /// Empty for a single unnamed port.
    pub port_name: String,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port_name.is_empty() {
            write!(f, ":{}", self.port_name)?;
        }
        Ok(())
    }
}

/// An address clients send to: VIP (or node IP, LB IP), port, protocol, and
/// which clients this entry of it serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Frontend {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub scope: FrontendScope,
}

/// Who a frontend's entry serves. Services declare only `All`; the
/// datapath's plan adds an `InCluster` entry where clients inside the
/// cluster are balanced differently from outside ones (an
/// `externalTrafficPolicy: Local` service's external addresses: every
/// endpoint for pods and nodes, as kube-proxy's short-circuit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum FrontendScope {
    #[default]
    All,
    InCluster,
}

impl Frontend {
    pub const fn new(ip: Ipv4Addr, port: u16, protocol: Protocol) -> Self {
        Self {
            ip,
            port,
            protocol,
            scope: FrontendScope::All,
        }
    }

    /// This frontend's entry for clients inside the cluster.
    pub const fn in_cluster(self) -> Self {
        Self {
            scope: FrontendScope::InCluster,
            ..self
        }
    }
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.ip, self.port, self.protocol)?;
        if self.scope == FrontendScope::InCluster {
            write!(f, " (in-cluster)")?;
        }
        Ok(())
    }
}

/// Where traffic is sent: a pod address and the target port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct BackendAddr {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.ip, self.port)
    }
}

/// One endpoint of a service port, with the EndpointSlice conditions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub addr: BackendAddr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: Option<String>,
    /// Topology hints the EndpointSlice controller set (from the Service's
    /// `trafficDistribution` or topology annotation); boxed, as most
    /// endpoints have none.
    pub hints: Option<Box<TopologyHints>>,
}

/// `hints.forZones[].name` and `hints.forNodes[].name` of an endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TopologyHints {
    pub zones: Vec<String>,
    pub nodes: Vec<String>,
}

/// Which endpoints topology hints keep for clients on this node, decided as
/// kube-proxy does: node hints if every ready endpoint has some and one is
/// for this node, else zone hints if every ready endpoint has some and one
/// is for this node's zone, else none (all endpoints: incomplete hints are
/// ignored rather than half-followed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TopologyMode {
    All,
    SameNode,
    SameZone,
}

impl TopologyMode {
    fn of(endpoints: &[Endpoint], node: Option<&str>, zone: Option<&str>) -> Self {
        let ready: Vec<&Endpoint> = endpoints.iter().filter(|e| e.ready).collect();
        if ready.is_empty() {
            return Self::All;
        }
        let hinted = |pick: fn(&TopologyHints) -> &Vec<String>, here: Option<&str>| {
            let all_hinted = ready
                .iter()
                .all(|e| e.hints.as_ref().is_some_and(|h| !pick(h).is_empty()));
            let one_here = here.is_some_and(|here| {
                ready.iter().any(|e| {
                    e.hints
                        .as_ref()
                        .is_some_and(|h| pick(h).iter().any(|n| n == here))
                })
            });
            all_hinted && one_here
        };
        if hinted(|h| &h.nodes, node) {
            Self::SameNode
        } else if hinted(|h| &h.zones, zone) {
            Self::SameZone
        } else {
            Self::All
        }
    }

    fn admits(self, e: &Endpoint, node: Option<&str>, zone: Option<&str>) -> bool {
        let has = |pick: fn(&TopologyHints) -> &Vec<String>, here: Option<&str>| {
            e.hints
                .as_ref()
                .is_some_and(|h| pick(h).iter().any(|n| Some(n.as_str()) == here))
        };
        match self {
            Self::All => true,
            Self::SameNode => has(|h| &h.nodes, node),
            Self::SameZone => has(|h| &h.zones, zone),
        }
    }
}

/// A service port as the cluster wants it served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub name: ServicePortName,
    pub frontend: Frontend,
    pub service_type: ServiceType,
    /// `sessionAffinity: ClientIP`: how long a client keeps its backend
    /// after its last new connection.
    pub affinity: Option<std::time::Duration>,
    /// `internalTrafficPolicy: Local`: traffic from inside the cluster goes
    /// only to endpoints on the sending node.
    pub internal_traffic_local: bool,
    /// The Service's `switchyard.io/lb-algorithm`; `None`: the agent's
    /// `--algorithm`.
    pub algorithm: Option<Algorithm>,
    /// How the port is reachable from outside the cluster, if at all.
    pub external: ExternalAccess,
    pub endpoints: Vec<Endpoint>,
}

/// The external side of a service port: NodePort, load-balancer and
/// external IPs, and the policies that go with them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ExternalAccess {
    /// Served on every node's addresses at this port.
    pub node_port: Option<u16>,
    /// `status.loadBalancer.ingress[].ip`, served at the service port.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `spec.externalIPs`, served at the service port.
    pub external_ips: Vec<Ipv4Addr>,
    /// `externalTrafficPolicy: Local`: external traffic only to endpoints on
    /// the node it arrives at, with the client address preserved.
    pub traffic_local: bool,
    /// `loadBalancerSourceRanges` (address, prefix length); empty: any.
    pub source_ranges: Vec<(Ipv4Addr, u8)>,
    /// Where kube-proxy-compatible health checks are answered (policy Local).
    pub health_check_node_port: Option<u16>,
}

impl ExternalAccess {
    pub fn is_exposed(&self) -> bool {
        self.node_port.is_some()
            || !self.load_balancer_ips.is_empty()
            || !self.external_ips.is_empty()
    }
}

impl Endpoint {
    /// A ready endpoint, with no node or topology hints.
    pub fn ready(addr: BackendAddr) -> Self {
        Self {
            addr,
            ready: true,
            serving: true,
            terminating: false,
            node: None,
            hints: None,
        }
    }
}

impl ServicePort {
    /// A ClusterIP service port over `endpoints`, with no affinity, traffic
    /// policy or scheduler of its own.
    pub fn cluster_ip(name: ServicePortName, frontend: Frontend, endpoints: Vec<Endpoint>) -> Self {
        Self {
            name,
            frontend,
            service_type: ServiceType::ClusterIP,
            affinity: None,
            internal_traffic_local: false,
            algorithm: None,
            external: ExternalAccess::default(),
            endpoints,
        }
    }

    /// Backends that get new flows on `node`, as kube-proxy chooses them:
    /// with `internalTrafficPolicy: Local` only the node's own endpoints
    /// qualify (none when the node is unknown); among those, the ready ones,
    /// or when there are none, the ones still serving while terminating (so
    /// a rolling update does not black-hole traffic). Sorted and
    /// deduplicated, so equal sets compare equal.
    pub fn backends_on(&self, node: Option<&str>) -> Vec<BackendAddr> {
        self.backends_at(node, None)
    }

    /// [`ServicePort::backends_on`] for a node in `zone`: cluster-wide sets
    /// also follow the endpoints' topology hints (trafficDistribution).
    pub fn backends_at(&self, node: Option<&str>, zone: Option<&str>) -> Vec<BackendAddr> {
        let topology = if self.internal_traffic_local {
            TopologyMode::All
        } else {
            TopologyMode::of(&self.endpoints, node, zone)
        };
        let eligible: Vec<&Endpoint> = self
            .endpoints
            .iter()
            .filter(|e| {
                !self.internal_traffic_local || (node.is_some() && e.node.as_deref() == node)
            })
            .filter(|e| topology.admits(e, node, zone))
            .collect();
        let mut chosen: Vec<BackendAddr> = eligible
            .iter()
            .filter(|e| e.ready)
            .map(|e| e.addr)
            .collect();
        if chosen.is_empty() {
            chosen = eligible
                .iter()
                .filter(|e| e.serving && e.terminating)
                .map(|e| e.addr)
                .collect();
        }
        chosen.sort();
        chosen.dedup();
        chosen
    }

    /// Backends for traffic from outside arriving at `node`: with
    /// `externalTrafficPolicy: Local` only the node's own endpoints.
    pub fn external_backends_on(&self, node: Option<&str>) -> Vec<BackendAddr> {
        self.external_backends_at(node, None)
    }

    /// [`ServicePort::external_backends_on`] for a node in `zone`.
    pub fn external_backends_at(&self, node: Option<&str>, zone: Option<&str>) -> Vec<BackendAddr> {
        let local_only = ServicePort {
            internal_traffic_local: self.external.traffic_local,
            ..self.clone()
        };
        local_only.backends_at(node, zone)
    }

    /// Whether any endpoint anywhere could take traffic (ready, or serving
    /// while terminating). With a node-local policy and none on this node,
    /// kube-proxy drops the traffic when this holds, and rejects it (ICMP)
    /// when it does not: the service has no endpoints at all.
    pub fn has_usable_endpoints(&self) -> bool {
        self.endpoints
            .iter()
            .any(|e| e.ready || (e.serving && e.terminating))
    }

    /// Every usable endpoint in the cluster, whatever the traffic policies
    /// (topology hints still apply): what in-cluster clients of a
    /// node-local external frontend get.
    pub fn cluster_wide_backends(
        &self,
        node: Option<&str>,
        zone: Option<&str>,
    ) -> Vec<BackendAddr> {
        ServicePort {
            internal_traffic_local: false,
            ..self.clone()
        }
        .backends_at(node, zone)
    }

    /// [`ServicePort::backends_on`] for a service without node-local policy.
    pub fn active_backends(&self) -> Vec<BackendAddr> {
        self.backends_on(None)
    }
}

/// Everything the datapath should serve, keyed by frontend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DesiredState {
    pub services: BTreeMap<Frontend, ServicePort>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ip: [u8; 4], ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            addr: BackendAddr {
                ip: Ipv4Addr::from(ip),
                port: 8080,
                protocol: Protocol::Tcp,
            },
            ready,
            serving,
            terminating,
            node: None,
            hints: None,
        }
    }

    fn port(endpoints: Vec<Endpoint>) -> ServicePort {
        let name = ServicePortName {
            namespace: "default".into(),
            name: "web".into(),
            port_name: "http".into(),
        };
        let frontend = Frontend::new(Ipv4Addr::new(10, 96, 0, 10), 80, Protocol::Tcp);
        ServicePort::cluster_ip(name, frontend, endpoints)
    }

    #[test]
    fn ready_endpoints_win_over_terminating() {
        let p = port(vec![
            ep([10, 0, 0, 2], true, true, false),
            ep([10, 0, 0, 1], false, true, true),
        ]);
        let ips: Vec<_> = p.active_backends().iter().map(|b| b.ip).collect();
        assert_eq!(ips, vec![Ipv4Addr::new(10, 0, 0, 2)]);
    }

    #[test]
    fn falls_back_to_serving_terminating() {
        let p = port(vec![
            ep([10, 0, 0, 3], false, false, true),
            ep([10, 0, 0, 1], false, true, true),
        ]);
        let ips: Vec<_> = p.active_backends().iter().map(|b| b.ip).collect();
        assert_eq!(ips, vec![Ipv4Addr::new(10, 0, 0, 1)]);
    }

    #[test]
    fn duplicates_are_merged_and_sorted() {
        let p = port(vec![
            ep([10, 0, 0, 2], true, true, false),
            ep([10, 0, 0, 1], true, true, false),
            ep([10, 0, 0, 2], true, true, false),
        ]);
        assert_eq!(p.active_backends().len(), 2);
        assert_eq!(p.active_backends()[0].ip, Ipv4Addr::new(10, 0, 0, 1));
    }

    #[test]
    fn internal_traffic_local_keeps_the_nodes_own_endpoints() {
        let mut p = port(vec![
            Endpoint {
                node: Some("n1".into()),
                ..ep([10, 0, 0, 1], true, true, false)
            },
            Endpoint {
                node: Some("n2".into()),
                ..ep([10, 0, 0, 2], true, true, false)
            },
            Endpoint {
                node: Some("n2".into()),
                ..ep([10, 0, 0, 3], false, true, true)
            },
        ]);
        assert_eq!(
            p.backends_on(Some("n1")).len(),
            2,
            "policy Cluster: all ready"
        );
        p.internal_traffic_local = true;
        let on = |n: Option<&str>| -> Vec<u8> {
            p.backends_on(n).iter().map(|b| b.ip.octets()[3]).collect()
        };
        assert_eq!(on(Some("n1")), vec![1]);
        assert_eq!(on(Some("n2")), vec![2]);
        assert_eq!(on(Some("n3")), Vec::<u8>::new());
        assert_eq!(on(None), Vec::<u8>::new(), "unknown node: nothing is local");
    }

    /// Endpoints as the EndpointSlice controller hints them for
    /// `trafficDistribution`: PreferClose/PreferSameZone (zone hints),
    /// PreferSameNode (node and zone hints). Cases follow kube-proxy's
    /// rules: hints are followed only when every ready endpoint has them and
    /// one is for here; otherwise every endpoint is used.
    #[test]
    fn topology_hints_follow_kube_proxys_rules() {
        let hinted = |last: u8, node: &str, zones: &[&str], nodes: &[&str]| Endpoint {
            node: Some(node.into()),
            hints: (!zones.is_empty() || !nodes.is_empty()).then(|| {
                Box::new(TopologyHints {
                    zones: zones.iter().map(|z| z.to_string()).collect(),
                    nodes: nodes.iter().map(|n| n.to_string()).collect(),
                })
            }),
            ..ep([10, 0, 0, last], true, true, false)
        };
        type Case = (
            &'static str,
            Vec<Endpoint>,
            Option<&'static str>,
            Option<&'static str>,
            Vec<u8>,
        );
        let cases: Vec<Case> = vec![
            (
                "zone hints complete: this zone's endpoints",
                vec![
                    hinted(1, "n1", &["a"], &[]),
                    hinted(2, "n2", &["b"], &[]),
                    hinted(3, "n3", &["a"], &[]),
                ],
                Some("n2"),
                Some("a"),
                vec![1, 3],
            ),
            (
                "one endpoint without hints: all",
                vec![hinted(1, "n1", &["a"], &[]), hinted(2, "n2", &[], &[])],
                Some("n1"),
                Some("a"),
                vec![1, 2],
            ),
            (
                "node without a zone label: all",
                vec![hinted(1, "n1", &["a"], &[]), hinted(2, "n2", &["b"], &[])],
                Some("n1"),
                None,
                vec![1, 2],
            ),
            (
                "no endpoint hinted for this zone: all",
                vec![hinted(1, "n1", &["a"], &[]), hinted(2, "n2", &["a"], &[])],
                Some("n3"),
                Some("c"),
                vec![1, 2],
            ),
            (
                "node hints complete, one for this node: that one",
                vec![
                    hinted(1, "n1", &["a"], &["n1"]),
                    hinted(2, "n2", &["a"], &["n2"]),
                ],
                Some("n2"),
                Some("a"),
                vec![2],
            ),
            (
                "node hints, none for this node: falls back to the zone",
                vec![
                    hinted(1, "n1", &["a"], &["n1"]),
                    hinted(2, "n2", &["b"], &["n2"]),
                ],
                Some("n3"),
                Some("a"),
                vec![1],
            ),
            (
                "hints on an unready endpoint do not count",
                vec![
                    hinted(1, "n1", &["a"], &[]),
                    Endpoint {
                        ready: false,
                        ..hinted(2, "n2", &[], &[])
                    },
                ],
                Some("n1"),
                Some("a"),
                vec![1],
            ),
        ];
        for (what, endpoints, node, zone, want) in cases {
            let p = port(endpoints);
            let got: Vec<u8> = p
                .backends_at(node, zone)
                .iter()
                .map(|b| b.ip.octets()[3])
                .collect();
            assert_eq!(got, want, "{what}");
        }
        // internalTrafficPolicy Local is about the node, not hints.
        let mut p = port(vec![
            hinted(1, "n1", &["b"], &[]),
            hinted(2, "n1", &["a"], &[]),
            hinted(3, "n2", &["a"], &[]),
        ]);
        p.internal_traffic_local = true;
        let got: Vec<u8> = p
            .backends_at(Some("n1"), Some("a"))
            .iter()
            .map(|b| b.ip.octets()[3])
            .collect();
        assert_eq!(got, vec![1, 2]);
    }

    #[test]
    fn display_names() {
        let p = port(vec![]);
        assert_eq!(p.name.to_string(), "default/web:http");
        assert_eq!(p.frontend.to_string(), "10.96.0.10:80/TCP");
    }
}

//! Pods, Namespaces and NetworkPolicies (networking.k8s.io/v1) → the
//! [`PolicyState`]: for every pod a policy selects, the directions it is
//! isolated in and the peers and ports its rules allow, with the upstream
//! semantics:
//!
//! - a policy selects pods of its own namespace by `podSelector` (empty:
//!   all); `policyTypes` defaults to Ingress, plus Egress when the policy
//!   has an `egress` section;
//! - a rule without peers allows every address; a peer is an `ipBlock`
//!   (minus its `except`s), or pods by `podSelector` in the policy's
//!   namespace, or by `namespaceSelector` (with `podSelector`: both must
//!   hold);
//! - a rule without ports allows every protocol and port; a port is a
//!   number (with `endPort`: a range) or a container port's name, looked up
//!   on the selected pod (ingress) or on each peer pod (egress; an
//!   `ipBlock` peer has no named ports); protocol TCP unless said;
//! - host-network pods are neither selected nor selected as peers (their
//!   traffic is the node's), nor are pods without an IPv4 address or that
//!   have finished.
//!
//! A bad field is reported with the policy and field, and the rest still
//! applies: an unusable selector or peer matches nothing, an unusable port
//! allows nothing.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{
    Cidr, Isolation, PeerRule, PodPolicy, PolicyState, PortRange, protocol_number, selector,
};
use crate::source::{ClusterObjects, ObjectError, Sourced};

/// The label the API server gives every namespace: its name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A pod as policies see it.
struct PodView {
    namespace: String,
    name: String,
    labels: BTreeMap<String, String>,
    ips: Vec<Ipv4Addr>,
    /// Container ports: (name, protocol number, port).
    ports: Vec<(String, u8, u16)>,
}

/// What the rules of one policy are compiled against.
struct Cluster {
    pods: Vec<PodView>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

/// The errors of one policy, named once.
struct Report<'a> {
    origin: &'a str,
    object: String,
    errors: &'a mut Vec<ObjectError>,
}

impl Report<'_> {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        let error = ObjectError::new(self.origin, &self.object, field, message);
        self.errors.push(error);
    }
}

/// A direction's rules of a policy, before peers and ports are resolved.
enum Direction {
    Ingress,
    Egress,
}

pub fn compile(objects: &ClusterObjects) -> (PolicyState, Vec<ObjectError>) {
    let mut errors = Vec::new();
    let cluster = Cluster::new(objects);
    let mut state = PolicyState::default();
    let mut policies: Vec<&Sourced<NetworkPolicy>> = objects.network_policies.iter().collect();
    policies.sort_by_key(|p| {
        (
            namespace_of(&p.object.metadata),
            p.object.metadata.name.clone(),
        )
    });
    for sourced in policies {
        let np = &sourced.object;
        let namespace = namespace_of(&np.metadata);
        let name = np.metadata.name.clone().unwrap_or_else(|| "?".into());
        let mut report = Report {
            origin: &sourced.origin,
            object: format!("NetworkPolicy {namespace}/{name}"),
            errors: &mut errors,
        };
        let Some(spec) = &np.spec else {
            report.error("spec", "missing");
            continue;
        };
        let policy = format!("{namespace}/{name}");
        apply_policy(&cluster, &namespace, &policy, spec, &mut report, &mut state);
    }
    state.socket_lb_excluded = super::socket_opt_out::excluded(objects, &mut errors);
    (state, errors)
}

fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

/// Isolates the pods `spec` selects and adds its rules to them.
fn apply_policy(
    cluster: &Cluster,
    namespace: &str,
    policy: &str,
    spec: &NetworkPolicySpec,
    report: &mut Report,
    state: &mut PolicyState,
) {
    // An absent podSelector selects every pod, as an empty one.
    let pod_selector = spec.pod_selector.as_ref();
    let selected = cluster.select(
        Some(namespace),
        None,
        pod_selector,
        "spec.podSelector",
        report,
    );
    let types = policy_types(spec, report);
    for pod in selected {
        for direction in &types {
            let (field, rules) = match direction {
                Direction::Ingress => ("spec.ingress", ingress_rules(spec)),
                Direction::Egress => ("spec.egress", egress_rules(spec)),
            };
            let mut compiled = Vec::new();
            for (i, (peers, ports)) in rules.into_iter().enumerate() {
                let at = format!("{field}[{i}]");
                let rules = compile_rule(
                    cluster,
                    namespace,
                    pod,
                    direction,
                    (peers, ports),
                    &at,
                    report,
                );
                compiled.extend(rules.into_iter().map(|(peers, ports)| PeerRule {
                    policy: policy.to_string(),
                    peers,
                    ports,
                }));
            }
            for ip in &pod.ips {
                let entry = state.pods.entry(*ip).or_insert_with(|| PodPolicy {
                    pod: format!("{}/{}", pod.namespace, pod.name),
                    ..PodPolicy::default()
                });
                let isolation = match direction {
                    Direction::Ingress => entry.ingress.get_or_insert_with(Isolation::default),
                    Direction::Egress => entry.egress.get_or_insert_with(Isolation::default),
                };
                isolation.policies.insert(policy.to_string());
                isolation.rules.extend(compiled.iter().cloned());
            }
        }
    }
}

type Rule<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

fn ingress_rules(spec: &NetworkPolicySpec) -> Vec<Rule<'_>> {
    spec.ingress
        .iter()
        .flatten()
        .map(|r| (r.from.as_ref(), r.ports.as_ref()))
        .collect()
}

fn egress_rules(spec: &NetworkPolicySpec) -> Vec<Rule<'_>> {
    spec.egress
        .iter()
        .flatten()
        .map(|r| (r.to.as_ref(), r.ports.as_ref()))
        .collect()
}

/// `policyTypes`, or its default: Ingress, and Egress if there are egress
/// rules.
fn policy_types(spec: &NetworkPolicySpec, report: &mut Report) -> Vec<Direction> {
    let Some(types) = &spec.policy_types else {
        let mut types = vec![Direction::Ingress];
        if spec.egress.is_some() {
            types.push(Direction::Egress);
        }
        return types;
    };
    let mut out = Vec::new();
    for (i, t) in types.iter().enumerate() {
        match t.as_str() {
            "Ingress" => out.push(Direction::Ingress),
            "Egress" => out.push(Direction::Egress),
            other => report.error(
                format!("spec.policyTypes[{i}]"),
                format!("unknown type {other:?}"),
            ),
        }
    }
    out
}

/// One rule for `pod`: its peers and ports resolved, as (peers, ports)
/// pairs.
fn compile_rule(
    cluster: &Cluster,
    namespace: &str,
    pod: &PodView,
    direction: &Direction,
    (peers, ports): (
        Option<&Vec<NetworkPolicyPeer>>,
        Option<&Vec<NetworkPolicyPort>>,
    ),
    at: &str,
    report: &mut Report,
) -> Vec<(Vec<Cidr>, Vec<PortRange>)> {
    let ports = RulePorts::read(ports.map(Vec::as_slice).unwrap_or_default(), at, report);
    let peer_field = match direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    let (blocks, peer_pods) = match peers.filter(|p| !p.is_empty()) {
        // Every address; for named egress ports, every pod that has one.
        None if ports.named.is_empty() => (vec![Cidr::ANY], Vec::new()),
        None => (vec![Cidr::ANY], cluster.pods.iter().collect()),
        Some(peers) => cluster.peers(namespace, peers, &format!("{at}.{peer_field}"), report),
    };
    let mut rules = Vec::new();
    match direction {
        Direction::Ingress => {
            // Named ports are the selected pod's own.
            let all_peers: Vec<Cidr> = blocks
                .iter()
                .copied()
                .chain(peer_pods.iter().flat_map(|p| hosts(&p.ips)))
                .collect();
            if let Some(resolved) = ports.resolve(pod) {
                rules.push((all_peers, resolved));
            }
        }
        Direction::Egress => {
            // Named ports are each peer pod's; address blocks have none.
            if !blocks.is_empty()
                && let Some(numeric) = ports.numeric_only()
            {
                rules.push((blocks, numeric));
            }
            for peer in &peer_pods {
                if let Some(resolved) = ports.resolve(peer) {
                    rules.push((hosts(&peer.ips), resolved));
                }
            }
        }
    }
    rules.retain(|(peers, _)| !peers.is_empty());
    rules
}

fn hosts(ips: &[Ipv4Addr]) -> Vec<Cidr> {
    ips.iter().map(|ip| Cidr::host(*ip)).collect()
}

/// A rule's `ports`, before named ports are looked up.
struct RulePorts {
    /// No `ports`: everything.
    all: bool,
    numeric: Vec<PortRange>,
    named: Vec<(String, u8)>,
}

impl RulePorts {
    fn read(ports: &[NetworkPolicyPort], at: &str, report: &mut Report) -> Self {
        let mut out = Self {
            all: ports.is_empty(),
            numeric: Vec::new(),
            named: Vec::new(),
        };
        for (i, p) in ports.iter().enumerate() {
            let field = format!("{at}.ports[{i}]");
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => 6,
                "UDP" => 17,
                "SCTP" => 132,
                other => {
                    report.error(
                        format!("{field}.protocol"),
                        format!("unknown protocol {other:?}"),
                    );
                    continue;
                }
            };
            match &p.port {
                None => out.numeric.push(PortRange {
                    protocol,
                    first: 0,
                    last: u16::MAX,
                }),
                Some(IntOrString::Int(n)) => {
                    let first = u16::try_from(*n).ok().filter(|n| *n > 0);
                    let last = p.end_port.map_or(first, |e| u16::try_from(e).ok());
                    match (first, last) {
                        (Some(first), Some(last)) if first <= last => {
                            out.numeric.push(PortRange {
                                protocol,
                                first,
                                last,
                            });
                        }
                        _ => report.error(
                            format!("{field}.port"),
                            format!("{n}..{:?} is not a port range in 1..=65535", p.end_port),
                        ),
                    }
                }
                Some(IntOrString::String(name)) => {
                    if p.end_port.is_some() {
                        report.error(format!("{field}.endPort"), "not allowed with a named port");
                        continue;
                    }
                    out.named.push((name.clone(), protocol));
                }
            }
        }
        out
    }

    /// The ports for `pod` (named ones looked up on it); `Some(empty)`:
    /// every port; `None`: the rule allows nothing there.
    fn resolve(&self, pod: &PodView) -> Option<Vec<PortRange>> {
        if self.all {
            return Some(Vec::new());
        }
        let mut ports = self.numeric.clone();
        for (name, protocol) in &self.named {
            ports.extend(
                pod.ports
                    .iter()
                    .filter(|(n, p, _)| n == name && p == protocol)
                    .map(|(_, protocol, port)| PortRange {
                        protocol: *protocol,
                        first: *port,
                        last: *port,
                    }),
            );
        }
        (!ports.is_empty()).then_some(ports)
    }

    fn numeric_only(&self) -> Option<Vec<PortRange>> {
        if self.all {
            return Some(Vec::new());
        }
        (!self.numeric.is_empty()).then(|| self.numeric.clone())
    }
}

impl Cluster {
    fn new(objects: &ClusterObjects) -> Self {
        let mut namespaces: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for ns in &objects.namespaces {
            let Some(name) = ns.object.metadata.name.clone() else {
                continue;
            };
            let mut labels = ns.object.metadata.labels.clone().unwrap_or_default();
            labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
            namespaces.insert(name, labels);
        }
        let pods: Vec<PodView> = objects
            .pods
            .iter()
            .filter_map(|p| pod_view(&p.object))
            .collect();
        // Namespaces known only from their pods have just their name label.
        for pod in &pods {
            namespaces.entry(pod.namespace.clone()).or_insert_with(|| {
                [(NAMESPACE_NAME_LABEL.to_string(), pod.namespace.clone())].into()
            });
        }
        Self { pods, namespaces }
    }

    /// Pods in `namespace` (or in the namespaces `ns_selector` matches)
    /// that `pod_selector` matches (None: all).
    fn select(
        &self,
        namespace: Option<&str>,
        ns_selector: Option<&LabelSelector>,
        pod_selector: Option<&LabelSelector>,
        field: &str,
        report: &mut Report,
    ) -> Vec<&PodView> {
        let mut selected = Vec::new();
        let mut failed = false;
        for pod in &self.pods {
            let in_namespace = match (namespace, ns_selector) {
                (Some(ns), None) => pod.namespace == ns,
                (_, Some(sel)) => match selector::matches(sel, &self.namespaces[&pod.namespace]) {
                    Ok(m) => m,
                    Err(e) => {
                        failed = true;
                        report.error(format!("{field}.namespaceSelector"), e);
                        break;
                    }
                },
                (None, None) => true,
            };
            if !in_namespace {
                continue;
            }
            let by_labels = match pod_selector {
                None => true,
                Some(sel) => match selector::matches(sel, &pod.labels) {
                    Ok(m) => m,
                    Err(e) => {
                        failed = true;
                        report.error(field, e);
                        break;
                    }
                },
            };
            if by_labels {
                selected.push(pod);
            }
        }
        if failed { Vec::new() } else { selected }
    }

    /// A rule's peers: address blocks, and pods.
    fn peers(
        &self,
        namespace: &str,
        peers: &[NetworkPolicyPeer],
        at: &str,
        report: &mut Report,
    ) -> (Vec<Cidr>, Vec<&PodView>) {
        let mut blocks = Vec::new();
        let mut pods = Vec::new();
        for (i, peer) in peers.iter().enumerate() {
            let field = format!("{at}[{i}]");
            if let Some(block) = &peer.ip_block {
                blocks.extend(ip_block(
                    &block.cidr,
                    block.except.as_deref().unwrap_or_default(),
                    &field,
                    report,
                ));
                continue;
            }
            let (own, ns_selector) = match &peer.namespace_selector {
                Some(sel) => (None, Some(sel)),
                None => (Some(namespace), None),
            };
            let pod_selector = peer.pod_selector.as_ref();
            pods.extend(self.select(
                own,
                ns_selector,
                pod_selector,
                &format!("{field}.podSelector"),
                report,
            ));
        }
        (blocks, pods)
    }
}

/// `ipBlock`: the block minus its exceptions; IPv6 blocks are not this
/// datapath's (passed over), anything else unparsable is an error.
fn ip_block(cidr: &str, except: &[String], field: &str, report: &mut Report) -> Vec<Cidr> {
    if cidr.contains(':') {
        return Vec::new();
    }
    let Some(block) = Cidr::parse(cidr) else {
        report.error(
            format!("{field}.ipBlock.cidr"),
            format!("{cidr:?} is not an IPv4 CIDR"),
        );
        return Vec::new();
    };
    let mut excepted = Vec::new();
    for (j, e) in except.iter().enumerate() {
        match Cidr::parse(e) {
            Some(c) if block.contains(&c) => excepted.push(c),
            _ if e.contains(':') => {}
            _ => report.error(
                format!("{field}.ipBlock.except[{j}]"),
                format!("{e:?} is not an IPv4 CIDR inside {cidr}"),
            ),
        }
    }
    block.minus(&excepted)
}

/// A pod's IPv4 addresses: `podIPs`, or `podIP` where only that is set.
pub(super) fn pod_ipv4s(status: &PodStatus) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(
            status
                .pod_ip
                .as_deref()
                .and_then(|ip| ip.parse::<Ipv4Addr>().ok()),
        );
    }
    ips
}

/// The pod as policies see it, unless it has no part in them.
fn pod_view(pod: &Pod) -> Option<PodView> {
    let spec = pod.spec.as_ref()?;
    if spec.host_network == Some(true) {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let ips = pod_ipv4s(status);
    if ips.is_empty() {
        return None;
    }
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let ports = containers
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let name = p.name.clone()?;
            let protocol = protocol_number(p.protocol.as_deref().unwrap_or("TCP"))?;
            Some((name, protocol, u16::try_from(p.container_port).ok()?))
        })
        .collect();
    Some(PodView {
        namespace: namespace_of(&pod.metadata),
        name: pod.metadata.name.clone().unwrap_or_default(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ips,
        ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::policy_sync::longest_match;

    /// Objects from a multi-document YAML (Pods, Namespaces, policies).
    fn objects(yaml: &str) -> ClusterObjects {
        let mut o = ClusterObjects::default();
        for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
            let value = serde_yaml::Value::deserialize(doc).expect("yaml");
            let json = serde_json::to_value(value).expect("json");
            let origin = format!("doc {i}");
            match json["kind"].as_str() {
                Some("Pod") => o.pods.push(Sourced {
                    origin,
                    object: serde_json::from_value(json).expect("pod"),
                }),
                Some("Namespace") => o.namespaces.push(Sourced {
                    origin,
                    object: serde_json::from_value(json).expect("ns"),
                }),
                Some("NetworkPolicy") => o.network_policies.push(Sourced {
                    origin,
                    object: serde_json::from_value(json).expect("np"),
                }),
                other => panic!("kind {other:?}"),
            }
        }
        o
    }
    use serde::Deserialize;

    const PODS: &str = "
kind: Namespace
apiVersion: v1
metadata: {name: prod, labels: {team: a}}
---
kind: Namespace
apiVersion: v1
metadata: {name: dev, labels: {team: b}}
---
kind: Pod
apiVersion: v1
metadata: {name: web, namespace: prod, labels: {app: web}}
spec: {containers: [{name: c, image: x, ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]}]}
status: {podIP: 10.244.0.10}
---
kind: Pod
apiVersion: v1
metadata: {name: db, namespace: prod, labels: {app: db}}
spec: {containers: [{name: c, image: x, ports: [{name: sql, containerPort: 5432}]}]}
status: {podIPs: [{ip: 10.244.0.11}]}
---
kind: Pod
apiVersion: v1
metadata: {name: tool, namespace: dev, labels: {app: web}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: 10.244.1.12}
---
kind: Pod
apiVersion: v1
metadata: {name: node-agent, namespace: prod, labels: {app: web}}
spec: {hostNetwork: true, containers: [{name: c, image: x}]}
status: {podIP: 192.168.0.2}
";

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect(s)
    }

    fn tcp(port: u16) -> PortRange {
        PortRange {
            protocol: 6,
            first: port,
            last: port,
        }
    }

    /// (policy YAML, pod, direction is ingress, peer, the ports the peer
    /// gets — None: not allowed at all).
    #[test]
    fn selectors_blocks_and_ports_as_upstream_defines_them() {
        type Case = (
            &'static str,
            &'static str,
            bool,
            &'static str,
            Option<Vec<PortRange>>,
        );
        let cases: [Case; 13] = [
            // Deny all ingress: selected, no rules.
            (
                "spec: {podSelector: {}}",
                "10.244.0.10",
                true,
                "10.244.0.11",
                None,
            ),
            // Same namespace by pod label, any port.
            (
                "spec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: {matchLabels: {app: db}}}]}]}",
                "10.244.0.10",
                true,
                "10.244.0.11",
                Some(vec![]),
            ),
            // A pod selector alone is the policy's namespace only.
            (
                "spec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]}",
                "10.244.0.10",
                true,
                "10.244.1.12",
                None,
            ),
            // Namespace selector: every pod there.
            (
                "spec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: b}}}]}]}",
                "10.244.0.10",
                true,
                "10.244.1.12",
                Some(vec![]),
            ),
            // Both: pods matching in namespaces matching.
            (
                "spec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}, podSelector: {matchLabels: {app: db}}}]}]}",
                "10.244.0.10",
                true,
                "10.244.1.12",
                None,
            ),
            // The namespace name label is always there.
            (
                "spec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: dev}}}]}]}",
                "10.244.0.10",
                true,
                "10.244.1.12",
                Some(vec![]),
            ),
            // ipBlock with an exception.
            (
                "spec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.1.0/24]}}]}]}",
                "10.244.0.10",
                true,
                "10.244.1.12",
                None,
            ),
            (
                "spec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{ipBlock: {cidr: 10.244.0.0/16, except: [10.244.1.0/24]}}]}]}",
                "10.244.0.10",
                true,
                "10.244.0.11",
                Some(vec![]),
            ),
            // Named ingress port: the selected pod's, with its protocol.
            (
                "spec: {podSelector: {matchLabels: {app: web}}, ingress: [{ports: [{port: http}, {port: dns, protocol: UDP}, {port: 9000, endPort: 9010}]}]}",
                "10.244.0.10",
                true,
                "1.2.3.4",
                Some(vec![
                    tcp(8080),
                    PortRange {
                        protocol: 6,
                        first: 9000,
                        last: 9010,
                    },
                    PortRange {
                        protocol: 17,
                        first: 53,
                        last: 53,
                    },
                ]),
            ),
            // Named egress port: each peer pod's own.
            (
                "spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{podSelector: {}}], ports: [{port: sql}]}]}",
                "10.244.0.10",
                false,
                "10.244.0.11",
                Some(vec![tcp(5432)]),
            ),
            // ...and a peer without that port gets nothing.
            (
                "spec: {podSelector: {matchLabels: {app: db}}, policyTypes: [Egress], egress: [{to: [{podSelector: {}}], ports: [{port: sql}]}]}",
                "10.244.0.11",
                false,
                "10.244.0.10",
                None,
            ),
            // Named egress port and no peers: every pod with that port.
            (
                "spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{ports: [{port: sql}]}]}",
                "10.244.0.10",
                false,
                "10.244.0.11",
                Some(vec![tcp(5432)]),
            ),
            // Egress without policyTypes: both directions isolated.
            (
                "spec: {podSelector: {matchLabels: {app: db}}, egress: [{}]}",
                "10.244.0.11",
                false,
                "8.8.8.8",
                Some(vec![]),
            ),
        ];
        for (i, (spec, pod, ingress, peer, want)) in cases.into_iter().enumerate() {
            let yaml = format!(
                "{PODS}---\nkind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {{name: p, namespace: prod}}\n{spec}\n"
            );
            let (state, errors) = compile(&objects(&yaml));
            assert!(errors.is_empty(), "case {i}: {errors:?}");
            let policy = &state.pods[&ip(pod)];
            let isolation = if ingress {
                &policy.ingress
            } else {
                &policy.egress
            };
            let isolation = isolation
                .as_ref()
                .unwrap_or_else(|| panic!("case {i}: not isolated"));
            assert_eq!(
                isolation.policies,
                ["prod/p".to_string()].into(),
                "case {i}"
            );
            let mut got = longest_match(&isolation.rules, ip(peer));
            if let Some(g) = got.as_mut() {
                g.sort();
            }
            let mut want = want;
            if let Some(w) = want.as_mut() {
                w.sort();
            }
            assert_eq!(got, want, "case {i}: {spec}");
        }
    }

    #[test]
    fn host_network_pods_and_other_namespaces_are_not_selected() {
        let yaml = format!(
            "{PODS}---\nkind: NetworkPolicy\napiVersion: networking.k8s.io/v1\nmetadata: {{name: deny, namespace: prod}}\nspec: {{podSelector: {{}}}}\n"
        );
        let (state, _) = compile(&objects(&yaml));
        let isolated: Vec<Ipv4Addr> = state.pods.keys().copied().collect();
        assert_eq!(isolated, [ip("10.244.0.10"), ip("10.244.0.11")]);
        assert!(
            state
                .pods
                .values()
                .all(|p| p.ingress.is_some() && p.egress.is_none())
        );
    }

    #[test]
    fn bad_fields_are_named_and_the_rest_applies() {
        let yaml = format!(
            "{PODS}---
kind: NetworkPolicy
apiVersion: networking.k8s.io/v1
metadata: {{name: bad, namespace: prod}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  policyTypes: [Ingress, Sideways]
  ingress:
  - from: [{{ipBlock: {{cidr: 10.0.0.0/33}}}}, {{podSelector: {{matchExpressions: [{{key: app, operator: Equals, values: [db]}}]}}}}]
  - ports: [{{port: 0}}, {{port: 80, protocol: ICMP}}, {{port: 443}}]
"
        );
        let (state, errors) = compile(&objects(&yaml));
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.policyTypes[1]",
                "spec.ingress[0].from[0].ipBlock.cidr",
                "spec.ingress[0].from[1].podSelector",
                "spec.ingress[1].ports[0].port",
                "spec.ingress[1].ports[1].protocol",
            ]
        );
        assert!(errors.iter().all(|e| e.object == "NetworkPolicy prod/bad"));
        // Still isolated, and what was usable still allows.
        let web = state.pods[&ip("10.244.0.10")]
            .ingress
            .as_ref()
            .expect("isolated");
        assert_eq!(
            longest_match(&web.rules, ip("1.1.1.1")),
            Some(vec![tcp(443)])
        );
    }
}

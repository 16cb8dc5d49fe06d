//! Classic `v1` Endpoints → EndpointSlices, for standalone mode, as
//! Kubernetes' EndpointSlice mirroring controller writes them
//! (`pkg/controller/endpointslicemirroring`, `pkg/api/v1/endpoints`). In
//! API-server mode that controller has already done this, so the agent only
//! watches slices.
//!
//! - Not mirrored (`shouldMirror`): Endpoints labelled
//!   `endpointslice.kubernetes.io/skip-mirror: "true"`, or carrying a
//!   leader-election record.
//! - The subsets are first put in canonical form (`RepackSubsets`): each port
//!   gets the addresses offering it, deduplicated by IP and target UID (an
//!   address ready for a port in one subset and not ready in another is not
//!   ready); ports with the same addresses make one subset.
//! - Each canonical subset becomes one IPv4 slice `<name>-mirror-<i>` (in
//!   port order), labelled `kubernetes.io/service-name: <name>` (the object's
//!   own labels and annotations are copied too), with the subset's ports,
//!   `addresses` as ready endpoints and `notReadyAddresses` as not ready
//!   ones, each with its `nodeName`. At most 1000 addresses per subset, ready
//!   ones first (`--mirroring-max-endpoints-per-subset`'s default); the rest
//!   are reported.
//! - IPv6 addresses go to IPv6 slices upstream; Switchyard serves IPv4 only,
//!   so they are left out, with a debug log.
//!
//! Upstream mirrors only for a Service without a selector, because the
//! EndpointSlice controller makes the slices of the others from Pods. A
//! manifest directory has no Pods: its Endpoints are mirrored whatever the
//! Service's selector.
//!
//! The API server refuses Endpoints with a bad IP or port; here such an entry
//! is reported by field (`subsets[0].addresses[2].ip`) and left out, and the
//! rest of the object is still mirrored.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as SubsetPort, EndpointSubset, Endpoints,
};
use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tracing::debug;

use super::ObjectError;
use super::kubernetes::TRIGGER_TIME_ANNOTATION;
use super::slice::{Endpoint, EndpointSlice};
use super::translate::SERVICE_NAME_LABEL;

/// `"true"` on an Endpoints object: its slices come from elsewhere.
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";
/// A leader-election lock, not a service's endpoints.
pub const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const MIRRORING_CONTROLLER: &str = "endpointslicemirroring-controller.k8s.io";
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// kube-controller-manager's default (and largest) addresses per subset.
pub const MAX_ENDPOINTS_PER_SUBSET: usize = 1000;

/// What one Endpoints object mirrors to.
#[derive(Debug, Default)]
pub struct Mirrored {
    pub slices: Vec<EndpointSlice>,
    pub errors: Vec<ObjectError>,
}

/// A subset's port, protocol defaulted to TCP as the API server does.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Port {
    name: String,
    port: i32,
    protocol: String,
    app_protocol: Option<String>,
}

impl Port {
    fn to_slice_port(&self) -> EndpointPort {
        EndpointPort {
            name: Some(self.name.clone()),
            port: Some(self.port),
            protocol: Some(self.protocol.clone()),
            app_protocol: self.app_protocol.clone(),
        }
    }
}

/// An address as the repack tells addresses apart: the IP as written and the
/// target's UID. The derived order is upstream's (`LessEndpointAddress`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct AddrKey {
    ip: String,
    uid: String,
}

/// What an endpoint keeps of an address: its first occurrence's.
struct Addr {
    ip: IpAddr,
    node_name: Option<String>,
}

/// Subsets on their way to canonical form (`RepackSubsets`).
#[derive(Default)]
struct Repack {
    addrs: BTreeMap<AddrKey, Addr>,
    /// Per port, the addresses offering it and whether each is ready.
    ports: BTreeMap<Port, BTreeMap<AddrKey, bool>>,
}

/// A canonical subset: ports with the same addresses.
struct Subset {
    ports: Vec<Port>,
    addrs: Vec<(AddrKey, bool)>,
}

impl Repack {
    fn add(&mut self, address: &EndpointAddress, ip: IpAddr, ports: &[Port], ready: bool) {
        let uid = address.target_ref.as_ref().and_then(|r| r.uid.clone());
        let key = AddrKey {
            ip: address.ip.clone(),
            uid: uid.unwrap_or_default(),
        };
        self.addrs.entry(key.clone()).or_insert_with(|| Addr {
            ip,
            node_name: address.node_name.clone(),
        });
        for port in ports {
            // Not ready trumps ready (upstream's mapAddressByPort).
            let addrs = self.ports.entry(port.clone()).or_default();
            addrs
                .entry(key.clone())
                .and_modify(|r| *r &= ready)
                .or_insert(ready);
        }
    }

    /// The canonical subsets, in port order so that slice names stay put
    /// while addresses come and go.
    fn subsets(&self) -> Vec<Subset> {
        let mut by_addrs: BTreeMap<Vec<(AddrKey, bool)>, Vec<Port>> = BTreeMap::new();
        for (port, addrs) in &self.ports {
            let key = addrs.iter().map(|(a, r)| (a.clone(), *r)).collect();
            by_addrs.entry(key).or_default().push(port.clone());
        }
        let mut subsets: Vec<Subset> = by_addrs
            .into_iter()
            .map(|(addrs, ports)| Subset { ports, addrs })
            .collect();
        subsets.sort_by(|a, b| a.ports.cmp(&b.ports));
        subsets
    }
}

/// One object's mirroring, with its errors.
struct Mirror<'a> {
    origin: &'a str,
    /// `Endpoints namespace/name`.
    object: String,
    errors: Vec<ObjectError>,
    ipv6_skipped: usize,
}

/// The slices the mirroring controller would write for `endpoints`, and the
/// problems that left parts of it out.
pub fn mirror(origin: &str, endpoints: &Endpoints) -> Mirrored {
    let meta = &endpoints.metadata;
    let namespace = meta.namespace.as_deref().unwrap_or("default");
    let name = meta.name.as_deref().filter(|n| !n.is_empty());
    let mut m = Mirror {
        origin,
        object: format!("Endpoints {namespace}/{}", name.unwrap_or("?")),
        errors: Vec::new(),
        ipv6_skipped: 0,
    };
    let Some(name) = name else {
        // Nameless, it names no Service to join.
        m.error("metadata.name", "missing");
        return m.finish(Vec::new());
    };
    if let Some(why) = not_mirrored(meta) {
        debug!(%origin, object = %m.object, "not mirrored: {why}");
        return m.finish(Vec::new());
    }
    let mut repack = Repack::default();
    for (i, subset) in endpoints.subsets.iter().flatten().enumerate() {
        m.add_subset(&mut repack, i, subset);
    }
    let subsets = repack.subsets();
    let slices = subsets
        .iter()
        .enumerate()
        .filter_map(|(i, s)| m.slice(meta, name, i, s, &repack.addrs))
        .collect();
    m.finish(slices)
}

/// Why upstream's `shouldMirror` leaves the object alone, if it does.
fn not_mirrored(meta: &ObjectMeta) -> Option<&'static str> {
    let labels = meta.labels.as_ref();
    if labels
        .and_then(|l| l.get(SKIP_MIRROR_LABEL))
        .is_some_and(|v| v == "true")
    {
        return Some("labelled endpointslice.kubernetes.io/skip-mirror: \"true\"");
    }
    let annotations = meta.annotations.as_ref();
    if annotations.is_some_and(|a| a.contains_key(LEADER_ANNOTATION)) {
        return Some("a leader-election record");
    }
    None
}

impl Mirror<'_> {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        let error = ObjectError::new(self.origin, &self.object, field, message);
        self.errors.push(error);
    }

    fn finish(self, slices: Vec<EndpointSlice>) -> Mirrored {
        if self.ipv6_skipped > 0 {
            let (origin, object) = (self.origin, &self.object);
            let n = self.ipv6_skipped;
            debug!(%origin, %object, "{n} IPv6 address(es) not mirrored: IPv4 only");
        }
        Mirrored {
            slices,
            errors: self.errors,
        }
    }

    /// `subsets[i]` into the repack: its valid ports, then its valid ready
    /// and not-ready addresses.
    fn add_subset(&mut self, repack: &mut Repack, i: usize, subset: &EndpointSubset) {
        let ports: Vec<Port> = subset
            .ports
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(j, p)| self.port(&format!("subsets[{i}].ports[{j}]"), p))
            .collect();
        let lists = [
            ("addresses", &subset.addresses, true),
            ("notReadyAddresses", &subset.not_ready_addresses, false),
        ];
        for (list, addresses, ready) in lists {
            for (k, address) in addresses.iter().flatten().enumerate() {
                let field = format!("subsets[{i}].{list}[{k}].ip");
                if let Some(ip) = self.address_ip(&field, &address.ip) {
                    repack.add(address, ip, &ports, ready);
                }
            }
        }
    }

    /// A port at `field` as the API server accepts it (`validateEndpointPort`),
    /// or `None`, reported.
    fn port(&mut self, field: &str, p: &SubsetPort) -> Option<Port> {
        let protocol = p.protocol.as_deref().filter(|p| !p.is_empty());
        let protocol = protocol.unwrap_or("TCP").to_string();
        if !["TCP", "UDP", "SCTP"].contains(&protocol.as_str()) {
            self.error(
                format!("{field}.protocol"),
                format!("unknown protocol {protocol:?}"),
            );
            return None;
        }
        if !(1..=65535).contains(&p.port) {
            self.error(
                format!("{field}.port"),
                format!("{} is not in 1..=65535", p.port),
            );
            return None;
        }
        Some(Port {
            name: p.name.clone().unwrap_or_default(),
            port: p.port,
            protocol,
            app_protocol: p.app_protocol.clone(),
        })
    }

    /// An address's IP as the API server accepts it (`ValidateEndpointIP`),
    /// or `None`, reported.
    fn address_ip(&mut self, field: &str, text: &str) -> Option<IpAddr> {
        let Some(ip) = parse_ip_sloppy(text) else {
            self.error(field, format!("{text:?} is not an IP address"));
            return None;
        };
        if let IpAddr::V4(v4) = ip
            && let Some(why) = refused(v4)
        {
            self.error(field, format!("{text} is {why}"));
            return None;
        }
        Some(ip)
    }

    /// The IPv4 slice of canonical subset `index`; `None` when it has no
    /// IPv4 address (upstream writes no slice for an empty set).
    fn slice(
        &mut self,
        meta: &ObjectMeta,
        name: &str,
        index: usize,
        subset: &Subset,
        addrs: &BTreeMap<AddrKey, Addr>,
    ) -> Option<EndpointSlice> {
        let mut endpoints = Vec::new();
        for (key, ready) in self.capped(subset) {
            let Some(addr) = addrs.get(key) else { continue };
            match addr.ip {
                IpAddr::V4(ip) => endpoints.push(endpoint(ip, ready, addr.node_name.clone())),
                IpAddr::V6(_) => self.ipv6_skipped += 1,
            }
        }
        if endpoints.is_empty() {
            return None;
        }
        Some(EndpointSlice {
            metadata: slice_meta(meta, name, index),
            address_type: "IPv4".into(),
            endpoints,
            ports: Some(subset.ports.iter().map(Port::to_slice_port).collect()),
        })
    }

    /// The subset's addresses the controller mirrors: ready ones first, then
    /// not-ready ones, at most [`MAX_ENDPOINTS_PER_SUBSET`] (IPv6 counted,
    /// as upstream counts both families); the rest is reported.
    fn capped<'s>(&mut self, subset: &'s Subset) -> Vec<(&'s AddrKey, bool)> {
        let ready = subset.addrs.iter().filter(|(_, r)| *r);
        let not_ready = subset.addrs.iter().filter(|(_, r)| !*r);
        let mut all: Vec<_> = ready.chain(not_ready).map(|(a, r)| (a, *r)).collect();
        if all.len() > MAX_ENDPOINTS_PER_SUBSET {
            let ports: Vec<String> = subset.ports.iter().map(describe_port).collect();
            let over = all.len() - MAX_ENDPOINTS_PER_SUBSET;
            let message = format!(
                "{over} addresses for ports [{}] not mirrored: at most {MAX_ENDPOINTS_PER_SUBSET} per subset",
                ports.join(", ")
            );
            self.error("subsets", message);
            all.truncate(MAX_ENDPOINTS_PER_SUBSET);
        }
        all
    }
}

/// `http 8080/TCP`, for messages.
fn describe_port(p: &Port) -> String {
    format!("{} {}/{}", p.name, p.port, p.protocol)
        .trim()
        .to_string()
}

/// A mirrored endpoint. Upstream sets only `ready`; slice readers take an
/// unset `serving` as `ready` and an unset `terminating` as false, which is
/// written out here.
fn endpoint(ip: Ipv4Addr, ready: bool, node_name: Option<String>) -> Endpoint {
    Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(ready),
            terminating: Some(false),
        }),
        node_name,
        hints: None,
    }
}

/// The slice's metadata (upstream's `newEndpointSlice`): the object's labels
/// and annotations, the service-name and managed-by labels; a fixed name
/// where upstream lets the API server generate one.
fn slice_meta(meta: &ObjectMeta, name: &str, index: usize) -> ObjectMeta {
    let mut labels = meta.labels.clone().unwrap_or_default();
    labels.insert(SERVICE_NAME_LABEL.into(), name.into());
    labels.insert(MANAGED_BY_LABEL.into(), MIRRORING_CONTROLLER.into());
    let mut annotations = meta.annotations.clone().unwrap_or_default();
    annotations.remove(TRIGGER_TIME_ANNOTATION);
    annotations.remove(LAST_APPLIED_ANNOTATION);
    ObjectMeta {
        name: Some(format!("{name}-mirror-{index}")),
        namespace: meta.namespace.clone(),
        labels: Some(labels),
        annotations: (!annotations.is_empty()).then_some(annotations),
        ..ObjectMeta::default()
    }
}

/// Kubernetes' `ParseIPSloppy`: IPv4 octets may have leading zeros (read as
/// decimal, as Endpoints have always allowed), and an IPv4-mapped IPv6
/// address is IPv4.
fn parse_ip_sloppy(text: &str) -> Option<IpAddr> {
    if text.contains(':') {
        let v6: Ipv6Addr = text.parse().ok()?;
        return Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4));
    }
    let octets: Vec<u8> = text.split('.').map(sloppy_octet).collect::<Option<_>>()?;
    let [a, b, c, d] = octets[..] else {
        return None;
    };
    Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
}

fn sloppy_octet(text: &str) -> Option<u8> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    match text.trim_start_matches('0') {
        "" => Some(0),
        digits => digits.parse().ok(),
    }
}

/// Why the API server refuses an IPv4 endpoint address (`ValidateEndpointIP`).
fn refused(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if ip.octets()[..3] == [224, 0, 0] {
        Some("a link-local multicast address")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(yaml: &str) -> Endpoints {
        let value: serde_json::Value = serde_yaml::from_str(yaml).expect("yaml");
        serde_json::from_value(value).expect("endpoints")
    }

    /// `(address, ready, serving, terminating, node)` of each endpoint.
    fn rows(slice: &EndpointSlice) -> Vec<(String, bool, bool, bool, Option<String>)> {
        let cond = |c: Option<bool>| c.unwrap_or(false);
        slice
            .endpoints
            .iter()
            .map(|e| {
                let c = e.conditions.clone().unwrap_or_default();
                let (ready, serving) = (cond(c.ready), cond(c.serving));
                let address = e.addresses.join(",");
                (
                    address,
                    ready,
                    serving,
                    cond(c.terminating),
                    e.node_name.clone(),
                )
            })
            .collect()
    }

    /// `name port/protocol` of each slice port.
    fn ports(slice: &EndpointSlice) -> Vec<String> {
        slice
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let name = p.name.as_deref().unwrap_or("");
                let (port, protocol) = (p.port.unwrap_or(0), p.protocol.as_deref().unwrap_or(""));
                format!("{name} {port}/{protocol}")
            })
            .collect()
    }

    #[test]
    fn ready_and_not_ready_addresses() {
        let m = mirror(
            "web.yaml (document 2)",
            &endpoints(
                r#"
metadata: {name: web, namespace: shop, labels: {app: web}}
subsets:
- addresses: [{ip: 10.244.0.2, nodeName: n2}, {ip: 10.244.0.1, nodeName: n1}]
  notReadyAddresses: [{ip: 10.244.0.3}]
  ports: [{port: 8080}]
"#,
            ),
        );
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        let [slice] = &m.slices[..] else {
            panic!("{:?}", m.slices)
        };
        assert_eq!(slice.metadata.name.as_deref(), Some("web-mirror-0"));
        assert_eq!(slice.metadata.namespace.as_deref(), Some("shop"));
        let labels = slice.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(SERVICE_NAME_LABEL).map(String::as_str),
            Some("web")
        );
        assert_eq!(labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(slice.address_type, "IPv4");
        let node = |n: &str| Some(n.to_string());
        assert_eq!(
            rows(slice),
            [
                ("10.244.0.1".into(), true, true, false, node("n1")),
                ("10.244.0.2".into(), true, true, false, node("n2")),
                ("10.244.0.3".into(), false, false, false, None),
            ]
        );
        assert_eq!(ports(slice), [" 8080/TCP"]);
    }

    #[test]
    fn named_ports_and_several_subsets() {
        let m = mirror(
            "t",
            &endpoints(
                r#"
metadata: {name: db}
subsets:
- addresses: [{ip: 10.0.0.1}]
  ports: [{name: sql, port: 5432}, {name: metrics, port: 9187, protocol: TCP, appProtocol: http}]
- addresses: [{ip: 10.0.0.2}]
  notReadyAddresses: [{ip: 10.0.0.3}]
  ports: [{name: dns, port: 53, protocol: UDP}]
"#,
            ),
        );
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        let names: Vec<_> = m.slices.iter().map(|s| s.metadata.name.clone()).collect();
        assert_eq!(
            names,
            [Some("db-mirror-0".into()), Some("db-mirror-1".into())]
        );
        assert_eq!(m.slices[0].metadata.namespace, None);
        assert_eq!(ports(&m.slices[0]), ["dns 53/UDP"]);
        assert_eq!(rows(&m.slices[0]).len(), 2);
        assert_eq!(ports(&m.slices[1]), ["metrics 9187/TCP", "sql 5432/TCP"]);
        let metrics = m.slices[1].ports.iter().flatten().next();
        assert_eq!(
            metrics.and_then(|p| p.app_protocol.as_deref()),
            Some("http")
        );
        assert_eq!(rows(&m.slices[1])[0].0, "10.0.0.1");
    }

    /// `RepackSubsets`: one port's addresses gathered across subsets, an
    /// address both ready and not ready is not ready, and ports with the same
    /// addresses share a slice.
    #[test]
    fn subsets_are_repacked_as_upstream() {
        let m = mirror(
            "t",
            &endpoints(
                r#"
metadata: {name: web}
subsets:
- addresses: [{ip: 10.0.0.1}, {ip: 10.0.0.2}]
  ports: [{name: http, port: 80}, {name: admin, port: 81}]
- notReadyAddresses: [{ip: 10.0.0.2}]
  ports: [{name: admin, port: 81}, {name: http, port: 80}]
"#,
            ),
        );
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        let [slice] = &m.slices[..] else {
            panic!("{:?}", m.slices)
        };
        assert_eq!(ports(slice), ["admin 81/TCP", "http 80/TCP"]);
        let ready: Vec<_> = rows(slice).into_iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(
            ready,
            [("10.0.0.1".into(), true), ("10.0.0.2".into(), false)]
        );
    }

    #[test]
    fn skip_mirror_label_and_leader_records_are_not_mirrored() {
        let subsets = "subsets: [{addresses: [{ip: 10.0.0.1}], ports: [{port: 80}]}]";
        let skip = format!(
            "metadata: {{name: a, labels: {{endpointslice.kubernetes.io/skip-mirror: \"true\"}}}}\n{subsets}"
        );
        let leader = format!(
            "metadata: {{name: b, annotations: {{control-plane.alpha.kubernetes.io/leader: x}}}}\n{subsets}"
        );
        let other = format!(
            "metadata: {{name: c, labels: {{endpointslice.kubernetes.io/skip-mirror: \"false\"}}}}\n{subsets}"
        );
        for (yaml, slices) in [(skip, 0), (leader, 0), (other, 1)] {
            let m = mirror("t", &endpoints(&yaml));
            assert!(m.errors.is_empty(), "{:?}", m.errors);
            assert_eq!(m.slices.len(), slices, "{yaml}");
        }
    }

    #[test]
    fn bad_entries_are_reported_by_field_and_the_rest_mirrored() {
        let m = mirror(
            "bad.yaml (document 1)",
            &endpoints(
                r#"
metadata: {name: web, namespace: x}
subsets:
- addresses: [{ip: 10.0.0.1}, {ip: 10.0.0.2}, {ip: 10.0.0.300}, {ip: 127.0.0.1}]
  notReadyAddresses: [{ip: nope}]
  ports: [{name: http, port: 8080}, {name: big, port: 70000}, {name: icmp, port: 1, protocol: ICMP}]
"#,
            ),
        );
        let lines: Vec<String> = m.errors.iter().map(ToString::to_string).collect();
        let prefix = "bad.yaml (document 1): Endpoints x/web: subsets[0].";
        assert_eq!(
            lines,
            [
                format!("{prefix}ports[1].port: 70000 is not in 1..=65535"),
                format!("{prefix}ports[2].protocol: unknown protocol \"ICMP\""),
                format!("{prefix}addresses[2].ip: \"10.0.0.300\" is not an IP address"),
                format!("{prefix}addresses[3].ip: 127.0.0.1 is a loopback address"),
                format!("{prefix}notReadyAddresses[0].ip: \"nope\" is not an IP address"),
            ]
        );
        let [slice] = &m.slices[..] else {
            panic!("{:?}", m.slices)
        };
        assert_eq!(ports(slice), ["http 8080/TCP"]);
        let addresses: Vec<_> = rows(slice).into_iter().map(|r| r.0).collect();
        assert_eq!(addresses, ["10.0.0.1", "10.0.0.2"]);
    }

    #[test]
    fn ipv6_is_left_out_and_sloppy_ipv4_normalised() {
        let m = mirror(
            "t",
            &endpoints(
                r#"
metadata: {name: web}
subsets:
- addresses: [{ip: "fd00::1"}, {ip: "::ffff:10.0.0.5"}, {ip: 010.000.000.006}]
  ports: [{port: 80}]
- addresses: [{ip: "fd00::2"}]
  ports: [{port: 81}]
"#,
            ),
        );
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        let [slice] = &m.slices[..] else {
            panic!("an IPv6-only subset makes no slice: {:?}", m.slices)
        };
        let addresses: Vec<_> = rows(slice).into_iter().map(|r| r.0).collect();
        assert_eq!(addresses, ["10.0.0.6", "10.0.0.5"]);
    }

    #[test]
    fn at_most_a_thousand_addresses_per_subset_ready_first() {
        let ready: Vec<String> = (0..1000)
            .map(|i| format!("{{ip: 10.1.{}.{}}}", i / 250, 1 + i % 250))
            .collect();
        let yaml = format!(
            "metadata: {{name: big}}\nsubsets: [{{addresses: [{}], notReadyAddresses: [{{ip: 10.0.0.1}}], ports: [{{port: 80}}]}}]",
            ready.join(", ")
        );
        let m = mirror("t", &endpoints(&yaml));
        assert_eq!(m.errors.len(), 1, "{:?}", m.errors);
        assert_eq!(m.errors[0].field, "subsets");
        assert_eq!(m.slices[0].endpoints.len(), MAX_ENDPOINTS_PER_SUBSET);
        assert!(
            rows(&m.slices[0]).iter().all(|r| r.1),
            "the not-ready one is cut"
        );
    }

    #[test]
    fn a_nameless_object_is_reported() {
        let m = mirror("t", &endpoints("metadata: {namespace: x}\nsubsets: []"));
        assert_eq!(
            m.errors[0].to_string(),
            "t: Endpoints x/?: metadata.name: missing"
        );
        assert!(m.slices.is_empty());
    }
}

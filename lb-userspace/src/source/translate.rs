//! Services + EndpointSlices → desired state, as kube-proxy reads them.
//!
//! - Programmed: ClusterIP, NodePort and LoadBalancer services with an IPv4
//!   cluster IP: their ClusterIP, node-port, load-balancer-IP and external-IP
//!   frontends. Not programmed, by design: headless services, ExternalName,
//!   services another proxy owns (`service.kubernetes.io/service-proxy-name`)
//!   or labelled headless (`service.kubernetes.io/headless`).
//! - A service port's endpoints come from the slices labelled
//!   `kubernetes.io/service-name` in its namespace, through the slice port of
//!   the same name and protocol (so named target ports resolve per slice).
//! - Conditions: `ready` unset means ready; `serving` unset means `ready`;
//!   `terminating` unset means not terminating.
//!
//! Bad fields are reported per object and field; the rest still applies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::source::slice::EndpointSlice;
use k8s_openapi::api::core::v1::Service;
use tracing::debug;

use super::{ClusterObjects, ObjectError, Sourced};
use crate::model::{
    BackendAddr, DesiredState, Endpoint, ExternalAccess, Frontend, Protocol, ServicePort,
    ServicePortName, ServiceType, TopologyHints,
};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Marks a Service no proxy should program, whatever its ClusterIP.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

#[derive(Debug, Default)]
pub struct Translation {
    pub desired: DesiredState,
    pub errors: Vec<ObjectError>,
    /// Services deliberately not programmed, and why.
    pub skipped: Vec<String>,
}

fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.namespace
        .clone()
        .unwrap_or_else(|| "default".to_string())
}

fn parse_protocol(p: Option<&str>) -> Result<Protocol, String> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Err("SCTP is not supported".into()),
        other => Err(format!("unknown protocol {other:?}")),
    }
}

/// Why an address cannot be a service or endpoint address (the API server
/// refuses these too; a source that does not validate may still send them).
fn unusable(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_broadcast() {
        Some("the broadcast address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else {
        None
    }
}

fn valid_port(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// A service port before endpoints are attached.
struct PortFrontend {
    port_name: String,
    frontend: Frontend,
    node_port: Option<u16>,
}

struct ServiceFrontends {
    namespace: String,
    name: String,
    service_type: ServiceType,
    affinity: Option<Duration>,
    internal_traffic_local: bool,
    /// Everything but the per-port node port.
    external: ExternalAccess,
    ports: Vec<PortFrontend>,
}

/// kube-proxy's default and maximum ClientIP affinity timeouts.
pub const DEFAULT_AFFINITY_TIMEOUT_S: i32 = 10_800;
pub const MAX_AFFINITY_TIMEOUT_S: i32 = 86_400;

struct Translator {
    errors: Vec<ObjectError>,
    skipped: Vec<String>,
}

impl Translator {
    fn error(
        &mut self,
        origin: &str,
        object: &str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.errors.push(ObjectError {
            origin: origin.to_string(),
            object: object.to_string(),
            field: field.into(),
            message: message.into(),
        });
    }

    fn service(&mut self, sourced: &Sourced<Service>) -> Option<ServiceFrontends> {
        let svc = &sourced.object;
        let origin = &sourced.origin;
        let namespace = namespace_of(&svc.metadata);
        let Some(name) = svc.metadata.name.clone().filter(|n| !n.is_empty()) else {
            self.error(
                origin,
                &format!("Service {namespace}/?"),
                "metadata.name",
                "missing",
            );
            return None;
        };
        let object = format!("Service {namespace}/{name}");
        if let Some(labels) = &svc.metadata.labels
            && let Some(proxy) = labels.get(SERVICE_PROXY_NAME_LABEL)
        {
            self.skipped.push(format!(
                "{object}: handled by proxy {proxy:?} ({SERVICE_PROXY_NAME_LABEL})"
            ));
            return None;
        }
        if svc
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(HEADLESS_LABEL))
        {
            self.skipped
                .push(format!("{object}: labelled {HEADLESS_LABEL}, not proxied"));
            return None;
        }
        let Some(spec) = &svc.spec else {
            self.error(origin, &object, "spec", "missing");
            return None;
        };
        let service_type = match spec.type_.as_deref().unwrap_or("ClusterIP") {
            "ClusterIP" => ServiceType::ClusterIP,
            "NodePort" => ServiceType::NodePort,
            "LoadBalancer" => ServiceType::LoadBalancer,
            "ExternalName" => {
                self.skipped.push(format!(
                    "{object}: ExternalName services are answered by DNS, not proxied"
                ));
                return None;
            }
            other => {
                self.error(
                    origin,
                    &object,
                    "spec.type",
                    format!("unknown service type {other:?}"),
                );
                return None;
            }
        };
        // clusterIPs (dual-stack) wins over clusterIP when set; take IPv4.
        let (field, candidates): (&str, Vec<String>) = match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => ("spec.clusterIPs", ips.clone()),
            _ => (
                "spec.clusterIP",
                spec.cluster_ip.clone().into_iter().collect(),
            ),
        };
        if candidates.is_empty() || candidates.iter().all(|ip| ip.is_empty()) {
            self.skipped
                .push(format!("{object}: no cluster IP allocated"));
            return None;
        }
        if candidates.iter().any(|ip| ip == "None") {
            self.skipped
                .push(format!("{object}: headless (clusterIP: None)"));
            return None;
        }
        let mut vip = None;
        for (i, ip) in candidates.iter().enumerate() {
            let at = if field == "spec.clusterIPs" {
                format!("{field}[{i}]")
            } else {
                field.to_string()
            };
            match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) if vip.is_none() => {
                    if let Some(why) = unusable(v4) {
                        self.error(origin, &object, at, format!("{ip} is {why}"));
                        return None;
                    }
                    vip = Some(v4);
                }
                Ok(IpAddr::V4(_)) => {}
                Ok(IpAddr::V6(_)) => self
                    .skipped
                    .push(format!("{object}: {at} {ip} is IPv6, not supported yet")),
                Err(_) => {
                    self.error(origin, &object, at, format!("{ip:?} is not an IP address"));
                    return None;
                }
            }
        }
        let vip: Ipv4Addr = vip?;

        let mut ports = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, sp) in spec.ports.iter().flatten().enumerate() {
            let protocol = match parse_protocol(sp.protocol.as_deref()) {
                Ok(p) => p,
                Err(m) => {
                    self.error(origin, &object, format!("spec.ports[{i}].protocol"), m);
                    continue;
                }
            };
            let Some(port) = valid_port(sp.port) else {
                self.error(
                    origin,
                    &object,
                    format!("spec.ports[{i}].port"),
                    format!("{} is not in 1..=65535", sp.port),
                );
                continue;
            };
            if !seen.insert((port, protocol)) {
                self.error(
                    origin,
                    &object,
                    format!("spec.ports[{i}]"),
                    format!("duplicate port {port}/{protocol}"),
                );
                continue;
            }
            let node_port = match (service_type, sp.node_port) {
                (ServiceType::ClusterIP, _) | (_, None) => None,
                (_, Some(np)) => match valid_port(np) {
                    Some(np) => Some(np),
                    None => {
                        self.error(
                            origin,
                            &object,
                            format!("spec.ports[{i}].nodePort"),
                            format!("{np} is not in 1..=65535"),
                        );
                        None
                    }
                },
            };
            ports.push(PortFrontend {
                node_port,
                port_name: sp.name.clone().unwrap_or_default(),
                frontend: Frontend::new(vip, port, protocol),
            });
        }
        if ports.is_empty() && spec.ports.as_ref().is_none_or(|p| p.is_empty()) {
            self.skipped.push(format!("{object}: no ports"));
        }
        let affinity = self.affinity(origin, &object, spec);
        let internal_traffic_local = match spec.internal_traffic_policy.as_deref() {
            None | Some("Cluster") => false,
            Some("Local") => true,
            Some(other) => {
                self.error(
                    origin,
                    &object,
                    "spec.internalTrafficPolicy",
                    format!("unknown value {other:?}; using Cluster"),
                );
                false
            }
        };
        let external = self.external_access(origin, &object, svc, service_type);
        Some(ServiceFrontends {
            namespace,
            name,
            service_type,
            affinity,
            internal_traffic_local,
            external,
            ports,
        })
    }

    /// LB ingress IPs, external IPs and the external policies. Bad entries are
    /// reported and left out; the rest of the service is still served.
    fn external_access(
        &mut self,
        origin: &str,
        object: &str,
        svc: &Service,
        service_type: ServiceType,
    ) -> ExternalAccess {
        let Some(spec) = &svc.spec else {
            return ExternalAccess::default();
        };
        let mut access = ExternalAccess::default();
        let ipv4 = |this: &mut Self, field: String, text: &str| -> Option<Ipv4Addr> {
            match text.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => match unusable(ip) {
                    None => Some(ip),
                    Some(why) => {
                        this.error(origin, object, field, format!("{text} is {why}"));
                        None
                    }
                },
                Ok(IpAddr::V6(_)) => {
                    this.skipped.push(format!(
                        "{object}: {field} {text} is IPv6, not supported yet"
                    ));
                    None
                }
                Err(_) => {
                    this.error(
                        origin,
                        object,
                        field,
                        format!("{text:?} is not an IP address"),
                    );
                    None
                }
            }
        };
        if service_type == ServiceType::LoadBalancer {
            let ingress = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref());
            for (i, entry) in ingress.into_iter().flatten().enumerate() {
                // ipMode Proxy: the load balancer terminates or rewrites the
                // traffic (TLS, PROXY protocol); in-cluster clients must go
                // through it, so the IP is not ours to translate (kube-proxy
                // ≥ 1.32 leaves it alone too).
                if entry.ip_mode.as_deref() == Some("Proxy") {
                    continue;
                }
                if let Some(ip) = entry.ip.as_deref() {
                    access.load_balancer_ips.extend(ipv4(
                        self,
                        format!("status.loadBalancer.ingress[{i}].ip"),
                        ip,
                    ));
                }
            }
            for (i, range) in spec
                .load_balancer_source_ranges
                .iter()
                .flatten()
                .enumerate()
            {
                let field = format!("spec.loadBalancerSourceRanges[{i}]");
                match parse_cidr(range) {
                    Some(cidr) => access.source_ranges.push(cidr),
                    None => self.error(
                        origin,
                        object,
                        field,
                        format!("{range:?} is not an IPv4 CIDR"),
                    ),
                }
            }
            // A load balancer that hairpins sends with its own VIP as the
            // source: admitted like kube-proxy does.
            if !access.source_ranges.is_empty() {
                let own: Vec<(Ipv4Addr, u8)> = access
                    .load_balancer_ips
                    .iter()
                    .map(|ip| (*ip, 32))
                    .collect();
                access.source_ranges.extend(own);
            }
        }
        for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
            access
                .external_ips
                .extend(ipv4(self, format!("spec.externalIPs[{i}]"), ip));
        }
        access.traffic_local = match spec.external_traffic_policy.as_deref() {
            None | Some("Cluster") => false,
            Some("Local") => true,
            Some(other) => {
                self.error(
                    origin,
                    object,
                    "spec.externalTrafficPolicy",
                    format!("unknown value {other:?}; using Cluster"),
                );
                false
            }
        };
        if access.traffic_local
            && service_type == ServiceType::LoadBalancer
            && let Some(port) = spec.health_check_node_port
        {
            match valid_port(port) {
                Some(p) => access.health_check_node_port = Some(p),
                None => self.error(
                    origin,
                    object,
                    "spec.healthCheckNodePort",
                    format!("{port} is not in 1..=65535"),
                ),
            }
        }
        access
    }

    /// `sessionAffinity`; a bad value is reported and the service is served
    /// without affinity rather than not at all.
    fn affinity(
        &mut self,
        origin: &str,
        object: &str,
        spec: &k8s_openapi::api::core::v1::ServiceSpec,
    ) -> Option<Duration> {
        match spec.session_affinity.as_deref().unwrap_or("None") {
            "None" => None,
            "ClientIP" => {
                let configured = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds);
                let seconds = match configured {
                    None => DEFAULT_AFFINITY_TIMEOUT_S,
                    Some(t) if (1..=MAX_AFFINITY_TIMEOUT_S).contains(&t) => t,
                    Some(t) => {
                        self.error(
                            origin,
                            object,
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                            format!("{t} is not in 1..={MAX_AFFINITY_TIMEOUT_S}; using {DEFAULT_AFFINITY_TIMEOUT_S}"),
                        );
                        DEFAULT_AFFINITY_TIMEOUT_S
                    }
                };
                Some(Duration::from_secs(seconds as u64))
            }
            other => {
                self.error(
                    origin,
                    object,
                    "spec.sessionAffinity",
                    format!("unknown value {other:?}; served without affinity"),
                );
                None
            }
        }
    }

    /// Endpoints of one slice for the service port `(port_name, protocol)`.
    fn slice_endpoints(
        &mut self,
        sourced: &Sourced<EndpointSlice>,
        port_name: &str,
        protocol: Protocol,
        out: &mut BTreeMap<BackendAddr, Endpoint>,
    ) {
        let slice = &sourced.object;
        let object = format!(
            "EndpointSlice {}/{}",
            namespace_of(&slice.metadata),
            slice.metadata.name.as_deref().unwrap_or("?")
        );
        let matching = slice.ports.iter().flatten().enumerate().find(|(_, p)| {
            p.name.as_deref().unwrap_or("") == port_name
                && parse_protocol(p.protocol.as_deref()).is_ok_and(|pr| pr == protocol)
        });
        let Some((j, slice_port)) = matching else {
            return;
        };
        let Some(raw_port) = slice_port.port else {
            return;
        };
        let Some(port) = valid_port(raw_port) else {
            self.error(
                &sourced.origin,
                &object,
                format!("ports[{j}].port"),
                format!("{raw_port} is not in 1..=65535"),
            );
            return;
        };
        for (k, ep) in slice.endpoints.iter().enumerate() {
            let Some(address) = ep.addresses.first() else {
                self.error(
                    &sourced.origin,
                    &object,
                    format!("endpoints[{k}].addresses"),
                    "empty",
                );
                continue;
            };
            let Ok(ip) = address.parse::<Ipv4Addr>() else {
                self.error(
                    &sourced.origin,
                    &object,
                    format!("endpoints[{k}].addresses[0]"),
                    format!("{address:?} is not an IPv4 address"),
                );
                continue;
            };
            if let Some(why) = unusable(ip) {
                self.error(
                    &sourced.origin,
                    &object,
                    format!("endpoints[{k}].addresses[0]"),
                    format!("{ip} is {why}"),
                );
                continue;
            }
            let conditions = ep.conditions.clone().unwrap_or_default();
            let ready = conditions.ready.unwrap_or(true);
            let endpoint = Endpoint {
                addr: BackendAddr { ip, port, protocol },
                ready,
                serving: conditions.serving.unwrap_or(ready),
                terminating: conditions.terminating.unwrap_or(false),
                node: ep.node_name.clone(),
                hints: ep.hints.as_ref().map(|h| {
                    Box::new(TopologyHints {
                        zones: h.for_zones.iter().map(|z| z.name.clone()).collect(),
                        nodes: h.for_nodes.iter().map(|n| n.name.clone()).collect(),
                    })
                }),
            };
            // The same endpoint in two slices (e.g. during a slice
            // rebalance): one entry, the more ready one.
            match out.get(&endpoint.addr) {
                Some(existing) if existing.ready || !endpoint.ready => {}
                _ => {
                    out.insert(endpoint.addr, endpoint);
                }
            }
        }
    }
}

/// `a.b.c.d/len` (a bare address is a /32).
fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = text.trim().split_once('/').unwrap_or((text.trim(), "32"));
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((ip, len))
}

pub fn translate(objects: &ClusterObjects) -> Translation {
    let mut t = Translator {
        errors: Vec::new(),
        skipped: Vec::new(),
    };

    // Deterministic whatever the input order: services by namespace/name.
    let mut services: Vec<&Sourced<Service>> = objects.services.iter().collect();
    services.sort_by_key(|s| {
        (
            namespace_of(&s.object.metadata),
            s.object.metadata.name.clone(),
            s.origin.clone(),
        )
    });
    let mut slices: BTreeMap<(String, String), Vec<&Sourced<EndpointSlice>>> = BTreeMap::new();
    for s in &objects.slices {
        let object = format!(
            "EndpointSlice {}/{}",
            namespace_of(&s.object.metadata),
            s.object.metadata.name.as_deref().unwrap_or("?")
        );
        if s.object.address_type != "IPv4" {
            t.skipped.push(format!(
                "{object}: addressType {} is not supported",
                s.object.address_type
            ));
            continue;
        }
        let Some(service) = s
            .object
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            debug!("{object}: no {SERVICE_NAME_LABEL} label, ignored");
            continue;
        };
        slices
            .entry((namespace_of(&s.object.metadata), service.clone()))
            .or_default()
            .push(s);
    }
    for list in slices.values_mut() {
        list.sort_by_key(|s| (s.object.metadata.name.clone(), s.origin.clone()));
    }

    let mut desired = DesiredState::default();
    let mut owners: BTreeMap<Frontend, String> = BTreeMap::new();
    let mut known = BTreeSet::new();
    for sourced in services {
        let Some(svc) = t.service(sourced) else {
            continue;
        };
        known.insert((svc.namespace.clone(), svc.name.clone()));
        let own_slices = slices
            .get(&(svc.namespace.clone(), svc.name.clone()))
            .cloned()
            .unwrap_or_default();
        for pf in svc.ports {
            let name = ServicePortName {
                namespace: svc.namespace.clone(),
                name: svc.name.clone(),
                port_name: pf.port_name.clone(),
            };
            if let Some(owner) = owners.get(&pf.frontend) {
                if *owner != format!("{}/{}", svc.namespace, svc.name) {
                    t.error(
                        &sourced.origin,
                        &format!("Service {}/{}", svc.namespace, svc.name),
                        "spec.clusterIP",
                        format!("{} is already served by Service {owner}", pf.frontend),
                    );
                }
                continue;
            }
            let mut endpoints = BTreeMap::new();
            for slice in &own_slices {
                t.slice_endpoints(slice, &pf.port_name, pf.frontend.protocol, &mut endpoints);
            }
            owners.insert(pf.frontend, format!("{}/{}", svc.namespace, svc.name));
            desired.services.insert(
                pf.frontend,
                ServicePort {
                    name,
                    frontend: pf.frontend,
                    service_type: svc.service_type,
                    affinity: svc.affinity,
                    internal_traffic_local: svc.internal_traffic_local,
                    external: ExternalAccess {
                        node_port: pf.node_port,
                        ..svc.external.clone()
                    },
                    endpoints: endpoints.into_values().collect(),
                },
            );
        }
    }
    for (ns, svc) in slices.keys() {
        if !known.contains(&(ns.clone(), svc.clone())) {
            debug!("EndpointSlices for unknown Service {ns}/{svc} ignored");
        }
    }
    t.errors.sort();
    Translation {
        desired,
        errors: t.errors,
        skipped: t.skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(yaml: &str) -> ClusterObjects {
        let mut out = ClusterObjects::default();
        for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
            let value = serde_json::to_value(
                <serde_yaml::Value as serde::Deserialize>::deserialize(doc).expect("yaml"),
            )
            .expect("json");
            let origin = format!("test.yaml (document {})", i + 1);
            match value["kind"].as_str() {
                Some("Service") => out.services.push(Sourced {
                    origin,
                    object: serde_json::from_value(value).expect("svc"),
                }),
                Some("EndpointSlice") => out.slices.push(Sourced {
                    origin,
                    object: serde_json::from_value(value).expect("slice"),
                }),
                _ => panic!("unexpected kind"),
            }
        }
        out
    }

    const WEB: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, targetPort: web}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- addresses: [10.244.0.11]
  conditions: {ready: true}
  nodeName: n1
- addresses: [10.244.0.12]
  conditions: {ready: false, serving: true, terminating: true}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 9090}]
endpoints:
- addresses: [10.244.0.13]
"#;

    fn frontend(port: u16, protocol: Protocol) -> Frontend {
        Frontend::new(Ipv4Addr::new(10, 96, 0, 10), port, protocol)
    }

    #[test]
    fn multi_port_service_with_named_target_ports_across_slices() {
        let t = translate(&objects(WEB));
        assert!(t.errors.is_empty(), "{:?}", t.errors);
        let http = &t.desired.services[&frontend(80, Protocol::Tcp)];
        assert_eq!(http.name.to_string(), "shop/web:http");
        let active: Vec<String> = http
            .active_backends()
            .iter()
            .map(|b| b.to_string())
            .collect();
        // Slice ports resolve per slice; the terminating endpoint is not used while others are ready.
        assert_eq!(active, vec!["10.244.0.11:8080", "10.244.0.13:9090"]);
        assert_eq!(
            http.endpoints
                .iter()
                .find(|e| e.addr.ip == Ipv4Addr::new(10, 244, 0, 11))
                .and_then(|e| e.node.as_deref()),
            Some("n1")
        );
        let dns = &t.desired.services[&frontend(53, Protocol::Udp)];
        assert_eq!(dns.active_backends().len(), 1);
        assert_eq!(dns.active_backends()[0].port, 5353);
    }

    /// What the EndpointSlice controller writes for `trafficDistribution:
    /// PreferSameNode`: zone and node hints, carried to the model.
    #[test]
    fn topology_hints_are_read_from_slices() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {clusterIP: 10.96.0.90, trafficDistribution: PreferSameNode, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints:
- addresses: [10.244.1.5]
  nodeName: n1
  hints: {forZones: [{name: zone-a}], forNodes: [{name: n1}]}
- addresses: [10.244.2.5]
  nodeName: n2
"#;
        let t = translate(&objects(yaml));
        assert!(t.errors.is_empty(), "{:?}", t.errors);
        let sp = t.desired.services.values().next().expect("web");
        let hinted = sp
            .endpoints
            .iter()
            .find(|e| e.node.as_deref() == Some("n1"))
            .expect("n1");
        assert_eq!(
            hinted.hints.as_deref(),
            Some(&TopologyHints {
                zones: vec!["zone-a".into()],
                nodes: vec!["n1".into()]
            })
        );
        assert!(sp.endpoints.iter().any(|e| e.hints.is_none()));
    }

    #[test]
    fn deterministic_regardless_of_order() {
        let mut o = objects(WEB);
        let a = translate(&o).desired;
        o.slices.reverse();
        o.services.reverse();
        assert_eq!(translate(&o).desired, a);
    }

    #[test]
    fn duplicate_endpoint_across_slices_is_merged_preferring_ready() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: s}
spec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{port: 80}]
endpoints: [{addresses: [10.244.0.1], conditions: {ready: false}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-2, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{port: 80}]
endpoints: [{addresses: [10.244.0.1], conditions: {ready: true}}]
"#;
        let t = translate(&objects(yaml));
        let sp = &t.desired.services[&frontend(80, Protocol::Tcp)];
        assert_eq!(sp.endpoints.len(), 1);
        assert!(sp.endpoints[0].ready);
        assert_eq!(sp.name.to_string(), "default/s");
    }

    #[test]
    fn bad_fields_name_object_and_field_and_spare_the_rest() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: x}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: a, port: 70000}, {name: b, port: 81, protocol: SCTP}, {name: c, port: 82}, {name: d, port: 82}]
---
apiVersion: v1
kind: Service
metadata: {name: worse, namespace: x}
spec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: good, namespace: x}
spec: {clusterIP: 10.96.0.30, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: good-1, namespace: x, labels: {kubernetes.io/service-name: good}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [not-an-ip]}, {addresses: [10.244.0.5]}]
"#;
        let t = translate(&objects(yaml));
        let lines: Vec<String> = t.errors.iter().map(|e| e.to_string()).collect();
        let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
        assert!(
            has("Service x/bad: spec.ports[0].port: 70000 is not in 1..=65535"),
            "{lines:#?}"
        );
        assert!(
            has("Service x/bad: spec.ports[1].protocol: SCTP is not supported"),
            "{lines:#?}"
        );
        assert!(
            has("Service x/bad: spec.ports[3]: duplicate port 82/TCP"),
            "{lines:#?}"
        );
        assert!(
            has("Service x/worse: spec.clusterIP: \"10.96.0.300\" is not an IP address"),
            "{lines:#?}"
        );
        assert!(
            has("test.yaml (document 4): EndpointSlice x/good-1: endpoints[0].addresses[0]"),
            "{lines:#?}"
        );
        assert_eq!(t.desired.services.len(), 2, "bad:82 and good:80");
        let good =
            &t.desired.services[&Frontend::new(Ipv4Addr::new(10, 96, 0, 30), 80, Protocol::Tcp)];
        assert_eq!(good.active_backends().len(), 1);
    }

    #[test]
    fn shapes_that_are_not_programmed() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: headless}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: example.org}
---
apiVersion: v1
kind: Service
metadata: {name: other, labels: {service.kubernetes.io/service-proxy-name: foo}}
spec: {clusterIP: 10.96.0.40, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: marked-headless, labels: {service.kubernetes.io/headless: ""}}
spec: {clusterIP: 10.96.0.42, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: np}
spec: {type: NodePort, clusterIP: 10.96.0.41, ports: [{port: 80, nodePort: 30080}]}
"#;
        let t = translate(&objects(yaml));
        assert!(t.errors.is_empty(), "{:?}", t.errors);
        assert_eq!(t.skipped.len(), 4, "{:?}", t.skipped);
        assert!(
            t.skipped.iter().any(|s| s.contains("marked-headless")),
            "{:?}",
            t.skipped
        );
        assert_eq!(t.desired.services.len(), 1);
        let np = t.desired.services.values().next().expect("np");
        assert_eq!(np.service_type, ServiceType::NodePort);
        assert!(
            np.endpoints.is_empty(),
            "no slices: programmed with no backends"
        );
    }

    #[test]
    fn session_affinity_with_default_and_bad_timeouts() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec: {clusterIP: 10.96.0.60, sessionAffinity: ClientIP, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: short}
spec:
  clusterIP: 10.96.0.61
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 5}}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: bad}
spec:
  clusterIP: 10.96.0.62
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 0}}
  ports: [{port: 80}]
"#;
        let t = translate(&objects(yaml));
        let by_name = |n: &str| {
            t.desired
                .services
                .values()
                .find(|s| s.name.name == n)
                .and_then(|s| s.affinity)
        };
        assert_eq!(by_name("sticky"), Some(Duration::from_secs(10_800)));
        assert_eq!(by_name("short"), Some(Duration::from_secs(5)));
        assert_eq!(by_name("bad"), Some(Duration::from_secs(10_800)));
        assert_eq!(t.errors.len(), 1);
        assert!(
            t.errors[0].to_string().contains(
                "Service default/bad: spec.sessionAffinityConfig.clientIP.timeoutSeconds"
            )
        );
    }

    #[test]
    fn node_port_load_balancer_and_external_ips() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: lb}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.70
  externalIPs: [192.0.2.20, not-ip]
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  loadBalancerSourceRanges: [10.10.0.0/24, 10.0.0.0/99]
  ports: [{name: http, port: 80, nodePort: 30080}, {name: dns, port: 53, protocol: UDP, nodePort: 30053}]
status:
  loadBalancer: {ingress: [{ip: 192.0.2.10}, {hostname: lb.example.com}, {ip: 192.0.2.11, ipMode: Proxy}]}
---
apiVersion: v1
kind: Service
metadata: {name: plain}
spec: {clusterIP: 10.96.0.71, ports: [{port: 80, nodePort: 30081}]}
"#;
        let t = translate(&objects(yaml));
        let lines: Vec<String> = t.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(
            lines.iter().any(|l| l.contains("spec.externalIPs[1]")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("spec.loadBalancerSourceRanges[1]")),
            "{lines:#?}"
        );
        let http = t
            .desired
            .services
            .values()
            .find(|s| s.name.to_string() == "default/lb:http")
            .expect("http");
        let e = &http.external;
        assert_eq!(e.node_port, Some(30080));
        assert_eq!(e.load_balancer_ips, vec![Ipv4Addr::new(192, 0, 2, 10)]);
        assert_eq!(e.external_ips, vec![Ipv4Addr::new(192, 0, 2, 20)]);
        assert!(e.traffic_local);
        assert_eq!(e.health_check_node_port, Some(32000));
        // ipMode Proxy (192.0.2.11) is the load balancer's to handle.
        assert_eq!(e.load_balancer_ips, vec![Ipv4Addr::new(192, 0, 2, 10)]);
        // The LB's own VIP is admitted as a source (hairpinning LBs).
        assert_eq!(
            e.source_ranges,
            vec![
                (Ipv4Addr::new(10, 10, 0, 0), 24),
                (Ipv4Addr::new(192, 0, 2, 10), 32)
            ]
        );
        let dns = t
            .desired
            .services
            .values()
            .find(|s| s.name.to_string() == "default/lb:dns")
            .expect("dns");
        assert_eq!(dns.external.node_port, Some(30053));
        let plain = t
            .desired
            .services
            .values()
            .find(|s| s.name.name == "plain")
            .expect("plain");
        assert!(
            !plain.external.is_exposed(),
            "a ClusterIP service's nodePort is ignored"
        );
    }

    #[test]
    fn second_claim_on_a_frontend_is_an_error() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {clusterIP: 10.96.0.50, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b}
spec: {clusterIP: 10.96.0.50, ports: [{port: 80}]}
"#;
        let t = translate(&objects(yaml));
        assert_eq!(t.errors.len(), 1);
        assert!(t.errors[0].to_string().contains("Service default/b"));
        assert_eq!(
            t.desired
                .services
                .values()
                .next()
                .map(|s| s.name.name.as_str()),
            Some("a")
        );
    }
}

//! Services + EndpointSlices → the desired state ([`DesiredState`]), with
//! kube-proxy's semantics.
//!
//! - Programmed: ClusterIP, NodePort and LoadBalancer services with an IPv4
//!   cluster IP (the first IPv4 of `clusterIPs`, else `clusterIP`; IPv6
//!   entries are listed as skipped). Each `spec.ports` entry becomes one
//!   service port: its cluster-IP frontend with the service's session
//!   affinity, traffic policies and scheduler (the
//!   `switchyard.io/lb-algorithm` annotation), and its external access: node port,
//!   load-balancer ingress IPs (not those with `ipMode: Proxy`), external
//!   IPs, source ranges and health-check node port.
//! - Not programmed, by design (listed as skipped): headless services,
//!   ExternalName, services another proxy owns
//!   (`service.kubernetes.io/service-proxy-name`) or labelled headless
//!   (`service.kubernetes.io/headless`).
//! - A service port's endpoints come from the IPv4 slices labelled
//!   `kubernetes.io/service-name` in its namespace, through the slice port of
//!   the same name and protocol (so named target ports resolve per slice).
//!   An endpoint in several slices counts once, its most ready copy; its
//!   topology hints (written for `trafficDistribution`) are carried along.
//! - Conditions: `ready` unset means ready; `serving` unset means `ready`;
//!   `terminating` unset means not terminating.
//! - Services are read in namespace/name order: a frontend belongs to the
//!   first service that claims it, and a later claim is an error.
//!
//! Problems are reported per object and field ([`ObjectError`]). A service
//! without a usable name, spec, type or cluster IP is left out; any other bad
//! entry (a port, an address, a range, a policy value, an endpoint) is left
//! out or defaulted, and the rest of the object still applies.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::source::slice::{Endpoint as SliceEndpoint, EndpointSlice};
use k8s_openapi::api::core::v1::{Service, ServicePort as PortSpec, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tracing::debug;

use super::{ClusterObjects, ObjectError, Sourced};
use crate::model::{
    Algorithm, BackendAddr, DesiredState, Endpoint, ExternalAccess, Frontend, Protocol,
    ServicePort, ServicePortName, ServiceType, TopologyHints,
};

pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Marks a Service no proxy should program, whatever its ClusterIP.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// A Service's own scheduler, overriding the agent's `--algorithm`.
pub const ALGORITHM_ANNOTATION: &str = "switchyard.io/lb-algorithm";

#[derive(Debug, Default)]
pub struct Translation {
    pub desired: DesiredState,
    pub errors: Vec<ObjectError>,
    /// Objects, or parts of them, deliberately not programmed, and why:
    /// `Service ns/name: reason`.
    pub skipped: Vec<String>,
}

fn namespace_of(meta: &ObjectMeta) -> String {
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

/// `a.b.c.d/len` (a bare address is a /32).
fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = text.trim().split_once('/').unwrap_or((text.trim(), "32"));
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u8 = len.parse().ok().filter(|l| *l <= 32)?;
    Some((ip, len))
}

/// The object a message is about. Built once per object, so that all its
/// errors and skips name it the same way: `origin: Kind namespace/name`.
struct ObjectRef<'a> {
    /// Where the object came from, e.g. `web.yaml (document 2)`.
    origin: &'a str,
    /// `Service default/web`, `EndpointSlice default/web-abc`; a missing
    /// name shows as `?`.
    object: String,
}

impl<'a> ObjectRef<'a> {
    fn new(kind: &str, origin: &'a str, namespace: &str, name: Option<&str>) -> Self {
        Self {
            origin,
            object: format!("{kind} {namespace}/{}", name.unwrap_or("?")),
        }
    }
}

/// A slice with the name its errors carry.
struct NamedSlice<'a> {
    obj: ObjectRef<'a>,
    slice: &'a EndpointSlice,
}

/// A service port before endpoints are attached.
struct PortFrontend {
    port_name: String,
    frontend: Frontend,
    node_port: Option<u16>,
}

/// How a service's traffic is steered, the same for all its ports.
struct Policies {
    affinity: Option<Duration>,
    internal_traffic_local: bool,
    external_traffic_local: bool,
    algorithm: Option<Algorithm>,
}

struct ServiceFrontends<'a> {
    obj: ObjectRef<'a>,
    namespace: String,
    name: String,
    service_type: ServiceType,
    policies: Policies,
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

/// Reporting, always through the object's [`ObjectRef`].
impl Translator {
    /// A bad `field` of `obj`, e.g. `spec.ports[1].nodePort`.
    fn error(&mut self, obj: &ObjectRef, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ObjectError {
            origin: obj.origin.to_string(),
            object: obj.object.clone(),
            field: field.into(),
            message: message.into(),
        });
    }

    /// `obj`, or a part of it, deliberately not programmed.
    fn skip(&mut self, obj: &ObjectRef, why: impl fmt::Display) {
        self.skipped.push(format!("{}: {why}", obj.object));
    }
}

/// Reading one Service: [`Translator::service`] and its steps.
impl Translator {
    /// A Service's frontends, or `None` when it is not programmed (reported
    /// as an error or listed as skipped).
    fn service<'a>(&mut self, sourced: &'a Sourced<Service>) -> Option<ServiceFrontends<'a>> {
        let svc = &sourced.object;
        let namespace = namespace_of(&svc.metadata);
        let name = svc.metadata.name.as_deref().filter(|n| !n.is_empty());
        let obj = ObjectRef::new("Service", &sourced.origin, &namespace, name);
        let Some(name) = name else {
            self.error(&obj, "metadata.name", "missing");
            return None;
        };
        let spec = self.proxied_spec(&obj, svc)?;
        let service_type = self.service_type(&obj, spec)?;
        let vip = self.cluster_ip(&obj, spec)?;
        let ports = self.ports(&obj, spec, vip, service_type);
        let policies = self.policies(&obj, svc, spec);
        let external = self.external_access(&obj, svc, spec, service_type, &policies);
        Some(ServiceFrontends {
            obj,
            namespace,
            name: name.to_string(),
            service_type,
            policies,
            external,
            ports,
        })
    }

    /// The spec, unless the service is not this proxy's to program: another
    /// proxy's, or labelled headless.
    fn proxied_spec<'s>(&mut self, obj: &ObjectRef, svc: &'s Service) -> Option<&'s ServiceSpec> {
        let labels = svc.metadata.labels.as_ref();
        if let Some(proxy) = labels.and_then(|l| l.get(SERVICE_PROXY_NAME_LABEL)) {
            let why = format_args!("handled by proxy {proxy:?} ({SERVICE_PROXY_NAME_LABEL})");
            self.skip(obj, why);
            return None;
        }
        if labels.is_some_and(|l| l.contains_key(HEADLESS_LABEL)) {
            self.skip(obj, format_args!("labelled {HEADLESS_LABEL}, not proxied"));
            return None;
        }
        if svc.spec.is_none() {
            self.error(obj, "spec", "missing");
        }
        svc.spec.as_ref()
    }

    /// `spec.type`; `None` for ExternalName (DNS answers those) and unknown
    /// types.
    fn service_type(&mut self, obj: &ObjectRef, spec: &ServiceSpec) -> Option<ServiceType> {
        match spec.type_.as_deref().unwrap_or("ClusterIP") {
            "ClusterIP" => Some(ServiceType::ClusterIP),
            "NodePort" => Some(ServiceType::NodePort),
            "LoadBalancer" => Some(ServiceType::LoadBalancer),
            "ExternalName" => {
                self.skip(
                    obj,
                    "ExternalName services are answered by DNS, not proxied",
                );
                None
            }
            other => {
                let message = format!("unknown service type {other:?}");
                self.error(obj, "spec.type", message);
                None
            }
        }
    }

    /// The IPv4 cluster IP; `None` when not allocated, headless or IPv6 only
    /// (skipped), or not a usable address (reported).
    fn cluster_ip(&mut self, obj: &ObjectRef, spec: &ServiceSpec) -> Option<Ipv4Addr> {
        // clusterIPs (dual-stack) wins over clusterIP when set.
        let (field, candidates): (&str, &[String]) = match &spec.cluster_ips {
            Some(ips) if !ips.is_empty() => ("spec.clusterIPs", ips),
            _ => ("spec.clusterIP", spec.cluster_ip.as_slice()),
        };
        if candidates.iter().all(|ip| ip.is_empty()) {
            self.skip(obj, "no cluster IP allocated");
            return None;
        }
        if candidates.iter().any(|ip| ip == "None") {
            self.skip(obj, "headless (clusterIP: None)");
            return None;
        }
        self.first_ipv4(obj, field, candidates)
    }

    /// The first IPv4 of the cluster IPs in `field`. IPv6 entries are listed
    /// as skipped; a bad entry, or a first IPv4 that is no usable address,
    /// is reported and leaves the service out. Later IPv4 entries are not
    /// looked at: the first is the one programmed.
    fn first_ipv4(&mut self, obj: &ObjectRef, field: &str, ips: &[String]) -> Option<Ipv4Addr> {
        let mut vip = None;
        for (i, ip) in ips.iter().enumerate() {
            let at = if field == "spec.clusterIPs" {
                format!("{field}[{i}]")
            } else {
                field.to_string()
            };
            match ip.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) if vip.is_none() => {
                    if let Some(why) = unusable(v4) {
                        self.error(obj, at, format!("{ip} is {why}"));
                        return None;
                    }
                    vip = Some(v4);
                }
                Ok(IpAddr::V4(_)) => {}
                Ok(IpAddr::V6(_)) => {
                    self.skip(obj, format_args!("{at} {ip} is IPv6, not supported yet"))
                }
                Err(_) => {
                    self.error(obj, at, format!("{ip:?} is not an IP address"));
                    return None;
                }
            }
        }
        vip
    }

    /// One frontend per `spec.ports` entry, at the cluster IP.
    fn ports(
        &mut self,
        obj: &ObjectRef,
        spec: &ServiceSpec,
        vip: Ipv4Addr,
        service_type: ServiceType,
    ) -> Vec<PortFrontend> {
        let mut ports = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, sp) in spec.ports.iter().flatten().enumerate() {
            ports.extend(self.port(obj, i, sp, vip, service_type, &mut seen));
        }
        if spec.ports.as_ref().is_none_or(|p| p.is_empty()) {
            self.skip(obj, "no ports");
        }
        ports
    }

    /// `spec.ports[i]`; a bad or duplicate (`seen`) entry is reported and left
    /// out, the service's other ports are still served.
    fn port(
        &mut self,
        obj: &ObjectRef,
        i: usize,
        sp: &PortSpec,
        vip: Ipv4Addr,
        service_type: ServiceType,
        seen: &mut BTreeSet<(u16, Protocol)>,
    ) -> Option<PortFrontend> {
        let protocol = match parse_protocol(sp.protocol.as_deref()) {
            Ok(p) => p,
            Err(m) => {
                self.error(obj, format!("spec.ports[{i}].protocol"), m);
                return None;
            }
        };
        let port = self.port_number(obj, format!("spec.ports[{i}].port"), sp.port)?;
        if !seen.insert((port, protocol)) {
            let message = format!("duplicate port {port}/{protocol}");
            self.error(obj, format!("spec.ports[{i}]"), message);
            return None;
        }
        Some(PortFrontend {
            port_name: sp.name.clone().unwrap_or_default(),
            frontend: Frontend::new(vip, port, protocol),
            node_port: self.node_port(obj, i, sp, service_type),
        })
    }

    /// A port number field; one not in 1..=65535 is reported.
    fn port_number(&mut self, obj: &ObjectRef, field: String, value: i32) -> Option<u16> {
        let port = valid_port(value);
        if port.is_none() {
            self.error(obj, field, format!("{value} is not in 1..=65535"));
        }
        port
    }

    /// Session affinity, the traffic policies and the scheduler.
    fn policies(&mut self, obj: &ObjectRef, svc: &Service, spec: &ServiceSpec) -> Policies {
        let internal = spec.internal_traffic_policy.as_deref();
        let external = spec.external_traffic_policy.as_deref();
        Policies {
            affinity: self.affinity(obj, spec),
            internal_traffic_local: self.traffic_local(obj, "spec.internalTrafficPolicy", internal),
            external_traffic_local: self.traffic_local(obj, "spec.externalTrafficPolicy", external),
            algorithm: self.algorithm(obj, &svc.metadata),
        }
    }

    /// The `switchyard.io/lb-algorithm` annotation; an unknown value is
    /// reported and the agent's `--algorithm` applies.
    fn algorithm(&mut self, obj: &ObjectRef, meta: &ObjectMeta) -> Option<Algorithm> {
        let annotations = meta.annotations.as_ref();
        let value = annotations.and_then(|a| a.get(ALGORITHM_ANNOTATION))?;
        let algorithm = Algorithm::from_name(value.trim());
        if algorithm.is_none() {
            let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
            self.error(
                obj,
                format!("metadata.annotations[{ALGORITHM_ANNOTATION}]"),
                format!(
                    "unknown algorithm {value:?} (one of {}); the agent's --algorithm applies",
                    names.join(", ")
                ),
            );
        }
        algorithm
    }

    /// `sessionAffinity`; a bad value is reported and the service is served
    /// without affinity rather than not at all.
    fn affinity(&mut self, obj: &ObjectRef, spec: &ServiceSpec) -> Option<Duration> {
        match spec.session_affinity.as_deref().unwrap_or("None") {
            "None" => None,
            "ClientIP" => {
                let configured = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds);
                let seconds = self.affinity_timeout(obj, configured);
                Some(Duration::from_secs(seconds as u64))
            }
            other => {
                let message = format!("unknown value {other:?}; served without affinity");
                self.error(obj, "spec.sessionAffinity", message);
                None
            }
        }
    }

    /// ClientIP affinity's timeout in seconds; a bad one is reported and
    /// kube-proxy's default used.
    fn affinity_timeout(&mut self, obj: &ObjectRef, configured: Option<i32>) -> i32 {
        match configured {
            None => DEFAULT_AFFINITY_TIMEOUT_S,
            Some(t) if (1..=MAX_AFFINITY_TIMEOUT_S).contains(&t) => t,
            Some(t) => {
                self.error(
                    obj,
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("{t} is not in 1..={MAX_AFFINITY_TIMEOUT_S}; using {DEFAULT_AFFINITY_TIMEOUT_S}"),
                );
                DEFAULT_AFFINITY_TIMEOUT_S
            }
        }
    }

    /// An internal or external traffic policy: whether it is `Local`. An
    /// unknown value is reported and read as `Cluster`, the default.
    fn traffic_local(&mut self, obj: &ObjectRef, field: &str, policy: Option<&str>) -> bool {
        match policy {
            None | Some("Cluster") => false,
            Some("Local") => true,
            Some(other) => {
                let message = format!("unknown value {other:?}; using Cluster");
                self.error(obj, field, message);
                false
            }
        }
    }
}

/// A Service's external access: node ports, load-balancer ingress IPs,
/// external IPs, source ranges and the health-check node port. Bad entries
/// are reported and left out; the rest of the service is still served.
impl Translator {
    /// Everything but the per-port node ports ([`Translator::node_port`]).
    fn external_access(
        &mut self,
        obj: &ObjectRef,
        svc: &Service,
        spec: &ServiceSpec,
        service_type: ServiceType,
        policies: &Policies,
    ) -> ExternalAccess {
        let mut access = ExternalAccess {
            traffic_local: policies.external_traffic_local,
            ..ExternalAccess::default()
        };
        if service_type == ServiceType::LoadBalancer {
            access.load_balancer_ips = self.load_balancer_ips(obj, svc);
            access.source_ranges = self.source_ranges(obj, spec, &access.load_balancer_ips);
            access.health_check_node_port = self.health_check_node_port(obj, spec, policies);
        }
        for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
            let field = format!("spec.externalIPs[{i}]");
            access
                .external_ips
                .extend(self.external_ipv4(obj, field, ip));
        }
        access
    }

    /// `spec.ports[i].nodePort`, for NodePort and LoadBalancer services only.
    fn node_port(
        &mut self,
        obj: &ObjectRef,
        i: usize,
        sp: &PortSpec,
        service_type: ServiceType,
    ) -> Option<u16> {
        if service_type == ServiceType::ClusterIP {
            return None;
        }
        self.port_number(obj, format!("spec.ports[{i}].nodePort"), sp.node_port?)
    }

    /// `status.loadBalancer.ingress[].ip`.
    fn load_balancer_ips(&mut self, obj: &ObjectRef, svc: &Service) -> Vec<Ipv4Addr> {
        let ingress = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        let mut ips = Vec::new();
        for (i, entry) in ingress.into_iter().flatten().enumerate() {
            // ipMode Proxy: the load balancer terminates or rewrites the
            // traffic (TLS, PROXY protocol); in-cluster clients must go
            // through it, so the IP is not ours to translate (kube-proxy
            // ≥ 1.32 leaves it alone too).
            if entry.ip_mode.as_deref() == Some("Proxy") {
                continue;
            }
            if let Some(ip) = entry.ip.as_deref() {
                let field = format!("status.loadBalancer.ingress[{i}].ip");
                ips.extend(self.external_ipv4(obj, field, ip));
            }
        }
        ips
    }

    /// `spec.loadBalancerSourceRanges`, and when there are any, the load
    /// balancer's own IPs: one that hairpins sends with its own VIP as the
    /// source, and kube-proxy admits it too.
    fn source_ranges(
        &mut self,
        obj: &ObjectRef,
        spec: &ServiceSpec,
        load_balancer_ips: &[Ipv4Addr],
    ) -> Vec<(Ipv4Addr, u8)> {
        let mut ranges = Vec::new();
        let configured = spec.load_balancer_source_ranges.iter().flatten();
        for (i, range) in configured.enumerate() {
            match parse_cidr(range) {
                Some(cidr) => ranges.push(cidr),
                None => self.error(
                    obj,
                    format!("spec.loadBalancerSourceRanges[{i}]"),
                    format!("{range:?} is not an IPv4 CIDR"),
                ),
            }
        }
        if !ranges.is_empty() {
            ranges.extend(load_balancer_ips.iter().map(|ip| (*ip, 32)));
        }
        ranges
    }

    /// `spec.healthCheckNodePort`: answered only under policy Local.
    fn health_check_node_port(
        &mut self,
        obj: &ObjectRef,
        spec: &ServiceSpec,
        policies: &Policies,
    ) -> Option<u16> {
        let port = spec.health_check_node_port?;
        if !policies.external_traffic_local {
            return None;
        }
        self.port_number(obj, "spec.healthCheckNodePort".into(), port)
    }

    /// An external address in `field`; IPv6 is listed as skipped, anything
    /// else unusable is reported.
    fn external_ipv4(&mut self, obj: &ObjectRef, field: String, text: &str) -> Option<Ipv4Addr> {
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => match unusable(ip) {
                None => Some(ip),
                Some(why) => {
                    self.error(obj, field, format!("{text} is {why}"));
                    None
                }
            },
            Ok(IpAddr::V6(_)) => {
                self.skip(
                    obj,
                    format_args!("{field} {text} is IPv6, not supported yet"),
                );
                None
            }
            Err(_) => {
                self.error(obj, field, format!("{text:?} is not an IP address"));
                None
            }
        }
    }
}

/// Reading EndpointSlices.
impl Translator {
    /// IPv4 slices by the `(namespace, service)` they belong to, each list in
    /// name order. Other address types are listed as skipped.
    fn slices_by_service<'a>(
        &mut self,
        objects: &'a ClusterObjects,
    ) -> BTreeMap<(String, String), Vec<NamedSlice<'a>>> {
        let mut slices: BTreeMap<_, Vec<NamedSlice>> = BTreeMap::new();
        for s in &objects.slices {
            let (slice, meta) = (&s.object, &s.object.metadata);
            let namespace = namespace_of(meta);
            let obj = ObjectRef::new("EndpointSlice", &s.origin, &namespace, meta.name.as_deref());
            if slice.address_type != "IPv4" {
                let why = format_args!("addressType {} is not supported", slice.address_type);
                self.skip(&obj, why);
                continue;
            }
            let Some(service) = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
                debug!("{}: no {SERVICE_NAME_LABEL} label, ignored", obj.object);
                continue;
            };
            let key = (namespace, service.clone());
            slices
                .entry(key)
                .or_default()
                .push(NamedSlice { obj, slice });
        }
        for list in slices.values_mut() {
            list.sort_by_key(|s| (s.slice.metadata.name.clone(), s.obj.origin));
        }
        slices
    }

    /// Endpoints of one slice for the service port `(port_name, protocol)`.
    fn slice_endpoints(
        &mut self,
        named: &NamedSlice,
        port_name: &str,
        protocol: Protocol,
        out: &mut BTreeMap<BackendAddr, Endpoint>,
    ) {
        let (obj, slice) = (&named.obj, named.slice);
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
        let Some(port) = self.port_number(obj, format!("ports[{j}].port"), raw_port) else {
            return;
        };
        for (k, ep) in slice.endpoints.iter().enumerate() {
            let Some(endpoint) = self.endpoint(obj, k, ep, port, protocol) else {
                continue;
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

    /// `endpoints[k]` of a slice, at the slice port `port`; one without a
    /// usable first address is reported and left out.
    fn endpoint(
        &mut self,
        obj: &ObjectRef,
        k: usize,
        ep: &SliceEndpoint,
        port: u16,
        protocol: Protocol,
    ) -> Option<Endpoint> {
        let Some(address) = ep.addresses.first() else {
            self.error(obj, format!("endpoints[{k}].addresses"), "empty");
            return None;
        };
        let field = || format!("endpoints[{k}].addresses[0]");
        let Ok(ip) = address.parse::<Ipv4Addr>() else {
            self.error(obj, field(), format!("{address:?} is not an IPv4 address"));
            return None;
        };
        if let Some(why) = unusable(ip) {
            self.error(obj, field(), format!("{ip} is {why}"));
            return None;
        }
        let conditions = ep.conditions.clone().unwrap_or_default();
        let ready = conditions.ready.unwrap_or(true);
        Some(Endpoint {
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
        })
    }
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
    let slices = t.slices_by_service(objects);

    let mut desired = DesiredState::default();
    // Frontend → the `Service namespace/name` that claimed it first.
    let mut owners: BTreeMap<Frontend, String> = BTreeMap::new();
    let mut known = BTreeSet::new();
    for sourced in services {
        let Some(svc) = t.service(sourced) else {
            continue;
        };
        let key = (svc.namespace.clone(), svc.name.clone());
        let own_slices = slices.get(&key).map(Vec::as_slice).unwrap_or_default();
        known.insert(key);
        for pf in &svc.ports {
            if let Some(owner) = owners.get(&pf.frontend) {
                if *owner != svc.obj.object {
                    let message = format!("{} is already served by {owner}", pf.frontend);
                    t.error(&svc.obj, "spec.clusterIP", message);
                }
                continue;
            }
            let mut endpoints = BTreeMap::new();
            for slice in own_slices {
                t.slice_endpoints(slice, &pf.port_name, pf.frontend.protocol, &mut endpoints);
            }
            owners.insert(pf.frontend, svc.obj.object.clone());
            let port = service_port(&svc, pf, endpoints.into_values().collect());
            desired.services.insert(pf.frontend, port);
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

/// One port of a service, as the model holds it.
fn service_port(
    svc: &ServiceFrontends,
    pf: &PortFrontend,
    endpoints: Vec<Endpoint>,
) -> ServicePort {
    ServicePort {
        name: ServicePortName {
            namespace: svc.namespace.clone(),
            name: svc.name.clone(),
            port_name: pf.port_name.clone(),
        },
        frontend: pf.frontend,
        service_type: svc.service_type,
        affinity: svc.policies.affinity,
        internal_traffic_local: svc.policies.internal_traffic_local,
        algorithm: svc.policies.algorithm,
        external: ExternalAccess {
            node_port: pf.node_port,
            ..svc.external.clone()
        },
        endpoints,
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
    fn lb_algorithm_annotation_per_service_and_bad_values_reported() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: plain}
spec: {clusterIP: 10.96.0.70, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: lc, annotations: {switchyard.io/lb-algorithm: least-connection}}
spec: {clusterIP: 10.96.0.71, ports: [{port: 80}, {port: 81, name: b}]}
---
apiVersion: v1
kind: Service
metadata: {name: rr, annotations: {switchyard.io/lb-algorithm: round-robin}}
spec: {clusterIP: 10.96.0.72, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: typo, annotations: {switchyard.io/lb-algorithm: leastconn}}
spec: {clusterIP: 10.96.0.73, ports: [{port: 80}]}
"#;
        let t = translate(&objects(yaml));
        let of = |n: &str| -> Vec<Option<Algorithm>> {
            let ports = t.desired.services.values().filter(|s| s.name.name == n);
            ports.map(|s| s.algorithm).collect()
        };
        assert_eq!(of("plain"), [None]);
        assert_eq!(of("lc"), [Some(Algorithm::LeastConnection); 2]);
        assert_eq!(of("rr"), [Some(Algorithm::RoundRobin)]);
        assert_eq!(of("typo"), [None], "served with the agent's default");
        assert_eq!(t.errors.len(), 1, "{:?}", t.errors);
        let error = t.errors[0].to_string();
        assert!(
            error.contains(
                "Service default/typo: metadata.annotations[switchyard.io/lb-algorithm]: \
                 unknown algorithm \"leastconn\" (one of random, maglev, round-robin, least-connection)"
            ),
            "{error}"
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

//! The API server as the source: watches Services, EndpointSlices and this
//! node's Node (kube-runtime watchers with their backoff), keeps the last
//! objects it saw, and sends the agent only the service ports that changed,
//! in short batches.
//!
//! The rules that keep the datapath serving through trouble:
//! - nothing is sent before both Services and EndpointSlices have been
//!   listed in full, so a restarted agent never withdraws a service whose
//!   slices have not arrived yet;
//! - a failing watch (API server down, network cut) changes nothing: the
//!   last known state stays in the maps while the watcher retries;
//! - after a relist (watch restart, `410 Gone`) the new list is compared
//!   with what was known, and only what really changed or vanished is sent.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::source::slice::EndpointSlice;
use anyhow::{Context, Result};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use kube::{Api, Client};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::events::ProblemReporter;
use super::translate::{SERVICE_NAME_LABEL, translate};
use super::{ClusterObjects, ObjectError, Sourced, StateDelta};
use crate::metrics::{Metrics, ResourceLabel};
use crate::model::Frontend;

/// Set by the EndpointSlice controller to when the change that caused a
/// slice update happened (kube-proxy's network programming latency uses it).
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Services owned by another proxy are not even watched (kube-proxy's
/// selector); slices only when they name their service.
const SERVICE_SELECTOR: &str = "!service.kubernetes.io/service-proxy-name";
const SLICE_SELECTOR: &str = "kubernetes.io/service-name,!service.kubernetes.io/headless";

pub struct KubernetesSource {
    pub client: Client,
    /// This node: its Node object gives the addresses node ports are served on.
    pub node_name: Option<String>,
    /// At most one batch per window: a change after a quiet spell is sent at
    /// once, changes that follow it within the window together after it.
    pub batch_window: Duration,
    pub metrics: Arc<Metrics>,
}

/// A client from `kubeconfig`, or from the environment (in-cluster service
/// account, then `$KUBECONFIG` / `~/.kube/config`).
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no API server configuration (not in a cluster and no kubeconfig); pass --kubeconfig or --standalone")?,
    };
    info!(api_server = %config.cluster_url, "API server");
    Client::try_from(config).context("building the API client")
}

/// `(namespace, name)`.
type Key = (String, String);

fn key_of(meta: &ObjectMeta) -> Key {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Whether two versions of an object differ (resourceVersion when both
/// have one: cheap and exact).
fn differs<K: kube::Resource + PartialEq>(a: Option<&K>, b: Option<&K>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => match (&a.meta().resource_version, &b.meta().resource_version) {
            (Some(x), Some(y)) => x != y,
            _ => a != b,
        },
        (None, None) => false,
        _ => true,
    }
}

/// Drops what the source never reads and what can dwarf the rest of an
/// object (managedFields, kubectl's last-applied annotation): at 10 000
/// Services it is most of the cache's memory.
fn slim<K: kube::Resource>(mut object: K) -> K {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.finalizers = None;
    meta.uid = None;
    meta.creation_timestamp = None;
    meta.generation = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|k, _| k == TRIGGER_TIME_ANNOTATION);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
    object
}

fn trigger_time(slice: &EndpointSlice) -> Option<SystemTime> {
    let text = slice
        .metadata
        .annotations
        .as_ref()?
        .get(TRIGGER_TIME_ANNOTATION)?;
    let parsed: k8s_openapi::jiff::Timestamp = text.parse().ok()?;
    Some(SystemTime::from(parsed))
}

/// The label topology hints (`hints.forZones`) are matched against.
const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The cluster autoscaler's taint on a node it is about to remove.
const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Whether the node is on its way out: being deleted, or tainted for removal.
fn node_draining(node: &Node) -> bool {
    node.metadata.deletion_timestamp.is_some()
        || node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT))
}

fn node_addresses(node: &Node) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// Everything the source knows, and what changed since the last batch.
#[derive(Default)]
struct Cache {
    services: HashMap<Key, Service>,
    slices: HashMap<Key, EndpointSlice>,
    /// Slice → the service (same namespace) its label names.
    slice_owner: HashMap<Key, Key>,
    /// Service → the names of its slices.
    slices_of: HashMap<Key, BTreeSet<String>>,
    /// Service → the service-port keys its last translation produced.
    ports_of: HashMap<Key, Vec<Frontend>>,
    /// Frontend → the Service that last claimed it: a Service gone or
    /// changed only removes frontends it still owns (a ClusterIP can pass
    /// from a deleted Service to a new one within a batch, in either order).
    owner_of: HashMap<Frontend, Key>,
    /// Service → the problems its last translation reported.
    invalid: HashMap<Key, Vec<ObjectError>>,
    /// Services whose problems changed to a non-empty set since the last
    /// batch: told to their owners (events.rs).
    to_report: BTreeSet<Key>,
    dirty: BTreeSet<Key>,
    triggered_at: Vec<SystemTime>,
    node_addresses: Option<Vec<Ipv4Addr>>,
    node_addresses_changed: bool,
    node_zone: Option<String>,
    node_zone_changed: bool,
    /// Objects of a relist in progress, swapped in at its end.
    relisting_services: Option<HashMap<Key, Service>>,
    relisting_slices: Option<HashMap<Key, EndpointSlice>>,
}

impl Cache {
    fn set_service(&mut self, key: Key, service: Option<Service>) {
        match service {
            Some(s) => self.services.insert(key.clone(), s),
            None => self.services.remove(&key),
        };
        self.dirty.insert(key);
    }

    fn set_slice(&mut self, key: Key, slice: Option<EndpointSlice>) {
        if let Some(old_owner) = self.slice_owner.remove(&key) {
            if let Some(names) = self.slices_of.get_mut(&old_owner) {
                names.remove(&key.1);
                if names.is_empty() {
                    self.slices_of.remove(&old_owner);
                }
            }
            self.dirty.insert(old_owner);
        }
        match slice {
            Some(slice) => {
                let owner = slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .map(|service| (key.0.clone(), service.clone()));
                if let Some(owner) = owner {
                    self.slices_of
                        .entry(owner.clone())
                        .or_default()
                        .insert(key.1.clone());
                    self.slice_owner.insert(key.clone(), owner.clone());
                    self.dirty.insert(owner);
                }
                if let Some(at) = trigger_time(&slice) {
                    self.triggered_at.push(at);
                }
                self.slices.insert(key, slice);
            }
            None => {
                self.slices.remove(&key);
            }
        }
    }

    fn replace_services(&mut self, listed: HashMap<Key, Service>) {
        let keys: BTreeSet<Key> = self.services.keys().chain(listed.keys()).cloned().collect();
        let mut listed = listed;
        for key in keys {
            let new = listed.remove(&key);
            if differs(self.services.get(&key), new.as_ref()) {
                self.set_service(key, new);
            }
        }
    }

    fn replace_slices(&mut self, listed: HashMap<Key, EndpointSlice>) {
        let keys: BTreeSet<Key> = self.slices.keys().chain(listed.keys()).cloned().collect();
        let mut listed = listed;
        for key in keys {
            let new = listed.remove(&key);
            if differs(self.slices.get(&key), new.as_ref()) {
                self.set_slice(key, new);
            }
        }
    }

    /// Translates the dirty services and returns what changed.
    fn take_delta(&mut self) -> StateDelta {
        let mut delta = StateDelta {
            triggered_at: std::mem::take(&mut self.triggered_at),
            ..StateDelta::default()
        };
        if std::mem::take(&mut self.node_addresses_changed) {
            delta.node_addresses = self.node_addresses.clone();
        }
        if std::mem::take(&mut self.node_zone_changed) {
            delta.node_zone = Some(self.node_zone.clone());
        }
        for key in std::mem::take(&mut self.dirty) {
            let mut objects = ClusterObjects::default();
            if let Some(service) = self.services.get(&key) {
                objects.services.push(Sourced {
                    origin: "api".into(),
                    object: service.clone(),
                });
                for name in self.slices_of.get(&key).into_iter().flatten() {
                    if let Some(slice) = self.slices.get(&(key.0.clone(), name.clone())) {
                        objects.slices.push(Sourced {
                            origin: "api".into(),
                            object: slice.clone(),
                        });
                    }
                }
            }
            let translation = translate(&objects);
            for e in &translation.errors {
                warn!("cannot program: {e}");
            }
            for s in &translation.skipped {
                debug!("not programmed: {s}");
            }
            if translation.errors.is_empty() {
                self.invalid.remove(&key);
            } else if self.invalid.get(&key) != Some(&translation.errors) {
                self.invalid.insert(key.clone(), translation.errors.clone());
                self.to_report.insert(key.clone());
            }
            let new_keys: Vec<Frontend> = translation.desired.services.keys().copied().collect();
            for old in self.ports_of.remove(&key).unwrap_or_default() {
                if !translation.desired.services.contains_key(&old)
                    && self.owner_of.get(&old) == Some(&key)
                {
                    self.owner_of.remove(&old);
                    delta.ports.insert(old, None);
                }
            }
            for (k, sp) in translation.desired.services {
                self.owner_of.insert(k, key.clone());
                delta.ports.insert(k, Some(sp));
            }
            if !new_keys.is_empty() {
                self.ports_of.insert(key, new_keys);
            }
        }
        delta
    }

    /// The Services with new problems, and the problems, since last asked.
    fn take_reports(&mut self) -> Vec<(&Service, &[ObjectError])> {
        std::mem::take(&mut self.to_report)
            .into_iter()
            .filter_map(|key| Some((self.services.get(&key)?, self.invalid.get(&key)?.as_slice())))
            .collect()
    }

    fn invalid_count(&self) -> usize {
        self.invalid.values().map(Vec::len).sum()
    }

    fn pending(&self) -> bool {
        !self.dirty.is_empty() || self.node_addresses_changed || self.node_zone_changed
    }
}

/// One event from any of the watches.
enum Watched {
    // Boxed: the objects differ a lot in size.
    Service(Box<Result<Event<Service>, watcher::Error>>),
    Slice(Box<Result<Event<EndpointSlice>, watcher::Error>>),
    Node(Box<Result<Event<Node>, watcher::Error>>),
}

type EventStream = Pin<Box<dyn Stream<Item = Watched> + Send>>;

/// What the initial lists have delivered so far.
#[derive(Default)]
struct Listed {
    services: bool,
    slices: bool,
    node: bool,
}

impl KubernetesSource {
    fn streams(&self) -> Vec<EventStream> {
        let services: Api<Service> = Api::all(self.client.clone());
        let slices: Api<EndpointSlice> = Api::all(self.client.clone());
        let mut streams: Vec<EventStream> = vec![
            watch_stream(
                services,
                watcher::Config::default().labels(SERVICE_SELECTOR),
            )
            .default_backoff()
            .map(|e| Watched::Service(Box::new(e)))
            .boxed(),
            watch_stream(slices, watcher::Config::default().labels(SLICE_SELECTOR))
                .default_backoff()
                .map(|e| Watched::Slice(Box::new(e)))
                .boxed(),
        ];
        if let Some(node) = &self.node_name {
            let nodes: Api<Node> = Api::all(self.client.clone());
            streams.push(
                watch_stream(
                    nodes,
                    watcher::Config::default().fields(&format!("metadata.name={node}")),
                )
                .default_backoff()
                .map(|e| Watched::Node(Box::new(e)))
                .boxed(),
            );
        }
        streams
    }

    fn count(
        &self,
        family: &prometheus_client::metrics::family::Family<
            ResourceLabel,
            prometheus_client::metrics::counter::Counter,
        >,
        resource: &'static str,
    ) {
        family.get_or_create(&ResourceLabel { resource }).inc();
    }

    /// Runs until the agent stops listening.
    pub async fn run(self, tx: mpsc::Sender<StateDelta>) {
        let mut events = futures::stream::select_all(self.streams());
        let reporter = ProblemReporter::new(self.client.clone(), self.node_name.as_deref());
        let mut cache = Cache::default();
        let mut listed = Listed {
            node: self.node_name.is_none(),
            ..Listed::default()
        };
        let mut sent_complete = false;
        let mut batch_deadline: Option<Instant> = None;
        // Leading-edge batching: a change after a quiet spell goes out at
        // once; changes that follow within the window are held until it has
        // passed since the last batch, and go together.
        let mut last_sent: Option<Instant> = None;
        loop {
            let wait = async {
                match batch_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = events.next() => {
                    let Some(event) = event else {
                        warn!("API watches ended");
                        return;
                    };
                    self.handle(event, &mut cache, &mut listed);
                    if cache.pending() && batch_deadline.is_none() {
                        let now = Instant::now();
                        batch_deadline = Some(
                            last_sent.map_or(now, |at| (at + self.batch_window).max(now)),
                        );
                    }
                }
                () = wait => {
                    batch_deadline = None;
                    // Nothing leaves before the first full lists are in.
                    if !(listed.services && listed.slices && listed.node) {
                        continue;
                    }
                    let mut delta = cache.take_delta();
                    self.metrics.objects_invalid.set(cache.invalid_count() as i64);
                    for (service, problems) in cache.take_reports() {
                        reporter.report(service, problems);
                    }
                    if !sent_complete {
                        delta.complete = true;
                        info!(
                            services = cache.services.len(),
                            slices = cache.slices.len(),
                            service_ports = delta.ports.len(),
                            "initial lists complete"
                        );
                    }
                    if tx.send(delta).await.is_err() {
                        return;
                    }
                    last_sent = Some(Instant::now());
                    sent_complete = true;
                }
            }
            // The initial lists may complete with nothing to send.
            if !sent_complete
                && batch_deadline.is_none()
                && listed.services
                && listed.slices
                && listed.node
            {
                batch_deadline = Some(Instant::now());
            }
        }
    }

    fn handle(&self, event: Watched, cache: &mut Cache, listed: &mut Listed) {
        let m = &self.metrics;
        match event {
            Watched::Service(event) => match *event {
                Ok(event) => {
                    self.count(&m.watch_events, "services");
                    match event {
                        Event::Apply(s) => cache.set_service(key_of(&s.metadata), Some(slim(s))),
                        Event::Delete(s) => cache.set_service(key_of(&s.metadata), None),
                        Event::Init => {
                            if listed.services {
                                self.count(&m.watch_relists, "services");
                                info!("relisting services");
                            }
                            cache.relisting_services = Some(HashMap::new());
                        }
                        Event::InitApply(s) => {
                            if let Some(buffer) = cache.relisting_services.as_mut() {
                                buffer.insert(key_of(&s.metadata), slim(s));
                            }
                        }
                        Event::InitDone => {
                            let listed_now = cache.relisting_services.take().unwrap_or_default();
                            debug!(services = listed_now.len(), "services listed");
                            cache.replace_services(listed_now);
                            listed.services = true;
                        }
                    }
                }
                Err(e) => {
                    self.count(&m.watch_errors, "services");
                    warn!(
                        "watching services: {e}; retrying, the last known state stays programmed"
                    );
                }
            },
            Watched::Slice(event) => match *event {
                Ok(event) => {
                    self.count(&m.watch_events, "endpointslices");
                    match event {
                        Event::Apply(s) => cache.set_slice(key_of(&s.metadata), Some(slim(s))),
                        Event::Delete(s) => cache.set_slice(key_of(&s.metadata), None),
                        Event::Init => {
                            if listed.slices {
                                self.count(&m.watch_relists, "endpointslices");
                                info!("relisting endpointslices");
                            }
                            cache.relisting_slices = Some(HashMap::new());
                        }
                        Event::InitApply(s) => {
                            if let Some(buffer) = cache.relisting_slices.as_mut() {
                                buffer.insert(key_of(&s.metadata), slim(s));
                            }
                        }
                        Event::InitDone => {
                            let listed_now = cache.relisting_slices.take().unwrap_or_default();
                            debug!(slices = listed_now.len(), "endpointslices listed");
                            cache.replace_slices(listed_now);
                            listed.slices = true;
                        }
                    }
                }
                Err(e) => {
                    self.count(&m.watch_errors, "endpointslices");
                    warn!(
                        "watching endpointslices: {e}; retrying, the last known state stays programmed"
                    );
                }
            },
            Watched::Node(event) => match *event {
                Ok(event) => {
                    self.count(&m.watch_events, "nodes");
                    match event {
                        Event::Apply(n) | Event::InitApply(n) => {
                            let draining = node_draining(&n);
                            if draining != m.is_node_draining() {
                                info!(node = ?n.metadata.name, draining, "node removal: /healthz follows");
                                m.set_node_draining(draining);
                            }
                            let zone = n
                                .metadata
                                .labels
                                .as_ref()
                                .and_then(|l| l.get(ZONE_LABEL))
                                .cloned();
                            if zone != cache.node_zone {
                                info!(node = ?n.metadata.name, zone = ?zone, "node zone (topology hints)");
                                cache.node_zone = zone;
                                cache.node_zone_changed = true;
                            }
                            let addresses = node_addresses(&n);
                            if cache.node_addresses.as_ref() != Some(&addresses) {
                                info!(node = ?n.metadata.name, addresses = ?addresses, "node addresses");
                                cache.node_addresses = Some(addresses);
                                cache.node_addresses_changed = true;
                            }
                        }
                        // A deleted Node keeps its last addresses: the agent is
                        // about to be evicted, and should serve until then.
                        Event::Delete(_) => m.set_node_draining(true),
                        Event::Init => {}
                        Event::InitDone => listed.node = true,
                    }
                }
                Err(e) => {
                    self.count(&m.watch_errors, "nodes");
                    warn!("watching node {:?}: {e}; retrying", self.node_name);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn service(name: &str, ip: &str, rv: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": rv},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))
        .expect("service")
    }

    fn slice(name: &str, service: &str, ips: &[&str], rv: &str) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "default", "resourceVersion": rv,
                "labels": {"kubernetes.io/service-name": service},
                "annotations": {TRIGGER_TIME_ANNOTATION: "2026-11-24T10:00:00.123456789Z"}
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": ips.iter().map(|ip| serde_json::json!({"addresses": [ip]})).collect::<Vec<_>>()
        }))
        .expect("slice")
    }

    fn backends(delta: &StateDelta) -> Vec<String> {
        delta
            .ports
            .values()
            .flatten()
            .flat_map(|sp| sp.endpoints.iter().map(|e| e.addr.to_string()))
            .collect()
    }

    #[test]
    fn only_changed_services_are_translated_and_sent() {
        let mut c = Cache::default();
        c.set_service(
            key_of(&service("a", "10.96.0.1", "1").metadata),
            Some(service("a", "10.96.0.1", "1")),
        );
        c.set_service(
            key_of(&service("b", "10.96.0.2", "1").metadata),
            Some(service("b", "10.96.0.2", "1")),
        );
        let s = slice("a-1", "a", &["10.244.0.1"], "2");
        c.set_slice(key_of(&s.metadata), Some(s));
        let first = c.take_delta();
        assert_eq!(first.ports.len(), 2);
        assert_eq!(backends(&first), vec!["10.244.0.1:8080"]);
        assert_eq!(first.triggered_at.len(), 1);

        // A second slice for a: only a's port is in the next batch.
        let s = slice("a-2", "a", &["10.244.0.2"], "3");
        c.set_slice(key_of(&s.metadata), Some(s));
        let next = c.take_delta();
        assert_eq!(next.ports.len(), 1);
        let mut got = backends(&next);
        got.sort();
        assert_eq!(got, vec!["10.244.0.1:8080", "10.244.0.2:8080"]);

        // Service b deleted: its port goes away.
        c.set_service(("default".into(), "b".into()), None);
        let gone = c.take_delta();
        assert_eq!(gone.ports.len(), 1);
        assert!(gone.ports.values().all(Option::is_none));
        assert!(!c.pending());
    }

    /// A kube-dns → coredns migration: `kube-system/kube-dns` deleted and
    /// `kube-system/coredns` created with the same pinned clusterIP, both
    /// within one batch window (or one relist) — or the deletion arriving
    /// in a later batch. The new owner's frontend must stay programmed.
    #[test]
    fn a_cluster_ip_reused_by_another_service_stays_programmed() {
        let dns = |name: &str| -> (Key, Service) {
            let mut svc = service(name, "10.96.0.10", "1");
            svc.metadata.namespace = Some("kube-system".into());
            (key_of(&svc.metadata), svc)
        };
        let (old_key, old) = dns("kube-dns");
        let (new_key, new) = dns("coredns");
        // Same batch: "coredns" sorts before "kube-dns".
        let mut c = Cache::default();
        c.set_service(old_key.clone(), Some(old.clone()));
        c.take_delta();
        c.set_service(old_key.clone(), None);
        c.set_service(new_key.clone(), Some(new.clone()));
        let delta = c.take_delta();
        assert_eq!(delta.ports.len(), 1, "{:?}", delta.ports.keys());
        let owner = delta
            .ports
            .values()
            .next()
            .and_then(Option::as_ref)
            .map(|sp| sp.name.to_string());
        assert_eq!(
            owner.as_deref(),
            Some("kube-system/coredns:http"),
            "the frontend was removed"
        );

        // The deletion in the next batch must not remove coredns's frontend.
        let mut c = Cache::default();
        c.set_service(old_key.clone(), Some(old));
        c.take_delta();
        c.set_service(new_key, Some(new));
        c.take_delta();
        c.set_service(old_key, None);
        let late = c.take_delta();
        assert!(
            late.ports.is_empty(),
            "kube-dns's deletion removes coredns's frontend: {:?}",
            late.ports
        );
    }

    #[test]
    fn a_node_deleted_or_tainted_for_removal_is_draining() {
        let node = |extra: serde_json::Value| -> Node {
            let mut v = serde_json::json!({"metadata": {"name": "n1"}});
            if let (Some(base), Some(add)) = (v.as_object_mut(), extra.as_object()) {
                for (k, val) in add {
                    base.insert(k.clone(), val.clone());
                }
            }
            serde_json::from_value(v).expect("node")
        };
        assert!(!node_draining(&node(serde_json::json!({}))));
        assert!(node_draining(&node(serde_json::json!({
            "metadata": {"name": "n1", "deletionTimestamp": "2026-12-02T10:00:00Z"}
        }))));
        assert!(node_draining(&node(serde_json::json!({
            "spec": {"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "effect": "NoSchedule"}]}
        }))));
        assert!(!node_draining(&node(serde_json::json!({
            "spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]}
        }))));
    }

    #[test]
    fn relist_sends_only_what_differs() {
        let mut c = Cache::default();
        c.replace_services(HashMap::from([
            (
                ("default".into(), "a".into()),
                service("a", "10.96.0.1", "1"),
            ),
            (
                ("default".into(), "b".into()),
                service("b", "10.96.0.2", "1"),
            ),
        ]));
        c.take_delta();
        // After a watch gap: a unchanged, b deleted meanwhile, c new.
        c.replace_services(HashMap::from([
            (
                ("default".into(), "a".into()),
                service("a", "10.96.0.1", "1"),
            ),
            (
                ("default".into(), "c".into()),
                service("c", "10.96.0.3", "5"),
            ),
        ]));
        let delta = c.take_delta();
        let summary: Vec<(String, bool)> = delta
            .ports
            .iter()
            .map(|(k, v)| (k.ip.to_string(), v.is_some()))
            .collect();
        assert_eq!(
            summary,
            vec![("10.96.0.2".into(), false), ("10.96.0.3".into(), true)]
        );
    }

    #[test]
    fn a_slice_moving_between_services_updates_both() {
        let mut c = Cache::default();
        for (n, ip) in [("a", "10.96.0.1"), ("b", "10.96.0.2")] {
            c.set_service(("default".into(), n.into()), Some(service(n, ip, "1")));
        }
        let s = slice("x", "a", &["10.244.0.9"], "2");
        c.set_slice(key_of(&s.metadata), Some(s));
        c.take_delta();
        let s = slice("x", "b", &["10.244.0.9"], "3");
        c.set_slice(key_of(&s.metadata), Some(s));
        let delta = c.take_delta();
        let by_ip: BTreeMap<String, usize> = delta
            .ports
            .iter()
            .map(|(k, v)| {
                (
                    k.ip.to_string(),
                    v.as_ref().map_or(0, |sp| sp.endpoints.len()),
                )
            })
            .collect();
        assert_eq!(
            by_ip,
            BTreeMap::from([("10.96.0.1".into(), 0), ("10.96.0.2".into(), 1)])
        );
    }

    #[test]
    fn invalid_services_are_counted_and_others_still_sent() {
        let mut c = Cache::default();
        let mut bad = service("bad", "10.96.0.9", "1");
        if let Some(spec) = bad.spec.as_mut() {
            spec.ports.as_mut().expect("ports")[0].port = 70000;
        }
        c.set_service(("default".into(), "bad".into()), Some(bad));
        c.set_service(
            ("default".into(), "ok".into()),
            Some(service("ok", "10.96.0.8", "1")),
        );
        let delta = c.take_delta();
        assert_eq!(delta.ports.len(), 1);
        assert_eq!(c.invalid_count(), 1);
        let reported: Vec<String> = c
            .take_reports()
            .iter()
            .map(|(svc, problems)| format!("{:?}: {}", svc.metadata.name, problems[0].field))
            .collect();
        assert_eq!(
            reported,
            vec![r#"Some("bad"): spec.ports[0].port"#.to_string()]
        );

        // Retranslated with the same problem (a relist, a slice change): not
        // told again; a different problem is.
        c.dirty.insert(("default".into(), "bad".into()));
        c.take_delta();
        assert!(c.take_reports().is_empty());
        let mut worse = service("bad", "10.96.0.9", "2");
        if let Some(spec) = worse.spec.as_mut() {
            spec.ports.as_mut().expect("ports")[0].protocol = Some("SCTP".into());
        }
        c.set_service(("default".into(), "bad".into()), Some(worse));
        c.take_delta();
        let reported = c.take_reports();
        assert_eq!(reported.len(), 1);
        assert!(
            reported[0].1[0].message.contains("SCTP is not supported"),
            "{:?}",
            reported[0].1
        );
    }

    #[test]
    fn trigger_times_parse() {
        let s = slice("a-1", "a", &[], "1");
        let at = trigger_time(&s).expect("parsed");
        let since = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after epoch");
        assert_eq!(since.subsec_nanos(), 123_456_789);
    }
}

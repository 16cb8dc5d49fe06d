//! The API server as the source: watches Services, EndpointSlices and this
//! node's Node (kube-runtime watchers with their backoff), hands what they
//! report to the change tracker (tracker.rs), and sends the agent only the
//! service ports that changed, in short batches.
//!
//! The rules that keep the datapath serving through trouble:
//! - nothing is sent before both Services and EndpointSlices have been
//!   listed in full, so a restarted agent never withdraws a service whose
//!   slices have not arrived yet;
//! - a failing watch (API server down, network cut) changes nothing: the
//!   last known state stays in the maps while the watcher retries;
//! - after a relist (watch restart, `410 Gone`) the new list is compared
//!   with what was known, and only what really changed or vanished is sent.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::source::slice::EndpointSlice;
use anyhow::{Context, Result};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_stream};
use kube::{Api, Client};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::StateDelta;
use super::events::ProblemReporter;
use super::policy_tracker::{PolicyObject, PolicyTracker};
use super::tracker::{ChangeTracker, Key, key_of};
use crate::metrics::{Metrics, ResourceLabel};

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
    /// Watch Pods, Namespaces and NetworkPolicies and enforce the policies.
    pub network_policy: bool,
}

/// The change trackers: services (and their slices and node facts), and
/// NetworkPolicy's objects.
#[derive(Default)]
struct Trackers {
    services: ChangeTracker,
    policy: PolicyTracker,
}

impl Trackers {
    fn pending(&self) -> bool {
        self.services.pending() || self.policy.pending()
    }
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

/// Drops what the source never reads and what can dwarf the rest of an
/// object (managedFields, kubectl's last-applied annotation): at 10 000
/// Services it is most of the change tracker's memory.
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

/// One event from any of the watches.
enum Watched {
    // Boxed: the objects differ a lot in size.
    Service(Box<Result<Event<Service>, watcher::Error>>),
    Slice(Box<Result<Event<EndpointSlice>, watcher::Error>>),
    Node(Box<Result<Event<Node>, watcher::Error>>),
    Pod(Box<Result<Event<Pod>, watcher::Error>>),
    Namespace(Box<Result<Event<Namespace>, watcher::Error>>),
    Policy(Box<Result<Event<NetworkPolicy>, watcher::Error>>),
}

type EventStream = Pin<Box<dyn Stream<Item = Watched> + Send>>;

fn count(family: &Family<ResourceLabel, Counter>, resource: &'static str) {
    family.get_or_create(&ResourceLabel { resource }).inc();
}

/// The list state of a watch that is relisted: the same for every kind.
/// A relist is buffered from `Init` to `InitDone` and handed over whole,
/// so the tracker compares it with what it knew and sends only what changed.
struct Relist<K> {
    /// `services`, `endpointslices`: the metrics label and the log wording.
    resource: &'static str,
    /// The objects of a relist in progress.
    buffer: Option<HashMap<Key, K>>,
    /// The first list is complete.
    listed: bool,
}

/// What one watcher event changes.
enum Change<K> {
    /// One object applied (`Some`) or deleted (`None`).
    One(Key, Option<K>),
    /// A complete list, in place of everything known.
    All(HashMap<Key, K>),
}

impl<K: kube::Resource> Relist<K> {
    fn new(resource: &'static str) -> Self {
        Self {
            resource,
            buffer: None,
            listed: false,
        }
    }

    /// Follows one event; says what it changes once that is known.
    fn on(&mut self, event: Event<K>, metrics: &Metrics) -> Option<Change<K>> {
        match event {
            Event::Apply(o) => Some(Change::One(key_of(o.meta()), Some(slim(o)))),
            Event::Delete(o) => Some(Change::One(key_of(o.meta()), None)),
            Event::Init => {
                if self.listed {
                    count(&metrics.watch_relists, self.resource);
                    info!("relisting {}", self.resource);
                }
                self.buffer = Some(HashMap::new());
                None
            }
            Event::InitApply(o) => {
                if let Some(buffer) = self.buffer.as_mut() {
                    buffer.insert(key_of(o.meta()), slim(o));
                }
                None
            }
            Event::InitDone => {
                self.listed = true;
                Some(Change::All(self.buffer.take().unwrap_or_default()))
            }
        }
    }
}

/// What the lists have delivered so far.
struct Lists {
    services: Relist<Service>,
    slices: Relist<EndpointSlice>,
    /// This node's Node has been listed (or there is no node to watch).
    node: bool,
    /// NetworkPolicy's objects (None: `--network-policy off`).
    policy: Option<PolicyLists>,
}

struct PolicyLists {
    pods: Relist<Pod>,
    namespaces: Relist<Namespace>,
    policies: Relist<NetworkPolicy>,
}

impl Lists {
    /// Whether the first full lists are all in.
    fn complete(&self) -> bool {
        let policy = self
            .policy
            .as_ref()
            .is_none_or(|p| p.pods.listed && p.namespaces.listed && p.policies.listed);
        self.services.listed && self.slices.listed && self.node && policy
    }
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
        if self.network_policy {
            streams.extend(self.policy_streams());
        }
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

    /// Pods, Namespaces and NetworkPolicies, for NetworkPolicy.
    fn policy_streams(&self) -> Vec<EventStream> {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let policies: Api<NetworkPolicy> = Api::all(self.client.clone());
        let config = watcher::Config::default;
        vec![
            watch_stream(pods, config())
                .default_backoff()
                .map(|e| Watched::Pod(Box::new(e)))
                .boxed(),
            watch_stream(namespaces, config())
                .default_backoff()
                .map(|e| Watched::Namespace(Box::new(e)))
                .boxed(),
            watch_stream(policies, config())
                .default_backoff()
                .map(|e| Watched::Policy(Box::new(e)))
                .boxed(),
        ]
    }

    /// Runs until the agent stops listening.
    pub async fn run(self, tx: mpsc::Sender<StateDelta>) {
        let mut events = futures::stream::select_all(self.streams());
        let reporter = ProblemReporter::new(self.client.clone(), self.node_name.as_deref());
        let mut tracker = Trackers::default();
        let mut lists = Lists {
            services: Relist::new("services"),
            slices: Relist::new("endpointslices"),
            node: self.node_name.is_none(),
            policy: self.network_policy.then(|| PolicyLists {
                pods: Relist::new("pods"),
                namespaces: Relist::new("namespaces"),
                policies: Relist::new("networkpolicies"),
            }),
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
                    self.handle(event, &mut tracker, &mut lists);
                    if tracker.pending() && batch_deadline.is_none() {
                        let now = Instant::now();
                        batch_deadline = Some(
                            last_sent.map_or(now, |at| (at + self.batch_window).max(now)),
                        );
                    }
                }
                () = wait => {
                    batch_deadline = None;
                    // Nothing leaves before the first full lists are in.
                    if !lists.complete() {
                        continue;
                    }
                    let delta = self.take_batch(&mut tracker, &reporter, !sent_complete);
                    if tx.send(delta).await.is_err() {
                        return;
                    }
                    last_sent = Some(Instant::now());
                    sent_complete = true;
                }
            }
            // The initial lists may complete with nothing to send.
            if !sent_complete && batch_deadline.is_none() && lists.complete() {
                batch_deadline = Some(Instant::now());
            }
        }
    }

    /// The next batch; the problems found on the way are told to the
    /// Services' owners. The `first` batch is the complete one.
    fn take_batch(
        &self,
        trackers: &mut Trackers,
        reporter: &ProblemReporter,
        first: bool,
    ) -> StateDelta {
        let tracker = &mut trackers.services;
        let mut delta = tracker.take_delta();
        if self.network_policy {
            let (policy, problems) = trackers.policy.take();
            for p in problems {
                warn!("network policy: {p}");
            }
            delta.policy = policy;
        }
        self.metrics
            .objects_invalid
            .set(tracker.invalid_count() as i64);
        for (service, problems) in tracker.take_reports() {
            reporter.report(service, problems);
        }
        if first {
            delta.complete = true;
            info!(
                services = tracker.service_count(),
                slices = tracker.slice_count(),
                pods = trackers.policy.pod_count(),
                service_ports = delta.ports.len(),
                "initial lists complete"
            );
        }
        delta
    }

    fn handle(&self, event: Watched, trackers: &mut Trackers, lists: &mut Lists) {
        let tracker = &mut trackers.services;
        let policy = &mut trackers.policy;
        match event {
            Watched::Service(event) => match self.watched(*event, &mut lists.services) {
                Some(Change::One(key, service)) => tracker.set_service(key, service),
                Some(Change::All(listed)) => {
                    debug!(services = listed.len(), "services listed");
                    tracker.replace_services(listed);
                }
                None => {}
            },
            Watched::Slice(event) => match self.watched(*event, &mut lists.slices) {
                Some(Change::One(key, slice)) => tracker.set_slice(key, slice),
                Some(Change::All(listed)) => {
                    debug!(slices = listed.len(), "endpointslices listed");
                    tracker.replace_slices(listed);
                }
                None => {}
            },
            Watched::Node(event) => self.node_event(*event, tracker, &mut lists.node),
            Watched::Pod(event) => self.policy_event(*event, |l| &mut l.pods, lists, policy),
            Watched::Namespace(event) => {
                self.policy_event(*event, |l| &mut l.namespaces, lists, policy)
            }
            Watched::Policy(event) => self.policy_event(*event, |l| &mut l.policies, lists, policy),
        }
    }

    /// One event of NetworkPolicy's watches, into the policy tracker.
    fn policy_event<K: kube::Resource + PolicyObject>(
        &self,
        event: Result<Event<K>, watcher::Error>,
        relist: impl FnOnce(&mut PolicyLists) -> &mut Relist<K>,
        lists: &mut Lists,
        tracker: &mut PolicyTracker,
    ) {
        let Some(lists) = lists.policy.as_mut() else {
            return;
        };
        match self.watched(event, relist(lists)) {
            Some(Change::One(key, object)) => tracker.set(key, object),
            Some(Change::All(listed)) => tracker.replace(listed),
            None => {}
        }
    }

    /// Counts one event of a relisted watch and says what it changes. A
    /// failing watch changes nothing: the watcher retries with backoff.
    fn watched<K: kube::Resource>(
        &self,
        event: Result<Event<K>, watcher::Error>,
        relist: &mut Relist<K>,
    ) -> Option<Change<K>> {
        let m = &self.metrics;
        match event {
            Ok(event) => {
                count(&m.watch_events, relist.resource);
                relist.on(event, m)
            }
            Err(e) => {
                count(&m.watch_errors, relist.resource);
                warn!(
                    "watching {}: {e}; retrying, the last known state stays programmed",
                    relist.resource
                );
                None
            }
        }
    }

    fn node_event(
        &self,
        event: Result<Event<Node>, watcher::Error>,
        tracker: &mut ChangeTracker,
        listed: &mut bool,
    ) {
        let m = &self.metrics;
        match event {
            Ok(event) => {
                count(&m.watch_events, "nodes");
                match event {
                    Event::Apply(n) | Event::InitApply(n) => self.node_seen(&n, tracker),
                    // A deleted Node keeps its last addresses: the agent is
                    // about to be evicted, and should serve until then.
                    Event::Delete(_) => m.set_node_draining(true),
                    Event::Init => {}
                    Event::InitDone => *listed = true,
                }
            }
            Err(e) => {
                count(&m.watch_errors, "nodes");
                warn!("watching node {:?}: {e}; retrying", self.node_name);
            }
        }
    }

    /// This node as it is now: draining or not, its zone, its addresses.
    fn node_seen(&self, n: &Node, tracker: &mut ChangeTracker) {
        let m = &self.metrics;
        let draining = node_draining(n);
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
        if tracker.set_node_zone(zone.clone()) {
            info!(node = ?n.metadata.name, zone = ?zone, "node zone (topology hints)");
        }
        let addresses = node_addresses(n);
        if tracker.set_node_addresses(addresses.clone()) {
            info!(node = ?n.metadata.name, addresses = ?addresses, "node addresses");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}

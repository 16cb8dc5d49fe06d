//! Applying the source's changes: one pass per delta in kube-proxy's fixed
//! order — take the changes into the desired state, write the maps, record
//! metrics and logs, then housekeeping (health answers, state pinned to
//! backends that left).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, error, info, warn};

use crate::datapath::capacity::Capacity;
use crate::datapath::conntrack;
use crate::datapath::maps::PinnedMaps;
use crate::datapath::policy_sync::PolicySync;
use crate::datapath::socket_pods::{PodAddresses, SocketPods};
use crate::datapath::sync::{MapSync, Scope, SyncReport};
use crate::health::HealthServers;
use crate::metrics::{FrontendCounterSource, Metrics, SyncErrorLabel, SyncLabel};
use crate::model::{DesiredState, Frontend};
use crate::policy::PolicyState;
use crate::source::StateDelta;

/// The desired state and the maps it is written to, with what a pass needs
/// around them.
pub(super) struct Applier {
    pub(super) sync: MapSync<PinnedMaps>,
    pub(super) desired: DesiredState,
    pub(super) health: HealthServers,
    pub(super) metrics: Arc<Metrics>,
    pub(super) capacity: Capacity,
    pub(super) node_name: Option<String>,
    /// The external interfaces' addresses, always served node ports.
    pub(super) interface_ips: Vec<Ipv4Addr>,
    /// `--node-ips` given: the Node object's addresses are not added.
    pub(super) static_node_ips: bool,
    pub(super) socket_lb: bool,
    /// `--socket-lb pods`: the pods whose sockets the hooks translate.
    pub(super) socket_pods: Option<SocketPods>,
    /// NetworkPolicy: the last state the source gave, and its writer.
    pub(super) policy_state: PolicyState,
    pub(super) policy: PolicySync,
}

impl Applier {
    /// This node's pods, as its interfaces and routes show them now.
    pub(super) fn set_pods(&mut self, pods: PodAddresses) {
        if let Some(socket_pods) = &mut self.socket_pods {
            socket_pods.set_pods(pods);
            self.sync_socket_pods();
        }
    }

    /// Brings `sock_pods` in line with the pods found and not opted out.
    fn sync_socket_pods(&mut self) {
        let Some(socket_pods) = &mut self.socket_pods else {
            return;
        };
        if let Err(e) = socket_pods.sync(&mut self.sync.maps_mut().sock_pods) {
            warn!("pods with socket load balancing: {e:#}");
        }
    }

    /// One pass for `delta`; returns how many errors it left (for retries).
    pub(super) fn apply(&mut self, mut delta: StateDelta) -> usize {
        let policy_errors = match delta.policy.take() {
            Some(state) => self.apply_policy(state),
            None => 0,
        };
        let Some((changed, full)) = self.take(&delta) else {
            return policy_errors;
        };
        let started = Instant::now();
        let report = if full {
            self.sync.apply(&self.desired)
        } else {
            self.sync.apply_scoped(&self.desired, Scope::Only(&changed))
        };
        let elapsed = started.elapsed();
        // After the maps, as kube-proxy after its rules: a load balancer
        // that sees 503 finds the node already dropping, one that sees
        // 200 finds it already serving.
        self.health.update(crate::health::wanted(
            &self.desired,
            self.node_name.as_deref(),
        ));
        self.record(&report, &delta, elapsed, full);
        let socket_lb = self.socket_lb.then_some(self.socket_pods.as_ref());
        forget_departed(self.sync.maps_mut(), &report, socket_lb, &self.metrics);
        report.errors.len() + policy_errors
    }

    /// Writes NetworkPolicy's new state; returns 1 if the maps could not
    /// be written (retried with the next resync), else 0. Rules that did
    /// not fit are logged by the writer, not retried.
    fn apply_policy(&mut self, state: PolicyState) -> usize {
        self.policy_state = state;
        if let Some(pods) = &mut self.socket_pods {
            pods.set_excluded(self.policy_state.socket_lb_excluded.clone());
            self.sync_socket_pods();
        }
        match self.policy.apply(self.sync.maps_mut(), &self.policy_state) {
            Ok(_) => 0,
            Err(e) => {
                error!("writing network policy: {e:#}");
                1
            }
        }
    }

    /// Takes `delta` into the desired state and the node's settings: the
    /// service ports that changed and whether everything must be written
    /// (a complete state, new node addresses or zone); `None`: nothing to do.
    fn take(&mut self, delta: &StateDelta) -> Option<(BTreeSet<Frontend>, bool)> {
        let changed = self.desired.apply_delta(delta);
        let mut full = delta.complete;
        if let Some(from_node) = &delta.node_addresses {
            full |= self.node_addresses_from(from_node);
        }
        if let Some(zone) = &delta.node_zone {
            info!(zone = ?zone, "node zone for topology hints changed");
            self.sync.set_zone(zone.clone());
            full = true;
        }
        (full || !changed.is_empty()).then_some((changed, full))
    }

    /// The Node object's addresses join the interfaces' (unless
    /// `--node-ips` fixed them); true when the set changed.
    fn node_addresses_from(&mut self, from_node: &[Ipv4Addr]) -> bool {
        if self.static_node_ips {
            return false;
        }
        let ips: Vec<Ipv4Addr> = self
            .interface_ips
            .iter()
            .chain(from_node)
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if ips == self.sync.node_ips() {
            return false;
        }
        info!(node_ips = ?ips, "node addresses for node ports changed");
        self.sync.set_node_ips(ips);
        true
    }

    /// Metrics and logs of a pass.
    fn record(&self, report: &SyncReport, delta: &StateDelta, elapsed: Duration, full: bool) {
        let metrics = &self.metrics;
        metrics
            .sync_duration
            .get_or_create(&SyncLabel {
                kind: if full { "full" } else { "incremental" },
            })
            .observe(elapsed.as_secs_f64());
        for error in &report.errors {
            metrics
                .sync_errors
                .get_or_create(&SyncErrorLabel { kind: error.kind() })
                .inc();
        }
        for map in &report.full_maps {
            metrics.count_map_full(map);
            let size = self.capacity.size_of(map);
            warn!(
                map,
                capacity = size,
                "map {map} is full ({size} entries): what did not fit is in the sync errors \
                 and not programmed; raise {}",
                Capacity::flag_of(map)
            );
        }
        let now = SystemTime::now();
        let mut slowest: Option<Duration> = None;
        for at in &delta.triggered_at {
            if let Ok(delay) = now.duration_since(*at) {
                metrics.propagation_delay.observe(delay.as_secs_f64());
                slowest = slowest.max(Some(delay));
            }
        }
        log_report(report, elapsed, self.desired.services.len(), slowest);
        publish_programmed(metrics, &self.sync);
    }

    /// Re-reads the maps, so that the full sync of the batch returned
    /// repairs what a failed write left half-done and whatever changed
    /// behind the agent's back.
    pub(super) fn resync(&mut self, why: &str) -> StateDelta {
        if let Err(e) = self.sync.readopt() {
            warn!("re-reading the maps for a {why} resync: {e:#}");
        }
        debug!(why, "full resync");
        self.policy.forget();
        StateDelta {
            complete: true,
            policy: Some(self.policy_state.clone()),
            ..StateDelta::default()
        }
    }
}

fn log_report(
    report: &SyncReport,
    elapsed: Duration,
    services: usize,
    propagation: Option<Duration>,
) {
    for e in &report.errors {
        error!("sync: {e}");
    }
    if report.changed() || !report.errors.is_empty() {
        info!(
            services,
            propagation_ms = propagation.map(|d| d.as_secs_f64() * 1000.0),
            created = report.services_created,
            updated = report.services_updated,
            deleted = report.services_deleted,
            backends_created = report.backends_created,
            backends_deleted = report.backends_deleted,
            errors = report.errors.len(),
            elapsed_us = elapsed.as_micros() as u64,
            "maps synced"
        );
    }
}

/// Exports what the maps hold: counts and the frontends whose per-service
/// counters `/metrics` reads.
fn publish_programmed(metrics: &Metrics, sync: &MapSync<PinnedMaps>) {
    let programmed = sync.programmed();
    metrics.frontends_programmed.set(programmed.len() as i64);
    metrics.backends_programmed.set(sync.backend_count() as i64);
    metrics.set_map_entries(
        "services",
        programmed.values().map(|p| 1 + p.slots.len()).sum(),
    );
    metrics.set_map_entries("backends", sync.backend_count());
    metrics.set_frontends(
        programmed
            .iter()
            .map(|(frontend, p)| FrontendCounterSource {
                service_id: p.service_id,
                service: p.name.clone(),
                frontend: frontend.to_string(),
            })
            .collect(),
    );
}

/// State pinned to backends that left their frontends goes with them, as
/// kube-proxy flushes conntrack: UDP flows, affinity pins and, with socket
/// LB (`socket_lb`: with the pods it covers, if any), sockets' cached
/// choices and connected UDP sockets, in the node's network namespace and
/// each translated pod's.
fn forget_departed(
    maps: &mut PinnedMaps,
    report: &SyncReport,
    socket_lb: Option<Option<&SocketPods>>,
    metrics: &Metrics,
) {
    let udp_gone = report.udp_backends_gone();
    match conntrack::flush_backends(maps, &udp_gone) {
        Ok(0) => {}
        Ok(n) => info!(flows = n, "flushed UDP flows of removed backends"),
        Err(e) => warn!("flushing UDP flows of removed backends: {e:#}"),
    }
    match maps.flush_affinity(&report.departed) {
        Ok(0) => {}
        Ok(n) => info!(pins = n, "dropped affinity pins to removed backends"),
        Err(e) => warn!("dropping affinity pins to removed backends: {e:#}"),
    }
    let Some(socket_pods) = socket_lb else {
        return;
    };
    if udp_gone.is_empty() {
        return;
    }
    let pods = socket_pods.iter().flat_map(|p| p.translated());
    let namespaces: Vec<Option<PathBuf>> = std::iter::once(None)
        .chain(pods.map(|(_, pod)| Some(pod.netns.clone())))
        .collect();
    match crate::datapath::socket_lb::forget_departed(maps, &udp_gone, &namespaces) {
        Ok(f) if f == Default::default() => {}
        Ok(f) => {
            metrics.socket_lb_aborted.inc_by(f.aborted as u64);
            info!(
                choices = f.choices,
                sockets_aborted = f.aborted,
                "sockets no longer aimed at removed UDP backends"
            );
        }
        Err(e) => warn!("sockets of removed UDP backends: {e:#}"),
    }
}

//! Prometheus metrics: what the agent programmed and how fast, the watch's
//! health, map pressure, and the datapath's own counters (read from the
//! per-CPU maps at scrape time, so they are never stale).

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lb_common::reason;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::datapath::capacity::Capacity;
use crate::datapath::maps::PinnedMaps;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabel {
    pub resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabel {
    /// `full` (first sync, relists, node address changes) or `incremental`.
    pub kind: &'static str,
}

/// What a sync error was about.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncErrorLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    pub map: &'static str,
}

/// A service frontend as the maps know it, for per-service counters.
#[derive(Clone, Debug)]
pub struct FrontendCounterSource {
    pub service_id: u32,
    pub service: String,
    pub frontend: String,
}

pub struct Metrics {
    pub frontends_programmed: Gauge,
    pub backends_programmed: Gauge,
    pub objects_invalid: Gauge,
    pub sync_duration: Family<SyncLabel, Histogram>,
    pub sync_errors: Family<SyncErrorLabel, Counter>,
    pub propagation_delay: Histogram,
    pub watch_events: Family<ResourceLabel, Counter>,
    pub watch_errors: Family<ResourceLabel, Counter>,
    pub watch_relists: Family<ResourceLabel, Counter>,
    pub map_entries: Family<MapLabel, Gauge>,
    pub map_capacity: Family<MapLabel, Gauge>,
    pub map_full: Family<MapLabel, Counter>,
    /// Host UDP sockets aborted because their backend left the service.
    pub socket_lb_aborted: Counter,
    registry: Mutex<Registry>,
    ready: AtomicBool,
    /// The Node is being deleted or marked for removal: `/healthz` says so.
    node_draining: AtomicBool,
    heartbeat: Mutex<Instant>,
    frontends: std::sync::Arc<Mutex<Vec<FrontendCounterSource>>>,
}

/// Reads the datapath's per-CPU counters at scrape time.
#[derive(Debug)]
struct DatapathCounters {
    pin_dir: PathBuf,
    frontends: std::sync::Arc<Mutex<Vec<FrontendCounterSource>>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FrontendLabel {
    service: String,
    frontend: String,
}

impl Collector for DatapathCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // No maps (agent still starting, or removed): no datapath series.
        let Ok(maps) = PinnedMaps::open(&self.pin_dir) else {
            return Ok(());
        };
        {
            let mut family = encoder.encode_descriptor(
                "switchyard_datapath_packets",
                "Packets seen by the datapath, by what it did with them (inspect stats)",
                None,
                MetricType::Counter,
            )?;
            for r in 0..reason::COUNT {
                let label = ReasonLabel {
                    reason: reason::NAMES[r as usize],
                };
                ConstCounter::new(maps.reason_count(r)).encode(family.encode_family(&label)?)?;
            }
        }
        let frontends = self.frontends.lock().map(|f| f.clone()).unwrap_or_default();
        let per_frontend: Vec<_> = frontends
            .iter()
            .map(|f| {
                (
                    FrontendLabel {
                        service: f.service.clone(),
                        frontend: f.frontend.clone(),
                    },
                    maps.service_counters(f.service_id),
                )
            })
            .collect();
        type Pick = fn(&lb_common::ServiceCounters) -> u64;
        let series: [(&str, &str, Pick); 4] = [
            (
                "switchyard_service_packets",
                "Packets translated to a backend, per service frontend",
                |c| c.packets,
            ),
            (
                "switchyard_service_bytes",
                "Bytes translated to a backend, per service frontend",
                |c| c.bytes,
            ),
            (
                "switchyard_service_new_flows",
                "New flows given a backend, per service frontend",
                |c| c.new_flows,
            ),
            (
                "switchyard_service_no_backend_packets",
                "Packets refused because the frontend had no ready backend",
                |c| c.no_backend,
            ),
        ];
        for (name, help, pick) in series {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (label, counters) in &per_frontend {
                ConstCounter::new(pick(counters)).encode(family.encode_family(label)?)?;
            }
        }
        Ok(())
    }
}

impl Metrics {
    pub fn new(pin_dir: PathBuf) -> Self {
        let mut registry = Registry::default();
        let sync_duration = Family::<SyncLabel, Histogram>::new_with_constructor(|| {
            // 50 µs .. ~1.6 s
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        // 1 ms .. ~16 s
        let propagation_delay = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let metrics = Self {
            frontends_programmed: Gauge::default(),
            backends_programmed: Gauge::default(),
            objects_invalid: Gauge::default(),
            sync_duration,
            sync_errors: Family::default(),
            socket_lb_aborted: Counter::default(),
            propagation_delay,
            watch_events: Family::default(),
            watch_errors: Family::default(),
            watch_relists: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            map_full: Family::default(),
            registry: Mutex::new(Registry::default()),
            ready: AtomicBool::new(false),
            node_draining: AtomicBool::new(false),
            heartbeat: Mutex::new(Instant::now()),
            frontends: Default::default(),
        };
        registry.register(
            "switchyard_frontends_programmed",
            "Service frontends (IP:port/protocol) in the services map",
            metrics.frontends_programmed.clone(),
        );
        registry.register(
            "switchyard_backends_programmed",
            "Backends in the backends map",
            metrics.backends_programmed.clone(),
        );
        registry.register(
            "switchyard_objects_invalid",
            "Services and EndpointSlices (or parts of them) that could not be programmed",
            metrics.objects_invalid.clone(),
        );
        registry.register(
            "switchyard_sync_duration_seconds",
            "Time to apply one batch of changes to the maps",
            metrics.sync_duration.clone(),
        );
        registry.register(
            "switchyard_sync_errors",
            "Frontends or backends that could not be written, by kind (backend, frontend, already_served)",
            metrics.sync_errors.clone(),
        );
        registry.register(
            "switchyard_socket_lb_sockets_aborted",
            "Host processes' connected UDP sockets aborted because their backend left the service (socket LB)",
            metrics.socket_lb_aborted.clone(),
        );
        registry.register(
            "switchyard_propagation_delay_seconds",
            "From an EndpointSlice change at the API server (last-change-trigger-time) to the maps holding it",
            metrics.propagation_delay.clone(),
        );
        registry.register(
            "switchyard_watch_events",
            "Watch events received from the API server",
            metrics.watch_events.clone(),
        );
        registry.register(
            "switchyard_watch_errors",
            "Watch failures (the watch is retried with backoff)",
            metrics.watch_errors.clone(),
        );
        registry.register(
            "switchyard_watch_relists",
            "Full relists after a watch restart",
            metrics.watch_relists.clone(),
        );
        registry.register(
            "switchyard_map_entries",
            "Entries in a BPF map (conntrack and affinity as of the last sweep)",
            metrics.map_entries.clone(),
        );
        registry.register(
            "switchyard_map_capacity",
            "Maximum entries of a BPF map",
            metrics.map_capacity.clone(),
        );
        registry.register(
            "switchyard_map_full",
            "Syncs that found a map full (services, backends), or sweeps that found an LRU map \
             (conntrack, affinity) at 80 % or more of its size, where it evicts entries",
            metrics.map_full.clone(),
        );
        metrics.set_capacity(&Capacity::default());
        registry.register_collector(Box::new(DatapathCounters {
            pin_dir,
            frontends: metrics.frontends.clone(),
        }));
        if let Ok(mut slot) = metrics.registry.lock() {
            *slot = registry;
        }
        metrics
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            // Writing to a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }

    /// The sizes of the maps as created.
    pub fn set_capacity(&self, capacity: &Capacity) {
        for (map, max, _) in capacity.rows() {
            self.map_capacity
                .get_or_create(&MapLabel { map })
                .set(i64::from(max));
        }
    }

    pub fn count_map_full(&self, map: &'static str) {
        self.map_full.get_or_create(&MapLabel { map }).inc();
    }

    pub fn set_map_entries(&self, map: &'static str, entries: usize) {
        self.map_entries
            .get_or_create(&MapLabel { map })
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// The frontends whose per-service counters are exported.
    pub fn set_frontends(&self, frontends: Vec<FrontendCounterSource>) {
        if let Ok(mut slot) = self.frontends.lock() {
            *slot = frontends;
        }
    }

    /// Ready: the first complete state from the source is in the maps.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// This node is going away (its Node has a deletionTimestamp or the
    /// cluster autoscaler's `ToBeDeletedByClusterAutoscaler` taint).
    pub fn set_node_draining(&self, draining: bool) {
        self.node_draining.store(draining, Ordering::Release);
    }

    pub fn is_node_draining(&self) -> bool {
        self.node_draining.load(Ordering::Acquire)
    }

    /// The agent's main loop is alive.
    pub fn beat(&self) {
        if let Ok(mut at) = self.heartbeat.lock() {
            *at = Instant::now();
        }
    }

    pub fn since_heartbeat(&self) -> Duration {
        self.heartbeat
            .lock()
            .map(|at| at.elapsed())
            .unwrap_or(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_series() {
        let m = Metrics::new(PathBuf::from("/nonexistent/switchyard-test"));
        m.frontends_programmed.set(3);
        m.sync_duration
            .get_or_create(&SyncLabel {
                kind: "incremental",
            })
            .observe(0.001);
        m.watch_errors
            .get_or_create(&ResourceLabel {
                resource: "services",
            })
            .inc();
        let text = m.render();
        assert!(text.contains("switchyard_frontends_programmed 3"), "{text}");
        assert!(
            text.contains("switchyard_sync_duration_seconds_count{kind=\"incremental\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_watch_errors_total{resource=\"services\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("switchyard_map_capacity{map=\"conntrack\"} 262144"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}

//! Conntrack sweeps on a thread of their own. A sweep walks the whole
//! table — hundreds of milliseconds at 200 000 entries — and must not hold
//! up endpoint changes, which the agent's loop applies. The sweeper has its
//! own handles on the pinned maps (the kernel's maps are shared; the
//! datapath and the sync path change entries while it walks, which the
//! sweep already allows for).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lb_common::map_names;
use tracing::{debug, warn};

use crate::datapath::admission::Gate;
use crate::datapath::backend_load;
use crate::datapath::capacity::Capacity;
use crate::datapath::conntrack::{self, Timeouts};
use crate::datapath::maps::PinnedMaps;
use crate::metrics::Metrics;

/// The sweeper thread; stopped (and joined) on drop.
pub struct Sweeper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the sweeps do and report to.
pub struct SweepConfig {
    pub interval: Duration,
    pub timeouts: Timeouts,
    pub gate: Gate,
    pub capacity: Capacity,
    pub metrics: Arc<Metrics>,
}

impl Sweeper {
    pub fn start(pin_dir: &Path, cfg: SweepConfig) -> Result<Self> {
        let maps = PinnedMaps::open(pin_dir).context("opening the maps for conntrack sweeps")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("conntrack-sweeper".into())
            .spawn(move || run(maps, cfg, &stopping))
            .context("starting the conntrack sweeper")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(mut maps: PinnedMaps, mut cfg: SweepConfig, stop: &AtomicBool) {
    // Short naps, so a stop is seen within a tenth of a second.
    const NAP: Duration = Duration::from_millis(100);
    let mut next = Instant::now() + cfg.interval;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() < next {
            std::thread::sleep(NAP.min(next.saturating_duration_since(Instant::now())));
            continue;
        }
        next = Instant::now() + cfg.interval;
        sweep_once(&mut maps, &mut cfg);
    }
}

fn sweep_once(maps: &mut PinnedMaps, cfg: &mut SweepConfig) {
    let started = Instant::now();
    match conntrack::collect_garbage(maps, conntrack::monotonic_ns(), &cfg.timeouts) {
        Ok(sweep) => {
            if let Err(e) = cfg
                .gate
                .after_sweep(maps, sweep.remaining, &sweep.flows_by_source)
            {
                warn!("conntrack admission: {e:#}");
            }
            if let Err(e) = backend_load::after_sweep(maps, &sweep) {
                warn!("counting backends' open flows: {e:#}");
            }
            cfg.metrics.set_map_entries("conntrack", sweep.remaining);
            crate::agent::near_full(
                &cfg.metrics,
                map_names::CONNTRACK,
                sweep.remaining,
                cfg.capacity.conntrack,
            );
            if sweep.connections + sweep.orphans + sweep.reused > 0 {
                debug!(
                    connections = sweep.connections,
                    orphans = sweep.orphans,
                    reused = sweep.reused,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "conntrack sweep"
                );
            }
        }
        Err(e) => warn!("conntrack sweep: {e:#}"),
    }
    if let Ok(n) = maps.affinity_entries() {
        cfg.metrics.set_map_entries("affinity", n);
        crate::agent::near_full(&cfg.metrics, map_names::AFFINITY, n, cfg.capacity.affinity);
    }
}

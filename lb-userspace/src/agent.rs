//! `switchyard agent`: keeps the datapath in line with a source of cluster
//! state and attached to the pod interfaces that come and go.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::datapath::conntrack::{self, Timeouts};
use crate::datapath::ifaces::{self, IfaceGlobs};
use crate::datapath::loader::{self, Datapath, XdpChoice};
use crate::datapath::maps::PinnedMaps;
use crate::datapath::sync::{MapSync, Selection, SyncReport};
use crate::health::HealthServers;
use crate::model::DesiredState;
use crate::source::standalone;

pub struct AgentConfig {
    pub standalone_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub pod_ifaces: IfaceGlobs,
    pub bpf_object: Option<PathBuf>,
    pub node_name: Option<String>,
    /// How often the manifest directory and the interface list are polled.
    pub poll_interval: Duration,
    /// How often conntrack is swept for expired connections.
    pub conntrack_gc_interval: Duration,
    pub conntrack_timeouts: Timeouts,
    /// The node's external interfaces (NodePort, load-balancer traffic).
    pub external_ifaces: Option<IfaceGlobs>,
    /// Node addresses to serve node ports on; empty: those of the external
    /// interfaces.
    pub node_ips: Vec<Ipv4Addr>,
    /// Source ports for SNAT, inclusive.
    pub snat_ports: (u16, u16),
    pub selection: Selection,
    pub xdp: XdpChoice,
}

/// The node's addresses: given, or read off its external interfaces.
fn node_addresses(cfg: &AgentConfig) -> Result<Vec<Ipv4Addr>> {
    if !cfg.node_ips.is_empty() {
        return Ok(cfg.node_ips.clone());
    }
    match &cfg.external_ifaces {
        Some(globs) => {
            ifaces::ipv4_addresses(globs).context("reading the external interfaces' addresses")
        }
        None => Ok(Vec::new()),
    }
}

/// Writes the SNAT address and ports, and reserves the ports from local
/// sockets' ephemeral allocation so a SNATed flow never meets a local one.
fn configure_snat(
    maps: &mut PinnedMaps,
    snat_ip: Option<Ipv4Addr>,
    (min, max): (u16, u16),
) -> Result<()> {
    let config = lb_common::NatConfig {
        snat_ip_be: snat_ip.map_or(0, crate::datapath::addr::ip_be),
        port_min: min,
        port_max: max,
    };
    maps.nat_config
        .set(0, config, 0)
        .context("writing nat_config")?;
    let path = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let current = std::fs::read_to_string(path).unwrap_or_default();
    let range = format!("{min}-{max}");
    if !current.split(',').any(|r| r.trim() == range) {
        let updated = if current.trim().is_empty() {
            range.clone()
        } else {
            format!("{},{range}", current.trim())
        };
        std::fs::write(path, updated)
            .with_context(|| format!("reserving SNAT ports {range} in {path}"))?;
    }
    if let Ok(ephemeral) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") {
        let bounds: Vec<u16> = ephemeral
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if let [low, high] = bounds[..]
            && min <= high
            && max >= low
        {
            warn!(ephemeral = %ephemeral.trim(), snat = %range, "SNAT ports overlap the ephemeral range; they are reserved, but a separate range is better");
        }
    }
    info!(snat_ip = ?snat_ip, ports = %range, "SNAT configured");
    Ok(())
}

fn log_report(report: &SyncReport, elapsed: Duration, services: usize) {
    for e in &report.errors {
        error!("sync: {e}");
    }
    if report.changed() || !report.errors.is_empty() {
        info!(
            services,
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

pub async fn run(cfg: AgentConfig) -> Result<()> {
    let object = loader::find_object(cfg.bpf_object.as_deref())?;
    let mut datapath = Datapath::load(&object, &cfg.pin_dir, cfg.xdp)?;
    let mut maps = PinnedMaps::open(&cfg.pin_dir)?;
    let node_ips = node_addresses(&cfg)?;
    configure_snat(&mut maps, node_ips.first().copied(), cfg.snat_ports)?;
    let mut sync = MapSync::adopt(maps)
        .context("adopting the pinned maps")?
        .with_node(cfg.node_name.clone())
        .with_node_ips(node_ips.clone())
        .with_selection(cfg.selection);
    info!(node_ips = ?node_ips, "node addresses for node ports");
    let mut health = HealthServers::default();
    if cfg.node_name.is_none() {
        warn!(
            "no --node-name (or NODE_NAME): services with internalTrafficPolicy Local get no backends"
        );
    }
    info!(
        node = cfg.node_name.as_deref().unwrap_or("(unset)"),
        adopted_services = sync.programmed().len(),
        "agent starting"
    );

    let (tx, mut desired_rx) = watch::channel(DesiredState::default());
    let source = tokio::spawn(standalone::watch_dir(
        cfg.standalone_dir.clone(),
        cfg.poll_interval,
        tx,
    ));

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;

    // The first state from the source is applied before attaching, so the
    // programs never see half-filled maps on a fresh node.
    tokio::select! {
        changed = desired_rx.changed() => {
            if changed.is_err() {
                bail!("the standalone source stopped before delivering any state");
            }
        }
        _ = sigterm.recv() => return Ok(()),
        _ = sigint.recv() => return Ok(()),
    }
    let node_name = cfg.node_name.clone();
    let mut apply = |sync: &mut MapSync<PinnedMaps>, desired: &DesiredState| {
        health.update(crate::health::wanted(desired, node_name.as_deref()));
        let started = Instant::now();
        let report = sync.apply(desired);
        log_report(&report, started.elapsed(), desired.services.len());
        match conntrack::flush_backends(sync.maps_mut(), &report.udp_backends_gone()) {
            Ok(0) => {}
            Ok(n) => info!(flows = n, "flushed UDP flows of removed backends"),
            Err(e) => warn!("flushing UDP flows of removed backends: {e:#}"),
        }
        match sync.maps_mut().flush_affinity(&report.departed) {
            Ok(0) => {}
            Ok(n) => info!(pins = n, "dropped affinity pins to removed backends"),
            Err(e) => warn!("dropping affinity pins to removed backends: {e:#}"),
        }
    };
    let first = desired_rx.borrow_and_update().clone();
    apply(&mut sync, &first);
    if let Err(e) = ifaces::reconcile(&mut datapath, &cfg.pod_ifaces, cfg.external_ifaces.as_ref())
    {
        warn!("listing interfaces: {e:#}");
    }
    info!(
        services = sync.programmed().len(),
        interfaces = datapath.attached().count(),
        "initial sync complete"
    );

    let mut iface_tick = tokio::time::interval(cfg.poll_interval);
    let mut gc_tick = tokio::time::interval(cfg.conntrack_gc_interval);
    let outcome = loop {
        tokio::select! {
            changed = desired_rx.changed() => {
                if changed.is_err() {
                    break Err(anyhow::anyhow!("the standalone source stopped"));
                }
                let desired = desired_rx.borrow_and_update().clone();
                apply(&mut sync, &desired);
            }
            _ = iface_tick.tick() => {
                if let Err(e) = ifaces::reconcile(&mut datapath, &cfg.pod_ifaces, cfg.external_ifaces.as_ref()) {
                    warn!("listing interfaces: {e:#}");
                }
            }
            _ = gc_tick.tick() => {
                let now = conntrack::monotonic_ns();
                match conntrack::collect_garbage(sync.maps_mut(), now, &cfg.conntrack_timeouts) {
                    Ok(sweep) if sweep.connections + sweep.orphans > 0 => {
                        debug!(connections = sweep.connections, orphans = sweep.orphans, "conntrack sweep");
                    }
                    Ok(_) => {}
                    Err(e) => warn!("conntrack sweep: {e:#}"),
                }
            }
            _ = sigterm.recv() => break Ok(()),
            _ = sigint.recv() => break Ok(()),
        }
    };
    source.abort();
    datapath.detach_all();
    info!(pin_dir = %cfg.pin_dir.display(), "agent stopped; maps stay pinned for the next start");
    outcome
}

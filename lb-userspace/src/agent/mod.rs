//! `switchyard agent`: keeps the datapath in line with a source of cluster
//! state and attached to the pod interfaces that come and go.

mod applier;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::datapath::admission;
use crate::datapath::capacity::Capacity;
use crate::datapath::conntrack::Timeouts;
use crate::datapath::ifaces::{self, IfaceGlobs, IfaceRoles};
use crate::datapath::link_events::LinkEvents;
use crate::datapath::loader::{self, Datapath, XdpChoice};
use crate::datapath::maps::PinnedMaps;
use crate::datapath::policy_sync::PolicySync;
use crate::datapath::socket_pods::SocketPods;
use crate::datapath::sync::{MapSync, Selection};
use crate::health::HealthServers;
use crate::metrics::Metrics;
use crate::model::DesiredState;
use crate::policy::PolicyState;
use crate::source::kubernetes::{self, KubernetesSource};
use crate::source::owner::OwnerWatch;
use crate::source::{StateDelta, standalone};
use crate::sweeper::{SweepConfig, Sweeper};
use applier::Applier;

/// Where the cluster's Services and EndpointSlices come from.
pub enum SourceConfig {
    /// Manifests in a directory, followed while running.
    Standalone(PathBuf),
    /// An API server: this kubeconfig, or the in-cluster configuration.
    Kubernetes { kubeconfig: Option<PathBuf> },
}

pub struct AgentConfig {
    /// Sizes of the maps, when this run creates them.
    pub capacity: Capacity,
    pub source: SourceConfig,
    /// Where /metrics, /healthz, /livez and /readyz are served.
    pub http_addrs: Vec<SocketAddr>,
    /// API changes arriving this close together are applied as one batch.
    pub batch_window: Duration,
    pub pin_dir: PathBuf,
    pub pod_ifaces: IfaceGlobs,
    pub bpf_object: Option<PathBuf>,
    pub node_name: Option<String>,
    /// Whether pods' connection-changing packets must come from their own
    /// addresses (lb-ebpf spoof.rs).
    pub pod_source_check: bool,
    /// NetworkPolicy enforced (lb-ebpf policy.rs), from the source's Pods,
    /// Namespaces and NetworkPolicies.
    pub network_policy: bool,
    /// How often the manifest directory is polled.
    pub poll_interval: Duration,
    /// How often the interface list is re-read besides link notifications.
    pub iface_poll_interval: Duration,
    /// How often conntrack is swept for expired connections.
    pub conntrack_gc_interval: Duration,
    /// How often the maps are re-read and the whole state rewritten.
    pub resync_interval: Duration,
    pub conntrack_timeouts: Timeouts,
    /// Tracked flows per client address (admission.rs); `None`: the default
    /// share of the table, 0: no quota.
    pub conntrack_flows_per_source: Option<u32>,
    /// The node's external interfaces (NodePort, load-balancer traffic).
    pub external_ifaces: Option<IfaceGlobs>,
    /// Overlay tunnel devices: node-port requests and replies arrive and
    /// leave through them decapsulated.
    pub tunnel_ifaces: Option<IfaceGlobs>,
    /// Node addresses to serve node ports on; empty: those of the external
    /// interfaces.
    pub node_ips: Vec<Ipv4Addr>,
    /// Source ports for SNAT, inclusive.
    pub snat_ports: (u16, u16),
    /// Where the node's sysctls are (`/proc/sys`; in a container, the host's
    /// mounted elsewhere).
    pub sysctl_dir: PathBuf,
    pub selection: Selection,
    pub xdp: XdpChoice,
    /// On a graceful stop, leave the programs attached (for an upgrade: the
    /// next agent takes the links over without a gap).
    pub keep_datapath_on_exit: bool,
    /// `NAMESPACE/NAME` of the DaemonSet running this agent: once it is
    /// deleted (uninstall), a stop removes the datapath despite
    /// `keep_datapath_on_exit`.
    pub owner_daemonset: Option<String>,
    /// XDP forwards SNAT flows' client packets itself.
    pub xdp_snat: bool,
    /// Socket-level load balancing: the cgroup (v2) its hooks attach to,
    /// and whether this node's pods are translated too.
    pub socket_lb: Option<SocketLb>,
}

/// `--socket-lb host|pods` with `--cgroup`.
#[derive(Clone, Debug)]
pub struct SocketLb {
    pub cgroup: PathBuf,
    /// `pods`: this node's pods' sockets too, not only the node's own.
    pub pods: bool,
    /// Where network namespaces are bound by name (pods' are also found
    /// through /proc).
    pub netns_dir: PathBuf,
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
    sysctl_dir: &std::path::Path,
    xdp_snat: bool,
) -> Result<()> {
    let config = lb_common::NatConfig {
        snat_ip_be: snat_ip.map_or(0, crate::datapath::addr::ip_be),
        port_min: min,
        port_max: max,
        flags: if xdp_snat {
            lb_common::nat_flags::XDP_SNAT
        } else {
            0
        },
    };
    maps.nat_config
        .set(0, config, 0)
        .context("writing nat_config")?;
    let path = sysctl_dir.join("net/ipv4/ip_local_reserved_ports");
    let path = path.display().to_string();
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    let range = format!("{min}-{max}");
    if !current.split(',').any(|r| r.trim() == range) {
        let updated = if current.trim().is_empty() {
            range.clone()
        } else {
            format!("{},{range}", current.trim())
        };
        std::fs::write(&path, updated)
            .with_context(|| format!("reserving SNAT ports {range} in {path}"))?;
    }
    if let Ok(ephemeral) = std::fs::read_to_string(sysctl_dir.join("net/ipv4/ip_local_port_range"))
    {
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

/// LRU maps never refuse an entry: when out of free entries they evict the
/// least recently used (for conntrack: idle connections lose their
/// backend). The kernel's per-CPU free lists make that start before the map
/// is quite full, so warn and count from 80 %.
pub(crate) fn near_full(metrics: &Metrics, map: &'static str, entries: usize, size: u32) {
    if size > 0 && entries as u64 * 5 >= u64::from(size) * 4 {
        metrics.count_map_full(map);
        warn!(
            map,
            entries,
            capacity = size,
            "map {map} is {}% full ({entries} of {size}): new entries will soon be refused (conntrack) or evict the oldest (affinity); raise {}",
            entries as u64 * 100 / u64::from(size),
            Capacity::flag_of(map)
        );
    }
}

/// When a sync that left errors is tried again: after 1 s, doubling up to
/// 30 s while errors remain, as kube-proxy retries a failed sync.
#[derive(Default)]
struct Retry {
    at: Option<tokio::time::Instant>,
    backoff: Duration,
}

impl Retry {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    /// Notes how a sync went: errors schedule (or push back) a retry.
    fn after(&mut self, errors: usize) {
        if errors == 0 {
            *self = Self::default();
            return;
        }
        self.backoff = if self.backoff.is_zero() {
            Self::FIRST
        } else {
            (self.backoff * 2).min(Self::MAX)
        };
        self.at = Some(tokio::time::Instant::now() + self.backoff);
        warn!(
            errors,
            retry_in_s = self.backoff.as_secs(),
            "sync left errors: retrying with a full resync"
        );
    }

    /// Resolves when a retry is due; never without one.
    async fn due(&self) {
        match self.at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}

/// The next link change, or never without a subscription.
async fn links_changed(events: Option<&LinkEvents>) -> Result<()> {
    match events {
        Some(events) => events.changed().await,
        None => std::future::pending().await,
    }
}

pub async fn run(cfg: AgentConfig) -> Result<()> {
    let (mut datapath, link_events) = load(&cfg)?;
    let capacity = Capacity::of_pinned(&cfg.pin_dir, &cfg.capacity)?;
    let (sync, gate, node_ips) = prepare_maps(&cfg, &capacity)?;
    let metrics = Arc::new(Metrics::new(cfg.pin_dir.clone()));
    let sweeper = Sweeper::start(
        &cfg.pin_dir,
        SweepConfig {
            interval: cfg.conntrack_gc_interval,
            timeouts: cfg.conntrack_timeouts,
            gate,
            capacity,
            metrics: metrics.clone(),
        },
    )?;
    metrics.set_capacity(&capacity);
    let mut http_servers = Vec::new();
    for addr in &cfg.http_addrs {
        http_servers.push(crate::http::serve(*addr, metrics.clone()).await?);
    }
    let (tx, mut deltas) = mpsc::channel::<StateDelta>(16);
    let (source, owner_watch) = start_source(&cfg, &metrics, tx).await?;
    let mut signals = Signals::install()?;

    // The first complete state from the source is applied before attaching,
    // so the programs never see half-filled maps on a fresh node; a restarted
    // agent keeps serving from the pinned maps meanwhile.
    let mut desired = DesiredState::default();
    let Some(first) = first_complete_state(&mut deltas, &mut desired, &mut signals).await? else {
        return Ok(());
    };
    let mut applier = Applier {
        sync,
        desired,
        health: HealthServers::default(),
        metrics: metrics.clone(),
        capacity,
        node_name: cfg.node_name.clone(),
        interface_ips: node_ips,
        static_node_ips: !cfg.node_ips.is_empty(),
        socket_lb: cfg.socket_lb.is_some(),
        socket_pods: cfg
            .socket_lb
            .as_ref()
            .filter(|s| s.pods)
            .map(|s| SocketPods::new(s.netns_dir.clone(), "/proc".into())),
        policy_state: PolicyState::default(),
        policy: PolicySync::default(),
    };
    let mut retry = Retry::default();
    retry.after(applier.apply(first));
    let roles = attach(&mut datapath, &cfg, &mut applier)?;
    metrics.set_ready();
    trim_memory(&applier, &datapath);

    let outcome = event_loop(
        &cfg,
        (&mut applier, &mut retry),
        (&mut datapath, &roles, link_events.as_ref()),
        &mut deltas,
        &mut signals,
        &metrics,
    )
    .await;
    drop(sweeper);
    source.abort();
    for server in http_servers {
        server.abort();
    }
    shutdown(&cfg, datapath, applier, owner_watch.as_ref()).await?;
    outcome
}

/// Loads (or takes over) the BPF object and subscribes to link changes —
/// before the first attachment pass, so no new interface falls between it
/// and the first notification.
fn load(cfg: &AgentConfig) -> Result<(Datapath, Option<LinkEvents>)> {
    let object = loader::find_object(cfg.bpf_object.as_deref())?;
    let mut datapath = Datapath::load(&object, &cfg.pin_dir, cfg.xdp, &cfg.capacity)?;
    if !cfg.pod_source_check {
        datapath.disable_source_checks()?;
        info!("pod source-address checks off (--pod-source-check off)");
    }
    let link_events = LinkEvents::subscribe()
        .inspect_err(|e| warn!("no link notifications, interfaces are found by polling: {e:#}"))
        .ok();
    Ok((datapath, link_events))
}

/// SNAT and admission settings written, the pinned maps adopted.
fn prepare_maps(
    cfg: &AgentConfig,
    capacity: &Capacity,
) -> Result<(MapSync<PinnedMaps>, admission::Gate, Vec<Ipv4Addr>)> {
    let mut maps = PinnedMaps::open(&cfg.pin_dir)?;
    let node_ips = node_addresses(cfg)?;
    configure_snat(
        &mut maps,
        node_ips.first().copied(),
        cfg.snat_ports,
        &cfg.sysctl_dir,
        cfg.xdp_snat,
    )?;
    let gate = admission::Gate::new(
        cfg.conntrack_flows_per_source
            .unwrap_or_else(|| admission::Gate::default_quota(capacity.conntrack)),
        capacity.conntrack,
    );
    gate.install(&mut maps)?;
    info!(
        flows_per_source = gate.flows_per_source,
        "conntrack admission: open flows per client address (0: no quota)"
    );
    let sync = MapSync::adopt(maps)
        .context("adopting the pinned maps")?
        .with_node(cfg.node_name.clone())
        .with_backend_capacity(capacity.backends)
        .with_node_ips(node_ips.clone())
        .with_selection(cfg.selection);
    info!(node_ips = ?node_ips, "node addresses for node ports");
    if cfg.node_name.is_none() {
        warn!(
            "no --node-name (or NODE_NAME): services with internalTrafficPolicy Local get no backends"
        );
    }
    info!(
        node = cfg.node_name.as_deref().unwrap_or("(unset)"),
        adopted_services = sync.programmed().len(),
        rss_mib = resident_mib(),
        "agent starting"
    );
    Ok((sync, gate, node_ips))
}

/// Starts the source of cluster state (and, in a cluster, the watch on the
/// agent's own DaemonSet that tells an uninstall from an upgrade).
async fn start_source(
    cfg: &AgentConfig,
    metrics: &Arc<Metrics>,
    tx: mpsc::Sender<StateDelta>,
) -> Result<(tokio::task::JoinHandle<()>, Option<OwnerWatch>)> {
    let mut owner_watch = None;
    let source = match &cfg.source {
        SourceConfig::Standalone(dir) => tokio::spawn(standalone::watch_dir(
            dir.clone(),
            cfg.poll_interval,
            cfg.network_policy,
            tx,
        )),
        SourceConfig::Kubernetes { kubeconfig } => {
            let client = kubernetes::client(kubeconfig.as_deref()).await?;
            if let Some(owner) = &cfg.owner_daemonset {
                owner_watch = Some(OwnerWatch::start(client.clone(), owner)?);
            }
            let source = KubernetesSource {
                client,
                node_name: cfg.node_name.clone(),
                batch_window: cfg.batch_window,
                metrics: metrics.clone(),
                network_policy: cfg.network_policy,
            };
            tokio::spawn(source.run(tx))
        }
    };
    Ok((source, owner_watch))
}

/// SIGTERM and SIGINT, either of which stops the agent.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
        })
    }

    async fn stop(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Waits for the source's first complete state, taking the partial deltas
/// before it into `desired`; `None` when the agent is stopped meanwhile.
async fn first_complete_state(
    deltas: &mut mpsc::Receiver<StateDelta>,
    desired: &mut DesiredState,
    signals: &mut Signals,
) -> Result<Option<StateDelta>> {
    let mut policy = None;
    let mut first = loop {
        tokio::select! {
            delta = deltas.recv() => match delta {
                Some(delta) if delta.complete => break delta,
                Some(mut delta) => {
                    desired.apply_delta(&delta);
                    policy = delta.policy.take().or(policy);
                }
                None => bail!("the source stopped before delivering a complete state"),
            },
            () = signals.stop() => return Ok(None),
        }
    };
    // The complete state includes NetworkPolicy's: none from a source that
    // has none, so that what an earlier run left is lifted.
    first.policy = first
        .policy
        .take()
        .or(policy)
        .or_else(|| Some(PolicyState::default()));
    info!(
        services = first.ports.len(),
        rss_mib = resident_mib(),
        "complete state received from the source"
    );
    Ok(Some(first))
}

/// Attaches the socket hooks and the interface programs; links an earlier
/// run left on interfaces that are gone are released.
fn attach(datapath: &mut Datapath, cfg: &AgentConfig, applier: &mut Applier) -> Result<IfaceRoles> {
    if let Some(socket_lb) = &cfg.socket_lb {
        datapath
            .attach_socket_lb(&socket_lb.cgroup, socket_lb.pods)
            .context("attaching the socket hooks (--socket-lb)")?;
    }
    let roles = IfaceRoles {
        pods: cfg.pod_ifaces.clone(),
        external: cfg.external_ifaces.clone(),
        tunnels: cfg.tunnel_ifaces.clone(),
    };
    match ifaces::reconcile(datapath, &roles) {
        Ok(pods) => {
            datapath.release_stale();
            applier.set_pods(pods);
        }
        Err(e) => warn!("listing interfaces: {e:#}"),
    }
    Ok(roles)
}

/// The initial lists were parsed into short-lived buffers; the freed heap
/// goes back to the system rather than staying as the peak.
fn trim_memory(applier: &Applier, datapath: &Datapath) {
    let rss_before_trim = resident_mib();
    // SAFETY: malloc_trim only releases free memory.
    unsafe { libc::malloc_trim(0) };
    info!(
        services = applier.sync.programmed().len(),
        interfaces = datapath.attached().count(),
        rss_mib = resident_mib(),
        rss_before_trim_mib = rss_before_trim,
        "initial sync complete"
    );
}

/// Deltas, resyncs, retries and interface changes until a signal or the
/// source's end.
async fn event_loop(
    cfg: &AgentConfig,
    (applier, retry): (&mut Applier, &mut Retry),
    (datapath, roles, link_events): (&mut Datapath, &IfaceRoles, Option<&LinkEvents>),
    deltas: &mut mpsc::Receiver<StateDelta>,
    signals: &mut Signals,
    metrics: &Metrics,
) -> Result<()> {
    let mut iface_tick = tokio::time::interval(cfg.iface_poll_interval);
    let mut resync_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + cfg.resync_interval,
        cfg.resync_interval,
    );
    loop {
        metrics.beat();
        tokio::select! {
            delta = deltas.recv() => {
                let Some(delta) = delta else {
                    return Err(anyhow::anyhow!("the source stopped"));
                };
                retry.after(applier.apply(delta));
            }
            _ = resync_tick.tick() => {
                let full = applier.resync("periodic");
                retry.after(applier.apply(full));
            }
            () = retry.due() => {
                let full = applier.resync("retry");
                retry.after(applier.apply(full));
            }
            changed = links_changed(link_events) => {
                if let Err(e) = changed {
                    warn!("link notifications: {e:#}");
                }
                reconcile_interfaces(datapath, roles, applier);
            }
            _ = iface_tick.tick() => reconcile_interfaces(datapath, roles, applier),
            () = signals.stop() => return Ok(()),
        }
    }
}

/// Attaches to new interfaces, and tells the applier which pods are here.
fn reconcile_interfaces(datapath: &mut Datapath, roles: &IfaceRoles, applier: &mut Applier) {
    match ifaces::reconcile(datapath, roles) {
        Ok(pods) => applier.set_pods(pods),
        Err(e) => warn!("listing interfaces: {e:#}"),
    }
}

/// Leaves the programs attached for the next agent (an upgrade), or — when
/// the DaemonSet is gone (an uninstall) or `--keep-datapath-on-exit` is off —
/// detaches them; after an uninstall the pins go too.
async fn shutdown(
    cfg: &AgentConfig,
    mut datapath: Datapath,
    applier: Applier,
    owner_watch: Option<&OwnerWatch>,
) -> Result<()> {
    let uninstalled = match owner_watch {
        Some(watch) => watch.uninstalled().await,
        None => false,
    };
    if cfg.keep_datapath_on_exit && !uninstalled {
        datapath.leave_attached();
    } else {
        datapath.detach_all();
    }
    if !uninstalled {
        info!(pin_dir = %cfg.pin_dir.display(), "agent stopped; maps stay pinned for the next start");
        return Ok(());
    }
    drop(applier);
    drop(datapath);
    crate::datapath::loader::cleanup(&cfg.pin_dir).context("removing the pins after uninstall")?;
    info!(pin_dir = %cfg.pin_dir.display(), "agent uninstalled: programs detached, pins removed");
    Ok(())
}

/// This process's resident memory in MiB (0 if /proc cannot tell), for the
/// startup log: what the agent costs at the cluster's size.
fn resident_mib() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    pages * page / (1024 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_syncs_are_retried_with_backoff_until_clean() {
        let mut retry = Retry::default();
        retry.after(0);
        assert!(retry.at.is_none(), "a clean sync schedules nothing");
        let mut waits = Vec::new();
        for _ in 0..7 {
            retry.after(2);
            assert!(retry.at.is_some());
            waits.push(retry.backoff.as_secs());
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        retry.after(0);
        assert!(
            retry.at.is_none() && retry.backoff.is_zero(),
            "a clean sync resets"
        );
    }
}

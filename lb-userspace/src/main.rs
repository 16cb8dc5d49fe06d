//! The `switchyard` command.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use lb_userspace::{
    agent::{self, AgentConfig, SourceConfig},
    datapath::{
        DEFAULT_PIN_DIR,
        capacity::Capacity,
        conntrack::Timeouts,
        ifaces::DEFAULT_POD_IFACES,
        ifaces::IfaceGlobs,
        loader::{self, XdpChoice},
        maglev,
        sync::Selection,
    },
    inspect::{self, InspectWhat, OutputFormat},
    model,
};

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "eBPF Kubernetes service load balancer"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `lb_userspace=debug`.
    #[arg(long, global = true, env = "SWITCHYARD_LOG", default_value = "info")]
    log_level: String,
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Algorithm {
    Random,
    Maglev,
    RoundRobin,
    LeastConnection,
}

impl From<Algorithm> for model::Algorithm {
    fn from(a: Algorithm) -> Self {
        match a {
            Algorithm::Random => Self::Random,
            Algorithm::Maglev => Self::Maglev,
            Algorithm::RoundRobin => Self::RoundRobin,
            Algorithm::LeastConnection => Self::LeastConnection,
        }
    }
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum OnOff {
    On,
    Off,
}

/// Whose sockets the socket hooks translate.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum SocketLbMode {
    /// None: every service packet is translated by tc (and XDP).
    Off,
    /// The node's own processes (host-network pods, the kubelet).
    #[value(alias = "on")]
    Host,
    /// The node's processes and this node's pods (except those annotated
    /// `switchyard.io/socket-lb: "off"`, or in a namespace so annotated).
    Pods,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load the datapath, attach it to pod interfaces and keep
    /// its maps in line with the cluster's Services and EndpointSlices.
    Agent(Box<AgentArgs>),
    /// Mount a BPF file system at PATH unless one is there already (the
    /// chart's init container).
    MountBpffs {
        #[arg(default_value = "/sys/fs/bpf")]
        path: PathBuf,
    },
    /// Show what the datapath maps hold. `--pin-dir` and `-o` go before or
    /// after the subcommand (`inspect services -o json`), as in kubectl.
    Inspect {
        #[arg(long, default_value = DEFAULT_PIN_DIR, global = true)]
        pin_dir: PathBuf,
        #[arg(
            short = 'o',
            long = "output",
            value_enum,
            default_value = "table",
            global = true
        )]
        output: OutputFormat,
        #[command(subcommand)]
        what: InspectWhat,
    },
}

#[derive(clap::Args)]
struct AgentArgs {
    /// Read Services and EndpointSlices from YAML/JSON manifests in DIR
    /// (followed while running) instead of an API server.
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    standalone: Option<PathBuf>,
    /// Kubeconfig for the API server (default: in-cluster configuration,
    /// then $KUBECONFIG / ~/.kube/config).
    #[arg(long, env = "KUBECONFIG", value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Address for /metrics (and the health endpoints); `none` to disable.
    #[arg(long, default_value = "127.0.0.1:10249", value_name = "ADDR")]
    metrics_addr: String,
    /// Address for /healthz, /livez and /readyz (and /metrics), where the
    /// kubelet's probes and load-balancer health checks reach it; `none` to
    /// disable.
    #[arg(long, default_value = "0.0.0.0:10256", value_name = "ADDR")]
    health_addr: String,
    /// At most one batch of API changes per window: a change after a quiet
    /// spell is applied at once, those that follow within the window
    /// together when it has passed.
    #[arg(long, default_value = "10", value_name = "MS")]
    batch_ms: u64,
    /// bpffs directory for the pinned maps.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Comma-separated name globs of the host-side pod interfaces.
    #[arg(long, default_value = DEFAULT_POD_IFACES)]
    pod_ifaces: String,
    /// The BPF object (default: next to this binary, then /usr/lib/switchyard).
    #[arg(long)]
    bpf_object: Option<PathBuf>,
    /// This node's name, for node-local endpoint decisions.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Poll interval for the manifest directory (standalone source).
    #[arg(long, default_value = "200", value_name = "MS")]
    poll_ms: u64,
    /// How often the interface list is re-read as a safety net: new
    /// interfaces are attached as the kernel announces them (netlink).
    #[arg(long, default_value = "2000", value_name = "MS")]
    iface_poll_ms: u64,
    /// Comma-separated name globs of the node's external interfaces, where
    /// NodePort and load-balancer traffic arrives (none by default).
    #[arg(long, value_name = "GLOBS")]
    external_ifaces: Option<String>,
    /// Comma-separated name globs of overlay tunnel devices, which get the
    /// external interfaces' tc programs: other nodes' pods reach node ports
    /// through them, and replies to those pods leave through them
    /// (flannel, Calico VXLAN and IP-in-IP, Cilium and OVS tunnels by
    /// default; "" for none).
    #[arg(
        long,
        value_name = "GLOBS",
        default_value = "flannel.*,vxlan.calico,tunl0,cilium_vxlan,cilium_geneve,vxlan_sys_*,genev_sys_*"
    )]
    tunnel_ifaces: String,
    /// Node addresses to serve node ports on (default: the addresses of the
    /// external interfaces). The first is the SNAT address when the route
    /// to a backend gives none (otherwise the egress device's is used).
    #[arg(long, value_delimiter = ',', value_name = "IP,...")]
    node_ips: Vec<std::net::Ipv4Addr>,
    /// Source ports for SNAT of external flows to other nodes; reserved from
    /// local sockets via net.ipv4.ip_local_reserved_ports.
    #[arg(long, default_value = "61000-65000", value_name = "MIN-MAX")]
    snat_ports: String,
    /// The node's sysctl tree (the chart mounts the host's at /host/proc/sys,
    /// as /proc/sys is read-only in containers).
    #[arg(long, default_value = "/proc/sys", value_name = "DIR")]
    sysctl_dir: PathBuf,
    /// XDP on the external interfaces: `auto` (none on drivers where tc was
    /// measured faster, veth; else native where the driver supports it,
    /// generic otherwise), `native`, `generic` or `off` (tc only).
    #[arg(long, value_enum, default_value = "auto")]
    xdp: XdpChoice,
    /// How a new flow picks its backend, unless its Service's
    /// `switchyard.io/lb-algorithm` annotation says otherwise: `random`
    /// (kube-proxy's way), `maglev` (consistent hashing: the same on every
    /// node, few flows move when backends change), `round-robin` (each
    /// backend in turn) or `least-connection` (the backend with the fewest
    /// open flows).
    #[arg(long, value_enum, default_value = "random")]
    algorithm: Algorithm,
    /// Maglev lookup table size per frontend; must be prime and at least
    /// ~100 × the largest backend count for even spreading.
    #[arg(long, default_value_t = maglev::DEFAULT_TABLE_SIZE)]
    maglev_table_size: usize,
    /// Seconds between full resyncs: the maps are re-read and the whole
    /// desired state written again, repairing any drift (failed syncs are
    /// retried sooner, from 1 s with backoff).
    #[arg(long, default_value = "60", value_name = "SECONDS")]
    resync_interval: f64,
    /// Seconds between conntrack sweeps.
    #[arg(long, default_value = "10", value_name = "SECONDS")]
    ct_gc_interval: f64,
    /// Idle timeout of UDP flows, seconds.
    #[arg(long, default_value = "120", value_name = "SECONDS")]
    ct_timeout_udp: f64,
    /// Idle timeout of established TCP connections, seconds.
    #[arg(long, default_value = "86400", value_name = "SECONDS")]
    ct_timeout_tcp_established: f64,
    /// Idle timeout of TCP connections that saw only a SYN, seconds.
    #[arg(long, default_value = "60", value_name = "SECONDS")]
    ct_timeout_tcp_syn: f64,
    /// Time TCP connections are kept after FIN from both sides or RST, seconds.
    #[arg(long, default_value = "10", value_name = "SECONDS")]
    ct_timeout_tcp_closing: f64,
    /// Idle timeout of half-closed TCP connections (FIN from one side),
    /// seconds; kube-proxy's --conntrack-tcp-timeout-close-wait.
    #[arg(long, default_value = "3600", value_name = "SECONDS")]
    ct_timeout_tcp_close_wait: f64,
    /// Tracked flows one client address may have through services on this
    /// node; more are refused (dropped) until some end, so one client
    /// cannot crowd others' connections out of the table. Default: 1/4 of
    /// the table's flows; 0: no quota.
    #[arg(long, value_name = "N")]
    ct_flows_per_source: Option<u32>,
    /// Entries of the services map (one per frontend plus one per backend
    /// slot). Map sizes apply when the maps are created; maps pinned by an
    /// earlier run keep their size until `--cleanup`.
    #[arg(long, default_value_t = Capacity::default().services, value_name = "N")]
    map_size_services: u32,
    /// Distinct backend addresses.
    #[arg(long, default_value_t = Capacity::default().backends, value_name = "N")]
    map_size_backends: u32,
    /// Conntrack entries (two per connection); when full, the least
    /// recently used are evicted.
    #[arg(long, default_value_t = Capacity::default().conntrack, value_name = "N")]
    map_size_conntrack: u32,
    /// ClientIP affinity pins; when full, the least recently used are evicted.
    #[arg(long, default_value_t = Capacity::default().affinity, value_name = "N")]
    map_size_affinity: u32,
    /// Remove the pinned maps and pin directory, then exit.
    #[arg(long)]
    cleanup: bool,
    /// On SIGTERM, leave the programs attached to the interfaces (their
    /// links stay pinned) so the next agent takes them over with no gap, as
    /// in a rolling upgrade. A crashed agent always leaves them attached.
    #[arg(long)]
    keep_datapath_on_exit: bool,
    /// The DaemonSet running this agent (`NAMESPACE/NAME`). Once it is
    /// deleted — `helm uninstall` — a stop detaches the programs and
    /// removes the pins even with --keep-datapath-on-exit: nothing will
    /// take them over.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    owner_daemonset: Option<String>,
    /// Let XDP forward the client → backend packets of external flows to
    /// other nodes (DNAT + SNAT + XDP_TX) instead of passing them to tc.
    /// Off by default: on veth in native mode XDP_TX'd frames were lost
    /// intermittently in our tests (generic mode and tc are reliable).
    #[arg(long)]
    xdp_snat: bool,
    /// Socket-level load balancing: cgroup connect/sendmsg/recvmsg/
    /// getpeername hooks on --cgroup connect sockets straight to a backend
    /// (no per-packet NAT, no conntrack entry). `host` (alias `on`): the
    /// node's own processes (host-network pods, the kubelet); `pods`: this
    /// node's pods too, found by their network namespaces under /run/netns.
    #[arg(long, value_enum, default_value = "off")]
    socket_lb: SocketLbMode,
    /// Where network namespaces are bound by name (`ip netns`, container
    /// runtimes), for `--socket-lb pods`; pods' namespaces are also found
    /// through /proc (the agent then needs the host's PID namespace).
    #[arg(long, default_value = lb_userspace::datapath::pod_netns::NETNS_DIR, value_name = "DIR")]
    netns_dir: PathBuf,
    /// Drop pods' connection-changing packets (SYN, FIN, RST, a new flow)
    /// from addresses that are not theirs (per the node's host routes), so
    /// a pod cannot reset or hijack another pod's connection.
    #[arg(long, value_enum, default_value = "on")]
    pod_source_check: OnOff,
    /// Enforce NetworkPolicy at the pods' interfaces: `on` watches Pods,
    /// Namespaces and NetworkPolicies (or reads them from --standalone).
    #[arg(long, value_enum, default_value = "on")]
    network_policy: OnOff,
    /// The cgroup (v2) the socket hooks attach to: normally the root of the
    /// hierarchy, so every process is covered.
    #[arg(long, default_value = "/sys/fs/cgroup", value_name = "DIR")]
    cgroup: PathBuf,
    /// Check the flags (as the chart renders them) and exit without touching
    /// the system.
    #[arg(long)]
    check_config: bool,
}

fn map_capacity(args: &AgentArgs) -> Result<Capacity> {
    let capacity = Capacity {
        services: args.map_size_services,
        backends: args.map_size_backends,
        conntrack: args.map_size_conntrack,
        affinity: args.map_size_affinity,
    };
    for (_, entries, flag) in capacity.rows() {
        if entries == 0 {
            bail!("{flag} 0: a map needs at least one entry");
        }
    }
    Ok(capacity)
}

fn port_range(text: &str) -> Result<(u16, u16)> {
    let parsed = text
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)));
    match parsed {
        Some((min, max)) if min > 0 && min <= max => Ok((min, max)),
        _ => bail!("--snat-ports {text:?}: expected MIN-MAX with 1 <= MIN <= MAX <= 65535"),
    }
}

fn seconds(flag: &str, value: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| anyhow::anyhow!("{flag} {value}: must be a positive number of seconds"))
}

fn init_logging(level: &str, format: LogFormat) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| anyhow::anyhow!("--log-level {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Frontends with the largest Maglev table the services map must hold at
/// least (smaller services take smaller tables, see maglev.rs).
const MIN_FULL_SIZE_MAGLEV_FRONTENDS: usize = 16;

/// `--algorithm` and the Maglev table size, checked: any Service may ask
/// for Maglev by annotation, so the size must always be usable; with Maglev
/// the default, the services map must also hold enough full-size tables.
fn selection(args: &AgentArgs, capacity: &Capacity) -> Result<Selection> {
    let size = args.maglev_table_size;
    if !maglev::is_prime(size) || size > usize::from(u16::MAX) {
        bail!("--maglev-table-size {size}: must be a prime below 65536 (e.g. 1021, 16381)");
    }
    // Each frontend takes its table plus a master entry.
    let fits = capacity.services as usize / (size + 1);
    if matches!(args.algorithm, Algorithm::Maglev) && fits < MIN_FULL_SIZE_MAGLEV_FRONTENDS {
        bail!(
            "--maglev-table-size {size} with --map-size-services {}: room for only \
             {fits} frontends with {size}-entry tables (those with over {} \
             backends); raise --map-size-services to at least {} or lower \
             --maglev-table-size",
            capacity.services,
            size / 100,
            (size + 1) * MIN_FULL_SIZE_MAGLEV_FRONTENDS
        );
    }
    Ok(Selection::new(args.algorithm.into(), size))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(&cli.log_level, cli.log_format)?;
    match cli.command {
        Command::Inspect {
            pin_dir,
            output,
            what,
        } => {
            print!("{}", inspect::run(&pin_dir, what, output)?);
            Ok(())
        }
        Command::MountBpffs { path } => loader::mount_bpffs(&path),
        Command::Agent(args) => {
            if args.cleanup {
                return loader::cleanup(&args.pin_dir);
            }
            let capacity = map_capacity(&args)?;
            let selection = selection(&args, &capacity)?;
            let source = match args.standalone {
                Some(dir) => SourceConfig::Standalone(dir),
                None => SourceConfig::Kubernetes {
                    kubeconfig: args.kubeconfig,
                },
            };
            let mut http_addrs = Vec::new();
            for (flag, text) in [
                ("--metrics-addr", &args.metrics_addr),
                ("--health-addr", &args.health_addr),
            ] {
                if text != "none" {
                    http_addrs.push(
                        text.parse()
                            .map_err(|e| anyhow::anyhow!("{flag} {text:?}: {e}"))?,
                    );
                }
            }
            let cfg = AgentConfig {
                source,
                http_addrs,
                batch_window: Duration::from_millis(args.batch_ms),
                pin_dir: args.pin_dir,
                pod_ifaces: IfaceGlobs::parse(&args.pod_ifaces)?,
                bpf_object: args.bpf_object,
                node_name: args.node_name,
                poll_interval: Duration::from_millis(args.poll_ms.max(10)),
                iface_poll_interval: Duration::from_millis(args.iface_poll_ms.max(10)),
                external_ifaces: args
                    .external_ifaces
                    .as_deref()
                    .map(IfaceGlobs::parse)
                    .transpose()?,
                tunnel_ifaces: Some(args.tunnel_ifaces.as_str())
                    .filter(|g| !g.is_empty())
                    .map(IfaceGlobs::parse)
                    .transpose()?,
                node_ips: args.node_ips,
                snat_ports: port_range(&args.snat_ports)?,
                sysctl_dir: args.sysctl_dir,
                xdp: args.xdp,
                keep_datapath_on_exit: args.keep_datapath_on_exit,
                owner_daemonset: args.owner_daemonset.clone(),
                xdp_snat: args.xdp_snat,
                socket_lb: (args.socket_lb != SocketLbMode::Off).then(|| agent::SocketLb {
                    cgroup: args.cgroup.clone(),
                    pods: args.socket_lb == SocketLbMode::Pods,
                    netns_dir: args.netns_dir.clone(),
                }),
                pod_source_check: args.pod_source_check == OnOff::On,
                network_policy: args.network_policy == OnOff::On,
                selection,
                conntrack_gc_interval: seconds("--ct-gc-interval", args.ct_gc_interval)?,
                resync_interval: seconds("--resync-interval", args.resync_interval)?,
                conntrack_flows_per_source: args.ct_flows_per_source,
                capacity,
                conntrack_timeouts: Timeouts {
                    tcp_established: seconds(
                        "--ct-timeout-tcp-established",
                        args.ct_timeout_tcp_established,
                    )?,
                    tcp_syn: seconds("--ct-timeout-tcp-syn", args.ct_timeout_tcp_syn)?,
                    tcp_closing: seconds("--ct-timeout-tcp-closing", args.ct_timeout_tcp_closing)?,
                    tcp_close_wait: seconds(
                        "--ct-timeout-tcp-close-wait",
                        args.ct_timeout_tcp_close_wait,
                    )?,
                    udp: seconds("--ct-timeout-udp", args.ct_timeout_udp)?,
                },
            };
            if args.check_config {
                println!("configuration ok");
                return Ok(());
            }
            // Two malloc arenas, not one per thread that ever allocated: the
            // agent's memory is long-lived caches, not contended allocation.
            // SAFETY: a malloc tuning call before any thread exists.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(agent::run(cfg))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Operators type the flags after the subcommand, as with kubectl and
    /// cilium-dbg; both orders mean the same.
    #[test]
    fn inspect_flags_go_before_or_after_the_subcommand() {
        for argv in [
            vec![
                "switchyard",
                "inspect",
                "services",
                "--pin-dir",
                "/x",
                "-o",
                "json",
            ],
            vec![
                "switchyard",
                "inspect",
                "--pin-dir",
                "/x",
                "-o",
                "json",
                "services",
            ],
            vec![
                "switchyard",
                "inspect",
                "-o",
                "json",
                "services",
                "--pin-dir",
                "/x",
            ],
        ] {
            let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
            match cli.command {
                Command::Inspect {
                    pin_dir,
                    output,
                    what,
                } => {
                    assert_eq!(pin_dir, PathBuf::from("/x"), "{argv:?}");
                    assert_eq!(output, OutputFormat::Json, "{argv:?}");
                    assert!(matches!(what, InspectWhat::Services), "{argv:?}");
                }
                _ => panic!("{argv:?}: not inspect"),
            }
        }
    }
}

//! `cargo xtask bench compare`: Switchyard against the real kube-proxy, in
//! one run, on one machine, against one API server and the same Services.
//!
//! A four-node namespace cluster and a real kube-apiserver + etcd. Each node
//! runs one contender: node 1 Switchyard (XDP on the external interface),
//! node 2 Switchyard with `--xdp off` (tc only), node 3 kube-proxy in
//! nftables mode, node 4 kube-proxy in iptables mode. Every node has the
//! same pods; the measured Services have `internalTrafficPolicy` and
//! `externalTrafficPolicy: Local`, so each node's proxy sends to its own
//! backend pod and the contenders are compared on identical paths.
//!
//! At 1, 1 000 and 10 000 Services (each filler with 10 endpoints, so
//! 100 000 at the top): ClusterIP connection rate and latency (pod IP
//! directly = the limit, Switchyard, nftables, iptables), NodePort rates
//! from the external client to each node; at 10 000: EndpointSlice write →
//! traffic reaching the new backend on every node, full-sync time and
//! memory. Contenders alternate within each round; median (min–max) over
//! the rounds. Prints Markdown to stdout, progress to stderr.
//!
//! `COMPARE_SCALES=1,1000` and `COMPARE_ROUNDS=3`, `COMPARE_FLIPS=20`
//! shorten a run.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use switchyard_tests::apiserver::{ApiServer, TRIGGER_TIME_PLACEHOLDER};
use switchyard_tests::cluster::{control_plane_ip, node_ip, node_name};
use switchyard_tests::kube_proxy::{KubeProxy, KubeProxyMode};
use switchyard_tests::measure::{
    conn_rate, latency, median, median_and_range, percentile, tcp_once, udp_rate,
};
use switchyard_tests::scale::{Fillers, rss_mib};
use switchyard_tests::{
    AgentProcess, AgentSource, MultiNode, Pod, PodServer, ServerPorts, cleanup_stale, wait,
};

const NAMESPACE: &str = "bench";
const FILLERS: Fillers = Fillers {
    namespace: "fill",
    endpoints_per_service: 10,
};
const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const FLIP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
const TCP_NODE_PORT: u16 = 30080;
const UDP_NODE_PORT: u16 = 30053;
const PERIOD: Duration = Duration::from_secs(2);
const LATENCY_REQUESTS: usize = 2_000;
/// Pod numbers on every node (10.244.<node>.<i>).
const CLIENT: u8 = 10;
const DIRECT_CLIENT: u8 = 11;
const BACKEND_A: u8 = 20;
const BACKEND_B: u8 = 21;
const SYNC_TIMEOUT: Duration = Duration::from_secs(900);
/// A full sync from nothing that takes longer is reported as not finished.
const FULL_SYNC_TIMEOUT: Duration = Duration::from_secs(300);

/// Ordered as the nodes they run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Contender {
    SwitchyardXdp,
    SwitchyardTc,
    Nftables,
    Iptables,
}

const CONTENDERS: [Contender; 4] = [
    Contender::SwitchyardXdp,
    Contender::SwitchyardTc,
    Contender::Nftables,
    Contender::Iptables,
];

impl Contender {
    fn node(self) -> u8 {
        match self {
            Self::SwitchyardXdp => 1,
            Self::SwitchyardTc => 2,
            Self::Nftables => 3,
            Self::Iptables => 4,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::SwitchyardXdp => "Switchyard (XDP + tc)",
            Self::SwitchyardTc => "Switchyard (tc only)",
            Self::Nftables => "kube-proxy nftables",
            Self::Iptables => "kube-proxy iptables",
        }
    }
}

/// A contender's process on its node.
enum Running {
    Agent(AgentProcess),
    Proxy(KubeProxy),
}

impl Running {
    fn pid(&self) -> Option<u32> {
        match self {
            Self::Agent(a) => a.pid(),
            Self::Proxy(p) => p.pid(),
        }
    }
}

struct Bench {
    cluster: MultiNode,
    api: ApiServer,
    running: Vec<(Contender, Running)>,
    _servers: Vec<PodServer>,
    marks: u8,
    rounds: usize,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn service_yaml(name: &str, vip: Ipv4Addr, node_ports: bool) -> String {
    let (kind, ports) = if node_ports {
        (
            "  type: NodePort\n  externalTrafficPolicy: Local\n",
            format!(
                "  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP, nodePort: {TCP_NODE_PORT}}}\n  - {{name: udp, port: 53, targetPort: 5353, protocol: UDP, nodePort: {UDP_NODE_PORT}}}\n"
            ),
        )
    } else {
        (
            "",
            "  - {name: tcp, port: 80, targetPort: 8080, protocol: TCP}\n  - {name: udp, port: 53, targetPort: 5353, protocol: UDP}\n".to_string(),
        )
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec:\n{kind}  clusterIP: {vip}\n  internalTrafficPolicy: Local\n  ports:\n{ports}"
    )
}

/// The slice of `service` with backend pod `pod` of every node, stamped
/// with its trigger time by the writer.
fn slice_yaml(service: &str, pod: u8) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-1\n  namespace: {NAMESPACE}\n  labels: {{kubernetes.io/service-name: {service}}}\n  annotations: {{endpoints.kubernetes.io/last-change-trigger-time: \"{TRIGGER_TIME_PLACEHOLDER}\"}}\naddressType: IPv4\nports:\n- {{name: tcp, port: 8080, protocol: TCP}}\n- {{name: udp, port: 5353, protocol: UDP}}\nendpoints:\n"
    );
    for c in CONTENDERS {
        let n = c.node();
        y.push_str(&format!(
            "- addresses: [\"10.244.{n}.{pod}\"]\n  conditions: {{ready: true}}\n  nodeName: {}\n",
            node_name(n)
        ));
    }
    y
}

/// Sends 64-byte datagrams as fast as one thread can for [`PERIOD`];
/// returns (datagrams sent, seconds).
fn udp_flood(to: SocketAddrV4) -> Result<(u64, f64)> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(to)?;
    let payload = [b'f'; 64];
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < PERIOD {
        for _ in 0..64 {
            // A full queue (ENOBUFS) is a drop on the sender's side.
            if socket.send(&payload).is_ok() {
                sent += 1;
            }
        }
    }
    Ok((sent, started.elapsed().as_secs_f64()))
}

/// Packets `iface` received, as the calling thread's namespace counts them.
fn rx_packets(iface: &str) -> Result<u64> {
    let dev = std::fs::read_to_string("/proc/thread-self/net/dev")?;
    dev.lines()
        .find_map(|l| {
            let (name, counters) = l.split_once(':')?;
            (name.trim() == iface).then(|| counters.split_whitespace().nth(1)?.parse().ok())?
        })
        .with_context(|| format!("no {iface} in /proc/net/dev"))
}

impl Bench {
    fn node_pod(&self, node: u8, i: u8) -> &Pod {
        let ip = Ipv4Addr::new(10, 244, node, i);
        self.cluster
            .node(node)
            .topo
            .pods()
            .iter()
            .find(|p| p.ip() == ip)
            .expect("every node has the bench pods")
    }

    fn start(&self, contender: Contender) -> Result<Running> {
        let node = self.cluster.node(contender.node());
        Ok(match contender {
            Contender::SwitchyardXdp | Contender::SwitchyardTc => {
                // Native XDP on the veth, asked for: auto leaves it off there.
                let xdp = if contender == Contender::SwitchyardXdp {
                    "native"
                } else {
                    "off"
                };
                Running::Agent(AgentProcess::start_within(
                    node.agent_options(
                        AgentSource::Kubeconfig(self.api.kubeconfig()),
                        &["--xdp", xdp],
                    ),
                    SYNC_TIMEOUT,
                )?)
            }
            Contender::Nftables | Contender::Iptables => Running::Proxy(KubeProxy::start(
                node.topo.node_ns(),
                &node.name(),
                &self.api.kubeconfig(),
                if contender == Contender::Nftables {
                    KubeProxyMode::Nftables
                } else {
                    KubeProxyMode::Iptables
                },
                SYNC_TIMEOUT,
            )?),
        })
    }

    /// Creates a new marker Service (created after everything else) and
    /// waits until every node's client reaches it: each contender has then
    /// programmed the whole cluster as it stood. Returns per contender the
    /// time from the marker's creation to its first answer.
    fn converge(&mut self) -> Result<Vec<(Contender, Duration)>> {
        self.marks += 1;
        let name = format!("mark{}", self.marks);
        let vip = Ipv4Addr::new(10, 96, 0, 100 + self.marks);
        let started = Instant::now();
        self.api.apply(&service_yaml(&name, vip, false))?;
        self.api.apply(
            &slice_yaml(&name, BACKEND_A).replace(TRIGGER_TIME_PLACEHOLDER, "2000-01-01T00:00:00Z"),
        )?;
        self.reachable_from_all(SocketAddrV4::new(vip, 80), started)
    }

    fn reachable_from_all(
        &self,
        to: SocketAddrV4,
        started: Instant,
    ) -> Result<Vec<(Contender, Duration)>> {
        let mut pending: Vec<Contender> = CONTENDERS.to_vec();
        let mut done = Vec::new();
        while !pending.is_empty() {
            if started.elapsed() > SYNC_TIMEOUT {
                bail!("{to} not reachable through {pending:?} after {SYNC_TIMEOUT:?}");
            }
            for c in pending.clone() {
                let client = self.node_pod(c.node(), CLIENT);
                if client
                    .in_netns(move || tcp_once(to, Duration::from_millis(200)))?
                    .is_ok()
                {
                    done.push((c, started.elapsed()));
                    pending.retain(|p| *p != c);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(done)
    }

    fn clusterip_round(&self, round: usize, table: &mut ClusterIpCells) -> Result<()> {
        // The limit (pod IP) and the ClusterIP through each proxy, in an
        // order that rotates each round.
        let mut targets: Vec<(Option<Contender>, &Pod, SocketAddrV4)> = vec![(
            None,
            self.node_pod(1, DIRECT_CLIENT),
            SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, BACKEND_A), 8080),
        )];
        for c in [
            Contender::SwitchyardXdp,
            Contender::Nftables,
            Contender::Iptables,
        ] {
            targets.push((
                Some(c),
                self.node_pod(c.node(), CLIENT),
                SocketAddrV4::new(WEB_VIP, 80),
            ));
        }
        let len = targets.len();
        targets.rotate_left(round % len);
        for (who, from, to) in targets {
            let ((rate, failed), (p50, p99)) = from
                .in_netns(move || -> Result<((f64, u32), (f64, f64))> {
                    Ok((conn_rate(to, PERIOD)?, latency(to, LATENCY_REQUESTS)?))
                })?
                .with_context(|| format!("ClusterIP round {round}: {who:?} to {to}"))?;
            eprintln!("  {who:?}: {rate:.0} conn/s, p50 {p50:.0} µs, p99 {p99:.0} µs");
            let cell = table.entry(who).or_default();
            cell.0.push(rate);
            cell.1.push(p50);
            cell.2.push(p99);
            cell.3 += failed;
        }
        Ok(())
    }

    fn nodeport_round(&self, round: usize, table: &mut NodePortCells) -> Result<()> {
        let external = self.cluster.external();
        let mut order = CONTENDERS.to_vec();
        order.rotate_left(round % CONTENDERS.len());
        for c in order {
            let ip = node_ip(c.node());
            let tcp = SocketAddrV4::new(ip, TCP_NODE_PORT);
            let udp = SocketAddrV4::new(ip, UDP_NODE_PORT);
            let ((t, failed), u) = external
                .in_netns(move || -> Result<((f64, u32), f64)> {
                    Ok((conn_rate(tcp, PERIOD)?, udp_rate(udp, PERIOD)?))
                })?
                .with_context(|| format!("NodePort round {round}: {c:?}"))?;
            let backend = self.node_pod(c.node(), BACKEND_A);
            let before = backend.in_netns(|| rx_packets("eth0"))??;
            let (sent, secs) = external.in_netns(move || udp_flood(udp))??;
            // Let the last datagrams arrive before counting.
            std::thread::sleep(Duration::from_millis(200));
            let after = backend.in_netns(|| rx_packets("eth0"))??;
            let delivered = (after - before) as f64 / secs;
            let offered = sent as f64 / secs;
            eprintln!(
                "  {c:?}: {t:.0} conn/s, {u:.0} udp req/s, flood {offered:.0} sent/s {delivered:.0} delivered/s"
            );
            let cell = table.entry(c).or_default();
            cell.0.push(t);
            cell.1.push(u);
            cell.2.push(offered);
            cell.3.push(delivered);
            cell.4 += failed;
        }
        Ok(())
    }
}

type ClusterIpCells =
    std::collections::BTreeMap<Option<Contender>, (Vec<f64>, Vec<f64>, Vec<f64>, u32)>;
type NodePortCells =
    std::collections::BTreeMap<Contender, (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, u32)>;

fn label(who: Option<Contender>) -> &'static str {
    who.map_or("pod IP directly (the limit)", Contender::label)
}

fn main() -> Result<()> {
    cleanup_stale();
    let scales: Vec<usize> = std::env::var("COMPARE_SCALES")
        .unwrap_or_else(|_| "1,1000,10000".into())
        .split(',')
        .map(|s| s.trim().parse().context("COMPARE_SCALES: numbers"))
        .collect::<Result<_>>()?;
    let rounds = env_or("COMPARE_ROUNDS", 5usize);
    let flips = env_or("COMPARE_FLIPS", 40usize);

    let mut cluster = MultiNode::new(4)?;
    let mut servers = Vec::new();
    for c in CONTENDERS {
        let node = cluster.node_mut(c.node());
        for (name, i) in [("client", CLIENT), ("direct", DIRECT_CLIENT)] {
            let pod = node.add_pod(name, i)?;
            // Thousands of short connections per second from one client:
            // reuse TIME_WAIT ports, or the port space is the bottleneck.
            switchyard_tests::command::sysctl(pod.ns(), "net.ipv4.tcp_tw_reuse", "1")?;
        }
        for (name, i) in [("b0", BACKEND_A), ("b1", BACKEND_B)] {
            let pod = node.add_pod(name, i)?;
            servers.push(pod.start_server(&ServerPorts::tcp_udp(8080, 5353))?);
        }
    }
    switchyard_tests::command::sysctl(cluster.external().ns(), "net.ipv4.tcp_tw_reuse", "1")?;
    let cp = cluster.add_control_plane()?.ns().to_string();
    let api = ApiServer::start_in(&cp, control_plane_ip())?;
    api.kubectl(&["create", "namespace", NAMESPACE])?;
    api.kubectl(&["create", "namespace", FILLERS.namespace])?;
    api.register_nodes(&cluster)?;
    let stamp = |y: String| y.replace(TRIGGER_TIME_PLACEHOLDER, "2000-01-01T00:00:00Z");
    api.apply(&service_yaml("web", WEB_VIP, true))?;
    api.apply(&stamp(slice_yaml("web", BACKEND_A)))?;
    api.apply(&service_yaml("flip", FLIP_VIP, false))?;
    api.apply(&stamp(slice_yaml("flip", BACKEND_A)))?;

    let mut bench = Bench {
        cluster,
        api,
        running: Vec::new(),
        _servers: servers,
        marks: 0,
        rounds,
    };
    for c in CONTENDERS {
        eprintln!("starting {}", c.label());
        let running = bench.start(c)?;
        bench.running.push((c, running));
    }
    let versions = format!(
        "kube-proxy and kube-apiserver v1.34.4 (built from the k8s.io/kubernetes module), etcd 3.6.4, {}",
        switchyard_tests::command::run(&["nft", "--version"])?.trim()
    );

    if let Ok(secs) = std::env::var("COMPARE_PAUSE") {
        // For poking at the cluster by hand (`ip netns exec …`).
        eprintln!(
            "pausing {secs} s: nodes {:?}",
            bench
                .cluster
                .nodes
                .iter()
                .map(|n| n.topo.node_ns().to_string())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_secs(secs.parse().unwrap_or(600)));
    }
    let mut clusterip_tables = Vec::new();
    let mut nodeport_tables = Vec::new();
    let mut filled = 0usize;
    for &scale in &scales {
        // `scale` Services in all: the fillers plus the measured one.
        let target = scale.saturating_sub(1);
        if target > filled {
            eprintln!("creating fillers {filled}..{target}");
            let took = FILLERS.create(&bench.api, filled..target)?;
            eprintln!("created in {took:.1?}");
            filled = target;
        }
        let converged = bench.converge()?;
        eprintln!("scale {scale}: converged {converged:?}");
        let mut clusterip = ClusterIpCells::new();
        let mut nodeport = NodePortCells::new();
        for round in 0..bench.rounds {
            eprintln!("scale {scale} round {round}");
            bench.clusterip_round(round, &mut clusterip)?;
            bench.nodeport_round(round, &mut nodeport)?;
        }
        clusterip_tables.push((scale, clusterip));
        nodeport_tables.push((scale, nodeport));
    }

    // Control plane at the largest scale: flip the `flip` Service between
    // each node's two backend pods and time, per node, from the write to
    // the first new flow answered by the new pod.
    let top = scales.iter().copied().max().unwrap_or(1);
    let writer = bench.api.slice_writer()?;
    let mut delays: std::collections::BTreeMap<Contender, Vec<f64>> = Default::default();
    for j in 0..flips {
        let (pod, name) = if j % 2 == 0 {
            (BACKEND_B, "b1")
        } else {
            (BACKEND_A, "b0")
        };
        let started = Instant::now();
        writer.apply(&slice_yaml("flip", pod))?;
        let mut probes = Vec::new();
        for c in CONTENDERS {
            let ns = bench.node_pod(c.node(), CLIENT).ns().to_string();
            probes.push((
                c,
                std::thread::spawn(move || {
                    switchyard_tests::client::in_netns(&ns, move || {
                        probe_until(SocketAddrV4::new(FLIP_VIP, 53), name, started)
                    })
                }),
            ));
        }
        for (c, probe) in probes {
            let took = probe
                .join()
                .map_err(|_| anyhow::anyhow!("probe thread panicked"))???;
            delays
                .entry(c)
                .or_default()
                .push(took.as_secs_f64() * 1000.0);
        }
        eprintln!(
            "flip {j}: {:?}",
            delays
                .iter()
                .map(|(c, d)| (c.node(), d.last().copied().unwrap_or(0.0).round()))
                .collect::<Vec<_>>()
        );
        // kube-proxy syncs at most once a second (its min sync period);
        // space the writes so each is a change of its own.
        let next = started + Duration::from_secs(2);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let mut own_figures = Vec::new();
    for (c, running) in &bench.running {
        if let Running::Proxy(p) = running {
            own_figures.push((
                *c,
                p.histogram_mean("kubeproxy_sync_proxy_rules_duration_seconds")? * 1000.0,
                p.histogram_mean("kubeproxy_network_programming_duration_seconds")? * 1000.0,
            ));
        }
    }

    // Full sync from nothing at the largest scale, one contender at a time,
    // then its memory.
    let mut full_syncs: Vec<(Contender, Option<Duration>, f64)> = Vec::new();
    let running = std::mem::take(&mut bench.running);
    for (c, process) in running {
        let to = SocketAddrV4::new(WEB_VIP, 80);
        let started = Instant::now();
        let (process, took) = match process {
            Running::Agent(agent) => {
                drop(agent); // stops it and removes every pin: nothing left
                let started = Instant::now();
                let agent = bench.start(c)?;
                let took = bench.reachable_one(c, to, started).ok();
                (Some(agent), took)
            }
            Running::Proxy(mut proxy) => {
                proxy.stop_and_clean()?;
                match proxy.start_again(FULL_SYNC_TIMEOUT) {
                    Ok(()) => {
                        let took = bench.reachable_one(c, to, started).ok();
                        (Some(Running::Proxy(proxy)), took)
                    }
                    Err(e) => {
                        eprintln!("{c:?}: no full sync within {FULL_SYNC_TIMEOUT:?}: {e:#}");
                        (None, None)
                    }
                }
            }
        };
        let rss = match &process {
            Some(p) => {
                std::thread::sleep(Duration::from_secs(2));
                rss_mib(p.pid().context("contender pid")?)?
            }
            None => f64::NAN,
        };
        eprintln!("{c:?}: full sync {took:.2?}, RSS {rss:.0} MiB");
        full_syncs.push((c, took, rss));
        if let Some(p) = process {
            bench.running.push((c, p));
        }
    }

    println!("Versions: {versions}.\n");
    println!("### ClusterIP: TCP connections/s and request latency\n");
    println!(
        "| services | path | conn/s | vs pod IP | p50 µs | p99 µs | failed |\n| --- | --- | --- | --- | --- | --- | --- |"
    );
    for (scale, table) in &clusterip_tables {
        let limit = table.get(&None).map_or(f64::NAN, |c| median(c.0.clone()));
        for (who, (rates, p50, p99, failed)) in table {
            println!(
                "| {scale} | {} | {} | {:.1} % | {} | {} | {failed} |",
                label(*who),
                median_and_range(rates.clone()),
                median(rates.clone()) / limit * 100.0,
                median_and_range(p50.clone()),
                median_and_range(p99.clone()),
            );
        }
    }
    println!("\n### NodePort from the external client (backend on the node)\n");
    println!(
        "| services | path | TCP conn/s | UDP request/replies/s | UDP flood: sent/s | UDP flood: delivered/s | failed conns |\n| --- | --- | --- | --- | --- | --- | --- |"
    );
    for (scale, table) in &nodeport_tables {
        for (c, (t, u, sent, delivered, failed)) in table {
            println!(
                "| {scale} | {} | {} | {} | {} | {} | {failed} |",
                c.label(),
                median_and_range(t.clone()),
                median_and_range(u.clone()),
                median_and_range(sent.clone()),
                median_and_range(delivered.clone()),
            );
        }
    }
    println!(
        "\n### Control plane at {top} services, {} endpoints\n",
        top.saturating_sub(1) * FILLERS.endpoints_per_service + 2 * 4 + 4
    );
    println!(
        "| path | write → new backend answers: median | p99 | max | full sync from nothing → traffic | RSS after |\n| --- | --- | --- | --- | --- | --- |"
    );
    for c in CONTENDERS {
        let mut d = delays.get(&c).cloned().unwrap_or_default();
        d.sort_by(f64::total_cmp);
        let (took, rss) = full_syncs
            .iter()
            .find(|(f, _, _)| *f == c)
            .map_or((None, f64::NAN), |(_, t, r)| (*t, *r));
        let took = took.map_or(format!("not within {FULL_SYNC_TIMEOUT:?}"), |t| {
            format!("{t:.2?}")
        });
        println!(
            "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {took} | {rss:.0} MiB |",
            c.label(),
            percentile(&d, 50.0),
            percentile(&d, 99.0),
            d.last().copied().unwrap_or(f64::NAN),
        );
    }
    println!("\nkube-proxy's own metrics over the run (means):\n");
    for (c, sync_ms, programming_ms) in own_figures {
        println!(
            "- {}: rule sync {sync_ms:.0} ms, network programming latency {programming_ms:.0} ms",
            c.label()
        );
    }
    drop(bench);
    Ok(())
}

/// New UDP flows (a fresh socket each) until one is answered by `want`;
/// the time since `started`.
fn probe_until(to: SocketAddrV4, want: &str, started: Instant) -> Result<Duration> {
    let mut buf = [0u8; 64];
    while started.elapsed() < Duration::from_secs(60) {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        socket.connect(to)?;
        // Round trips take ~50 µs; a reply lost to the old backend's
        // conntrack flush must not count as waiting for the new one.
        socket.set_read_timeout(Some(Duration::from_millis(10)))?;
        let sent_at = started.elapsed();
        socket.send(b"x\n")?;
        if let Ok(n) = socket.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n]).trim() == want
        {
            return Ok(sent_at);
        }
    }
    bail!("{to} never answered from {want} within 60 s")
}

impl Bench {
    fn reachable_one(&self, c: Contender, to: SocketAddrV4, started: Instant) -> Result<Duration> {
        let client = self.node_pod(c.node(), CLIENT);
        wait::until(
            "the service to answer through the restarted contender",
            FULL_SYNC_TIMEOUT,
            Duration::from_millis(20),
            || {
                Ok(client
                    .in_netns(move || tcp_once(to, Duration::from_millis(200)))?
                    .is_ok())
            },
        )?;
        Ok(started.elapsed())
    }
}

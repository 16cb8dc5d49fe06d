//! `cargo xtask bench clusterip`: a pod's TCP connection rate and request
//! latency to one backend, directly (the pod IP: the limit) and through a
//! ClusterIP programmed by Switchyard — translated per packet by tc (a pod
//! opted out of socket LB) and at connect() by the socket hooks (`--socket-lb
//! pods`) — with 1, 1 000 and 10 000 services in the maps; alternating,
//! repeated, median and range. The benchmark's own process joins the
//! node's cgroup, under the hooks, since its client threads enter the pods'
//! namespaces. (kube-proxy's side is in `compare`.)

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context, Result};
use switchyard_tests::host::{NodeCgroup, cgroup2_root};
use switchyard_tests::manifests::pod_yaml;
use switchyard_tests::measure::{conn_rate, latency, median, median_and_range};
use switchyard_tests::{
    AgentOptions, AgentProcess, AgentSource, EndpointSpec, ManifestDir, ServerPorts, Topology,
    cleanup_stale, endpoint_slice_yaml, service_yaml, wait,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 20);
const ROUNDS: usize = 5;
const PERIOD: Duration = Duration::from_secs(2);
const LATENCY_REQUESTS: usize = 2_000;

/// Services `s1…` with four (unreachable) endpoints each, to fill the maps.
fn fillers(count: usize) -> String {
    let mut out = String::new();
    for i in 1..count {
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 97, 0, 0)) + i as u32);
        let eps: Vec<EndpointSpec> = (0..4u32)
            .map(|e| {
                EndpointSpec::ready(Ipv4Addr::from(
                    u32::from(Ipv4Addr::new(10, 100, 0, 0)) + (i as u32 * 4 + e) % 60_000,
                ))
            })
            .collect();
        out.push_str(&service_yaml(
            "fill",
            &format!("s{i}"),
            vip,
            &[("tcp", 80, 8080, "TCP")],
        ));
        out.push_str("---\n");
        out.push_str(&endpoint_slice_yaml(
            "fill",
            &format!("s{i}-1"),
            &format!("s{i}"),
            &[("tcp", 8080, "TCP")],
            &eps,
        ));
        out.push_str("---\n");
    }
    out
}

fn main() -> Result<()> {
    cleanup_stale();
    let mut topo = Topology::new()?;
    // Two clients: one connects directly, one through the VIP. From one
    // client with TIME_WAIT reuse, a direct connection could reuse the port
    // of a closed VIP connection whose conntrack entry (backend:port →
    // client:port) still lives, and its replies would be rev-NATed.
    topo.add_pod("client", Ipv4Addr::new(10, 244, 0, 10))?;
    topo.add_pod("direct", Ipv4Addr::new(10, 244, 0, 11))?;
    topo.add_pod("socket", Ipv4Addr::new(10, 244, 0, 12))?;
    let server = topo
        .add_pod("b0", BACKEND)?
        .start_server(&ServerPorts::tcp_udp(8080, 5353))?;
    // Many short connections from one client: reuse TIME_WAIT ports.
    for pod in ["client", "direct", "socket"] {
        switchyard_tests::command::sysctl(topo.pod(pod).ns(), "net.ipv4.tcp_tw_reuse", "1")?;
    }
    let cgroup = NodeCgroup::new()?;
    let _inside = JoinedCgroup::join(&cgroup)?;
    // The kernel's per-program run time (kernel.bpf_stats_enabled) while
    // this is held: what each client's packets cost in the tc programs.
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling BPF run-time statistics")?;
    let mut per_packet = Vec::new();
    println!(
        "| services | direct conn/s | ClusterIP (tc) conn/s | ratio | ClusterIP (socket) conn/s | ratio | direct p50/p99 µs | ClusterIP (tc) p50/p99 µs | ClusterIP (socket) p50/p99 µs |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for scale in [1usize, 1_000, 10_000] {
        let manifests = ManifestDir::new()?;
        manifests.write(
            "web.yaml",
            &format!(
                "{}---\n{}",
                service_yaml("bench", "web", VIP, &[("tcp", 80, 8080, "TCP")]),
                endpoint_slice_yaml(
                    "bench",
                    "web-1",
                    "web",
                    &[("tcp", 8080, "TCP")],
                    &[EndpointSpec::ready(BACKEND)]
                )
            ),
        )?;
        manifests.write("fill.yaml", &fillers(scale))?;
        // The tc client opts out of socket LB.
        manifests.write(
            "client.yaml",
            &pod_yaml("bench", "client", &[], topo.pod("client").ip(), &[]).replace(
                "labels: {}",
                "labels: {}, annotations: {switchyard.io/socket-lb: \"off\"}",
            ),
        )?;
        let agent = AgentProcess::start_within(
            AgentOptions {
                node_ns: topo.node_ns().to_string(),
                pin_dir: format!("/sys/fs/bpf/{}", topo.id()).into(),
                source: AgentSource::Manifests(manifests.path().to_path_buf()),
                pod_ifaces: topo.pod_iface_glob(),
                extra_args: vec![
                    "--socket-lb".into(),
                    "pods".into(),
                    "--cgroup".into(),
                    cgroup.path().display().to_string(),
                ],
            },
            Duration::from_secs(120),
        )?;
        wait::until(
            "the service",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || Ok(agent.backends_of("10.96.0.10:80/TCP").is_ok()),
        )?;
        wait_for_socket_lb(&agent, topo.pod("socket"))?;
        let client = topo.pod("client");
        let direct_client = topo.pod("direct");
        let socket_client = topo.pod("socket");
        let (mut direct, mut via, mut sock) = (Vec::new(), Vec::new(), Vec::new());
        let mut direct_lat = (Vec::new(), Vec::new());
        let mut via_lat = (Vec::new(), Vec::new());
        let mut sock_lat = (Vec::new(), Vec::new());
        let vip = SocketAddrV4::new(VIP, 80);
        let (mut cost_direct, mut cost_tc, mut cost_sock) = (
            ProgramCost::default(),
            ProgramCost::default(),
            ProgramCost::default(),
        );
        for _ in 0..ROUNDS {
            for (from, target, rates, lat, cost) in [
                (
                    direct_client,
                    SocketAddrV4::new(BACKEND, 8080),
                    &mut direct,
                    &mut direct_lat,
                    &mut cost_direct,
                ),
                (client, vip, &mut via, &mut via_lat, &mut cost_tc),
                (socket_client, vip, &mut sock, &mut sock_lat, &mut cost_sock),
            ] {
                let before = ProgramCost::now();
                let (rate, (p50, p99)) = from
                    .in_netns(move || -> Result<(f64, (f64, f64))> {
                        Ok((
                            match conn_rate(target, PERIOD).context("connection rate")? {
                                (rate, 0) => rate,
                                (_, failed) => {
                                    anyhow::bail!("{failed} connections to {target} failed")
                                }
                            },
                            latency(target, LATENCY_REQUESTS).context("latency")?,
                        ))
                    })?
                    .with_context(|| format!("to {target} from {}", from.name()))?;
                rates.push(rate);
                lat.0.push(p50);
                lat.1.push(p99);
                cost.add_since(&before);
            }
        }
        let (tc_ratio, sock_ratio) = (ratio(&via, &direct), ratio(&sock, &direct));
        println!(
            "| {scale} | {} | {} | {:.1} % | {} | {:.1} % | {} / {} | {} / {} | {} / {} |",
            median_and_range(direct),
            median_and_range(via),
            tc_ratio * 100.0,
            median_and_range(sock),
            sock_ratio * 100.0,
            median_and_range(direct_lat.0),
            median_and_range(direct_lat.1),
            median_and_range(via_lat.0),
            median_and_range(via_lat.1),
            median_and_range(sock_lat.0),
            median_and_range(sock_lat.1)
        );
        let stats = agent.inspect(&["stats"])?;
        let line = |reason: &str| {
            stats
                .lines()
                .find(|l| l.split_whitespace().next() == Some(reason))
                .unwrap_or_default()
                .to_string()
        };
        eprintln!(
            "  {} | {} | {}",
            line("sock_pod_translated"),
            line("sock_direct_passed"),
            line("new_flow")
        );
        per_packet.push((scale, [cost_direct, cost_tc, cost_sock]));
        drop(agent);
    }
    drop(server);
    println!();
    println!(
        "| services | from_pod ns/run: direct / tc / socket | to_pod ns/run: direct / tc / socket |"
    );
    println!("| --- | --- | --- |");
    for (scale, [d, t, s]) in per_packet {
        println!(
            "| {scale} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} / {:.0} |",
            d.from_pod.average(),
            t.from_pod.average(),
            s.from_pod.average(),
            d.to_pod.average(),
            t.to_pod.average(),
            s.to_pod.average()
        );
    }
    Ok(())
}

/// Run time and runs of one program (summed over its loaded copies).
#[derive(Clone, Copy, Default)]
struct RunTotals {
    ns: u64,
    runs: u64,
}

impl RunTotals {
    fn average(&self) -> f64 {
        self.ns as f64 / self.runs.max(1) as f64
    }
}

/// What `from_pod` and `to_pod` ran, as the kernel counts it.
#[derive(Clone, Copy, Default)]
struct ProgramCost {
    from_pod: RunTotals,
    to_pod: RunTotals,
}

impl ProgramCost {
    fn now() -> Self {
        let mut cost = Self::default();
        for info in aya::programs::loaded_programs().flatten() {
            let totals = match info.name_as_str() {
                Some("from_pod") => &mut cost.from_pod,
                Some("to_pod") => &mut cost.to_pod,
                _ => continue,
            };
            totals.ns += info.run_time().as_nanos() as u64;
            totals.runs += info.run_count();
        }
        cost
    }

    /// Adds what ran since `before`.
    fn add_since(&mut self, before: &Self) {
        let now = Self::now();
        for (sum, (now, before)) in [
            (&mut self.from_pod, (now.from_pod, before.from_pod)),
            (&mut self.to_pod, (now.to_pod, before.to_pod)),
        ] {
            sum.ns += now.ns - before.ns;
            sum.runs += now.runs - before.runs;
        }
    }
}

/// Median of `a` over median of `b`.
fn ratio(a: &[f64], b: &[f64]) -> f64 {
    median(a.to_vec()) / median(b.to_vec())
}

/// Until the socket pod's connections go through the hooks (the agent
/// finds pods' namespaces after attaching).
fn wait_for_socket_lb(agent: &AgentProcess, pod: &switchyard_tests::Pod) -> Result<()> {
    let translated = || -> Result<u64> {
        let stats: serde_json::Value =
            serde_json::from_str(&agent.inspect(&["-o", "json", "stats"])?)?;
        Ok(stats["sock_pod_translated"].as_u64().unwrap_or(0))
    };
    wait::until(
        "socket LB for the socket pod",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            let before = translated()?;
            pod.in_netns(|| std::net::TcpStream::connect(SocketAddrV4::new(VIP, 80)))??;
            Ok(translated()? > before)
        },
    )
    .map(|_| ())
}

/// This process in `cgroup` until dropped (then back in the root).
struct JoinedCgroup;

impl JoinedCgroup {
    fn join(cgroup: &NodeCgroup) -> Result<Self> {
        let procs = cgroup.path().join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string())
            .with_context(|| format!("joining {}", procs.display()))?;
        Ok(Self)
    }
}

impl Drop for JoinedCgroup {
    fn drop(&mut self) {
        if let Ok(root) = cgroup2_root() {
            let _ = std::fs::write(root.join("cgroup.procs"), std::process::id().to_string());
        }
    }
}

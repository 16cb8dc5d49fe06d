//! Switchyard in a real Kubernetes cluster: real kubelets and containerd,
//! pods made by real controllers, CoreDNS, no kube-proxy, the agent
//! installed with `helm install` (src/realcluster). Checked as a user of the
//! cluster would: by DNS name from a pod on each node, by node port from
//! outside, through rolling updates and an agent upgrade under traffic,
//! and `helm uninstall` must leave the nodes clean; and by Kubernetes' own
//! e2e suite: its `[Conformance]` cases for Services, EndpointSlices and
//! networking (the full focus is `cargo xtask conformance`).
//!
//! One test, one cluster, the checks in order (they share the cluster;
//! bringing one up takes ~30 s once the images exist).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddrV4, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use switchyard_tests::agnhost::{ClientPod, http_get, http_hostname, udp_hostname};
use switchyard_tests::client::in_netns;
use switchyard_tests::conformance;
use switchyard_tests::realcluster::proxy::Proxy;
use switchyard_tests::realcluster::{
    self, UpOptions, addons,
    layout::{self, OUTSIDE_NS, node_ip},
    on_node,
};
use switchyard_tests::scenarios::{Requester, SPREAD_REQUESTS, check_affinity, check_spread};

const NS: &str = "sy-e2e";
const NODES: [u8; 2] = [1, 2];
const TIMEOUT: Duration = Duration::from_secs(3);

/// Removes the cluster however the test ends.
struct Cluster;

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = realcluster::down() {
            eprintln!("cluster down: {e:#}");
        }
    }
}

fn kubectl(args: &[&str]) -> Result<String> {
    realcluster::kubectl(args)
}

fn client_on(node: u8) -> ClientPod {
    ClientPod {
        namespace: NS.into(),
        pod: format!("client-node{node}"),
        kubectl,
    }
}

/// Requests from the outside client's namespace, on new connections.
struct Outside;

impl Requester for Outside {
    fn tcp(&self, to: SocketAddrV4) -> Result<String> {
        in_netns(OUTSIDE_NS, move || http_hostname(to, TIMEOUT))?
    }
    fn udp(&self, to: SocketAddrV4) -> Result<String> {
        in_netns(OUTSIDE_NS, move || udp_hostname(to, TIMEOUT))?
    }
}

fn backends(app: &str) -> Result<BTreeSet<String>> {
    Ok(kubectl(&[
        "-n",
        NS,
        "get",
        "pods",
        "-l",
        &format!("app={app}"),
        "--field-selector=status.phase=Running",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])?
    .split_whitespace()
    .map(String::from)
    .collect())
}

/// The names of the agent's pods.
fn agent_pods() -> Result<String> {
    agent_pods_where(&[])
}

/// The agent's pods matching `selectors` (more `kubectl get` flags).
fn agent_pods_where(selectors: &[&str]) -> Result<String> {
    let mut args = vec![
        "-n",
        addons::NAMESPACE,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=switchyard",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ];
    args.extend_from_slice(selectors);
    kubectl(&args)
}

fn cluster_ip(service: &str) -> Result<std::net::Ipv4Addr> {
    Ok(kubectl(&[
        "-n",
        NS,
        "get",
        "svc",
        service,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])?
    .trim()
    .parse()?)
}

#[test]
fn switchyard_in_a_real_cluster() -> Result<()> {
    let image_root =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/image-root");
    let started = Instant::now();
    let machine_before = machine_paths();
    let _cluster = Cluster;
    realcluster::up(&UpOptions {
        nodes: NODES.len() as u8,
        image_root: &image_root,
        proxy: Proxy::Switchyard,
    })?;
    eprintln!("cluster up in {:.1} s", started.elapsed().as_secs_f64());
    deploy_workloads()?;

    let echo = backends("echo")?;
    ensure!(echo.len() == 3, "echo backends {echo:?}");
    service_by_dns_name_from_every_node(&echo)?;
    node_port_from_outside_on_every_node(&echo)?;
    client_ip_affinity(&echo)?;
    local_traffic_policy_keeps_the_client_ip()?;
    inspect_shows_the_service_by_name()?;
    upstream_conformance_cases()?;
    rolling_update_under_traffic_loses_nothing()?;
    agent_upgrade_keeps_long_lived_connections()?;
    socket_lb_for_pods()?;
    uninstall_leaves_nothing_behind()?;
    status_names_a_dead_containerd()?;

    realcluster::down()?;
    nothing_left_after_down(&machine_before)?;
    eprintln!(
        "real cluster suite done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn deploy_workloads() -> Result<()> {
    realcluster::kubectl_apply(include_str!("../realcluster/workloads.yaml"))?;
    for deploy in ["echo", "local"] {
        kubectl(&[
            "-n",
            NS,
            "rollout",
            "status",
            &format!("deploy/{deploy}"),
            "--timeout=120s",
        ])?;
    }
    kubectl(&[
        "-n",
        NS,
        "wait",
        "--for=condition=Ready",
        "pod/client-node1",
        "pod/client-node2",
        "--timeout=120s",
    ])?;
    Ok(())
}

/// From a pod on each node, `echo.sy-e2e.svc.cluster.local` (resolved by
/// CoreDNS, itself reached through its ClusterIP) spreads over every
/// backend, TCP and UDP.
fn service_by_dns_name_from_every_node(echo: &BTreeSet<String>) -> Result<()> {
    let name = format!("echo.{NS}.svc.cluster.local");
    for node in NODES {
        let client = client_on(node);
        for (protocol, port) in [("http", 80), ("udp", 53)] {
            let seen: BTreeSet<String> = client
                .dial_many(protocol, &name, port, SPREAD_REQUESTS)?
                .into_iter()
                .collect();
            ensure!(
                &seen == echo,
                "{protocol} to {name} from node{node}: answered by {seen:?}, expected {echo:?}"
            );
        }
        eprintln!("ok: {name} by DNS from a pod on node{node}: all 3 backends, TCP and UDP");
    }
    Ok(())
}

fn node_port_from_outside_on_every_node(echo: &BTreeSet<String>) -> Result<()> {
    for node in NODES {
        let ip = node_ip(node);
        check_spread(
            &Outside,
            SocketAddrV4::new(ip, 30080),
            SocketAddrV4::new(ip, 30053),
            echo,
        )
        .with_context(|| format!("node port on node{node}"))?;
        eprintln!("ok: node port {ip}:30080/30053 from outside: all 3 backends");
    }
    Ok(())
}

fn client_ip_affinity(echo: &BTreeSet<String>) -> Result<()> {
    let vip = SocketAddrV4::new(cluster_ip("sticky")?, 80);
    for node in NODES {
        let pinned = check_affinity(&client_on(node), vip, echo)?;
        eprintln!("ok: ClientIP affinity from node{node}: pinned to {pinned}");
    }
    Ok(())
}

/// externalTrafficPolicy: Local, the only backend on node1: node1 serves
/// its node port with the client's own address and its health check node
/// port says 200; node2 has no endpoint: 503, and its node port does not
/// answer (kube-proxy drops).
fn local_traffic_policy_keeps_the_client_ip() -> Result<()> {
    let seen = in_netns(OUTSIDE_NS, || {
        http_get(SocketAddrV4::new(node_ip(1), 30081), "/clientip", TIMEOUT)
    })??;
    ensure!(
        seen.0 == 200 && seen.1.starts_with(&format!("{}:", layout::outside_ip())),
        "/clientip via node1: {seen:?}"
    );
    eprintln!(
        "ok: eTP Local node port on node1 sees the client as {}",
        seen.1
    );
    for (node, expected) in [(1u8, 200u16), (2, 503)] {
        let (status, body) = in_netns(OUTSIDE_NS, move || {
            http_get(SocketAddrV4::new(node_ip(node), 30256), "/", TIMEOUT)
        })??;
        ensure!(
            status == expected,
            "healthCheckNodePort on node{node}: {status} {body}, expected {expected}"
        );
        eprintln!("ok: healthCheckNodePort on node{node}: {status} {body}");
    }
    let via_node2 = in_netns(OUTSIDE_NS, || {
        http_get(SocketAddrV4::new(node_ip(2), 30081), "/clientip", TIMEOUT)
    })?;
    ensure!(
        via_node2.is_err(),
        "node2 has no local endpoint but answered: {via_node2:?}"
    );
    Ok(())
}

/// `switchyard inspect <what>` in an agent pod.
fn agent_inspect(what: &str) -> Result<String> {
    kubectl(&[
        "-n",
        addons::NAMESPACE,
        "exec",
        "ds/switchyard",
        "--",
        "switchyard",
        "inspect",
        what,
    ])
}

fn inspect_shows_the_service_by_name() -> Result<()> {
    let services = agent_inspect("services")?;
    ensure!(
        services.contains("sy-e2e/echo:tcp") && services.contains("kube-system/kube-dns:dns"),
        "inspect services:\n{services}"
    );
    // The chart's `xdp: auto` on the nodes' veth eth0: tc, and said so.
    let interfaces = agent_inspect("interfaces")?;
    ensure!(
        interfaces.lines().any(|l| l.starts_with("eth0")
            && l.contains("external")
            && l.contains("none (auto: tc is faster on this driver)")),
        "inspect interfaces:\n{interfaces}"
    );
    // bpftool needs CAP_SYS_ADMIN to read a map's BTF (its field names),
    // which the agent container does not have: an operator uses a node
    // debug pod with the same image.
    let created = kubectl(&[
        "debug",
        "node/node1",
        "--profile=sysadmin",
        "--image=switchyard.local/switchyard:dev",
        "--image-pull-policy=Never",
        "--",
        "sleep",
        "300",
    ])?;
    let pod = created
        .split_whitespace()
        .find(|w| w.starts_with("node-debugger-"))
        .with_context(|| format!("no debug pod in {created:?}"))?
        .to_string();
    kubectl(&[
        "wait",
        "--for=condition=Ready",
        &format!("pod/{pod}"),
        "--timeout=60s",
    ])?;
    let dump = kubectl(&[
        "exec",
        &pod,
        "--",
        "bpftool",
        "map",
        "dump",
        "pinned",
        "/host/sys/fs/bpf/switchyard/services",
    ]);
    kubectl(&["delete", "pod", &pod, "--wait=false"])?;
    let dump = dump?;
    ensure!(
        dump.contains("\"vip_be\"") && dump.contains("\"backend_id\""),
        "bpftool map dump shows no field names:\n{}",
        &dump[..dump.len().min(2000)]
    );
    eprintln!(
        "ok: inspect services in the agent pod, bpftool map dump from a node debug pod:\n{services}"
    );
    Ok(())
}

/// Requests on new connections through a node port, one retry each (what an
/// idempotent client does), while `kubectl rollout restart` replaces every
/// backend.
/// Kubernetes' own `[Conformance]` cases for Services, EndpointSlices and
/// pod networking (`e2e.test` at the cluster's version), on this cluster
/// with Switchyard as its only service proxy: every one must pass.
fn upstream_conformance_cases() -> Result<()> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/real-cluster");
    let log = dir.join("e2e-conformance.log");
    let selection = conformance::Selection {
        nodes: NODES.len() as u8,
        ..conformance::Selection::new(conformance::CONFORMANCE_FOCUS)
    };
    let cases = conformance::run_on_cluster(&selection, &dir.join("e2e"), &log)?;
    let failed: Vec<String> = cases
        .iter()
        .filter(|(_, o)| o.state != "passed")
        .map(|(name, o)| format!("{name}: {} {}", o.state, o.failure))
        .collect();
    eprintln!(
        "upstream [Conformance] cases: {} of {} passed",
        cases.len() - failed.len(),
        cases.len()
    );
    ensure!(
        cases.len() >= 25,
        "only {} upstream cases ran; see {}",
        cases.len(),
        log.display()
    );
    ensure!(
        failed.is_empty(),
        "upstream cases failed (log {}):\n{}",
        log.display(),
        failed.join("\n")
    );
    Ok(())
}

fn rolling_update_under_traffic_loses_nothing() -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new([
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ]);
    let load = {
        let (stop, counts) = (stop.clone(), counts.clone());
        std::thread::spawn(move || {
            in_netns(OUTSIDE_NS, move || {
                let mut node = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let to = SocketAddrV4::new(node_ip(NODES[node % NODES.len()]), 30080);
                    node += 1;
                    counts[0].fetch_add(1, Ordering::Relaxed);
                    if http_hostname(to, TIMEOUT).is_err() {
                        counts[1].fetch_add(1, Ordering::Relaxed);
                        if http_hostname(to, TIMEOUT).is_err() {
                            counts[2].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
    };
    let restart = kubectl(&["-n", NS, "rollout", "restart", "deploy/echo"]).and_then(|_| {
        kubectl(&[
            "-n",
            NS,
            "rollout",
            "status",
            "deploy/echo",
            "--timeout=180s",
        ])
    });
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    load.join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    restart?;
    let (total, first, lost) = (
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed),
        counts[2].load(Ordering::Relaxed),
    );
    eprintln!(
        "rolling update: {total} requests, {first} failed on the first try, {lost} after one retry"
    );
    ensure!(total > 100, "only {total} requests during the rollout");
    ensure!(
        lost == 0,
        "{lost} of {total} requests failed twice during the rolling update"
    );
    Ok(())
}

/// A keep-alive HTTP connection: one request at a time on the same socket.
struct LongLived {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl LongLived {
    fn open(to: SocketAddrV4) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&to.into(), TIMEOUT)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Self { stream, reader })
    }

    fn hostname(&mut self) -> Result<String> {
        self.stream
            .write_all(b"GET /hostname HTTP/1.1\r\nHost: echo\r\n\r\n")?;
        let mut length = None;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("connection closed");
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = Some(v.trim().parse::<usize>()?);
            }
        }
        let mut body = vec![0u8; length.context("no Content-Length")?];
        self.reader.read_exact(&mut body)?;
        Ok(String::from_utf8_lossy(&body).trim().to_string())
    }
}

/// `helm upgrade` that replaces every agent pod: connections opened before
/// keep working, on the same backend, throughout and after.
fn agent_upgrade_keeps_long_lived_connections() -> Result<()> {
    let opened = in_netns(OUTSIDE_NS, || -> Result<Vec<(LongLived, String)>> {
        let mut conns = Vec::new();
        for i in 0..8 {
            let to = SocketAddrV4::new(node_ip(NODES[i % NODES.len()]), 30080);
            let mut c = LongLived::open(to)?;
            let backend = c.hostname()?;
            conns.push((c, backend));
        }
        Ok(conns)
    })??;
    let pods_before = agent_pods()?;
    let upgrade =
        std::thread::spawn(|| helm_upgrade_setting("podAnnotations.restartedBy=real-cluster-test"));
    let mut conns = opened;
    let mut rounds = 0;
    while !upgrade.is_finished() || rounds < 3 {
        for (i, (c, backend)) in conns.iter_mut().enumerate() {
            let now = c
                .hostname()
                .with_context(|| format!("long-lived connection {i} during the agent upgrade"))?;
            ensure!(
                &now == backend,
                "connection {i} moved from {backend} to {now}"
            );
        }
        rounds += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    upgrade
        .join()
        .map_err(|_| anyhow::anyhow!("helm upgrade thread panicked"))??;
    agents_rolled_out()?;
    for (i, (c, backend)) in conns.iter_mut().enumerate() {
        let now = c
            .hostname()
            .with_context(|| format!("long-lived connection {i} after the agent upgrade"))?;
        ensure!(
            &now == backend,
            "connection {i} moved from {backend} to {now}"
        );
    }
    let pods_after = agent_pods()?;
    ensure!(
        pods_before
            .split_whitespace()
            .all(|p| !pods_after.contains(p)),
        "the upgrade did not replace the agents: {pods_before} → {pods_after}"
    );
    eprintln!(
        "ok: 8 long-lived connections kept their backends through {rounds} rounds of the agent upgrade ({pods_before} → {pods_after})"
    );
    Ok(())
}

/// `socketLB.pods=true` on the running cluster (a helm upgrade): each agent
/// finds its node's real pods — containerd's network namespaces, through
/// their processes — and a pod's connections to a ClusterIP are connected
/// straight to the backends: they spread as before, the node's agent counts
/// them (`sock_pod_translated`) and tracks none of them in conntrack. Then
/// back to the default (host processes only).
fn socket_lb_for_pods() -> Result<()> {
    set_socket_lb_pods(true)?;
    // The rolling update replaced them.
    let echo = &backends("echo")?;
    let client = client_on(1);
    let client_ip = kubectl(&[
        "-n",
        NS,
        "get",
        "pod",
        &client.pod,
        "-o",
        "jsonpath={.status.podIP}",
    ])?;
    let listed = |agent: &str| inspect_on(agent, &["socket-pods"]);
    // An agent pod of the old template may still be terminating.
    switchyard_tests::wait::until(
        "node1's agent to find the client pod's namespace",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            Ok(agent_pod_on(1)
                .and_then(|agent| listed(&agent))
                .is_ok_and(|l| l.contains(&format!("{client_ip} "))))
        },
    )?;
    let agent = agent_pod_on(1)?;
    let translated = |agent: &str| -> Result<u64> {
        let stats: serde_json::Value =
            serde_json::from_str(&inspect_on(agent, &["-o", "json", "stats"])?)?;
        Ok(stats["sock_pod_translated"].as_u64().unwrap_or(0))
    };
    let before = translated(&agent)?;
    let vip = cluster_ip("echo")?.to_string();
    let seen: BTreeSet<String> = client
        .dial_many("http", &vip, 80, SPREAD_REQUESTS)?
        .into_iter()
        .collect();
    ensure!(
        &seen == echo,
        "{vip}:80 from {}: answered by {seen:?}",
        client.pod
    );
    let counted = translated(&agent)? - before;
    ensure!(
        counted >= SPREAD_REQUESTS as u64,
        "{counted} of {SPREAD_REQUESTS} connections translated at connect()"
    );
    // Entries of the pod's earlier requests (DNS, before) may live on.
    let conntrack = inspect_on(&agent, &["conntrack"])?;
    let tracked: Vec<&str> = conntrack
        .lines()
        .filter(|l| l.contains(&format!(" {client_ip}:")) && l.contains(&format!(" {vip}:80 ")))
        .collect();
    ensure!(
        tracked.is_empty(),
        "the pod's connections to {vip}:80 tracked per packet:\n{}",
        tracked.join("\n")
    );
    eprintln!(
        "ok: socket LB for pods: {counted} connections of {} ({client_ip}) connected straight to {} backends; node1's agent lists:\n{}",
        client.pod,
        seen.len(),
        listed(&agent)?
    );
    set_socket_lb_pods(false)
}

fn set_socket_lb_pods(on: bool) -> Result<()> {
    helm_upgrade_setting(&format!("socketLB.pods={on}"))?;
    agents_rolled_out()
}

/// `helm upgrade` of the release with its values and `value` (`key=value`).
fn helm_upgrade_setting(value: &str) -> Result<String> {
    let chart = switchyard_tests::chart::chart_dir();
    realcluster::helm(&[
        "upgrade",
        addons::RELEASE,
        chart.to_str().unwrap_or_default(),
        "--namespace",
        addons::NAMESPACE,
        "--reuse-values",
        "--set",
        value,
        "--wait",
        "--timeout",
        "180s",
    ])
}

/// Until every agent pod runs the DaemonSet's current template.
fn agents_rolled_out() -> Result<()> {
    kubectl(&[
        "-n",
        addons::NAMESPACE,
        "rollout",
        "status",
        "ds/switchyard",
        "--timeout=180s",
    ])
    .map(|_| ())
}

/// The agent pod on node `n`.
fn agent_pod_on(n: u8) -> Result<String> {
    let name = agent_pods_where(&[&format!("--field-selector=spec.nodeName=node{n}")])?;
    let mut names = name.split_whitespace();
    match (names.next(), names.next()) {
        (Some(one), None) => Ok(one.to_string()),
        _ => bail!("not one agent pod on node{n}: {name:?}"),
    }
}

/// `switchyard inspect ARGS` in agent pod `pod`.
fn inspect_on(pod: &str, args: &[&str]) -> Result<String> {
    let mut full = vec![
        "-n",
        addons::NAMESPACE,
        "exec",
        pod,
        "--",
        "switchyard",
        "inspect",
    ];
    full.extend_from_slice(args);
    kubectl(&full)
}

/// Program names of the datapath, as `bpftool prog show` lists them.
const PROGRAMS: [&str; 9] = [
    "from_pod",
    "to_pod",
    "from_world",
    "to_world",
    "xdp_world",
    "sock_connect4",
    "sock_sendmsg4",
    "sock_recvmsg4",
    "sock_getpeername4",
];

/// How many of the datapath's programs are loaded on the machine (tcx links
/// do not show in bookworm's `bpftool net`; every loaded program does here).
fn loaded_programs() -> Result<usize> {
    let progs = switchyard_tests::command::run(&["bpftool", "prog", "show"])?;
    Ok(PROGRAMS
        .iter()
        .map(|p| progs.matches(&format!(" name {p} ")).count())
        .sum())
}

fn uninstall_leaves_nothing_behind() -> Result<()> {
    // Before: every program on both nodes (XDP loaded, not attached: the
    // chart's `xdp: auto` leaves it off on the nodes' veth eth0, where tc
    // is faster), hooks on the cgroup.
    let loaded = loaded_programs()?;
    ensure!(
        loaded == PROGRAMS.len() * NODES.len(),
        "{loaded} datapath programs loaded before uninstall"
    );
    ensure!(
        !on_node(1, &["ip", "-d", "link", "show", "eth0"])?.contains("prog/xdp"),
        "--xdp auto attached XDP to node1's veth eth0"
    );
    realcluster::helm(&[
        "uninstall",
        addons::RELEASE,
        "--namespace",
        addons::NAMESPACE,
        "--wait",
        "--timeout",
        "120s",
    ])?;
    realcluster::wait_until("agent pods gone", Duration::from_secs(90), || {
        Ok(agent_pods()?.trim().is_empty())
    })?;
    for node in NODES {
        let pins = on_node(
            node,
            &[
                "sh",
                "-c",
                "ls -A /sys/fs/bpf/switchyard 2>/dev/null || true",
            ],
        )?;
        ensure!(
            pins.trim().is_empty(),
            "node{node} keeps pins after uninstall: {pins}"
        );
        let link = on_node(node, &["ip", "-d", "link", "show", "eth0"])?;
        ensure!(
            !link.contains("prog/xdp"),
            "node{node} keeps XDP on eth0 after uninstall:\n{link}"
        );
        let cgroup = on_node(
            node,
            &["bpftool", "cgroup", "tree", layout::NODE_CGROUP2_MOUNT],
        )?;
        ensure!(
            !cgroup.contains("sock_"),
            "node{node} keeps socket hooks after uninstall:\n{cgroup}"
        );
    }
    let loaded = loaded_programs()?;
    ensure!(
        loaded == 0,
        "{loaded} datapath programs still loaded after uninstall"
    );
    eprintln!("ok: helm uninstall left no pins, links or programs on either node");
    Ok(())
}

/// A node's containerd dies: `cluster status` says which, quickly.
fn status_names_a_dead_containerd() -> Result<()> {
    realcluster::daemon::stop("containerd-node2", Duration::from_secs(5))?;
    let asked = Instant::now();
    let report = realcluster::status::report();
    let took = asked.elapsed();
    let err = match report {
        Ok(text) => bail!("status is healthy with node2's containerd dead:\n{text}"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("FAIL  containerd-node2"),
        "status does not name containerd-node2:\n{err}"
    );
    ensure!(took < Duration::from_secs(60), "status took {took:?}");
    eprintln!(
        "ok: status with node2's containerd killed ({:.1} s):\n{err}",
        took.as_secs_f64()
    );
    Ok(())
}

/// What the cluster's daemons would leave on the machine if their paths
/// were not the nodes' own: network namespace files, containerd's fixed
/// directories, the CNI cache, the kubelet's log links.
fn machine_paths() -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for dir in [
        "/run/netns",
        "/run/containerd",
        "/run/containerd/s",
        "/var/lib/cni",
        "/var/log/containers",
        "/var/log/pods",
        "/opt/containerd",
        "/var/lib/kubelet",
    ] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            seen.insert(dir.to_string());
            for e in entries.flatten() {
                seen.insert(e.path().display().to_string());
            }
        }
    }
    seen
}

fn nothing_left_after_down(before: &BTreeSet<String>) -> Result<()> {
    let after = machine_paths();
    let left: Vec<&String> = after.difference(before).collect();
    ensure!(left.is_empty(), "left on the machine after down: {left:?}");
    for ns in ["sy-fabric", "sy-outside", "sy-node1", "sy-node2"] {
        ensure!(
            !std::path::Path::new("/run/netns").join(ns).exists(),
            "namespace {ns} left after down"
        );
    }
    ensure!(
        !layout::state_dir().exists(),
        "{} left after down",
        layout::state_dir().display()
    );
    for n in NODES {
        let cg = std::path::Path::new(layout::CGROUP_V2_ROOT).join(format!("node{n}"));
        ensure!(!cg.exists(), "{} left after down", cg.display());
    }
    Ok(())
}

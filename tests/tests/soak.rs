//! Churn soak with faults: on the two-node cluster against a real API
//! server, a client pod holds long-lived TCP connections to a ClusterIP and
//! opens new ones continuously, while endpoints are removed and re-added,
//! marked terminating and ready again, a second Service is created and
//! deleted, the agent is killed (-9) and restarted, the API server is
//! restarted, and the agent is upgraded in place. Counted and asserted:
//! - no long-lived connection is reset or stalls;
//! - no new connection to the stable Service fails;
//! - no new connection goes to a removed or terminating endpoint once the
//!   change is in the maps (between the write and the maps, old or new);
//! - requests to the flapping Service fail only while it does not exist.
//!
//! `SWITCHYARD_SOAK_SECONDS` (default 40) bounds the run; `cargo xtask soak`
//! runs it for five minutes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use switchyard_tests::apiserver::ApiServer;
use switchyard_tests::cluster::{control_plane_ip, node_name};
use switchyard_tests::{
    AgentProcess, AgentSource, EndpointSpec, MultiNode, PodServer, ServerPorts, cleanup_stale,
    endpoint_slice_yaml, wait,
};

const STABLE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 5, 10);
const FLAPPY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 5, 11);
const LONG_LIVED: usize = 12;

/// Backends: (name, node, pod number). The first of each node always stays.
const BACKENDS: [(&str, u8, u8); 4] = [
    ("n1stay", 1, 21),
    ("n1churn", 1, 22),
    ("n2stay", 2, 21),
    ("n2churn", 2, 22),
];

fn backend_ip(node: u8, i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node, i)
}

/// Endpoint conditions of one phase of the churn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Churn {
    AllReady,
    N1ChurnRemoved,
    N2ChurnTerminating,
    BothChurnRemoved,
}

impl Churn {
    fn endpoints(self) -> Vec<EndpointSpec> {
        BACKENDS
            .iter()
            .filter(|(name, _, _)| match self {
                Self::N1ChurnRemoved => *name != "n1churn",
                Self::BothChurnRemoved => !name.ends_with("churn"),
                _ => true,
            })
            .map(|(name, node, i)| {
                let terminating = self == Self::N2ChurnTerminating && *name == "n2churn";
                EndpointSpec {
                    ready: !terminating,
                    serving: true,
                    terminating,
                    node: node_name(*node),
                    ..EndpointSpec::ready(backend_ip(*node, *i))
                }
            })
            .collect()
    }

    /// The backends new connections may reach once this phase is applied.
    fn serving(self) -> BTreeSet<&'static str> {
        self.endpoints()
            .iter()
            .filter(|e| e.ready)
            .filter_map(|e| {
                BACKENDS
                    .iter()
                    .find(|(_, node, i)| backend_ip(*node, *i) == e.ip)
                    .map(|(name, _, _)| *name)
            })
            .collect()
    }

    fn backend_addrs(self) -> BTreeSet<String> {
        self.endpoints()
            .iter()
            .filter(|e| e.ready)
            .map(|e| format!("{}:8080", e.ip))
            .collect()
    }
}

/// A change of the stable Service's endpoints: when it was written, when
/// node 1's maps had it, and what it allows.
struct Change {
    written: Instant,
    applied: Instant,
    serving: BTreeSet<&'static str>,
}

#[derive(Default)]
struct Tally {
    /// (started, backend name or error) of each new connection to stable.
    stable: Vec<(Instant, Result<String, String>)>,
    /// Connections to the flapping Service: (started, ok).
    flappy: Vec<(Instant, bool)>,
}

fn request(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>) -> Result<String> {
    stream.write_all(b"x\n")?;
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        bail!("closed by the peer");
    }
    Ok(line.trim().to_string())
}

fn one_connection(to: SocketAddrV4) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(s.try_clone()?);
    request(&mut s, &mut reader)
}

struct Soak {
    agents: Vec<AgentProcess>,
    _servers: Vec<PodServer>,
    api: ApiServer,
    cluster: MultiNode,
}

impl Soak {
    fn start() -> Result<Self> {
        cleanup_stale();
        let mut cluster = MultiNode::new(2)?;
        cluster.node_mut(1).add_pod("client", 10)?;
        let mut servers = Vec::new();
        for (name, node, i) in BACKENDS {
            let pod = cluster.node_mut(node).add_pod(name, i)?;
            servers.push(pod.start_server(&ServerPorts::tcp_udp(8080, 5353))?);
        }
        let cp = cluster.add_control_plane()?.ns().to_string();
        let api = ApiServer::start_in(&cp, control_plane_ip())?;
        api.apply(&switchyard_tests::chart::agent_rbac()?)?;
        api.kubectl(&["create", "namespace", "soak"])?;
        api.register_nodes(&cluster)?;
        let mut soak = Self {
            agents: Vec::new(),
            _servers: servers,
            api,
            cluster,
        };
        soak.write_stable(Churn::AllReady)?;
        let kubeconfig = soak
            .api
            .service_account_kubeconfig("kube-system", "switchyard")?;
        for node in &soak.cluster.nodes {
            soak.agents.push(AgentProcess::start(node.agent_options(
                AgentSource::Kubeconfig(kubeconfig.clone()),
                &["--keep-datapath-on-exit"],
            ))?);
        }
        Ok(soak)
    }

    fn write_stable(&self, churn: Churn) -> Result<()> {
        self.api.apply(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: stable, namespace: soak}}\nspec:\n  clusterIP: {STABLE_VIP}\n  ports: [{{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}]\n---\n{}",
            endpoint_slice_yaml(
                "soak",
                "stable-1",
                "stable",
                &[("tcp", 8080, "TCP")],
                &churn.endpoints()
            )
        ))?;
        Ok(())
    }

    fn write_flappy(&self, exists: bool) -> Result<()> {
        if exists {
            self.api.apply(&format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: flappy, namespace: soak}}\nspec:\n  clusterIP: {FLAPPY_VIP}\n  ports: [{{name: tcp, port: 80, targetPort: 8080, protocol: TCP}}]\n---\n{}",
                endpoint_slice_yaml(
                    "soak",
                    "flappy-1",
                    "flappy",
                    &[("tcp", 8080, "TCP")],
                    &[EndpointSpec {
                        node: node_name(1),
                        ..EndpointSpec::ready(backend_ip(1, 21))
                    }]
                )
            ))?;
        } else {
            self.api.kubectl(&[
                "-n",
                "soak",
                "delete",
                "service/flappy",
                "endpointslice/flappy-1",
                "--wait=false",
            ])?;
        }
        Ok(())
    }

    /// Waits until node 1's maps hold `churn` for the stable Service.
    fn applied(&self, churn: Churn) -> Result<Instant> {
        let want = churn.backend_addrs();
        let agent = &self.agents[0];
        wait::until(
            "the endpoint change in node 1's maps",
            Duration::from_secs(30),
            Duration::from_millis(5),
            || {
                Ok(agent
                    .backends_of(&format!("{STABLE_VIP}:80/TCP"))
                    .map(|b| b.into_iter().collect::<BTreeSet<_>>() == want)
                    .unwrap_or(false))
            },
        )?;
        Ok(Instant::now())
    }

    /// Waits until node 1's maps have (or no longer have) the flapping
    /// Service.
    fn flappy_applied(&self, exists: bool) -> Result<Instant> {
        let agent = &self.agents[0];
        wait::until(
            "the flapping service in node 1's maps",
            Duration::from_secs(30),
            Duration::from_millis(5),
            || Ok(agent.backends_of(&format!("{FLAPPY_VIP}:80/TCP")).is_ok() == exists),
        )?;
        Ok(Instant::now())
    }
}

#[test]
fn churn_and_faults_lose_no_connection_and_misroute_none() -> Result<()> {
    let seconds: u64 = std::env::var("SWITCHYARD_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    let mut soak = Soak::start()?;
    soak.applied(Churn::AllReady)?;
    let client_ns = soak.cluster.node(1).topo.pod("client").ns().to_string();
    let stable = SocketAddrV4::new(STABLE_VIP, 80);
    let flappy = SocketAddrV4::new(FLAPPY_VIP, 80);

    // Long-lived connections: a request every 50 ms each, from one thread
    // per connection in the client pod.
    let stop = Arc::new(AtomicBool::new(false));
    let mut long_lived = Vec::new();
    let t0 = Instant::now();
    for _ in 0..LONG_LIVED {
        let stop = stop.clone();
        let ns = client_ns.clone();
        long_lived.push(std::thread::spawn(move || {
            switchyard_tests::client::in_netns(&ns, move || -> (String, u64, Option<String>) {
                let opened = (|| -> Result<(TcpStream, BufReader<TcpStream>)> {
                    let s = TcpStream::connect_timeout(&stable.into(), Duration::from_secs(2))?;
                    s.set_read_timeout(Some(Duration::from_secs(2)))?;
                    let r = BufReader::new(s.try_clone()?);
                    Ok((s, r))
                })();
                let (mut s, mut r) = match opened {
                    Ok(x) => x,
                    Err(e) => return ("?".into(), 0, Some(format!("connect: {e:#}"))),
                };
                let mut backend = String::from("?");
                let mut requests = 0u64;
                let port = s.local_addr().map(|a| a.port()).unwrap_or(0);
                while !stop.load(Ordering::Relaxed) {
                    let sent = t0.elapsed();
                    match request(&mut s, &mut r) {
                        Ok(name) => {
                            if requests > 0 && name != backend {
                                return (
                                    backend.clone(),
                                    requests,
                                    Some(format!(
                                        "port {port}: moved from {backend} to {name} at {sent:.3?}"
                                    )),
                                );
                            }
                            backend = name;
                            requests += 1;
                        }
                        Err(e) => {
                            return (
                                backend,
                                requests,
                                Some(format!("port {port}: request sent at {sent:.3?}: {e:#}")),
                            );
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                (backend, requests, None)
            })
        }));
    }

    // New connections, continuously, to both services (one thread each: a
    // connection to the flapping service while it is absent waits for its
    // timeout).
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut openers = Vec::new();
    for (to, flapping) in [(stable, false), (flappy, true)] {
        let (stop, tally) = (stop.clone(), tally.clone());
        let ns = client_ns.clone();
        openers.push(std::thread::spawn(move || {
            switchyard_tests::client::in_netns(&ns, move || {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let result = one_connection(to).map_err(|e| format!("{e:#}"));
                    if let Ok(mut t) = tally.lock() {
                        if flapping {
                            t.flappy.push((started, result.is_ok()));
                        } else {
                            t.stable.push((started, result));
                        }
                    }
                    std::thread::sleep(Duration::from_millis(if flapping { 20 } else { 2 }));
                }
            })
        }));
    }

    // The churn, with the faults at fixed points of the run.
    let started = t0;
    let deadline = started + Duration::from_secs(seconds);
    let mut changes = vec![Change {
        written: started,
        applied: started,
        serving: Churn::AllReady.serving(),
    }];
    // (written, applied, exists) of the flapping Service.
    let mut flaps: Vec<(Instant, Instant, bool)> = vec![(started, started, false)];
    let phases = [
        Churn::N1ChurnRemoved,
        Churn::AllReady,
        Churn::N2ChurnTerminating,
        Churn::AllReady,
        Churn::BothChurnRemoved,
        Churn::AllReady,
    ];
    let mut faults: Vec<(&str, bool)> = vec![
        ("agent kill -9", false),
        ("API server restart", false),
        ("in-place upgrade", false),
    ];
    // The "new release": a copy of the binary and its BPF object elsewhere.
    let upgrade_dir =
        std::env::temp_dir().join(format!("switchyard-upgrade-{}", std::process::id()));
    std::fs::create_dir_all(&upgrade_dir)?;
    let current = switchyard_tests::paths::switchyard_bin()?;
    let upgrade_binary = upgrade_dir.join("switchyard");
    std::fs::copy(&current, &upgrade_binary).context("copying the agent binary for the upgrade")?;
    std::fs::copy(
        current.with_file_name("switchyard.bpf.o"),
        upgrade_dir.join("switchyard.bpf.o"),
    )
    .context("copying the BPF object for the upgrade")?;
    let mut step = 0usize;
    let mut fault_log = Vec::new();
    while Instant::now() < deadline {
        let churn = phases[step % phases.len()];
        let written = Instant::now();
        soak.write_stable(churn)?;
        let applied = soak.applied(churn)?;
        changes.push(Change {
            written,
            applied,
            serving: churn.serving(),
        });
        if step.is_multiple_of(2) {
            let exists = step.is_multiple_of(4);
            let written = Instant::now();
            soak.write_flappy(exists)?;
            flaps.push((written, soak.flappy_applied(exists)?, exists));
        }
        let progress = started.elapsed().as_secs_f64() / seconds as f64;
        for (i, (fault, done)) in faults.iter_mut().enumerate() {
            if *done || progress < 0.2 + 0.25 * i as f64 {
                continue;
            }
            *done = true;
            let t = Instant::now();
            match i {
                0 => {
                    soak.agents[0].kill9();
                    // Changes while it is down are applied when it is back.
                    soak.write_stable(Churn::N1ChurnRemoved)?;
                    let written = Instant::now();
                    soak.agents[0].start_again()?;
                    let applied = soak.applied(Churn::N1ChurnRemoved)?;
                    changes.push(Change {
                        written,
                        applied,
                        serving: Churn::N1ChurnRemoved.serving(),
                    });
                }
                1 => {
                    soak.api.stop_apiserver()?;
                    std::thread::sleep(Duration::from_secs(1));
                    soak.api.start_apiserver()?;
                }
                _ => {
                    for agent in &mut soak.agents {
                        agent.upgrade_to(upgrade_binary.clone())?;
                    }
                }
            }
            fault_log.push(format!(
                "{fault} at {:.1?} (took {:.1?})",
                t - started,
                t.elapsed()
            ));
        }
        step += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    // Settle, then stop the clients.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut long_results = Vec::new();
    for t in long_lived {
        long_results.push(
            t.join()
                .map_err(|_| anyhow::anyhow!("long-lived client panicked"))??,
        );
    }
    for opener in openers {
        opener
            .join()
            .map_err(|_| anyhow::anyhow!("opener panicked"))??;
    }
    let _ = std::fs::remove_dir_all(&upgrade_dir);

    // Judge the new connections against the change timeline.
    let tally = tally
        .lock()
        .map_err(|_| anyhow::anyhow!("tally poisoned"))?;
    let mut per_backend: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed = Vec::new();
    let mut misrouted = Vec::new();
    for (at, result) in &tally.stable {
        match result {
            Err(e) => failed.push(format!("{:.3?}: {e}", *at - started)),
            Ok(name) => {
                *per_backend.entry(name.clone()).or_default() += 1;
                // Allowed: the last applied change's set, plus the sets of
                // changes written but not yet applied when it started.
                let mut allowed: BTreeSet<&str> = changes
                    .iter()
                    .filter(|c| c.applied <= *at)
                    .max_by_key(|c| c.applied)
                    .map(|c| c.serving.clone())
                    .unwrap_or_default();
                for c in changes
                    .iter()
                    .filter(|c| c.written <= *at && *at < c.applied)
                {
                    allowed.extend(c.serving.iter());
                }
                if !allowed.contains(name.as_str()) {
                    misrouted.push(format!(
                        "{:.3?}: {name} (allowed {allowed:?})",
                        *at - started
                    ));
                }
            }
        }
    }
    let mut flappy_unexpected = Vec::new();
    let (mut flappy_ok, mut flappy_refused) = (0, 0);
    for (at, ok) in &tally.flappy {
        if *ok {
            flappy_ok += 1;
        } else {
            flappy_refused += 1;
        }
        // Must succeed when it surely exists: created and applied before the
        // attempt, and no deletion written before the attempt ended.
        let state = flaps.iter().filter(|f| f.1 <= *at).max_by_key(|f| f.1);
        let pending = flaps
            .iter()
            .any(|f| f.0 <= *at && *at < f.1 + Duration::from_secs(2));
        if state.is_some_and(|s| s.2) && !pending && !ok {
            flappy_unexpected.push(format!("{:.3?}", *at - started));
        }
    }
    let broken: Vec<String> = long_results
        .iter()
        .filter_map(|(backend, requests, error)| {
            error
                .as_ref()
                .map(|e| format!("on {backend} after {requests} requests: {e}"))
        })
        .collect();
    let remapped = soak.agents[0]
        .inspect(&["-o", "json", "stats"])
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|stats| stats["source_port_remapped"].as_u64())
        .unwrap_or(0);
    eprintln!(
        "soak {seconds} s (source_port_remapped {remapped}): {} endpoint changes, {} flaps, faults: {fault_log:?}\n\
         new connections to stable: {} ({} failed, {} misrouted), per backend {per_backend:?}\n\
         flapping service: {flappy_ok} answered, {flappy_refused} not (only while absent)\n\
         long-lived: {} connections, {} requests, {} broken, on {:?}",
        changes.len() - 1,
        flaps.len() - 1,
        tally.stable.len(),
        failed.len(),
        misrouted.len(),
        long_results.len(),
        long_results.iter().map(|r| r.1).sum::<u64>(),
        broken.len(),
        long_results
            .iter()
            .map(|r| r.0.as_str())
            .collect::<Vec<_>>(),
    );
    // Judged after the agents' logs are out, so the verdict is the last
    // thing a failed run prints.
    let mut problems = Vec::new();
    if !faults.iter().all(|f| f.1) {
        problems.push(format!("not every fault happened: {faults:?}"));
    }
    if !broken.is_empty() {
        problems.push(format!("long-lived connections broke: {broken:#?}"));
    }
    if !failed.is_empty() {
        problems.push(format!("new connections to stable failed: {failed:#?}"));
    }
    if !misrouted.is_empty() {
        problems.push(format!("misrouted: {misrouted:#?}"));
    }
    if !flappy_unexpected.is_empty() {
        problems.push(format!(
            "the flapping service failed while it existed: {flappy_unexpected:?}"
        ));
    }
    if tally.stable.len() <= 100 {
        problems.push("too few connections to judge".into());
    }
    if !problems.is_empty() {
        for agent in &soak.agents {
            agent.print_log_tail();
        }
        drop(soak);
        bail!("soak failed:\n{}", problems.join("\n"));
    }
    drop(soak);
    Ok(())
}

//! The agent against a real kube-apiserver (and etcd), on the two-node
//! namespace cluster: the API server runs on a control-plane host of the
//! underlay, the agents reach it over their nodes' external interfaces with
//! a ServiceAccount token bound to the chart's least-privilege ClusterRole.
//! Objects are written with the real kubectl. Needs root and the binaries of
//! scripts/k8s-binaries.sh.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use switchyard_tests::apiserver::{ApiServer, TRIGGER_TIME_PLACEHOLDER, rfc3339_nanos};
use switchyard_tests::client::ask;
use switchyard_tests::cluster::{control_plane_ip, node_ip, node_name};
use switchyard_tests::command::run as run_cmd;
use switchyard_tests::{
    AgentProcess, AgentSource, EndpointSpec, MultiNode, PodServer, ServerPorts, cleanup_stale,
    endpoint_slice_yaml, wait,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 10);
const TIMEOUT: Duration = Duration::from_secs(2);
const LB_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

/// Two nodes (backends n1b1 on node 1, n2b1 and n2b2 on node 2, a client
/// pod on each), a control-plane host with etcd + kube-apiserver, one agent
/// per node. Field order is drop order.
struct KubeCluster {
    agents: Vec<AgentProcess>,
    _servers: Vec<PodServer>,
    api: ApiServer,
    cluster: MultiNode,
}

impl KubeCluster {
    fn start() -> Result<Self> {
        cleanup_stale();
        let mut cluster = MultiNode::new(2)?;
        cluster.node_mut(1).add_pod("client1", 10)?;
        cluster.node_mut(2).add_pod("client2", 10)?;
        let mut servers = Vec::new();
        for (node, name, i) in [(1, "n1b1", 21), (2, "n2b1", 21), (2, "n2b2", 22)] {
            let pod = cluster.node_mut(node).add_pod(name, i)?;
            servers.push(pod.start_server(&ServerPorts::tcp_udp(8080, 5353))?);
        }
        let cp_ns = cluster.add_control_plane()?.ns().to_string();
        let api = ApiServer::start_in(&cp_ns, control_plane_ip())?;
        // The agents run with the chart's ServiceAccount and RBAC.
        api.apply(&switchyard_tests::chart::agent_rbac()?)?;
        api.kubectl(&["create", "namespace", "test"])?;
        api.register_nodes(&cluster)?;
        let kubeconfig = api.service_account_kubeconfig("kube-system", "switchyard")?;
        let mut agents = Vec::new();
        for node in &cluster.nodes {
            agents.push(AgentProcess::start(
                node.agent_options(AgentSource::Kubeconfig(kubeconfig.clone()), &[]),
            )?);
        }
        Ok(Self {
            agents,
            _servers: servers,
            api,
            cluster,
        })
    }

    fn endpoint(&self, name: &str) -> EndpointSpec {
        let (node, i) = match name {
            "n1b1" => (1, 21),
            "n2b1" => (2, 21),
            _ => (2, 22),
        };
        EndpointSpec {
            node: node_name(node),
            ..EndpointSpec::ready(self.cluster.node(node).pod_ip(i))
        }
    }

    /// The slice of test/web with these backends, with the trigger-time
    /// annotation left for the `SliceWriter` to stamp at the write.
    fn unstamped_slice(&self, names: &[&str]) -> String {
        let eps: Vec<EndpointSpec> = names.iter().map(|n| self.endpoint(n)).collect();
        endpoint_slice_yaml(
            "test",
            "web-1",
            "web",
            &[("tcp", 8080, "TCP"), ("udp", 5353, "UDP")],
            &eps,
        )
        .replacen(
            "  labels:\n",
            &format!(
                "  annotations:\n    endpoints.kubernetes.io/last-change-trigger-time: \"{TRIGGER_TIME_PLACEHOLDER}\"\n  labels:\n"
            ),
            1,
        )
    }

    /// The slice of test/web with these backends, stamped with the
    /// trigger time the EndpointSlice controller would set.
    fn slice(&self, names: &[&str]) -> String {
        let eps: Vec<EndpointSpec> = names.iter().map(|n| self.endpoint(n)).collect();
        endpoint_slice_yaml(
            "test",
            "web-1",
            "web",
            &[("tcp", 8080, "TCP"), ("udp", 5353, "UDP")],
            &eps,
        )
        .replacen(
            "  labels:\n",
            &format!(
                "  annotations:\n    endpoints.kubernetes.io/last-change-trigger-time: \"{}\"\n  labels:\n",
                rfc3339_nanos(SystemTime::now())
            ),
            1,
        )
    }

    fn service(&self, port: u16, spec_extra: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: test}}\nspec:\n  clusterIP: {VIP}\n{spec_extra}  ports:\n  - {{name: tcp, port: {port}, targetPort: 8080, protocol: TCP}}\n  - {{name: udp, port: 53, targetPort: 5353, protocol: UDP}}\n"
        )
    }

    /// Waits until every agent programs exactly `names` at `frontend`;
    /// returns how long that took.
    fn wait_backends(&self, frontend: &str, names: &[&str]) -> Result<Duration> {
        self.wait_backends_on(&[1, 2], frontend, names)
    }

    fn wait_backends_within(
        &self,
        frontend: &str,
        names: &[&str],
        limit: Duration,
    ) -> Result<Duration> {
        self.wait_backends_for(&[1, 2], frontend, names, limit)
    }

    /// Like [`KubeCluster::wait_backends`], on the agents of `nodes` only
    /// (a node serves node ports on its own addresses).
    fn wait_backends_on(&self, nodes: &[u8], frontend: &str, names: &[&str]) -> Result<Duration> {
        self.wait_backends_for(nodes, frontend, names, Duration::from_secs(10))
    }

    fn wait_backends_for(
        &self,
        nodes: &[u8],
        frontend: &str,
        names: &[&str],
        limit: Duration,
    ) -> Result<Duration> {
        let started = Instant::now();
        let mut want: Vec<String> = names
            .iter()
            .map(|n| {
                format!(
                    "{}:{}",
                    self.endpoint(n).ip,
                    if frontend.ends_with("UDP") {
                        5353
                    } else {
                        8080
                    }
                )
            })
            .collect();
        want.sort();
        for agent in nodes.iter().map(|n| &self.agents[usize::from(*n) - 1]) {
            wait::until(
                &format!("{frontend} → {names:?} on nodes {nodes:?}"),
                limit,
                Duration::from_millis(10),
                || {
                    let mut got = agent.backends_of(frontend).unwrap_or_default();
                    got.sort();
                    Ok(got == want && (!want.is_empty() || agent.backends_of(frontend).is_ok()))
                },
            )
            .with_context(|| agent.log_tail())?;
        }
        Ok(started.elapsed())
    }

    fn wait_gone(&self, frontend: &str) -> Result<()> {
        for agent in &self.agents {
            wait::until(
                &format!("{frontend} gone on every node"),
                Duration::from_secs(10),
                Duration::from_millis(10),
                || Ok(agent.backends_of(frontend).is_err()),
            )?;
        }
        Ok(())
    }

    fn answers(
        &self,
        pod: &switchyard_tests::Pod,
        to: SocketAddrV4,
        n: usize,
    ) -> Result<BTreeSet<String>> {
        let mut seen = BTreeSet::new();
        for _ in 0..n {
            seen.insert(pod.tcp_request(to, TIMEOUT)?);
        }
        let _ = self;
        Ok(seen)
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// `key=value` numbers from the agents' "maps synced" log lines.
fn logged_values(log: &str, key: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("maps synced"))
        .filter_map(|l| {
            let rest = l.split(&format!("{key}=")).nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[test]
fn services_follow_the_api_server_through_scale_port_and_type_changes() -> Result<()> {
    let c = KubeCluster::start()?;
    let client = c.cluster.node(1).topo.pod("client1");
    let tcp = SocketAddrV4::new(VIP, 80);

    // Create: the service with one backend.
    c.api.apply(&c.service(80, ""))?;
    c.api.apply(&c.slice(&["n1b1"]))?;
    let took = c.wait_backends("10.96.1.10:80/TCP", &["n1b1"])?;
    eprintln!("create visible on both nodes after {took:?}");
    assert_eq!(c.answers(client, tcp, 5)?, set(&["n1b1"]));
    let (who, from) = client.udp_request_from(SocketAddrV4::new(VIP, 53), TIMEOUT)?;
    assert_eq!(
        (who.as_str(), from.to_string()),
        ("n1b1", "10.96.1.10:53".into())
    );

    // Scale up to three backends on both nodes, then down to one remote.
    c.api.apply(&c.slice(&["n1b1", "n2b1", "n2b2"]))?;
    let took = c.wait_backends("10.96.1.10:80/TCP", &["n1b1", "n2b1", "n2b2"])?;
    eprintln!("scale up visible after {took:?}");
    assert_eq!(c.answers(client, tcp, 30)?, set(&["n1b1", "n2b1", "n2b2"]));
    c.api.apply(&c.slice(&["n2b2"]))?;
    c.wait_backends("10.96.1.10:80/TCP", &["n2b2"])?;
    assert_eq!(c.answers(client, tcp, 10)?, set(&["n2b2"]));

    // Port change: the old frontend goes, the new one serves.
    c.api.apply(&c.service(8081, ""))?;
    c.wait_backends("10.96.1.10:8081/TCP", &["n2b2"])?;
    c.wait_gone("10.96.1.10:80/TCP")?;
    assert_eq!(
        c.answers(client, SocketAddrV4::new(VIP, 8081), 5)?,
        set(&["n2b2"])
    );

    // ClusterIP → NodePort: reachable from outside on both nodes.
    c.api.apply(&c.service(8081, "  type: NodePort\n").replace(
        "port: 8081, targetPort: 8080, protocol: TCP",
        "port: 8081, targetPort: 8080, protocol: TCP, nodePort: 30080",
    ))?;
    for n in 1..=2u8 {
        c.wait_backends_on(&[n], &format!("{}:30080/TCP", node_ip(n)), &["n2b2"])?;
    }
    let external = c.cluster.external();
    for n in 1..=2 {
        assert_eq!(
            external.tcp_request(SocketAddrV4::new(node_ip(n), 30080), TIMEOUT)?,
            "n2b2",
            "node port on node {n}"
        );
    }

    // NodePort → LoadBalancer with an ingress IP written to the status, as a
    // cloud controller would.
    c.api
        .apply(&c.service(8081, "  type: LoadBalancer\n").replace(
            "port: 8081, targetPort: 8080, protocol: TCP",
            "port: 8081, targetPort: 8080, protocol: TCP, nodePort: 30080",
        ))?;
    c.api.kubectl(&[
        "-n",
        "test",
        "patch",
        "service",
        "web",
        "--subresource=status",
        "--type=merge",
        "-p",
        &format!("{{\"status\":{{\"loadBalancer\":{{\"ingress\":[{{\"ip\":\"{LB_IP}\"}}]}}}}}}"),
    ])?;
    c.wait_backends(&format!("{LB_IP}:8081/TCP"), &["n2b2"])?;
    c.cluster.route_external_via("192.0.2.0/24", 1)?;
    assert_eq!(
        external.tcp_request(SocketAddrV4::new(LB_IP, 8081), TIMEOUT)?,
        "n2b2"
    );

    // Delete: every frontend of the service goes from every node.
    c.api.kubectl(&["-n", "test", "delete", "service", "web"])?;
    for frontend in [
        "10.96.1.10:8081/TCP".to_string(),
        "10.96.1.10:53/UDP".into(),
        format!("{}:30080/TCP", node_ip(1)),
        format!("{LB_IP}:8081/TCP"),
    ] {
        c.wait_gone(&frontend)?;
    }
    c.wait_gone(&format!("{}:30080/TCP", node_ip(2)))?;

    // A Service Switchyard cannot program (SCTP): its owner is told on the
    // Service itself, by every node, naming the field.
    c.api.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: sctp, namespace: test}\n\
         spec:\n  clusterIP: 10.96.1.12\n  ports: [{port: 9999, protocol: SCTP}]\n",
    )?;
    let mut told = String::new();
    switchyard_tests::wait::until(
        "a NotProgrammed event on test/sctp from each node",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            told = c.api.kubectl(&[
                "-n",
                "test",
                "get",
                "events.events.k8s.io",
                "--field-selector=regarding.name=sctp,reason=NotProgrammed",
                "-o",
                "jsonpath={range .items[*]}{.reportingInstance} {.type} {.note}{\"\\n\"}{end}",
            ])?;
            Ok(told.lines().count() == 2)
        },
    )?;
    for n in 1..=2u8 {
        assert!(
            told.contains(&format!(
                "{} Warning spec.ports[0].protocol: SCTP is not supported",
                node_name(n)
            )),
            "{told}"
        );
    }
    // The API server's own `kubernetes` service is programmed too.
    let services = c.agents[0].inspect(&["services"])?;
    assert!(services.contains("default/kubernetes"), "{services}");
    Ok(())
}

#[test]
fn endpoint_changes_propagate_quickly_and_metrics_show_it() -> Result<()> {
    let c = KubeCluster::start()?;
    c.api.apply(&c.service(80, ""))?;
    c.api.apply(&c.slice(&["n1b1"]))?;
    c.wait_backends("10.96.1.10:80/TCP", &["n1b1"])?;
    let before = logged_values(&c.agents[0].log_text(), "propagation_ms").len();

    // 100 EndpointSlice writes through one API client, each waited for,
    // alternating 1 and 2 backends.
    let writer = c.api.slice_writer()?;
    let mut observed = Vec::new();
    for i in 0..100 {
        let names: &[&str] = if i % 2 == 0 {
            &["n1b1", "n2b1"]
        } else {
            &["n1b1"]
        };
        writer.apply(&c.unstamped_slice(names))?;
        observed.push(c.wait_backends("10.96.1.10:80/TCP", names)?.as_secs_f64() * 1000.0);
    }
    // The agent's own measure: trigger time at the API → maps written.
    let mut delays: Vec<f64> = logged_values(&c.agents[0].log_text(), "propagation_ms")
        .into_iter()
        .skip(before)
        .collect();
    delays.sort_by(f64::total_cmp);
    observed.sort_by(f64::total_cmp);
    eprintln!(
        "propagation over {} changes (agent, trigger time → maps): median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        delays.len(),
        percentile(&delays, 50.0),
        percentile(&delays, 99.0),
        delays.last().copied().unwrap_or(f64::NAN)
    );
    eprintln!(
        "seen by the test (write returned → both nodes' maps, polled with inspect): median {:.1} ms, p99 {:.1} ms",
        percentile(&observed, 50.0),
        percentile(&observed, 99.0)
    );
    assert!(
        delays.len() >= 100,
        "every change logged a delay: {}",
        delays.len()
    );

    // The same figure on /metrics, with the rest of the agent's series.
    let host = c.cluster.node(1).host();
    let (status, metrics) = host.http_get_path(
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10249),
        "/metrics",
        TIMEOUT,
    )?;
    assert_eq!(status, 200);
    let count_line = metrics
        .lines()
        .find(|l| l.starts_with("switchyard_propagation_delay_seconds_count"))
        .context("propagation histogram on /metrics")?;
    let count: u64 = count_line
        .split_whitespace()
        .last()
        .and_then(|v| v.parse().ok())
        .context("histogram count")?;
    assert!(count >= 100, "{count_line}");
    for series in [
        "switchyard_frontends_programmed",
        "switchyard_sync_duration_seconds_count{kind=\"incremental\"}",
        "switchyard_watch_events_total{resource=\"endpointslices\"}",
        "switchyard_datapath_packets_total{reason=\"new_flow\"}",
        "switchyard_map_capacity{map=\"conntrack\"} 262144",
        "switchyard_service_new_flows_total{service=\"test/web:tcp\"",
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from /metrics:\n{metrics}"
        );
    }
    let health = SocketAddrV4::new(node_ip(1), 10256);
    assert_eq!(host.http_get_path(health, "/readyz", TIMEOUT)?.0, 200);
    assert_eq!(host.http_get_path(health, "/livez", TIMEOUT)?.0, 200);
    assert_eq!(host.http_get_path(health, "/", TIMEOUT)?.0, 404);
    Ok(())
}

#[test]
fn api_server_and_agent_restarts_lose_no_established_connection() -> Result<()> {
    let mut c = KubeCluster::start()?;
    c.api.apply(&c.service(80, ""))?;
    c.api.apply(&c.slice(&["n1b1", "n2b1", "n2b2"]))?;
    c.wait_backends("10.96.1.10:80/TCP", &["n1b1", "n2b1", "n2b2"])?;
    // A second service, deleted while the agents are down.
    c.api.apply(
        &c.service(80, "")
            .replace("name: web", "name: other")
            .replace("10.96.1.10", "10.96.1.11"),
    )?;
    c.wait_backends("10.96.1.11:80/TCP", &[])?;

    let client = c.cluster.node(1).topo.pod("client1");
    let mut conns = Vec::new();
    for _ in 0..8 {
        let mut s = client.tcp_connect(SocketAddrV4::new(VIP, 80), TIMEOUT)?;
        let on = ask(&mut s)?;
        conns.push((s, on));
    }
    let check = |conns: &mut Vec<(std::net::TcpStream, String)>, when: &str| -> Result<()> {
        for (s, on) in conns.iter_mut() {
            let got = ask(s).with_context(|| format!("connection to {on} {when}"))?;
            assert_eq!(&got, on, "connection moved {when}");
        }
        Ok(())
    };

    // Network cut between the nodes and the API server (its replies to the
    // nodes are blackholed): the datapath keeps serving, a change made
    // meanwhile arrives once the network is back.
    let cp = c.api.netns().to_string();
    for n in 1..=2 {
        run_cmd(&[
            "ip",
            "-n",
            &cp,
            "route",
            "add",
            "blackhole",
            &format!("{}/32", node_ip(n)),
        ])?;
    }
    std::thread::sleep(Duration::from_secs(3));
    check(&mut conns, "during the network cut")?;
    let other_slice = endpoint_slice_yaml(
        "test",
        "other-1",
        "other",
        &[("tcp", 8080, "TCP"), ("udp", 5353, "UDP")],
        &[c.endpoint("n1b1")],
    );
    c.api.apply(&other_slice)?;
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        c.agents[0].backends_of("10.96.1.11:80/TCP")?.is_empty(),
        "the change cannot arrive during the cut"
    );
    for n in 1..=2 {
        run_cmd(&[
            "ip",
            "-n",
            &cp,
            "route",
            "del",
            "blackhole",
            &format!("{}/32", node_ip(n)),
        ])?;
    }
    let started = Instant::now();
    c.wait_backends_within("10.96.1.11:80/TCP", &["n1b1"], Duration::from_secs(60))?;
    eprintln!(
        "change made during the cut applied {:?} after the network came back",
        started.elapsed()
    );
    check(&mut conns, "after the network cut")?;

    // API server crash: the datapath keeps serving the last known state.
    c.api.stop_apiserver()?;
    wait::until(
        "the agents to notice the API server is gone",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            Ok(c.agents.iter().all(|a| {
                a.log_text()
                    .contains("retrying, the last known state stays programmed")
            }))
        },
    )?;
    check(&mut conns, "while the API server is down")?;
    assert_eq!(
        c.answers(client, SocketAddrV4::new(VIP, 80), 20)?,
        set(&["n1b1", "n2b1", "n2b2"]),
        "new connections while the API server is down"
    );
    c.api.start_apiserver()?;
    // Back: a change made now is applied (the watch resumed or relisted).
    c.api.apply(&c.slice(&["n1b1", "n2b1"]))?;
    c.wait_backends("10.96.1.10:80/TCP", &["n1b1", "n2b1"])?;
    check(
        &mut conns
            .iter_mut()
            .filter(|(_, on)| on != "n2b2")
            .map(|(s, on)| (s.try_clone().expect("clone"), on.clone()))
            .collect(),
        "after the API server came back",
    )?;
    // The connections to n2b2 (no longer an endpoint) are kept too: removed
    // endpoints keep their established TCP flows, as with kube-proxy.
    check(&mut conns, "after n2b2 left the endpoints")?;

    // Agent crash on node 1, and a service deleted while it is down.
    c.agents[0].kill9();
    check(&mut conns, "while the agent is down")?;
    c.api
        .kubectl(&["-n", "test", "delete", "service", "other"])?;
    c.agents[0].start_again()?;
    check(&mut conns, "after the agent restarted")?;
    c.wait_gone("10.96.1.11:80/TCP")?;
    let log = c.agents[0].log_text();
    assert!(
        log.contains("adopted_services="),
        "{}",
        c.agents[0].log_tail()
    );
    check(&mut conns, "after the stale service was removed")?;
    Ok(())
}

/// NetworkPolicy from the API server: Pods (their addresses written to
/// `status` as the kubelet does), a Namespace and a NetworkPolicy written
/// with kubectl; node 2's agent isolates its pod, node 1's client is
/// refused there and not at the other pod, and a deleted policy is lifted.
/// Prints how long the deletion took to reach the datapath (20 rounds).
#[test]
fn network_policy_from_the_api_server_isolates_a_pod_on_its_node() -> Result<()> {
    let c = KubeCluster::start()?;
    // No controller manager here to make it.
    c.api
        .kubectl(&["-n", "test", "create", "serviceaccount", "default"])?;
    for (name, node, i, app) in [
        ("n2b1", 2, 21, "web"),
        ("n2b2", 2, 22, "db"),
        ("client1", 1, 10, "client"),
    ] {
        let ip = c.cluster.node(node).pod_ip(i);
        c.api.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: test, labels: {{app: {app}}}}}\n\
             spec: {{nodeName: {}, containers: [{{name: main, image: pause, ports: [{{name: http, containerPort: 8080}}]}}]}}\n",
            node_name(node)
        ))?;
        let status = format!(
            r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}]}}}}"#
        );
        c.api.kubectl(&[
            "-n",
            "test",
            "patch",
            "pod",
            name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ])?;
    }
    let client = c.cluster.node(1).topo.pod("client1");
    let web = SocketAddrV4::new(c.cluster.node(2).pod_ip(21), 8080);
    let db = SocketAddrV4::new(c.cluster.node(2).pod_ip(22), 8080);
    let denied = Duration::from_millis(300);
    assert!(client.tcp_request(web, TIMEOUT).is_ok());
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-from-nobody, namespace: test}\nspec: {podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: {matchLabels: {app: db}}}]}]}\n";
    let mut lifted = Vec::new();
    for round in 0..20 {
        c.api.apply(policy)?;
        wait::until(
            "web isolated",
            Duration::from_secs(10),
            Duration::from_millis(10),
            || Ok(client.tcp_request(web, denied).is_err()),
        )
        .with_context(|| c.agents[1].log_tail())?;
        assert!(
            client.tcp_request(db, TIMEOUT).is_ok(),
            "round {round}: db is not selected"
        );
        if round == 0 {
            let shown = c.agents[1].inspect(&["policy"])?;
            assert!(
                shown.contains("test/n2b1") && shown.contains("test/web-from-nobody"),
                "{shown}"
            );
        }
        // From before kubectl runs: an upper bound (kubectl's own start
        // and request included).
        let deleted = Instant::now();
        c.api
            .kubectl(&["-n", "test", "delete", "networkpolicy", "web-from-nobody"])?;
        wait::until(
            "web reachable again",
            Duration::from_secs(10),
            Duration::ZERO,
            || Ok(client.tcp_request(web, Duration::from_millis(20)).is_ok()),
        )?;
        lifted.push(deleted.elapsed().as_secs_f64() * 1e3);
    }
    lifted.sort_by(f64::total_cmp);
    let p = |q: f64| lifted[((lifted.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "kubectl delete networkpolicy started → pod reachable again, {} rounds: p50 {:.0} ms, p99 {:.0} ms, all {lifted:.0?}",
        lifted.len(),
        p(0.5),
        p(0.99)
    );
    Ok(())
}

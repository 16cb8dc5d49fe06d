//! Several nodes on a shared underlay, one agent per node, all reading the
//! same cluster state: cross-node ClusterIP and node-local traffic policy
//! with real traffic. Needs root.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::Result;
use switchyard_tests::{
    AgentOptions, AgentProcess, EndpointSpec, ManifestDir, MultiNode, PodServer, ServerPorts,
    cleanup_stale, cluster::node_name, endpoint_slice_yaml, is_refused, service_yaml, wait,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 10);
const TIMEOUT: Duration = Duration::from_secs(2);

/// Two nodes. Node 1: `client1`, backend `n1b1`. Node 2: `client2`,
/// backends `n2b1`, `n2b2`. One agent per node. Field order is drop order.
struct TwoNodes {
    agents: Vec<AgentProcess>,
    /// Kept for their lifetime: the servers stop when the cluster drops.
    _servers: Vec<PodServer>,
    manifests: ManifestDir,
    cluster: MultiNode,
}

impl TwoNodes {
    fn start() -> Result<Self> {
        cleanup_stale();
        let mut cluster = MultiNode::new(2)?;
        let mut servers = Vec::new();
        cluster.node_mut(1).add_pod("client1", 10)?;
        cluster.node_mut(2).add_pod("client2", 10)?;
        for (node, name, i) in [(1, "n1b1", 21), (2, "n2b1", 21), (2, "n2b2", 22)] {
            let pod = cluster.node_mut(node).add_pod(name, i)?;
            servers.push(pod.start_server(&ServerPorts::tcp_udp(8080, 5353))?);
        }
        let manifests = ManifestDir::new()?;
        let mut agents = Vec::new();
        for node in &cluster.nodes {
            agents.push(AgentProcess::start(AgentOptions {
                node_ns: node.topo.node_ns().to_string(),
                pin_dir: format!("/sys/fs/bpf/{}", node.topo.id()).into(),
                manifests: manifests.path().to_path_buf(),
                pod_ifaces: node.topo.pod_iface_glob(),
                extra_args: vec!["--node-name".into(), node.name()],
            })?);
        }
        Ok(Self {
            agents,
            _servers: servers,
            manifests,
            cluster,
        })
    }

    fn endpoints(&self) -> Vec<EndpointSpec> {
        [(1, 21), (2, 21), (2, 22)]
            .iter()
            .map(|(node, i)| EndpointSpec {
                node: node_name(*node),
                ..EndpointSpec::ready(self.cluster.node(*node).pod_ip(*i))
            })
            .collect()
    }

    /// Writes the Service (with `extra_spec` lines appended to its spec) and
    /// its slice, and waits until every agent has the service; callers wait
    /// for the exact backends they expect.
    fn apply(&self, extra_spec: &str, endpoints: &[EndpointSpec]) -> Result<()> {
        let svc = service_yaml(
            "test",
            "web",
            VIP,
            &[("tcp", 80, 8080, "TCP"), ("udp", 53, 5353, "UDP")],
        );
        let slice = endpoint_slice_yaml(
            "test",
            "web-1",
            "web",
            &[("tcp", 8080, "TCP"), ("udp", 5353, "UDP")],
            endpoints,
        );
        self.manifests
            .write("web.yaml", &format!("{svc}{extra_spec}---\n{slice}"))?;
        for agent in &self.agents {
            wait::until(
                "the service on every node",
                Duration::from_secs(5),
                Duration::from_millis(20),
                || Ok(agent.backends_of("10.96.1.10:80/TCP").is_ok()),
            )?;
        }
        Ok(())
    }

    fn pod(&self, node: u8, name: &str) -> &switchyard_tests::Pod {
        self.cluster.node(node).topo.pod(name)
    }
}

fn answers(pod: &switchyard_tests::Pod, n: usize) -> Result<BTreeSet<String>> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        seen.insert(pod.tcp_request(SocketAddrV4::new(VIP, 80), TIMEOUT)?);
        let (who, from) = pod.udp_request_from(SocketAddrV4::new(VIP, 53), TIMEOUT)?;
        assert_eq!(
            from,
            SocketAddr::V4(SocketAddrV4::new(VIP, 53)),
            "UDP reply not from the VIP"
        );
        seen.insert(who);
    }
    Ok(seen)
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn cluster_ip_reaches_backends_on_every_node_from_every_node() -> Result<()> {
    let c = TwoNodes::start()?;
    c.apply("", &c.endpoints())?;
    for agent in &c.agents {
        wait::until(
            "all three backends",
            Duration::from_secs(5),
            Duration::from_millis(20),
            || Ok(agent.backends_of("10.96.1.10:80/TCP")?.len() == 3),
        )?;
    }
    let all = set(&["n1b1", "n2b1", "n2b2"]);
    assert_eq!(answers(c.pod(1, "client1"), 30)?, all, "from node 1");
    assert_eq!(answers(c.pod(2, "client2"), 30)?, all, "from node 2");
    // Each node tracks its own clients' connections only.
    let ct1 = c.agents[0].inspect(&["conntrack"])?;
    let ct2 = c.agents[1].inspect(&["conntrack"])?;
    assert!(
        ct1.contains("10.244.1.10:") && !ct1.contains("10.244.2.10:"),
        "{ct1}"
    );
    assert!(
        ct2.contains("10.244.2.10:") && !ct2.contains("10.244.1.10:"),
        "{ct2}"
    );
    Ok(())
}

#[test]
fn internal_traffic_policy_local_keeps_traffic_on_the_node() -> Result<()> {
    let c = TwoNodes::start()?;
    c.apply("  internalTrafficPolicy: Local\n", &c.endpoints())?;
    wait::until(
        "node-local backends on node 1",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || Ok(c.agents[0].backends_of("10.96.1.10:80/TCP")? == vec!["10.244.1.21:8080".to_string()]),
    )?;
    assert_eq!(
        answers(c.pod(1, "client1"), 20)?,
        set(&["n1b1"]),
        "node 1 serves itself"
    );
    assert_eq!(
        answers(c.pod(2, "client2"), 20)?,
        set(&["n2b1", "n2b2"]),
        "node 2 serves itself"
    );

    // Node 1 loses its only local endpoint: its clients are refused rather
    // than sent to another node; node 2 is unaffected.
    let node2_only: Vec<EndpointSpec> = c
        .endpoints()
        .into_iter()
        .filter(|e| e.node == node_name(2))
        .collect();
    c.apply("  internalTrafficPolicy: Local\n", &node2_only)?;
    wait::until(
        "no local backend on node 1",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || Ok(c.agents[0].backends_of("10.96.1.10:80/TCP")?.is_empty()),
    )?;
    let err = c
        .pod(1, "client1")
        .tcp_request(SocketAddrV4::new(VIP, 80), TIMEOUT)
        .expect_err("no local endpoint");
    assert!(is_refused(&err), "{err:#}");
    assert_eq!(answers(c.pod(2, "client2"), 10)?, set(&["n2b1", "n2b2"]));
    Ok(())
}

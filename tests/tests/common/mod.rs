//! The two-node cluster the multi-node test files share.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Result;
use switchyard_tests::{
    AgentOptions, AgentProcess, AgentSource, EndpointSpec, ManifestDir, MultiNode, PodServer,
    ServerPorts, cleanup_stale, cluster::node_name, endpoint_slice_yaml, service_yaml, wait,
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 10);
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Two nodes. Node 1: `client1`, backend `n1b1`. Node 2: `client2`,
/// backends `n2b1`, `n2b2`. One agent per node. Field order is drop order.
pub struct TwoNodes {
    pub agents: Vec<AgentProcess>,
    /// Per node, when socket LB is on: the cgroup its host processes run in.
    pub cgroups: Vec<switchyard_tests::host::NodeCgroup>,
    /// Kept for their lifetime: the servers stop when the cluster drops.
    _servers: Vec<PodServer>,
    pub manifests: ManifestDir,
    pub cluster: MultiNode,
}

impl TwoNodes {
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// `agent_args` go to every node's agent, after `--node-name`.
    pub fn start_with(agent_args: &[&str]) -> Result<Self> {
        Self::start_inner(agent_args, None)
    }

    /// Agents with socket-level load balancing for the node's own processes
    /// on a cgroup per node ([`TwoNodes::cgroups`]).
    pub fn start_with_socket_lb(agent_args: &[&str]) -> Result<Self> {
        Self::start_inner(agent_args, Some("host"))
    }

    /// Agents with socket-level load balancing for their pods too: a pod's
    /// processes run in a cgroup of their own below the node's.
    pub fn start_with_socket_lb_pods(agent_args: &[&str]) -> Result<Self> {
        Self::start_inner(agent_args, Some("pods"))
    }

    fn start_inner(agent_args: &[&str], socket_lb: Option<&str>) -> Result<Self> {
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
        let mut cgroups = Vec::new();
        if socket_lb.is_some() {
            for _ in &cluster.nodes {
                cgroups.push(switchyard_tests::host::NodeCgroup::new()?);
            }
        }
        let mut agents = Vec::new();
        for (i, node) in cluster.nodes.iter().enumerate() {
            let socket_args: Vec<String> = cgroups
                .get(i)
                .map(|cg| {
                    vec![
                        "--socket-lb".to_string(),
                        socket_lb.unwrap_or("host").into(),
                        "--cgroup".into(),
                        cg.path().display().to_string(),
                    ]
                })
                .unwrap_or_default();
            agents.push(AgentProcess::start(AgentOptions {
                node_ns: node.topo.node_ns().to_string(),
                pin_dir: format!("/sys/fs/bpf/{}", node.topo.id()).into(),
                source: AgentSource::Manifests(manifests.path().to_path_buf()),
                pod_ifaces: node.topo.pod_iface_glob(),
                extra_args: ["--node-name".to_string(), node.name()]
                    .into_iter()
                    .chain(agent_args.iter().map(|a| a.to_string()))
                    .chain(socket_args)
                    .collect(),
            })?);
        }
        Ok(Self {
            agents,
            cgroups,
            _servers: servers,
            manifests,
            cluster,
        })
    }

    pub fn endpoints(&self) -> Vec<EndpointSpec> {
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
    pub fn apply(&self, extra_spec: &str, endpoints: &[EndpointSpec]) -> Result<()> {
        let svc = service_yaml(
            "test",
            "web",
            VIP,
            &[("tcp", 80, 8080, "TCP"), ("udp", 53, 5353, "UDP")],
        );
        self.apply_service(&format!("{svc}{extra_spec}"), endpoints)
    }

    /// Writes `service` (the whole Service YAML of test/web) and its slice,
    /// and waits until every agent has the service's cluster IP.
    pub fn apply_service(&self, service: &str, endpoints: &[EndpointSpec]) -> Result<()> {
        let slice = endpoint_slice_yaml(
            "test",
            "web-1",
            "web",
            &[("tcp", 8080, "TCP"), ("udp", 5353, "UDP")],
            endpoints,
        );
        self.manifests
            .write("web.yaml", &format!("{service}---\n{slice}"))?;
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

    pub fn pod(&self, node: u8, name: &str) -> &switchyard_tests::Pod {
        self.cluster.node(node).topo.pod(name)
    }
}

//! One node, four backend pods behind the Service `test/web`, one of them
//! slow (each answer waits 20 ms), and a client pod: the setup the
//! scheduler tests and `cargo xtask bench schedulers` share.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::measure::{RequestLoad, request_load};
use crate::{
    AgentOptions, AgentProcess, AgentSource, EndpointSpec, ManifestDir, PodServer, ServerPorts,
    Topology, cleanup_stale, endpoint_slice_yaml, service_yaml, wait, with_annotation,
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const FRONTEND: &str = "10.96.0.10:80/TCP";
pub const ANNOTATION: &str = "switchyard.io/lb-algorithm";
pub const BACKENDS: u8 = 4;
/// The slow one: `b3`.
pub const SLOW: &str = "b3";

pub fn backend_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, 20 + i)
}

/// Field order is drop order: agent, servers, then namespaces.
pub struct SlowBackendCluster {
    pub agent: AgentProcess,
    _servers: Vec<PodServer>,
    manifests: ManifestDir,
    pub topo: Topology,
}

impl SlowBackendCluster {
    /// The cluster with the Service annotated with `algorithm` (None: no
    /// annotation) and the agent started with `agent_args`, once the
    /// frontend shows the scheduler `shown` (None: random).
    pub fn start(
        algorithm: Option<&str>,
        shown: Option<&str>,
        agent_args: &[&str],
    ) -> Result<Self> {
        cleanup_stale();
        let mut topo = Topology::new()?;
        topo.add_pod("client", Ipv4Addr::new(10, 244, 0, 10))?;
        let mut servers = Vec::new();
        for i in 0..BACKENDS {
            let pod = topo.add_pod(&format!("b{i}"), backend_ip(i))?;
            let mut ports = ServerPorts::tcp_udp(8080, 5353);
            if i == BACKENDS - 1 {
                ports.answer_delay = Duration::from_millis(20);
            }
            servers.push(pod.start_server(&ports)?);
        }
        let manifests = ManifestDir::new()?;
        manifests.write("web.yaml", &service(algorithm))?;
        let endpoints: Vec<EndpointSpec> = (0..BACKENDS)
            .map(|i| EndpointSpec::ready(backend_ip(i)))
            .collect();
        let slice =
            endpoint_slice_yaml("test", "web-1", "web", &[("tcp", 8080, "TCP")], &endpoints);
        manifests.write("web-slice.yaml", &slice)?;
        let agent = AgentProcess::start(AgentOptions {
            node_ns: topo.node_ns().to_string(),
            pin_dir: format!("/sys/fs/bpf/{}", topo.id()).into(),
            source: AgentSource::Manifests(manifests.path().to_path_buf()),
            pod_ifaces: topo.pod_iface_glob(),
            extra_args: agent_args.iter().map(|a| a.to_string()).collect(),
        })?;
        let c = Self {
            agent,
            _servers: servers,
            manifests,
            topo,
        };
        c.wait_for_policy(shown)?;
        Ok(c)
    }

    /// Writes the Service with `algorithm` in its annotation (None: none)
    /// and waits until the frontend's policy shows `shown`.
    pub fn annotate(&self, algorithm: Option<&str>, shown: Option<&str>) -> Result<()> {
        self.manifests.write("web.yaml", &service(algorithm))?;
        self.wait_for_policy(shown)
    }

    fn wait_for_policy(&self, shown: Option<&str>) -> Result<()> {
        wait::until(
            "the frontend's scheduler in inspect",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                let policy = self.policy()?;
                // "maglev=251": the table size follows the name.
                let name = |p: &String| p.split('=').next().unwrap_or_default().to_string();
                let schedulers = ["round-robin", "least-connection", "maglev"];
                let now = policy
                    .iter()
                    .map(name)
                    .find(|p| schedulers.contains(&p.as_str()));
                Ok(self.agent.backends_of(FRONTEND)?.len() == BACKENDS as usize
                    && now.as_deref() == shown)
            },
        )?;
        Ok(())
    }

    pub fn policy(&self) -> Result<Vec<String>> {
        let services = self.agent.services_json()?;
        let row = services
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["frontend"] == FRONTEND))
            .context("frontend not programmed")?;
        Ok(row["policy"]
            .as_array()
            .map(|p| {
                p.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Steady load: `workers` clients, a new connection per request, at
    /// `rate` requests per second in all (None: as fast as answered).
    pub fn load(&self, workers: usize, rate: Option<f64>, period: Duration) -> Result<RequestLoad> {
        let to = SocketAddrV4::new(VIP, 80);
        let load = self
            .topo
            .pod("client")
            .in_netns(move || request_load(to, workers, rate, period))?;
        anyhow::ensure!(load.failed == 0, "{} requests failed", load.failed);
        Ok(load)
    }

    /// `inspect backends`: address → open flows.
    pub fn open_flows(&self) -> Result<BTreeMap<String, u64>> {
        let rows: serde_json::Value =
            serde_json::from_str(&self.agent.inspect(&["-o", "json", "backends"])?)?;
        Ok(rows
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["protocol"] == "TCP")
            .map(|r| {
                let address = r["address"].as_str().unwrap_or("?").to_string();
                (address, r["open_flows"].as_u64().unwrap_or(u64::MAX))
            })
            .collect())
    }
}

fn service(algorithm: Option<&str>) -> String {
    let plain = service_yaml("test", "web", VIP, &[("tcp", 80, 8080, "TCP")]);
    match algorithm {
        Some(a) => with_annotation(&plain, ANNOTATION, a),
        None => plain,
    }
}

pub fn slow_share(load: &RequestLoad) -> f64 {
    let per = load.per_backend();
    per.get(SLOW).copied().unwrap_or(0) as f64 / load.requests.len().max(1) as f64
}

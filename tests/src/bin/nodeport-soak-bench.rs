//! `cargo xtask bench nodeport-soak`: many short TCP connections through
//! one NodePort whose backend is on the same node, translated by native XDP
//! (`--xdp native` on the veth), counting every connection that fails and
//! how. It exists to settle the benchmark's occasional resets: a reset means
//! a client segment reached the node's own stack untranslated.
//!
//! `SOAK_CONNECTIONS` (default 10 000 000) connections from the external
//! client, which reuses TIME_WAIT ports (`tcp_tw_reuse`) as the benchmark
//! does. Progress every 250 000 on stderr; the summary (connections,
//! failures by kind, the agent's drop counters) on stdout.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use switchyard_tests::cluster::{node_ip, node_name};
use switchyard_tests::measure::tcp_once;
use switchyard_tests::{
    AgentOptions, AgentProcess, AgentSource, EndpointSpec, ManifestDir, MultiNode, ServerPorts,
    cleanup_stale, endpoint_slice_yaml, wait,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 3, 1);
const NODE_PORT: u16 = 30083;

#[derive(Default, Debug)]
struct Failures {
    reset: u64,
    refused: u64,
    timed_out: u64,
    other: u64,
}

impl Failures {
    fn count(&mut self, e: &anyhow::Error) {
        let kind = e.downcast_ref::<std::io::Error>().map(|e| e.kind());
        match kind {
            Some(ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => self.reset += 1,
            Some(ErrorKind::ConnectionRefused) => self.refused += 1,
            Some(ErrorKind::TimedOut | ErrorKind::WouldBlock) => self.timed_out += 1,
            _ => self.other += 1,
        }
    }

    fn total(&self) -> u64 {
        self.reset + self.refused + self.timed_out + self.other
    }
}

fn manifests(backend: Ipv4Addr) -> Result<ManifestDir> {
    let dir = ManifestDir::new()?;
    let service = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: soak, namespace: bench}}\nspec:\n  type: NodePort\n  clusterIP: {VIP}\n  ports:\n  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP, nodePort: {NODE_PORT}}}\n"
    );
    let ep = EndpointSpec {
        node: node_name(1),
        ..EndpointSpec::ready(backend)
    };
    let slice = endpoint_slice_yaml("bench", "soak-1", "soak", &[("tcp", 8080, "TCP")], &[ep]);
    dir.write("soak.yaml", &format!("{service}---\n{slice}"))?;
    Ok(dir)
}

fn main() -> Result<()> {
    let connections: u64 = std::env::var("SOAK_CONNECTIONS")
        .ok()
        .map(|v| v.parse().context("SOAK_CONNECTIONS"))
        .transpose()?
        .unwrap_or(10_000_000);
    cleanup_stale();
    let mut cluster = MultiNode::new(1)?;
    let pod = cluster.node_mut(1).add_pod("backend", 21)?;
    let _server = pod.start_server(&ServerPorts::tcp_udp(8080, 5353))?;
    let manifests = manifests(cluster.node(1).pod_ip(21))?;
    let node = cluster.node(1);
    let agent = AgentProcess::start(AgentOptions {
        node_ns: node.topo.node_ns().to_string(),
        pin_dir: format!("/sys/fs/bpf/{}", node.topo.id()).into(),
        source: AgentSource::Manifests(manifests.path().to_path_buf()),
        pod_ifaces: node.topo.pod_iface_glob(),
        extra_args: [
            "--node-name",
            &node.name(),
            "--external-ifaces",
            "ext0",
            "--xdp",
            "native",
        ]
        .map(String::from)
        .to_vec(),
    })?;
    let external_ns = cluster.external().ns().to_string();
    switchyard_tests::command::sysctl(&external_ns, "net.ipv4.tcp_tw_reuse", "1")?;
    let to = SocketAddrV4::new(node_ip(1), NODE_PORT);
    wait::until(
        "the node port to answer",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            Ok(switchyard_tests::client::in_netns(&external_ns, move || {
                tcp_once(to, Duration::from_millis(500))
            })?
            .is_ok())
        },
    )?;
    let started = Instant::now();
    let failures = switchyard_tests::client::in_netns(&external_ns, move || {
        let started = Instant::now();
        let mut failures = Failures::default();
        for i in 1..=connections {
            if let Err(e) = tcp_once(to, Duration::from_secs(2)) {
                eprintln!("connection {i} failed: {e:#}");
                failures.count(&e);
            }
            if i % 250_000 == 0 {
                eprintln!(
                    "{i} connections, {} failed, {:.0} s",
                    failures.total(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
        failures
    })?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{connections} NodePort connections through native XDP in {secs:.0} s ({:.0}/s): {} failed {failures:?}",
        connections as f64 / secs,
        failures.total()
    );
    println!("{}", agent.inspect(&["stats"])?);
    Ok(())
}

//! `cargo xtask bench nodeport`: NodePort throughput through the XDP path
//! and through the tc path, in the same run, on the two-node namespace
//! cluster, from the external client.
//!
//! Two services on node 1's address: one whose only backend is on node 1
//! (XDP translates and redirects it when XDP is on), one whose only backend
//! is on node 2 (DNAT + SNAT + forwarding, in tc either way). For each, TCP
//! connections per second (connect, one request/reply, close) and UDP
//! request/replies per second on one socket, each over a fixed time; the
//! agents are restarted with `--xdp native` and `--xdp off` alternately, for
//! several rounds. Prints a Markdown table (median and min–max per cell).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context, Result};
use switchyard_tests::cluster::{node_ip, node_name};
use switchyard_tests::measure::{conn_rate, median_and_range, tcp_once, udp_rate};
use switchyard_tests::{
    AgentOptions, AgentProcess, AgentSource, EndpointSpec, ManifestDir, MultiNode, ServerPorts,
    cleanup_stale, endpoint_slice_yaml, wait,
};

const ROUNDS: usize = 5;
const PERIOD: Duration = Duration::from_secs(2);

fn service(name: &str, vip: Ipv4Addr, tcp_node_port: u16, udp_node_port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: bench}}\nspec:\n  type: NodePort\n  clusterIP: {vip}\n  ports:\n  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP, nodePort: {tcp_node_port}}}\n  - {{name: udp, port: 53, targetPort: 5353, protocol: UDP, nodePort: {udp_node_port}}}\n"
    )
}

fn main() -> Result<()> {
    cleanup_stale();
    let mut cluster = MultiNode::new(2)?;
    let mut servers = Vec::new();
    for (node, name, i) in [(1, "local", 21), (2, "remote", 21)] {
        let pod = cluster.node_mut(node).add_pod(name, i)?;
        servers.push(pod.start_server(&ServerPorts::tcp_udp(8080, 5353))?);
    }
    let manifests = ManifestDir::new()?;
    for (name, vip, tcp, udp, node) in [
        ("local", Ipv4Addr::new(10, 96, 2, 1), 30081, 30091, 1u8),
        ("remote", Ipv4Addr::new(10, 96, 2, 2), 30082, 30092, 2u8),
    ] {
        let ep = EndpointSpec {
            node: node_name(node),
            ..EndpointSpec::ready(cluster.node(node).pod_ip(21))
        };
        let slice = endpoint_slice_yaml(
            "bench",
            &format!("{name}-1"),
            name,
            &[("tcp", 8080, "TCP"), ("udp", 5353, "UDP")],
            &[ep],
        );
        manifests.write(
            &format!("{name}.yaml"),
            &format!("{}---\n{slice}", service(name, vip, tcp, udp)),
        )?;
    }
    let external_ns = cluster.external().ns().to_string();
    // Thousands of short connections per second from one client: reuse
    // its TIME_WAIT ports, or the client's port space is the bottleneck.
    switchyard_tests::command::sysctl(&external_ns, "net.ipv4.tcp_tw_reuse", "1")?;
    let cases = [
        ("local backend", 30081u16, 30091u16),
        ("remote backend (SNAT)", 30082, 30092),
    ];
    // (mode, case) → (tcp rates, udp rates)
    let mut results: Vec<(&str, &str, Vec<f64>, Vec<f64>)> = Vec::new();
    for mode in ["native", "off"] {
        for (case, _, _) in cases {
            results.push((mode, case, Vec::new(), Vec::new()));
        }
    }
    for round in 0..ROUNDS {
        for mode in ["native", "off"] {
            let mut agents = Vec::new();
            for node in &cluster.nodes {
                agents.push(AgentProcess::start(AgentOptions {
                    node_ns: node.topo.node_ns().to_string(),
                    pin_dir: format!("/sys/fs/bpf/{}", node.topo.id()).into(),
                    source: AgentSource::Manifests(manifests.path().to_path_buf()),
                    pod_ifaces: node.topo.pod_iface_glob(),
                    extra_args: vec![
                        "--node-name".into(),
                        node.name(),
                        "--external-ifaces".into(),
                        "ext0".into(),
                        "--xdp".into(),
                        mode.into(),
                        // The SNAT pool (default 4001 ports, each held until
                        // its closed connection expires, 10 s) caps new
                        // connections to remote backends at ~400/s; widen and
                        // recycle it so the path, not the pool, is measured.
                        "--snat-ports".into(),
                        "30000-65000".into(),
                        "--ct-timeout-tcp-closing".into(),
                        "2".into(),
                        "--ct-gc-interval".into(),
                        "1".into(),
                    ],
                })?);
            }
            for (case, tcp_port, udp_port) in cases {
                let tcp = SocketAddrV4::new(node_ip(1), tcp_port);
                let udp = SocketAddrV4::new(node_ip(1), udp_port);
                wait::until(
                    "the node port to answer",
                    Duration::from_secs(10),
                    Duration::from_millis(50),
                    || {
                        let ns = external_ns.clone();
                        Ok(switchyard_tests::client::in_netns(&ns, move || {
                            tcp_once(tcp, Duration::from_millis(500))
                        })?
                        .is_ok())
                    },
                )?;
                let ns = external_ns.clone();
                let (t, u) =
                    switchyard_tests::client::in_netns(&ns, move || -> Result<(f64, f64)> {
                        Ok((
                            match conn_rate(tcp, PERIOD)? {
                                (rate, 0) => rate,
                                (_, failed) => {
                                    anyhow::bail!("{failed} connections to {tcp} failed")
                                }
                            },
                            udp_rate(udp, PERIOD)?,
                        ))
                    })??;
                let row = results
                    .iter_mut()
                    .find(|r| r.0 == mode && r.1 == case)
                    .context("result row")?;
                row.2.push(t);
                row.3.push(u);
                eprintln!("round {round} xdp={mode} {case}: {t:.0} conn/s, {u:.0} udp req/s");
            }
            drop(agents);
        }
    }
    println!("| path | flow | TCP connections/s | UDP request/replies/s |");
    println!("| --- | --- | --- | --- |");
    for (mode, case, tcp, udp) in results {
        let path = if mode == "native" {
            "XDP (native) + tc"
        } else {
            "tc only (--xdp off)"
        };
        println!(
            "| {path} | {case} | {} | {} |",
            median_and_range(tcp),
            median_and_range(udp)
        );
    }
    drop(servers);
    Ok(())
}

//! `cargo xtask demo`: the agent in standalone mode balancing real traffic
//! between pods in network namespaces.
//!
//! Builds a node with a client pod and three backend pods, writes a Service
//! (TCP 80 → 8080, UDP 53 → 5353) and its EndpointSlice, starts
//! `switchyard agent --standalone`, sends requests from the client to the
//! ClusterIP, shows which backend answered each, shows what the maps hold,
//! and cleans everything up.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::Result;
use switchyard_tests::{
    AgentOptions, AgentProcess, AgentSource, EndpointSpec, ManifestDir, ServerPorts, Topology,
    cleanup_stale, endpoint_slice_yaml, is_refused, service_yaml,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const TIMEOUT: Duration = Duration::from_secs(2);

fn step(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

fn main() -> Result<()> {
    cleanup_stale();
    step("building a node namespace with a client pod and three backend pods");
    let mut topo = Topology::new()?;
    topo.add_pod("client", Ipv4Addr::new(10, 244, 0, 10))?;
    let backends = [
        ("echo-a", Ipv4Addr::new(10, 244, 0, 11)),
        ("echo-b", Ipv4Addr::new(10, 244, 0, 12)),
        ("echo-c", Ipv4Addr::new(10, 244, 0, 13)),
    ];
    let mut servers = Vec::new();
    for (name, ip) in backends {
        topo.add_pod(name, ip)?;
        servers.push(
            topo.pod(name)
                .start_server(&ServerPorts::tcp_udp(8080, 5353))?,
        );
        println!("  pod {name:<7} {ip:<12} serving tcp/8080 and udp/5353, answering {name:?}");
    }
    println!("  pod client  10.244.0.10");

    step("writing manifests: Service demo/echo (ClusterIP 10.96.0.10) and its EndpointSlice");
    let manifests = ManifestDir::new()?;
    let service = service_yaml(
        "demo",
        "echo",
        VIP,
        &[("tcp", 80, 8080, "TCP"), ("udp", 53, 5353, "UDP")],
    );
    let slice = endpoint_slice_yaml(
        "demo",
        "echo-1",
        "echo",
        &[("tcp", 8080, "TCP"), ("udp", 5353, "UDP")],
        &backends
            .iter()
            .map(|(_, ip)| EndpointSpec::ready(*ip))
            .collect::<Vec<_>>(),
    );
    manifests.write("echo.yaml", &format!("{service}---\n{slice}"))?;
    let empty = service_yaml(
        "demo",
        "nobody-home",
        EMPTY_VIP,
        &[("tcp", 80, 8080, "TCP")],
    );
    manifests.write("nobody-home.yaml", &empty)?;
    println!(
        "{}",
        std::fs::read_to_string(manifests.path().join("echo.yaml"))?
    );

    step("starting switchyard agent --standalone in the node namespace");
    let agent = AgentProcess::start(AgentOptions {
        node_ns: topo.node_ns().to_string(),
        pin_dir: format!("/sys/fs/bpf/{}", topo.id()).into(),
        source: AgentSource::Manifests(manifests.path().to_path_buf()),
        pod_ifaces: topo.pod_iface_glob(),
        extra_args: vec![],
    })?;
    println!(
        "  agent running; maps pinned under {}",
        agent.pin_dir().display()
    );

    let client = topo.pod("client");
    step("9 TCP connections from the client to 10.96.0.10:80");
    for i in 1..=9 {
        let who = client.tcp_request(SocketAddrV4::new(VIP, 80), TIMEOUT)?;
        println!("  tcp request {i}: answered by {who}");
    }
    step("9 UDP datagrams from the client to 10.96.0.10:53");
    for i in 1..=9 {
        let (who, from) = client.udp_request_from(SocketAddrV4::new(VIP, 53), TIMEOUT)?;
        println!("  udp request {i}: answered by {who} (reply source {from})");
    }
    step("a service with no endpoints is refused, like kube-proxy does");
    match client.tcp_request(SocketAddrV4::new(EMPTY_VIP, 80), TIMEOUT) {
        Err(e) if is_refused(&e) => {
            println!("  connect to 10.96.0.20:80: connection refused (ICMP port unreachable)")
        }
        other => println!("  unexpected: {other:?}"),
    }

    step("switchyard inspect services");
    print!("{}", agent.inspect(&["services"])?);
    step("switchyard inspect conntrack (one row per connection)");
    let conntrack = agent.inspect(&["conntrack"])?;
    for line in conntrack.lines().take(8) {
        println!("{line}");
    }
    let more = conntrack.lines().count().saturating_sub(8);
    if more > 0 {
        println!("  … {more} more");
    }
    step("switchyard inspect stats");
    print!("{}", agent.inspect(&["stats"])?);

    step("cleaning up");
    drop(agent);
    drop(servers);
    drop(topo);
    println!("  namespaces, agent and pinned maps removed");
    Ok(())
}

//! `cargo xtask bench clusterip`: a pod's TCP connection rate and request
//! latency to one backend, directly (the pod IP: the limit) and through a
//! ClusterIP programmed by Switchyard, with 1, 1 000 and 10 000 services in
//! the maps; alternating, repeated, median and range. (kube-proxy's side of
//! issue 6 is not in this benchmark yet.)

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context, Result};
use switchyard_tests::measure::{conn_rate, latency, median_and_range};
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
    let server = topo
        .add_pod("b0", BACKEND)?
        .start_server(&ServerPorts::tcp_udp(8080, 5353))?;
    // Many short connections from one client: reuse TIME_WAIT ports.
    for pod in ["client", "direct"] {
        switchyard_tests::command::sysctl(topo.pod(pod).ns(), "net.ipv4.tcp_tw_reuse", "1")?;
    }
    println!(
        "| services | direct conn/s | ClusterIP conn/s | ratio | direct p50/p99 µs | ClusterIP p50/p99 µs |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
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
        let agent = AgentProcess::start_within(
            AgentOptions {
                node_ns: topo.node_ns().to_string(),
                pin_dir: format!("/sys/fs/bpf/{}", topo.id()).into(),
                source: AgentSource::Manifests(manifests.path().to_path_buf()),
                pod_ifaces: topo.pod_iface_glob(),
                extra_args: vec![],
            },
            Duration::from_secs(120),
        )?;
        wait::until(
            "the service",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || Ok(agent.backends_of("10.96.0.10:80/TCP").is_ok()),
        )?;
        let client = topo.pod("client");
        let direct_client = topo.pod("direct");
        let (mut direct, mut via) = (Vec::new(), Vec::new());
        let (mut direct_lat, mut via_lat) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
        for _ in 0..ROUNDS {
            for (from, target, rates, lat) in [
                (
                    direct_client,
                    SocketAddrV4::new(BACKEND, 8080),
                    &mut direct,
                    &mut direct_lat,
                ),
                (client, SocketAddrV4::new(VIP, 80), &mut via, &mut via_lat),
            ] {
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
            }
        }
        let ratio = {
            let mut d = direct.clone();
            let mut v = via.clone();
            d.sort_by(f64::total_cmp);
            v.sort_by(f64::total_cmp);
            v[v.len() / 2] / d[d.len() / 2]
        };
        println!(
            "| {scale} | {} | {} | {:.1} % | {} / {} | {} / {} |",
            median_and_range(direct),
            median_and_range(via),
            ratio * 100.0,
            median_and_range(direct_lat.0),
            median_and_range(direct_lat.1),
            median_and_range(via_lat.0),
            median_and_range(via_lat.1)
        );
        drop(agent);
    }
    drop(server);
    Ok(())
}

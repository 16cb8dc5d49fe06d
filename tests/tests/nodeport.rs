//! Traffic from outside the cluster: NodePort, LoadBalancer IPs and
//! external IPs, on two nodes with an external client on the underlay.
//! Asserts on which backend answered, the source the client saw and the
//! source the backend saw. Needs root.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::{Context, Result};
use switchyard_tests::cluster::{external_client_ip, node_ip};
use switchyard_tests::wait;

mod common;
use common::{TIMEOUT, TwoNodes, VIP};

const NODE_PORT_TCP: u16 = 30080;
const NODE_PORT_UDP: u16 = 30053;
const HEALTH_PORT: u16 = 32000;
const LB_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);

/// Service test/web of type LoadBalancer with node ports, an LB ingress IP
/// and an external IP; `extra` goes into its spec.
fn load_balancer(extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: test}}\nspec:\n  type: LoadBalancer\n  clusterIP: {VIP}\n  externalIPs: [{EXTERNAL_IP}]\n{extra}  ports:\n  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP, nodePort: {NODE_PORT_TCP}}}\n  - {{name: udp, port: 53, targetPort: 5353, protocol: UDP, nodePort: {NODE_PORT_UDP}}}\nstatus:\n  loadBalancer:\n    ingress: [{{ip: {LB_IP}}}]\n"
    )
}

fn start(extra: &str) -> Result<TwoNodes> {
    start_with(extra, &[])
}

/// The agents on ext0, with native XDP unless `agent_args` choose (these
/// tests cover the XDP path, which `--xdp auto` leaves off on a veth).
fn start_with(extra: &str, agent_args: &[&str]) -> Result<TwoNodes> {
    let xdp: &[&str] = if agent_args.contains(&"--xdp") {
        &[]
    } else {
        &["--xdp", "native"]
    };
    let args: Vec<&str> = ["--external-ifaces", "ext0"]
        .iter()
        .chain(xdp)
        .chain(agent_args)
        .copied()
        .collect();
    let c = TwoNodes::start_with(&args)?;
    c.cluster.route_external_via("192.0.2.0/24", 1)?;
    c.apply_service(&load_balancer(extra), &c.endpoints())?;
    for agent in &c.agents {
        wait::until(
            "node port programmed",
            Duration::from_secs(5),
            Duration::from_millis(20),
            || {
                let json = agent.services_json()?;
                Ok(json.as_array().is_some_and(|rows| {
                    rows.iter().any(|r| {
                        r["frontend"]
                            .as_str()
                            .is_some_and(|f| f.ends_with(":30080/TCP"))
                    })
                }))
            },
        )?;
    }
    Ok(c)
}

fn tcp_answers(c: &TwoNodes, to: SocketAddrV4, n: usize) -> Result<BTreeSet<String>> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        seen.insert(c.cluster.external().tcp_request(to, TIMEOUT)?);
    }
    Ok(seen)
}

fn all() -> BTreeSet<String> {
    ["n1b1", "n2b1", "n2b2"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn node_port_reaches_every_node_with_snat_only_to_remote_backends() -> Result<()> {
    let c = start("")?;
    let ext = c.cluster.external();
    for n in [1, 2] {
        let to = SocketAddrV4::new(node_ip(n), NODE_PORT_TCP);
        assert_eq!(tcp_answers(&c, to, 30)?, all(), "TCP via node {n}");
        let mut udp_seen = BTreeSet::new();
        for _ in 0..30 {
            let (who, from) =
                ext.udp_request_from(SocketAddrV4::new(node_ip(n), NODE_PORT_UDP), TIMEOUT)?;
            assert_eq!(
                from,
                SocketAddr::V4(SocketAddrV4::new(node_ip(n), NODE_PORT_UDP)),
                "UDP reply source"
            );
            udp_seen.insert(who);
        }
        assert_eq!(udp_seen, all(), "UDP via node {n}");
    }
    // What the backends saw: the client itself when local to the node the
    // traffic arrived at, that node's address (SNAT) otherwise.
    let via1 = SocketAddrV4::new(node_ip(1), NODE_PORT_TCP);
    let mut saw = BTreeSet::new();
    for _ in 0..30 {
        let (who, peer) = ext.tcp_whoami(via1, TIMEOUT)?;
        let peer_ip = peer.split(':').next().unwrap_or_default().to_string();
        let expected = if who == "n1b1" {
            external_client_ip()
        } else {
            node_ip(1)
        };
        assert_eq!(peer_ip, expected.to_string(), "{who} saw {peer}");
        saw.insert(who);
    }
    assert_eq!(saw, all());
    let ct = c.agents[0].inspect(&["conntrack"])?;
    assert!(
        ct.contains(&format!("(via {}:", node_ip(1))),
        "SNAT flows in inspect:\n{ct}"
    );

    // The external interface runs native XDP (asked for: auto leaves it
    // off on a veth) and it translated flows itself.
    let ifaces: serde_json::Value =
        serde_json::from_str(&c.agents[0].inspect(&["-o", "json", "interfaces"])?)?;
    let ext0 = ifaces
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "ext0"))
        .cloned();
    let ext0 = ext0.expect("ext0 listed");
    assert_eq!(
        (ext0["role"].as_str(), ext0["xdp"].as_str()),
        (Some("external"), Some("native")),
        "{ifaces}"
    );
    let stats: serde_json::Value =
        serde_json::from_str(&c.agents[0].inspect(&["-o", "json", "stats"])?)?;
    assert!(stats["xdp_translated"].as_u64().unwrap_or(0) > 0, "{stats}");

    // A pod reaches another node's node port too.
    let who = c
        .pod(1, "client1")
        .tcp_request(SocketAddrV4::new(node_ip(2), NODE_PORT_TCP), TIMEOUT)?;
    assert!(all().contains(&who));
    Ok(())
}

#[test]
fn load_balancer_and_external_ips_with_source_ranges() -> Result<()> {
    let c = start("  loadBalancerSourceRanges: [10.10.0.100/32]\n")?;
    let lb = SocketAddrV4::new(LB_IP, 80);
    let external = SocketAddrV4::new(EXTERNAL_IP, 80);
    assert_eq!(tcp_answers(&c, lb, 30)?, all(), "LB IP, client allowed");
    assert_eq!(tcp_answers(&c, external, 30)?, all(), "external IP");
    let (who, from) = c
        .cluster
        .external()
        .udp_request_from(SocketAddrV4::new(LB_IP, 53), TIMEOUT)?;
    assert!(all().contains(&who));
    assert_eq!(from, SocketAddr::V4(SocketAddrV4::new(LB_IP, 53)));

    // The client is no longer in the allowed ranges: LB traffic is dropped
    // and counted; the external IP (ranges apply to LB IPs only) still works.
    c.apply_service(
        &load_balancer("  loadBalancerSourceRanges: [10.99.0.0/16]\n"),
        &c.endpoints(),
    )?;
    wait::until(
        "LB traffic denied",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || {
            Ok(c.cluster
                .external()
                .tcp_request(lb, Duration::from_millis(300))
                .is_err())
        },
    )?;
    let stats: serde_json::Value =
        serde_json::from_str(&c.agents[0].inspect(&["-o", "json", "stats"])?)?;
    assert!(
        stats["source_range_denied"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );
    assert!(!tcp_answers(&c, external, 5)?.is_empty());
    Ok(())
}

#[test]
fn external_traffic_policy_local_preserves_the_client_and_health_checks() -> Result<()> {
    let c = start(&format!(
        "  externalTrafficPolicy: Local\n  healthCheckNodePort: {HEALTH_PORT}\n"
    ))?;
    let ext = c.cluster.external();
    let via = |n| SocketAddrV4::new(node_ip(n), NODE_PORT_TCP);
    for _ in 0..20 {
        let (who, peer) = ext.tcp_whoami(via(1), TIMEOUT)?;
        assert_eq!(who, "n1b1", "node 1 serves only its own endpoint");
        assert!(
            peer.starts_with(&format!("{}:", external_client_ip())),
            "client address preserved: {peer}"
        );
    }
    let node2: BTreeSet<String> = (0..20)
        .map(|_| ext.tcp_request(via(2), TIMEOUT))
        .collect::<Result<_>>()?;
    assert_eq!(
        node2,
        ["n2b1", "n2b2"].iter().map(|s| s.to_string()).collect()
    );

    let health = |n| ext.http_get(SocketAddrV4::new(node_ip(n), HEALTH_PORT), TIMEOUT);
    wait::until(
        "health checks served",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || Ok(health(1).is_ok()),
    )?;
    let (status, body) = health(1)?;
    assert_eq!(status, 200, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(body["localEndpoints"], 1);
    assert_eq!(body["service"]["name"], "web");
    assert_eq!(health(2)?.0, 200);
    // Policy Local means local backends only: all of it went through XDP.
    let stats: serde_json::Value =
        serde_json::from_str(&c.agents[0].inspect(&["-o", "json", "stats"])?)?;
    assert!(
        stats["xdp_translated"].as_u64().unwrap_or(0) >= 20,
        "{stats}"
    );

    // Node 1 loses its endpoint: it fails its health check and drops
    // (counted) instead of forwarding to node 2.
    let node2_only: Vec<_> = c
        .endpoints()
        .into_iter()
        .filter(|e| e.node == "node-2")
        .collect();
    c.apply_service(
        &load_balancer(&format!(
            "  externalTrafficPolicy: Local\n  healthCheckNodePort: {HEALTH_PORT}\n"
        )),
        &node2_only,
    )?;
    wait::until(
        "node 1 unhealthy",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || Ok(health(1)?.0 == 503),
    )?;
    assert!(
        ext.tcp_request(via(1), Duration::from_millis(500)).is_err(),
        "node 1 must not serve"
    );
    let stats: serde_json::Value =
        serde_json::from_str(&c.agents[0].inspect(&["-o", "json", "stats"])?)?;
    assert!(
        stats["no_local_backend_dropped"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );
    assert!(!ext.tcp_request(via(2), TIMEOUT)?.is_empty());
    Ok(())
}

#[test]
fn maglev_sends_a_flow_to_the_same_backend_through_any_node() -> Result<()> {
    // The load balancer's route moves from node 1 to node 2 (as ECMP or a
    // failover would): with Maglev both nodes pick the same backend for the
    // same flow without sharing any state.
    let c = start_with("", &["--algorithm", "maglev", "--maglev-table-size", "251"])?;
    let lb = SocketAddrV4::new(LB_IP, 53);
    let ext = c.cluster.external();
    let mut via_node1 = Vec::new();
    for port in 40100..40120 {
        via_node1.push(ext.udp_request_from_port(port, lb, TIMEOUT)?);
    }
    assert!(
        via_node1.iter().collect::<BTreeSet<_>>().len() > 1,
        "flows spread: {via_node1:?}"
    );
    c.cluster.route_external_via("192.0.2.0/24", 2)?;
    for (i, port) in (40100..40120).enumerate() {
        assert_eq!(
            ext.udp_request_from_port(port, lb, TIMEOUT)?,
            via_node1[i],
            "flow from port {port}"
        );
    }
    let services = c.agents[1].inspect(&["services"])?;
    assert!(services.contains("maglev=251"), "{services}");
    Ok(())
}

/// `--xdp auto` on a veth (where tc was measured faster) attaches no XDP,
/// says why in `inspect interfaces`, and the same traffic goes through tc.
#[test]
fn the_tc_path_alone_serves_node_ports_too() -> Result<()> {
    let c = start_with("", &["--xdp", "auto"])?;
    let to = SocketAddrV4::new(node_ip(1), NODE_PORT_TCP);
    assert_eq!(tcp_answers(&c, to, 30)?, all());
    let (who, from) = c
        .cluster
        .external()
        .udp_request_from(SocketAddrV4::new(node_ip(1), NODE_PORT_UDP), TIMEOUT)?;
    assert!(all().contains(&who));
    assert_eq!(
        from,
        SocketAddr::V4(SocketAddrV4::new(node_ip(1), NODE_PORT_UDP))
    );
    let stats: serde_json::Value =
        serde_json::from_str(&c.agents[0].inspect(&["-o", "json", "stats"])?)?;
    assert_eq!(stats["xdp_translated"], 0, "{stats}");
    let ifaces = c.agents[0].inspect(&["interfaces"])?;
    assert!(
        ifaces
            .lines()
            .any(|l| l.contains("ext0") && l.contains("none (auto: tc is faster on this driver)")),
        "{ifaces}"
    );
    let links = c.agents[0].inspect(&["links"])?;
    assert!(
        !links
            .lines()
            .any(|l| l.contains("ext0") && l.contains("xdp")),
        "{links}"
    );
    Ok(())
}

#[test]
fn xdp_forwards_snat_flows_itself_when_asked() -> Result<()> {
    // Generic XDP: native XDP_TX on veth lost frames intermittently here,
    // which is why --xdp-snat is off by default (docs/architecture.md).
    let c = start_with("", &["--xdp", "generic", "--xdp-snat"])?;
    let eps: Vec<_> = c
        .endpoints()
        .into_iter()
        .filter(|e| e.node == "node-2")
        .collect();
    c.apply_service(&load_balancer(""), &eps)?;
    wait::until(
        "remote backends only",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || Ok(c.agents[0].backends_of("10.96.1.10:80/TCP")?.len() == 2),
    )?;
    let before: serde_json::Value =
        serde_json::from_str(&c.agents[0].inspect(&["-o", "json", "stats"])?)?;
    let external = c.cluster.external();
    let node_port = SocketAddrV4::new(node_ip(1), NODE_PORT_TCP);
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        let (who, peer) = external.tcp_whoami(node_port, TIMEOUT)?;
        // SNATed: the backend on node 2 sees node 1.
        assert!(peer.starts_with("10.10.0.1:"), "{who} saw {peer}");
        seen.insert(who);
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (who, from) =
        external.udp_request_from(SocketAddrV4::new(node_ip(1), NODE_PORT_UDP), TIMEOUT)?;
    assert!(who.starts_with("n2b"), "{who}");
    assert_eq!(
        from,
        SocketAddr::V4(SocketAddrV4::new(node_ip(1), NODE_PORT_UDP))
    );
    let after: serde_json::Value =
        serde_json::from_str(&c.agents[0].inspect(&["-o", "json", "stats"])?)?;
    let count = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    // Every client → backend packet of the 21 flows went out from XDP:
    // at least SYN, request and ACK/FIN for each TCP flow.
    let translated = count(&after, "xdp_translated") - count(&before, "xdp_translated");
    assert!(
        translated > 20 * 3,
        "XDP translated only {translated} packets"
    );
    Ok(())
}

/// A node port whose local backend has nothing listening on the target
/// port: the backend's ICMP "port unreachable" quotes client → backend, and
/// the datapath gives the quote the node port back on its way out, so the
/// external client's connected socket is refused at once instead of
/// waiting for a reply that never comes.
#[test]
fn an_external_client_of_a_node_port_hears_the_backends_icmp_errors() -> Result<()> {
    use switchyard_tests::{EndpointSpec, cluster::node_name, endpoint_slice_yaml, is_refused};
    let c = start("")?;
    let deaf_port = 30999;
    c.manifests.write(
        "deaf.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: deaf, namespace: test}}\nspec:\n  type: NodePort\n  clusterIP: 10.96.1.12\n  externalTrafficPolicy: Local\n  ports:\n  - {{name: udp, port: 53, targetPort: 5999, protocol: UDP, nodePort: {deaf_port}}}\n---\n{}",
            endpoint_slice_yaml(
                "test",
                "deaf-1",
                "deaf",
                &[("udp", 5999, "UDP")],
                &[EndpointSpec {
                    node: node_name(1),
                    ..EndpointSpec::ready(c.cluster.node(1).pod_ip(21))
                }],
            )
        ),
    )?;
    wait::until(
        "the deaf node port programmed",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            Ok(c.agents[0]
                .backends_of(&format!("{}:{deaf_port}/UDP", node_ip(1)))
                .is_ok_and(|b| b.len() == 1))
        },
    )?;
    let before = c.agents[0].inspect(&["-o", "json", "stats"])?;
    let before: serde_json::Value = serde_json::from_str(&before)?;
    let to = SocketAddrV4::new(node_ip(1), deaf_port);
    let err = c
        .cluster
        .external()
        .udp_request(to, Duration::from_secs(3))
        .expect_err("nothing listens behind the node port");
    assert!(is_refused(&err), "expected ECONNREFUSED, got {err:#}");
    let after: serde_json::Value =
        serde_json::from_str(&c.agents[0].inspect(&["-o", "json", "stats"])?)?;
    assert!(
        after["icmp_error_translated"].as_u64() > before["icmp_error_translated"].as_u64(),
        "{after}"
    );
    Ok(())
}

/// A service on node port 30085 whose one backend (n2b1) is on node 2:
/// every flow through node 1 is SNATed and forwarded by the datapath.
fn remote_only_service(c: &TwoNodes) -> Result<SocketAddrV4> {
    use switchyard_tests::{EndpointSpec, cluster::node_name, endpoint_slice_yaml};
    c.manifests.write(
        "far.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: far, namespace: test}}\nspec:\n  type: NodePort\n  clusterIP: 10.96.1.15\n  ports:\n  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP, nodePort: 30085}}\n---\n{}",
            endpoint_slice_yaml(
                "test",
                "far-1",
                "far",
                &[("tcp", 8080, "TCP")],
                &[EndpointSpec {
                    node: node_name(2),
                    ..EndpointSpec::ready(c.cluster.node(2).pod_ip(21))
                }],
            )
        ),
    )?;
    let to = SocketAddrV4::new(node_ip(1), 30085);
    wait::until(
        "the remote-only node port programmed",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            Ok(c.agents[0]
                .backends_of(&format!("{to}/TCP"))
                .is_ok_and(|b| b.len() == 1))
        },
    )?;
    Ok(to)
}

/// From the external client through `to`: uploads `bytes` (one line, the
/// backend answers its name), then downloads `bytes`. Returns the backend.
fn upload_and_download(c: &TwoNodes, to: SocketAddrV4, bytes: usize) -> Result<String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let stream = c.cluster.external().tcp_connect(to, TIMEOUT)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.set_write_timeout(Some(Duration::from_secs(20)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = vec![b'x'; bytes];
    line.push(b'\n');
    writer.write_all(&line).context("uploading")?;
    let mut name = String::new();
    reader
        .read_line(&mut name)
        .context("reading the answer to the upload")?;
    writer.write_all(format!("bulk {bytes}\n").as_bytes())?;
    let mut body = vec![0u8; bytes + 1];
    reader.read_exact(&mut body).context("downloading")?;
    anyhow::ensure!(
        body[..bytes].iter().all(|b| *b == b'y'),
        "download corrupted"
    );
    Ok(name.trim().to_string())
}

fn reason(agent: &switchyard_tests::AgentProcess, name: &str) -> Result<u64> {
    let stats: serde_json::Value = serde_json::from_str(&agent.inspect(&["-o", "json", "stats"])?)?;
    Ok(stats[name].as_u64().unwrap_or(0))
}

/// Real NICs coalesce a TCP stream's segments (GRO) before tc sees them:
/// the packet the datapath forwards to a backend on another node is then
/// up to 64 KiB, and only its segments have to fit the link. A 4 MiB
/// upload and download through a node port, with GRO on node 1's
/// interface, must go through without a drop.
#[test]
fn coalesced_packets_are_forwarded_to_and_from_remote_backends() -> Result<()> {
    let c = start("")?;
    let to = remote_only_service(&c)?;
    switchyard_tests::command::run(&[
        "ip",
        "netns",
        "exec",
        c.cluster.node(1).topo.node_ns(),
        "ethtool",
        "-K",
        "ext0",
        "gro",
        "on",
    ])?;
    assert_eq!(upload_and_download(&c, to, 4 << 20)?, "n2b1");
    for counter in ["fib_lookup_failed", "too_big_dropped", "nat_failed"] {
        assert_eq!(reason(&c.agents[0], counter)?, 0, "{counter}");
    }
    Ok(())
}

/// The way from node 1 to the backend's node, and back to the client, has
/// a smaller MTU (a tunnel, say) than the client's link (routes with a
/// locked MTU, which forwarding obeys as it does a device's). Like any router,
/// the node must answer a too-big packet with DF set with ICMP
/// "fragmentation needed", so both ends' path MTU discovery shrinks their
/// segments; a silent drop black-holes the connection.
#[test]
fn packets_too_big_for_the_way_onward_get_fragmentation_needed() -> Result<()> {
    let c = start("")?;
    let to = remote_only_service(&c)?;
    let node1 = c.cluster.node(1).topo.node_ns();
    let (node2, client) = (
        node_ip(2).to_string(),
        format!("{}/32", external_client_ip()),
    );
    switchyard_tests::command::run(&[
        "ip",
        "-n",
        node1,
        "route",
        "replace",
        "10.244.2.0/24",
        "via",
        &node2,
        "mtu",
        "lock",
        "1200",
    ])?;
    switchyard_tests::command::run(&[
        "ip", "-n", node1, "route", "replace", &client, "dev", "ext0", "mtu", "lock", "1200",
    ])?;
    assert_eq!(upload_and_download(&c, to, 1 << 20)?, "n2b1");
    let sent = reason(&c.agents[0], "fragmentation_needed_sent")?;
    assert!(
        sent >= 2,
        "one each way: {sent}; {}",
        c.agents[0].inspect(&["stats"])?
    );
    assert_eq!(reason(&c.agents[0], "fib_lookup_failed")?, 0);
    Ok(())
}

/// On an overlay (flannel's VXLAN backend), node addresses are on the
/// underlay but pod CIDRs of other nodes are routed through the tunnel
/// device. A pod on node 2 reaching node 1's node port with a backend on
/// node 1: the request arrives on the underlay, the backend's reply to
/// that pod leaves through `flannel.1` — it must still carry the node port
/// as its source (before: it left with the backend's address and the pod's
/// socket rejected it). External clients reach backends on other nodes
/// through the tunnel, SNATed to the tunnel device's address (the egress
/// device's, as MASQUERADE picks), and their replies come back through it.
#[test]
fn node_ports_work_over_a_vxlan_overlay() -> Result<()> {
    use switchyard_tests::{EndpointSpec, cluster::node_name, endpoint_slice_yaml};
    let c = start("")?;
    // The tunnel appears after the agents started, as when a CNI comes up.
    c.cluster.add_vxlan_overlay()?;
    c.manifests.write(
        "near.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: near, namespace: test}}\nspec:\n  type: NodePort\n  clusterIP: 10.96.1.16\n  ports:\n  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP, nodePort: 30086}}\n---\n{}",
            endpoint_slice_yaml(
                "test",
                "near-1",
                "near",
                &[("tcp", 8080, "TCP")],
                &[EndpointSpec {
                    node: node_name(1),
                    ..EndpointSpec::ready(c.cluster.node(1).pod_ip(21))
                }],
            )
        ),
    )?;
    let near = SocketAddrV4::new(node_ip(1), 30086);
    let far = remote_only_service(&c)?;
    wait::until(
        "flannel.1 attached as a tunnel and the near node port programmed",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let ifaces = c.agents[0].inspect(&["interfaces"])?;
            Ok(ifaces
                .lines()
                .any(|l| l.contains("flannel.1") && l.contains("tunnel"))
                && c.agents[0].backends_of(&format!("{near}/TCP")).is_ok())
        },
    )?;
    let pod = c.pod(2, "client2");
    let (name, seen) = pod.tcp_whoami(near, TIMEOUT)?;
    assert_eq!(name, "n1b1");
    assert!(
        seen.starts_with(&format!("{}:", c.cluster.node(2).pod_ip(10))),
        "the backend saw the pod itself: {seen}"
    );
    let answer = c
        .cluster
        .external()
        .tcp_request(far, TIMEOUT)
        .with_context(|| {
            format!(
                "node 1: {}\nnode 2: {}",
                c.agents[0].inspect(&["stats"]).unwrap_or_default(),
                c.agents[1].inspect(&["stats"]).unwrap_or_default()
            )
        })?;
    assert_eq!(answer, "n2b1");
    // SNATed to the tunnel device's address, as MASQUERADE would: the
    // backend's reply comes back through the tunnel and is un-SNATed there.
    let (name, seen) = c.cluster.external().tcp_whoami(far, TIMEOUT)?;
    assert_eq!(name, "n2b1");
    assert!(seen.starts_with("10.245.0.1:"), "the backend saw {seen}");
    assert_eq!(upload_and_download(&c, far, 1 << 20)?, "n2b1");
    Ok(())
}

/// A deny-all ingress policy on the backends closes the service to the
/// outside as well — node ports on both nodes, the LB IP, the external IP
/// (judged where the packets enter the pods, after translation and SNAT) —
/// and deleting it opens them again.
#[test]
fn a_deny_all_ingress_policy_closes_node_ports_and_load_balancer_ips() -> Result<()> {
    let c = start("")?;
    let ext = c.cluster.external();
    let entrances = [
        SocketAddrV4::new(node_ip(1), NODE_PORT_TCP),
        SocketAddrV4::new(node_ip(2), NODE_PORT_TCP),
        SocketAddrV4::new(LB_IP, 80),
        SocketAddrV4::new(EXTERNAL_IP, 80),
    ];
    let pods: Vec<String> = [("n1b1", 1, 21), ("n2b1", 2, 21), ("n2b2", 2, 22)]
        .iter()
        .map(|(name, node, i)| {
            let ip = c.cluster.node(*node).pod_ip(*i);
            switchyard_tests::pod_yaml("test", name, &[("app", "web")], ip, &[])
        })
        .collect();
    c.manifests.write("pods.yaml", &pods.join("---\n"))?;
    let deny = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-web, namespace: test}\nspec: {podSelector: {matchLabels: {app: web}}}\n";
    c.manifests.write("deny.yaml", deny)?;
    let closed = Duration::from_millis(300);
    for to in entrances {
        wait::until(
            &format!("{to} closed"),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || Ok(ext.tcp_request(to, closed).is_err()),
        )?;
    }
    for to in entrances {
        for _ in 0..5 {
            assert!(
                ext.tcp_request(to, closed).is_err(),
                "{to} answered through the policy"
            );
        }
    }
    std::fs::remove_file(c.manifests.path().join("deny.yaml"))?;
    for to in entrances {
        wait::until(
            &format!("{to} open again"),
            Duration::from_secs(10),
            Duration::from_millis(20),
            || Ok(ext.tcp_request(to, TIMEOUT).is_ok()),
        )?;
    }
    Ok(())
}

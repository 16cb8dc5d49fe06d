//! Several nodes on a shared underlay, one agent per node, all reading the
//! same cluster state: cross-node ClusterIP and node-local traffic policy
//! with real traffic. Needs root.

use std::collections::BTreeSet;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::Result;
use switchyard_tests::{EndpointSpec, cluster::node_name, is_refused, wait};

mod common;
use common::{TIMEOUT, TwoNodes, VIP};

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

    // Node 1 loses its only local endpoint: its clients' packets are
    // dropped rather than sent to another node (as kube-proxy does while
    // the Service has endpoints elsewhere); node 2 is unaffected.
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
        .tcp_request(SocketAddrV4::new(VIP, 80), Duration::from_millis(500))
        .expect_err("no local endpoint");
    assert!(!is_refused(&err), "dropped, not refused: {err:#}");
    assert_eq!(answers(c.pod(2, "client2"), 10)?, set(&["n2b1", "n2b2"]));

    // With no endpoint anywhere the Service is refused on every node.
    c.apply("  internalTrafficPolicy: Local\n", &[])?;
    wait::until(
        "no backend on node 2",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || Ok(c.agents[1].backends_of("10.96.1.10:80/TCP")?.is_empty()),
    )?;
    for node in [1, 2] {
        let client = if node == 1 { "client1" } else { "client2" };
        let err = c
            .pod(node, client)
            .tcp_request(SocketAddrV4::new(VIP, 80), TIMEOUT)
            .expect_err("no endpoints");
        assert!(is_refused(&err), "{err:#}");
    }
    Ok(())
}

/// A client's connections from one source port to two Services that share
/// a backend would have the same reply tuple at that backend: the datapath
/// moves the second to another source port, so both work side by side, over
/// a local and over a remote backend, for TCP and UDP.
#[test]
fn connections_from_one_port_to_services_sharing_a_backend_both_work() -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    use switchyard_tests::{endpoint_slice_yaml, service_yaml};
    const OTHER_VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 1, 11);
    let c = TwoNodes::start()?;
    let client = c.pod(1, "client1");
    let whoami = |s: &mut std::net::TcpStream| -> Result<(String, String)> {
        s.write_all(b"whoami\n")?;
        let mut line = String::new();
        BufReader::new(s.try_clone()?).read_line(&mut line)?;
        let (name, peer) = line.trim().split_once(' ').unwrap_or(("", ""));
        Ok((name.to_string(), peer.to_string()))
    };
    for (round, (node, pod, name)) in [(1u8, 21u8, "n1b1"), (2, 21, "n2b1")]
        .into_iter()
        .enumerate()
    {
        let backend = EndpointSpec {
            node: node_name(node),
            ..EndpointSpec::ready(c.cluster.node(node).pod_ip(pod))
        };
        let ports = [("tcp", 8080, "TCP"), ("udp", 5353, "UDP")];
        c.manifests.write(
            "other.yaml",
            &format!(
                "{}---\n{}",
                service_yaml(
                    "test",
                    "other",
                    OTHER_VIP,
                    &[("tcp", 80, 8080, "TCP"), ("udp", 53, 5353, "UDP")]
                ),
                endpoint_slice_yaml(
                    "test",
                    "other-1",
                    "other",
                    &ports,
                    std::slice::from_ref(&backend)
                )
            ),
        )?;
        c.apply("", std::slice::from_ref(&backend))?;
        let want = vec![format!("{}:8080", backend.ip)];
        for frontend in ["10.96.1.10:80/TCP", "10.96.1.11:80/TCP"] {
            wait::until(
                "both services on the one backend",
                Duration::from_secs(5),
                Duration::from_millis(20),
                || Ok(c.agents[0].backends_of(frontend)? == want),
            )?;
        }

        let port = 20_000 + round as u16;
        let mut first = client.tcp_connect_from(port, SocketAddrV4::new(VIP, 80), TIMEOUT)?;
        let mut second =
            client.tcp_connect_from(port, SocketAddrV4::new(OTHER_VIP, 80), TIMEOUT)?;
        let (who1, seen1) = whoami(&mut first)?;
        let (who2, seen2) = whoami(&mut second)?;
        assert_eq!((who1.as_str(), who2.as_str()), (name, name));
        assert_eq!(
            seen1,
            format!("10.244.1.10:{port}"),
            "the first keeps its port"
        );
        assert_ne!(seen2, seen1, "the second was not moved to another port");
        // Both stay usable, interleaved.
        for _ in 0..5 {
            assert_eq!(whoami(&mut first)?.1, seen1);
            assert_eq!(whoami(&mut second)?.1, seen2);
        }
        let ct = c.agents[0].inspect(&["conntrack"])?;
        assert!(ct.contains("client port remapped to"), "{ct}");

        // UDP: two connected sockets on one port; each reply reaches its own.
        let udp_port = 21_000 + round as u16;
        let a = client.udp_connect_from(udp_port, SocketAddrV4::new(VIP, 53), TIMEOUT)?;
        let b = client.udp_connect_from(udp_port, SocketAddrV4::new(OTHER_VIP, 53), TIMEOUT)?;
        let mut peers = Vec::new();
        for _ in 0..3 {
            for socket in [&a, &b] {
                socket.send(b"whoami\n")?;
                let mut buf = [0u8; 256];
                let n = socket.recv(&mut buf)?;
                let reply = String::from_utf8_lossy(&buf[..n]).trim().to_string();
                assert!(reply.starts_with(name), "{reply}");
                peers.push(reply);
            }
        }
        assert_ne!(peers[0], peers[1], "UDP flows not kept apart");
        assert_eq!((&peers[0], &peers[1]), (&peers[2], &peers[3]));
    }
    Ok(())
}

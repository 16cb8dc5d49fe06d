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

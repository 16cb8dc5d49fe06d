//! Per-flow and per-client state on the two-node cluster: session affinity
//! (pod and external clients), endpoint conditions (terminating endpoints)
//! and the UDP conntrack flush, with backends on both nodes. Needs root.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::Result;
use switchyard_tests::client::ask;
use switchyard_tests::cluster::{external_client_ip, node_ip, node_name};
use switchyard_tests::{EndpointSpec, wait};

mod common;
use common::{TIMEOUT, TwoNodes, VIP};

const NODE_PORT: u16 = 30080;

fn tcp_vip() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, 80)
}

fn udp_vip() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, 53)
}

/// The backends of [`TwoNodes`], by pod name.
fn endpoint(c: &TwoNodes, name: &str) -> EndpointSpec {
    let (node, i) = match name {
        "n1b1" => (1, 21),
        "n2b1" => (2, 21),
        "n2b2" => (2, 22),
        other => panic!("no backend {other}"),
    };
    EndpointSpec {
        node: node_name(node),
        ..EndpointSpec::ready(c.cluster.node(node).pod_ip(i))
    }
}

fn ip_of(c: &TwoNodes, name: &str) -> Ipv4Addr {
    endpoint(c, name).ip
}

fn endpoints(c: &TwoNodes, names: &[&str]) -> Vec<EndpointSpec> {
    names.iter().map(|n| endpoint(c, n)).collect()
}

/// Waits until every agent programs exactly `names` for the TCP cluster IP.
fn wait_backends(c: &TwoNodes, names: &[&str]) -> Result<()> {
    let mut want: Vec<String> = names
        .iter()
        .map(|n| format!("{}:8080", ip_of(c, n)))
        .collect();
    want.sort();
    for agent in &c.agents {
        wait::until(
            "the backends on every node",
            Duration::from_secs(5),
            Duration::from_millis(20),
            || {
                let mut got = agent.backends_of("10.96.1.10:80/TCP")?;
                got.sort();
                Ok(got == want)
            },
        )?;
    }
    Ok(())
}

#[test]
fn client_ip_affinity_holds_across_nodes_for_pod_and_external_clients() -> Result<()> {
    let c = TwoNodes::start_with(&["--external-ifaces", "ext0"])?;
    let svc = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: test}}\nspec:\n  type: NodePort\n  clusterIP: {VIP}\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {{clientIP: {{timeoutSeconds: 1}}}}\n  ports:\n  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP, nodePort: {NODE_PORT}}}\n  - {{name: udp, port: 53, targetPort: 5353, protocol: UDP, nodePort: 30053}}\n"
    );
    c.apply_service(&svc, &c.endpoints())?;
    wait_backends(&c, &["n1b1", "n2b1", "n2b2"])?;

    // A pod on node 1 sticks to one backend, wherever it runs.
    let client = c.pod(1, "client1");
    let pinned = client.tcp_request(tcp_vip(), TIMEOUT)?;
    for _ in 0..15 {
        assert_eq!(
            client.tcp_request(tcp_vip(), TIMEOUT)?,
            pinned,
            "pod client moved"
        );
    }
    let rows: serde_json::Value =
        serde_json::from_str(&c.agents[0].inspect(&["-o", "json", "affinity"])?)?;
    let row = rows
        .as_array()
        .and_then(|r| {
            r.iter()
                .find(|r| r["service"] == "test/web:tcp" && r["client"] == "10.244.1.10")
        })
        .cloned()
        .expect("pod client pinned in node 1's inspect affinity");
    assert_eq!(row["backend"], format!("{}:8080", ip_of(&c, &pinned)));

    // The external client through node 1's node port: pinned by its own
    // address (before SNAT), on node 1.
    let node_port = SocketAddrV4::new(node_ip(1), NODE_PORT);
    let external = c.cluster.external();
    let ext_pinned = external.tcp_request(node_port, TIMEOUT)?;
    for _ in 0..15 {
        assert_eq!(
            external.tcp_request(node_port, TIMEOUT)?,
            ext_pinned,
            "external client moved"
        );
    }
    let affinity = c.agents[0].inspect(&["affinity"])?;
    assert!(
        affinity.contains(&external_client_ip().to_string()),
        "{affinity}"
    );

    // The pod's backend goes: it moves to another one and sticks there.
    let remaining: Vec<&str> = ["n1b1", "n2b1", "n2b2"]
        .into_iter()
        .filter(|n| *n != pinned)
        .collect();
    c.apply_service(&svc, &endpoints(&c, &remaining))?;
    wait_backends(&c, &remaining)?;
    let moved = client.tcp_request(tcp_vip(), TIMEOUT)?;
    assert_ne!(moved, pinned);
    for _ in 0..10 {
        assert_eq!(client.tcp_request(tcp_vip(), TIMEOUT)?, moved);
    }

    // Idle past timeoutSeconds: balanced afresh (2 backends: a fresh pick
    // differs from the pin half the time).
    let mut rebalanced = false;
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(1200));
        if client.tcp_request(tcp_vip(), TIMEOUT)? != moved {
            rebalanced = true;
            break;
        }
    }
    assert!(rebalanced, "the pin never expired");
    Ok(())
}

#[test]
fn terminating_endpoints_keep_flows_across_nodes_and_serve_only_as_fallback() -> Result<()> {
    let c = TwoNodes::start()?;
    c.apply("", &c.endpoints())?;
    wait_backends(&c, &["n1b1", "n2b1", "n2b2"])?;
    let client = c.pod(1, "client1");
    let terminating = |name: &str, serving: bool| EndpointSpec {
        ready: false,
        serving,
        terminating: true,
        ..endpoint(&c, name)
    };

    // An established connection from node 1 to a backend on node 2.
    let mut remote = None;
    for _ in 0..60 {
        let mut s = client.tcp_connect(tcp_vip(), TIMEOUT)?;
        if ask(&mut s)? == "n2b2" {
            remote = Some(s);
            break;
        }
    }
    let mut remote = remote.expect("a connection landed on n2b2");

    // n2b2 terminates while still serving: no new flows, the old one stays.
    c.apply(
        "",
        &[
            endpoint(&c, "n1b1"),
            endpoint(&c, "n2b1"),
            terminating("n2b2", true),
        ],
    )?;
    wait_backends(&c, &["n1b1", "n2b1"])?;
    for _ in 0..30 {
        assert_ne!(
            client.tcp_request(tcp_vip(), TIMEOUT)?,
            "n2b2",
            "new flow to a terminating endpoint"
        );
    }
    assert_eq!(ask(&mut remote)?, "n2b2", "established flow dropped");

    // Nothing ready: the serving terminating endpoints (one per node) take
    // new flows, the non-serving one does not.
    c.apply(
        "",
        &[
            terminating("n1b1", true),
            terminating("n2b1", false),
            terminating("n2b2", true),
        ],
    )?;
    wait_backends(&c, &["n1b1", "n2b2"])?;
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        seen.insert(client.tcp_request(tcp_vip(), TIMEOUT)?);
        seen.insert(c.pod(2, "client2").tcp_request(tcp_vip(), TIMEOUT)?);
    }
    let want: BTreeSet<String> = ["n1b1", "n2b2"].iter().map(|s| s.to_string()).collect();
    assert_eq!(seen, want);
    assert_eq!(ask(&mut remote)?, "n2b2", "established flow dropped");
    Ok(())
}

#[test]
fn udp_flows_of_a_removed_remote_backend_are_flushed() -> Result<()> {
    let c = TwoNodes::start()?;
    c.apply("", &c.endpoints())?;
    wait_backends(&c, &["n1b1", "n2b1", "n2b2"])?;
    let client = c.pod(1, "client1");
    // One socket (one 5-tuple), like a resolver: pinned to its first backend.
    let first = client.udp_request_from_port(40053, udp_vip(), TIMEOUT)?;
    for _ in 0..5 {
        assert_eq!(
            client.udp_request_from_port(40053, udp_vip(), TIMEOUT)?,
            first,
            "sticky flow"
        );
    }
    let remaining: Vec<&str> = ["n1b1", "n2b1", "n2b2"]
        .into_iter()
        .filter(|n| *n != first)
        .collect();
    c.apply("", &endpoints(&c, &remaining))?;
    wait_backends(&c, &remaining)?;
    wait::until(
        "the flow to move off the removed backend",
        Duration::from_secs(3),
        Duration::from_millis(50),
        || Ok(client.udp_request_from_port(40053, udp_vip(), TIMEOUT)? != first),
    )?;
    for _ in 0..5 {
        assert_ne!(
            client.udp_request_from_port(40053, udp_vip(), TIMEOUT)?,
            first
        );
    }
    assert!(
        c.agents[0]
            .log_text()
            .contains("flushed UDP flows of removed backends"),
        "{}",
        c.agents[0].log_tail()
    );
    Ok(())
}

/// `reply=<name> <source the backend saw> peer=<address the socket shows>`.
fn parse_host_reply(line: &str) -> (String, String, String) {
    let reply = line
        .strip_prefix("reply=")
        .and_then(|r| r.split(" peer=").next())
        .unwrap_or_default();
    let mut words = reply.split_whitespace();
    let name = words.next().unwrap_or_default().to_string();
    let seen = words.next().unwrap_or_default().to_string();
    let peer = line.split(" peer=").nth(1).unwrap_or_default().to_string();
    (name, seen, peer)
}

#[test]
fn node_processes_reach_cluster_ips_and_node_ports_through_socket_hooks() -> Result<()> {
    let c = TwoNodes::start_with_socket_lb(&["--external-ifaces", "ext0", "--xdp", "native"])?;
    let svc = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: test}}\nspec:\n  type: NodePort\n  clusterIP: {VIP}\n  ports:\n  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP, nodePort: {NODE_PORT}}}\n  - {{name: udp, port: 53, targetPort: 5353, protocol: UDP, nodePort: 30053}}\n"
    );
    c.apply_service(&svc, &c.endpoints())?;
    wait_backends(&c, &["n1b1", "n2b1", "n2b2"])?;
    let node1 = c.cluster.node(1).topo.node_ns().to_string();
    let cgroup = &c.cgroups[0];
    let all: BTreeSet<String> = ["n1b1", "n2b1", "n2b2"]
        .iter()
        .map(|s| s.to_string())
        .collect();

    // Node 1's own processes: the cluster IP (TCP, connected UDP and
    // unconnected UDP), node 1's and node 2's node ports.
    let targets = [
        ("tcp", tcp_vip()),
        ("udp", udp_vip()),
        ("udp-sendto", udp_vip()),
        ("tcp", SocketAddrV4::new(node_ip(1), NODE_PORT)),
        ("udp", SocketAddrV4::new(node_ip(1), 30053)),
    ];
    for (mode, addr) in targets {
        let mut seen = BTreeSet::new();
        for _ in 0..24 {
            let line = cgroup.client(&node1, mode, addr)?;
            let (name, source, peer) = parse_host_reply(&line);
            assert_eq!(
                peer,
                addr.to_string(),
                "{mode} {addr}: the socket shows the service: {line}"
            );
            // The backend sees the node itself: no SNAT, the socket went there.
            let source_ip = source.split(':').next().unwrap_or_default();
            let expected = if name == "n1b1" {
                "169.254.1.1"
            } else {
                "10.10.0.1"
            };
            assert!(
                source_ip == expected || source_ip == node_ip(1).to_string(),
                "{mode} {addr}: backend {name} saw {source}"
            );
            seen.insert(name);
        }
        assert_eq!(seen, all, "{mode} {addr} spreads over every backend");
    }
    // Node 2's node port, from node 1: reached directly too.
    let remote = SocketAddrV4::new(node_ip(2), NODE_PORT);
    let (name, _, peer) = parse_host_reply(&cgroup.client(&node1, "tcp", remote)?);
    assert!(all.contains(&name));
    assert_eq!(peer, remote.to_string());

    // No endpoints: connect() is refused at once.
    c.apply_service(&svc, &[])?;
    wait_backends(&c, &[])?;
    assert_eq!(cgroup.client(&node1, "tcp", tcp_vip())?, "refused");
    let stats = c.agents[0].inspect(&["stats"])?;
    assert!(stats.contains("sock_translated"), "{stats}");
    // Every hook the datapath sits at, as pinned links.
    let links: serde_json::Value =
        serde_json::from_str(&c.agents[0].inspect(&["-o", "json", "links"])?)?;
    let hooks: BTreeSet<(String, String)> = links
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            (
                l["attached_to"].as_str().unwrap_or_default().to_string(),
                l["hook"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for expected in [
        ("cgroup", "sock_connect4"),
        ("cgroup", "sock_sendmsg4"),
        ("cgroup", "sock_recvmsg4"),
        ("cgroup", "sock_getpeername4"),
        ("ext0", "ingress"),
        ("ext0", "egress"),
        ("ext0", "xdp"),
    ] {
        assert!(
            hooks.contains(&(expected.0.to_string(), expected.1.to_string())),
            "{expected:?} not in {hooks:?}"
        );
    }
    Ok(())
}

/// A node's long-lived UDP clients (a DNS forwarder, a metrics agent) keep
/// one socket. Through the socket hooks, a connected socket is connected
/// to the backend itself and an unconnected one reuses its first choice:
/// when that backend leaves the service (a rollout deletes the pod), the
/// connected socket must be told (ECONNABORTED, as Cilium does with
/// sock_destroy, so the client reopens) and the unconnected one must be
/// balanced afresh — as kube-proxy's UDP conntrack flush does for packets.
#[test]
fn host_udp_sockets_aimed_at_a_removed_backend_are_aborted_or_rebalanced() -> Result<()> {
    let c = TwoNodes::start_with_socket_lb(&["--external-ifaces", "ext0"])?;
    let node1 = c.cluster.node(1).topo.node_ns().to_string();
    udp_sockets_of_a_removed_backend(&c, |mode| c.cgroups[0].held_client(&node1, mode, udp_vip()))
}

/// The same for a pod's sockets (`--socket-lb pods`): they live in the
/// pod's network namespace, where the agent must look for them.
#[test]
fn pod_udp_sockets_aimed_at_a_removed_backend_are_aborted_or_rebalanced() -> Result<()> {
    let c = TwoNodes::start_with_socket_lb_pods(&["--external-ifaces", "ext0"])?;
    let pod_ns = c.pod(1, "client1").ns().to_string();
    udp_sockets_of_a_removed_backend(&c, |mode| {
        c.cgroups[0].pod_held_client(&pod_ns, mode, udp_vip())
    })
}

/// Opens a connected and an unconnected UDP socket to the service with
/// `open`, removes the backend they went to, and checks that the
/// connected one is aborted and the unconnected one balanced afresh.
fn udp_sockets_of_a_removed_backend(
    c: &TwoNodes,
    open: impl Fn(&str) -> Result<switchyard_tests::host::HeldClient>,
) -> Result<()> {
    c.apply("", &endpoints(c, &["n2b1", "n2b2"]))?;
    wait_backends(c, &["n2b1", "n2b2"])?;
    let name_of = |line: &str| parse_host_reply(line).0;
    let mut connected = open("udp")?;
    let mut unconnected = open("udp-sendto")?;
    let first = name_of(&connected.answer()?);
    let first_unconnected = name_of(&unconnected.answer()?);
    assert_eq!(
        name_of(&connected.again()?),
        first,
        "a connected socket keeps its backend"
    );
    let gone = first.clone();
    let survivor = if gone == "n2b1" { "n2b2" } else { "n2b1" };
    c.apply("", &endpoints(c, &[survivor]))?;
    wait_backends(c, &[survivor])?;
    // The agent acts right after its map sync; give it a moment.
    let mut aborted = false;
    for _ in 0..20 {
        let answer = connected.again()?;
        if let Some(errno) = answer.strip_prefix("error=") {
            // Aborted: a receive fails with ECONNABORTED, a send on the
            // now disconnected socket with EDESTADDRREQ.
            let errno: i32 = errno.parse()?;
            assert!(
                [libc::ECONNABORTED, libc::EDESTADDRREQ].contains(&errno),
                "the socket is aborted: {}",
                std::io::Error::from_raw_os_error(errno)
            );
            aborted = true;
            break;
        }
        assert_eq!(
            name_of(&answer),
            gone,
            "until aborted, still the old backend"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(aborted, "the connected socket to {gone} was never aborted");
    // The unconnected socket's next datagram goes to the survivor.
    let mut now_unconnected = String::new();
    for _ in 0..20 {
        now_unconnected = name_of(&unconnected.again()?);
        if now_unconnected == survivor {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        now_unconnected, survivor,
        "the unconnected socket (first {first_unconnected}) is balanced afresh"
    );
    let (_, metrics) = c.cluster.node(1).host().http_get_path(
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10249),
        "/metrics",
        TIMEOUT,
    )?;
    assert!(
        metrics.contains("switchyard_socket_lb_sockets_aborted_total 1"),
        "counted: {metrics}"
    );
    Ok(())
}

/// `--socket-lb pods`, as a pod's process sees it (run in the pod's own
/// cgroup below the node's): its connection to a cluster IP goes straight
/// to a backend — the backend sees the pod's own address, getpeername and
/// recvfrom show the service, and no conntrack entry is made (tc
/// translates nothing); with no endpoints, connect() is refused at once.
/// A pod annotated `switchyard.io/socket-lb: "off"` (a mesh's) keeps the
/// service address on its sockets and is translated per packet instead.
#[test]
fn pod_sockets_connect_straight_to_backends_with_socket_lb_pods() -> Result<()> {
    let c = TwoNodes::start_with_socket_lb_pods(&["--external-ifaces", "ext0"])?;
    c.apply("", &c.endpoints())?;
    wait_backends(&c, &["n1b1", "n2b1", "n2b2"])?;
    let client1 = c.pod(1, "client1");
    let (pod_ns, pod_ip) = (client1.ns().to_string(), client1.ip().to_string());
    let cgroup = &c.cgroups[0];
    let all: BTreeSet<String> = ["n1b1", "n2b1", "n2b2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let translated =
        |agent: usize| -> Result<u64> { reason_count(&c, agent, "sock_pod_translated") };
    for (mode, addr) in [
        ("tcp", tcp_vip()),
        ("udp", udp_vip()),
        ("udp-sendto", udp_vip()),
    ] {
        let mut seen = BTreeSet::new();
        for _ in 0..24 {
            let line = cgroup.pod_client(&pod_ns, mode, addr)?;
            let (name, source, peer) = parse_host_reply(&line);
            assert_eq!(
                peer,
                addr.to_string(),
                "{mode}: the socket shows the service: {line}"
            );
            let source_ip = source.split(':').next().unwrap_or_default();
            assert_eq!(
                source_ip, pod_ip,
                "{mode}: backend {name} sees the pod itself"
            );
            seen.insert(name);
        }
        assert_eq!(seen, all, "{mode} spreads over every backend");
    }
    assert_eq!(
        translated(0)?,
        72,
        "every socket translated by node 1's hooks"
    );
    assert_eq!(
        translated(1)?,
        0,
        "node 2's agent leaves node 1's pods alone"
    );
    let listed = c.agents[0].inspect(&["socket-pods"])?;
    assert!(
        listed.contains(&format!("{pod_ip} ")),
        "the operator sees which pods: {listed}"
    );
    // Their packets leave the pod without a lookup (the socket they carry
    // says so): at least the TCP segments and datagrams sent, each socket
    // sending two or more.
    let passed = reason_count(&c, 0, "sock_direct_passed")?;
    assert!(passed >= 72, "{passed} packets passed at once by from_pod");
    let conntrack = c.agents[0].inspect(&["conntrack"])?;
    assert!(
        !conntrack.contains(&format!("{pod_ip}:")),
        "no per-packet state: {conntrack}"
    );

    // ClientIP affinity: the pod (its own address, not the node's) sticks
    // to one backend, and inspect shows the pin.
    c.apply("  sessionAffinity: ClientIP\n", &c.endpoints())?;
    wait::until(
        "affinity in node 1's agent",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || Ok(c.agents[0].inspect(&["services"])?.contains("affinity=")),
    )?;
    let name_of = |line: String| parse_host_reply(&line).0;
    let pinned = name_of(cgroup.pod_client(&pod_ns, "tcp", tcp_vip())?);
    for _ in 0..10 {
        let now = name_of(cgroup.pod_client(&pod_ns, "tcp", tcp_vip())?);
        assert_eq!(now, pinned, "the pod's sockets stick to one backend");
    }
    let affinity = c.agents[0].inspect(&["affinity"])?;
    assert!(
        affinity
            .lines()
            .any(|l| l.contains(&pod_ip) && l.contains("test/web:tcp")),
        "the pod's own address pinned: {affinity}"
    );
    // internalTrafficPolicy: Local: node 1's pod reaches node 1's backend
    // only, decided at connect() as it would be per packet.
    c.apply("  internalTrafficPolicy: Local\n", &c.endpoints())?;
    wait::until(
        "node-local backends on node 1",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            Ok(c.agents[0].backends_of("10.96.1.10:80/TCP")?
                == vec![format!("{}:8080", ip_of(&c, "n1b1"))])
        },
    )?;
    for _ in 0..10 {
        let now = name_of(cgroup.pod_client(&pod_ns, "tcp", tcp_vip())?);
        assert_eq!(now, "n1b1", "internalTrafficPolicy Local from a pod");
    }
    c.apply("", &c.endpoints())?;
    wait_backends(&c, &["n1b1", "n2b1", "n2b2"])?;

    // Opted out: the service address stays on the socket, tc translates.
    let opt_out = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: mesh, annotations: {{switchyard.io/socket-lb: \"off\"}}}}\n---\n{}",
        switchyard_tests::manifests::pod_yaml("mesh", "client1", &[], client1.ip(), &[])
    );
    c.manifests.write("mesh.yaml", &opt_out)?;
    wait::until(
        "the opt-out in node 1's agent",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            cgroup.pod_client(&pod_ns, "tcp", tcp_vip())?;
            Ok(c.agents[0]
                .inspect(&["conntrack"])?
                .contains(&format!("{pod_ip}:")))
        },
    )?;
    let before = translated(0)?;
    let listed = c.agents[0].inspect(&["socket-pods"])?;
    assert!(
        !listed.contains(&format!("{pod_ip} ")),
        "opted out: {listed}"
    );
    let (name, _, peer) = parse_host_reply(&cgroup.pod_client(&pod_ns, "tcp", tcp_vip())?);
    assert!(all.contains(&name) && peer == tcp_vip().to_string());
    assert_eq!(
        translated(0)?,
        before,
        "an opted-out pod's socket is left to tc"
    );
    c.manifests.write("mesh.yaml", "")?;

    // No endpoints: connect() is refused at once, by the hook.
    wait::until(
        "the opt-out withdrawn",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            cgroup.pod_client(&pod_ns, "tcp", tcp_vip())?;
            Ok(translated(0)? > before)
        },
    )?;
    // A pod forging another pod's address on a socket the hooks connect
    // (bound with IP_TRANSPARENT): its SYN is not passed at once as the
    // socket's, the source check drops it.
    let spoofed = reason_count(&c, 0, "spoofed_source_dropped")?;
    let victim = ip_of(&c, "n1b1");
    let forged = cgroup.pod_client(&pod_ns, &format!("tcp-from={victim}"), tcp_vip())?;
    assert!(forged.starts_with("error="), "{forged}");
    assert!(
        reason_count(&c, 0, "spoofed_source_dropped")? > spoofed,
        "the forged SYN dropped by the source check"
    );

    c.apply("", &[])?;
    wait_backends(&c, &[])?;
    assert_eq!(cgroup.pod_client(&pod_ns, "tcp", tcp_vip())?, "refused");
    assert!(reason_count(&c, 0, "sock_no_backend")? >= 1);
    Ok(())
}

/// A datapath reason counter of node `agent` (0-based), from `inspect stats`.
fn reason_count(c: &TwoNodes, agent: usize, reason: &str) -> Result<u64> {
    let stats: serde_json::Value =
        serde_json::from_str(&c.agents[agent].inspect(&["-o", "json", "stats"])?)?;
    Ok(stats[reason].as_u64().unwrap_or(0))
}

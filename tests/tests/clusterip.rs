//! ClusterIP end to end: the real agent in a node namespace, real servers in
//! pod namespaces, real TCP and UDP from a client pod. Needs root.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::Result;
use switchyard_tests::{
    AgentOptions, AgentProcess, AgentSource, EndpointSpec, ManifestDir, PodServer, ServerPorts,
    Topology, cleanup_stale, client::ask, endpoint_slice_yaml, is_refused, service_yaml, wait,
    with_client_ip_affinity,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const TCP_FRONTEND: &str = "10.96.0.10:80/TCP";
const TIMEOUT: Duration = Duration::from_secs(2);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);

fn tcp_vip() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, 80)
}

fn udp_vip() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, 53)
}

fn backend_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, 20 + i)
}

/// A node with a client pod, backend pods `b0..bN` serving TCP 8080 and
/// UDP 5353, the Service `test/echo` in the manifests and the agent running.
/// Field order is drop order: agent first, then servers, then namespaces.
struct Cluster {
    agent: AgentProcess,
    servers: Vec<PodServer>,
    manifests: ManifestDir,
    topo: Topology,
}

impl Cluster {
    fn start(backends: u8) -> Result<Self> {
        Self::start_with(backends, &[])
    }

    fn start_with(backends: u8, agent_args: &[&str]) -> Result<Self> {
        cleanup_stale();
        let mut topo = Topology::new()?;
        topo.add_pod("client", CLIENT_IP)?;
        let mut servers = Vec::new();
        for i in 0..backends {
            servers.push(Self::add_backend_pod(&mut topo, i)?);
        }
        let manifests = ManifestDir::new()?;
        let cluster_ready: Vec<u8> = (0..backends).collect();
        manifests.write("echo-service.yaml", &service())?;
        manifests.write("echo-slice.yaml", &slice(&cluster_ready, &[]))?;
        let agent = AgentProcess::start(AgentOptions {
            node_ns: topo.node_ns().to_string(),
            pin_dir: format!("/sys/fs/bpf/{}", topo.id()).into(),
            source: AgentSource::Manifests(manifests.path().to_path_buf()),
            pod_ifaces: topo.pod_iface_glob(),
            extra_args: agent_args.iter().map(|a| a.to_string()).collect(),
        })?;
        Ok(Self {
            agent,
            servers,
            manifests,
            topo,
        })
    }

    fn add_backend_pod(topo: &mut Topology, i: u8) -> Result<PodServer> {
        let pod = topo.add_pod(&format!("b{i}"), backend_ip(i))?;
        pod.start_server(&ServerPorts::tcp_udp(8080, 5353))
    }

    fn client(&self) -> &switchyard_tests::Pod {
        self.topo.pod("client")
    }

    /// Writes the slice and waits until the TCP frontend shows `expected`
    /// backends; returns how long the change took to reach the maps.
    fn set_endpoints(&self, ready: &[u8], not_ready: &[u8]) -> Result<Duration> {
        self.write_slice_and_wait(&slice(ready, not_ready), ready)
    }

    /// Writes `slice_yaml` and waits until the TCP frontend's backends are
    /// exactly the pods `expected`; returns how long that took.
    fn write_slice_and_wait(&self, slice_yaml: &str, expected: &[u8]) -> Result<Duration> {
        let expected: BTreeSet<String> = expected
            .iter()
            .map(|i| format!("{}:8080", backend_ip(*i)))
            .collect();
        let written = Instant::now();
        self.manifests.write("echo-slice.yaml", slice_yaml)?;
        wait::until(
            "the new endpoints in the maps",
            Duration::from_secs(5),
            Duration::from_millis(10),
            || {
                let now: BTreeSet<String> =
                    self.agent.backends_of(TCP_FRONTEND)?.into_iter().collect();
                Ok(now == expected)
            },
        )?;
        Ok(written.elapsed())
    }
}

fn service() -> String {
    service_yaml(
        "test",
        "echo",
        VIP,
        &[("tcp", 80, 8080, "TCP"), ("udp", 53, 5353, "UDP")],
    )
}

fn slice(ready: &[u8], not_ready: &[u8]) -> String {
    let mut endpoints: Vec<EndpointSpec> = ready
        .iter()
        .map(|i| EndpointSpec::ready(backend_ip(*i)))
        .collect();
    endpoints.extend(not_ready.iter().map(|i| EndpointSpec {
        ready: false,
        serving: false,
        ..EndpointSpec::ready(backend_ip(*i))
    }));
    endpoint_slice_yaml(
        "test",
        "echo-1",
        "echo",
        &[("tcp", 8080, "TCP"), ("udp", 5353, "UDP")],
        &endpoints,
    )
}

fn names(range: std::ops::RangeInclusive<u8>) -> BTreeSet<String> {
    range.map(|i| format!("b{i}")).collect()
}

#[test]
fn tcp_and_udp_reach_every_backend_and_replies_come_from_the_vip() -> Result<()> {
    let c = Cluster::start(3)?;
    let mut tcp_seen = BTreeSet::new();
    let mut udp_seen = BTreeSet::new();
    for _ in 0..30 {
        tcp_seen.insert(c.client().tcp_request(tcp_vip(), TIMEOUT)?);
        // Connected UDP socket: the kernel drops replies not from VIP:53.
        udp_seen.insert(c.client().udp_request(udp_vip(), TIMEOUT)?);
        let (who, from) = c.client().udp_request_from(udp_vip(), TIMEOUT)?;
        assert_eq!(
            from,
            SocketAddr::V4(udp_vip()),
            "reply from {who} not reverse-NATed"
        );
        udp_seen.insert(who);
    }
    assert_eq!(tcp_seen, names(0..=2), "TCP spread");
    assert_eq!(udp_seen, names(0..=2), "UDP spread");

    let stream = c.client().tcp_connect(tcp_vip(), TIMEOUT)?;
    assert_eq!(stream.peer_addr()?, SocketAddr::V4(tcp_vip()));

    // What inspect shows matches: 3 backends, flows counted, connections tracked.
    let services = c.agent.services_json()?;
    let tcp = services
        .as_array()
        .and_then(|r| r.iter().find(|r| r["frontend"] == TCP_FRONTEND))
        .cloned();
    let tcp = tcp.expect("tcp frontend listed");
    assert_eq!(tcp["service"], "test/echo:tcp");
    assert!(tcp["new_flows"].as_u64().unwrap_or(0) >= 31, "{tcp}");
    let conntrack = c.agent.inspect(&["conntrack"])?;
    assert!(conntrack.contains("10.244.0.10:"), "{conntrack}");
    assert!(
        conntrack.contains("test/echo:tcp") && conntrack.contains("test/echo:udp"),
        "{conntrack}"
    );
    Ok(())
}

#[test]
fn endpoint_changes_steer_new_flows_and_keep_established_ones() -> Result<()> {
    let mut c = Cluster::start(3)?;
    // A long-lived connection, and which backend it landed on.
    let mut kept = c.client().tcp_connect(tcp_vip(), TIMEOUT)?;
    let kept_on = ask(&mut kept)?;
    let kept_idx: u8 = kept_on.trim_start_matches('b').parse()?;
    let removed = (kept_idx + 1) % 3;
    let remaining: Vec<u8> = (0..3).filter(|i| *i != removed).collect();

    let took = c.set_endpoints(&remaining, &[])?;
    eprintln!("endpoint removal reached the maps in {took:?}");
    assert!(took < Duration::from_secs(1), "removal took {took:?}");
    for _ in 0..30 {
        let who = c.client().tcp_request(tcp_vip(), TIMEOUT)?;
        assert_ne!(
            who,
            format!("b{removed}"),
            "new flow went to the removed endpoint"
        );
        let who = c.client().udp_request(udp_vip(), TIMEOUT)?;
        assert_ne!(
            who,
            format!("b{removed}"),
            "new UDP flow went to the removed endpoint"
        );
    }
    assert_eq!(
        ask(&mut kept)?,
        kept_on,
        "established connection moved or broke"
    );

    // A new pod and endpoint: new flows start using it.
    c.servers.push(Cluster::add_backend_pod(&mut c.topo, 3)?);
    let mut with_new = remaining.clone();
    with_new.push(3);
    let took = c.set_endpoints(&with_new, &[])?;
    eprintln!("endpoint addition reached the maps in {took:?}");
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        seen.insert(c.client().tcp_request(tcp_vip(), TIMEOUT)?);
    }
    assert!(seen.contains("b3"), "new endpoint never used: {seen:?}");
    assert_eq!(ask(&mut kept)?, kept_on);
    Ok(())
}

#[test]
fn a_service_without_ready_endpoints_is_refused() -> Result<()> {
    let c = Cluster::start(2)?;
    c.set_endpoints(&[], &[0, 1])?;
    let started = Instant::now();
    let err = c
        .client()
        .tcp_request(tcp_vip(), TIMEOUT)
        .expect_err("must not connect");
    assert!(
        is_refused(&err),
        "TCP: expected connection refused, got {err:#}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refusal took {:?}",
        started.elapsed()
    );
    let err = c
        .client()
        .udp_request(udp_vip(), TIMEOUT)
        .expect_err("must not answer");
    assert!(
        is_refused(&err),
        "UDP: expected connection refused, got {err:#}"
    );
    let stats = c.agent.inspect(&["-o", "json", "stats"])?;
    let stats: serde_json::Value = serde_json::from_str(&stats)?;
    assert!(
        stats["no_backend_rejected"].as_u64().unwrap_or(0) >= 2,
        "{stats}"
    );

    // Readiness back: served again.
    c.set_endpoints(&[1], &[0])?;
    assert_eq!(c.client().tcp_request(tcp_vip(), TIMEOUT)?, "b1");
    Ok(())
}

#[test]
fn agent_restarts_lose_no_established_connection() -> Result<()> {
    let mut c = Cluster::start(3)?;
    let mut conns = Vec::new();
    for _ in 0..6 {
        let mut s = c.client().tcp_connect(tcp_vip(), TIMEOUT)?;
        let on = ask(&mut s)?;
        conns.push((s, on));
    }
    let before = c.agent.inspect(&["-o", "json", "services"])?;

    c.agent.restart()?;
    for (s, on) in conns.iter_mut() {
        assert_eq!(ask(s)?, *on, "after graceful restart");
    }
    c.agent.kill9();
    c.agent.start_again()?;
    for (s, on) in conns.iter_mut() {
        assert_eq!(ask(s)?, *on, "after kill -9 and start");
    }
    // Same frontends, same service IDs, same backends: nothing rebuilt.
    let after = c.agent.inspect(&["-o", "json", "services"])?;
    let strip = |v: &str| -> Result<serde_json::Value> {
        let mut v: serde_json::Value = serde_json::from_str(v)?;
        for row in v.as_array_mut().into_iter().flatten() {
            for k in ["new_flows", "packets", "bytes", "refused_no_backend"] {
                row[k] = serde_json::Value::Null;
            }
        }
        Ok(v)
    };
    assert_eq!(strip(&before)?, strip(&after)?);
    assert!(
        c.agent.log_text().contains("adopted_services=2"),
        "{}",
        c.agent.log_tail()
    );
    Ok(())
}

#[test]
fn pods_that_appear_later_are_served_and_vanished_ones_detached() -> Result<()> {
    let mut c = Cluster::start(2)?;
    c.topo
        .add_pod("late-client", Ipv4Addr::new(10, 244, 0, 99))?;
    let late = c.topo.pod("late-client");
    let iface = late.host_iface().to_string();
    wait::until(
        "the new pod's interface attached",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            Ok(c.agent
                .log_text()
                .contains(&format!("attached iface=\"{iface}\"")))
        },
    )?;
    let who = late.tcp_request(tcp_vip(), TIMEOUT)?;
    assert!(who == "b0" || who == "b1", "{who}");
    c.topo.remove_pod("late-client")?;
    wait::until(
        "the vanished interface detached",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            Ok(c.agent
                .log_text()
                .contains(&format!("detached iface=\"{iface}\"")))
        },
    )?;
    // The others are unaffected.
    c.client().tcp_request(tcp_vip(), TIMEOUT)?;
    Ok(())
}

/// A pod's first packet — its first DNS query, sent as soon as the
/// container starts — must already be translated: the agent attaches to a
/// new interface when the kernel announces it, not at its next poll (here
/// set to 10 s, so only the announcement can be in time).
#[test]
fn a_new_pods_first_datagram_is_translated() -> Result<()> {
    let mut c = Cluster::start_with(2, &["--iface-poll-ms", "10000"])?;
    let created = Instant::now();
    c.topo.add_pod("newborn", Ipv4Addr::new(10, 244, 0, 98))?;
    let pod = c.topo.pod("newborn");
    let iface = pod.host_iface().to_string();
    let who = pod
        .udp_request(udp_vip(), TIMEOUT)
        .map_err(|e| anyhow::anyhow!("the new pod's first datagram: {e:#}"))?;
    assert!(who == "b0" || who == "b1", "{who}");
    assert!(
        c.agent
            .log_text()
            .contains(&format!("attached iface=\"{iface}\"")),
        "{}",
        c.agent.log_tail()
    );
    eprintln!(
        "first datagram answered {:?} after the pod's interface was created",
        created.elapsed()
    );
    Ok(())
}

/// Whatever happens to the maps behind the agent's back — a write that
/// failed half-way, an operator's `bpftool map delete`, a map re-created —
/// the periodic full resync re-reads them and writes back what the cluster
/// wants.
#[test]
fn a_frontend_removed_behind_the_agents_back_is_restored() -> Result<()> {
    let c = Cluster::start_with(2, &["--resync-interval", "1"])?;
    c.client().tcp_request(tcp_vip(), TIMEOUT)?;
    // The master entry of 10.96.0.10:80/TCP (ServiceKey: VIP, port, proto,
    // scope, slot 0, padding).
    let services = c.agent.pin_dir().join("services");
    let services = services.to_string_lossy();
    let mut argv = vec![
        "bpftool", "map", "delete", "pinned", &services, "key", "hex",
    ];
    argv.extend("0a 60 00 0a 00 50 06 00 00 00 00 00".split(' '));
    switchyard_tests::command::run(&argv)?;
    assert!(
        !c.agent.inspect(&["services"])?.contains(TCP_FRONTEND),
        "the entry was not deleted"
    );
    let took = wait::until(
        "the frontend restored by a resync",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || Ok(c.agent.inspect(&["services"])?.contains(TCP_FRONTEND)),
    )?;
    eprintln!("restored after {took:?}");
    let who = c.client().tcp_request(tcp_vip(), TIMEOUT)?;
    assert!(who == "b0" || who == "b1", "{who}");
    Ok(())
}

#[test]
fn invalid_objects_are_reported_and_the_rest_still_applies() -> Result<()> {
    let c = Cluster::start(2)?;
    c.manifests.write(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: broken, namespace: test}\nspec:\n  clusterIP: 10.96.0.77\n  ports: [{name: x, port: 99999}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: test}\nspec: {clusterIP: 10.96.0.78, ports: [{port: 81}]}\n",
    )?;
    wait::until(
        "the error reported",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            Ok(c.agent.log_text().contains("broken.yaml (document 1): Service test/broken: spec.ports[0].port: 99999 is not in 1..=65535"))
        },
    )?;
    wait::until(
        "the valid service programmed",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || Ok(c.agent.backends_of("10.96.0.78:81/TCP").is_ok()),
    )?;
    assert!(c.agent.backends_of("10.96.0.77:99999/TCP").is_err());
    assert!(
        c.client().tcp_request(tcp_vip(), TIMEOUT).is_ok(),
        "echo must keep working"
    );
    Ok(())
}

/// The agent's counter `switchyard_map_full_total{map=...}`.
fn map_full_count(c: &Cluster, map: &str) -> Result<u64> {
    let (_, body) = c.topo.host().http_get_path(
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10249),
        "/metrics",
        TIMEOUT,
    )?;
    let series = format!("switchyard_map_full_total{{map=\"{map}\"}} ");
    Ok(body
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or(0))
}

#[test]
fn full_maps_are_reported_by_name_and_what_fits_keeps_working() -> Result<()> {
    // echo takes 4 backend entries (2 pods × TCP and UDP ports).
    let c = Cluster::start_with(
        2,
        &[
            "--map-size-backends",
            "5",
            // Big enough that the LRU's per-CPU free lists (up to 128 entries
            // each) do not start evicting before admission closes at 90 %.
            "--map-size-conntrack",
            "4096",
            "--ct-gc-interval",
            "0.2",
            // The quota would stop the client first (1/4 of the flows).
            "--ct-flows-per-source",
            "0",
        ],
    )?;
    c.manifests.write(
        "big.yaml",
        &format!(
            "{}---\n{}",
            service_yaml(
                "test",
                "big",
                Ipv4Addr::new(10, 96, 0, 90),
                &[("tcp", 80, 9090, "TCP")]
            ),
            endpoint_slice_yaml(
                "test",
                "big-1",
                "big",
                &[("tcp", 9090, "TCP")],
                &(50..53)
                    .map(|i| EndpointSpec::ready(Ipv4Addr::new(10, 244, 0, i)))
                    .collect::<Vec<_>>()
            )
        ),
    )?;
    wait::until(
        "the full backends map reported",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            let log = c.agent.log_text();
            Ok(log.contains("map backends is full (5 entries)")
                && log.contains("raise --map-size-backends")
                && log.contains("backends map full (5 entries in use)"))
        },
    )?;
    assert!(map_full_count(&c, "backends")? >= 1);
    // The service that fitted is untouched; the one that did not got what
    // fitted (one backend) rather than nothing.
    assert_eq!(c.agent.backends_of(TCP_FRONTEND)?.len(), 2);
    assert_eq!(c.agent.backends_of("10.96.0.90:80/TCP")?.len(), 1);
    assert!(c.client().tcp_request(tcp_vip(), TIMEOUT).is_ok());

    // A connection that is established before the table fills.
    let mut kept = c.client().tcp_connect(tcp_vip(), TIMEOUT)?;
    let kept_on = ask(&mut kept)?;
    // UDP flows until the table is nearly full (1 860 flows: 91 %): the
    // sweep reports it, says which flag sizes it, and closes admission to
    // new flows; the established connection keeps its entries.
    let flooded = c.client().in_netns(|| -> std::io::Result<()> {
        for port in 20000..21860u16 {
            let socket = std::net::UdpSocket::bind(("0.0.0.0", port))?;
            socket.send_to(b"hello\n", udp_vip())?;
        }
        Ok(())
    })?;
    flooded?;
    wait::until(
        "the full conntrack map reported and admission closed",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            let log = c.agent.log_text();
            Ok(log.contains("map conntrack is")
                && log.contains("new flows are refused until sweeps make room")
                && map_full_count(&c, "conntrack")? >= 1)
        },
    )?;
    assert!(c.agent.log_text().contains("raise --map-size-conntrack"));
    assert!(
        c.client().udp_request(udp_vip(), TIMEOUT).is_err(),
        "a new flow is refused while the table is nearly full"
    );
    assert_eq!(ask(&mut kept)?, kept_on, "the established connection stays");
    Ok(())
}

#[test]
fn deleting_a_service_removes_it_and_maps_dump_with_field_names() -> Result<()> {
    let c = Cluster::start(1)?;
    let dump = switchyard_tests::command::run(&[
        "bpftool",
        "map",
        "dump",
        "pinned",
        &c.agent.pin_dir().join("services").to_string_lossy(),
    ])?;
    assert!(
        dump.contains("\"vip_be\"") && dump.contains("\"backend_id\""),
        "no field names:\n{dump}"
    );

    c.manifests.remove("echo-service.yaml")?;
    wait::until(
        "the service removed from the maps",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            Ok(c.agent
                .services_json()?
                .as_array()
                .is_some_and(|a| a.is_empty()))
        },
    )?;
    let backends = c.agent.inspect(&["-o", "json", "backends"])?;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&backends)?,
        serde_json::json!([])
    );
    Ok(())
}

#[test]
fn cleanup_removes_every_pin() -> Result<()> {
    let mut c = Cluster::start(1)?;
    let pins = c.agent.pin_dir().to_path_buf();
    c.agent.stop()?;
    assert!(
        pins.join("conntrack").exists(),
        "maps stay pinned after the agent exits"
    );
    c.agent.cleanup()?;
    assert!(!pins.exists(), "{} still there", pins.display());
    c.agent.keep_pins();
    Ok(())
}

#[test]
fn a_pod_reaches_itself_through_its_service() -> Result<()> {
    // The only backend is b0; b0 asks the VIP and must get its own answer,
    // from the VIP (hairpin, which kube-proxy supports too).
    let c = Cluster::start(1)?;
    let b0 = c.topo.pod("b0");
    for _ in 0..5 {
        assert_eq!(b0.tcp_request(tcp_vip(), TIMEOUT)?, "b0");
        assert_eq!(b0.udp_request(udp_vip(), TIMEOUT)?, "b0");
    }
    let mut kept = b0.tcp_connect(tcp_vip(), TIMEOUT)?;
    for _ in 0..3 {
        assert_eq!(ask(&mut kept)?, "b0");
    }
    assert!(c.agent.inspect(&["conntrack"])?.contains("(hairpin)"));
    // Other clients are unaffected.
    assert_eq!(c.client().tcp_request(tcp_vip(), TIMEOUT)?, "b0");
    Ok(())
}

/// The upstream "large requests: udp" case (and DNS answers with EDNS,
/// Kerberos, SNMP): a request and an answer bigger than the MTU leave their
/// senders as IP fragments, of which only the first carries the ports.
/// Every fragment must reach the same backend, and every fragment of the
/// answer must come back from the VIP, or the datagram is never reassembled.
#[test]
fn datagrams_bigger_than_the_mtu_cross_a_service_both_ways() -> Result<()> {
    let c = Cluster::start(3)?;
    let payload: Vec<u8> = (0..4000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut seen = BTreeSet::new();
    for _ in 0..12 {
        let reply = c.client().udp_echo(udp_vip(), &payload, TIMEOUT)?;
        let (name, echoed) = reply
            .split_at_checked(2)
            .ok_or_else(|| anyhow::anyhow!("short answer {reply:?}"))?;
        assert!(
            echoed == [b" ".as_slice(), &payload].concat(),
            "the answer ({} bytes) is not the payload echoed",
            reply.len()
        );
        seen.insert(String::from_utf8_lossy(name).to_string());
    }
    assert_eq!(
        seen,
        names(0..=2),
        "large datagrams are balanced like small ones"
    );
    let stats = c.agent.inspect(&["stats"])?;
    assert!(stats.contains("fragment_tracked"), "{stats}");
    Ok(())
}

/// A hostile tenant sweeps source ports against a service's UDP port (no
/// privilege needed: one datagram per port) while another pod's TCP
/// connection through the same node is idle. The sweep must not push the
/// victim's connection out of the conntrack table: it stops at its quota.
#[test]
fn a_port_sweep_from_one_pod_leaves_another_pods_connection_alone() -> Result<()> {
    let c = Cluster::start_with(3, &["--map-size-conntrack", "4096"])?;
    let mut victim = c.client().tcp_connect(tcp_vip(), TIMEOUT)?;
    let backend = ask(&mut victim)?;
    let attacker = c.topo.pod("b2");
    let sent = attacker.in_netns(move || -> std::io::Result<usize> {
        let mut sent = 0;
        for port in 20000..26000u16 {
            let socket = std::net::UdpSocket::bind(("0.0.0.0", port))?;
            if socket.send_to(b"x", udp_vip()).is_ok() {
                sent += 1;
            }
        }
        Ok(sent)
    })??;
    assert_eq!(sent, 6000);
    victim.set_read_timeout(Some(TIMEOUT))?;
    assert_eq!(
        ask(&mut victim).map_err(|e| anyhow::anyhow!("the victim's connection: {e:#}"))?,
        backend,
        "the victim keeps its backend"
    );
    let stats = c.agent.inspect(&["stats"])?;
    let refused = stats
        .lines()
        .find(|l| l.contains("conntrack_source_quota"))
        .unwrap_or_default()
        .to_string();
    assert!(!refused.ends_with(" 0") && !refused.is_empty(), "{stats}");
    Ok(())
}

/// An IPv4 TCP segment `from → to` with `flags` (checksums filled), as a
/// raw socket with IP_HDRINCL sends it.
fn forged_segment(from: SocketAddrV4, to: SocketAddrV4, flags: u8, seq: u32) -> Vec<u8> {
    fn sum(bytes: &[u8]) -> u16 {
        let mut s: u32 = bytes
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&from.port().to_be_bytes());
    tcp.extend_from_slice(&to.port().to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&0u32.to_be_bytes());
    tcp.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&from.ip().octets());
    pseudo.extend_from_slice(&to.ip().octets());
    pseudo.extend_from_slice(&[0, 6, 0, tcp.len() as u8]);
    pseudo.extend_from_slice(&tcp);
    let c = sum(&pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, (20 + tcp.len()) as u8, 0, 1, 0, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&from.ip().octets());
    ip.extend_from_slice(&to.ip().octets());
    let c = sum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&tcp);
    ip
}

/// Sends raw IPv4 packets (IP_HDRINCL) from the calling thread's netns.
fn send_raw(packets: &[Vec<u8>], to: Ipv4Addr) -> std::io::Result<()> {
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(to).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut result = Ok(());
    for p in packets {
        let n = unsafe {
            libc::sendto(
                fd,
                p.as_ptr().cast(),
                p.len(),
                0,
                &addr as *const libc::sockaddr_in as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n < 0 {
            result = Err(std::io::Error::last_os_error());
            break;
        }
    }
    unsafe { libc::close(fd) };
    result
}

/// Another pod, with the CAP_NET_RAW every container has by default,
/// forges the victim's address: a RST, then a SYN, on the victim's
/// connection to the VIP, again and again. The victim's connection must
/// keep its backend: the forgeries are dropped where they leave the
/// attacker's pod.
#[test]
fn a_pod_forging_another_pods_address_cannot_reset_or_hijack_its_connection() -> Result<()> {
    let c = Cluster::start(3)?;
    let mut victim = c.client().tcp_connect(tcp_vip(), TIMEOUT)?;
    let backend = ask(&mut victim)?;
    let victim_end = match victim.local_addr()? {
        SocketAddr::V4(a) => a,
        other => anyhow::bail!("unexpected address {other}"),
    };
    let forged: Vec<Vec<u8>> = (0..10u32)
        .flat_map(|i| {
            [
                forged_segment(victim_end, tcp_vip(), 0x04, 1000 + i),
                forged_segment(victim_end, tcp_vip(), 0x02, 5000 + i),
            ]
        })
        .collect();
    c.topo
        .pod("b2")
        .in_netns(move || send_raw(&forged, VIP))??;
    victim.set_read_timeout(Some(TIMEOUT))?;
    for _ in 0..3 {
        assert_eq!(
            ask(&mut victim).map_err(|e| anyhow::anyhow!("the victim's connection: {e:#}"))?,
            backend,
            "the victim keeps its backend"
        );
    }
    let stats = c.agent.inspect(&["stats"])?;
    assert!(
        stats
            .lines()
            .any(|l| l.contains("spoofed_source_dropped") && !l.trim_end().ends_with(" 0")),
        "{stats}"
    );
    Ok(())
}

#[test]
fn udp_flows_of_a_removed_backend_are_flushed() -> Result<()> {
    // A resolver-like client reuses one socket (one 5-tuple). When its
    // backend goes, its next datagram must reach a live backend instead of
    // being pinned to the dead one by conntrack.
    let c = Cluster::start(3)?;
    let first = c
        .client()
        .udp_request_from_port(40053, udp_vip(), TIMEOUT)?;
    for _ in 0..5 {
        assert_eq!(
            c.client()
                .udp_request_from_port(40053, udp_vip(), TIMEOUT)?,
            first,
            "sticky flow"
        );
    }
    let gone: u8 = first.trim_start_matches('b').parse()?;
    let remaining: Vec<u8> = (0..3).filter(|i| *i != gone).collect();
    c.set_endpoints(&remaining, &[])?;
    wait::until(
        "the flow to move off the removed backend",
        Duration::from_secs(3),
        Duration::from_millis(50),
        || {
            Ok(c.client()
                .udp_request_from_port(40053, udp_vip(), TIMEOUT)?
                != first)
        },
    )?;
    for _ in 0..5 {
        assert_ne!(
            c.client()
                .udp_request_from_port(40053, udp_vip(), TIMEOUT)?,
            first
        );
    }
    assert!(
        c.agent
            .log_text()
            .contains("flushed UDP flows of removed backends"),
        "{}",
        c.agent.log_tail()
    );
    Ok(())
}

#[test]
fn idle_and_closed_connections_expire_while_established_ones_stay() -> Result<()> {
    let c = Cluster::start_with(
        2,
        &[
            "--ct-gc-interval",
            "0.2",
            "--ct-timeout-udp",
            "1",
            "--ct-timeout-tcp-closing",
            "1",
        ],
    )?;
    let mut kept = c.client().tcp_connect(tcp_vip(), TIMEOUT)?;
    let kept_on = ask(&mut kept)?;
    let kept_port = kept.local_addr()?.port();
    c.client().udp_request(udp_vip(), TIMEOUT)?;
    c.client().tcp_request(tcp_vip(), TIMEOUT)?; // connects and closes
    let rows = |c: &Cluster| -> Result<Vec<serde_json::Value>> {
        let v: serde_json::Value =
            serde_json::from_str(&c.agent.inspect(&["-o", "json", "conntrack"])?)?;
        Ok(v.as_array().cloned().unwrap_or_default())
    };
    assert_eq!(rows(&c)?.len(), 3, "three connections tracked");
    let took = wait::until(
        "idle UDP and closed TCP to expire",
        Duration::from_secs(6),
        Duration::from_millis(100),
        || Ok(rows(&c)?.len() == 1),
    )?;
    eprintln!("expired after {took:?}");
    let left = rows(&c)?;
    assert_eq!(
        left[0]["client"],
        format!("{CLIENT_IP}:{kept_port}"),
        "the open connection stays"
    );
    assert_eq!(ask(&mut kept)?, kept_on);
    Ok(())
}

/// A client that sent its whole request and shut down its writes (FIN)
/// waits for a slow answer: the half-closed connection must keep its
/// translation well past the closing timeout (kube-proxy: 1 h CLOSE_WAIT),
/// or the late answer arrives from the backend's own address and is reset.
#[test]
fn a_half_closed_connection_gets_its_late_answer() -> Result<()> {
    let c = Cluster::start_with(
        1,
        &["--ct-gc-interval", "0.2", "--ct-timeout-tcp-closing", "1"],
    )?;
    let mut stream = c.client().tcp_connect(tcp_vip(), TIMEOUT)?;
    stream.write_all(b"linger 3\n")?;
    stream.shutdown(std::net::Shutdown::Write)?;
    stream.set_read_timeout(Some(Duration::from_secs(8)))?;
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer)
        .map_err(|e| anyhow::anyhow!("reading the late answer: {e}"))?;
    assert_eq!(answer.trim(), "b0 after 3 s");
    Ok(())
}

#[test]
fn client_ip_affinity_sticks_until_the_backend_goes_or_the_timeout_passes() -> Result<()> {
    let c = Cluster::start(3)?;
    c.manifests
        .write("echo-service.yaml", &with_client_ip_affinity(&service(), 1))?;
    wait::until(
        "affinity programmed",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            let first = c.client().tcp_request(tcp_vip(), TIMEOUT)?;
            Ok((0..10).all(|_| {
                c.client().tcp_request(tcp_vip(), TIMEOUT).ok().as_deref() == Some(first.as_str())
            }))
        },
    )?;
    let pinned = c.client().tcp_request(tcp_vip(), TIMEOUT)?;
    for _ in 0..20 {
        assert_eq!(
            c.client().tcp_request(tcp_vip(), TIMEOUT)?,
            pinned,
            "new connections stick"
        );
    }
    let rows: serde_json::Value =
        serde_json::from_str(&c.agent.inspect(&["-o", "json", "affinity"])?)?;
    let row = rows
        .as_array()
        .and_then(|r| r.iter().find(|r| r["service"] == "test/echo:tcp"))
        .cloned();
    let row = row.expect("client pinned in inspect affinity");
    assert_eq!(row["client"], CLIENT_IP.to_string());
    let pinned_idx: u8 = pinned.trim_start_matches('b').parse()?;
    assert_eq!(row["backend"], format!("{}:8080", backend_ip(pinned_idx)));

    // The backend goes: the client moves to one other backend and sticks there.
    let remaining: Vec<u8> = (0..3).filter(|i| *i != pinned_idx).collect();
    c.set_endpoints(&remaining, &[])?;
    let moved = c.client().tcp_request(tcp_vip(), TIMEOUT)?;
    assert_ne!(moved, pinned);
    for _ in 0..10 {
        assert_eq!(c.client().tcp_request(tcp_vip(), TIMEOUT)?, moved);
    }

    // Idle past timeoutSeconds: the next connection is balanced afresh.
    // With 2 backends a fresh choice differs from the pin half the time.
    let mut rebalanced = false;
    for _ in 0..12 {
        std::thread::sleep(Duration::from_millis(1200));
        if c.client().tcp_request(tcp_vip(), TIMEOUT)? != moved {
            rebalanced = true;
            break;
        }
    }
    assert!(rebalanced, "the pin never expired");
    Ok(())
}

#[test]
fn terminating_endpoints_keep_their_flows_and_serve_only_as_a_fallback() -> Result<()> {
    let c = Cluster::start(3)?;
    let terminating = |i: u8, serving: bool| EndpointSpec {
        ready: false,
        serving,
        terminating: true,
        ..EndpointSpec::ready(backend_ip(i))
    };
    let ports = [("tcp", 8080, "TCP"), ("udp", 5353, "UDP")];
    // A connection to b2 before it starts terminating.
    let mut on_b2 = None;
    for _ in 0..60 {
        let mut s = c.client().tcp_connect(tcp_vip(), TIMEOUT)?;
        if ask(&mut s)? == "b2" {
            on_b2 = Some(s);
            break;
        }
    }
    let mut on_b2 = on_b2.expect("a connection landed on b2");

    // b2 terminates (still serving), b0 and b1 ready: no new flow to b2,
    // the existing one keeps working.
    let eps = vec![
        EndpointSpec::ready(backend_ip(0)),
        EndpointSpec::ready(backend_ip(1)),
        terminating(2, true),
    ];
    c.write_slice_and_wait(
        &endpoint_slice_yaml("test", "echo-1", "echo", &ports, &eps),
        &[0, 1],
    )?;
    for _ in 0..30 {
        assert_ne!(
            c.client().tcp_request(tcp_vip(), TIMEOUT)?,
            "b2",
            "new flow to a terminating endpoint"
        );
    }
    assert_eq!(
        ask(&mut on_b2)?,
        "b2",
        "established flow to a terminating endpoint dropped"
    );

    // Nothing ready any more: the serving terminating endpoints take new
    // flows (kube-proxy's fallback), the non-serving one does not.
    let eps = vec![
        terminating(0, false),
        terminating(1, true),
        terminating(2, true),
    ];
    c.write_slice_and_wait(
        &endpoint_slice_yaml("test", "echo-1", "echo", &ports, &eps),
        &[1, 2],
    )?;
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        seen.insert(c.client().tcp_request(tcp_vip(), TIMEOUT)?);
    }
    assert_eq!(seen, names(1..=2));
    Ok(())
}

/// The guide's example of a Service's endpoints is a classic `v1`
/// Endpoints object. In standalone mode one is taken like the EndpointSlice
/// the control plane would mirror from it: ready `addresses` serve,
/// `notReadyAddresses` do not, ports matched by name.
#[test]
fn classic_endpoints_serve_their_service_in_standalone_mode() -> Result<()> {
    let c = Cluster::start(3)?;
    let (b0, b1, b2) = (backend_ip(0), backend_ip(1), backend_ip(2));
    let endpoints = format!(
        "apiVersion: v1\nkind: Endpoints\nmetadata: {{name: echo, namespace: test}}\nsubsets:\n- addresses: [{{ip: {b0}}}, {{ip: {b1}}}]\n  notReadyAddresses: [{{ip: {b2}}}]\n  ports:\n  - {{name: tcp, port: 8080, protocol: TCP}}\n  - {{name: udp, port: 5353, protocol: UDP}}\n"
    );
    c.write_slice_and_wait(&endpoints, &[0, 1])?;
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        seen.insert(c.client().tcp_request(tcp_vip(), TIMEOUT)?);
    }
    let expected: BTreeSet<String> = ["b0", "b1"].iter().map(|s| s.to_string()).collect();
    assert_eq!(seen, expected, "only the ready addresses serve");
    let answer = c.client().udp_request(udp_vip(), TIMEOUT)?;
    assert!(expected.contains(&answer), "UDP by port name: {answer}");
    Ok(())
}

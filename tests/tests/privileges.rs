//! The agent needs exactly the capabilities the chart grants (BPF,
//! NET_ADMIN, PERFMON): with only those it loads, attaches and serves; with
//! one of them missing it stops with an error that says what was refused.
//! Needs root (to take capabilities away, with setpriv).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use anyhow::Result;
use switchyard_tests::{
    AgentOptions, AgentProcess, AgentSource, EndpointSpec, ManifestDir, ServerPorts, Topology,
    cleanup_stale, endpoint_slice_yaml, service_yaml,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

struct Node {
    _servers: Vec<switchyard_tests::PodServer>,
    manifests: ManifestDir,
    topo: Topology,
}

fn node() -> Result<Node> {
    cleanup_stale();
    let mut topo = Topology::new()?;
    topo.add_pod("client", Ipv4Addr::new(10, 244, 0, 10))?;
    let backend = topo.add_pod("b0", Ipv4Addr::new(10, 244, 0, 20))?;
    let server = backend.start_server(&ServerPorts::tcp_udp(8080, 5353))?;
    let manifests = ManifestDir::new()?;
    manifests.write(
        "echo.yaml",
        &format!(
            "{}---\n{}",
            service_yaml("test", "echo", VIP, &[("tcp", 80, 8080, "TCP")]),
            endpoint_slice_yaml(
                "test",
                "echo-1",
                "echo",
                &[("tcp", 8080, "TCP")],
                &[EndpointSpec::ready(Ipv4Addr::new(10, 244, 0, 20))]
            )
        ),
    )?;
    Ok(Node {
        _servers: vec![server],
        manifests,
        topo,
    })
}

fn options(n: &Node) -> AgentOptions {
    AgentOptions {
        node_ns: n.topo.node_ns().to_string(),
        pin_dir: format!("/sys/fs/bpf/{}", n.topo.id()).into(),
        source: AgentSource::Manifests(n.manifests.path().to_path_buf()),
        pod_ifaces: n.topo.pod_iface_glob(),
        extra_args: vec![],
    }
}

#[test]
fn the_charts_capabilities_are_enough() -> Result<()> {
    let n = node()?;
    let _agent = AgentProcess::start_wrapped(
        options(&n),
        Duration::from_secs(20),
        &[
            "setpriv",
            "--bounding-set=-all,+bpf,+net_admin,+perfmon",
            "--",
        ],
    )?;
    let who = n
        .topo
        .pod("client")
        .tcp_request(SocketAddrV4::new(VIP, 80), Duration::from_secs(2))?;
    assert_eq!(who, "b0");
    Ok(())
}

#[test]
fn fewer_capabilities_fail_clearly() -> Result<()> {
    for (bounding, refused) in [
        ("-all,+bpf,+perfmon", "loading program"),
        ("-all,+net_admin,+perfmon", "Operation not permitted"),
        // Without PERFMON the verifier refuses the programs' pointer use.
        ("-all,+bpf,+net_admin", "Permission denied"),
    ] {
        let n = node()?;
        let arg = format!("--bounding-set={bounding}");
        let err = AgentProcess::start_wrapped(
            options(&n),
            Duration::from_secs(20),
            &["setpriv", &arg, "--"],
        )
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
        assert!(
            err.contains("exited") && err.contains(refused),
            "without some of the chart's capabilities ({bounding}) the agent must stop, saying what was refused: {err}"
        );
    }
    Ok(())
}

/// Listening sockets (TCP and UDP) in `ns` that belong to `pid`.
fn listeners_of(ns: &str, pid: u32) -> Result<Vec<String>> {
    let out = switchyard_tests::command::run_in(ns, &["ss", "-Hlntup"])?;
    Ok(out
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter_map(|l| {
            // proto state recv-q send-q local peer process
            let cols: Vec<&str> = l.split_whitespace().collect();
            Some(format!("{}/{}", cols.get(4)?, cols.first()?))
        })
        .collect())
}

#[test]
fn it_listens_only_where_it_is_told() -> Result<()> {
    let n = node()?;
    let mut opts = options(&n);
    opts.extra_args = vec![
        "--metrics-addr".into(),
        "127.0.0.1:19249".into(),
        "--health-addr".into(),
        "127.0.0.1:19256".into(),
    ];
    let agent = AgentProcess::start(opts)?;
    let pid = agent.pid().expect("running");
    let mut sockets = listeners_of(n.topo.node_ns(), pid)?;
    sockets.sort();
    assert_eq!(sockets, ["127.0.0.1:19249/tcp", "127.0.0.1:19256/tcp"]);
    drop(agent);

    // With both servers off it listens nowhere at all.
    let mut opts = options(&n);
    opts.extra_args = vec![
        "--metrics-addr".into(),
        "none".into(),
        "--health-addr".into(),
        "none".into(),
    ];
    let agent = AgentProcess::start(opts)?;
    let pid = agent.pid().expect("running");
    assert_eq!(listeners_of(n.topo.node_ns(), pid)?, Vec::<String>::new());
    Ok(())
}

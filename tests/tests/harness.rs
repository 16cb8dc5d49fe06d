//! The harness itself: pods reach each other directly, servers answer with
//! their names, teardown leaves nothing behind. Needs root.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use anyhow::Result;
use switchyard_tests::{ServerPorts, Topology, command::run, is_refused};

#[test]
fn pods_talk_directly_and_teardown_removes_every_namespace() -> Result<()> {
    let (id, node_ns) = {
        let mut topo = Topology::new()?;
        topo.add_pod("a", Ipv4Addr::new(10, 244, 9, 1))?;
        topo.add_pod("b", Ipv4Addr::new(10, 244, 9, 2))?;
        let _server = topo
            .pod("b")
            .start_server(&ServerPorts::tcp_udp(7000, 7001))?;
        let a = topo.pod("a");
        let b_tcp = SocketAddrV4::new(topo.pod("b").ip(), 7000);
        assert_eq!(a.tcp_request(b_tcp, Duration::from_secs(2))?, "b");
        let (who, from) = a.udp_request_from(
            SocketAddrV4::new(topo.pod("b").ip(), 7001),
            Duration::from_secs(2),
        )?;
        assert_eq!(
            (who.as_str(), from),
            (
                "b",
                SocketAddr::V4(SocketAddrV4::new(topo.pod("b").ip(), 7001))
            )
        );
        let err = a
            .tcp_request(
                SocketAddrV4::new(topo.pod("b").ip(), 7999),
                Duration::from_secs(2),
            )
            .expect_err("nobody listens on 7999");
        assert!(is_refused(&err), "{err:#}");
        topo.remove_pod("a")?;
        assert!(!run(&["ip", "netns", "list"])?.contains(&format!("{}-a", topo.id())));
        (topo.id().to_string(), topo.node_ns().to_string())
    };
    let left = run(&["ip", "netns", "list"])?;
    assert!(!left.contains(&id), "namespaces left behind: {left}");
    assert!(!left.contains(&node_ns));
    Ok(())
}

//! Source-port remapping: flows whose replies would share one tuple (two
//! frontends, one backend) are kept apart.

use std::net::Ipv4Addr;

use lb_common::reason;
use lb_userspace::datapath::{maps::PinnedMaps, sync::MapSync};
use lb_userspace::model::Protocol;

use crate::build::*;
use crate::fixture::*;

/// Two frontends sharing one backend: a client's flows to both from the same
/// source port would have the same reply tuple.
const SHARED_A: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);

const SHARED_B: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 51);

fn with_shared_backend(f: &Fixture) {
    let mut desired = desired_state(&BACKENDS);
    for vip in [SHARED_A, SHARED_B] {
        for (port, protocol) in [(80, Protocol::Tcp), (53, Protocol::Udp)] {
            let s = service(vip, port, protocol, &BACKENDS[..1]);
            desired.services.insert(s.frontend, s);
        }
    }
    let mut sync = MapSync::adopt(PinnedMaps::open(&f.pin_dir).expect("maps")).expect("adopt");
    assert!(sync.apply(&desired).errors.is_empty());
}

#[test]
fn flows_sharing_a_reply_tuple_are_kept_apart_by_remapping_the_source_port() {
    let mut f = fixture();
    with_shared_backend(&f);
    let backend = BACKENDS[0];
    for (proto, vport, client_port) in [(6u8, 80u16, 43000u16), (17, 53, 43001)] {
        let pkt = |src: Ipv4Addr, sport, dst: Ipv4Addr, dport, flags| {
            if proto == 6 {
                Pkt::tcp(src, sport, dst, dport, flags).build()
            } else {
                Pkt::udp(src, sport, dst, dport).build()
            }
        };
        let remapped_before = f.maps.reason_count(reason::SOURCE_PORT_REMAPPED);
        // The first flow keeps its port.
        let (_, out) = f.run_from_pod(&pkt(CLIENT, client_port, SHARED_A, vport, SYN));
        let first = parse_checked(&out);
        assert_eq!((first.dst, first.sport), (backend, client_port));
        // The second, open at the same time, would be answered on the same
        // tuple: it is moved to another source port, checksums valid.
        let (_, out) = f.run_from_pod(&pkt(CLIENT, client_port, SHARED_B, vport, SYN));
        let second = parse_checked(&out);
        assert_eq!(
            (second.src, second.dst, second.dport),
            (CLIENT, backend, 8080)
        );
        assert_ne!(second.sport, client_port, "{proto}: not remapped");
        assert!((1024..32768).contains(&second.sport), "{}", second.sport);
        assert_eq!(
            f.maps.reason_count(reason::SOURCE_PORT_REMAPPED),
            remapped_before + 1
        );
        // Later packets of each flow keep their ports.
        for _ in 0..3 {
            let (_, out) = f.run_from_pod(&pkt(CLIENT, client_port, SHARED_B, vport, ACK));
            assert_eq!(parse_checked(&out).sport, second.sport);
            let (_, out) = f.run_from_pod(&pkt(CLIENT, client_port, SHARED_A, vport, ACK));
            assert_eq!(parse_checked(&out).sport, client_port);
        }
        // Each flow's replies come back from its own frontend, to the
        // client's own port.
        for (sport, frontend) in [(client_port, SHARED_A), (second.sport, SHARED_B)] {
            let (rc, out) = f.run_to_pod(&pkt(backend, 8080, CLIENT, sport, SYN | ACK));
            assert_eq!(rc, TC_ACT_OK);
            let r = parse_checked(&out);
            assert_eq!(
                (r.src, r.sport, r.dst, r.dport),
                (frontend, vport, CLIENT, client_port),
                "{proto}: reply to port {sport}"
            );
        }
        // An ICMP error about the moved flow quotes the client's own port.
        if proto == 6 {
            let router = Ipv4Addr::new(10, 244, 0, 1);
            let translated = pkt(CLIENT, second.sport, backend, 8080, ACK);
            let error = icmp_error(router, CLIENT, 3, 4, &translated[14..42]);
            let (_, out) = f.run_to_pod(&error);
            assert_eq!(
                quoted_flow(&error, &out),
                (CLIENT, SHARED_B, client_port, 80)
            );
        }
    }
    // User space pairs the entries as the datapath made them: inspect names
    // the remap, and a sweep removes whole connections, no orphans.
    let rows = lb_userspace::inspect::conntrack(&f.maps).expect("inspect");
    assert_eq!(
        rows.iter()
            .filter(|r| r.backend.contains("client port remapped to"))
            .count(),
        2,
        "{rows:#?}"
    );
    let all_idle = lb_userspace::datapath::conntrack::Timeouts {
        tcp_established: std::time::Duration::ZERO,
        tcp_syn: std::time::Duration::ZERO,
        tcp_closing: std::time::Duration::ZERO,
        tcp_close_wait: std::time::Duration::ZERO,
        udp: std::time::Duration::ZERO,
    };
    let now = lb_userspace::datapath::conntrack::monotonic_ns() + 1_000_000_000;
    let sweep = lb_userspace::datapath::conntrack::collect_garbage(&mut f.maps, now, &all_idle)
        .expect("sweep");
    assert_eq!((sweep.connections, sweep.orphans), (4, 0), "{sweep:?}");
    assert_eq!(f.maps.conntrack.iter().count(), 0);
}

#[test]
fn a_flow_reopened_on_its_own_ports_is_not_remapped() {
    let mut f = fixture();
    with_shared_backend(&f);
    let open = |f: &mut Fixture| {
        let (_, out) = f.run_from_pod(&Pkt::tcp(CLIENT, 43100, SHARED_A, 80, SYN).build());
        parse_checked(&out).sport
    };
    assert_eq!(open(&mut f), 43100);
    f.run_from_pod(&Pkt::tcp(CLIENT, 43100, SHARED_A, 80, FIN | ACK).build());
    // TIME_WAIT reuse of the same 4-tuple: its old reply entry is its own.
    assert_eq!(open(&mut f), 43100);
    assert_eq!(f.maps.reason_count(reason::SOURCE_PORT_REMAPPED), 0);
}

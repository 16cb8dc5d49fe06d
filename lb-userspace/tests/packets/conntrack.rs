//! Connection tracking: stale and missing entries, admission quotas,
//! forged sources and sequence numbers, the sweep, SNAT ports.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use lb_common::{conn_kind, program_names, reason};
use lb_userspace::datapath::{
    addr::{ip_be, port_be},
    maps::PinnedMaps,
    sync::MapSync,
};
use lb_userspace::model::Protocol;

use crate::build::*;
use crate::fixture::*;

#[test]
fn a_direct_connection_reusing_a_closed_vip_flows_port_is_not_rev_nated() {
    let mut f = fixture();
    // A connection through the VIP, then closed by the client.
    let (_, syn) = f.run_from_pod(&Pkt::tcp(CLIENT, 42000, VIP, 80, SYN).build());
    let backend = parse_checked(&syn).dst;
    f.run_from_pod(&Pkt::tcp(CLIENT, 42000, VIP, 80, FIN | ACK).build());
    // The client reuses the port for a direct connection to that backend.
    let direct = Pkt::tcp(CLIENT, 42000, backend, 8080, SYN).build();
    let (verdict, out) = f.run_from_pod(&direct);
    assert_eq!((verdict, &out[..direct.len()]), (TC_ACT_OK, &direct[..]));
    // Its replies reach the client from the backend, not from the VIP.
    let reply = Pkt::tcp(backend, 8080, CLIENT, 42000, SYN | ACK).build();
    let (_, out) = f.run_to_pod(&reply);
    assert_eq!(
        &out[..reply.len()],
        &reply[..],
        "reply rev-NATed as the old flow's"
    );

    // While the VIP connection is open, its reply entry stays.
    let (_, syn) = f.run_from_pod(&Pkt::tcp(CLIENT, 42001, VIP, 80, SYN).build());
    let backend = parse_checked(&syn).dst;
    f.run_from_pod(&Pkt::tcp(CLIENT, 42001, backend, 8080, SYN).build());
    let (_, out) = f.run_to_pod(&Pkt::tcp(backend, 8080, CLIENT, 42001, ACK).build());
    assert_eq!(
        parse_checked(&out).src,
        VIP,
        "the open VIP flow keeps its replies"
    );
}

/// A segment of a connection the datapath never saw open (its entry was
/// evicted, the node rebooted, or it is forged): no entry and no SYN. It
/// must not become a new flow to a random backend, which would answer RST
/// and kill the client's connection; it is dropped and counted, as
/// netfilter's INVALID state is by kube-proxy. Traffic to addresses that
/// are not services is none of the datapath's business and passes.
#[test]
fn mid_flow_tcp_without_an_entry_is_not_balanced() {
    let mut f = fixture();
    let world = f
        .datapath
        .program_fd(program_names::FROM_WORLD)
        .expect("fd");
    program_node_ports(&f, NODE_IP);
    let new_before = f.maps.reason_count(reason::NEW_FLOW);
    for flags in [ACK, ACK | FIN, 0x18 /* PSH|ACK */] {
        let (verdict, _) = f.run_from_pod(&Pkt::tcp(CLIENT, 42000, VIP, 80, flags).build());
        assert_eq!(
            verdict, 2,
            "pod's mid-flow segment ({flags:#x}) to the VIP: dropped"
        );
        let (verdict, _) = test_run(
            world,
            &Pkt::tcp(EXTERNAL_CLIENT, 42001, NODE_IP, 30081, flags).build(),
        );
        assert_eq!(
            verdict, 2,
            "outside mid-flow segment ({flags:#x}) to a node port: dropped"
        );
    }
    assert_eq!(
        f.maps.reason_count(reason::NEW_FLOW),
        new_before,
        "no flow was created"
    );
    assert_eq!(f.maps.reason_count(reason::TCP_NO_ENTRY_DROPPED), 6);
    assert!(
        f.maps.conntrack.keys().next().is_none(),
        "no conntrack entry"
    );
    // Not a service: untouched.
    let (verdict, out) = f.run_from_pod(&Pkt::tcp(CLIENT, 42002, BACKENDS[0], 8080, ACK).build());
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(parse_checked(&out).dst, BACKENDS[0]);
    // A SYN still opens a flow, and its ACK then follows it.
    let (_, out) = f.run_from_pod(&Pkt::tcp(CLIENT, 42003, VIP, 80, SYN).build());
    let backend = parse_checked(&out).dst;
    let (_, out) = f.run_from_pod(&Pkt::tcp(CLIENT, 42003, VIP, 80, ACK).build());
    assert_eq!(parse_checked(&out).dst, backend);
}

/// A tenant's port sweep through a service (no privilege needed) must not
/// crowd other tenants' connections out of the conntrack LRU: its new flows
/// stop at its quota, everyone else's are admitted, and established flows
/// (its own included) keep being translated. While the agent says the table
/// is nearly full, every new flow waits and established ones go on.
#[test]
fn conntrack_admission_stops_one_client_at_its_quota_and_keeps_established_flows() {
    let mut f = fixture();
    set_admission(&mut f, 5, 0);
    let mut admitted = 0;
    for port in 41000..41008 {
        let (rc, out) = f.run_from_pod(&Pkt::tcp(CLIENT, port, VIP, 80, SYN).build());
        if rc == TC_ACT_OK {
            assert!(BACKENDS.contains(&parse_checked(&out).dst));
            admitted += 1;
        } else {
            assert_eq!(rc, TC_ACT_SHOT, "port {port}");
        }
    }
    assert_eq!(admitted, 5, "the sweeping client stops at its quota");
    assert_eq!(f.maps.reason_count(reason::CONNTRACK_SOURCE_QUOTA), 3);
    // Its established flows, and another client's new ones, go on.
    let (rc, out) = f.run_from_pod(&Pkt::tcp(CLIENT, 41000, VIP, 80, ACK).build());
    assert_eq!(rc, TC_ACT_OK);
    assert!(BACKENDS.contains(&parse_checked(&out).dst));
    let other = Ipv4Addr::new(10, 244, 0, 11);
    let (rc, _) = f.run_from_pod(&Pkt::tcp(other, 41000, VIP, 80, SYN).build());
    assert_eq!(rc, TC_ACT_OK, "another client is admitted");

    // Nearly full: new flows wait, established ones are translated.
    set_admission(&mut f, 0, 1);
    let newcomer = Ipv4Addr::new(10, 244, 0, 12);
    let (rc, _) = f.run_from_pod(&Pkt::tcp(newcomer, 41000, VIP, 80, SYN).build());
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(f.maps.reason_count(reason::CONNTRACK_ADMISSION_CLOSED), 1);
    let (rc, out) = f.run_from_pod(&Pkt::tcp(other, 41000, VIP, 80, ACK).build());
    assert_eq!(rc, TC_ACT_OK);
    assert!(BACKENDS.contains(&parse_checked(&out).dst));
}

/// Marks the interface test runs arrive on (loopback, ifindex 1) as a pod
/// interface whose pod is CLIENT.
fn pod_on_test_interface(f: &Fixture, ip: Ipv4Addr) {
    let map = aya::maps::MapData::from_pin(f.pin_dir.join("pod_sources")).expect("pod_sources");
    let mut map: aya::maps::HashMap<_, lb_common::PodSource, u8> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(map)).expect("hash map");
    for ip_be in [ip_be(ip), 0] {
        map.insert(lb_common::PodSource { ifindex: 1, ip_be }, 1, 0)
            .expect("pod source");
    }
}

/// A pod (CAP_NET_RAW is in the default container set) forging another
/// pod's address: its RST must not close the victim's tracked connection,
/// its SYN must not re-balance it, its new flows must not be tracked (nor
/// spend the victim's quota). Its own packets go through as ever.
#[test]
fn pods_cannot_reset_or_hijack_flows_with_a_forged_source() {
    let mut f = fixture();
    pod_on_test_interface(&f, CLIENT);
    let (rc, out) = f.run_from_pod(&Pkt::tcp(CLIENT, 42000, VIP, 80, SYN).build());
    assert_eq!(rc, TC_ACT_OK);
    let backend = parse_checked(&out).dst;
    let victim = Ipv4Addr::new(10, 244, 0, 11);
    for (what, forged) in [
        ("RST", Pkt::tcp(victim, 42000, VIP, 80, 0x04)),
        ("FIN", Pkt::tcp(victim, 42000, VIP, 80, FIN | ACK)),
        ("SYN", Pkt::tcp(victim, 42000, VIP, 80, SYN)),
        ("new UDP flow", Pkt::udp(victim, 42000, VIP, 53)),
        (
            "RST as the backend",
            Pkt::tcp(backend, 8080, victim, 42000, 0x04),
        ),
    ] {
        let (rc, _) = f.run_from_pod(&forged.build());
        assert_eq!(rc, TC_ACT_SHOT, "forged {what} from another pod's address");
    }
    assert_eq!(f.maps.reason_count(reason::SPOOFED_SOURCE_DROPPED), 5);
    // The pod's own connection is untouched and keeps its backend.
    let (rc, out) = f.run_from_pod(&Pkt::tcp(CLIENT, 42000, VIP, 80, ACK).build());
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(parse_checked(&out).dst, backend);
    let (rc, _) = f.run_from_pod(&Pkt::tcp(CLIENT, 42000, VIP, 80, FIN | ACK).build());
    assert_eq!(rc, TC_ACT_OK, "its own FIN");
}

/// The sweep's delete on the real map: it takes an entry out only if it is
/// still the one the sweep judged (created at the same instant); a newer
/// one (the tuple reused meanwhile) is put back untouched.
#[test]
fn sweep_deletes_only_the_entry_it_judged() {
    use lb_userspace::datapath::conntrack::ConntrackTable;
    let mut f = fixture();
    f.run_from_pod(&Pkt::udp(CLIENT, 43000, VIP, 53).build());
    let (key, entry) = f
        .maps
        .conntrack
        .iter()
        .filter_map(Result::ok)
        .find(|(k, _)| k.src_port_be == port_be(43000))
        .expect("the flow is tracked");
    let older = entry.created_ns - 1;
    assert!(!f.maps.remove_if_created(&key, older).expect("remove"));
    assert_eq!(
        f.maps.get(&key).expect("get").map(|e| e.created_ns),
        Some(entry.created_ns),
        "a newer entry than the one judged stays"
    );
    assert!(
        f.maps
            .remove_if_created(&key, entry.created_ns)
            .expect("remove")
    );
    assert!(f.maps.get(&key).expect("get").is_none());
    assert!(
        !f.maps
            .remove_if_created(&key, entry.created_ns)
            .expect("remove gone")
    );
}

/// The backend resets a connection (its pod is restarting, say) and the
/// client at once reconnects from the same port, inside the closing window.
/// Like after a client RST, the new SYN must be balanced afresh — here the
/// reset backend has meanwhile left the service, so reusing the old entry
/// would send the connection to a backend that is gone.
#[test]
fn a_tuple_reopened_after_a_backend_reset_is_balanced_afresh() {
    let mut f = fixture();
    let (_, out) = f.run_from_pod(&Pkt::tcp(CLIENT, 43200, VIP, 80, SYN).build());
    let first = parse_checked(&out).dst;
    // SYN-ACK, then RST from the backend, through the client's interface.
    f.run_to_pod(&Pkt::tcp(first, 8080, CLIENT, 43200, SYN | ACK).build());
    f.run_to_pod(&Pkt::tcp(first, 8080, CLIENT, 43200, 0x04 /* RST */).build());
    let survivors: Vec<Ipv4Addr> = BACKENDS.iter().copied().filter(|b| *b != first).collect();
    let mut sync = MapSync::adopt(PinnedMaps::open(&f.pin_dir).expect("maps")).expect("adopt");
    assert!(sync.apply(&desired_state(&survivors)).errors.is_empty());
    let (_, out) = f.run_from_pod(&Pkt::tcp(CLIENT, 43200, VIP, 80, SYN).build());
    let again = parse_checked(&out).dst;
    assert!(
        survivors.contains(&again),
        "reopened flow went to {again}, the reset backend that left"
    );
}

/// Many clients from outside to one backend on another node, through a
/// node port: every flow needs its own SNAT port towards that backend.
/// Until the range is really full, none may be refused (netfilter's
/// MASQUERADE finds any free port); when it is full, the next is counted.
#[test]
fn snat_ports_are_found_until_the_range_is_full() {
    let mut f = fixture();
    let remote = BACKENDS[1];
    let mut desired = desired_state(&BACKENDS);
    let mut one = service(Ipv4Addr::new(10, 96, 0, 70), 80, Protocol::Tcp, &[remote]);
    one.external.node_port = Some(30070);
    for e in &mut one.endpoints {
        e.node = Some("elsewhere".into());
    }
    desired.services.insert(one.frontend, one);
    let mut sync = MapSync::adopt(PinnedMaps::open(&f.pin_dir).expect("maps"))
        .expect("adopt")
        .with_node(Some("here".into()))
        .with_node_ips(vec![NODE_IP]);
    assert!(sync.apply(&desired).errors.is_empty());
    const PORTS: u16 = 32;
    f.maps
        .nat_config
        .set(
            0,
            lb_common::NatConfig {
                snat_ip_be: ip_be(NODE_IP),
                port_min: 50000,
                port_max: 50000 + PORTS - 1,
                flags: 0,
            },
            0,
        )
        .expect("nat_config");
    // XDP claims the port and leaves forwarding to tc (no `--xdp-snat`):
    // the conntrack entries and the counters tell what it decided. (tc
    // looks the route up first, for the SNAT address, and takes no port
    // for a flow it cannot route; no route exists in this namespace.)
    let world = f.datapath.program_fd(program_names::XDP_WORLD).expect("fd");
    let tc = f
        .datapath
        .program_fd(program_names::FROM_WORLD)
        .expect("fd");
    test_run(
        tc,
        &Pkt::tcp(Ipv4Addr::new(10, 10, 3, 1), 40000, NODE_IP, 30070, SYN).build(),
    );
    assert_eq!(
        f.maps.reason_count(reason::FIB_LOOKUP_FAILED),
        1,
        "unroutable: dropped"
    );
    let snat_ports = |f: &Fixture| -> Vec<u16> {
        f.maps
            .conntrack
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, e)| k.dst_port_be == port_be(30070) && e.kind == conn_kind::FORWARD_SNAT)
            .map(|(_, e)| u16::from_be(e.second_port_be))
            .collect()
    };
    for i in 0..PORTS {
        let client = Ipv4Addr::new(10, 10, 1, 1 + i as u8);
        test_run(world, &Pkt::tcp(client, 40000, NODE_IP, 30070, SYN).build());
        assert_eq!(
            f.maps.reason_count(reason::SNAT_PORTS_EXHAUSTED),
            0,
            "flow {i} of {PORTS} refused with free SNAT ports left"
        );
    }
    let ports = snat_ports(&f);
    let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(
        (ports.len(), distinct.len()),
        (PORTS as usize, PORTS as usize),
        "one port per flow"
    );
    test_run(
        world,
        &Pkt::tcp(Ipv4Addr::new(10, 10, 2, 1), 40000, NODE_IP, 30070, SYN).build(),
    );
    assert_eq!(
        f.maps.reason_count(reason::SNAT_PORTS_EXHAUSTED),
        1,
        "the range is full"
    );
}

fn tcp_seq(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8, seq: u32) -> Vec<u8> {
    Pkt {
        seq,
        ..Pkt::tcp(src, sport, dst, dport, flags)
    }
    .build()
}

/// The conntrack entry of `flow` (client side) and of its reply.
fn tracked_flags(f: &Fixture, client: Ipv4Addr, sport: u16) -> Vec<u8> {
    f.maps
        .conntrack
        .iter()
        .filter_map(|r| r.ok())
        .filter(|(k, _)| {
            (k.src_ip_be == ip_be(client) && k.src_port_be == sport.to_be())
                || (k.dst_ip_be == ip_be(client) && k.dst_port_be == sport.to_be())
        })
        .map(|(_, e)| e.tcp_flags)
        .collect()
}

/// Someone outside the cluster who knows (or guesses) an external client's
/// connection to a node port — addresses and ports, not its sequence
/// numbers — forges the client's RST or FIN, or the backend's, to close it
/// in the node's conntrack, then a SYN to move it to another backend. Like
/// netfilter's window check, the node must believe only segments near what
/// each side has really sent: the forgeries are dropped and counted, the
/// connection keeps its entry and its backend, a forged data segment far
/// ahead cannot drag the window along, and the real RST still closes it.
#[test]
fn outside_attackers_cannot_reset_a_node_port_flow_without_its_sequence_numbers() {
    let mut f = fixture();
    program_node_ports(&f, NODE_IP);
    let world = f
        .datapath
        .program_fd(program_names::FROM_WORLD)
        .expect("fd");
    let to_world = f.datapath.program_fd(program_names::TO_WORLD).expect("fd");
    let xdp = f
        .datapath
        .program_fd(program_names::XDP_WORLD)
        .expect("xdp fd");
    const XDP_DROP: u32 = 1;
    const RST: u8 = 0x04;
    let (client, port) = (EXTERNAL_CLIENT, 45000);
    let (isn, backend_isn) = (1_000u32, 900_000u32);
    // Policy Local: the node port's one backend here, BACKENDS[0].
    let (rc, out) = test_run(world, &tcp_seq(client, port, NODE_IP, 30080, SYN, isn));
    assert_eq!(rc, TC_ACT_OK);
    let backend = parse_checked(&out).dst;
    let (rc, _) = test_run(
        to_world,
        &tcp_seq(backend, 8080, client, port, SYN | ACK, backend_isn),
    );
    assert_eq!(rc, TC_ACT_OK);
    let (rc, _) = test_run(world, &tcp_seq(client, port, NODE_IP, 30080, ACK, isn + 1));
    assert_eq!(rc, TC_ACT_OK);

    let far = isn.wrapping_add(0x8000_0000);
    let forgeries: [(&str, RawFd, Vec<u8>, u32); 5] = [
        (
            "client RST (tc)",
            world,
            tcp_seq(client, port, NODE_IP, 30080, RST, far),
            TC_ACT_SHOT,
        ),
        (
            "client RST (XDP)",
            xdp,
            tcp_seq(client, port, NODE_IP, 30080, RST | ACK, far),
            XDP_DROP,
        ),
        (
            "client FIN",
            world,
            tcp_seq(client, port, NODE_IP, 30080, FIN | ACK, far),
            TC_ACT_SHOT,
        ),
        (
            "backend RST",
            to_world,
            tcp_seq(
                backend,
                8080,
                client,
                port,
                RST,
                backend_isn.wrapping_add(0x4000_0000),
            ),
            TC_ACT_SHOT,
        ),
        (
            "client RST behind a window-dragging data segment",
            world,
            tcp_seq(client, port, NODE_IP, 30080, RST, isn + 3 * (1 << 20)),
            TC_ACT_SHOT,
        ),
    ];
    for (what, prog, packet, dropped) in forgeries {
        if what.contains("window-dragging") {
            // The data segment itself passes (the endpoints judge it) but
            // must not move the window 3 MiB ahead.
            let data = tcp_seq(
                client,
                port,
                NODE_IP,
                30080,
                ACK,
                isn + 3 * (1 << 20) - 1000,
            );
            assert_eq!(test_run(world, &data).0, TC_ACT_OK);
        }
        let (rc, _) = test_run(prog, &packet);
        assert_eq!(rc, dropped, "forged {what}: dropped");
    }
    assert_eq!(f.maps.reason_count(reason::TCP_OUT_OF_WINDOW_DROPPED), 5);
    assert!(
        tracked_flags(&f, client, port)
            .iter()
            .all(|flags| flags & (RST | FIN) == 0),
        "the connection is still open in conntrack"
    );
    // A forged SYN cannot re-balance the open connection.
    let (rc, out) = test_run(world, &tcp_seq(client, port, NODE_IP, 30080, SYN, 77));
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(parse_checked(&out).dst, backend);

    // The client's real RST (its next sequence number) closes it.
    let (rc, _) = test_run(world, &tcp_seq(client, port, NODE_IP, 30080, RST, isn + 1));
    assert_eq!(rc, TC_ACT_OK, "the client's own RST");
    assert!(
        tracked_flags(&f, client, port)
            .iter()
            .any(|flags| flags & RST != 0),
        "the real RST closes the flow"
    );
}

/// A client making short connections one after another (a load generator,
/// a NAT gateway in front of many users) holds quota places only for its
/// open flows: the closed ones, waiting in the table to expire, must not
/// refuse its next connection.
#[test]
fn flows_a_client_closed_give_their_quota_place_back() {
    let mut f = fixture();
    set_admission(&mut f, 5, 0);
    for port in 46000..46020 {
        let (rc, _) = f.run_from_pod(&Pkt::tcp(CLIENT, port, VIP, 80, SYN).build());
        assert_eq!(rc, TC_ACT_OK, "connection from port {port} admitted");
        let (rc, _) = f.run_from_pod(&Pkt::tcp(CLIENT, port, VIP, 80, FIN | ACK).build());
        assert_eq!(rc, TC_ACT_OK);
    }
    assert_eq!(f.maps.reason_count(reason::CONNTRACK_SOURCE_QUOTA), 0);
}

/// Writes the admission policy as the agent would.
fn set_admission(f: &mut Fixture, flows_per_source: u32, refuse_new: u32) {
    let policy = lb_common::Admission {
        flows_per_source,
        refuse_new,
    };
    f.maps.admission.set(0, policy, 0).expect("admission");
}

//! NetworkPolicy in the datapath, as an attacker and an operator would
//! probe it: packets into an isolated pod from allowed and other peers, on
//! allowed and other ports, replies of the pod's own flows, the node's own
//! traffic, and egress judged on the backend a service gave the flow.

use std::net::Ipv4Addr;

use lb_common::reason;
use lb_userspace::datapath::policy_sync::PolicySync;
use lb_userspace::policy::{Cidr, Isolation, PeerRule, PodPolicy, PolicyState, PortRange};

use crate::build::*;
use crate::fixture::*;

const POD: Ipv4Addr = BACKENDS[0];
const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 244, 9, 9);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(1, 2, 3, 4);

fn isolation(rules: Vec<PeerRule>) -> Option<Isolation> {
    Some(Isolation {
        policies: ["test/p".to_string()].into(),
        rules,
    })
}

fn tcp(port: u16) -> PortRange {
    PortRange {
        protocol: 6,
        first: port,
        last: port,
    }
}

/// POD isolated for ingress: only CLIENT, only on TCP 8080.
fn isolate_pod(f: &mut Fixture, egress: Option<Isolation>) {
    let mut state = PolicyState::default();
    state.pods.insert(
        POD,
        PodPolicy {
            pod: "test/pod".into(),
            ingress: isolation(vec![PeerRule {
                policy: "test/p".into(),
                peers: vec![Cidr::host(CLIENT)],
                ports: vec![tcp(8080)],
            }]),
            egress,
        },
    );
    let problems = PolicySync::default()
        .apply(&mut f.maps, &state)
        .expect("policy");
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn only_allowed_peers_and_ports_get_into_an_isolated_pod() {
    let mut f = fixture();
    isolate_pod(&mut f, None);
    // (what, packet, from the node itself, passes)
    let cases = [
        (
            "allowed peer and port",
            Pkt::tcp(CLIENT, 40000, POD, 8080, SYN),
            false,
            true,
        ),
        (
            "allowed peer, other port",
            Pkt::tcp(CLIENT, 40001, POD, 9090, SYN),
            false,
            false,
        ),
        (
            "other pod",
            Pkt::tcp(STRANGER, 40002, POD, 8080, SYN),
            false,
            false,
        ),
        (
            "other pod, mid-flow",
            Pkt::tcp(STRANGER, 40003, POD, 8080, ACK),
            false,
            false,
        ),
        (
            "UDP to the allowed port number",
            Pkt::udp(CLIENT, 40004, POD, 8080),
            false,
            false,
        ),
        (
            "the node itself (probes)",
            Pkt::tcp(STRANGER, 40005, POD, 9090, SYN),
            true,
            true,
        ),
        (
            "a pod nothing isolates",
            Pkt::tcp(STRANGER, 40006, BACKENDS[1], 9090, SYN),
            false,
            true,
        ),
    ];
    for (what, pkt, from_node, passes) in cases {
        let packet = pkt.build();
        let (verdict, _) = if from_node {
            f.run_to_pod(&packet)
        } else {
            f.run_to_pod_forwarded(&packet)
        };
        let want = if passes { TC_ACT_OK } else { TC_ACT_SHOT };
        assert_eq!(verdict, want, "{what}");
    }
    assert_eq!(f.maps.reason_count(reason::POLICY_INGRESS_DENIED), 4);
    // ...and for the pod: one new flow let in, four packets refused.
    let key = lb_common::PolicyStatsKey {
        pod_ip_be: u32::from(POD).to_be(),
        direction: lb_common::policy_direction::INGRESS,
    };
    let per_cpu = f.maps.policy_stats.get(&key, 0).expect("counted");
    let sum = per_cpu
        .iter()
        .fold((0, 0), |(a, d), c| (a + c.allowed, d + c.denied));
    assert_eq!(sum, (1, 4));
}

#[test]
fn replies_of_the_pods_own_flows_pass_and_nothing_else_from_there() {
    let mut f = fixture();
    isolate_pod(&mut f, None);
    // The pod connects out (nothing isolates its egress)...
    let (verdict, _) = f.run_from_pod(&Pkt::tcp(POD, 50000, OUTSIDE, 443, SYN).build());
    assert_eq!(verdict, TC_ACT_OK);
    // ...its peer's answer gets in; the same peer on another flow does not.
    let reply = Pkt::tcp(OUTSIDE, 443, POD, 50000, SYN | ACK).build();
    assert_eq!(f.run_to_pod_forwarded(&reply).0, TC_ACT_OK, "reply");
    let other = Pkt::tcp(OUTSIDE, 443, POD, 50001, SYN).build();
    assert_eq!(f.run_to_pod_forwarded(&other).0, TC_ACT_SHOT, "unsolicited");
    // An allowed connection in: its later packets pass too.
    let syn = Pkt::tcp(CLIENT, 40000, POD, 8080, SYN).build();
    assert_eq!(f.run_to_pod_forwarded(&syn).0, TC_ACT_OK);
    let data = Pkt::tcp(CLIENT, 40000, POD, 8080, ACK).build();
    assert_eq!(f.run_to_pod_forwarded(&data).0, TC_ACT_OK);
}

/// Egress is judged on the backend the service chose: the pod may reach
/// BACKENDS[1] only; through the VIP it is let through exactly when the
/// service sent the flow there.
#[test]
fn egress_is_judged_on_the_backend_a_service_chose() {
    let mut f = fixture();
    let only_backend_1 = isolation(vec![PeerRule {
        policy: "test/p".into(),
        peers: vec![Cidr::host(BACKENDS[1])],
        ports: vec![],
    }]);
    // Egress isolation for CLIENT (the pods' client in the fixture).
    let mut state = PolicyState::default();
    state.pods.insert(
        CLIENT,
        PodPolicy {
            pod: "test/client".into(),
            ingress: None,
            egress: only_backend_1,
        },
    );
    PolicySync::default()
        .apply(&mut f.maps, &state)
        .expect("policy");
    let (mut passed, mut dropped) = (0, 0);
    for port in 41000..41060 {
        let (verdict, out) = f.run_from_pod(&Pkt::tcp(CLIENT, port, VIP, 80, SYN).build());
        if verdict == TC_ACT_SHOT {
            dropped += 1;
            continue;
        }
        assert_eq!(
            parse_checked(&out).dst,
            BACKENDS[1],
            "port {port} let through to another backend"
        );
        passed += 1;
    }
    assert!(
        passed > 5 && dropped > 20,
        "passed {passed}, dropped {dropped}"
    );
    assert_eq!(f.maps.reason_count(reason::POLICY_EGRESS_DENIED), dropped);
    // Directly: the allowed pod yes, others no.
    assert_eq!(
        f.run_from_pod(&Pkt::tcp(CLIENT, 42000, BACKENDS[1], 8080, SYN).build())
            .0,
        TC_ACT_OK
    );
    assert_eq!(
        f.run_from_pod(&Pkt::tcp(CLIENT, 42001, BACKENDS[2], 8080, SYN).build())
            .0,
        TC_ACT_SHOT
    );
}

/// Two pods of one node, both default-deny for ingress (upstream's
/// "default-deny-ingress" case): a connection from one to the other is
/// let out of the first (nothing isolates its egress) and must still be
/// refused into the second — being allowed out must not vouch for it.
#[test]
fn allowed_out_of_one_pod_is_not_allowed_into_another_on_the_same_node() {
    let mut f = fixture();
    let deny_all_in = || PodPolicy {
        pod: "x/pod".into(),
        ingress: isolation(vec![]),
        egress: None,
    };
    let mut state = PolicyState::default();
    state.pods.insert(CLIENT, deny_all_in());
    state.pods.insert(POD, deny_all_in());
    PolicySync::default()
        .apply(&mut f.maps, &state)
        .expect("policy");
    let syn = Pkt::tcp(CLIENT, 40000, POD, 8080, SYN).build();
    assert_eq!(
        f.run_from_pod(&syn).0,
        TC_ACT_OK,
        "out of the client: its egress is open"
    );
    assert_eq!(
        f.run_to_pod_forwarded(&syn).0,
        TC_ACT_SHOT,
        "into the server: default deny"
    );
    // Through the service too: the SYN is translated to some backend.
    let (verdict, out) = f.run_from_pod(&Pkt::tcp(CLIENT, 40001, VIP, 80, SYN).build());
    assert_eq!(verdict, TC_ACT_OK);
    if parse_checked(&out).dst == POD {
        assert_eq!(
            f.run_to_pod_forwarded(&out).0,
            TC_ACT_SHOT,
            "translated SYN into the server"
        );
    }
}

/// An ICMP message (`kind`: 8 echo request, 0 echo reply, 3 unreachable)
/// with identifier `id`, or an SCTP packet's first bytes.
fn other(proto: u8, src: Ipv4Addr, dst: Ipv4Addr, l4: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00];
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(l4);
    frame
}

fn icmp(kind: u8, src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Vec<u8> {
    let mut l4 = vec![kind, 0, 0, 0];
    l4.extend_from_slice(&id.to_be_bytes());
    l4.extend_from_slice(&[0, 1]);
    l4.extend_from_slice(b"ping");
    let c = checksum(&l4);
    l4[2..4].copy_from_slice(&c.to_be_bytes());
    other(1, src, dst, &l4)
}

/// ICMP and SCTP are judged too: a ping into a pod isolated for ingress
/// needs a rule for every protocol; the pod's own pings get their replies;
/// ICMP errors (related to other flows) pass; SCTP by its ports.
#[test]
fn icmp_and_sctp_are_judged_like_flows() {
    let mut f = fixture();
    let mut state = PolicyState::default();
    let everything_from = |peer: Ipv4Addr| PeerRule {
        policy: "test/p".into(),
        peers: vec![Cidr::host(peer)],
        ports: vec![],
    };
    let sctp_from = |peer: Ipv4Addr| PeerRule {
        policy: "test/p".into(),
        peers: vec![Cidr::host(peer)],
        ports: vec![PortRange {
            protocol: 132,
            first: 9000,
            last: 9000,
        }],
    };
    state.pods.insert(
        POD,
        PodPolicy {
            pod: "test/pod".into(),
            ingress: isolation(vec![everything_from(CLIENT), sctp_from(STRANGER)]),
            egress: None,
        },
    );
    PolicySync::default()
        .apply(&mut f.maps, &state)
        .expect("policy");
    let sctp = |src: Ipv4Addr, dport: u16| {
        let mut l4 = vec![0u8; 12];
        l4[0..2].copy_from_slice(&5000u16.to_be_bytes());
        l4[2..4].copy_from_slice(&dport.to_be_bytes());
        other(132, src, POD, &l4)
    };
    // (what, packet, passes)
    let cases = [
        (
            "ping from a peer allowed everything",
            icmp(8, CLIENT, POD, 7),
            true,
        ),
        (
            "ping from a peer allowed SCTP only",
            icmp(8, STRANGER, POD, 7),
            false,
        ),
        ("ping from anyone else", icmp(8, OUTSIDE, POD, 7), false),
        ("an unsolicited echo reply", icmp(0, OUTSIDE, POD, 9), false),
        ("an ICMP error", icmp(3, OUTSIDE, POD, 0), true),
        ("SCTP to the allowed port", sctp(STRANGER, 9000), true),
        ("SCTP to another port", sctp(STRANGER, 9001), false),
    ];
    for (what, packet, passes) in cases {
        let want = if passes { TC_ACT_OK } else { TC_ACT_SHOT };
        assert_eq!(f.run_to_pod_forwarded(&packet).0, want, "{what}");
    }
    // The pod pings out (its egress is open): the reply gets in.
    assert_eq!(f.run_from_pod(&icmp(8, POD, OUTSIDE, 42)).0, TC_ACT_OK);
    assert_eq!(
        f.run_to_pod_forwarded(&icmp(0, OUTSIDE, POD, 42)).0,
        TC_ACT_OK,
        "reply to its ping"
    );
    assert_eq!(
        f.run_to_pod_forwarded(&icmp(0, OUTSIDE, POD, 43)).0,
        TC_ACT_SHOT,
        "another id"
    );
}

/// Egress isolation covers pings too: only to a peer allowed everything.
#[test]
fn an_egress_isolated_pod_pings_only_peers_allowed_every_protocol() {
    let mut f = fixture();
    let mut state = PolicyState::default();
    let rules = vec![
        PeerRule {
            policy: "test/p".into(),
            peers: vec![Cidr::host(BACKENDS[1])],
            ports: vec![],
        },
        PeerRule {
            policy: "test/p".into(),
            peers: vec![Cidr::host(BACKENDS[2])],
            ports: vec![tcp(8080)],
        },
    ];
    state.pods.insert(
        CLIENT,
        PodPolicy {
            pod: "test/client".into(),
            ingress: None,
            egress: isolation(rules),
        },
    );
    PolicySync::default()
        .apply(&mut f.maps, &state)
        .expect("policy");
    assert_eq!(
        f.run_from_pod(&icmp(8, CLIENT, BACKENDS[1], 1)).0,
        TC_ACT_OK
    );
    assert_eq!(
        f.run_from_pod(&icmp(8, CLIENT, BACKENDS[2], 1)).0,
        TC_ACT_SHOT
    );
    assert_eq!(f.run_from_pod(&icmp(8, CLIENT, OUTSIDE, 1)).0, TC_ACT_SHOT);
}

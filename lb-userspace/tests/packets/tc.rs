//! ClusterIP traffic through the pod-side tc programs: DNAT and reverse
//! NAT, checksums, fragments, rejects, hairpin, affinity and Maglev.

use std::net::Ipv4Addr;

use lb_common::{conn_kind, reason};
use lb_userspace::datapath::{
    addr::{ip_be, port_be},
    maglev,
    maps::PinnedMaps,
    sync::{MapSync, Selection},
};
use lb_userspace::model::{Algorithm, BackendAddr, Protocol};

use crate::build::*;
use crate::fixture::*;

#[test]
fn tcp_to_vip_is_dnated_with_valid_checksums_and_tracked() {
    let mut f = fixture();
    let (rc, out) = f.run_from_pod(&Pkt::tcp(CLIENT, 40000, VIP, 80, SYN).build());
    assert_eq!(rc, TC_ACT_OK);
    let p = parse_checked(&out);
    assert!(BACKENDS.contains(&p.dst), "DNATed to {}", p.dst);
    assert_eq!((p.src, p.sport, p.dport, p.proto), (CLIENT, 40000, 8080, 6));
    assert_eq!(p.payload, b"hello\n");

    // Both directions tracked.
    let entries: Vec<_> = f
        .maps
        .conntrack
        .iter()
        .collect::<Result<_, _>>()
        .expect("ct");
    assert_eq!(entries.len(), 2);
    let fwd = entries
        .iter()
        .find(|(_, e)| e.kind == conn_kind::FORWARD)
        .expect("fwd");
    assert_eq!(fwd.0.src_ip_be, ip_be(CLIENT));
    assert_eq!(fwd.1.nat_ip_be, ip_be(p.dst));
    let rev = entries
        .iter()
        .find(|(_, e)| e.kind == conn_kind::REPLY)
        .expect("reply");
    assert_eq!(
        (rev.0.src_ip_be, rev.0.src_port_be),
        (ip_be(p.dst), port_be(8080))
    );
    assert_eq!(
        (rev.1.nat_ip_be, rev.1.nat_port_be),
        (ip_be(VIP), port_be(80))
    );

    // Every later packet of the flow goes to the same backend.
    for _ in 0..30 {
        let (_, out) = f.run_from_pod(&Pkt::tcp(CLIENT, 40000, VIP, 80, ACK).build());
        assert_eq!(parse_checked(&out).dst, p.dst);
    }
    assert_eq!(f.maps.reason_count(reason::NEW_FLOW), 1);
    assert_eq!(f.maps.reason_count(reason::ESTABLISHED), 30);
}

#[test]
fn replies_are_reverse_nated_to_the_vip() {
    let mut f = fixture();
    let (_, out) = f.run_from_pod(&Pkt::tcp(CLIENT, 40001, VIP, 80, SYN).build());
    let backend = parse_checked(&out).dst;
    let (rc, out) = f.run_to_pod(&Pkt::tcp(backend, 8080, CLIENT, 40001, SYN | ACK).build());
    assert_eq!(rc, TC_ACT_OK);
    let p = parse_checked(&out);
    assert_eq!((p.src, p.sport, p.dst, p.dport), (VIP, 80, CLIENT, 40001));

    // A packet from the same backend to another client port is not ours.
    let other = Pkt::tcp(backend, 8080, CLIENT, 40999, ACK).build();
    assert_eq!(f.run_to_pod(&other), (TC_ACT_OK, other.clone()));
}

#[test]
fn udp_with_and_without_checksum() {
    let mut f = fixture();
    let (_, out) = f.run_from_pod(&Pkt::udp(CLIENT, 5353, VIP, 53).build());
    let p = parse_checked(&out);
    assert!(BACKENDS.contains(&p.dst));
    assert_ne!(p.l4_csum, 0);
    let (_, out) = f.run_to_pod(&Pkt::udp(p.dst, 8080, CLIENT, 5353).build());
    assert_eq!(parse_checked(&out).src, VIP);

    let mut zero = Pkt::udp(CLIENT, 5354, VIP, 53);
    zero.udp_zero_csum = true;
    let (_, out) = f.run_from_pod(&zero.build());
    let p = parse_checked(&out);
    assert!(BACKENDS.contains(&p.dst));
    assert_eq!(p.l4_csum, 0, "a zero UDP checksum must stay zero");
}

#[test]
fn new_flows_reach_every_backend() {
    let mut f = fixture();
    let mut seen = std::collections::BTreeSet::new();
    for port in 20000..20060 {
        let (_, out) = f.run_from_pod(&Pkt::tcp(CLIENT, port, VIP, 80, SYN).build());
        seen.insert(parse_checked(&out).dst);
    }
    assert_eq!(seen.len(), BACKENDS.len(), "{seen:?}");
}

#[test]
fn syn_after_close_is_balanced_afresh_but_retransmitted_syn_is_not() {
    let mut f = fixture();
    let (_, out) = f.run_from_pod(&Pkt::tcp(CLIENT, 41000, VIP, 80, SYN).build());
    let first = parse_checked(&out).dst;
    for _ in 0..10 {
        let (_, out) = f.run_from_pod(&Pkt::tcp(CLIENT, 41000, VIP, 80, SYN).build());
        assert_eq!(
            parse_checked(&out).dst,
            first,
            "SYN retransmit keeps its backend"
        );
    }
    f.run_from_pod(&Pkt::tcp(CLIENT, 41000, VIP, 80, FIN | ACK).build());
    let before = f.maps.reason_count(reason::NEW_FLOW);
    f.run_from_pod(&Pkt::tcp(CLIENT, 41000, VIP, 80, SYN).build());
    assert_eq!(f.maps.reason_count(reason::NEW_FLOW), before + 1);
}

#[test]
fn no_backend_is_refused_with_icmp_port_unreachable() {
    let mut f = fixture();
    // Quote length: TCP 20 + 18 bytes, UDP 20 + 8 (see reject.rs for why).
    for (original, quote) in [
        (Pkt::tcp(CLIENT, 42000, EMPTY_VIP, 80, SYN).build(), 38),
        (Pkt::udp(CLIENT, 42001, EMPTY_VIP, 53).build(), 28),
    ] {
        let (rc, out) = f.run_from_pod(&original);
        assert_eq!(rc, TC_ACT_REDIRECT, "sent back out of the interface");
        assert_eq!(out.len(), 14 + 20 + 8 + quote, "trimmed to the ICMP error");
        assert_eq!(&out[0..6], &original[6..12], "Ethernet addresses swapped");
        assert_eq!(&out[6..12], &original[0..6]);
        let ip = &out[14..34];
        assert_eq!(fold(sum16(ip)), 0xffff, "IPv4 checksum");
        assert_eq!(
            u16::from_be_bytes([ip[2], ip[3]]) as usize,
            out.len() - 14,
            "total length"
        );
        assert_eq!(ip[9], 1, "ICMP");
        assert_eq!(&ip[12..16], &EMPTY_VIP.octets(), "from the VIP");
        assert_eq!(&ip[16..20], &CLIENT.octets(), "to the client");
        let icmp = &out[34..];
        assert_eq!((icmp[0], icmp[1]), (3, 3), "destination/port unreachable");
        assert_eq!(fold(sum16(icmp)), 0xffff, "ICMP checksum");
        assert_eq!(
            &icmp[8..],
            &original[14..14 + quote],
            "quotes the original packet"
        );
    }
    assert_eq!(f.maps.reason_count(reason::NO_BACKEND_REJECTED), 2);
    assert!(f.maps.conntrack.iter().next().is_none(), "nothing tracked");
}

#[test]
fn ip_options_are_translated_at_the_right_offset() {
    let mut f = fixture();
    let mut pkt = Pkt::tcp(CLIENT, 43000, VIP, 80, SYN);
    pkt.ip_options = vec![1, 1, 1, 0]; // NOP NOP NOP EOL
    let (rc, out) = f.run_from_pod(&pkt.build());
    assert_eq!(rc, TC_ACT_OK);
    let p = parse_checked(&out);
    assert!(BACKENDS.contains(&p.dst));
    assert_eq!(p.dport, 8080);
    assert_eq!(p.payload, b"hello\n");
}

#[test]
fn non_matching_and_malformed_packets_pass_untouched() {
    let mut f = fixture();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "other destination",
            Pkt::tcp(CLIENT, 1, Ipv4Addr::new(10, 244, 1, 1), 80, SYN).build(),
        ),
        ("VIP, other port", Pkt::tcp(CLIENT, 1, VIP, 81, SYN).build()),
        ("VIP, other protocol", Pkt::udp(CLIENT, 1, VIP, 80).build()),
    ];
    let mut later = Pkt::udp(CLIENT, 2, VIP, 53);
    later.frag_off = 0x0010;
    cases.push(("later fragment, its first never seen", later.build()));
    let mut bad_ihl = Pkt::tcp(CLIENT, 3, VIP, 80, SYN).build();
    bad_ihl[14] = 0x44;
    cases.push(("IHL below 5", bad_ihl));
    let mut arp = Pkt::tcp(CLIENT, 4, VIP, 80, SYN).build();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    cases.push(("not IPv4", arp));
    let mut v6 = Pkt::tcp(CLIENT, 5, VIP, 80, SYN).build();
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    cases.push(("IPv6 ethertype", v6));
    let mut long_total = Pkt::tcp(CLIENT, 6, VIP, 80, SYN).build();
    long_total[16..18].copy_from_slice(&1500u16.to_be_bytes());
    cases.push(("IP total length beyond the packet", long_total));

    for (what, packet) in cases {
        let (rc, out) = f.run_from_pod(&packet);
        assert_eq!(rc, TC_ACT_OK, "{what}");
        assert_eq!(out, packet, "{what}: changed");
        let (rc, out) = f.run_to_pod(&packet);
        assert_eq!((rc, out), (TC_ACT_OK, packet.clone()), "{what} (to_pod)");
    }
    assert_eq!(f.maps.reason_count(reason::FRAGMENT_PASSED), 2);
    assert_eq!(f.maps.reason_count(reason::FRAGMENT_TRACKED), 0);

    // A service packet truncated at every length from a bare IPv4 header
    // (BPF_PROG_TEST_RUN refuses shorter IPv4 frames as input) to one byte
    // short of whole: never translated, never dropped.
    let full = Pkt::tcp(CLIENT, 44000, VIP, 80, SYN).build();
    for len in 14 + 20..full.len() {
        let cut = &full[..len];
        let (rc, out) = f.run_from_pod(cut);
        assert_eq!(rc, TC_ACT_OK, "truncated at {len}");
        assert_eq!(out, cut, "truncated at {len}: changed");
    }
    assert!(f.maps.conntrack.iter().next().is_none());
}

/// The upstream "large requests: udp" case, and DNS with EDNS, Kerberos or
/// SNMP answers: a UDP datagram bigger than the MTU leaves its sender as IP
/// fragments, and only the first carries the ports. Every fragment of a
/// request must reach the same backend and every fragment of the answer
/// must come back from the service address, or the receiver can never
/// reassemble the datagram.
#[test]
fn fragmented_datagrams_are_translated_whole_both_ways() {
    let mut f = fixture();
    let mut request = Pkt::udp(CLIENT, 40100, VIP, 53);
    request.payload = vec![0x5a; 2000];
    let out: Vec<Vec<u8>> = fragment(&request.build(), 1480, 0x1111)
        .iter()
        .map(|frag| {
            let (rc, out) = f.run_from_pod(frag);
            assert_eq!(rc, TC_ACT_OK);
            out
        })
        .collect();
    assert_eq!(out.len(), 2);
    let whole = parse_checked(&reassemble(&out));
    assert!(
        BACKENDS.contains(&whole.dst),
        "request went to {}",
        whole.dst
    );
    assert_eq!((whole.src, whole.sport, whole.dport), (CLIENT, 40100, 8080));
    assert_eq!(whole.payload, vec![0x5a; 2000]);

    let mut answer = Pkt::udp(whole.dst, 8080, CLIENT, 40100);
    answer.payload = vec![0xa5; 3000];
    let out: Vec<Vec<u8>> = fragment(&answer.build(), 1480, 0x2222)
        .iter()
        .map(|frag| f.run_to_pod(frag).1)
        .collect();
    assert_eq!(out.len(), 3);
    let whole = parse_checked(&reassemble(&out));
    assert_eq!(
        (whole.src, whole.sport, whole.dst, whole.dport),
        (VIP, 53, CLIENT, 40100)
    );
    assert_eq!(whole.payload, vec![0xa5; 3000]);

    // TCP fragments too (a sender that clears DF), first packet included.
    let mut syn = Pkt::tcp(CLIENT, 40200, VIP, 80, SYN);
    syn.payload = vec![7; 1600];
    let out: Vec<Vec<u8>> = fragment(&syn.build(), 1480, 0x3333)
        .iter()
        .map(|frag| f.run_from_pod(frag).1)
        .collect();
    let whole = parse_checked(&reassemble(&out));
    assert!(BACKENDS.contains(&whole.dst));
    assert_eq!((whole.sport, whole.dport), (40200, 8080));
    assert_eq!(f.maps.reason_count(reason::FRAGMENT_TRACKED), 1 + 2 + 1);

    // A later fragment of another datagram (another IP ID) whose first
    // was never seen is not guessed into the flow: it passes untouched.
    let stray = fragment(&request.build(), 1480, 0x4444).remove(1);
    assert_eq!(f.run_from_pod(&stray), (TC_ACT_OK, stray.clone()));
    assert_eq!(f.maps.reason_count(reason::FRAGMENT_PASSED), 1);
}

#[test]
fn hairpin_flows_are_snated_to_the_vip_and_bounced_back() {
    let mut f = fixture();
    let syn = Pkt::tcp(CLIENT, 45000, HAIRPIN_VIP, 80, SYN).build();
    for _ in 0..2 {
        // First packet and an established one behave the same.
        let (rc, out) = f.run_from_pod(&syn);
        assert_eq!(rc, TC_ACT_REDIRECT, "sent straight back to the pod");
        assert_eq!(&out[0..6], &syn[6..12], "Ethernet addresses swapped");
        let p = parse_checked(&out);
        assert_eq!((p.src, p.sport), (HAIRPIN_VIP, 45000), "SNATed to the VIP");
        assert_eq!((p.dst, p.dport), (CLIENT, 8080), "DNATed to itself");
    }
    // The pod's answer to VIP:45000 comes back as VIP:80 → pod:45000.
    let (rc, out) = f.run_from_pod(&Pkt::tcp(CLIENT, 8080, HAIRPIN_VIP, 45000, SYN | ACK).build());
    assert_eq!(rc, TC_ACT_REDIRECT);
    let p = parse_checked(&out);
    assert_eq!(
        (p.src, p.sport, p.dst, p.dport),
        (HAIRPIN_VIP, 80, CLIENT, 45000)
    );
    let conntrack = lb_userspace::inspect::conntrack(&f.maps).expect("inspect");
    assert_eq!(conntrack.len(), 1);
    assert!(
        conntrack[0].backend.ends_with("(hairpin)"),
        "{}",
        conntrack[0].backend
    );
}

#[test]
fn client_ip_affinity_pins_new_flows_of_a_client() {
    let mut f = fixture();
    let mut seen = std::collections::BTreeSet::new();
    for port in 30000..30040 {
        let (_, out) = f.run_from_pod(&Pkt::tcp(CLIENT, port, STICKY_VIP, 80, SYN).build());
        seen.insert(parse_checked(&out).dst);
    }
    assert_eq!(seen.len(), 1, "one client, one backend: {seen:?}");
    assert_eq!(f.maps.reason_count(reason::AFFINITY_HIT), 39);

    // The pin is what decides: move it and new flows follow.
    let (key, mut pin) = f
        .maps
        .affinity
        .iter()
        .next()
        .expect("one pin")
        .expect("read");
    assert_eq!(key.client_ip_be, ip_be(CLIENT));
    let target = BACKENDS
        .iter()
        .find(|b| !seen.contains(b))
        .copied()
        .expect("another backend");
    let target_id = f
        .maps
        .backends
        .iter()
        .filter_map(|r| r.ok())
        .find(|(_, b)| b.ip_be == ip_be(target))
        .map(|(id, _)| id)
        .expect("backend id");
    pin.backend_id = target_id;
    f.maps.affinity.insert(key, pin, 0).expect("repin");
    let (_, out) = f.run_from_pod(&Pkt::tcp(CLIENT, 31000, STICKY_VIP, 80, SYN).build());
    assert_eq!(parse_checked(&out).dst, target);

    // A pin older than the timeout is ignored and replaced.
    pin.last_used_ns = 1; // boot time: far more than 30 s ago
    f.maps.affinity.insert(key, pin, 0).expect("age pin");
    f.run_from_pod(&Pkt::tcp(CLIENT, 31001, STICKY_VIP, 80, SYN).build());
    let renewed = f.maps.affinity.get(&key, 0).expect("pin");
    assert!(
        renewed.last_used_ns > 1,
        "expired pin renewed on the next new flow"
    );
}

/// An operator who turns on Maglev with the chart's defaults (largest
/// table 16 381, the services map at its default size) and has a few
/// hundred small services: every one must be programmed. With one
/// full-size table per frontend, 64 frontends filled the map.
#[test]
fn maglev_with_the_charts_defaults_programs_hundreds_of_services() {
    const SERVICES: u8 = 250;
    let mut f = fixture_with(Selection::new(Algorithm::Maglev, 16381));
    let mut desired = desired_state(&BACKENDS);
    for i in 0..SERVICES {
        let s = service(Ipv4Addr::new(10, 97, 0, i), 80, Protocol::Tcp, &BACKENDS);
        desired.services.insert(s.frontend, s);
    }
    let mut sync = MapSync::adopt(PinnedMaps::open(&f.pin_dir).expect("open maps"))
        .expect("adopt")
        .with_selection(Selection::new(Algorithm::Maglev, 16381));
    let report = sync.apply(&desired);
    assert!(
        report.errors.is_empty(),
        "{} of {} frontends not programmed, first: {:?}",
        report.errors.len(),
        desired.services.len(),
        report.errors.first()
    );
    let (_, out) =
        f.run_from_pod(&Pkt::tcp(CLIENT, 40000, Ipv4Addr::new(10, 97, 0, 249), 80, SYN).build());
    assert!(BACKENDS.contains(&parse_checked(&out).dst));
}

#[test]
fn maglev_choice_matches_user_space_and_survives_conntrack_loss() {
    const M: usize = 251;
    let mut f = fixture_with(Selection::new(Algorithm::Maglev, M));
    let addrs = |ips: &[Ipv4Addr]| -> Vec<BackendAddr> {
        let mut v: Vec<BackendAddr> = ips
            .iter()
            .map(|ip| BackendAddr {
                ip: *ip,
                port: 8080,
                protocol: Protocol::Tcp,
            })
            .collect();
        v.sort();
        v
    };
    // What user space predicts for a flow: its hash into the table built
    // from the backend addresses (the same on every node).
    let predict = |backends: &[BackendAddr], port: u16| -> Ipv4Addr {
        let table = maglev::table(backends, M);
        let h = lb_common::flow_hash(ip_be(CLIENT), ip_be(VIP), port_be(port), port_be(80), 6);
        backends[table[h as usize % M]].ip
    };
    let all = addrs(&BACKENDS);
    let mut chosen = std::collections::BTreeMap::new();
    for port in 50000..50060 {
        let (_, out) = f.run_from_pod(&Pkt::tcp(CLIENT, port, VIP, 80, SYN).build());
        let got = parse_checked(&out).dst;
        assert_eq!(
            got,
            predict(&all, port),
            "datapath and user space disagree for port {port}"
        );
        chosen.insert(port, got);
    }
    assert_eq!(
        chosen
            .values()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3,
        "spread"
    );

    // Without conntrack (another node, or entries lost) the same flow lands
    // on the same backend.
    let keys: Vec<_> = f.maps.conntrack.keys().filter_map(|k| k.ok()).collect();
    for k in keys {
        f.maps.conntrack.remove(&k).expect("clear conntrack");
    }
    for (port, backend) in &chosen {
        let (_, out) = f.run_from_pod(&Pkt::tcp(CLIENT, *port, VIP, 80, SYN).build());
        assert_eq!(parse_checked(&out).dst, *backend);
    }

    // One backend leaves: flows on the others keep their backend, new
    // flows follow the new table.
    let removed = BACKENDS[1];
    let survivors: Vec<Ipv4Addr> = BACKENDS.iter().copied().filter(|b| *b != removed).collect();
    let mut sync = MapSync::adopt(PinnedMaps::open(&f.pin_dir).expect("maps"))
        .expect("adopt")
        .with_selection(Selection::new(Algorithm::Maglev, M));
    assert!(sync.apply(&desired_state(&survivors)).errors.is_empty());
    let keys: Vec<_> = f.maps.conntrack.keys().filter_map(|k| k.ok()).collect();
    for k in keys {
        f.maps.conntrack.remove(&k).expect("clear conntrack");
    }
    let mut moved = 0;
    for (port, before) in &chosen {
        let (_, out) = f.run_from_pod(&Pkt::tcp(CLIENT, *port, VIP, 80, SYN).build());
        let now = parse_checked(&out).dst;
        assert_eq!(now, predict(&addrs(&survivors), *port));
        if *before != removed && now != *before {
            moved += 1;
        }
    }
    assert!(
        moved <= 3,
        "{moved} of {} flows on surviving backends moved",
        chosen.len()
    );
}

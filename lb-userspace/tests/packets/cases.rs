//! The plain cases, in one table: one packet through one program, the
//! verdict it gets and what becomes of it, with a sentence saying why.
//! Stateless but for the reverse-NAT rows, which answer a flow an earlier
//! row opened (the rows run in order on one datapath; every other row has a
//! client port of its own).

use std::net::Ipv4Addr;

use lb_common::program_names::{FROM_POD, FROM_WORLD, TO_POD, XDP_WORLD};
use lb_userspace::datapath::{maps::PinnedMaps, sync::MapSync};
use lb_userspace::model::Protocol;

use crate::build::*;
use crate::fixture::*;

const XDP_PASS: u32 = 2;

/// A service whose only backend is BACKENDS[0], on TCP 80 and UDP 53, so
/// that a flow's backend, and so its reply, is known in advance.
const ONE_BACKEND_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 80);
const ONE_BACKEND: [Ipv4Addr; 1] = [BACKENDS[0]];
/// No service at all.
const ELSEWHERE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);

/// What a program does to the packet.
#[derive(Debug)]
enum Rewrite {
    /// Byte for byte what went in.
    Untouched,
    /// The destination becomes one of `to` on port `port`; source,
    /// protocol and payload are kept, every checksum is valid, and a zero
    /// UDP checksum (none computed) stays zero.
    Dnat { to: &'static [Ipv4Addr], port: u16 },
    /// The source becomes the service `from:port`; the destination, the
    /// protocol and the payload are kept, every checksum is valid.
    RevNat { from: Ipv4Addr, port: u16 },
    /// Answered with ICMP destination/port unreachable, from the address
    /// the packet was sent to, back out to its sender, quoting it.
    PortUnreachable,
}
use Rewrite::*;

fn udp_without_checksum(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    Pkt {
        udp_zero_csum: true,
        ..Pkt::udp(src, sport, dst, dport)
    }
    .build()
}

fn with_ip_options(pkt: Pkt, options: &[u8]) -> Vec<u8> {
    Pkt {
        ip_options: options.to_vec(),
        ..pkt
    }
    .build()
}

fn later_fragment(pkt: Pkt) -> Vec<u8> {
    Pkt {
        frag_off: 0x0010,
        ..pkt
    }
    .build()
}

fn with_ethertype(mut frame: Vec<u8>, ethertype: [u8; 2]) -> Vec<u8> {
    frame[12..14].copy_from_slice(&ethertype);
    frame
}

#[test]
fn plain_cases() {
    let mut f = fixture();
    let mut desired = desired_state(&BACKENDS);
    for (port, protocol) in [(80, Protocol::Tcp), (53, Protocol::Udp)] {
        let s = service(ONE_BACKEND_VIP, port, protocol, &ONE_BACKEND);
        desired.services.insert(s.frontend, s);
    }
    let mut sync = MapSync::adopt(PinnedMaps::open(&f.pin_dir).expect("maps")).expect("adopt");
    let report = sync.apply(&desired);
    assert!(report.errors.is_empty(), "{:?}", report.errors);

    #[rustfmt::skip]
    let cases: Vec<(&str, &str, Vec<u8>, u32, Rewrite)> = vec![
        // DNAT
        ("A pod's TCP SYN to a service VIP is DNATed to one of its backends, on the target port.",
            FROM_POD, Pkt::tcp(CLIENT, 47000, VIP, 80, SYN).build(),
            TC_ACT_OK, Dnat { to: &BACKENDS, port: 8080 }),
        ("A pod's UDP datagram to a service VIP is DNATed to one of its backends, its checksum updated.",
            FROM_POD, Pkt::udp(CLIENT, 47001, VIP, 53).build(),
            TC_ACT_OK, Dnat { to: &BACKENDS, port: 8080 }),
        ("A UDP datagram without a checksum (zero) is DNATed and its checksum stays zero.",
            FROM_POD, udp_without_checksum(CLIENT, 47002, VIP, 53),
            TC_ACT_OK, Dnat { to: &BACKENDS, port: 8080 }),
        ("A TCP SYN with IP options is translated at the offset its IHL gives, payload intact.",
            FROM_POD, with_ip_options(Pkt::tcp(CLIENT, 47003, VIP, 80, SYN), &[1, 1, 1, 0]),
            TC_ACT_OK, Dnat { to: &BACKENDS, port: 8080 }),
        ("A UDP datagram with IP options is translated at the offset its IHL gives, payload intact.",
            FROM_POD, with_ip_options(Pkt::udp(CLIENT, 47004, VIP, 53), &[1; 8]),
            TC_ACT_OK, Dnat { to: &BACKENDS, port: 8080 }),
        ("A TCP SYN to a one-backend service is DNATed to that backend.",
            FROM_POD, Pkt::tcp(CLIENT, 47005, ONE_BACKEND_VIP, 80, SYN).build(),
            TC_ACT_OK, Dnat { to: &ONE_BACKEND, port: 8080 }),
        ("A UDP datagram to a one-backend service is DNATed to that backend.",
            FROM_POD, Pkt::udp(CLIENT, 47006, ONE_BACKEND_VIP, 53).build(),
            TC_ACT_OK, Dnat { to: &ONE_BACKEND, port: 8080 }),
        // Reverse NAT (of the flows the two rows above opened)
        ("The backend's TCP SYN-ACK to the flow on client port 47005 is reverse-NATed to come from the VIP.",
            TO_POD, Pkt::tcp(BACKENDS[0], 8080, CLIENT, 47005, SYN | ACK).build(),
            TC_ACT_OK, RevNat { from: ONE_BACKEND_VIP, port: 80 }),
        ("The backend's UDP answer to the flow on client port 47006 is reverse-NATed to come from the VIP.",
            TO_POD, Pkt::udp(BACKENDS[0], 8080, CLIENT, 47006).build(),
            TC_ACT_OK, RevNat { from: ONE_BACKEND_VIP, port: 53 }),
        // Reject
        ("A TCP SYN to a service without endpoints is answered with ICMP port unreachable.",
            FROM_POD, Pkt::tcp(CLIENT, 47010, EMPTY_VIP, 80, SYN).build(),
            TC_ACT_REDIRECT, PortUnreachable),
        ("A UDP datagram to a service without endpoints is answered with ICMP port unreachable.",
            FROM_POD, Pkt::udp(CLIENT, 47011, EMPTY_VIP, 53).build(),
            TC_ACT_REDIRECT, PortUnreachable),
        // Pass
        ("A pod's TCP SYN to an address that is no service passes untouched.",
            FROM_POD, Pkt::tcp(CLIENT, 47020, ELSEWHERE, 443, SYN).build(),
            TC_ACT_OK, Untouched),
        ("A pod's TCP SYN straight to a backend's own address passes untouched.",
            FROM_POD, Pkt::tcp(CLIENT, 47021, BACKENDS[0], 8080, SYN).build(),
            TC_ACT_OK, Untouched),
        ("A TCP SYN to a VIP on a port it does not serve passes untouched.",
            FROM_POD, Pkt::tcp(CLIENT, 47022, VIP, 8443, SYN).build(),
            TC_ACT_OK, Untouched),
        ("A UDP datagram to a VIP's TCP-only port passes untouched.",
            FROM_POD, Pkt::udp(CLIENT, 47023, VIP, 80).build(),
            TC_ACT_OK, Untouched),
        ("A later fragment whose first fragment was never seen passes untouched.",
            FROM_POD, later_fragment(Pkt::udp(CLIENT, 47024, VIP, 53)),
            TC_ACT_OK, Untouched),
        ("A non-IPv4 frame (ARP ethertype) passes untouched, whatever its bytes say.",
            FROM_POD, with_ethertype(Pkt::tcp(CLIENT, 47025, VIP, 80, SYN).build(), [0x08, 0x06]),
            TC_ACT_OK, Untouched),
        ("A non-IPv4 frame (IPv6 ethertype) passes untouched, whatever its bytes say.",
            FROM_POD, with_ethertype(Pkt::tcp(CLIENT, 47026, VIP, 80, SYN).build(), [0x86, 0xdd]),
            TC_ACT_OK, Untouched),
        ("A backend's packet to a client port no flow of the datapath uses is not reverse-NATed.",
            TO_POD, Pkt::tcp(BACKENDS[0], 8080, CLIENT, 47027, SYN | ACK).build(),
            TC_ACT_OK, Untouched),
        ("An outside client's TCP SYN to an address that is no service passes tc untouched.",
            FROM_WORLD, Pkt::tcp(EXTERNAL_CLIENT, 47030, ELSEWHERE, 443, SYN).build(),
            TC_ACT_OK, Untouched),
        ("An outside client's TCP SYN to an address that is no service passes XDP untouched.",
            XDP_WORLD, Pkt::tcp(EXTERNAL_CLIENT, 47031, ELSEWHERE, 443, SYN).build(),
            XDP_PASS, Untouched),
        ("A non-IPv4 frame from outside passes XDP untouched.",
            XDP_WORLD, with_ethertype(Pkt::tcp(EXTERNAL_CLIENT, 47032, VIP, 80, SYN).build(), [0x08, 0x06]),
            XDP_PASS, Untouched),
    ];

    for (what, program, packet, verdict, rewrite) in cases {
        let context = format!("{what} ({program}, expected {rewrite:?})");
        let fd = f.datapath.program_fd(program).expect("program fd");
        let (got, out) = test_run(fd, &packet);
        assert_eq!(got, verdict, "verdict: {context}");
        match rewrite {
            Untouched => assert_eq!(out, packet, "changed: {context}"),
            Dnat { to, port } => {
                let before = parse_checked(&packet);
                let after = parse_checked(&out);
                assert!(to.contains(&after.dst), "to {}: {context}", after.dst);
                assert_eq!(after.dport, port, "destination port: {context}");
                assert_eq!(
                    (after.src, after.sport, after.proto, &after.payload),
                    (before.src, before.sport, before.proto, &before.payload),
                    "source, protocol or payload changed: {context}"
                );
                assert_eq!(
                    after.l4_csum == 0,
                    before.l4_csum == 0,
                    "a zero UDP checksum stays zero, another never becomes zero: {context}"
                );
            }
            RevNat { from, port } => {
                let before = parse_checked(&packet);
                let after = parse_checked(&out);
                assert_eq!((after.src, after.sport), (from, port), "source: {context}");
                assert_eq!(
                    (after.dst, after.dport, after.proto, &after.payload),
                    (before.dst, before.dport, before.proto, &before.payload),
                    "destination, protocol or payload changed: {context}"
                );
            }
            PortUnreachable => {
                assert_eq!(
                    &out[0..6],
                    &packet[6..12],
                    "Ethernet addresses swapped: {context}"
                );
                assert_eq!(
                    &out[6..12],
                    &packet[0..6],
                    "Ethernet addresses swapped: {context}"
                );
                let ip = &out[14..34];
                assert_eq!(fold(sum16(ip)), 0xffff, "IPv4 checksum: {context}");
                assert_eq!(
                    u16::from_be_bytes([ip[2], ip[3]]) as usize,
                    out.len() - 14,
                    "total length: {context}"
                );
                assert_eq!(ip[9], 1, "ICMP: {context}");
                assert_eq!(
                    &ip[12..16],
                    &packet[30..34],
                    "from the address it was sent to: {context}"
                );
                assert_eq!(&ip[16..20], &packet[26..30], "to its sender: {context}");
                let icmp = &out[34..];
                assert_eq!(
                    (icmp[0], icmp[1]),
                    (3, 3),
                    "destination/port unreachable: {context}"
                );
                assert_eq!(fold(sum16(icmp)), 0xffff, "ICMP checksum: {context}");
                assert!(
                    icmp.len() >= 8 + 28,
                    "quotes IP header and 8 bytes: {context}"
                );
                assert_eq!(
                    &icmp[8..],
                    &packet[14..14 + icmp.len() - 8],
                    "quotes the packet: {context}"
                );
            }
        }
    }
}

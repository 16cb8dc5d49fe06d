//! Fuzzing and truncation: whatever arrives, every program either leaves
//! it alone or translates a whole, valid packet into a valid one.

use std::net::Ipv4Addr;

use lb_common::program_names;

use crate::support::Rng;

use crate::build::*;
use crate::fixture::*;

/// A packet from one of the families the datapath must survive.
fn fuzz_packet(rng: &mut Rng) -> (String, Vec<u8>) {
    let dst = [
        VIP,
        EMPTY_VIP,
        STICKY_VIP,
        BACKENDS[0],
        Ipv4Addr::new(192, 0, 2, 1),
    ][rng.below(5) as usize];
    let dport = [80, 53, 8080, 22][rng.below(4) as usize];
    let sport = 1024 + rng.below(60_000) as u16;
    let mut pkt = if rng.below(2) == 0 {
        Pkt::tcp(
            CLIENT,
            sport,
            dst,
            dport,
            [SYN, ACK, FIN | ACK, 0x04][rng.below(4) as usize],
        )
    } else {
        Pkt::udp(CLIENT, sport, dst, dport)
    };
    pkt.udp_zero_csum = rng.below(4) == 0;
    pkt.payload = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
    if rng.below(4) == 0 {
        // IP options: NOPs, padded to a multiple of 4.
        pkt.ip_options = vec![1; 4 * (1 + rng.below(9) as usize)];
    }
    if rng.below(8) == 0 {
        pkt.frag_off = [0x2000, 0x0010, 0x2010][rng.below(3) as usize];
    }
    let mut frame = pkt.build();
    let family = rng.below(8);
    let name = match family {
        // Truncated at a random offset (at least an Ethernet header).
        0 => {
            let len = 14 + rng.below(frame.len() as u64 - 14) as usize;
            frame.truncate(len);
            format!("truncated to {len}")
        }
        // Random bytes flipped anywhere after the Ethernet header.
        1 => {
            for _ in 0..1 + rng.below(4) {
                let at = 14 + rng.below(frame.len() as u64 - 14) as usize;
                frame[at] ^= 1 << rng.below(8);
            }
            "bit flips".into()
        }
        // Odd IHL / TCP data offset values.
        2 => {
            frame[14] = 0x40 | rng.below(16) as u8;
            "odd IHL".into()
        }
        // IPv6 and VLAN ethertypes with the same bytes behind.
        3 => {
            let ethertype: [u8; 2] = [[0x86, 0xdd], [0x81, 0x00]][rng.below(2) as usize];
            frame[12..14].copy_from_slice(&ethertype);
            "other ethertype".into()
        }
        // ICMP with a random body.
        4 => {
            frame[23] = 1;
            "ICMP".into()
        }
        _ => "well-formed".into(),
    };
    (name, frame)
}

/// An IPv4 fragment other than the first (non-zero offset).
fn later_fragment(frame: &[u8]) -> bool {
    frame.len() >= 34 && u16::from_be_bytes([frame[20], frame[21]]) & 0x1fff != 0
}

/// Whether a frame is a whole IPv4 TCP/UDP packet with valid checksums.
fn valid_frame(frame: &[u8]) -> bool {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return false;
    }
    let ip = &frame[14..];
    let ihl = ((ip[0] & 0xf) * 4) as usize;
    let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let proto = ip[9];
    let hdr = if proto == 6 { 20 } else { 8 };
    if ip[0] >> 4 != 4
        || ihl < 20
        || tot != ip.len()
        || tot < ihl + hdr
        || (proto != 6 && proto != 17)
    {
        return false;
    }
    if fold(sum16(&ip[..ihl])) != 0xffff {
        return false;
    }
    if later_fragment(frame) {
        // No L4 header here: the datagram's checksum is in its first fragment.
        return true;
    }
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let l4 = &ip[ihl..tot];
    let csum_at = if proto == 6 { 16 } else { 6 };
    if proto == 17 && l4[csum_at] == 0 && l4[csum_at + 1] == 0 {
        return true;
    }
    let mut covered = pseudo_header(src, dst, proto, l4.len());
    covered.extend_from_slice(l4);
    fold(sum16(&covered)) == 0xffff
}

#[test]
fn fuzzed_packets_are_passed_untouched_or_translated_with_valid_checksums() {
    let mut f = fixture();
    let xdp = f
        .datapath
        .program_fd(program_names::XDP_WORLD)
        .expect("xdp fd");
    let programs = [
        (
            program_names::FROM_POD,
            f.datapath.program_fd(program_names::FROM_POD).expect("fd"),
        ),
        (
            program_names::TO_POD,
            f.datapath.program_fd(program_names::TO_POD).expect("fd"),
        ),
        (
            program_names::FROM_WORLD,
            f.datapath
                .program_fd(program_names::FROM_WORLD)
                .expect("fd"),
        ),
        (program_names::XDP_WORLD, xdp),
    ];
    let mut rng = Rng(0x5eed_f00d_cafe_0001);
    let mut translated = 0;
    for case in 0..4_000 {
        let (family, frame) = fuzz_packet(&mut rng);
        for (program, fd) in programs {
            // The kernel refuses frames shorter than an IPv4 header for skb
            // programs; those never reach a program.
            let Ok((verdict, out)) = try_test_run(fd, &frame) else {
                // The kernel itself refuses skb frames shorter than the
                // network header their ethertype announces (IPv6: 40 bytes).
                let short = match frame[12..14] {
                    [0x08, 0x00] => frame.len() < 34,
                    [0x86, 0xdd] => frame.len() < 54,
                    _ => false,
                };
                assert!(short, "case {case} ({family}) refused by {program}");
                continue;
            };
            let out = &out[..out.len().min(frame.len().max(out.len()))];
            if out == frame.as_slice() {
                continue;
            }
            // Changed: it must be a translation of a whole, valid packet,
            // with both checksums right (or an ICMP reject we built).
            let ip = &out[14..];
            let proto = ip[9];
            if proto == 1 {
                assert_eq!(
                    fold(sum16(&ip[..20])),
                    0xffff,
                    "case {case} ({family}): ICMP header"
                );
                continue;
            }
            let whole = frame.len() >= 34
                && u16::from_be_bytes([frame[16], frame[17]]) as usize + 14 == frame.len();
            assert!(
                whole,
                "case {case} ({family}): {program} rewrote a malformed frame (verdict {verdict})"
            );
            if later_fragment(&frame) {
                // Only its addresses may change: its bytes belong to a
                // datagram whose L4 header is in the first fragment.
                let ihl = ((frame[14] & 0xf) * 4) as usize;
                assert_eq!(
                    out[14 + ihl..],
                    frame[14 + ihl..],
                    "case {case} ({family}): {program} rewrote a later fragment's payload"
                );
            }
            // A valid packet stays valid; one whose checksum was already
            // wrong stays wrong (incremental updates keep the error), which
            // the receiver then drops, as without NAT.
            if valid_frame(&frame) {
                assert!(
                    valid_frame(out),
                    "case {case} ({family}): {program} broke a checksum (verdict {verdict})"
                );
                translated += 1;
            }
        }
    }
    assert!(translated > 100, "only {translated} translations exercised");
}

#[test]
fn every_truncation_of_translatable_packets_is_left_alone() {
    let mut f = fixture();
    // A flow to reverse-translate and to quote in an ICMP error.
    let (_, syn) = f.run_from_pod(&Pkt::tcp(CLIENT, 42000, VIP, 80, SYN).build());
    let backend = parse_checked(&syn).dst;
    let mut with_options = Pkt::udp(CLIENT, 42001, VIP, 53);
    with_options.ip_options = vec![1; 8];
    let packets: Vec<(&str, Vec<u8>)> = vec![
        (
            "TCP SYN to the VIP",
            Pkt::tcp(CLIENT, 42002, VIP, 80, SYN).build(),
        ),
        ("UDP to the VIP", Pkt::udp(CLIENT, 42003, VIP, 53).build()),
        ("UDP with IP options", with_options.build()),
        (
            "reply from the backend",
            Pkt::tcp(backend, 8080, CLIENT, 42000, SYN | ACK).build(),
        ),
        (
            "ICMP error quoting the DNATed flow",
            icmp_error(
                Ipv4Addr::new(10, 244, 0, 1),
                CLIENT,
                3,
                4,
                &syn[14..syn.len()],
            ),
        ),
    ];
    let programs = [
        program_names::FROM_POD,
        program_names::TO_POD,
        program_names::FROM_WORLD,
        program_names::XDP_WORLD,
    ];
    let mut runs = 0;
    for (what, whole) in &packets {
        for len in 14..whole.len() {
            let cut = &whole[..len];
            for program in programs {
                let fd = f.datapath.program_fd(program).expect("program fd");
                let Ok((verdict, out)) = try_test_run(fd, cut) else {
                    // The kernel refuses skb frames shorter than an IPv4
                    // header; no program ever sees those.
                    assert!(len < 34, "{what} cut to {len} refused by {program}");
                    continue;
                };
                runs += 1;
                assert_eq!(
                    &out[..len.min(out.len())],
                    cut,
                    "{what} cut to {len} bytes was rewritten by {program} (verdict {verdict})"
                );
            }
        }
    }
    assert!(runs > 500, "only {runs} runs");
}

//! Packet-level tests of the datapath: crafted packets through the real BPF
//! programs with BPF_PROG_TEST_RUN, maps filled by the real map-sync code,
//! output bytes and checksums verified independently. Needs root.

mod support;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use support::Rng;

use lb_common::{conn_kind, program_names, reason};
use lb_userspace::datapath::{
    addr::{ip_be, port_be},
    loader::{self, Datapath},
    maglev,
    maps::PinnedMaps,
    sync::{MapSync, Selection},
};
use lb_userspace::model::{
    BackendAddr, DesiredState, Endpoint, Frontend, Protocol, ServicePort, ServicePortName,
    ServiceType,
};

const TC_ACT_OK: u32 = 0;
const TC_ACT_REDIRECT: u32 = 7;
const TC_ACT_SHOT: u32 = 2;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 99);
/// A TCP service with ClientIP affinity over BACKENDS.
const STICKY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
/// A service whose only backend is CLIENT itself.
const HAIRPIN_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 244, 1, 1),
    Ipv4Addr::new(10, 244, 1, 2),
    Ipv4Addr::new(10, 244, 1, 3),
];

// ---- the datapath under test ----------------------------------------------

struct Fixture {
    datapath: Datapath,
    maps: PinnedMaps,
    pin_dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = loader::cleanup(&self.pin_dir);
    }
}

fn object() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/switchyard.bpf.o");
    loader::find_object(p.is_file().then_some(p.as_path()))
        .expect("BPF object: run `cargo xtask build` first")
}

fn service(vip: Ipv4Addr, port: u16, protocol: Protocol, backends: &[Ipv4Addr]) -> ServicePort {
    ServicePort {
        name: ServicePortName {
            namespace: "test".into(),
            name: format!("svc-{vip}-{port}"),
            port_name: String::new(),
        },
        frontend: Frontend::new(vip, port, protocol),
        service_type: ServiceType::ClusterIP,
        affinity: None,
        internal_traffic_local: false,
        external: Default::default(),
        endpoints: backends
            .iter()
            .map(|ip| Endpoint {
                addr: BackendAddr {
                    ip: *ip,
                    port: 8080,
                    protocol,
                },
                ready: true,
                serving: true,
                terminating: false,
                node: None,
                hints: None,
            })
            .collect(),
    }
}

fn fixture() -> Fixture {
    fixture_with(Selection::Random)
}

fn desired_state(backends: &[Ipv4Addr]) -> DesiredState {
    let mut desired = DesiredState::default();
    for s in [
        service(VIP, 80, Protocol::Tcp, backends),
        service(VIP, 53, Protocol::Udp, backends),
        service(EMPTY_VIP, 80, Protocol::Tcp, &[]),
        service(EMPTY_VIP, 53, Protocol::Udp, &[]),
        service(HAIRPIN_VIP, 80, Protocol::Tcp, &[CLIENT]),
        ServicePort {
            affinity: Some(std::time::Duration::from_secs(30)),
            ..service(STICKY_VIP, 80, Protocol::Tcp, backends)
        },
    ] {
        desired.services.insert(s.frontend, s);
    }
    desired
}

fn fixture_with(selection: Selection) -> Fixture {
    static N: AtomicU32 = AtomicU32::new(0);
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/sy-pkt-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let datapath = Datapath::load(
        &object(),
        &pin_dir,
        loader::XdpChoice::Off,
        &Default::default(),
    )
    .expect("load datapath");
    let desired = desired_state(&BACKENDS);
    let mut sync = MapSync::adopt(PinnedMaps::open(&pin_dir).expect("open maps"))
        .expect("adopt")
        .with_selection(selection);
    let report = sync.apply(&desired);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    Fixture {
        datapath,
        maps: PinnedMaps::open(&pin_dir).expect("open maps"),
        pin_dir,
    }
}

/// BPF_PROG_TEST_RUN: returns (program return value, output packet).
fn test_run(prog_fd: RawFd, packet: &[u8]) -> (u32, Vec<u8>) {
    try_test_run(prog_fd, packet)
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {} bytes: {e}", packet.len()))
}

fn try_test_run(prog_fd: RawFd, packet: &[u8]) -> std::io::Result<(u32, Vec<u8>)> {
    #[repr(C)]
    #[derive(Default)]
    struct TestRunAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: [u32; 5],
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut out = vec![0u8; packet.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    out.truncate(attr.data_size_out as usize);
    Ok((attr.retval, out))
}

impl Fixture {
    fn run_from_pod(&mut self, packet: &[u8]) -> (u32, Vec<u8>) {
        let fd = self
            .datapath
            .program_fd(program_names::FROM_POD)
            .expect("fd");
        test_run(fd, packet)
    }
    fn run_to_pod(&mut self, packet: &[u8]) -> (u32, Vec<u8>) {
        let fd = self.datapath.program_fd(program_names::TO_POD).expect("fd");
        test_run(fd, packet)
    }
}

// ---- packets, built and checked independently of the datapath ----------------

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn checksum(bytes: &[u8]) -> u16 {
    !fold(sum16(bytes))
}

fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p
}

struct Pkt {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    proto: u8,
    tcp_flags: u8,
    seq: u32,
    ip_options: Vec<u8>,
    frag_off: u16,
    udp_zero_csum: bool,
    payload: Vec<u8>,
}

impl Pkt {
    fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Self {
        Self {
            src,
            dst,
            sport,
            dport,
            proto: 6,
            tcp_flags: flags,
            seq: 0x1234_5678,
            ip_options: vec![],
            frag_off: 0,
            udp_zero_csum: false,
            payload: b"hello\n".to_vec(),
        }
    }
    fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Self {
        Self {
            proto: 17,
            tcp_flags: 0,
            ..Self::tcp(src, sport, dst, dport, 0)
        }
    }

    fn build(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.sport.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        if self.proto == 6 {
            l4.extend_from_slice(&self.seq.to_be_bytes());
            l4.extend_from_slice(&0u32.to_be_bytes()); // ack
            l4.extend_from_slice(&[0x50, self.tcp_flags]);
            l4.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, csum, urg
        } else {
            l4.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
            l4.extend_from_slice(&[0, 0]);
        }
        l4.extend_from_slice(&self.payload);
        let csum_at = if self.proto == 6 { 16 } else { 6 };
        if !(self.proto == 17 && self.udp_zero_csum) {
            let mut covered = pseudo_header(self.src, self.dst, self.proto, l4.len());
            covered.extend_from_slice(&l4);
            let mut c = checksum(&covered);
            if self.proto == 17 && c == 0 {
                c = 0xffff;
            }
            l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        }
        let ihl = 20 + self.ip_options.len();
        assert_eq!(ihl % 4, 0);
        let mut ip = vec![0x40 | (ihl / 4) as u8, 0];
        ip.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&[0xab, 0xcd]);
        ip.extend_from_slice(&self.frag_off.to_be_bytes());
        ip.extend_from_slice(&[64, self.proto, 0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(&self.ip_options);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let mut frame = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00];
        frame.extend_from_slice(&ip);
        frame.extend_from_slice(&l4);
        frame
    }
}

/// What a packet says, read back with all checksums verified.
#[derive(Debug)]
struct Parsed {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    proto: u8,
    l4_csum: u16,
    payload: Vec<u8>,
}

fn parse_checked(frame: &[u8]) -> Parsed {
    let ip = &frame[14..];
    let ihl = ((ip[0] & 0xf) * 4) as usize;
    assert_eq!(
        fold(sum16(&ip[..ihl])),
        0xffff,
        "IPv4 header checksum invalid"
    );
    let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let proto = ip[9];
    let l4 = &ip[ihl..tot];
    let csum_at = if proto == 6 { 16 } else { 6 };
    let l4_csum = u16::from_be_bytes([l4[csum_at], l4[csum_at + 1]]);
    if !(proto == 17 && l4_csum == 0) {
        let mut covered = pseudo_header(src, dst, proto, l4.len());
        covered.extend_from_slice(l4);
        assert_eq!(fold(sum16(&covered)), 0xffff, "L4 checksum invalid");
    }
    let hdr = if proto == 6 { 20 } else { 8 };
    Parsed {
        src,
        dst,
        sport: u16::from_be_bytes([l4[0], l4[1]]),
        dport: u16::from_be_bytes([l4[2], l4[3]]),
        proto,
        l4_csum,
        payload: l4[hdr..].to_vec(),
    }
}

/// Splits a whole frame (no IP options) into IPv4 fragments of `chunk`
/// payload bytes (a multiple of 8) with IP ID `id`, as the sending kernel
/// does for a datagram bigger than the MTU: only the first carries the L4
/// header, whose checksum covers the whole datagram.
fn fragment(frame: &[u8], chunk: usize, id: u16) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0);
    let (eth, ip) = frame.split_at(14);
    let payload = &ip[20..];
    let mut out = Vec::new();
    for (i, piece) in payload.chunks(chunk).enumerate() {
        let offset = i * chunk;
        let more = offset + piece.len() < payload.len();
        let mut hdr = ip[..20].to_vec();
        hdr[2..4].copy_from_slice(&((20 + piece.len()) as u16).to_be_bytes());
        hdr[4..6].copy_from_slice(&id.to_be_bytes());
        let frag = (offset / 8) as u16 | if more { 0x2000 } else { 0 };
        hdr[6..8].copy_from_slice(&frag.to_be_bytes());
        hdr[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(&hdr);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        let mut f = eth.to_vec();
        f.extend_from_slice(&hdr);
        f.extend_from_slice(piece);
        out.push(f);
    }
    out
}

/// Reassembles fragments as the receiving kernel would (each with a valid
/// header checksum, all of one datagram) into one whole frame.
fn reassemble(fragments: &[Vec<u8>]) -> Vec<u8> {
    let mut payload = Vec::new();
    let first = &fragments[0][14..34];
    for f in fragments {
        let ip = &f[14..34];
        assert_eq!(fold(sum16(ip)), 0xffff, "fragment header checksum invalid");
        assert_eq!(
            (&ip[4..6], ip[9], &ip[12..20]),
            (&first[4..6], first[9], &first[12..20]),
            "fragments of one datagram must keep one ID, protocol and address pair"
        );
        let offset = (u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff) as usize * 8;
        assert_eq!(
            offset,
            payload.len(),
            "fragments out of order or overlapping"
        );
        let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
        payload.extend_from_slice(&f[34..14 + tot]);
    }
    let mut hdr = first.to_vec();
    hdr[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    hdr[6..8].copy_from_slice(&[0, 0]);
    hdr[10..12].copy_from_slice(&[0, 0]);
    let c = checksum(&hdr);
    hdr[10..12].copy_from_slice(&c.to_be_bytes());
    let mut whole = fragments[0][..14].to_vec();
    whole.extend_from_slice(&hdr);
    whole.extend_from_slice(&payload);
    whole
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;

// ---- tests -----------------------------------------------------------------

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
    let mut f = fixture_with(Selection::Maglev { table_size: 16381 });
    let mut desired = desired_state(&BACKENDS);
    for i in 0..SERVICES {
        let s = service(Ipv4Addr::new(10, 97, 0, i), 80, Protocol::Tcp, &BACKENDS);
        desired.services.insert(s.frontend, s);
    }
    let mut sync = MapSync::adopt(PinnedMaps::open(&f.pin_dir).expect("open maps"))
        .expect("adopt")
        .with_selection(Selection::Maglev { table_size: 16381 });
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
    let mut f = fixture_with(Selection::Maglev { table_size: M });
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
        .with_selection(Selection::Maglev { table_size: M });
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

/// This node's address in the node-port tests, and a client outside.
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
const EXTERNAL_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 100);

/// Node port 30080 (VIP:80's, externalTrafficPolicy Local) with one
/// backend on this node (BACKENDS[0]) and two elsewhere; node port 30081
/// (VIP:81) with remote backends only. This node is "here" at `node_ip`.
fn program_node_ports(f: &Fixture, node_ip: Ipv4Addr) {
    let mut desired = desired_state(&BACKENDS);
    let mut remote_only = service(VIP, 81, Protocol::Tcp, &BACKENDS[1..]);
    remote_only.external.node_port = Some(30081);
    desired.services.insert(remote_only.frontend, remote_only);
    for sp in desired.services.values_mut() {
        if sp.frontend == (Frontend::new(VIP, 80, Protocol::Tcp)) {
            sp.external.node_port = Some(30080);
            sp.external.traffic_local = true;
        }
        for e in &mut sp.endpoints {
            e.node = Some(
                if e.addr.ip == BACKENDS[0] {
                    "here"
                } else {
                    "elsewhere"
                }
                .into(),
            );
        }
    }
    let mut sync = MapSync::adopt(PinnedMaps::open(&f.pin_dir).expect("maps"))
        .expect("adopt")
        .with_node(Some("here".into()))
        .with_node_ips(vec![node_ip]);
    assert!(sync.apply(&desired).errors.is_empty());
}

#[test]
fn xdp_translates_local_flows_and_records_snat_flows_it_cannot_send() {
    let (node_ip, client) = (NODE_IP, EXTERNAL_CLIENT);
    let mut f = fixture();
    program_node_ports(&f, node_ip);
    f.maps
        .nat_config
        .set(
            0,
            lb_common::NatConfig {
                snat_ip_be: ip_be(node_ip),
                port_min: 61000,
                port_max: 61999,
                flags: lb_common::nat_flags::XDP_SNAT,
            },
            0,
        )
        .expect("nat_config");
    let fd = f
        .datapath
        .program_fd(program_names::XDP_WORLD)
        .expect("xdp fd");
    const XDP_PASS: u32 = 2;

    // Policy Local: only the local backend; DNATed with valid checksums,
    // the client address kept, and tracked so later packets follow.
    for flags in [SYN, ACK, ACK] {
        let (rc, out) = test_run(fd, &Pkt::tcp(client, 34010, node_ip, 30080, flags).build());
        assert_eq!(rc, XDP_PASS);
        let p = parse_checked(&out);
        assert_eq!((p.src, p.dst, p.dport), (client, BACKENDS[0], 8080));
    }
    assert_eq!(f.maps.reason_count(reason::NEW_FLOW), 1);
    assert_eq!(f.maps.reason_count(reason::ESTABLISHED), 2);
    assert_eq!(f.maps.reason_count(reason::XDP_TRANSLATED), 3);

    // Remote backends only: XDP picks the backend and a SNAT port and
    // records both directions; with no route to the backend from this test
    // namespace it cannot send the frame itself, so it passes it untouched
    // and tc, finding the entry, forwards it the same way.
    let syn = Pkt::tcp(client, 34011, node_ip, 30081, SYN).build();
    assert_eq!(test_run(fd, &syn), (XDP_PASS, syn.clone()));
    assert_eq!(f.maps.reason_count(reason::NEW_FLOW), 2);
    let entries: Vec<(lb_common::FlowKey, lb_common::ConnEntry)> =
        f.maps.conntrack.iter().filter_map(Result::ok).collect();
    let forward = entries
        .iter()
        .find(|(k, _)| k.src_port_be == port_be(34011))
        .map(|(_, e)| *e)
        .expect("the SNAT flow is tracked");
    assert_eq!(forward.kind, conn_kind::FORWARD_SNAT);
    assert!(BACKENDS[1..].iter().any(|b| ip_be(*b) == forward.nat_ip_be));
    assert_eq!(forward.second_ip_be, ip_be(node_ip));
    let snat_port = u16::from_be(forward.second_port_be);
    assert!((61000..=61999).contains(&snat_port), "{snat_port}");
    assert!(
        entries.iter().any(
            |(k, e)| e.kind == conn_kind::REPLY_SNAT && k.dst_port_be == forward.second_port_be
        ),
        "the reply direction is tracked"
    );
    // Not a service: untouched.
    let other = Pkt::tcp(client, 34012, node_ip, 22, SYN).build();
    assert_eq!(test_run(fd, &other), (XDP_PASS, other.clone()));
}

// ---- fuzzing -----------------------------------------------------------------

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

/// Whether a frame is a whole IPv4 TCP/UDP packet with valid checksums.
/// An IPv4 fragment other than the first (non-zero offset).
fn later_fragment(frame: &[u8]) -> bool {
    frame.len() >= 34 && u16::from_be_bytes([frame[20], frame[21]]) & 0x1fff != 0
}

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

/// Ethernet + IPv4 + ICMP `kind`/`code` from `from` to `to`, quoting `quoted`.
fn icmp_error(from: Ipv4Addr, to: Ipv4Addr, kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut icmp = vec![kind, code, 0, 0, 0, 0, 0x05, 0x78]; // next-hop MTU 1400
    icmp.extend_from_slice(quoted);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&from.octets());
    ip.extend_from_slice(&to.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00];
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&icmp);
    frame
}

/// Checks what became of ICMP error `error` (built by [`icmp_error`]): the
/// outer headers untouched, the ICMP and quoted IP header checksums valid.
/// Returns the quoted (source, destination, source port, destination port).
fn quoted_flow(error: &[u8], out: &[u8]) -> (Ipv4Addr, Ipv4Addr, u16, u16) {
    let out = &out[..error.len()];
    assert_eq!(out[..34], error[..34], "outer headers");
    let icmp = &out[34..];
    assert_eq!(fold(sum16(icmp)), 0xffff, "ICMP checksum");
    let inner = &icmp[8..];
    assert_eq!(
        fold(sum16(&inner[..20])),
        0xffff,
        "quoted IP header checksum"
    );
    (
        Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]),
        Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]),
        u16::from_be_bytes([inner[20], inner[21]]),
        u16::from_be_bytes([inner[22], inner[23]]),
    )
}

#[test]
fn icmp_errors_quoting_a_dnated_flow_get_the_service_address_back() {
    let mut f = fixture();
    let router = Ipv4Addr::new(10, 244, 0, 1);
    // A flow client → VIP:80, DNATed on its way out of the pod.
    let (_, syn) = f.run_from_pod(&Pkt::tcp(CLIENT, 41000, VIP, 80, SYN).build());
    let translated = parse_checked(&syn);
    assert!(BACKENDS.contains(&translated.dst));
    // A router answers the translated packet with "fragmentation needed",
    // quoting its IP header and first 8 bytes, as RFC 792 asks.
    for (kind, code, quote_len) in [(3, 4, 28), (11, 0, 28), (3, 4, syn.len() - 14)] {
        let error = icmp_error(router, CLIENT, kind, code, &syn[14..14 + quote_len]);
        let (verdict, out) = f.run_to_pod(&error);
        assert_eq!(verdict, TC_ACT_OK);
        // Outer header untouched; the quote now says client → VIP:80.
        assert_eq!(quoted_flow(&error, &out), (CLIENT, VIP, 41000, 80));
    }
    assert_eq!(f.maps.reason_count(reason::ICMP_ERROR_TRANSLATED), 3);
    // An error about a flow the datapath never translated: untouched.
    let other = Pkt::tcp(CLIENT, 41001, Ipv4Addr::new(192, 0, 2, 7), 443, SYN).build();
    let error = icmp_error(router, CLIENT, 3, 4, &other[14..42]);
    assert_eq!(f.run_to_pod(&error).1[..error.len()], error[..]);
}

#[test]
fn icmp_errors_about_an_external_clients_node_port_flow_get_the_node_port_back() {
    let (node_ip, client) = (NODE_IP, EXTERNAL_CLIENT);
    let mut f = fixture();
    program_node_ports(&f, node_ip);
    let mut run = |program: &str, packet: &[u8]| {
        test_run(f.datapath.program_fd(program).expect("fd"), packet)
    };
    // A segment to the node port, DNATed to the local backend…
    let (_, segment) = run(
        program_names::FROM_WORLD,
        &Pkt::tcp(client, 41500, node_ip, 30080, SYN).build(),
    );
    let translated = parse_checked(&segment);
    assert_eq!((translated.dst, translated.dport), (BACKENDS[0], 8080));
    // …too big for the link to the pod: this node answers "fragmentation
    // needed" on its way out to the client. The quote must name the node
    // port the client used, or path-MTU discovery never hears of it.
    let error = icmp_error(node_ip, client, 3, 4, &segment[14..42]);
    let (verdict, out) = run(program_names::TO_WORLD, &error);
    assert_eq!(verdict, TC_ACT_OK);
    assert_eq!(quoted_flow(&error, &out), (client, node_ip, 41500, 30080));
    assert_eq!(f.maps.reason_count(reason::ICMP_ERROR_TRANSLATED), 1);
}

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

#[test]
fn xdp_and_tc_draw_once_per_flow_so_node_ports_balance_evenly() {
    let node_ip = Ipv4Addr::new(10, 10, 0, 1);
    let client = Ipv4Addr::new(10, 10, 0, 100);
    let mut f = fixture();
    // Node port 30090: one backend on this node, two elsewhere.
    let mut desired = desired_state(&BACKENDS);
    let mut mixed = service(Ipv4Addr::new(10, 96, 0, 50), 80, Protocol::Tcp, &BACKENDS);
    mixed.external.node_port = Some(30090);
    for e in &mut mixed.endpoints {
        e.node = Some(
            if e.addr.ip == BACKENDS[0] {
                "here"
            } else {
                "elsewhere"
            }
            .into(),
        );
    }
    desired.services.insert(mixed.frontend, mixed);
    let mut sync = MapSync::adopt(PinnedMaps::open(&f.pin_dir).expect("maps"))
        .expect("adopt")
        .with_node(Some("here".into()))
        .with_node_ips(vec![node_ip]);
    assert!(sync.apply(&desired).errors.is_empty());
    f.maps
        .nat_config
        .set(
            0,
            lb_common::NatConfig {
                snat_ip_be: ip_be(node_ip),
                port_min: 40000,
                port_max: 60000,
                flags: 0,
            },
            0,
        )
        .expect("nat_config");
    let xdp = f.datapath.program_fd(program_names::XDP_WORLD).expect("fd");
    let tc = f
        .datapath
        .program_fd(program_names::FROM_WORLD)
        .expect("fd");
    const FLOWS: u16 = 3000;
    for i in 0..FLOWS {
        let syn = Pkt::tcp(client, 10_000 + i, node_ip, 30090, SYN).build();
        let (_, out) = test_run(xdp, &syn);
        if out[..syn.len()] == syn[..] {
            // Passed on untouched: tc takes it from here, with the choice
            // XDP recorded (the FIB lookup fails in this namespace; the
            // entry is what matters).
            let _ = test_run(tc, &syn);
        }
    }
    let mut chosen = std::collections::BTreeMap::<Ipv4Addr, u32>::new();
    for (key, entry) in f.maps.conntrack.iter().filter_map(Result::ok) {
        if key.dst_port_be == port_be(30090) && conn_kind::is_forward(entry.kind) {
            *chosen
                .entry(lb_userspace::datapath::addr::ip_from_be(entry.nat_ip_be))
                .or_default() += 1;
        }
    }
    assert_eq!(chosen.values().sum::<u32>(), u32::from(FLOWS), "{chosen:?}");
    for b in BACKENDS {
        let n = chosen.get(&b).copied().unwrap_or(0);
        // 1000 expected each; ±150 is > 5 standard deviations.
        assert!(
            (850..=1150).contains(&n),
            "{b}: {n} of {FLOWS} flows: {chosen:?}"
        );
    }
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

// ---- differential: a reference model of Service semantics ------------------

/// An endpoint as a generated EndpointSlice states it (conditions may be
/// left out, as the API allows).
#[derive(Clone, Debug)]
struct GenEndpoint {
    ip: Ipv4Addr,
    node: &'static str,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
}

#[derive(Clone, Debug)]
struct GenService {
    vip: Ipv4Addr,
    /// (port, protocol, target port)
    ports: Vec<(u16, Protocol, u16)>,
    internal_local: bool,
    endpoints: Vec<GenEndpoint>,
}

#[derive(Debug, PartialEq)]
enum Expect {
    Untouched,
    /// To one of these (address, target port), every one of them reachable.
    Dnat(std::collections::BTreeSet<(Ipv4Addr, u16)>),
    /// ICMP port unreachable (no endpoints at all).
    Reject,
    /// Dropped silently (internalTrafficPolicy Local, none on this node).
    Drop,
}

/// Written from the Kubernetes Service documentation, not from the agent:
/// a pod on node `n1` sending to `dst:dport/proto`.
fn reference(services: &[GenService], dst: Ipv4Addr, dport: u16, proto: Protocol) -> Expect {
    let Some((svc, target)) = services.iter().find_map(|s| {
        s.ports
            .iter()
            .find(|(p, pr, _)| s.vip == dst && *p == dport && *pr == proto)
            .map(|(_, _, t)| (s, *t))
    }) else {
        return Expect::Untouched;
    };
    let candidates: Vec<&GenEndpoint> = svc
        .endpoints
        .iter()
        .filter(|e| !svc.internal_local || e.node == "n1")
        .collect();
    let ready = |e: &GenEndpoint| e.ready.unwrap_or(true);
    let mut chosen: std::collections::BTreeSet<(Ipv4Addr, u16)> = candidates
        .iter()
        .filter(|e| ready(e))
        .map(|e| (e.ip, target))
        .collect();
    if chosen.is_empty() {
        // Nothing ready: endpoints still serving while terminating take the
        // traffic rather than dropping it.
        chosen = candidates
            .iter()
            .filter(|e| e.serving.unwrap_or(ready(e)) && e.terminating.unwrap_or(false))
            .map(|e| (e.ip, target))
            .collect();
    }
    // None to use here: dropped if the service has usable endpoints
    // elsewhere (a node-local policy), refused if it has none at all.
    let usable_anywhere = svc
        .endpoints
        .iter()
        .any(|e| ready(e) || (e.serving.unwrap_or(ready(e)) && e.terminating.unwrap_or(false)));
    match (chosen.is_empty(), usable_anywhere) {
        (false, _) => Expect::Dnat(chosen),
        (true, true) => Expect::Drop,
        (true, false) => Expect::Reject,
    }
}

fn generate(rng: &mut Rng, set: usize) -> Vec<GenService> {
    let maybe = |rng: &mut Rng| match rng.below(3) {
        0 => None,
        1 => Some(false),
        _ => Some(true),
    };
    (0..1 + rng.below(6) as usize)
        .map(|i| {
            let mut ports: Vec<(u16, Protocol, u16)> = Vec::new();
            for _ in 0..1 + rng.below(2) {
                let port = [80, 53, 443, 8443][rng.below(4) as usize];
                let proto = if rng.below(2) == 0 {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                };
                if !ports.iter().any(|(p, pr, _)| *p == port && *pr == proto) {
                    ports.push((port, proto, 8000 + rng.below(100) as u16));
                }
            }
            GenService {
                vip: Ipv4Addr::new(10, 96, 7 + (set % 100) as u8, 1 + i as u8),
                ports,
                internal_local: rng.below(3) == 0,
                endpoints: (0..rng.below(5))
                    .map(|_| GenEndpoint {
                        ip: Ipv4Addr::new(
                            10,
                            244,
                            1 + rng.below(2) as u8,
                            2 + rng.below(200) as u8,
                        ),
                        node: ["n1", "n2"][rng.below(2) as usize],
                        ready: maybe(rng),
                        serving: maybe(rng),
                        terminating: maybe(rng),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The generated services as the API would hold them, through the agent's
/// own translation (so it is under test too).
fn translated(services: &[GenService]) -> DesiredState {
    use lb_userspace::source::{ClusterObjects, Sourced};
    let mut objects = ClusterObjects::default();
    for (i, s) in services.iter().enumerate() {
        let proto = |p: Protocol| if p == Protocol::Tcp { "TCP" } else { "UDP" };
        let service = serde_json::json!({
            "metadata": {"name": format!("s{i}"), "namespace": "diff"},
            "spec": {
                "clusterIP": s.vip.to_string(),
                "internalTrafficPolicy": if s.internal_local { "Local" } else { "Cluster" },
                "ports": s.ports.iter().enumerate().map(|(j, (p, pr, t))| serde_json::json!({
                    "name": format!("p{j}"), "port": p, "protocol": proto(*pr), "targetPort": t
                })).collect::<Vec<_>>()
            }
        });
        let conditions = |e: &GenEndpoint| {
            let mut c = serde_json::Map::new();
            for (k, v) in [
                ("ready", e.ready),
                ("serving", e.serving),
                ("terminating", e.terminating),
            ] {
                if let Some(v) = v {
                    c.insert(k.into(), v.into());
                }
            }
            serde_json::Value::Object(c)
        };
        let slice = serde_json::json!({
            "metadata": {
                "name": format!("s{i}-1"), "namespace": "diff",
                "labels": {"kubernetes.io/service-name": format!("s{i}")}
            },
            "addressType": "IPv4",
            "ports": s.ports.iter().enumerate().map(|(j, (_, pr, t))| serde_json::json!({
                "name": format!("p{j}"), "port": t, "protocol": proto(*pr)
            })).collect::<Vec<_>>(),
            "endpoints": s.endpoints.iter().map(|e| serde_json::json!({
                "addresses": [e.ip.to_string()],
                "nodeName": e.node,
                "conditions": conditions(e),
            })).collect::<Vec<_>>()
        });
        objects.services.push(Sourced {
            origin: "generated".into(),
            object: serde_json::from_value(service).expect("service"),
        });
        objects.slices.push(Sourced {
            origin: "generated".into(),
            object: serde_json::from_value(slice).expect("slice"),
        });
    }
    let t = lb_userspace::source::translate::translate(&objects);
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    t.desired
}

#[test]
fn datapath_agrees_with_a_reference_model_on_generated_service_sets() {
    let mut f = fixture();
    let mut sync = MapSync::adopt(PinnedMaps::open(&f.pin_dir).expect("open maps"))
        .expect("adopt")
        .with_node(Some("n1".into()));
    let from_pod = f.datapath.program_fd(program_names::FROM_POD).expect("fd");
    let mut rng = Rng(0xd1ff_e7e7_0000_0001);
    let (mut dnat, mut rejected, mut dropped, mut untouched) = (0, 0, 0, 0);
    let mut limited_seen = 0;
    for set in 0..60 {
        let services = generate(&mut rng, set);
        let report = sync.apply(&translated(&services));
        assert!(report.errors.is_empty(), "set {set}: {:?}", report.errors);
        // Every frontend, a port the VIP does not serve, and an address
        // that is no service at all.
        let mut probes: Vec<(Ipv4Addr, u16, Protocol)> = services
            .iter()
            .flat_map(|s| s.ports.iter().map(|(p, pr, _)| (s.vip, *p, *pr)))
            .collect();
        probes.push((services[0].vip, 9999, Protocol::Tcp));
        probes.push((Ipv4Addr::new(192, 0, 2, 9), 80, Protocol::Udp));
        for (probe, (dst, dport, proto)) in probes.into_iter().enumerate() {
            let expect = reference(&services, dst, dport, proto);
            let mut reached = std::collections::BTreeSet::new();
            for k in 0..24u16 {
                // Source ports unique across sets: no flow is established.
                let sport = 20_000 + (set as u16 % 100) * 400 + probe as u16 * 24 + k;
                let packet = match proto {
                    Protocol::Tcp => Pkt::tcp(CLIENT, sport, dst, dport, SYN),
                    Protocol::Udp => Pkt::udp(CLIENT, sport, dst, dport),
                }
                .build();
                let (verdict, out) = test_run(from_pod, &packet);
                let context = format!(
                    "set {set}, {dst}:{dport}/{proto:?}, expected {expect:?}, services {services:#?}"
                );
                match &expect {
                    Expect::Untouched => {
                        assert_eq!(
                            (verdict, &out[..packet.len()]),
                            (TC_ACT_OK, &packet[..]),
                            "{context}"
                        );
                        untouched += 1;
                    }
                    Expect::Drop => {
                        assert_eq!(verdict, 2, "TC_ACT_SHOT: {context}");
                        dropped += 1;
                    }
                    // Rejects are rate-limited (burst 50): past the burst a
                    // refusal may be a counted drop, as with the kernel's
                    // own ICMP rate limit under kube-proxy.
                    Expect::Reject
                        if verdict == 2
                            && f.maps.reason_count(reason::REJECT_RATE_LIMITED) > limited_seen =>
                    {
                        limited_seen = f.maps.reason_count(reason::REJECT_RATE_LIMITED);
                        rejected += 1;
                    }
                    Expect::Reject => {
                        assert_eq!(verdict, TC_ACT_REDIRECT, "{context}");
                        assert_eq!(
                            (out[23], out[34], out[35]),
                            (1, 3, 3),
                            "ICMP port unreachable: {context}"
                        );
                        rejected += 1;
                    }
                    Expect::Dnat(allowed) => {
                        assert_eq!(verdict, TC_ACT_OK, "{context}");
                        let p = parse_checked(&out);
                        assert_eq!((p.src, p.sport), (CLIENT, sport), "{context}");
                        assert!(
                            allowed.contains(&(p.dst, p.dport)),
                            "to {}:{}: {context}",
                            p.dst,
                            p.dport
                        );
                        reached.insert((p.dst, p.dport));
                        dnat += 1;
                    }
                }
            }
            if let Expect::Dnat(allowed) = &expect
                && allowed.len() <= 3
            {
                assert_eq!(
                    &reached, allowed,
                    "24 flows reach every backend: set {set} {dst}:{dport}"
                );
            }
        }
    }
    eprintln!(
        "differential: {dnat} translated, {rejected} rejected, {dropped} dropped, {untouched} untouched"
    );
    assert!(dnat > 1000 && rejected > 10 && dropped > 10 && untouched > 100);
}

/// An ingress controller's Service: type LoadBalancer, externalTrafficPolicy
/// Local, its pods on other nodes only. From outside, this node must drop
/// (kube-proxy: no local endpoint); but a pod here reaching the LB IP, the
/// node port or the external IP (an app calling its own public hostname) is
/// balanced over every endpoint, as kube-proxy's short-circuit does.
#[test]
fn pods_reach_external_addresses_of_local_policy_services_over_every_endpoint() {
    let mut f = fixture();
    let lb_ip = Ipv4Addr::new(192, 0, 2, 50);
    let external_ip = Ipv4Addr::new(192, 0, 2, 51);
    let mut desired = desired_state(&BACKENDS);
    let mut ingress = service(Ipv4Addr::new(10, 96, 0, 60), 443, Protocol::Tcp, &BACKENDS);
    ingress.service_type = ServiceType::LoadBalancer;
    ingress.external.node_port = Some(30443);
    ingress.external.load_balancer_ips = vec![lb_ip];
    ingress.external.external_ips = vec![external_ip];
    ingress.external.traffic_local = true;
    for e in &mut ingress.endpoints {
        e.node = Some("elsewhere".into());
    }
    desired.services.insert(ingress.frontend, ingress);
    let mut sync = MapSync::adopt(PinnedMaps::open(&f.pin_dir).expect("maps"))
        .expect("adopt")
        .with_node(Some("here".into()))
        .with_node_ips(vec![NODE_IP]);
    assert!(sync.apply(&desired).errors.is_empty());

    let world = f
        .datapath
        .program_fd(program_names::FROM_WORLD)
        .expect("fd");
    for (dst, port) in [(lb_ip, 443), (external_ip, 443), (NODE_IP, 30443)] {
        // Outside client: no endpoint on this node, dropped.
        let (verdict, _) = test_run(
            world,
            &Pkt::tcp(EXTERNAL_CLIENT, 40000, dst, port, SYN).build(),
        );
        assert_eq!(
            verdict, 2,
            "TC_ACT_SHOT for an outside client to {dst}:{port}"
        );
        // Pod on this node: every endpoint, whatever the node.
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..60u16 {
            let (verdict, out) =
                f.run_from_pod(&Pkt::tcp(CLIENT, 41000 + i, dst, port, SYN).build());
            assert_ne!(verdict, 2, "a pod's SYN to {dst}:{port} was dropped");
            let p = parse_checked(&out);
            assert_eq!(p.dport, 8080, "to {dst}:{port}");
            seen.insert(p.dst);
        }
        assert_eq!(
            seen,
            BACKENDS.iter().copied().collect(),
            "pods to {dst}:{port}"
        );
    }
    let rows = lb_userspace::inspect::services(&f.maps).expect("inspect");
    let in_cluster: Vec<_> = rows
        .iter()
        .filter(|r| r.policy.iter().any(|p| p == "in-cluster"))
        .collect();
    assert_eq!(in_cluster.len(), 3, "inspect shows the in-cluster entries");
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

/// The backend resets a connection (its pod is restarting, say) and the
/// client at once reconnects from the same port, inside the closing window.
/// Like after a client RST, the new SYN must be balanced afresh — here the
/// reset backend has meanwhile left the service, so reusing the old entry
/// would send the connection to a backend that is gone.
/// A tenant's port sweep through a service (no privilege needed) must not
/// crowd other tenants' connections out of the conntrack LRU: its new flows
/// stop at its quota, everyone else's are admitted, and established flows
/// (its own included) keep being translated. While the agent says the table
/// is nearly full, every new flow waits and established ones go on.
#[test]
fn conntrack_admission_stops_one_client_at_its_quota_and_keeps_established_flows() {
    let mut f = fixture();
    f.maps
        .admission
        .set(
            0,
            lb_common::Admission {
                flows_per_source: 5,
                refuse_new: 0,
            },
            0,
        )
        .expect("admission");
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
    f.maps
        .admission
        .set(
            0,
            lb_common::Admission {
                flows_per_source: 0,
                refuse_new: 1,
            },
            0,
        )
        .expect("admission");
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
    let world = f
        .datapath
        .program_fd(program_names::FROM_WORLD)
        .expect("fd");
    // The FIB lookup fails in this namespace: the conntrack entries and the
    // counters tell what the datapath decided.
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

/// A flood of SYNs with spoofed sources to a service without endpoints
/// would turn every node into an ICMP reflector. Rejects are rate-limited
/// like the kernel's own ICMP errors (burst 50, then 1000/s per CPU); the
/// rest are dropped and counted. A lone client is still refused at once.
#[test]
fn icmp_rejects_are_rate_limited() {
    let mut f = fixture();
    let (verdict, _) = f.run_from_pod(&Pkt::tcp(CLIENT, 44000, EMPTY_VIP, 80, SYN).build());
    assert_ne!(
        verdict, 2,
        "the first client is refused with ICMP, not dropped"
    );
    for i in 0..300u16 {
        let spoofed = Ipv4Addr::new(10, 244, 9, (i % 250) as u8 + 1);
        f.run_from_pod(&Pkt::tcp(spoofed, 44001 + i, EMPTY_VIP, 80, SYN).build());
    }
    let rejected = f.maps.reason_count(reason::NO_BACKEND_REJECTED);
    let limited = f.maps.reason_count(reason::REJECT_RATE_LIMITED);
    assert_eq!(rejected + limited, 301, "every SYN is refused or dropped");
    // The burst, plus what the bucket earns while the test runs (1/ms).
    assert!(
        rejected <= 50 + 60,
        "{rejected} rejects sent for 301 SYNs in a burst"
    );
    assert!(limited >= 190, "{limited} dropped");
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
    f.maps
        .admission
        .set(
            0,
            lb_common::Admission {
                flows_per_source: 5,
                refuse_new: 0,
            },
            0,
        )
        .expect("admission");
    for port in 46000..46020 {
        let (rc, _) = f.run_from_pod(&Pkt::tcp(CLIENT, port, VIP, 80, SYN).build());
        assert_eq!(rc, TC_ACT_OK, "connection from port {port} admitted");
        let (rc, _) = f.run_from_pod(&Pkt::tcp(CLIENT, port, VIP, 80, FIN | ACK).build());
        assert_eq!(rc, TC_ACT_OK);
    }
    assert_eq!(f.maps.reason_count(reason::CONNTRACK_SOURCE_QUOTA), 0);
}

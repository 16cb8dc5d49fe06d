//! Packets, built and checked independently of the datapath: Ethernet +
//! IPv4 + TCP/UDP frames with their checksums, IP fragments, ICMP errors,
//! and the parsers that read a program's output back with every checksum
//! verified.

use std::net::Ipv4Addr;

pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

pub fn sum16(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

pub fn checksum(bytes: &[u8]) -> u16 {
    !fold(sum16(bytes))
}

pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    p
}

pub struct Pkt {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub seq: u32,
    pub ip_options: Vec<u8>,
    pub frag_off: u16,
    pub udp_zero_csum: bool,
    pub payload: Vec<u8>,
}

impl Pkt {
    pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Self {
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
    pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Self {
        Self {
            proto: 17,
            tcp_flags: 0,
            ..Self::tcp(src, sport, dst, dport, 0)
        }
    }

    pub fn build(&self) -> Vec<u8> {
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
pub struct Parsed {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub l4_csum: u16,
    pub payload: Vec<u8>,
}

pub fn parse_checked(frame: &[u8]) -> Parsed {
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
pub fn fragment(frame: &[u8], chunk: usize, id: u16) -> Vec<Vec<u8>> {
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
pub fn reassemble(fragments: &[Vec<u8>]) -> Vec<u8> {
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

pub const SYN: u8 = 0x02;

pub const ACK: u8 = 0x10;

pub const FIN: u8 = 0x01;

/// Ethernet + IPv4 + ICMP `kind`/`code` from `from` to `to`, quoting `quoted`.
pub fn icmp_error(from: Ipv4Addr, to: Ipv4Addr, kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
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
pub fn quoted_flow(error: &[u8], out: &[u8]) -> (Ipv4Addr, Ipv4Addr, u16, u16) {
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

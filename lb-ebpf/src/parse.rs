//! Packet parsing: Ethernet → IPv4 → TCP/UDP ports, with every read bounds
//! checked by the kernel (`bpf_skb_load_bytes`), so truncated or malformed
//! packets simply fail to parse and are passed on untouched. Two reads per
//! packet (the Ethernet type with the fixed IPv4 header, then the L4
//! header): each is a helper call, the largest share of a packet's cost. A later IPv4
//! fragment has no L4 header: it is parsed without ports, which
//! `fragment::with_ports` fills in from its datagram's first fragment.

use aya_ebpf::programs::TcContext;
use lb_common::{FlowKey, FragmentKey, PROTO_TCP, PROTO_UDP};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
const IPV4_MIN_HLEN: usize = 20;
/// Don't-fragment and more-fragments flags, fragment offset bits of
/// `frag_off`.
const IP_DF: u16 = 0x4000;
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

/// Offsets of the IPv4 header fields we rewrite.
pub mod ipv4_off {
    use super::ETH_HLEN;
    pub const CHECK: usize = ETH_HLEN + 10;
    pub const SADDR: usize = ETH_HLEN + 12;
    pub const DADDR: usize = ETH_HLEN + 16;
}

/// Where a packet stands among the fragments of its datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// A whole datagram.
    None,
    /// The first fragment: it has the L4 header, more follow.
    First,
    /// A later fragment: payload only, no ports, no L4 checksum.
    Later,
}

/// A TCP or UDP packet over IPv4 that the load balancer may translate.
pub struct Packet {
    /// Offset of the L4 header (Ethernet + IPv4 header with options).
    pub l4_off: usize,
    pub flow: FlowKey,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    /// TCP sequence number, host order (0 for UDP).
    pub tcp_seq: u32,
    /// Whether the UDP checksum is zero ("no checksum").
    pub udp_csum_zero: bool,
    pub len: u32,
    /// IPv4 total length (host order), for FIB lookups; 0 for a coalesced
    /// packet beyond 64 KiB (BIG TCP), which is only checked by segments.
    pub ip_len: u16,
    /// Whether the sender forbade fragmentation (DF): a packet too big for
    /// the route onward is then answered with "fragmentation needed".
    pub dont_fragment: bool,
    pub fragment: Fragment,
    pub ip_id_be: u16,
}

impl Packet {
    pub fn is_tcp(&self) -> bool {
        self.flow.proto == PROTO_TCP
    }

    /// Whether the packet carries the L4 header (ports and checksum).
    pub fn has_l4(&self) -> bool {
        self.fragment != Fragment::Later
    }

    /// The datagram this fragment belongs to.
    pub fn fragment_key(&self) -> FragmentKey {
        FragmentKey {
            src_ip_be: self.flow.src_ip_be,
            dst_ip_be: self.flow.dst_ip_be,
            id_be: self.ip_id_be,
            proto: self.flow.proto,
            _pad: 0,
        }
    }

    /// Offset of the L4 checksum field.
    pub fn l4_csum_off(&self) -> usize {
        if self.is_tcp() {
            self.l4_off + 16
        } else {
            self.l4_off + 6
        }
    }
}

/// Bytes 2..34 of a frame: the end of the Ethernet header and the fixed
/// IPv4 header, read in one call. Starting at byte 2 keeps the addresses
/// 4-aligned on the stack, as the verifier requires.
#[repr(C)]
#[derive(Clone, Copy)]
struct EthIpv4 {
    _macs: [u16; 5],
    eth_proto_be: u16,
    ver_ihl: u8,
    _tos: u8,
    tot_len_be: u16,
    id_be: u16,
    frag_off_be: u16,
    _ttl: u8,
    protocol: u8,
    _check: u16,
    saddr_be: u32,
    daddr_be: u32,
}

/// The first 14 bytes of a TCP header.
#[repr(C)]
#[derive(Clone, Copy)]
struct TcpHead {
    ports: [u16; 2],
    seq_be: u32,
    _ack: u32,
    /// Data offset, then the flags byte.
    offset_flags: [u8; 2],
}

pub enum Parsed {
    /// Not IPv4 TCP/UDP, or malformed: leave it alone.
    Other,
    /// A later IPv4 fragment: its ports (zero here) are in the first one.
    LaterFragment(Packet),
    Flow(Packet),
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Parsed {
    match try_parse(ctx) {
        Ok(p) => p,
        Err(()) => Parsed::Other,
    }
}

#[inline(always)]
fn try_parse(ctx: &TcContext) -> Result<Parsed, ()> {
    // A frame too short for an IPv4 header fails here: not ours either way.
    let h: EthIpv4 = ctx.load(2).map_err(|_| ())?;
    if h.eth_proto_be != ETH_P_IP_BE {
        return Ok(Parsed::Other);
    }
    let ihl = ((h.ver_ihl & 0x0f) as usize) * 4;
    if h.ver_ihl >> 4 != 4 || ihl < IPV4_MIN_HLEN {
        return Ok(Parsed::Other);
    }
    let mut tot_len = u16::from_be(h.tot_len_be) as usize;
    let len = ctx.len();
    if tot_len == 0 && crate::fib::is_gso(ctx) {
        // BIG TCP: GRO made a packet beyond 64 KiB and left its total
        // length 0; the skb's length stands in for it.
        tot_len = (len as usize).saturating_sub(ETH_HLEN);
    }
    if tot_len < ihl || ETH_HLEN + tot_len > len as usize {
        return Ok(Parsed::Other);
    }
    let proto = h.protocol;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(Parsed::Other);
    }
    let (src_ip_be, dst_ip_be, ip_id_be) = (h.saddr_be, h.daddr_be, h.id_be);
    let frag_off = h.frag_off_be;
    let frag_off = u16::from_be(frag_off);
    let l4_off = ETH_HLEN + ihl;
    let mut pkt = Packet {
        l4_off,
        flow: FlowKey {
            src_ip_be,
            dst_ip_be,
            src_port_be: 0,
            dst_port_be: 0,
            proto,
            _pad: [0; 3],
        },
        tcp_flags: 0,
        tcp_seq: 0,
        udp_csum_zero: false,
        len,
        ip_len: if tot_len > u16::MAX as usize {
            0
        } else {
            tot_len as u16
        },
        dont_fragment: frag_off & IP_DF != 0,
        fragment: Fragment::Later,
        ip_id_be,
    };
    if frag_off & IP_OFFSET_MASK != 0 {
        return Ok(Parsed::LaterFragment(pkt));
    }
    pkt.fragment = if frag_off & IP_MF != 0 {
        Fragment::First
    } else {
        Fragment::None
    };
    let l4_min = if proto == PROTO_TCP { 20 } else { 8 };
    if tot_len < ihl + l4_min {
        return Ok(Parsed::Other);
    }
    if proto == PROTO_TCP {
        // Ports, sequence number and flags in one read.
        let h: TcpHead = ctx.load(l4_off).map_err(|_| ())?;
        pkt.flow.src_port_be = h.ports[0];
        pkt.flow.dst_port_be = h.ports[1];
        pkt.tcp_seq = u32::from_be(h.seq_be);
        pkt.tcp_flags = h.offset_flags[1];
    } else {
        let h: [u16; 4] = ctx.load(l4_off).map_err(|_| ())?;
        pkt.flow.src_port_be = h[0];
        pkt.flow.dst_port_be = h[1];
        pkt.udp_csum_zero = h[3] == 0;
    }
    Ok(Parsed::Flow(pkt))
}

//! IPv4 fragments of translated flows. Only a datagram's first fragment
//! carries the L4 header; the later ones carry payload only. The first
//! fragment's ports are remembered under the datagram's identity (source,
//! destination, protocol, IP ID) so the later ones are handled as part of
//! its flow: translated with it, addresses only (their bytes are not
//! covered by any header Switchyard rewrites, the L4 checksum sits in the
//! first). Netfilter reassembles instead; tc sees fragments one by one.

use aya_ebpf::bindings::BPF_ANY;
use lb_common::{FragmentPorts, reason};

use crate::{
    maps::fragments,
    parse::{Fragment, Packet, Parsed},
    stats,
};

/// The packet of a flow `parsed` belongs to, if any: a later fragment gets
/// the ports of its datagram's first fragment, or is left alone (counted)
/// when that was not seen here.
#[inline(always)]
pub fn flow_packet(parsed: Parsed) -> Option<Packet> {
    match parsed {
        Parsed::Flow(pkt) => Some(pkt),
        Parsed::LaterFragment(pkt) => with_ports(pkt),
        Parsed::Other => None,
    }
}

#[inline(always)]
fn with_ports(mut pkt: Packet) -> Option<Packet> {
    let Some(ports) = (unsafe { fragments.get(pkt.fragment_key()) }) else {
        stats::count(reason::FRAGMENT_PASSED);
        return None;
    };
    pkt.flow.src_port_be = ports.src_port_be;
    pkt.flow.dst_port_be = ports.dst_port_be;
    stats::count(reason::FRAGMENT_TRACKED);
    Some(pkt)
}

/// Records a first fragment's ports for the fragments that follow it. Its
/// original addresses are the key: the later ones arrive untranslated.
#[inline(always)]
pub fn remember(pkt: &Packet) {
    if pkt.fragment != Fragment::First {
        return;
    }
    let ports = FragmentPorts {
        src_port_be: pkt.flow.src_port_be,
        dst_port_be: pkt.flow.dst_port_be,
    };
    // An LRU: if it is full the oldest datagram is forgotten, whose later
    // fragments then pass untranslated (counted as `fragment_passed`).
    let _ = fragments.insert(pkt.fragment_key(), ports, BPF_ANY as u64);
}

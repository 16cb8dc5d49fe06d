//! Socket-level load balancing: a service address is translated where a
//! connection starts, in cgroup hooks on connect()/sendmsg(), and shown
//! back as the service address on recvmsg()/getpeername(). The socket
//! talks to the backend directly: no per-packet NAT, no conntrack entry.
//! Two kinds of sockets are translated: those of the node's own network
//! namespace (host-network pods, the kubelet — their traffic never crosses
//! a pod interface), and with `--socket-lb pods` those of this node's pods
//! (`sock_pods`), whose packets then pass the tc programs as plain pod-IP
//! traffic. Every other socket is left to the tc programs.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_ANY,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use lb_common::{FlowKey, PROTO_TCP, PROTO_UDP, SockAddr, SockKey, reason};

use crate::{
    affinity, lookup,
    maps::{nat_config, sock_config, sock_direct, sock_lb, sock_pods},
    stats,
};

/// Hook verdicts of cgroup sock_addr programs.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// Whose socket this is: the node's own namespace, a pod of this node in
/// `sock_pods` (with its address); `None` for sockets left to tc.
#[inline(always)]
fn client_of(ctx: &SockAddrContext) -> Option<Client> {
    let host = sock_config.get(0).copied().unwrap_or(0);
    if host == 0 {
        return None;
    }
    let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if netns == host {
        return Some(Client::Node);
    }
    unsafe { sock_pods.get(netns) }.map(|ip| Client::Pod(*ip))
}

/// A translated socket's owner.
#[derive(Clone, Copy)]
enum Client {
    Node,
    Pod(u32),
}

impl Client {
    /// The client address affinity and Maglev see, as tc would: the
    /// node's (SNAT) address for its own processes, a pod's own.
    fn ip_be(self) -> u32 {
        match self {
            Client::Node => nat_config.get(0).map_or(0, |c| c.snat_ip_be),
            Client::Pod(ip) => ip,
        }
    }

    fn translated_reason(self) -> u32 {
        match self {
            Client::Node => reason::SOCK_TRANSLATED,
            Client::Pod(_) => reason::SOCK_POD_TRANSLATED,
        }
    }
}

#[inline(always)]
fn protocol(proto: u32) -> Option<u8> {
    match proto {
        6 => Some(PROTO_TCP),
        17 => Some(PROTO_UDP),
        _ => None,
    }
}

/// connect4 and sendmsg4: a service address becomes one of its backends.
#[inline(always)]
pub fn to_backend(ctx: &SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_family != 2 {
        return ALLOW;
    }
    let Some(client) = client_of(ctx) else {
        return ALLOW;
    };
    let Some(proto) = protocol(sa.protocol) else {
        return ALLOW;
    };
    let vip = sa.user_ip4;
    // The port sits in the low 16 bits, in network byte order.
    let vport = sa.user_port as u16;
    // Host processes and pods are inside the cluster: an external
    // frontend's in-cluster entry applies to them.
    let lookup_flow = FlowKey {
        src_ip_be: 0,
        dst_ip_be: vip,
        src_port_be: 0,
        dst_port_be: vport,
        proto,
        _pad: [0; 3],
    };
    let Some((master, scope)) = lookup::service_of(&lookup_flow, true) else {
        return ALLOW;
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let forward = SockKey {
        cookie,
        ip_be: vip,
        port_be: vport,
        proto,
        _pad: 0,
    };
    // An unconnected UDP socket sends many datagrams: all to one backend,
    // as long as that backend is still there.
    if let Some(chosen) = unsafe { sock_lb.get(forward) }.copied() {
        sa.user_ip4 = chosen.ip_be;
        sa.user_port = chosen.port_be as u32;
        stats::count(reason::ESTABLISHED);
        return ALLOW;
    }
    let now = crate::clock::now();
    // Host processes share the node's address, a pod has its own: that is
    // the client IP for affinity and Maglev, as tc would see it.
    let flow = FlowKey {
        src_ip_be: client.ip_be(),
        dst_ip_be: vip,
        src_port_be: 0,
        dst_port_be: vport,
        proto,
        _pad: [0; 3],
    };
    let Some((_, backend)) = affinity::choose_backend(&flow, &master, scope, now) else {
        stats::count(reason::SOCK_NO_BACKEND);
        stats::service(master.service_id, |c| c.no_backend += 1);
        // connect() fails with ECONNREFUSED, as when kube-proxy rejects.
        unsafe { aya_ebpf::helpers::bpf_set_retval(-ECONNREFUSED) };
        return REJECT;
    };
    sa.user_ip4 = backend.ip_be;
    sa.user_port = backend.port_be as u32;
    let chosen = SockAddr {
        ip_be: backend.ip_be,
        port_be: backend.port_be,
        _pad: 0,
    };
    let reverse = SockKey {
        cookie,
        ip_be: backend.ip_be,
        port_be: backend.port_be,
        proto,
        _pad: 0,
    };
    let service = SockAddr {
        ip_be: vip,
        port_be: vport,
        _pad: 0,
    };
    // Losing these costs only the cosmetic reverse mapping, never traffic.
    let _ = sock_lb.insert(forward, chosen, BPF_ANY as u64);
    let _ = sock_lb.insert(reverse, service, BPF_ANY as u64);
    if let Client::Pod(pod_ip_be) = client {
        let _ = sock_direct.insert(cookie, pod_ip_be, BPF_ANY as u64);
    }
    stats::count(client.translated_reason());
    stats::service(master.service_id, |c| c.new_flows += 1);
    ALLOW
}

/// recvmsg4 and getpeername4: a backend this socket was sent to shows as
/// the service address it asked for. Entries are per socket (cookie), so a
/// later direct connection to the same backend is never disguised.
#[inline(always)]
pub fn to_service(ctx: &SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_family != 2 || client_of(ctx).is_none() {
        return ALLOW;
    }
    let Some(proto) = protocol(sa.protocol) else {
        return ALLOW;
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockKey {
        cookie,
        ip_be: sa.user_ip4,
        port_be: sa.user_port as u16,
        proto,
        _pad: 0,
    };
    if let Some(service) = unsafe { sock_lb.get(key) }.copied() {
        sa.user_ip4 = service.ip_be;
        sa.user_port = service.port_be as u32;
    }
    ALLOW
}

/// A packet leaving a pod from a socket the hooks connected straight to a
/// backend, from the pod's own address, of a pod no NetworkPolicy isolates:
/// nothing for `from_pod` to translate, track or judge. Known by the socket
/// the packet still carries (the veth keeps it) rather than by a lookup of
/// its flow. Another source address (a socket bound to a foreign one with
/// IP_TRANSPARENT) takes the full path, source check included.
#[inline(always)]
pub fn is_direct(ctx: &aya_ebpf::programs::TcContext, src_ip_be: u32) -> bool {
    // Without `--socket-lb pods` no such socket exists: no helper call and
    // no lookup on every pod packet.
    if sock_config.get(1).copied() != Some(1) {
        return false;
    }
    let cookie = unsafe { aya_ebpf::helpers::bpf_get_socket_cookie(ctx.as_ptr()) };
    cookie != 0
        && unsafe { sock_direct.get(cookie) }.is_some_and(|pod| *pod == src_ip_be)
        && !crate::policy::isolates(src_ip_be)
}

//! Map keys, values and constants shared by the Switchyard datapath (lb-ebpf)
//! and user space (lb-userspace).
//!
//! Every type here is `#[repr(C)]` with explicit padding so the layout is the
//! same on both sides and in the BTF the kernel shows to `bpftool`.
//! Addresses and ports are stored in **network byte order** ("be" fields): the
//! datapath compares and writes them straight from/to packet headers without
//! swapping; user space converts at the edge.
#![no_std]

/// Names of the pinned maps under the pin directory (default
/// `/sys/fs/bpf/switchyard`). They are also the map symbols in the BPF object.
pub mod map_names {
    pub const SERVICES: &str = "services";
    pub const BACKENDS: &str = "backends";
    pub const CONNTRACK: &str = "conntrack";
    pub const SERVICE_NAMES: &str = "service_names";
    pub const REASON_STATS: &str = "reason_stats";
    pub const SERVICE_STATS: &str = "service_stats";
    pub const AFFINITY: &str = "affinity";
    pub const NAT_CONFIG: &str = "nat_config";
    pub const SOURCE_RANGES: &str = "source_ranges";
    pub const INTERFACES: &str = "interfaces";
    pub const SOCK_LB: &str = "sock_lb";
    pub const SOCK_CONFIG: &str = "sock_config";
    pub const SOCK_PODS: &str = "sock_pods";
    pub const SOCK_DIRECT: &str = "sock_direct";
    pub const LAYOUT: &str = "layout";
    pub const ADMISSION: &str = "admission";
    pub const CT_SOURCES: &str = "ct_sources";
    pub const POD_SOURCES: &str = "pod_sources";
    pub const BACKEND_FLOWS: &str = "backend_flows";
    pub const POLICY_PODS: &str = "policy_pods";
    pub const POLICY_RULES: &str = "policy_rules";
    pub const POLICY_FLOWS: &str = "policy_flows";
    pub const POLICY_NOTES: &str = "policy_notes";
    pub const POLICY_ACTIVE: &str = "policy_active";
    pub const POLICY_STATS: &str = "policy_stats";
    pub const POLICY_HITS: &str = "policy_hits";
    pub const POLICY_NAMES: &str = "policy_names";
    pub const ALL: [&str; 27] = [
        SERVICES,
        BACKENDS,
        CONNTRACK,
        SERVICE_NAMES,
        REASON_STATS,
        SERVICE_STATS,
        AFFINITY,
        NAT_CONFIG,
        SOURCE_RANGES,
        INTERFACES,
        SOCK_LB,
        SOCK_CONFIG,
        SOCK_PODS,
        SOCK_DIRECT,
        LAYOUT,
        ADMISSION,
        CT_SOURCES,
        POD_SOURCES,
        BACKEND_FLOWS,
        POLICY_PODS,
        POLICY_RULES,
        POLICY_FLOWS,
        POLICY_NOTES,
        POLICY_ACTIVE,
        POLICY_STATS,
        POLICY_HITS,
        POLICY_NAMES,
    ];
}

/// The version of the pinned maps' layout, kept in the `layout` map.
/// Raise it when the meaning of a map's contents changes without its key
/// or value size changing: an agent that finds another version pinned
/// re-creates the maps instead of misreading them.
pub const LAYOUT_VERSION: u32 = 1;

/// A host socket's view of an address, for socket-level load balancing:
/// (socket cookie, service address) → the backend it was sent to, and
/// (socket cookie, backend address) → the service address to show.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockKey {
    pub cookie: u64,
    pub ip_be: u32,
    pub port_be: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// An IPv4 address and port, both in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SockAddr {
    pub ip_be: u32,
    pub port_be: u16,
    pub _pad: u16,
}

/// Names of the BPF programs in the object.
pub mod program_names {
    /// tc ingress on a pod's host-side interface: packets leaving the pod.
    pub const FROM_POD: &str = "from_pod";
    /// tc egress on a pod's host-side interface: packets about to enter the pod.
    pub const TO_POD: &str = "to_pod";
    /// tc ingress on the node's external interface: traffic from outside.
    pub const FROM_WORLD: &str = "from_world";
    /// tc egress on the node's external interface: replies leaving the node.
    pub const TO_WORLD: &str = "to_world";
    /// XDP on the node's external interface: fast path for external flows.
    pub const XDP_WORLD: &str = "xdp_world";
    /// cgroup connect4 hook: host processes' TCP and connected-UDP sockets.
    pub const SOCK_CONNECT4: &str = "sock_connect4";
    /// cgroup sendmsg4 hook: host processes' unconnected UDP datagrams.
    pub const SOCK_SENDMSG4: &str = "sock_sendmsg4";
    /// cgroup recvmsg4 hook: replies shown as coming from the service.
    pub const SOCK_RECVMSG4: &str = "sock_recvmsg4";
    /// cgroup getpeername4 hook: the peer shown as the service.
    pub const SOCK_GETPEERNAME4: &str = "sock_getpeername4";
    /// The socket hooks and their attach points.
    pub const SOCKET_HOOKS: [&str; 4] = [
        SOCK_CONNECT4,
        SOCK_SENDMSG4,
        SOCK_RECVMSG4,
        SOCK_GETPEERNAME4,
    ];
}

/// Default capacities. The services map holds one master entry per frontend
/// plus one entry per backend slot.
/// Allocated on use (BPF_F_NO_PREALLOC), so the bound costs nothing until
/// used; Maglev frontends take their table size in slots.
pub const MAX_SERVICE_ENTRIES: u32 = 1_048_576;
/// Distinct backend addresses (allocated on use, like the services map).
pub const MAX_BACKENDS: u32 = 262_144;
/// Two entries (forward and reply) per connection.
pub const MAX_CONNTRACK_ENTRIES: u32 = 262_144;
/// Client IP → backend pins of services with session affinity.
pub const MAX_AFFINITY_ENTRIES: u32 = 131_072;
/// Fragmented datagrams in flight whose first fragment was seen (an LRU:
/// the oldest are forgotten first; netfilter holds at most 4 MiB of them).
pub const MAX_FRAGMENT_ENTRIES: u32 = 8_192;
/// Allowed source prefixes of services with `loadBalancerSourceRanges`.
pub const MAX_SOURCE_RANGES: u32 = 16_384;
/// Socket-level translations (two entries per translated socket).
pub const MAX_SOCK_LB_ENTRIES: u32 = 65_536;
/// Pods whose sockets the socket hooks translate (`--socket-lb pods`): one
/// entry per pod network namespace on the node.
pub const MAX_SOCK_PODS: u32 = 4_096;
/// Service IDs (one per frontend: cluster IP, node port, LB or external IP
/// and port) key `service_stats` and `service_names`; ID 0 is never used.
/// Both maps allocate per entry, so capacity costs nothing until used.
pub const MAX_SERVICES: u32 = 524_288;
/// Highest number of backend slots one frontend may have.
pub const MAX_BACKENDS_PER_SERVICE: u32 = 65_535;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Key of the `services` map: a frontend (VIP, port, protocol) and a slot.
///
/// Slot 0 is the *master* entry: its value carries the backend count and the
/// service ID. Slots `1..=count` each point at one backend. Keeping slots as
/// separate entries lets user space change one backend at a time and grow the
/// set before publishing the new count, so the datapath never sees a slot
/// that is not filled.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub vip_be: u32,
    pub port_be: u16,
    pub proto: u8,
    /// Which clients the entry serves ([`frontend_scope`]): everyone, or
    /// only clients inside the cluster (pods and the node's own processes).
    pub scope: u8,
    pub slot: u16,
    pub _pad: u16,
}

impl ServiceKey {
    pub const fn new(vip_be: u32, port_be: u16, proto: u8, slot: u16) -> Self {
        Self::scoped(vip_be, port_be, proto, frontend_scope::ALL, slot)
    }

    pub const fn scoped(vip_be: u32, port_be: u16, proto: u8, scope: u8, slot: u16) -> Self {
        Self {
            vip_be,
            port_be,
            proto,
            scope,
            slot,
            _pad: 0,
        }
    }

    pub const fn master(&self) -> Self {
        Self::scoped(self.vip_be, self.port_be, self.proto, self.scope, 0)
    }
}

/// [`ServiceKey::scope`]: who a frontend's entry serves.
pub mod frontend_scope {
    /// Every client (the only entry of most frontends).
    pub const ALL: u8 = 0;
    /// Clients inside the cluster: pods and the node's own processes. An
    /// `externalTrafficPolicy: Local` service's node ports, LB and external
    /// IPs have one: in-cluster clients use every endpoint (kube-proxy's
    /// short-circuit), only outside clients are held to the node's own.
    pub const IN_CLUSTER: u8 = 1;
}

/// Value of the `services` map. In the master entry (slot 0) `count`,
/// `service_id` and `affinity_timeout_s` are set and `backend_id` is 0; in a
/// slot entry only `backend_id` is set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendSlot {
    pub backend_id: u32,
    pub service_id: u32,
    pub count: u16,
    pub flags: u16,
    /// ClientIP session affinity: how long a client stays with its backend
    /// after its last new connection. 0: no affinity.
    pub affinity_timeout_s: u32,
}

/// `BackendSlot::flags` of a master entry.
pub mod service_flags {
    /// A frontend reached from outside the cluster (node IP:nodePort, a
    /// load-balancer IP or an external IP): flows to a backend on another
    /// node are SNATed to this node so replies come back through it.
    pub const EXTERNAL: u16 = 1;
    /// With no backend, drop (counted) instead of refusing with ICMP:
    /// `externalTrafficPolicy: Local` on a node without local endpoints,
    /// where the load balancer's health check steers traffic elsewhere.
    pub const DROP_IF_EMPTY: u16 = 2;
    /// Only sources in `source_ranges` for this service may connect.
    pub const SOURCE_RANGES: u16 = 4;
    /// The slots are a Maglev lookup table (`count` entries): a new flow
    /// takes the slot its 5-tuple hashes to instead of a random one.
    pub const MAGLEV: u16 = 8;
    /// The frontend also has an entry for clients inside the cluster
    /// (`frontend_scope::IN_CLUSTER`): only then do pods and node
    /// processes pay a second lookup.
    pub const HAS_IN_CLUSTER: u16 = 16;
    /// A new flow takes the next slot after the previous new flow's (a
    /// cursor per frontend and CPU, so CPUs never contend for it).
    pub const ROUND_ROBIN: u16 = 32;
    /// A new flow takes the backend with the fewest open flows
    /// (`backend_flows`) among [`super::LEAST_CONN_CHOICES`] consecutive
    /// slots from a random one: exact for up to that many backends.
    pub const LEAST_CONN: u16 = 64;
}

/// Slots a least-connection frontend compares per new flow. Up to this many
/// backends the choice is exact (every backend is looked at, from a random
/// first one so ties are broken at random); beyond, it is the best of this
/// many consecutive slots from a random start — a "power of d choices",
/// which keeps the busiest backend within a small margin of the average at
/// a fixed cost per new flow.
pub const LEAST_CONN_CHOICES: u32 = 8;

/// The flow hash Maglev frontends use, shared so user space and tests can
/// predict the datapath. Inputs are the raw (network-order) header fields.
pub const fn flow_hash(
    src_ip_be: u32,
    dst_ip_be: u32,
    src_port_be: u16,
    dst_port_be: u16,
    proto: u8,
) -> u32 {
    let a = ((src_ip_be as u64) << 32) | dst_ip_be as u64;
    let b = ((src_port_be as u64) << 32) | ((dst_port_be as u64) << 8) | proto as u64;
    let mut h = a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h as u32
}

/// `Backend::flags`.
pub mod backend_flags {
    /// The backend runs on this node.
    pub const LOCAL: u8 = 1;
}

/// Value of the single-entry `admission` array: when the datapath refuses
/// to track a new flow, so that established flows are never pushed out of
/// the conntrack table (an LRU) by new ones. Written by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Admission {
    /// Tracked flows one client address may have (`ct_sources` counts
    /// them); 0: no limit.
    pub flows_per_source: u32,
    /// Non-zero while the table is nearly full: new flows are refused
    /// until the agent's sweeps make room.
    pub refuse_new: u32,
}

/// Key of the `pod_sources` map: an address a pod interface's pod may send
/// from. `ip_be` 0 marks the interface as checked (its addresses known).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PodSource {
    pub ifindex: u32,
    pub ip_be: u32,
}

/// Value of the `backend_flows` map (key: backend ID): the backend's open
/// flows through this node — created here and not yet closed by their
/// client (FIN or RST) nor expired. Counted up and down by the datapath,
/// recounted exactly by the agent's conntrack sweeps; signed because a
/// close may race with a recount (read below 0 as 0).
pub type BackendFlows = i32;

/// NetworkPolicy: which way a rule lets traffic through, seen from the
/// selected pod.
pub mod policy_direction {
    /// Into the pod.
    pub const INGRESS: u32 = 0;
    /// Out of the pod.
    pub const EGRESS: u32 = 1;
}

/// Value of `policy_pods` (key: the pod's IPv4 address, network order):
/// for each direction, the rule set of the policies selecting the pod that
/// way (which makes it default-deny that way), 0 if none does. Pods whose
/// policies compile to the same rules share one set. A pod without an
/// entry is open.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PodIsolation {
    pub ingress_set: u32,
    pub egress_set: u32,
}

/// Data of a `policy_rules` LPM trie key: a rule set (always matched in
/// full), then the peer's address; the key's prefix length is 32 + the
/// peer prefix length. The agent makes a set's peer prefixes such that the
/// longest match holds every port allowed for that peer address.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PolicyRuleKey {
    pub rule_set_be: u32,
    pub peer_ip_be: u32,
}

/// One allowed port range (host order, inclusive) of a protocol; protocol
/// 0 is every protocol and port. `policy`: the ID of the NetworkPolicy
/// whose rule allows it (`policy_names`), counted in `policy_hits` when it
/// lets a flow through.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PolicyPortRange {
    pub first: u16,
    pub last: u16,
    pub proto: u8,
    pub _pad: u8,
    pub policy: u16,
}

/// Port ranges one `policy_rules` entry can hold.
pub const POLICY_PORT_RANGES: usize = 16;

/// Value of `policy_rules`: the ports a peer may use (ingress: the pod's
/// ports it may reach; egress: the peer's ports the pod may reach).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PolicyPorts {
    pub count: u32,
    pub ranges: [PolicyPortRange; POLICY_PORT_RANGES],
}

/// NetworkPolicies one node can tell apart in `policy_hits` (IDs 1..).
pub const MAX_POLICIES: u32 = 16_384;

/// Value of `policy_hits` (per CPU, index: policy ID): new flows the
/// policy's rules let through on this node.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyHits {
    pub allowed: u64,
}

/// Key of `policy_stats`: an isolated pod and a direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PolicyStatsKey {
    pub pod_ip_be: u32,
    pub direction: u32,
}

/// Value of `policy_stats` (per CPU): new flows the pod's rules let
/// through that way, and packets they refused.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PolicyCounters {
    pub allowed: u64,
    pub denied: u64,
}

/// Value of `policy_notes` (key: pod address): "namespace/name" and the
/// policies isolating it, NUL-padded, for `inspect policy`; only user
/// space reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyNote {
    pub text: [u8; POLICY_NOTE_LEN],
}

pub const POLICY_NOTE_LEN: usize = 256;

impl Default for PolicyNote {
    fn default() -> Self {
        Self {
            text: [0; POLICY_NOTE_LEN],
        }
    }
}

/// Pods NetworkPolicy isolates on a node, rules (rule set × peer prefix)
/// and allowed flows remembered for their replies.
pub const MAX_POLICY_PODS: u32 = 65_536;
pub const MAX_POLICY_RULES: u32 = 262_144;
pub const MAX_POLICY_FLOWS: u32 = 262_144;

/// How long an allowed flow's replies pass without a packet (TCP; UDP
/// and the rest: [`POLICY_FLOW_IDLE_UDP_NS`]). After that the next packet
/// is judged by the rules again.
pub const POLICY_FLOW_IDLE_TCP_NS: u64 = 3_600 * 1_000_000_000;
pub const POLICY_FLOW_IDLE_UDP_NS: u64 = 180 * 1_000_000_000;

/// Pod interfaces × their addresses in `pod_sources`.
pub const MAX_POD_SOURCES: u32 = 65_536;

/// Client addresses whose tracked flows `ct_sources` counts (an LRU).
pub const MAX_CT_SOURCES: u32 = 65_536;

/// Value of the single-entry `nat_config` array: how this node SNATs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatConfig {
    /// The node address external flows to remote backends are SNATed to.
    pub snat_ip_be: u32,
    /// Host-order inclusive range of SNAT source ports (reserved from
    /// local sockets by the agent).
    pub port_min: u16,
    pub port_max: u16,
    /// `nat_flags`.
    pub flags: u32,
}

/// Bits of [`NatConfig::flags`].
pub mod nat_flags {
    /// XDP forwards client → backend packets of SNAT flows itself (XDP_TX
    /// or redirect) instead of passing them to tc.
    pub const XDP_SNAT: u32 = 1;
}

/// Data of a `source_ranges` LPM trie key: service ID (always matched in
/// full) then the source prefix; the key's prefix length counts bits of
/// both, 32 + the source prefix length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceRange {
    pub service_id_be: u32,
    pub src_ip_be: u32,
}

/// Value of the `interfaces` map (key: ifindex): where the agent attached
/// the programs and how. Only user space reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct InterfaceStatus {
    pub name: [u8; 16],
    /// 1: pod interface, 2: external interface.
    pub role: u8,
    /// 0: no XDP, 1: native (driver), 2: generic (skb), 3: none because
    /// `--xdp auto` found tc faster on the interface's driver.
    pub xdp_mode: u8,
    pub _pad: [u8; 2],
}

pub mod interface_role {
    pub const POD: u8 = 1;
    pub const EXTERNAL: u8 = 2;
    /// An overlay's tunnel device (flannel.1, vxlan.calico, tunl0): the
    /// external programs in tc, no XDP.
    pub const TUNNEL: u8 = 3;
}

pub mod xdp_mode {
    pub const NONE: u8 = 0;
    pub const NATIVE: u8 = 1;
    pub const GENERIC: u8 = 2;
    /// Left off by `--xdp auto`: tc is faster on this driver (veth).
    pub const TC_FASTER: u8 = 3;
}

/// Key of the `affinity` map: a client of a service.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct AffinityKey {
    pub client_ip_be: u32,
    pub service_id: u32,
}

/// Value of the `affinity` map: the backend the client sticks to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityEntry {
    pub backend_id: u32,
    pub _pad: u32,
    /// CLOCK_MONOTONIC of the client's last new connection to the service.
    pub last_used_ns: u64,
}

/// Key of the `backends` map.
pub type BackendId = u32;

/// Value of the `backends` map: where a backend lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Backend {
    pub ip_be: u32,
    pub port_be: u16,
    pub proto: u8,
    pub flags: u8,
}

/// Key of the `fragments` map: an IPv4 datagram among its fragments (RFC 791
/// identifies it by source, destination, protocol and IP ID), as its
/// fragments carry it before translation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragmentKey {
    pub src_ip_be: u32,
    pub dst_ip_be: u32,
    pub id_be: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of the `fragments` map: the ports of a fragmented datagram, read
/// from its first fragment, so that the later ones (which carry no L4
/// header) are handled as part of the same flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragmentPorts {
    pub src_port_be: u16,
    pub dst_port_be: u16,
}

/// Key of the `conntrack` map: a flow as seen in the packet being looked up.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub src_ip_be: u32,
    pub dst_ip_be: u32,
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

impl FlowKey {
    /// The same flow seen from the other side.
    pub const fn reversed(&self) -> Self {
        Self {
            src_ip_be: self.dst_ip_be,
            dst_ip_be: self.src_ip_be,
            src_port_be: self.dst_port_be,
            dst_port_be: self.src_port_be,
            proto: self.proto,
            _pad: [0; 3],
        }
    }

    /// The key of the reply entry that belongs with `forward`, the forward
    /// entry of this flow: the backend answers the client (a hairpin flow:
    /// the VIP it was SNATed to; a SNAT flow: this node's SNAT address and
    /// port; a remapped flow: the client on its new source port).
    pub const fn reply_key(&self, forward: &ConnEntry) -> Self {
        let (dst_ip_be, dst_port_be) = match forward.kind {
            conn_kind::FORWARD_SNAT => (forward.second_ip_be, forward.second_port_be),
            conn_kind::HAIRPIN_FORWARD => (self.dst_ip_be, self.src_port_be),
            _ if forward.second_port_be != 0 => (self.src_ip_be, forward.second_port_be),
            _ => (self.src_ip_be, self.src_port_be),
        };
        Self {
            src_ip_be: forward.nat_ip_be,
            dst_ip_be,
            src_port_be: forward.nat_port_be,
            dst_port_be,
            proto: self.proto,
            _pad: [0; 3],
        }
    }

    /// The key of the forward entry of the flow whose REPLY entry is
    /// `reply`, stored under this key (`backend → client`).
    pub const fn forward_key(&self, reply: &ConnEntry) -> Self {
        Self {
            src_ip_be: self.dst_ip_be,
            dst_ip_be: reply.nat_ip_be,
            src_port_be: if reply.second_port_be != 0 {
                reply.second_port_be
            } else {
                self.dst_port_be
            },
            dst_port_be: reply.nat_port_be,
            proto: self.proto,
            _pad: [0; 3],
        }
    }
}

/// `ConnEntry::kind`: which way the keyed packet travels.
pub mod conn_kind {
    /// Client → VIP. `nat_*` is the backend to DNAT to.
    pub const FORWARD: u8 = 1;
    /// Backend → client. `nat_*` is the VIP:port to restore as source.
    pub const REPLY: u8 = 2;
    /// Client → VIP where the chosen backend is the client pod itself
    /// ("hairpin"): DNAT to `nat_*` and SNAT to the VIP, so the reply comes
    /// back through the datapath instead of short-cutting inside the pod.
    pub const HAIRPIN_FORWARD: u8 = 3;
    /// Pod (as backend) → VIP:client-port: restore `nat_*` (VIP:port) as
    /// source and the pod itself as destination.
    pub const HAIRPIN_REPLY: u8 = 4;
    /// External client → frontend, to a backend on another node: DNAT to
    /// `nat_*` and SNAT to `second_*` (this node, an allocated port).
    pub const FORWARD_SNAT: u8 = 5;
    /// Backend → this node's SNAT port: restore `nat_*` (the frontend) as
    /// source and `second_*` (the client) as destination.
    pub const REPLY_SNAT: u8 = 6;

    /// Entries that steer client → frontend packets.
    pub const fn is_forward(kind: u8) -> bool {
        matches!(kind, FORWARD | HAIRPIN_FORWARD | FORWARD_SNAT)
    }
}

/// A CPU's budget of ICMP rejects: a token bucket, so the datapath cannot be
/// used as a reflector (spoofed sources to endpoint-less services) — the
/// kernel rate-limits its own ICMP errors the same way.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RejectBudget {
    pub tokens: u64,
    pub last_refill_ns: u64,
}

/// Rejects per second and CPU, and the burst allowed: the kernel's
/// `icmp_msgs_per_sec` / `icmp_msgs_burst` defaults.
pub const REJECTS_PER_SEC: u64 = 1000;
pub const REJECT_BURST: u64 = 50;

/// `ConnEntry::tcp_flags`: TCP flags seen on the flow, ORed together.
pub mod tcp_seen {
    pub const SYN: u8 = 0x02;
    pub const FIN: u8 = 0x01;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// How far behind a direction's latest segment its `seq_mark` may lag
/// before it is moved up (bytes): it is written once per this much data,
/// not per packet.
pub const SEQ_MARK_STEP: u32 = 16 * 1024;
/// A RST or FIN is believed when its sequence number lies within this
/// distance (bytes) of its direction's mark — behind it (a RST answering
/// an old acknowledgment) or ahead of it (data not yet seen, a 64 KiB
/// coalesced packet). A blind attacker who knows the addresses and ports
/// hits it once in about 2 000 guesses; netfilter's window is the peers'
/// (scaled) receive window, usually larger.
pub const SEQ_WINDOW: u32 = 1024 * 1024;

/// Value of the `conntrack` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnEntry {
    /// Address written into the packet: the backend (forward) or the
    /// frontend (reply), as destination resp. source.
    pub nat_ip_be: u32,
    pub nat_port_be: u16,
    pub kind: u8,
    pub tcp_flags: u8,
    pub backend_id: u32,
    pub service_id: u32,
    /// The address written to the *other* end of the packet, for flows that
    /// are SNATed: the node source (forward, `kind` FORWARD_SNAT) or the
    /// original client as destination (reply, `kind` REPLY_SNAT). For
    /// FORWARD / REPLY a non-zero port means the client's source port was
    /// remapped (its reply tuple clashed with another open flow's): the new
    /// source port (forward) or the client's own port restored as
    /// destination (reply).
    pub second_ip_be: u32,
    pub second_port_be: u16,
    pub _pad: u16,
    /// TCP: a sequence number (host order) this direction's sender has
    /// really sent, kept within [`SEQ_MARK_STEP`] of its latest segments,
    /// so that a RST or FIN claimed in this direction can be checked
    /// against it ([`SEQ_WINDOW`]); 0 until the first segment is seen.
    pub seq_mark: u32,
    pub _pad2: u32,
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns) at creation.
    pub created_ns: u64,
    /// CLOCK_MONOTONIC of the last packet, refreshed at most once a second.
    pub last_seen_ns: u64,
}

/// Value of the `service_names` map: "namespace/name:port" of a service ID,
/// NUL-padded. Only user space reads it; it lives beside the datapath maps so
/// `switchyard inspect` can name what it shows without the agent running.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceName {
    pub name: [u8; SERVICE_NAME_LEN],
}

pub const SERVICE_NAME_LEN: usize = 160;

impl Default for ServiceName {
    fn default() -> Self {
        Self {
            name: [0; SERVICE_NAME_LEN],
        }
    }
}

/// Per-service, per-CPU counters (`service_stats`, indexed by service ID).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceCounters {
    /// Packets DNATed to a backend (new and established flows).
    pub packets: u64,
    pub bytes: u64,
    /// New flows given a backend.
    pub new_flows: u64,
    /// Packets refused because the service had no ready backend.
    pub no_backend: u64,
}

/// Indices of `reason_stats`: why the datapath did what it did with a packet.
/// Each reason is listed once, with its index and its name in `inspect`
/// and the metrics; a compile-time check keeps indices in order.
pub mod reason {
    macro_rules! reasons {
        ($($(#[doc = $doc:expr])* $name:ident = $value:literal, $text:literal;)*) => {
            $($(#[doc = $doc])* pub const $name: u32 = $value;)*
            pub const COUNT: u32 = [$($value),*].len() as u32;
            /// Human names, indexed by reason.
            pub const NAMES: [&str; COUNT as usize] = [$($text),*];
            const _: () = {
                let values = [$($value),*];
                let mut i = 0;
                while i < values.len() {
                    assert!(values[i] == i as u32, "reason indices must be 0, 1, 2, … in order");
                    i += 1;
                }
            };
        };
    }

    reasons! {
        NEW_FLOW = 0, "new_flow";
        ESTABLISHED = 1, "established";
        REPLY_REV_NAT = 2, "reply_rev_nat";
        NO_BACKEND_REJECTED = 3, "no_backend_rejected";
        NO_BACKEND_DROPPED = 4, "no_backend_dropped";
        BACKEND_MISSING = 5, "backend_missing";
        /// A later fragment (no L4 header) of a datagram whose first fragment
        /// was not seen here — out of order, or its record evicted: passed
        /// untouched.
        FRAGMENT_PASSED = 6, "fragment_passed";
        CONNTRACK_FULL = 7, "conntrack_full";
        NAT_FAILED = 8, "nat_failed";
        /// New flow sent to the backend its client is pinned to by affinity.
        AFFINITY_HIT = 9, "affinity_hit";
        /// Dropped: the source is outside the service's loadBalancerSourceRanges.
        SOURCE_RANGE_DENIED = 10, "source_range_denied";
        /// Dropped: externalTrafficPolicy Local and no local endpoint here.
        NO_LOCAL_BACKEND_DROPPED = 11, "no_local_backend_dropped";
        /// Dropped: no free SNAT port for a flow to a remote backend.
        SNAT_PORTS_EXHAUSTED = 12, "snat_ports_exhausted";
        /// Dropped: no route to forward a translated packet.
        FIB_LOOKUP_FAILED = 13, "fib_lookup_failed";
        /// Translated by XDP (flows to local backends) before any skb existed.
        XDP_TRANSLATED = 14, "xdp_translated";
        /// A host process's socket connected (or sent) straight to a backend.
        SOCK_TRANSLATED = 15, "sock_translated";
        /// A host process's connect() refused: the service has no backend.
        SOCK_NO_BACKEND = 16, "sock_no_backend";
        /// An ICMP error quoting a DNATed flow, given back its service address.
        ICMP_ERROR_TRANSLATED = 17, "icmp_error_translated";
        /// New flow whose reply tuple clashed with another open flow's (same
        /// client port, frontends sharing a backend): given another source port.
        SOURCE_PORT_REMAPPED = 18, "source_port_remapped";
        /// Dropped: the reply tuple clashed and no free source port was found.
        SOURCE_PORT_CLASH_DROPPED = 19, "source_port_clash_dropped";
        /// Dropped: a TCP segment without SYN to a service, with no conntrack
        /// entry (mid-flow after an eviction or reboot, or forged): not a new
        /// flow, like netfilter's INVALID state.
        TCP_NO_ENTRY_DROPPED = 20, "tcp_no_entry_dropped";
        /// Dropped instead of refused: ICMP rejects are over their rate.
        REJECT_RATE_LIMITED = 21, "reject_rate_limited";
        /// A later fragment given the ports of its datagram's first fragment,
        /// so it is translated (or not) with its flow.
        FRAGMENT_TRACKED = 22, "fragment_tracked";
        /// Dropped: the client already has its quota of tracked flows (a port
        /// sweep, a flood from one address); its own flows end or time out
        /// before it gets more. Established flows of others are untouched.
        CONNTRACK_SOURCE_QUOTA = 23, "conntrack_source_quota";
        /// Dropped: the conntrack table is nearly full; new flows wait for the
        /// agent's sweeps to make room rather than push established ones out.
        CONNTRACK_ADMISSION_CLOSED = 24, "conntrack_admission_closed";
        /// Dropped: a pod sent a segment that opens or closes a connection
        /// (SYN, FIN, RST) or a new flow from an address that is not its own —
        /// a forged packet meant to reset or hijack another pod's connection.
        SPOOFED_SOURCE_DROPPED = 25, "spoofed_source_dropped";
        /// A packet too big for the route onward to a backend (or back to a
        /// client), with DF set: answered with ICMP "fragmentation needed" and
        /// the next hop's MTU, so the sender's path MTU discovery works.
        FRAGMENTATION_NEEDED_SENT = 26, "fragmentation_needed_sent";
        /// Dropped: too big for the route onward, and DF clear (the datapath
        /// cannot fragment), the ICMP answer over its rate, or a coalesced
        /// packet whose segments do not fit.
        TOO_BIG_DROPPED = 27, "too_big_dropped";
        /// Dropped: a RST or FIN whose sequence number is outside what its
        /// sender has sent on the tracked connection — forged by someone
        /// guessing the connection's addresses, as netfilter's window check
        /// refuses; the connection's entry is left as it was.
        TCP_OUT_OF_WINDOW_DROPPED = 28, "tcp_out_of_window_dropped";
        /// Dropped: a new flow into a pod that NetworkPolicy isolates for
        /// ingress, allowed by none of its rules (no reply is sent).
        POLICY_INGRESS_DENIED = 29, "policy_ingress_denied";
        /// Dropped: a new flow out of a pod that NetworkPolicy isolates for
        /// egress (to a service: to the backend it was given), allowed by
        /// none of its rules.
        POLICY_EGRESS_DENIED = 30, "policy_egress_denied";
        /// A new flow of an isolated pod allowed by a rule.
        POLICY_ALLOWED = 31, "policy_allowed";
        /// A pod's socket connected (or sent) straight to a backend by the
        /// socket hooks (`--socket-lb pods`): no NAT, no conntrack entry.
        SOCK_POD_TRANSLATED = 32, "sock_pod_translated";
        /// A pod's packet passed at once by `from_pod`: its socket was
        /// connected straight to a backend by the socket hooks (no lookup
        /// needed) and no NetworkPolicy isolates the pod.
        SOCK_DIRECT_PASSED = 33, "sock_direct_passed";
    }
}

/// Incremental Internet checksum updates (RFC 1624, eqn. 3) on values as
/// they sit in memory: ones' complement sums are byte-order independent, so
/// fields read straight from a packet can be used without swapping. Used by
/// the XDP path, which has no kernel checksum helpers.
pub mod csum {
    #[inline(always)]
    fn fold(mut sum: u32) -> u16 {
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        sum as u16
    }

    /// The checksum after a 16-bit field changed from `old` to `new`.
    #[inline(always)]
    pub fn replace2(check: u16, old: u16, new: u16) -> u16 {
        !fold(u32::from(!check) + u32::from(!old) + u32::from(new))
    }

    /// The checksum after a 32-bit field changed from `old` to `new`.
    #[inline(always)]
    pub fn replace4(check: u16, old: u32, new: u32) -> u16 {
        let check = replace2(check, old as u16, new as u16);
        replace2(check, (old >> 16) as u16, (new >> 16) as u16)
    }
}

#[cfg(feature = "user")]
mod pod_impls {
    use super::*;
    // SAFETY: all these are repr(C), Copy, with explicit padding and no
    // pointers, so every bit pattern is valid.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for BackendSlot {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for ConnEntry {}
    unsafe impl aya::Pod for Admission {}
    unsafe impl aya::Pod for PodSource {}
    unsafe impl aya::Pod for ServiceName {}
    unsafe impl aya::Pod for ServiceCounters {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityEntry {}
    unsafe impl aya::Pod for NatConfig {}
    unsafe impl aya::Pod for SourceRange {}
    unsafe impl aya::Pod for InterfaceStatus {}
    unsafe impl aya::Pod for SockKey {}
    unsafe impl aya::Pod for SockAddr {}
    unsafe impl aya::Pod for PodIsolation {}
    unsafe impl aya::Pod for PolicyRuleKey {}
    unsafe impl aya::Pod for PolicyPorts {}
    unsafe impl aya::Pod for PolicyNote {}
    unsafe impl aya::Pod for PolicyStatsKey {}
    unsafe impl aya::Pod for PolicyCounters {}
    unsafe impl aya::Pod for PolicyHits {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 12);
        assert_eq!(size_of::<BackendSlot>(), 16);
        assert_eq!(size_of::<AffinityKey>(), 8);
        assert_eq!(size_of::<AffinityEntry>(), 16);
        assert_eq!(size_of::<Backend>(), 8);
        assert_eq!(size_of::<FlowKey>(), 16);
        assert_eq!(size_of::<ConnEntry>(), 48);
        assert_eq!(size_of::<NatConfig>(), 12);
        assert_eq!(size_of::<SockKey>(), 16);
        assert_eq!(size_of::<SockAddr>(), 8);
        assert_eq!(size_of::<SourceRange>(), 8);
        assert_eq!(size_of::<ServiceCounters>(), 32);
        assert_eq!(size_of::<PolicyRuleKey>(), 8);
        assert_eq!(size_of::<PodIsolation>(), 8);
        assert_eq!(size_of::<PolicyPortRange>(), 8);
        assert_eq!(size_of::<PolicyPorts>(), 4 + 8 * POLICY_PORT_RANGES);
    }

    /// Full checksum over 16-bit words in memory order, for checking.
    fn full(words: &[u16]) -> u16 {
        let mut sum: u32 = words.iter().map(|w| u32::from(*w)).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn incremental_checksums_match_recomputation() {
        // An IPv4 header as memory-order words, with its checksum at word 5.
        let mut hdr: [u16; 10] = [
            0x4500, 0x0054, 0x1c46, 0x4000, 0x4006, 0, 0x0af4, 0x000a, 0x0a60, 0x000a,
        ];
        hdr[5] = full(&hdr);
        let mut seed = 0x1234_5678u32;
        for _ in 0..10_000 {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let old = (u32::from(hdr[9]) << 16) | u32::from(hdr[8]);
            let new = seed;
            hdr[5] = csum::replace4(hdr[5], old, new);
            hdr[8] = new as u16;
            hdr[9] = (new >> 16) as u16;
            let mut check = hdr;
            check[5] = 0;
            assert_eq!(hdr[5], full(&check));
            let port = seed as u16 ^ 0x5a5a;
            hdr[5] = csum::replace2(hdr[5], hdr[3], port);
            hdr[3] = port;
            let mut check = hdr;
            check[5] = 0;
            assert_eq!(hdr[5], full(&check));
        }
    }

    #[test]
    fn reversed_flow_swaps_ends() {
        let k = FlowKey {
            src_ip_be: 1,
            dst_ip_be: 2,
            src_port_be: 3,
            dst_port_be: 4,
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        let r = k.reversed();
        assert_eq!(
            (r.src_ip_be, r.dst_ip_be, r.src_port_be, r.dst_port_be),
            (2, 1, 4, 3)
        );
        assert_eq!(r.reversed(), k);
    }
}

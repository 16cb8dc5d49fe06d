//! The maps shared with user space. BTF-defined so `bpftool map dump` shows
//! field names; user space pins them by name under its pin directory.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
    macros::btf_map,
};
use lb_common::{
    Admission, AffinityEntry, AffinityKey, Backend, BackendFlows, BackendId, BackendSlot,
    ConnEntry, FlowKey, FragmentKey, FragmentPorts, InterfaceStatus, MAX_AFFINITY_ENTRIES,
    MAX_BACKENDS, MAX_CONNTRACK_ENTRIES, MAX_CT_SOURCES, MAX_FRAGMENT_ENTRIES, MAX_POD_SOURCES,
    MAX_SERVICE_ENTRIES, MAX_SERVICES, MAX_SOCK_LB_ENTRIES, MAX_SOCK_PODS, MAX_SOURCE_RANGES,
    NatConfig, PodSource, ServiceCounters, ServiceKey, ServiceName, SockAddr, SockKey, SourceRange,
    reason,
};
use lb_common::{
    MAX_POLICIES, MAX_POLICY_FLOWS, MAX_POLICY_PODS, MAX_POLICY_RULES, PodIsolation,
    PolicyCounters, PolicyHits, PolicyNote, PolicyPorts, PolicyRuleKey, PolicyStatsKey,
};

/// Frontend (VIP, port, proto, slot) → master entry or backend slot.
#[btf_map]
pub static services: HashMap<
    ServiceKey,
    BackendSlot,
    { MAX_SERVICE_ENTRIES as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// Backend ID → backend address.
#[btf_map]
pub static backends: HashMap<
    BackendId,
    Backend,
    { MAX_BACKENDS as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// Backend ID → its open flows (load.rs), for least-connection and
/// `inspect backends`. An entry per backend, created by user space.
#[btf_map]
pub static backend_flows: HashMap<
    BackendId,
    BackendFlows,
    { MAX_BACKENDS as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// Service ID → the slot its last round-robin flow took, per CPU. Not
/// pinned: a restart only moves where each CPU's round starts.
#[btf_map]
pub static rr_cursors: PerCpuHashMap<
    u32,
    u32,
    { MAX_SERVICES as usize },
    { BPF_F_NO_PREALLOC as usize },
> = PerCpuHashMap::new();

/// Flow → NAT decision, for both directions of every translated connection.
#[btf_map]
pub static conntrack: LruHashMap<FlowKey, ConnEntry, { MAX_CONNTRACK_ENTRIES as usize }> =
    LruHashMap::new();

/// A fragmented datagram → the ports of its first fragment (fragment.rs).
/// Not pinned: datagrams in flight for milliseconds.
#[btf_map]
pub static fragments: LruHashMap<FragmentKey, FragmentPorts, { MAX_FRAGMENT_ENTRIES as usize }> =
    LruHashMap::new();

/// Service ID → "namespace/name:port", for inspection only.
#[btf_map]
pub static service_names: HashMap<
    u32,
    ServiceName,
    { MAX_SERVICES as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// Per-CPU token bucket of ICMP rejects (not pinned: transient).
#[btf_map]
pub static reject_budget: PerCpuArray<lb_common::RejectBudget, 1> = PerCpuArray::new();

/// Why packets were translated, refused or passed.
#[btf_map]
pub static reason_stats: PerCpuArray<u64, { reason::COUNT as usize }> = PerCpuArray::new();

/// Per-service traffic counters, indexed by service ID.
#[btf_map]
pub static service_stats: PerCpuHashMap<
    u32,
    ServiceCounters,
    { MAX_SERVICES as usize },
    { BPF_F_NO_PREALLOC as usize },
> = PerCpuHashMap::new();

/// (client IP, service ID) → the backend a ClientIP-affinity client sticks to.
#[btf_map]
pub static affinity: LruHashMap<AffinityKey, AffinityEntry, { MAX_AFFINITY_ENTRIES as usize }> =
    LruHashMap::new();

/// Index 0: this node's SNAT address and port range.
#[btf_map]
pub static nat_config: Array<NatConfig, 1> = Array::new();

/// (service ID, source prefix) of services with loadBalancerSourceRanges.
#[btf_map]
pub static source_ranges: LpmTrie<SourceRange, u8, { MAX_SOURCE_RANGES as usize }> = LpmTrie::new();

/// ifindex → how the agent attached there (for `switchyard inspect interfaces`).
#[btf_map]
pub static interfaces: HashMap<u32, InterfaceStatus, 4096> = HashMap::new();

/// Socket-level translations of host processes' sockets (see sock.rs).
#[btf_map]
pub static sock_lb: LruHashMap<SockKey, SockAddr, { MAX_SOCK_LB_ENTRIES as usize }> =
    LruHashMap::new();

/// Index 0: the network namespace (cookie) whose sockets the socket hooks
/// translate: the node's own. 0 means none (socket LB off). Index 1: 1 when
/// pods' sockets are translated too (`--socket-lb pods`), so that `from_pod`
/// looks for their packets' sockets only then.
#[btf_map]
pub static sock_config: Array<u64, 2> = Array::new();

/// Network namespace (cookie) of a pod on this node → the pod's address
/// (network order): the pods whose sockets the socket hooks translate
/// (`--socket-lb pods`), written by the agent. A namespace not here (another
/// node's pods sharing the kernel, a pod that opted out, one not found yet)
/// is left to the tc programs.
#[btf_map]
pub static sock_pods: HashMap<u64, u32, { MAX_SOCK_PODS as usize }> = HashMap::new();

/// Cookie of a pod's socket the socket hooks connected (or sent) straight to
/// a backend → the pod's address: its packets carry the socket across the
/// veth, so `from_pod` knows them without a flow lookup (sock.rs
/// `is_direct`).
#[btf_map]
pub static sock_direct: LruHashMap<u64, u32, { MAX_SOCK_LB_ENTRIES as usize }> = LruHashMap::new();

/// Index 0: the layout version of these maps (`LAYOUT_VERSION`), written by
/// user space; read by the next agent before it reuses the pins.
#[btf_map]
pub static layout: Array<u32, 1> = Array::new();

/// Index 0: when new flows are refused (admission.rs), set by user space.
#[btf_map]
pub static admission: Array<Admission, 1> = Array::new();

/// Client address → its tracked flows: counted up here as flows are
/// created, recounted exactly by the agent's conntrack sweeps.
#[btf_map]
pub static ct_sources: LruHashMap<u32, u32, { MAX_CT_SOURCES as usize }> = LruHashMap::new();

/// (pod interface, address) → 1: the addresses each pod may send from, from
/// the node's host routes to it; (interface, 0) marks it as checked.
#[btf_map]
pub static pod_sources: HashMap<
    PodSource,
    u8,
    { MAX_POD_SOURCES as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// Pod address → the rule sets NetworkPolicy isolates it with, per
/// direction (policy.rs).
#[btf_map]
pub static policy_pods: HashMap<
    u32,
    PodIsolation,
    { MAX_POLICY_PODS as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// (rule set, peer prefix) → the ports the peer may use, and by which
/// policy.
#[btf_map]
pub static policy_rules: LpmTrie<PolicyRuleKey, PolicyPorts, { MAX_POLICY_RULES as usize }> =
    LpmTrie::new();

/// Flows of isolated pods allowed by the rules → when last seen: their
/// replies pass, and their next packets skip the rules.
#[btf_map]
pub static policy_flows: LruHashMap<FlowKey, u64, { MAX_POLICY_FLOWS as usize }> =
    LruHashMap::new();

/// Pod address → its name and the policies isolating it, for inspection.
#[btf_map]
pub static policy_notes: HashMap<
    u32,
    PolicyNote,
    { MAX_POLICY_PODS as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// Index 0: how many pods NetworkPolicy isolates on this node; 0 lets every
/// packet skip the policy lookups (an array read costs next to nothing).
#[btf_map]
pub static policy_active: Array<u32, 1> = Array::new();

/// (isolated pod, direction) → new flows allowed and packets denied, per
/// CPU; entries made (and removed) by user space with the isolation.
#[btf_map]
pub static policy_stats: PerCpuHashMap<
    PolicyStatsKey,
    PolicyCounters,
    { 2 * MAX_POLICY_PODS as usize },
    { BPF_F_NO_PREALLOC as usize },
> = PerCpuHashMap::new();

/// Policy ID → new flows its rules let through, per CPU (index 0: none).
#[btf_map]
pub static policy_hits: PerCpuArray<PolicyHits, { MAX_POLICIES as usize }> = PerCpuArray::new();

/// Policy ID → "namespace/name", for inspection; only user space reads it.
#[btf_map]
pub static policy_names: HashMap<
    u32,
    PolicyNote,
    { MAX_POLICIES as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

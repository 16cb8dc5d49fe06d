//! Names, addresses and paths of the real cluster: one place, so `up`,
//! `down`, `status` and the tests agree on them.
//!
//! Node `n` (1-based) is network namespace `sy-node<n>` with `eth0` =
//! `10.99.0.<n>/24` on a bridge in `sy-fabric`; its pods get
//! `10.244.x.0/24` as kube-controller-manager allocates it. The control
//! plane runs in node 1's namespace. `sy-outside` (`10.99.0.100`) is a
//! client outside the cluster, on the same underlay.

use std::net::Ipv4Addr;
use std::path::PathBuf;

pub const FABRIC_NS: &str = "sy-fabric";
pub const OUTSIDE_NS: &str = "sy-outside";
pub const NODE_IFACE: &str = "eth0";
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const DNS_SERVICE_IP: &str = "10.96.0.10";
pub const APISERVER_PORT: u16 = 6443;
pub const K8S_VERSION: &str = "v1.34.4";

pub fn node_ns(n: u8) -> String {
    format!("sy-node{n}")
}

pub fn node_name(n: u8) -> String {
    format!("node{n}")
}

pub fn node_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, n)
}

pub fn outside_ip() -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, 100)
}

/// The outside client's address on the Internet side: load-balancer
/// traffic leaves from it. Upstream e2e cases judge "the client address
/// was preserved" by it not being in the nodes' /16, as a real client's
/// would not be.
pub fn outside_public_ip() -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 100)
}

pub fn control_plane_ip() -> Ipv4Addr {
    node_ip(1)
}

/// Everything the cluster writes lives under this directory (certificates,
/// data, logs, pid files), so `down` removes it in one go.
pub fn state_dir() -> PathBuf {
    std::env::var_os("SWITCHYARD_CLUSTER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/switchyard-cluster"))
}

pub fn node_dir(n: u8) -> PathBuf {
    state_dir().join(node_name(n))
}

/// The node's persisted mount namespace (a bind mount of its nsfs file).
pub fn node_mount_ns(n: u8) -> PathBuf {
    state_dir().join("ns").join(format!("{}.mnt", node_name(n)))
}

/// The node's persisted UTS namespace: its hostname is its node name, as
/// hostNetwork pods (which share it) expect.
pub fn node_uts_ns(n: u8) -> PathBuf {
    state_dir().join("ns").join(format!("{}.uts", node_name(n)))
}

pub fn containerd_socket(n: u8) -> PathBuf {
    node_dir(n).join("containerd/containerd.sock")
}

pub fn admin_kubeconfig() -> PathBuf {
    state_dir().join("pki/admin.kubeconfig")
}

/// The node's cgroup in the cgroup v1 hierarchies and the cgroup2 mount:
/// its kubelet's `cgroupRoot`, and the root of its socket-level hooks.
pub const CGROUP_V1_ROOT: &str = "/sys/fs/cgroup";
pub const CGROUP_V2_ROOT: &str = "/sys/fs/cgroup/unified";

/// Inside each node's mount namespace this path is that node's cgroup2
/// subtree (a bind mount), so one chart value works on every node of this
/// single machine: the chart's `socketLB.hostCgroupRoot`.
pub const NODE_CGROUP2_MOUNT: &str = "/run/switchyard-node-cgroup2";

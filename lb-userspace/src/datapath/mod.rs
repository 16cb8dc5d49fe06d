//! How the datapath realises the desired state: the BPF object, its pinned
//! maps, the interfaces it is attached to, and the map synchronisation.

pub mod addr;
pub mod admission;
pub mod backend_load;
pub mod capacity;
pub mod conntrack;
pub mod driver;
pub mod ids;
pub mod ifaces;
pub mod layout;
pub mod link_events;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod pod_netns;
pub mod pod_sources;
pub mod policy_sync;
pub mod sock_diag;
pub mod socket_lb;
pub mod socket_pods;
pub mod sync;

/// Where the maps are pinned unless `--pin-dir` says otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/switchyard";

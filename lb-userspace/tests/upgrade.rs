//! Upgrades and rollbacks as an operator does them: a new agent starts on
//! the maps an agent of another version left pinned. Maps in another layout
//! must be re-created, never reused (misread contents, or programs refused
//! by the verifier); maps in this layout must be reused with their
//! contents. Needs root.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap as BpfHashMap, MapData};
use lb_common::{Backend, ConnEntry, FlowKey, LAYOUT_VERSION, map_names};
use lb_userspace::datapath::layout::pinned_shape;
use lb_userspace::datapath::loader::{self, Datapath, XdpChoice};

/// A pin directory removed however the test ends.
struct PinDir(PathBuf);

impl PinDir {
    fn new(name: &str) -> Self {
        let dir = PathBuf::from(format!(
            "/sys/fs/bpf/sy-upgrade-{name}-{}",
            std::process::id()
        ));
        let _ = loader::cleanup(&dir);
        std::fs::create_dir_all(&dir).expect("pin dir");
        Self(dir)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = loader::cleanup(&self.0);
    }
}

fn object() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/switchyard.bpf.o");
    loader::find_object(p.is_file().then_some(p.as_path()))
        .expect("BPF object: run `cargo xtask build` first")
}

fn load(dir: &Path) -> anyhow::Result<Datapath> {
    Datapath::load(&object(), dir, XdpChoice::Off, &Default::default())
}

/// What an agent of another version would have pinned: a map made with
/// the raw bpf(2) calls, as no loader of ours would make it.
fn pin_raw_map(path: &Path, map_type: u32, key_size: u32, value_size: u32, max_entries: u32) {
    #[repr(C)]
    #[derive(Default)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        _rest: [u32; 27],
    }
    #[repr(C)]
    #[derive(Default)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let attr = MapCreate {
        map_type,
        key_size,
        value_size,
        max_entries,
        ..Default::default()
    };
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0, // BPF_MAP_CREATE
            &attr as *const MapCreate,
            std::mem::size_of::<MapCreate>(),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let c_path = CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let pin = ObjPin {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        ..Default::default()
    };
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            6, // BPF_OBJ_PIN
            &pin as *const ObjPin,
            std::mem::size_of::<ObjPin>(),
        )
    };
    assert_eq!(rc, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
}

const BPF_MAP_TYPE_LRU_HASH: u32 = 9;

fn backends(dir: &Path) -> BpfHashMap<MapData, u32, Backend> {
    let map = MapData::from_pin(dir.join(map_names::BACKENDS)).expect("pinned backends");
    BpfHashMap::try_from(aya::maps::Map::HashMap(map)).expect("backends map")
}

fn marker() -> Backend {
    Backend {
        ip_be: u32::from(std::net::Ipv4Addr::new(10, 244, 9, 9)).to_be(),
        port_be: 8080u16.to_be(),
        proto: 6,
        flags: 0,
    }
}

#[test]
fn conntrack_pinned_with_another_value_layout_is_recreated() {
    // An older datapath's conntrack had smaller values, a newer one's
    // larger: either way the agent must start, on a map it can read.
    for old_value_size in [16, std::mem::size_of::<ConnEntry>() as u32 + 8] {
        let dir = PinDir::new("ct");
        pin_raw_map(
            &dir.0.join(map_names::CONNTRACK),
            BPF_MAP_TYPE_LRU_HASH,
            std::mem::size_of::<FlowKey>() as u32,
            old_value_size,
            1024,
        );
        let datapath = load(&dir.0).unwrap_or_else(|e| {
            panic!("agent did not start on an old conntrack ({old_value_size} B values): {e:#}")
        });
        let shape = pinned_shape(&dir.0.join(map_names::CONNTRACK))
            .expect("shape")
            .expect("pinned");
        assert_eq!(
            shape.value_size,
            std::mem::size_of::<ConnEntry>() as u32,
            "conntrack with {old_value_size} B values was reused"
        );
        drop(datapath);
    }
}

/// An older agent's counters had fewer reasons: the array must grow, or the
/// new reasons would never be counted.
#[test]
fn a_counter_array_with_fewer_reasons_is_recreated() {
    const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
    let dir = PinDir::new("stats");
    pin_raw_map(
        &dir.0.join(map_names::REASON_STATS),
        BPF_MAP_TYPE_PERCPU_ARRAY,
        4,
        8,
        lb_common::reason::COUNT - 3,
    );
    drop(load(&dir.0).expect("start on older counters"));
    let pinned = MapData::from_pin(dir.0.join(map_names::REASON_STATS)).expect("pinned");
    assert_eq!(
        pinned.info().expect("info").max_entries(),
        lb_common::reason::COUNT,
        "the older, smaller counters array was reused"
    );
}

#[test]
fn maps_of_the_same_layout_keep_their_contents_and_another_version_is_recreated() {
    let dir = PinDir::new("ver");
    drop(load(&dir.0).expect("first start"));
    backends(&dir.0)
        .insert(7, marker(), 0)
        .expect("marker backend");

    // An agent restart or an upgrade within the layout: contents kept.
    drop(load(&dir.0).expect("restart"));
    assert_eq!(backends(&dir.0).get(&7, 0).ok(), Some(marker()));

    // A rollback from a newer agent whose layout this one does not know:
    // nothing of it is reused, and this layout is recorded.
    let layout = MapData::from_pin(dir.0.join(map_names::LAYOUT)).expect("pinned layout");
    let mut version: Array<MapData, u32> =
        Array::try_from(aya::maps::Map::Array(layout)).expect("layout array");
    version
        .set(0, LAYOUT_VERSION + 1, 0)
        .expect("newer version");
    drop(version);
    drop(load(&dir.0).expect("start on a newer layout"));
    assert!(
        backends(&dir.0).get(&7, 0).is_err(),
        "a map of a newer layout was reused"
    );
    let layout = MapData::from_pin(dir.0.join(map_names::LAYOUT)).expect("pinned layout");
    let version: Array<MapData, u32> =
        Array::try_from(aya::maps::Map::Array(layout)).expect("layout array");
    assert_eq!(version.get(&0, 0).ok(), Some(LAYOUT_VERSION));
}

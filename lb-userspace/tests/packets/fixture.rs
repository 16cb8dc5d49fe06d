//! The datapath under test: the real BPF object loaded into a fresh pin
//! directory, its maps filled by the real map-sync code, and programs run
//! with BPF_PROG_TEST_RUN. The services every test starts from, and the
//! node-port setup several share.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use lb_common::program_names;
use lb_userspace::datapath::{
    loader::{self, Datapath},
    maps::PinnedMaps,
    sync::{MapSync, Selection},
};
use lb_userspace::model::{
    BackendAddr, DesiredState, Endpoint, Frontend, Protocol, ServicePort, ServicePortName,
};

pub const TC_ACT_OK: u32 = 0;

pub const TC_ACT_REDIRECT: u32 = 7;

pub const TC_ACT_SHOT: u32 = 2;

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

pub const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 99);

/// A TCP service with ClientIP affinity over BACKENDS.
pub const STICKY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);

/// A service whose only backend is CLIENT itself.
pub const HAIRPIN_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);

pub const BACKENDS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(10, 244, 1, 1),
    Ipv4Addr::new(10, 244, 1, 2),
    Ipv4Addr::new(10, 244, 1, 3),
];

pub struct Fixture {
    pub datapath: Datapath,
    pub maps: PinnedMaps,
    pub pin_dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = loader::cleanup(&self.pin_dir);
    }
}

pub fn object() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/switchyard.bpf.o");
    loader::find_object(p.is_file().then_some(p.as_path()))
        .expect("BPF object: run `cargo xtask build` first")
}

pub fn service(vip: Ipv4Addr, port: u16, protocol: Protocol, backends: &[Ipv4Addr]) -> ServicePort {
    let name = ServicePortName {
        namespace: "test".into(),
        name: format!("svc-{vip}-{port}"),
        port_name: String::new(),
    };
    let endpoints = backends
        .iter()
        .map(|ip| {
            Endpoint::ready(BackendAddr {
                ip: *ip,
                port: 8080,
                protocol,
            })
        })
        .collect();
    ServicePort::cluster_ip(name, Frontend::new(vip, port, protocol), endpoints)
}

pub fn fixture() -> Fixture {
    fixture_with(Selection::default())
}

pub fn desired_state(backends: &[Ipv4Addr]) -> DesiredState {
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

pub fn fixture_with(selection: Selection) -> Fixture {
    static N: AtomicU32 = AtomicU32::new(0);
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/sy-pkt-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let loaded = Datapath::load(
        &object(),
        &pin_dir,
        loader::XdpChoice::Off,
        &Default::default(),
    );
    // A program the verifier refuses leaves the maps pinned: remove them
    // before failing, as Drop would.
    let datapath = loaded.unwrap_or_else(|e| {
        let _ = loader::cleanup(&pin_dir);
        panic!("load datapath: {e:?}")
    });
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
pub fn test_run(prog_fd: RawFd, packet: &[u8]) -> (u32, Vec<u8>) {
    try_test_run(prog_fd, packet)
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {} bytes: {e}", packet.len()))
}

pub fn try_test_run(prog_fd: RawFd, packet: &[u8]) -> std::io::Result<(u32, Vec<u8>)> {
    try_test_run_from(prog_fd, packet, 0)
}

/// The `struct __sk_buff` BPF_PROG_TEST_RUN takes as context: 192 bytes,
/// all zero but the fields set (u32 words; `ingress_ifindex` is word 9).
const SKB_CTX_WORDS: usize = 48;
const SKB_INGRESS_IFINDEX: usize = 9;

/// BPF_PROG_TEST_RUN of a tc program on a packet that arrived on interface
/// `ingress_ifindex` (0: made by the node itself).
pub fn test_run_from(prog_fd: RawFd, packet: &[u8], ingress_ifindex: u32) -> (u32, Vec<u8>) {
    try_test_run_from(prog_fd, packet, ingress_ifindex)
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {} bytes: {e}", packet.len()))
}

fn try_test_run_from(
    prog_fd: RawFd,
    packet: &[u8],
    ingress_ifindex: u32,
) -> std::io::Result<(u32, Vec<u8>)> {
    let mut skb = [0u32; SKB_CTX_WORDS];
    skb[SKB_INGRESS_IFINDEX] = ingress_ifindex;
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
        ctx_size_in: if ingress_ifindex == 0 {
            0
        } else {
            std::mem::size_of_val(&skb) as u32
        },
        ctx_in: if ingress_ifindex == 0 {
            0
        } else {
            skb.as_ptr() as u64
        },
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
    pub fn run_from_pod(&mut self, packet: &[u8]) -> (u32, Vec<u8>) {
        let fd = self
            .datapath
            .program_fd(program_names::FROM_POD)
            .expect("fd");
        test_run(fd, packet)
    }
    pub fn run_to_pod(&mut self, packet: &[u8]) -> (u32, Vec<u8>) {
        let fd = self.datapath.program_fd(program_names::TO_POD).expect("fd");
        test_run(fd, packet)
    }
    /// `to_pod` on a packet forwarded from another interface (not made by
    /// the node itself).
    pub fn run_to_pod_forwarded(&mut self, packet: &[u8]) -> (u32, Vec<u8>) {
        let fd = self.datapath.program_fd(program_names::TO_POD).expect("fd");
        test_run_from(fd, packet, 1)
    }
}

/// This node's address in the node-port tests, and a client outside.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);

pub const EXTERNAL_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 100);

/// Node port 30080 (VIP:80's, externalTrafficPolicy Local) with one
/// backend on this node (BACKENDS[0]) and two elsewhere; node port 30081
/// (VIP:81) with remote backends only. This node is "here" at `node_ip`.
pub fn program_node_ports(f: &Fixture, node_ip: Ipv4Addr) {
    let mut desired = desired_state(&BACKENDS);
    let mut remote_only = service(VIP, 81, Protocol::Tcp, &BACKENDS[1..]);
    remote_only.external.node_port = Some(30081);
    desired.services.insert(remote_only.frontend, remote_only);
    for sp in desired.services.values_mut() {
        if sp.frontend == (Frontend::new(VIP, 80, Protocol::Tcp)) {
            sp.external.node_port = Some(30080);
            sp.external.traffic_local = true;
        }
        place_backends(sp);
    }
    let mut sync = MapSync::adopt(PinnedMaps::open(&f.pin_dir).expect("maps"))
        .expect("adopt")
        .with_node(Some("here".into()))
        .with_node_ips(vec![node_ip]);
    assert!(sync.apply(&desired).errors.is_empty());
}

/// BACKENDS[0] on this node ("here"), the others elsewhere.
pub fn place_backends(sp: &mut ServicePort) {
    for e in &mut sp.endpoints {
        let node = if e.addr.ip == BACKENDS[0] {
            "here"
        } else {
            "elsewhere"
        };
        e.node = Some(node.into());
    }
}

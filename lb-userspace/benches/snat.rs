//! SNAT port allocation under load (`cargo xtask bench snat`; needs root):
//! 1 000, 5 000 and 20 000 concurrent flows from outside clients through a
//! node port to one backend on another node, with the default SNAT range
//! (61000–65000), through the real `xdp_world` program (which claims ports
//! as `from_world` does) with BPF_PROG_TEST_RUN. Counts the flows that got a port and those dropped
//! for want of one (`snat_ports_exhausted`). Prints Markdown.

mod common;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::Result;
use lb_common::{conn_kind, program_names, reason};
use lb_userspace::datapath::{
    addr::{ip_be, port_be},
    loader::{self, Datapath, XdpChoice},
    maps::PinnedMaps,
    sync::MapSync,
};
use lb_userspace::model::{
    BackendAddr, DesiredState, Endpoint, Frontend, Protocol, ServicePort, ServicePortName,
    ServiceType,
};

const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
const NODE_PORT: u16 = 30080;
const FLOWS: [u32; 3] = [1_000, 5_000, 20_000];

fn desired() -> DesiredState {
    let mut d = DesiredState::default();
    let name = ServicePortName {
        namespace: "bench".into(),
        name: "remote".into(),
        port_name: String::new(),
    };
    let backend = Endpoint {
        node: Some("elsewhere".into()),
        ..Endpoint::ready(BackendAddr {
            ip: BACKEND,
            port: 8080,
            protocol: Protocol::Tcp,
        })
    };
    let frontend = Frontend::new(Ipv4Addr::new(10, 96, 0, 80), 80, Protocol::Tcp);
    let mut sp = ServicePort::cluster_ip(name, frontend, vec![backend]);
    sp.service_type = ServiceType::NodePort;
    sp.external.node_port = Some(NODE_PORT);
    d.services.insert(sp.frontend, sp);
    d
}

/// A TCP SYN `client:40000 → node:NODE_PORT` in an Ethernet frame.
fn syn(client: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    let mut ip = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&client.octets());
    ip.extend_from_slice(&NODE_IP.octets());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&NODE_PORT.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

fn run(flows: u32) -> Result<(usize, u64)> {
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/sy-snat-bench-{}-{flows}",
        std::process::id()
    ));
    let object = common::object()?;
    let result = (|| -> Result<(usize, u64)> {
        let mut datapath = Datapath::load(&object, &pin_dir, XdpChoice::Off, &Default::default())?;
        let mut sync = MapSync::adopt(PinnedMaps::open(&pin_dir)?)?
            .with_node(Some("here".into()))
            .with_node_ips(vec![NODE_IP]);
        anyhow::ensure!(sync.apply(&desired()).errors.is_empty());
        let mut maps = PinnedMaps::open(&pin_dir)?;
        maps.nat_config.set(
            0,
            lb_common::NatConfig {
                snat_ip_be: ip_be(NODE_IP),
                port_min: 61000,
                port_max: 65000,
                flags: 0,
            },
            0,
        )?;
        // XDP claims the port (tc would first need a route to the backend
        // for the SNAT address; none exists here) and leaves forwarding to
        // tc: the claim is the same code either way.
        let fd = datapath.program_fd(program_names::XDP_WORLD)?;
        for n in 0..flows {
            // Distinct outside clients, one connection each.
            let client = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + n + 1);
            common::test_run(fd, &syn(client), 1)?;
        }
        let snat = maps
            .conntrack
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, e)| {
                k.dst_port_be == port_be(NODE_PORT) && e.kind == conn_kind::FORWARD_SNAT
            })
            .count();
        Ok((snat, maps.reason_count(reason::SNAT_PORTS_EXHAUSTED)))
    })();
    let _ = loader::cleanup(&pin_dir);
    result
}

fn main() -> Result<()> {
    println!(
        "| concurrent flows to one remote backend | got a SNAT port | dropped (`snat_ports_exhausted`) | drop rate |"
    );
    println!("| --- | --- | --- | --- |");
    for flows in FLOWS {
        let (ok, dropped) = run(flows)?;
        println!(
            "| {flows} | {ok} | {dropped} | {:.1} % |",
            100.0 * dropped as f64 / f64::from(flows)
        );
    }
    Ok(())
}

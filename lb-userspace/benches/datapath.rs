//! Per-packet cost of the datapath programs with `BPF_PROG_TEST_RUN`
//! (`cargo xtask bench datapath`; needs root): the tc program `from_pod` and
//! the XDP program `xdp_world`, for a flow's first packet (service lookup,
//! backend choice, conntrack entry created) and for an established flow's
//! packet (conntrack hit), with 1, 1 000, 10 000 and 100 000 services of 4
//! backends each in the maps, against an empty program of the same type as
//! the floor. The kernel times the program runs itself (`duration`), so the
//! syscall is not counted. Prints a Markdown table (median of 3 runs).
//!
//! With `SWITCHYARD_BENCH_BASELINE=<object>` it measures that object too,
//! alternating with the current one run by run, and prints each cell as
//! `current / baseline (ratio)`: absolute times differ between machines
//! and runs, ratios taken back to back do not.

mod common;

use common::{empty_program, tcp_packet, test_run};
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use lb_common::program_names;
use lb_userspace::datapath::{
    loader::{self, Datapath, XdpChoice},
    maps::PinnedMaps,
    sync::MapSync,
};
use lb_userspace::model::{
    BackendAddr, DesiredState, Endpoint, Frontend, Protocol, ServicePort, ServicePortName,
};

const SCALES: [usize; 4] = [1, 1_000, 10_000, 100_000];
const BACKENDS_PER_SERVICE: usize = 4;
/// Distinct backend addresses (the backends map holds 65 536).
const BACKEND_POOL: usize = 60_000;
const NEW_FLOWS: u16 = 4_000;
const REPEAT: u32 = 200_000;
const RUNS: usize = 3;
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);

fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i as u32)
}

fn backend(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + 1 + (i % BACKEND_POOL) as u32)
}

fn desired(services: usize) -> DesiredState {
    let mut d = DesiredState::default();
    for i in 0..services {
        let frontend = Frontend::new(vip(i), 80, Protocol::Tcp);
        let endpoints = (0..BACKENDS_PER_SERVICE)
            .map(|b| Endpoint {
                addr: BackendAddr {
                    ip: backend(i * BACKENDS_PER_SERVICE + b),
                    port: 8080,
                    protocol: Protocol::Tcp,
                },
                ready: true,
                serving: true,
                terminating: false,
                // On this node, so XDP translates these flows too.
                node: Some("bench".into()),
                hints: None,
            })
            .collect();
        d.services.insert(
            frontend,
            ServicePort::cluster_ip(
                ServicePortName {
                    namespace: "bench".into(),
                    name: format!("s{i}"),
                    port_name: String::new(),
                },
                frontend,
                endpoints,
            ),
        );
    }
    d
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (first packet ns, established packet ns) of `prog_fd` at the current
/// map contents, flows from source ports starting at `port_base`.
fn measure(prog_fd: RawFd, services: usize, port_base: u16) -> Result<(f64, f64)> {
    let mut first = 0u64;
    for i in 0..NEW_FLOWS {
        let target = vip((i as usize * 7919) % services);
        let syn = tcp_packet(CLIENT, port_base + i, target, 80, 0x02);
        first += u64::from(test_run(prog_fd, &syn, 1)?);
    }
    // The first of these flows is established now.
    let target = vip(0);
    let ack = tcp_packet(CLIENT, port_base, target, 80, 0x10);
    let established = test_run(prog_fd, &ack, REPEAT)?;
    Ok((first as f64 / f64::from(NEW_FLOWS), f64::from(established)))
}

/// What a flow that is not to a service costs in the tc programs of both
/// ends — the packets of a socket connected straight to a backend by the
/// socket hooks (`--socket-lb pods`): [from_pod, to_pod] ns, client → pod
/// IP and the pod's reply, with `scale` services in the maps.
fn measure_plain(object: &std::path::Path, scale: usize) -> Result<[f64; 2]> {
    with_object(object, scale, |datapath| {
        let from_pod = datapath.program_fd(program_names::FROM_POD)?;
        let to_pod = datapath.program_fd(program_names::TO_POD)?;
        let out = tcp_packet(CLIENT, 40_000, backend(0), 8080, 0x10);
        let reply = tcp_packet(backend(0), 8080, CLIENT, 40_000, 0x10);
        Ok([
            f64::from(test_run(from_pod, &out, REPEAT)?),
            f64::from(test_run(to_pod, &reply, REPEAT)?),
        ])
    })
}

/// Loads `object` with `scale` services, runs `f`, unloads.
fn with_object<T>(
    object: &std::path::Path,
    scale: usize,
    f: impl FnOnce(&mut Datapath) -> Result<T>,
) -> Result<T> {
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sy-bench-{}", std::process::id()));
    let mut datapath = Datapath::load(object, &pin_dir, XdpChoice::Off, &Default::default())?;
    let result = (|| -> Result<T> {
        let mut sync = MapSync::adopt(PinnedMaps::open(&pin_dir)?)?.with_node(Some("bench".into()));
        let report = sync.apply(&desired(scale));
        if !report.errors.is_empty() {
            bail!(
                "sync errors: {:?}",
                &report.errors[..report.errors.len().min(3)]
            );
        }
        f(&mut datapath)
    })();
    drop(datapath);
    loader::cleanup(&pin_dir)?;
    result
}

/// [tc first, tc established, XDP first, XDP established] ns of `object`
/// with `scale` services.
fn measure_object(object: &std::path::Path, scale: usize) -> Result<[f64; 4]> {
    with_object(object, scale, |datapath| {
        let tc = datapath.program_fd(program_names::FROM_POD)?;
        let xdp = datapath.program_fd(program_names::XDP_WORLD)?;
        let (tc_first, tc_est) = measure(tc, scale, 10_000)?;
        let (xdp_first, xdp_est) = measure(xdp, scale, 30_000)?;
        Ok([tc_first, tc_est, xdp_first, xdp_est])
    })
}

/// "281 ns", or "140 ns / 281 ns (0.50×)" against a baseline.
fn cell(current: f64, baseline: Option<f64>) -> String {
    match baseline {
        Some(b) => format!("{current:.0} ns / {b:.0} ns ({:.2}×)", current / b),
        None => format!("{current:.0} ns"),
    }
}

fn main() -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (BPF_PROG_TEST_RUN)");
    }
    let object = common::object()?;
    let baseline = std::env::var_os("SWITCHYARD_BENCH_BASELINE").map(PathBuf::from);
    const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
    const BPF_PROG_TYPE_XDP: u32 = 6;
    let empty_tc = empty_program(BPF_PROG_TYPE_SCHED_CLS, 0)?;
    let empty_xdp = empty_program(BPF_PROG_TYPE_XDP, 2)?;
    let floor_packet = tcp_packet(CLIENT, 1, vip(0), 80, 0x10);
    if let Some(b) = &baseline {
        println!("current: {}, baseline: {}", object.display(), b.display());
    }
    println!(
        "| services | tc first packet | tc established | XDP first packet | XDP established |"
    );
    println!("| --- | --- | --- | --- | --- |");
    let mut floors = (Vec::new(), Vec::new());
    for &scale in &SCALES {
        let mut cells: [Vec<f64>; 4] = Default::default();
        let mut base_cells: [Vec<f64>; 4] = Default::default();
        for run in 0..RUNS {
            let v = measure_object(&object, scale)
                .with_context(|| format!("{scale} services, run {run}"))?;
            for (cell, v) in cells.iter_mut().zip(v) {
                cell.push(v);
            }
            if let Some(b) = &baseline {
                let v = measure_object(b, scale)
                    .with_context(|| format!("baseline, {scale} services, run {run}"))?;
                for (cell, v) in base_cells.iter_mut().zip(v) {
                    cell.push(v);
                }
            }
            floors
                .0
                .push(f64::from(test_run(empty_tc, &floor_packet, REPEAT)?));
            floors
                .1
                .push(f64::from(test_run(empty_xdp, &floor_packet, REPEAT)?));
        }
        let current = cells.map(median);
        let base = base_cells.map(|c| (!c.is_empty()).then(|| median(c)));
        let row: Vec<String> = current.iter().zip(base).map(|(c, b)| cell(*c, b)).collect();
        println!("| {scale} | {} |", row.join(" | "));
    }
    let tc_floor = median(floors.0);
    println!(
        "| empty program (floor) | | {tc_floor:.0} ns | | {:.0} ns |",
        median(floors.1)
    );
    plain_table(&object, baseline.as_deref(), tc_floor)
}

/// The second table: a flow not to a service (a socket-LB'd pod's).
fn plain_table(
    object: &std::path::Path,
    baseline: Option<&std::path::Path>,
    floor: f64,
) -> Result<()> {
    println!();
    println!("| services | from_pod, pod → pod IP | to_pod, its reply | empty program |");
    println!("| --- | --- | --- | --- |");
    for scale in [1, 100_000] {
        let mut cells: [Vec<f64>; 2] = Default::default();
        let mut base_cells: [Vec<f64>; 2] = Default::default();
        for _ in 0..RUNS {
            for (cell, v) in cells.iter_mut().zip(measure_plain(object, scale)?) {
                cell.push(v);
            }
            if let Some(b) = baseline {
                for (cell, v) in base_cells.iter_mut().zip(measure_plain(b, scale)?) {
                    cell.push(v);
                }
            }
        }
        let base = base_cells.map(|c| (!c.is_empty()).then(|| median(c)));
        let row: Vec<String> = cells
            .map(median)
            .iter()
            .zip(base)
            .map(|(c, b)| cell(*c, b))
            .collect();
        println!("| {scale} | {} | {floor:.0} ns |", row.join(" | "));
    }
    Ok(())
}

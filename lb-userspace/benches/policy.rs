//! NetworkPolicy's costs (`cargo xtask bench policy`; needs root):
//!
//! 1. Per packet, with `BPF_PROG_TEST_RUN` of `to_pod` (a packet entering a
//!    pod, forwarded from another interface), with 0, 100 and 10 000 pods
//!    isolated by a policy each (their rules: a /24 of clients and one /32,
//!    TCP 8080) — the packet's pod among them: a new allowed flow (rules
//!    looked up, the flow remembered), an allowed flow's later packet
//!    (remembered), a denied packet (dropped), against the empty program.
//! 2. In user space, at 1 000 pods in 20 namespaces and 100 policies (each
//!    selecting 10 pods, admitting the 50 pods of one namespace by
//!    selector: 50 000 rule entries): compiling the
//!    whole state, writing it to fresh maps, and a change (one policy
//!    deleted) from compile to maps written — the agent's share of a
//!    change's way to enforcement (the API watch adds its own).
//!
//! Prints Markdown tables (medians of 3 runs).

mod common;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use common::{tcp_packet, test_run, test_run_from};
use lb_common::program_names;
use lb_userspace::datapath::loader::{self, Datapath, XdpChoice};
use lb_userspace::datapath::maps::PinnedMaps;
use lb_userspace::datapath::policy_sync::PolicySync;
use lb_userspace::policy::{Cidr, Isolation, PeerRule, PodPolicy, PolicyState, PortRange, compile};
use lb_userspace::source::{ClusterObjects, Sourced};

const SCALES: [usize; 3] = [0, 100, 10_000];
const NEW_FLOWS: u16 = 4_000;
const REPEAT: u32 = 200_000;
const RUNS: usize = 3;
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const INTRUDER: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);

fn pod(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + 1 + i as u32)
}

/// `pods` pods isolated for ingress, each admitting 10.1.0.0/24 and one
/// host of its own on TCP 8080.
fn isolated(pods: usize) -> PolicyState {
    let mut state = PolicyState::default();
    for i in 0..pods {
        let rule = PeerRule {
            policy: format!("bench/p{i}"),
            peers: vec![
                Cidr::new(CLIENT, 24),
                Cidr::host(Ipv4Addr::from(
                    u32::from(Ipv4Addr::new(10, 3, 0, 0)) + i as u32,
                )),
            ],
            ports: vec![PortRange {
                protocol: 6,
                first: 8080,
                last: 8080,
            }],
        };
        let isolation = Isolation {
            policies: [format!("bench/p{i}")].into(),
            rules: vec![rule],
        };
        let policy = PodPolicy {
            pod: format!("bench/pod{i}"),
            ingress: Some(isolation),
            egress: None,
        };
        state.pods.insert(pod(i), policy);
    }
    state
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (new allowed flow, remembered packet, denied packet) ns into pod 0.
fn per_packet(scale: usize) -> Result<[f64; 3]> {
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/sy-bench-policy-{}",
        std::process::id()
    ));
    let mut datapath = Datapath::load(
        &common::object()?,
        &pin_dir,
        XdpChoice::Off,
        &Default::default(),
    )?;
    let result = (|| -> Result<[f64; 3]> {
        let mut maps = PinnedMaps::open(&pin_dir)?;
        PolicySync::default().apply(&mut maps, &isolated(scale))?;
        let fd = datapath.program_fd(program_names::TO_POD)?;
        let mut first = 0u64;
        for i in 0..NEW_FLOWS {
            let syn = tcp_packet(CLIENT, 10_000 + i, pod(0), 8080, 0x02);
            first += u64::from(test_run_from(fd, &syn, 1, 1)?);
        }
        let ack = tcp_packet(CLIENT, 10_000, pod(0), 8080, 0x10);
        let remembered = test_run_from(fd, &ack, REPEAT, 1)?;
        let denied = test_run_from(fd, &tcp_packet(INTRUDER, 1, pod(0), 8080, 0x02), REPEAT, 1)?;
        Ok([
            first as f64 / f64::from(NEW_FLOWS),
            f64::from(remembered),
            f64::from(denied),
        ])
    })();
    drop(datapath);
    loader::cleanup(&pin_dir)?;
    result
}

/// Pods, namespaces and policies as manifests would give them.
fn cluster_objects(pods: usize, namespaces: usize, policies: usize) -> Result<ClusterObjects> {
    let mut o = ClusterObjects::default();
    fn sourced<K>(object: K) -> Sourced<K> {
        Sourced {
            origin: "bench".into(),
            object,
        }
    }
    for n in 0..namespaces {
        o.namespaces
            .push(sourced(serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("ns{n}"), "labels": {"team": format!("t{n}")}}
            }))?));
    }
    for i in 0..pods {
        o.pods.push(sourced(serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("pod{i}"), "namespace": format!("ns{}", i % namespaces),
                         "labels": {"app": format!("a{}", (i / namespaces) % (pods / namespaces / 10).max(1))}},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": pod(i).to_string()}
        }))?));
    }
    for p in 0..policies {
        o.network_policies.push(sourced(serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("p{p}"), "namespace": format!("ns{}", p % namespaces)},
            "spec": {"podSelector": {"matchLabels": {"app": format!("a{}", (p / namespaces) % 10)}},
                     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", (p + 1) % namespaces)}}}],
                                  "ports": [{"port": "http"}]}]}
        }))?));
    }
    Ok(o)
}

/// (compile ms, first write ms, one policy deleted: compile + write ms).
fn control_plane() -> Result<(f64, f64, f64, usize)> {
    let objects = cluster_objects(1_000, 20, 100)?;
    let started = Instant::now();
    let (state, errors) = compile(&objects);
    let compiled = started.elapsed().as_secs_f64() * 1e3;
    if !errors.is_empty() {
        bail!("compile errors: {:?}", &errors[..errors.len().min(3)]);
    }
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/sy-bench-policy-cp-{}",
        std::process::id()
    ));
    let datapath = Datapath::load(
        &common::object()?,
        &pin_dir,
        XdpChoice::Off,
        &Default::default(),
    )?;
    let result = (|| -> Result<(f64, f64, f64, usize)> {
        let mut maps = PinnedMaps::open(&pin_dir)?;
        let mut sync = PolicySync::default();
        let started = Instant::now();
        sync.apply(&mut maps, &state)?;
        let written = started.elapsed().as_secs_f64() * 1e3;
        let mut changed = objects.clone();
        changed.network_policies.remove(0);
        let started = Instant::now();
        let (next, _) = compile(&changed);
        sync.apply(&mut maps, &next)?;
        let change = started.elapsed().as_secs_f64() * 1e3;
        Ok((compiled, written, change, state.pods.len()))
    })();
    drop(datapath);
    loader::cleanup(&pin_dir)?;
    result
}

fn main() -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (BPF_PROG_TEST_RUN)");
    }
    let empty = common::empty_program(3, 0)?;
    let floor = test_run(empty, &tcp_packet(CLIENT, 1, pod(0), 8080, 0x10), REPEAT)?;
    println!("| isolated pods | new allowed flow | remembered flow | denied packet |");
    println!("| --- | --- | --- | --- |");
    for scale in SCALES {
        let mut cells: [Vec<f64>; 3] = Default::default();
        for run in 0..RUNS {
            let v = per_packet(scale).with_context(|| format!("{scale} pods, run {run}"))?;
            for (cell, v) in cells.iter_mut().zip(v) {
                cell.push(v);
            }
        }
        let [a, b, c] = cells.map(median);
        println!("| {scale} | {a:.0} ns | {b:.0} ns | {c:.0} ns |");
    }
    println!("| empty program (floor) | | {floor} ns | |");
    println!();
    println!(
        "| 1 000 pods, 100 policies | compile | first write | one policy deleted: compile + write | isolated pods |"
    );
    println!("| --- | --- | --- | --- | --- |");
    let runs: Vec<(f64, f64, f64, usize)> =
        (0..RUNS).map(|_| control_plane()).collect::<Result<_>>()?;
    let isolated = runs[0].3;
    let col = |f: fn(&(f64, f64, f64, usize)) -> f64| median(runs.iter().map(f).collect());
    println!(
        "| | {:.1} ms | {:.1} ms | {:.1} ms | {isolated} |",
        col(|r| r.0),
        col(|r| r.1),
        col(|r| r.2)
    );
    Ok(())
}

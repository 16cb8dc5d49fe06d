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

/// Which peers each policy admits, in the control-plane runs.
#[derive(Clone, Copy)]
enum Peers {
    /// The 50 pods of one other namespace.
    OneNamespace,
    /// The pods of a third of the namespaces (333 of 1 000 pods): pods ×
    /// peers is 333 000, more than `policy_rules` holds, unless pods
    /// under the same policies share their rules.
    AThird,
}

/// Pods, namespaces and policies as manifests would give them.
fn cluster_objects(
    pods: usize,
    namespaces: usize,
    policies: usize,
    peers: Peers,
) -> Result<ClusterObjects> {
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
                "metadata": {"name": format!("ns{n}"),
                             "labels": {"team": format!("t{n}"), "third": format!("g{}", n % 3)}}
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
        let from = match peers {
            Peers::OneNamespace => {
                serde_json::json!({"team": format!("t{}", (p + 1) % namespaces)})
            }
            Peers::AThird => serde_json::json!({"third": format!("g{}", p % 3)}),
        };
        o.network_policies.push(sourced(serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("p{p}"), "namespace": format!("ns{}", p % namespaces)},
            "spec": {"podSelector": {"matchLabels": {"app": format!("a{}", (p / namespaces) % 10)}},
                     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": from}}],
                                  "ports": [{"port": "http"}]}]}
        }))?));
    }
    Ok(o)
}

/// One control-plane run.
struct ControlPlane {
    compile_ms: f64,
    first_write_ms: f64,
    change_ms: f64,
    isolated: usize,
    rule_entries: usize,
}

fn control_plane(peers: Peers) -> Result<ControlPlane> {
    let objects = cluster_objects(1_000, 20, 100, peers)?;
    let started = Instant::now();
    let (state, errors) = compile(&objects);
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
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
    let result = (|| -> Result<ControlPlane> {
        let mut maps = PinnedMaps::open(&pin_dir)?;
        let mut sync = PolicySync::default();
        let started = Instant::now();
        sync.apply(&mut maps, &state)?;
        let first_write_ms = started.elapsed().as_secs_f64() * 1e3;
        let rule_entries = maps.policy_rules.iter().filter(Result::is_ok).count();
        let mut changed = objects.clone();
        changed.network_policies.remove(0);
        let started = Instant::now();
        let (next, _) = compile(&changed);
        sync.apply(&mut maps, &next)?;
        let change_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(ControlPlane {
            compile_ms,
            first_write_ms,
            change_ms,
            isolated: state.pods.len(),
            rule_entries,
        })
    })();
    drop(datapath);
    loader::cleanup(&pin_dir)?;
    result
}

/// The control-plane table: both peer layouts, median of `RUNS`.
fn control_plane_table() -> Result<()> {
    println!(
        "| 1 000 pods, 100 policies, each admitting | compile | first write | one policy deleted: compile + write | isolated pods | rule entries |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for (what, peers) in [
        ("one namespace (50 pods)", Peers::OneNamespace),
        ("a third of the pods (333)", Peers::AThird),
    ] {
        let runs: Vec<ControlPlane> = (0..RUNS)
            .map(|_| control_plane(peers))
            .collect::<Result<_>>()?;
        let col = |f: fn(&ControlPlane) -> f64| median(runs.iter().map(f).collect());
        println!(
            "| {what} | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} |",
            col(|r| r.compile_ms),
            col(|r| r.first_write_ms),
            col(|r| r.change_ms),
            runs[0].isolated,
            runs[0].rule_entries,
        );
    }
    Ok(())
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
    control_plane_table()
}

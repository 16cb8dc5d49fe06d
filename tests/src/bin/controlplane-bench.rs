//! `cargo xtask bench controlplane [--services N] [--endpoints-per-service
//! M] [--churn-seconds S]`: the agent against a real kube-apiserver holding
//! N Services (default 10 000) with M endpoints each (default 10, one
//! EndpointSlice per Service): time to list and program everything (full
//! sync), the agent's memory and the API server's, and the propagation
//! delay of EndpointSlice changes written at 10 per second for S seconds
//! (default 30; API write → maps, stamped at the write). Prints Markdown.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use switchyard_tests::apiserver::{ApiServer, TRIGGER_TIME_PLACEHOLDER};
use switchyard_tests::cluster::control_plane_ip;
use switchyard_tests::measure::percentile;
use switchyard_tests::scale::{Fillers, rss_mib};
use switchyard_tests::{AgentOptions, AgentProcess, AgentSource, MultiNode, cleanup_stale, wait};

const NAMESPACE: &str = "scale";
/// Steady churn: EndpointSlice changes per second.
const CHANGES_PER_SECOND: u64 = 10;
/// Beyond the default Service range's 65 534 addresses, a /12 (the
/// largest kube-apiserver takes) clear of the fillers' endpoints.
const LARGE_SERVICE_CIDR: &str = "10.64.0.0/12";

/// The size asked for on the command line.
struct Scale {
    services: usize,
    endpoints_per_service: usize,
    churn_seconds: u64,
}

impl Scale {
    fn from_args() -> Result<Self> {
        let mut scale = Scale {
            services: 10_000,
            endpoints_per_service: 10,
            churn_seconds: 30,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().with_context(|| format!("{flag} needs a value"))?;
            let n: usize = value
                .parse()
                .with_context(|| format!("{flag} {value:?}: not a number"))?;
            match flag.as_str() {
                "--services" => scale.services = n,
                "--endpoints-per-service" => scale.endpoints_per_service = n,
                "--churn-seconds" => scale.churn_seconds = n as u64,
                other => anyhow::bail!("unknown argument {other:?}"),
            }
        }
        Ok(scale)
    }
}

impl Scale {
    /// The agent's flags: its node, and maps with room for this size (one
    /// services entry per frontend and per backend slot, one backends
    /// entry per address; a quarter more for the churn's new addresses).
    fn agent_args(&self, node: String) -> Vec<String> {
        let slots = self.services * (1 + self.endpoints_per_service);
        let addresses = self.services * self.endpoints_per_service;
        // Never below the agent's defaults (2^20 and 2^18 entries).
        let room = |n: usize, default: usize| (n + n / 4).max(default).to_string();
        vec![
            "--node-name".into(),
            node,
            "--map-size-services".into(),
            room(slots, 1 << 20),
            "--map-size-backends".into(),
            room(addresses, 1 << 18),
        ]
    }
}

fn logged(log: &str, key: &str) -> Vec<f64> {
    log.lines()
        .filter(|l| l.contains("maps synced"))
        .filter_map(|l| {
            l.split(&format!("{key}="))
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

fn main() -> Result<()> {
    let scale = Scale::from_args()?;
    let (services, fillers) = (
        scale.services,
        Fillers {
            namespace: NAMESPACE,
            endpoints_per_service: scale.endpoints_per_service,
        },
    );
    if services > 60_000 {
        // SAFETY: set before any thread starts.
        unsafe { std::env::set_var("SWITCHYARD_TEST_SERVICE_CIDR", LARGE_SERVICE_CIDR) };
    }
    cleanup_stale();
    let mut cluster = MultiNode::new(1)?;
    let cp = cluster.add_control_plane()?.ns().to_string();
    let api = ApiServer::start_in(&cp, control_plane_ip())?;
    api.kubectl(&["create", "namespace", NAMESPACE])?;
    let endpoints = services * scale.endpoints_per_service;
    eprintln!("creating {services} services and {endpoints} endpoints");
    let populate_time = fillers.create(&api, 0..services)?;
    eprintln!("created in {populate_time:?}");

    let node = &cluster.nodes[0];
    let started = Instant::now();
    let agent = AgentProcess::start_within(
        AgentOptions {
            node_ns: node.topo.node_ns().to_string(),
            pin_dir: format!("/sys/fs/bpf/{}", node.topo.id()).into(),
            source: AgentSource::Kubeconfig(api.kubeconfig()),
            pod_ifaces: node.topo.pod_iface_glob(),
            extra_args: scale.agent_args(node.name()),
        },
        Duration::from_secs(600),
    )?;
    let startup = started.elapsed();
    let pid = agent.pid().context("agent pid")?;
    let first_sync_us = logged(&agent.log_text(), "elapsed_us")
        .first()
        .copied()
        .unwrap_or(f64::NAN);
    let rss_after_sync = rss_mib(pid)?;
    let frontends = agent
        .services_json()?
        .as_array()
        .map_or(0, |rows| rows.len());

    // Steady churn: slice changes at a fixed rate, not waiting for each;
    // then until every one is in the maps.
    let writer = api.slice_writer()?;
    let before = logged(&agent.log_text(), "propagation_ms").len();
    let changes = (scale.churn_seconds * CHANGES_PER_SECOND) as usize;
    let churn_started = Instant::now();
    for n in 0..changes {
        let due = Duration::from_millis(n as u64 * 1000 / CHANGES_PER_SECOND);
        if let Some(wait) = due.checked_sub(churn_started.elapsed()) {
            std::thread::sleep(wait);
        }
        let service = (n * 9973) % services;
        let mut slice = fillers.slice_json(service, 1 + n % 2);
        slice["metadata"]["annotations"] = serde_json::json!({
            "endpoints.kubernetes.io/last-change-trigger-time": TRIGGER_TIME_PLACEHOLDER
        });
        writer.apply(&serde_yaml::to_string(&slice)?)?;
    }
    let churn_took = churn_started.elapsed();
    // Two changes in one batch log one delay (the older's): wait until
    // every change is in, or nothing more comes for 3 s.
    let mut seen = (0, Instant::now());
    wait::until(
        "every change in the maps",
        Duration::from_secs(120),
        Duration::from_millis(50),
        || {
            let n = logged(&agent.log_text(), "propagation_ms").len();
            if n != seen.0 {
                seen = (n, Instant::now());
            }
            Ok(n >= before + changes || seen.1.elapsed() > Duration::from_secs(3))
        },
    )?;
    let log = agent.log_text();
    // Kept for a post-mortem of slow batches (which batch, what else ran).
    let kept = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/controlplane-bench-agent.log");
    std::fs::write(&kept, &log).with_context(|| format!("writing {}", kept.display()))?;
    eprintln!("agent log: {}", kept.display());
    let mut delays: Vec<f64> = logged(&log, "propagation_ms")
        .into_iter()
        .skip(before)
        .collect();
    delays.sort_by(f64::total_cmp);
    let mut syncs: Vec<f64> = logged(&log, "elapsed_us").into_iter().skip(1).collect();
    syncs.sort_by(f64::total_cmp);
    let rss_end = rss_mib(pid)?;
    let api_rss: Vec<String> = api
        .pids()
        .into_iter()
        .map(|(name, pid)| format!("{name} {:.0} MiB", rss_mib(pid).unwrap_or(f64::NAN)))
        .collect();
    // Where the memory went, as the agent logged it at each startup stage.
    let rss_stages: Vec<String> = [
        "agent starting",
        "complete state received",
        "initial sync complete",
    ]
    .iter()
    .map(|stage| {
        let mib = log
            .lines()
            .find(|l| l.contains(stage))
            .and_then(|l| l.split("rss_mib=").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or("?");
        format!("{stage} {mib}")
    })
    .collect();

    let mut table = BTreeMap::new();
    table.insert(
        "1 objects created (API, 32 in flight)",
        format!("{populate_time:.1?}"),
    );
    table.insert(
        "2 agent start → everything programmed (list + full sync + attach)",
        format!("{startup:.2?}"),
    );
    table.insert(
        "3 full sync (map writes) of the first batch",
        format!("{:.0} ms", first_sync_us / 1000.0),
    );
    table.insert("4 frontends programmed", frontends.to_string());
    table.insert(
        "5 propagation, API write → maps, slice changes at 10/s",
        format!(
            "{changes} changes in {churn_took:.1?} ({} batches): median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            delays.len(),
            percentile(&delays, 50.0),
            percentile(&delays, 99.0),
            delays.last().copied().unwrap_or(f64::NAN)
        ),
    );
    table.insert(
        "6 incremental sync per change (map writes)",
        format!(
            "median {:.0} µs, p99 {:.0} µs",
            percentile(&syncs, 50.0),
            percentile(&syncs, 99.0)
        ),
    );
    table.insert(
        "7 agent RSS",
        format!("{rss_after_sync:.0} MiB after the full sync, {rss_end:.0} MiB at the end"),
    );
    table.insert("8 agent RSS by startup stage (MiB)", rss_stages.join(", "));
    table.insert("9 API server and etcd RSS at the end", api_rss.join(", "));
    println!("| {services} services, {endpoints} endpoints | |");
    println!("| --- | --- |");
    for (k, v) in table {
        println!("| {} | {v} |", &k[2..]);
    }
    drop(agent);
    drop(api);
    drop(cluster);
    Ok(())
}

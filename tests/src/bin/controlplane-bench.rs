//! `cargo xtask bench controlplane`: the agent against a real kube-apiserver
//! holding 10 000 Services with 100 000 endpoints (one EndpointSlice of 10
//! each): time to list and program everything (full sync), the agent's
//! memory, and the propagation delay of single EndpointSlice changes at that
//! size (API write → maps, stamped at the write). Prints Markdown.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use switchyard_tests::apiserver::{ApiServer, TRIGGER_TIME_PLACEHOLDER};
use switchyard_tests::cluster::control_plane_ip;
use switchyard_tests::measure::percentile;
use switchyard_tests::scale::{Fillers, rss_mib};
use switchyard_tests::{AgentOptions, AgentProcess, AgentSource, MultiNode, cleanup_stale, wait};

const SERVICES: usize = 10_000;
const ENDPOINTS_PER_SERVICE: usize = 10;
const CHANGES: usize = 100;
const NAMESPACE: &str = "scale";

const FILLERS: Fillers = Fillers {
    namespace: NAMESPACE,
    endpoints_per_service: ENDPOINTS_PER_SERVICE,
};

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
    cleanup_stale();
    let mut cluster = MultiNode::new(1)?;
    let cp = cluster.add_control_plane()?.ns().to_string();
    let api = ApiServer::start_in(&cp, control_plane_ip())?;
    api.kubectl(&["create", "namespace", NAMESPACE])?;
    eprintln!(
        "creating {SERVICES} services and {} endpoints",
        SERVICES * ENDPOINTS_PER_SERVICE
    );
    let populate_time = FILLERS.create(&api, 0..SERVICES)?;
    eprintln!("created in {populate_time:?}");

    let node = &cluster.nodes[0];
    let started = Instant::now();
    let agent = AgentProcess::start_within(
        AgentOptions {
            node_ns: node.topo.node_ns().to_string(),
            pin_dir: format!("/sys/fs/bpf/{}", node.topo.id()).into(),
            source: AgentSource::Kubeconfig(api.kubeconfig()),
            pod_ifaces: node.topo.pod_iface_glob(),
            extra_args: vec!["--node-name".into(), node.name()],
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

    // Single slice changes, one at a time, each waited for in the log.
    let writer = api.slice_writer()?;
    let before = logged(&agent.log_text(), "propagation_ms").len();
    for n in 0..CHANGES {
        let service = (n * 97) % SERVICES;
        let mut slice = FILLERS.slice_json(service, 1 + n % 2);
        slice["metadata"]["annotations"] = serde_json::json!({
            "endpoints.kubernetes.io/last-change-trigger-time": TRIGGER_TIME_PLACEHOLDER
        });
        writer.apply(&serde_yaml::to_string(&slice)?)?;
        wait::until(
            "the change in the maps",
            Duration::from_secs(30),
            Duration::from_millis(5),
            || Ok(logged(&agent.log_text(), "propagation_ms").len() > before + n),
        )?;
    }
    let log = agent.log_text();
    let mut delays: Vec<f64> = logged(&log, "propagation_ms")
        .into_iter()
        .skip(before)
        .collect();
    delays.sort_by(f64::total_cmp);
    let mut syncs: Vec<f64> = logged(&log, "elapsed_us").into_iter().skip(1).collect();
    syncs.sort_by(f64::total_cmp);
    let rss_end = rss_mib(pid)?;
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
        "5 propagation, API write → maps, 100 single-slice changes",
        format!(
            "median {:.1} ms, p99 {:.1} ms, max {:.1} ms",
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
    println!(
        "| {SERVICES} services, {} endpoints | |",
        SERVICES * ENDPOINTS_PER_SERVICE
    );
    println!("| --- | --- |");
    for (k, v) in table {
        println!("| {} | {v} |", &k[2..]);
    }
    drop(agent);
    drop(api);
    drop(cluster);
    Ok(())
}

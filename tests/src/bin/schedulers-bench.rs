//! `cargo xtask bench schedulers`: one slow backend among four (each answer
//! waits 20 ms), steady load of new connections from 8 clients, for each
//! scheduler (`--algorithm`): requests per second, latency percentiles and
//! each backend's share. Least connection should keep the slow backend's
//! share, and so the tail, down.

use std::time::Duration;

use anyhow::Result;
use switchyard_tests::cleanup_stale;
use switchyard_tests::slow_backend::{SLOW, SlowBackendCluster, slow_share};

const PERIOD: Duration = Duration::from_secs(10);
/// (workers, offered requests per second): a fixed offered load all
/// schedulers can carry, then as fast as 8 clients get answers (on this
/// 2-core machine that saturates the CPUs, so latency includes queueing).
const LOADS: [(usize, Option<f64>); 2] = [(32, Some(500.0)), (8, None)];
const ALGORITHMS: [&str; 4] = ["random", "maglev", "round-robin", "least-connection"];

fn main() -> Result<()> {
    cleanup_stale();
    println!(
        "| load | algorithm | requests/s | p50 ms | p90 ms | p99 ms | p99.9 ms | b0 / b1 / b2 / {SLOW} (slow) | failed |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for algorithm in ALGORITHMS {
        let shown = (algorithm != "random").then_some(algorithm);
        let c = SlowBackendCluster::start(None, shown, &["--algorithm", algorithm])?;
        for (workers, rate) in LOADS {
            report(&c, algorithm, workers, rate)?;
        }
        drop(c);
    }
    Ok(())
}

fn report(
    c: &SlowBackendCluster,
    algorithm: &str,
    workers: usize,
    rate: Option<f64>,
) -> Result<()> {
    let label = match rate {
        Some(r) => format!("{r:.0}/s offered, {workers} clients"),
        None => format!("closed loop, {workers} clients"),
    };
    let load = c.load(workers, rate, PERIOD)?;
    let per = load.per_backend();
    let share = |b: &str| {
        100.0 * per.get(b).copied().unwrap_or(0) as f64 / load.requests.len().max(1) as f64
    };
    println!(
        "| {label} | {algorithm} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} / {:.1} / {:.1} / {:.1} % | {} |",
        load.requests.len() as f64 / load.elapsed.as_secs_f64(),
        load.latency_ms(50.0),
        load.latency_ms(90.0),
        load.latency_ms(99.0),
        load.latency_ms(99.9),
        share("b0"),
        share("b1"),
        share("b2"),
        100.0 * slow_share(&load),
        load.failed
    );
    Ok(())
}

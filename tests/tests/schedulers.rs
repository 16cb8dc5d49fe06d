//! Round-robin and least-connection Services end to end, as an operator
//! would try them: the real agent, four backend pods of which one is slow
//! (20 ms per answer), a client pod making new connections, the scheduler
//! chosen per Service by the `switchyard.io/lb-algorithm` annotation while
//! the agent's default stays `random`. Needs root.

use std::net::SocketAddrV4;
use std::time::Duration;

use anyhow::Result;
use switchyard_tests::measure::tcp_once;
use switchyard_tests::slow_backend::{BACKENDS, SlowBackendCluster, VIP, slow_share};
use switchyard_tests::wait;

/// Sweeps far apart: the open-flow counts checked are the datapath's own.
const AGENT_ARGS: &[&str] = &["--ct-gc-interval", "600"];

fn load(c: &SlowBackendCluster) -> Result<switchyard_tests::measure::RequestLoad> {
    c.load(8, None, Duration::from_secs(3))
}

/// Connections from one client process on one CPU (the datapath keeps a
/// round-robin cursor per CPU) go round the backends in a fixed order.
#[test]
fn round_robin_gives_each_backend_its_turn() -> Result<()> {
    let c = SlowBackendCluster::start(Some("round-robin"), Some("round-robin"), AGENT_ARGS)?;
    let to = SocketAddrV4::new(VIP, 80);
    let turns = c
        .topo
        .pod("client")
        .in_netns(move || -> Result<Vec<String>> {
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            unsafe { libc::CPU_SET(0, &mut set) };
            let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
            anyhow::ensure!(
                rc == 0,
                "pinning to CPU 0: {}",
                std::io::Error::last_os_error()
            );
            (0..16)
                .map(|_| tcp_once(to, Duration::from_secs(2)))
                .collect()
        })??;
    let first: Vec<&String> = turns.iter().take(4).collect();
    let distinct: std::collections::BTreeSet<&&String> = first.iter().collect();
    assert_eq!(
        distinct.len(),
        4,
        "one round reaches every backend: {turns:?}"
    );
    for (i, backend) in turns.iter().enumerate() {
        assert_eq!(*backend, turns[i % 4], "turn {i}: {turns:?}");
    }
    Ok(())
}

/// Least connection keeps new connections off the backend that holds
/// them longest; random sends it a quarter. Every connection the client
/// closed is counted out at once.
#[test]
fn least_connection_keeps_new_connections_off_a_slow_backend() -> Result<()> {
    let c = SlowBackendCluster::start(
        Some("least-connection"),
        Some("least-connection"),
        AGENT_ARGS,
    )?;
    let least = load(&c)?;
    let share = slow_share(&least);
    eprintln!(
        "least-connection: {} requests {:?}, p50 {:.2} ms, p99 {:.2} ms",
        least.requests.len(),
        least.per_backend(),
        least.latency_ms(50.0),
        least.latency_ms(99.0)
    );
    assert!(share < 0.05, "the slow backend took {:.1} %", share * 100.0);
    let open = c.open_flows()?;
    assert_eq!(open.len(), BACKENDS as usize, "{open:?}");
    assert!(
        open.values().all(|n| *n == 0),
        "closed flows still counted: {open:?}"
    );

    // The same load with the default (random): the slow backend gets its
    // quarter, and the tail shows it.
    c.annotate(None, None)?;
    let random = load(&c)?;
    eprintln!(
        "random: {} requests {:?}, p50 {:.2} ms, p99 {:.2} ms",
        random.requests.len(),
        random.per_backend(),
        random.latency_ms(50.0),
        random.latency_ms(99.0)
    );
    assert!(slow_share(&random) > 0.15, "{:?}", random.per_backend());
    assert!(random.latency_ms(99.0) > least.latency_ms(99.0));

    // A misspelt annotation: reported, and the default applies.
    c.annotate(Some("leastconn"), None)?;
    wait::until(
        "the annotation's error in the log",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            Ok(c.agent
                .log_text()
                .contains("unknown algorithm \"leastconn\""))
        },
    )?;
    Ok(())
}

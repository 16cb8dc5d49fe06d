//! Endpoint changes while conntrack is swept (`cargo xtask bench sweep`;
//! needs root). With 200 000 conntrack entries (100 000 live connections) a
//! sweep walks the whole table; this measures how long one takes, and how
//! long applying one service's endpoint change takes (`MapSync::apply_scoped`,
//! what the agent does per change) with no sweep running and with the
//! sweeper thread sweeping back to back. Before the sweeper had its own
//! thread, a change that arrived during a sweep waited for the rest of it:
//! up to a whole sweep. Prints Markdown.

mod common;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lb_common::{ConnEntry, FlowKey, conn_kind};
use lb_userspace::datapath::{
    addr::{ip_be, port_be},
    admission::Gate,
    capacity::Capacity,
    conntrack::{self, Timeouts},
    loader::{self, Datapath, XdpChoice},
    maps::PinnedMaps,
    sync::{MapSync, Scope},
};
use lb_userspace::metrics::Metrics;
use lb_userspace::model::{
    BackendAddr, DesiredState, Endpoint, Frontend, Protocol, ServicePort, ServicePortName,
};
use lb_userspace::sweeper::{SweepConfig, Sweeper};

const SERVICES: usize = 1_000;
const BACKENDS: usize = 10;
const CONNECTIONS: u32 = 100_000;
const CHANGES: usize = 200;

fn service(i: usize, shift: usize) -> ServicePort {
    let frontend = Frontend::new(
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + i as u32),
        80,
        Protocol::Tcp,
    );
    let name = ServicePortName {
        namespace: "bench".into(),
        name: format!("svc-{i}"),
        port_name: String::new(),
    };
    let endpoints = (0..BACKENDS)
        .map(|b| {
            let offset = ((i * BACKENDS + b + shift) % 60_000) as u32;
            Endpoint::ready(BackendAddr {
                ip: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + 1 + offset),
                port: 8080,
                protocol: Protocol::Tcp,
            })
        })
        .collect();
    ServicePort::cluster_ip(name, frontend, endpoints)
}

/// 100 000 established connections: forward and reply entries, fresh.
fn fill_conntrack(maps: &mut PinnedMaps) -> Result<()> {
    let now = conntrack::monotonic_ns();
    for n in 0..CONNECTIONS {
        let key = FlowKey {
            src_ip_be: ip_be(Ipv4Addr::from(
                u32::from(Ipv4Addr::new(10, 1, 0, 0)) + n / 50_000,
            )),
            dst_ip_be: ip_be(Ipv4Addr::new(10, 96, 0, 1)),
            src_port_be: port_be((1024 + n % 50_000) as u16),
            dst_port_be: port_be(80),
            proto: 6,
            _pad: [0; 3],
        };
        let forward = ConnEntry {
            nat_ip_be: ip_be(Ipv4Addr::new(10, 244, 0, 1)),
            nat_port_be: port_be(8080),
            kind: conn_kind::FORWARD,
            tcp_flags: lb_common::tcp_seen::ACK,
            created_ns: now,
            last_seen_ns: now,
            ..Default::default()
        };
        let reply = ConnEntry {
            kind: conn_kind::REPLY,
            nat_ip_be: key.dst_ip_be,
            nat_port_be: key.dst_port_be,
            ..forward
        };
        maps.conntrack.insert(key.reply_key(&forward), reply, 0)?;
        maps.conntrack.insert(key, forward, 0)?;
    }
    Ok(())
}

/// Applies `CHANGES` endpoint changes (one service each); their durations.
fn changes(
    sync: &mut MapSync<PinnedMaps>,
    desired: &mut DesiredState,
    round: usize,
) -> Vec<Duration> {
    (0..CHANGES)
        .map(|c| {
            let i = (round * CHANGES + c) % SERVICES;
            let changed = service(i, round + 1);
            let key = changed.frontend;
            desired.services.insert(key, changed);
            let started = Instant::now();
            let report = sync.apply_scoped(desired, Scope::Only(&BTreeSet::from([key])));
            let took = started.elapsed();
            assert!(report.errors.is_empty(), "{:?}", report.errors);
            took
        })
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    let p = |q: f64| ms(v[((v.len() - 1) as f64 * q) as usize]);
    format!("{:.2} ms | {:.2} ms | {:.2} ms", p(0.5), p(0.99), p(1.0))
}

fn main() -> Result<()> {
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sy-sweep-bench-{}", std::process::id()));
    let object = common::object()?;
    let capacity = Capacity {
        conntrack: 524_288,
        ..Capacity::default()
    };
    let result = (|| -> Result<()> {
        let _datapath = Datapath::load(&object, &pin_dir, XdpChoice::Off, &capacity)?;
        let mut sync = MapSync::adopt(PinnedMaps::open(&pin_dir)?)?;
        let mut desired = DesiredState::default();
        for i in 0..SERVICES {
            let s = service(i, 0);
            desired.services.insert(s.frontend, s);
        }
        sync.apply(&desired);
        fill_conntrack(sync.maps_mut()).context("filling conntrack")?;

        let mut sweeps = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            let sweep = conntrack::collect_garbage(
                sync.maps_mut(),
                conntrack::monotonic_ns(),
                &Timeouts::default(),
            )?;
            sweeps.push(started.elapsed());
            assert_eq!(sweep.remaining, 2 * CONNECTIONS as usize);
        }
        let quiet = changes(&mut sync, &mut desired, 0);
        let sweeper = Sweeper::start(
            &pin_dir,
            SweepConfig {
                interval: Duration::ZERO,
                timeouts: Timeouts::default(),
                gate: Gate::new(0, capacity.conntrack),
                capacity,
                metrics: Arc::new(Metrics::new(pin_dir.clone())),
            },
        )?;
        let during = changes(&mut sync, &mut desired, 1);
        drop(sweeper);

        sweeps.sort();
        println!(
            "| {} conntrack entries ({} connections), {SERVICES} services × {BACKENDS} backends | median | p99 | max |",
            2 * CONNECTIONS,
            CONNECTIONS
        );
        println!("| --- | --- | --- | --- |");
        println!(
            "| one sweep (`collect_garbage`, 3 runs) | {:.0} ms | — | {:.0} ms |",
            ms(sweeps[1]),
            ms(sweeps[2])
        );
        println!(
            "| one endpoint change, no sweep running ({CHANGES}) | {} |",
            summary(quiet)
        );
        println!(
            "| one endpoint change, sweeper thread sweeping back to back ({CHANGES}) | {} |",
            summary(during)
        );
        println!(
            "| one endpoint change arriving during a sweep on the agent's loop (before) | {:.0} ms on average, up to {:.0} ms (waits for the rest of the sweep) | | |",
            ms(sweeps[1]) / 2.0,
            ms(sweeps[2])
        );
        Ok(())
    })();
    let _ = loader::cleanup(&pin_dir);
    result
}

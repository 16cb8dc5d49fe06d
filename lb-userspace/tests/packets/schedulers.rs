//! Round-robin and least-connection frontends, as an operator would check
//! them: which backend each new connection reaches, and what the datapath
//! counts as each backend's open flows.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use std::path::PathBuf;

use lb_userspace::datapath::backend_load;
use lb_userspace::datapath::capacity::Capacity;
use lb_userspace::datapath::conntrack::{Timeouts, collect_garbage, monotonic_ns};
use lb_userspace::datapath::loader::{self, Datapath, XdpChoice};
use lb_userspace::datapath::maps::PinnedMaps;
use lb_userspace::datapath::sync::MapSync;
use lb_userspace::datapath::sync::Selection;
use lb_userspace::model::Algorithm;
use lb_userspace::model::{DesiredState, Protocol};

use crate::build::*;
use crate::fixture::*;

/// Runs the calling thread on `cpu` only: the round-robin cursors are per
/// CPU, and BPF_PROG_TEST_RUN runs the program on the caller's CPU.
fn pin_to_cpu(cpu: usize) {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "sched_setaffinity({cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The backend a new connection from `port` to VIP:80 reaches.
fn connect(f: &mut Fixture, port: u16) -> Ipv4Addr {
    let (verdict, out) = f.run_from_pod(&Pkt::tcp(CLIENT, port, VIP, 80, SYN).build());
    assert_eq!(verdict, TC_ACT_OK, "SYN from port {port}");
    parse_checked(&out).dst
}

/// The client closes its connection from `port`.
fn close(f: &mut Fixture, port: u16) {
    let fin = Pkt::tcp(CLIENT, port, VIP, 80, FIN | ACK).build();
    let (verdict, _) = f.run_from_pod(&fin);
    assert_eq!(verdict, TC_ACT_OK, "FIN from port {port}");
}

/// Open flows per backend address, as `backend_flows` holds them.
fn open_flows(f: &Fixture) -> BTreeMap<Ipv4Addr, i32> {
    let ids = backend_ids(f);
    BACKENDS
        .iter()
        .map(|ip| (*ip, f.maps.backend_flows.get(&ids[ip], 0).unwrap_or(-999)))
        .collect()
}

/// The IDs of the TCP backends (each address also has a UDP one).
fn backend_ids(f: &Fixture) -> HashMap<Ipv4Addr, u32> {
    f.maps
        .backends
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, b)| b.proto == lb_common::PROTO_TCP)
        .map(|(id, b)| (Ipv4Addr::from(u32::from_be(b.ip_be)), id))
        .collect()
}

fn counts(of: &[Ipv4Addr]) -> BTreeMap<Ipv4Addr, usize> {
    let mut n = BTreeMap::new();
    for ip in of {
        *n.entry(*ip).or_default() += 1;
    }
    n
}

#[test]
fn round_robin_gives_each_backend_its_turn_on_every_cpu() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut f = fixture_with(Selection::new(Algorithm::RoundRobin, 251));
    let mut all = Vec::new();
    for (round, cpu) in [0, cpus - 1].into_iter().enumerate() {
        pin_to_cpu(cpu);
        let base = 40000 + 1000 * round as u16;
        let seq: Vec<Ipv4Addr> = (0..30).map(|i| connect(&mut f, base + i)).collect();
        // Each CPU's turns go round the three backends in a fixed order.
        for (i, ip) in seq.iter().enumerate() {
            assert_eq!(*ip, seq[i % 3], "CPU {cpu}, connection {i}: {seq:?}");
        }
        assert_eq!(counts(&seq[..3]).len(), 3, "CPU {cpu}: {seq:?}");
        all.extend(seq);
    }
    let n = counts(&all);
    assert!(n.values().all(|c| *c == 20), "{n:?}");
}

#[test]
fn least_connection_sends_new_flows_where_fewest_are_open() {
    let mut f = fixture_with(Selection::new(Algorithm::LeastConnection, 251));
    // From nothing, every new flow goes to a least-loaded backend: the
    // loads never differ by more than one.
    let mut chosen: Vec<(u16, Ipv4Addr)> = Vec::new();
    for port in 41000..41030 {
        chosen.push((port, connect(&mut f, port)));
        let loads = open_flows(&f);
        let (min, max) = (loads.values().min(), loads.values().max());
        assert!(
            max.zip(min).is_some_and(|(a, b)| a - b <= 1),
            "after port {port}: {loads:?}"
        );
    }
    assert!(open_flows(&f).values().all(|n| *n == 10));

    // The client closes five flows to backend 0 (and retransmits one FIN:
    // counted once): the next five new flows all go there.
    let favoured = BACKENDS[0];
    let mine: Vec<u16> = chosen
        .iter()
        .filter(|(_, ip)| *ip == favoured)
        .map(|(p, _)| *p)
        .collect();
    for port in &mine[..5] {
        close(&mut f, *port);
    }
    close(&mut f, mine[0]);
    assert_eq!(open_flows(&f)[&favoured], 5);
    for port in 42000..42005 {
        assert_eq!(
            connect(&mut f, port),
            favoured,
            "port {port}: {:?}",
            open_flows(&f)
        );
    }

    // A backend holding many flows (slow to answer) gets none of the next.
    let ids = backend_ids(&f);
    let slow = BACKENDS[1];
    f.maps
        .backend_flows
        .insert(ids[&slow], 100, 0)
        .expect("load");
    let next: Vec<Ipv4Addr> = (43000..43030).map(|port| connect(&mut f, port)).collect();
    assert!(!next.contains(&slow), "{:?}", counts(&next));
    assert_eq!(counts(&next).len(), 2, "{:?}", counts(&next));
}

/// While one backend is busy the others share the new flows evenly: the
/// first of equals in scan order would give the slot after the busy one
/// every turn that starts at the busy one (two thirds here).
#[test]
fn least_connection_shares_evenly_among_equally_loaded_backends() {
    let mut f = fixture_with(Selection::new(Algorithm::LeastConnection, 251));
    let ids = backend_ids(&f);
    let busy = BACKENDS[0];
    f.maps
        .backend_flows
        .insert(ids[&busy], 1000, 0)
        .expect("load");
    let mut chosen = Vec::new();
    for port in 45000..45600 {
        chosen.push(connect(&mut f, port));
        close(&mut f, port);
    }
    let n = counts(&chosen);
    assert!(!n.contains_key(&busy), "{n:?}");
    for ip in &BACKENDS[1..] {
        assert!((240..=360).contains(&n[ip]), "uneven among equals: {n:?}");
    }
}

/// The sweep takes out the flows it removed that the datapath still
/// counted (expired without a close), and repairs counts that cannot be
/// right (below zero, missing); a count that is merely behind its
/// snapshot is left alone, so flows opened while the sweep ran are not lost.
#[test]
fn sweeps_take_out_expired_flows_and_repair_impossible_counts() {
    let mut f = fixture_with(Selection::new(Algorithm::LeastConnection, 251));
    let mut by_backend: BTreeMap<Ipv4Addr, Vec<u16>> = BTreeMap::new();
    for port in 44000..44012 {
        by_backend
            .entry(connect(&mut f, port))
            .or_default()
            .push(port);
    }
    let [first, second, third] = BACKENDS;
    close(&mut f, by_backend[&first][0]);
    let ids = backend_ids(&f);
    f.maps
        .backend_flows
        .insert(ids[&second], -5, 0)
        .expect("skew");
    f.maps.backend_flows.remove(&ids[&third]).expect("forget");
    let open = |ip: &Ipv4Addr| by_backend[ip].len() as i32 - i32::from(*ip == first);
    let sweep = |f: &mut Fixture, now: u64| {
        let sweep = collect_garbage(&mut f.maps, now, &Timeouts::default()).expect("sweep");
        backend_load::after_sweep(&mut f.maps, &sweep).expect("after sweep");
    };
    sweep(&mut f, monotonic_ns());
    let want: BTreeMap<Ipv4Addr, i32> = BACKENDS.iter().map(|ip| (*ip, open(ip))).collect();
    assert_eq!(open_flows(&f), want);

    // Two days later every flow has expired: none is counted any more.
    sweep(&mut f, monotonic_ns() + 2 * 86_400 * 1_000_000_000);
    assert!(
        open_flows(&f).values().all(|n| *n == 0),
        "{:?}",
        open_flows(&f)
    );
}

/// Flows opened between a sweep's snapshot and its write keep their
/// count: overwriting with the snapshot's (the first version did) lost
/// them, and their closes then drove counts below zero.
#[test]
fn a_sweep_keeps_the_flows_opened_after_its_snapshot() {
    let mut f = fixture_with(Selection::new(Algorithm::LeastConnection, 251));
    for port in 47000..47006 {
        connect(&mut f, port);
    }
    let sweep = collect_garbage(&mut f.maps, monotonic_ns(), &Timeouts::default()).expect("sweep");
    for port in 47006..47009 {
        connect(&mut f, port);
    }
    backend_load::after_sweep(&mut f.maps, &sweep).expect("after sweep");
    assert_eq!(
        open_flows(&f).values().sum::<i32>(),
        9,
        "{:?}",
        open_flows(&f)
    );
}

/// An operator raising `--map-size-backends` past the compiled 262 144 (a
/// million endpoints) gets every backend programmed: each backend also
/// needs its open-flows entry (`backend_flows`), which must grow with it.
/// Before, it kept its compiled size and every backend past 262 144 was
/// refused with "backend_flows map is full" at each sync and resync.
#[test]
fn backends_past_the_compiled_size_are_programmed_when_the_map_is_raised() {
    const BACKENDS: u32 = 263_000;
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sy-pkt-cap-{}", std::process::id()));
    let capacity = Capacity {
        backends: 300_000,
        services: 300_000,
        ..Capacity::default()
    };
    let datapath =
        Datapath::load(&object(), &pin_dir, XdpChoice::Off, &capacity).unwrap_or_else(|e| {
            let _ = loader::cleanup(&pin_dir);
            panic!("load datapath: {e:?}")
        });
    let result = std::panic::catch_unwind(|| {
        let mut desired = DesiredState::default();
        // Five services of up to 60 000 backends (the per-frontend limit is
        // 65 535), every address distinct.
        let first = u32::from(Ipv4Addr::new(10, 100, 0, 0));
        let all: Vec<Ipv4Addr> = (0..BACKENDS).map(|i| Ipv4Addr::from(first + i)).collect();
        for (i, chunk) in all.chunks(60_000).enumerate() {
            let s = service(
                Ipv4Addr::new(10, 96, 9, i as u8 + 1),
                80,
                Protocol::Tcp,
                chunk,
            );
            desired.services.insert(s.frontend, s);
        }
        let mut sync = MapSync::adopt(PinnedMaps::open(&pin_dir).expect("open maps"))
            .expect("adopt")
            .with_backend_capacity(capacity.backends);
        let report = sync.apply(&desired);
        assert!(
            report.errors.is_empty(),
            "{} errors, first: {:?}",
            report.errors.len(),
            report.errors.first()
        );
    });
    drop(datapath);
    let _ = loader::cleanup(&pin_dir);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

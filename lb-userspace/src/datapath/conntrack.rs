//! Conntrack hygiene from user space: expiring entries by TCP state and
//! idle time, and flushing UDP flows whose backend went away.
//!
//! A connection has two entries (forward and reply); they are judged and
//! removed together, using the most recent activity of either, so a flow
//! that is busy in one direction only keeps both.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use lb_common::{ConnEntry, FlowKey, conn_kind, tcp_seen};

use crate::datapath::addr::{ip_be, port_be};
use crate::model::{BackendAddr, Frontend};

/// How long an idle connection is kept, by state (kube-proxy and
/// nf_conntrack-like defaults).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// TCP that has exchanged data (ACK seen, no FIN/RST).
    pub tcp_established: Duration,
    /// TCP with only a SYN so far.
    pub tcp_syn: Duration,
    /// TCP closed: FIN from both sides, or RST from either.
    pub tcp_closing: Duration,
    /// TCP half-closed: FIN from one side only. The other side may go on
    /// sending for a long time (a client that shut down its writes and
    /// waits for a long answer); kube-proxy sets netfilter's CLOSE_WAIT
    /// timeout to 1 h for this.
    pub tcp_close_wait: Duration,
    pub udp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_established: Duration::from_secs(24 * 3600),
            tcp_syn: Duration::from_secs(60),
            tcp_closing: Duration::from_secs(10),
            tcp_close_wait: Duration::from_secs(3600),
            udp: Duration::from_secs(120),
        }
    }
}

fn is_forward(e: &ConnEntry) -> bool {
    conn_kind::is_forward(e.kind)
}

/// The key of the reply entry that belongs with a forward entry (the
/// pairing the datapath uses, from lb-common).
pub fn reply_key(forward_key: &FlowKey, forward: &ConnEntry) -> FlowKey {
    forward_key.reply_key(forward)
}

/// Whether a connection, given its entries, has been idle too long.
pub fn expired(
    proto: u8,
    forward: &ConnEntry,
    reply: Option<&ConnEntry>,
    now_ns: u64,
    t: &Timeouts,
) -> bool {
    let last = reply.map_or(forward.last_seen_ns, |r| {
        r.last_seen_ns.max(forward.last_seen_ns)
    });
    let idle = Duration::from_nanos(now_ns.saturating_sub(last));
    let (client, backend) = (forward.tcp_flags, reply.map_or(0, |r| r.tcp_flags));
    let flags = client | backend;
    let limit = if proto == lb_common::PROTO_TCP {
        if flags & tcp_seen::RST != 0 || client & backend & tcp_seen::FIN != 0 {
            t.tcp_closing
        } else if flags & tcp_seen::FIN != 0 {
            t.tcp_close_wait
        } else if reply.is_some_and(|r| r.tcp_flags & tcp_seen::ACK != 0) {
            t.tcp_established
        } else {
            t.tcp_syn
        }
    } else {
        t.udp
    };
    idle > limit
}

/// What one pass removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub connections: usize,
    pub orphans: usize,
    /// Expired in the snapshot but changed since (ports reused, a packet
    /// seen): left alone.
    pub reused: usize,
    /// Entries left in the table after the sweep.
    pub remaining: usize,
    /// Client address → its open flows left in the table (forward entries
    /// without FIN or RST from the client), for the admission quota.
    pub flows_by_source: std::collections::HashMap<u32, u32>,
    /// Backend ID → its open flows left in the table (the same flows), for
    /// least-connection scheduling.
    pub flows_by_backend: std::collections::HashMap<u32, u32>,
    /// Backend ID → flows this sweep removed that their client had not
    /// closed (idle, reset by the backend): the datapath still counts them.
    pub removed_open_by_backend: std::collections::HashMap<u32, u32>,
}

/// Entry access the sweeps need; the pinned conntrack map in the agent.
pub trait ConntrackTable {
    fn entries(&self) -> Result<Vec<(FlowKey, ConnEntry)>>;
    /// The entry as it is now (the datapath changes entries while a sweep
    /// runs).
    fn get(&self, key: &FlowKey) -> Result<Option<ConnEntry>>;
    fn remove(&mut self, key: &FlowKey) -> Result<()>;
    /// Removes the entry only if it is still the one created at
    /// `created_ns`, in one step with the check (a client may reuse the
    /// tuple between the sweep's last look and its delete). Returns whether
    /// it was removed.
    fn remove_if_created(&mut self, key: &FlowKey, created_ns: u64) -> Result<bool>;
}

/// Removes expired connections and reply entries whose forward entry is gone.
pub fn collect_garbage(
    table: &mut impl ConntrackTable,
    now_ns: u64,
    t: &Timeouts,
) -> Result<Sweep> {
    let entries = table.entries()?;
    let index: std::collections::HashMap<FlowKey, ConnEntry> = entries.iter().copied().collect();
    let mut sweep = Sweep::default();
    let mut removed = 0;
    let mut partnered = BTreeSet::new();
    let mut gone = BTreeSet::new();
    for (key, entry) in entries.iter().filter(|(_, e)| is_forward(e)) {
        let rkey = reply_key(key, entry);
        let reply = index.get(&rkey);
        if reply.is_some() {
            partnered.insert(flow_tuple(&rkey));
        }
        if !expired(key.proto, entry, reply, now_ns, t) {
            continue;
        }
        // The snapshot is milliseconds old at 100 000 entries: a client may
        // have reused the ports since (a new connection overwrites both
        // entries), or the flow may have seen a packet. Judge the entries as
        // they are now, so a live connection is never swept away.
        let (Some(now_fwd), now_reply) = (table.get(key)?, table.get(&rkey)?) else {
            continue;
        };
        let same_reply = now_reply.map(|r| r.created_ns) == reply.map(|r| r.created_ns);
        if now_fwd.created_ns != entry.created_ns
            || !same_reply
            || !expired(key.proto, &now_fwd, now_reply.as_ref(), now_ns, t)
        {
            sweep.reused += 1;
            continue;
        }
        if !table.remove_if_created(key, now_fwd.created_ns)? {
            sweep.reused += 1;
            continue;
        }
        removed += 1;
        gone.insert(flow_tuple(key));
        if now_fwd.tcp_flags & (tcp_seen::FIN | tcp_seen::RST) == 0 {
            *sweep
                .removed_open_by_backend
                .entry(now_fwd.backend_id)
                .or_default() += 1;
        }
        if let Some(r) = now_reply
            && table.remove_if_created(&rkey, r.created_ns)?
        {
            removed += 1;
        }
        sweep.connections += 1;
    }
    // The quota and the backends' loads count open flows: one its client
    // has closed (FIN or RST) no longer counts while it waits to expire.
    for (key, entry) in entries
        .iter()
        .filter(|(_, e)| is_forward(e) && e.tcp_flags & (tcp_seen::FIN | tcp_seen::RST) == 0)
    {
        if !gone.contains(&flow_tuple(key)) {
            *sweep.flows_by_source.entry(key.src_ip_be).or_default() += 1;
            *sweep.flows_by_backend.entry(entry.backend_id).or_default() += 1;
        }
    }
    // A reply entry alone (its forward entry evicted by the LRU) can never be
    // refreshed by its own flow's forward path; expire it on its own clock.
    for (key, entry) in entries.iter().filter(|(_, e)| !is_forward(e)) {
        if !partnered.contains(&flow_tuple(key)) && expired(key.proto, entry, None, now_ns, t) {
            // Re-created by a new connection since the snapshot: not ours.
            if !table.remove_if_created(key, entry.created_ns)? {
                sweep.reused += 1;
                continue;
            }
            removed += 1;
            sweep.orphans += 1;
        }
    }
    sweep.remaining = entries.len().saturating_sub(removed);
    Ok(sweep)
}

/// A flow key as a plain tuple, for ordered sets.
type FlowTuple = (u32, u32, u16, u16, u8);

fn flow_tuple(k: &FlowKey) -> FlowTuple {
    (
        k.src_ip_be,
        k.dst_ip_be,
        k.src_port_be,
        k.dst_port_be,
        k.proto,
    )
}

/// Flushes the connections of `frontend` that go to `backend`: for UDP a
/// client keeps sending on the same 5-tuple (DNS!), so without this it would
/// stay pinned to a backend that no longer exists.
pub fn flush_backends(
    table: &mut impl ConntrackTable,
    gone: &[(Frontend, BackendAddr)],
) -> Result<usize> {
    if gone.is_empty() {
        return Ok(0);
    }
    let wanted: BTreeSet<(u32, u16, u8, u32, u16)> = gone
        .iter()
        .map(|(f, b)| {
            (
                ip_be(f.ip),
                port_be(f.port),
                f.protocol.number(),
                ip_be(b.ip),
                port_be(b.port),
            )
        })
        .collect();
    let mut flushed = 0;
    for (key, entry) in table.entries()? {
        if !is_forward(&entry) {
            continue;
        }
        let tuple = (
            key.dst_ip_be,
            key.dst_port_be,
            key.proto,
            entry.nat_ip_be,
            entry.nat_port_be,
        );
        if wanted.contains(&tuple) {
            table.remove(&key)?;
            table.remove(&reply_key(&key, &entry))?;
            flushed += 1;
        }
    }
    Ok(flushed)
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime writes the timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    #[derive(Default)]
    struct Table(BTreeMap<FlowTuple, (FlowKey, ConnEntry)>);

    impl ConntrackTable for Table {
        fn entries(&self) -> Result<Vec<(FlowKey, ConnEntry)>> {
            Ok(self.0.values().copied().collect())
        }
        fn get(&self, key: &FlowKey) -> Result<Option<ConnEntry>> {
            Ok(self.0.get(&flow_tuple(key)).map(|(_, e)| *e))
        }
        fn remove(&mut self, key: &FlowKey) -> Result<()> {
            self.0.remove(&flow_tuple(key));
            Ok(())
        }
        fn remove_if_created(&mut self, key: &FlowKey, created_ns: u64) -> Result<bool> {
            let t = flow_tuple(key);
            if self
                .0
                .get(&t)
                .is_some_and(|(_, e)| e.created_ns == created_ns)
            {
                self.0.remove(&t);
                return Ok(true);
            }
            Ok(false)
        }
    }

    const SEC: u64 = 1_000_000_000;

    fn flow(proto: u8, client_port: u16) -> FlowKey {
        FlowKey {
            src_ip_be: ip_be(Ipv4Addr::new(10, 244, 0, 10)),
            dst_ip_be: ip_be(Ipv4Addr::new(10, 96, 0, 10)),
            src_port_be: port_be(client_port),
            dst_port_be: port_be(53),
            proto,
            _pad: [0; 3],
        }
    }

    /// Adds a connection to backend 10.244.0.2X:8080 with the given
    /// last-seen times and flags of each side.
    fn add(t: &mut Table, key: FlowKey, backend: u8, fwd: (u64, u8), rep: Option<(u64, u8)>) {
        let forward = ConnEntry {
            nat_ip_be: ip_be(Ipv4Addr::new(10, 244, 0, backend)),
            nat_port_be: port_be(8080),
            kind: conn_kind::FORWARD,
            tcp_flags: fwd.1,
            backend_id: u32::from(backend),
            last_seen_ns: fwd.0,
            ..Default::default()
        };
        t.0.insert(flow_tuple(&key), (key, forward));
        if let Some((seen, flags)) = rep {
            let rkey = reply_key(&key, &forward);
            let reply = ConnEntry {
                nat_ip_be: key.dst_ip_be,
                nat_port_be: key.dst_port_be,
                kind: conn_kind::REPLY,
                tcp_flags: flags,
                last_seen_ns: seen,
                ..Default::default()
            };
            t.0.insert(flow_tuple(&rkey), (rkey, reply));
        }
    }

    #[test]
    fn udp_idles_out_but_activity_on_either_side_keeps_it() {
        let t = Timeouts::default();
        let mut table = Table::default();
        let now = 1000 * SEC;
        add(
            &mut table,
            flow(17, 1),
            21,
            (now - 200 * SEC, 0),
            Some((now - 200 * SEC, 0)),
        );
        add(
            &mut table,
            flow(17, 2),
            21,
            (now - 200 * SEC, 0),
            Some((now - 5 * SEC, 0)),
        );
        let sweep = collect_garbage(&mut table, now, &t).expect("gc");
        assert_eq!(
            sweep,
            Sweep {
                connections: 1,
                orphans: 0,
                reused: 0,
                remaining: 2,
                flows_by_source: [(ip_be(Ipv4Addr::new(10, 244, 0, 10)), 1)].into(),
                flows_by_backend: [(21, 1)].into(),
                removed_open_by_backend: [(21, 1)].into(),
            }
        );
        assert_eq!(table.0.len(), 2, "the busy connection keeps both entries");
    }

    /// The admission quota counts a client's open flows: those it closed
    /// (FIN or RST), still waiting to expire, hold no place.
    #[test]
    fn quota_recount_leaves_out_flows_the_client_closed() {
        let t = Timeouts::default();
        let mut table = Table::default();
        let now = 1000 * SEC;
        let (open, fin, rst) = (tcp_seen::ACK, tcp_seen::FIN | tcp_seen::ACK, tcp_seen::RST);
        for (port, flags) in [(1, open), (2, fin), (3, rst), (4, open)] {
            add(
                &mut table,
                flow(6, port),
                21,
                (now - SEC, flags),
                Some((now - SEC, open)),
            );
        }
        let sweep = collect_garbage(&mut table, now, &t).expect("gc");
        assert_eq!(sweep.remaining, 8, "nothing expired");
        assert_eq!(
            sweep.flows_by_source,
            [(ip_be(Ipv4Addr::new(10, 244, 0, 10)), 2)].into()
        );
        assert_eq!(sweep.flows_by_backend, [(21, 2)].into());
    }

    #[test]
    fn tcp_by_state() {
        let t = Timeouts::default();
        let (syn, ack) = (tcp_seen::SYN, tcp_seen::SYN | tcp_seen::ACK);
        let fin = tcp_seen::FIN | tcp_seen::ACK;
        let rst = tcp_seen::RST | tcp_seen::ACK;
        // (what, client flags, backend flags (None: no reply yet), idle s, swept)
        let cases: [(&str, u8, Option<u8>, u64, bool); 10] = [
            ("SYN only, 90 s", syn, None, 90, true),
            ("SYN only, 30 s", syn, None, 30, false),
            ("established, 1 h idle", ack, Some(ack), 3600, false),
            ("established, 25 h idle", ack, Some(ack), 25 * 3600, true),
            // Half-closed: the other side may still be sending (a client
            // that shut down its writes waits for a long answer).
            ("client FIN only, 10 min idle", fin, Some(ack), 600, false),
            ("backend FIN only, 10 min idle", ack, Some(fin), 600, false),
            ("client FIN only, 2 h idle", fin, Some(ack), 7200, true),
            ("FIN both ways, 30 s", fin, Some(fin), 30, true),
            ("FIN both ways, 5 s", fin, Some(fin), 5, false),
            ("RST, 30 s", ack, Some(rst), 30, true),
        ];
        let now = 100_000 * SEC;
        for (what, client, backend, idle, swept) in cases {
            let mut table = Table::default();
            let seen = now - idle * SEC;
            add(
                &mut table,
                flow(6, 1),
                21,
                (seen, client),
                backend.map(|b| (seen, b)),
            );
            collect_garbage(&mut table, now, &t).expect("gc");
            assert_eq!(table.0.is_empty(), swept, "{what}");
        }
    }

    #[test]
    fn lonely_reply_entries_expire() {
        let t = Timeouts::default();
        let mut table = Table::default();
        let now = 1000 * SEC;
        add(
            &mut table,
            flow(17, 1),
            21,
            (now - 500 * SEC, 0),
            Some((now - 500 * SEC, 0)),
        );
        let fwd = flow_tuple(&flow(17, 1));
        table.0.remove(&fwd);
        let sweep = collect_garbage(&mut table, now, &t).expect("gc");
        assert_eq!(sweep.orphans, 1);
        assert!(table.0.is_empty());
    }

    #[test]
    fn flush_removes_only_flows_of_the_gone_backend() {
        let mut table = Table::default();
        add(&mut table, flow(17, 1), 21, (0, 0), Some((0, 0)));
        add(&mut table, flow(17, 2), 22, (0, 0), Some((0, 0)));
        let frontend = Frontend::new(Ipv4Addr::new(10, 96, 0, 10), 53, Protocol::Udp);
        let gone = BackendAddr {
            ip: Ipv4Addr::new(10, 244, 0, 21),
            port: 8080,
            protocol: Protocol::Udp,
        };
        assert_eq!(
            flush_backends(&mut table, &[(frontend, gone)]).expect("flush"),
            1
        );
        assert_eq!(table.0.len(), 2);
        assert!(table.0.values().all(|(_, e)| e.nat_ip_be != ip_be(gone.ip)));
    }

    /// The sweep's snapshot says a closed connection expired, but a client
    /// reused its ports meanwhile: the new connection's entries (same keys)
    /// must survive.
    struct Raced {
        snapshot: Vec<(FlowKey, ConnEntry)>,
        live: Table,
    }

    impl ConntrackTable for Raced {
        fn entries(&self) -> Result<Vec<(FlowKey, ConnEntry)>> {
            Ok(self.snapshot.clone())
        }
        fn get(&self, key: &FlowKey) -> Result<Option<ConnEntry>> {
            self.live.get(key)
        }
        fn remove(&mut self, key: &FlowKey) -> Result<()> {
            self.live.remove(key)
        }
        fn remove_if_created(&mut self, key: &FlowKey, created_ns: u64) -> Result<bool> {
            self.live.remove_if_created(key, created_ns)
        }
    }

    /// The datapath re-creates the entry right after the sweep's last look
    /// (a client reusing its port that instant): the new connection's entry
    /// must survive the delete that was meant for the old one.
    struct ReusedAtDelete {
        inner: Table,
        reuse: Option<(FlowKey, ConnEntry)>,
    }

    impl ConntrackTable for ReusedAtDelete {
        fn entries(&self) -> Result<Vec<(FlowKey, ConnEntry)>> {
            self.inner.entries()
        }
        fn get(&self, key: &FlowKey) -> Result<Option<ConnEntry>> {
            self.inner.get(key)
        }
        fn remove(&mut self, key: &FlowKey) -> Result<()> {
            self.reuse_now();
            self.inner.remove(key)
        }
        fn remove_if_created(&mut self, key: &FlowKey, created_ns: u64) -> Result<bool> {
            self.reuse_now();
            self.inner.remove_if_created(key, created_ns)
        }
    }

    impl ReusedAtDelete {
        fn reuse_now(&mut self) {
            if let Some((key, entry)) = self.reuse.take() {
                self.inner.0.insert(flow_tuple(&key), (key, entry));
            }
        }
    }

    #[test]
    fn a_tuple_reused_between_the_last_look_and_the_delete_keeps_its_entry() {
        let t = Timeouts::default();
        let now = 100_000 * SEC;
        let key = flow(lb_common::PROTO_UDP, 40000);
        let mut inner = Table::default();
        add(&mut inner, key, 21, (now - 500 * SEC, 0), None);
        let fresh = ConnEntry {
            created_ns: now,
            last_seen_ns: now,
            ..inner.get(&key).expect("get").expect("entry")
        };
        let mut table = ReusedAtDelete {
            inner,
            reuse: Some((key, fresh)),
        };
        collect_garbage(&mut table, now, &t).expect("sweep");
        assert_eq!(
            table.inner.get(&key).expect("get").map(|e| e.created_ns),
            Some(now),
            "the reused tuple's new entry was swept"
        );
    }

    #[test]
    fn a_connection_reusing_the_ports_of_an_expired_one_survives_the_sweep() {
        let t = Timeouts::default();
        let now = 100_000 * SEC;
        let key = flow(lb_common::PROTO_TCP, 40000);
        let mut old = Table::default();
        add(
            &mut old,
            key,
            11,
            (
                now - 60 * SEC,
                tcp_seen::SYN | tcp_seen::ACK | tcp_seen::FIN,
            ),
            Some((now - 60 * SEC, tcp_seen::ACK | tcp_seen::FIN)),
        );
        let mut live = Table::default();
        add(&mut live, key, 11, (now, tcp_seen::SYN), Some((now, 0)));
        for (_, e) in live.0.values_mut() {
            e.created_ns = now;
        }
        let mut table = Raced {
            snapshot: old.entries().expect("entries"),
            live,
        };
        let sweep = collect_garbage(&mut table, now, &t).expect("gc");
        assert_eq!((sweep.connections, sweep.reused), (0, 1));
        assert_eq!(
            table.live.0.len(),
            2,
            "the new connection keeps both entries"
        );
    }
}

//! NetworkPolicy into the maps (lb-ebpf `policy.rs` reads them):
//! `policy_pods` (which directions isolate a pod), `policy_rules` (per pod,
//! direction and peer prefix, the ports allowed) and `policy_notes` (names,
//! for `inspect policy`).
//!
//! The datapath takes the longest matching peer prefix, so each prefix's
//! entry holds the ports of every rule whose peers contain that prefix:
//! an address then finds, in its longest prefix, the union of all rules
//! that allow it (peers are disjoint per rule: `ipBlock` exceptions are
//! already cut out, `policy/cidr.rs`).
//!
//! Only differences are written, rules before the isolation that needs
//! them and isolation lifted before its rules go, so no packet meets a
//! half-written policy. The first pass adopts what an earlier run left.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::maps::PerCpuValues;
use aya::maps::lpm_trie::Key;
use lb_common::{
    POLICY_NOTE_LEN, POLICY_PORT_RANGES, PodIsolation, PolicyCounters, PolicyNote, PolicyPortRange,
    PolicyPorts, PolicyRuleKey, PolicyStatsKey, policy_direction,
};
use tracing::{info, warn};

use crate::datapath::addr::ip_be;
use crate::datapath::maps::PinnedMaps;
use crate::policy::{Cidr, Isolation, PeerRule, PolicyState, PortRange};

/// A `policy_rules` entry: (key data, peer prefix length).
type RuleKey = (PolicyRuleKey, u8);

/// What the maps hold (or should).
#[derive(Debug, Default, PartialEq, Eq)]
struct Entries {
    pods: BTreeMap<u32, PodIsolation>,
    rules: BTreeMap<RuleKey, PolicyPorts>,
    notes: BTreeMap<u32, String>,
    /// (pod, direction) counted in `policy_stats`.
    counted: BTreeSet<(u32, u32)>,
}

/// Writes [`PolicyState`]s to the maps, remembering what it wrote.
#[derive(Default)]
pub struct PolicySync {
    programmed: Option<Entries>,
}

impl PolicySync {
    /// Forgets what it wrote: the next pass reads the maps back (after a
    /// failed write, or to repair changes made behind the agent's back).
    pub fn forget(&mut self) {
        self.programmed = None;
    }

    /// Makes the maps say `state`; returns the problems (a pod whose rules
    /// did not fit), each naming the pod.
    pub fn apply(&mut self, maps: &mut PinnedMaps, state: &PolicyState) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let wanted = entries(state, &mut problems);
        let current = match self.programmed.take() {
            Some(c) => c,
            None => read_entries(maps)?,
        };
        let unchanged = current == wanted;
        let written = write(maps, &current, &wanted);
        // What is in the maps now: on error, read back next time.
        self.programmed = written.is_ok().then_some(wanted);
        written?;
        if !unchanged {
            let isolated = state.pods.len();
            info!(
                pods = isolated,
                problems = problems.len(),
                "network policy written"
            );
            for p in &problems {
                warn!("network policy: {p}");
            }
        }
        Ok(problems)
    }
}

fn write(maps: &mut PinnedMaps, current: &Entries, wanted: &Entries) -> Result<()> {
    // The datapath's switch: off before the last isolation goes, on once
    // the first is written.
    let active = |maps: &mut PinnedMaps, pods: usize| {
        let pods = u32::try_from(pods).unwrap_or(u32::MAX);
        maps.policy_active
            .set(0, pods, 0)
            .context("writing policy_active")
    };
    if wanted.pods.is_empty() {
        active(maps, 0)?;
    }
    for (key, ports) in &wanted.rules {
        if current.rules.get(key) != Some(ports) {
            maps.policy_rules
                .insert(&Key::new(64 + u32::from(key.1), key.0), ports, 0)
                .context("writing policy_rules")?;
        }
    }
    for key in wanted.counted.difference(&current.counted) {
        start_counting(maps, *key)?;
    }
    for (ip, isolation) in &wanted.pods {
        if current.pods.get(ip) != Some(isolation) {
            maps.policy_pods
                .insert(ip, isolation, 0)
                .context("writing policy_pods")?;
        }
    }
    for (ip, note) in &wanted.notes {
        if current.notes.get(ip) != Some(note) {
            maps.policy_notes
                .insert(ip, encode_note(note), 0)
                .context("writing policy_notes")?;
        }
    }
    for ip in current
        .pods
        .keys()
        .filter(|ip| !wanted.pods.contains_key(ip))
    {
        ignore_missing(maps.policy_pods.remove(ip)).context("removing from policy_pods")?;
    }
    for ip in current
        .notes
        .keys()
        .filter(|ip| !wanted.notes.contains_key(ip))
    {
        ignore_missing(maps.policy_notes.remove(ip)).context("removing from policy_notes")?;
    }
    for key in current
        .rules
        .keys()
        .filter(|k| !wanted.rules.contains_key(k))
    {
        let key = Key::new(64 + u32::from(key.1), key.0);
        ignore_missing(maps.policy_rules.remove(&key)).context("removing from policy_rules")?;
    }
    if !wanted.pods.is_empty() {
        active(maps, wanted.pods.len())?;
    }
    Ok(())
}

/// Zeroed counters for a (pod, direction) about to be isolated.
fn start_counting(maps: &mut PinnedMaps, (pod_ip_be, direction): (u32, u32)) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    let zero = PerCpuValues::try_from(vec![PolicyCounters::default(); cpus])?;
    let key = PolicyStatsKey {
        pod_ip_be,
        direction,
    };
    maps.policy_stats
        .insert(key, zero, 0)
        .context("writing policy_stats")
}

fn ignore_missing(r: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        other => other,
    }
}

/// What an earlier run left in the maps.
fn read_entries(maps: &PinnedMaps) -> Result<Entries> {
    let mut e = Entries::default();
    for item in maps.policy_pods.iter() {
        let (ip, isolation) = item.context("reading policy_pods")?;
        e.pods.insert(ip, isolation);
    }
    for item in maps.policy_rules.iter() {
        let (key, ports) = item.context("reading policy_rules")?;
        let len = key.prefix_len().saturating_sub(64).min(32) as u8;
        e.rules.insert((key.data(), len), ports);
    }
    for item in maps.policy_notes.iter() {
        let (ip, note) = item.context("reading policy_notes")?;
        e.notes.insert(ip, decode_note(&note));
    }
    for key in maps.policy_stats.keys() {
        let key = key.context("reading policy_stats")?;
        e.counted.insert((key.pod_ip_be, key.direction));
    }
    Ok(e)
}

/// The map entries that say `state`.
fn entries(state: &PolicyState, problems: &mut Vec<String>) -> Entries {
    let mut e = Entries::default();
    for (ip, pod) in &state.pods {
        let ip_key = ip_be(*ip);
        e.pods.insert(
            ip_key,
            PodIsolation {
                ingress: u8::from(pod.ingress.is_some()),
                egress: u8::from(pod.egress.is_some()),
                _pad: [0; 2],
            },
        );
        e.notes.insert(
            ip_key,
            note(&pod.pod, pod.ingress.as_ref(), pod.egress.as_ref()),
        );
        for (direction, isolation) in [
            (policy_direction::INGRESS, &pod.ingress),
            (policy_direction::EGRESS, &pod.egress),
        ] {
            let Some(isolation) = isolation else { continue };
            e.counted.insert((ip_key, direction));
            for (peer, ports) in prefix_ports(&isolation.rules) {
                let (ranges, dropped) = to_ranges(&ports);
                if dropped > 0 {
                    problems.push(format!(
                        "pod {} ({ip}): {dropped} port ranges for peers in {peer} beyond the {POLICY_PORT_RANGES} one entry holds are not allowed",
                        pod.pod
                    ));
                }
                let key = PolicyRuleKey {
                    pod_ip_be: ip_key,
                    direction_be: direction.to_be(),
                    peer_ip_be: ip_be(peer.ip),
                };
                e.rules.insert((key, peer.len), ranges);
            }
        }
    }
    e
}

/// Ports allowed to a peer: all of them, or some ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Allowed {
    All,
    Ranges(BTreeSet<PortRange>),
}

/// Each peer prefix of `rules` with the union of the ports of every rule
/// whose peers contain it (what its longest-match entry must allow).
fn prefix_ports(rules: &[PeerRule]) -> BTreeMap<Cidr, Allowed> {
    let prefixes: BTreeSet<Cidr> = rules.iter().flat_map(|r| r.peers.iter().copied()).collect();
    let mut out = BTreeMap::new();
    for prefix in prefixes {
        let mut allowed = Allowed::Ranges(BTreeSet::new());
        for rule in rules
            .iter()
            .filter(|r| r.peers.iter().any(|q| q.contains(&prefix)))
        {
            match (&mut allowed, rule.ports.is_empty()) {
                (_, true) => allowed = Allowed::All,
                (Allowed::Ranges(set), false) => set.extend(rule.ports.iter().copied()),
                (Allowed::All, false) => {}
            }
        }
        out.insert(prefix, allowed);
    }
    out
}

/// The map value for `allowed`: overlapping and adjacent ranges of a
/// protocol merged; beyond what one entry holds, the rest is counted and
/// left out (allowing less than asked, never more).
fn to_ranges(allowed: &Allowed) -> (PolicyPorts, usize) {
    let mut value = PolicyPorts::default();
    let merged: Vec<PortRange> = match allowed {
        Allowed::All => {
            value.count = 1;
            value.ranges[0] = PolicyPortRange {
                first: 0,
                last: u16::MAX,
                proto: 0,
                _pad: [0; 3],
            };
            return (value, 0);
        }
        Allowed::Ranges(set) => merge(set),
    };
    for (slot, r) in value.ranges.iter_mut().zip(&merged) {
        *slot = PolicyPortRange {
            first: r.first,
            last: r.last,
            proto: r.protocol,
            _pad: [0; 3],
        };
    }
    value.count = merged.len().min(POLICY_PORT_RANGES) as u32;
    (value, merged.len().saturating_sub(POLICY_PORT_RANGES))
}

fn merge(set: &BTreeSet<PortRange>) -> Vec<PortRange> {
    let mut out: Vec<PortRange> = Vec::new();
    for r in set {
        match out.last_mut() {
            Some(last)
                if last.protocol == r.protocol
                    && u32::from(r.first) <= u32::from(last.last) + 1 =>
            {
                last.last = last.last.max(r.last);
            }
            _ => out.push(*r),
        }
    }
    out
}

fn note(pod: &str, ingress: Option<&Isolation>, egress: Option<&Isolation>) -> String {
    let by = |i: Option<&Isolation>| {
        i.map_or_else(
            || "-".to_string(),
            |i| i.policies.iter().cloned().collect::<Vec<_>>().join(","),
        )
    };
    format!("{pod}|{}|{}", by(ingress), by(egress))
}

fn encode_note(text: &str) -> PolicyNote {
    let mut note = PolicyNote::default();
    let mut end = text.len().min(POLICY_NOTE_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    note.text[..end].copy_from_slice(&text.as_bytes()[..end]);
    note
}

pub fn decode_note(note: &PolicyNote) -> String {
    let end = note
        .text
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(POLICY_NOTE_LEN);
    String::from_utf8_lossy(&note.text[..end]).into_owned()
}

/// For tests and inspection: the allowed ports of an address in a pod's
/// rules, as the datapath's longest match finds them.
pub fn longest_match(rules: &[PeerRule], peer: Ipv4Addr) -> Option<Vec<PortRange>> {
    let table = prefix_ports(rules);
    let host = Cidr::host(peer);
    let best = table
        .iter()
        .filter(|(p, _)| p.contains(&host))
        .max_by_key(|(p, _)| p.len)?;
    Some(match best.1 {
        Allowed::All => Vec::new(),
        Allowed::Ranges(set) => merge(set),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(t: &str) -> Cidr {
        Cidr::parse(t).expect(t)
    }

    fn tcp(first: u16, last: u16) -> PortRange {
        PortRange {
            protocol: 6,
            first,
            last,
        }
    }

    /// The longest match finds every rule that allows an address, across
    /// nested and excepted blocks.
    #[test]
    fn longest_prefix_holds_the_union_of_the_rules_containing_it() {
        let rules = vec![
            PeerRule {
                peers: c("10.0.0.0/8").minus(&[c("10.1.0.0/16")]),
                ports: vec![tcp(80, 80)],
            },
            PeerRule {
                peers: vec![c("10.0.5.0/24")],
                ports: vec![tcp(443, 443)],
            },
            PeerRule {
                peers: vec![c("10.1.2.3/32")],
                ports: vec![tcp(22, 22)],
            },
            PeerRule {
                peers: vec![c("192.168.0.0/16")],
                ports: vec![],
            },
        ];
        let cases: [(&str, Option<Vec<PortRange>>); 6] = [
            ("10.0.5.7", Some(vec![tcp(80, 80), tcp(443, 443)])),
            ("10.0.6.7", Some(vec![tcp(80, 80)])),
            ("10.1.2.3", Some(vec![tcp(22, 22)])),
            ("10.1.2.4", None),
            ("192.168.3.3", Some(vec![])),
            ("11.0.0.1", None),
        ];
        for (addr, want) in cases {
            let got = longest_match(&rules, addr.parse().expect("ip"));
            // 10.1.2.4 lies in no rule's prefix; 10.1.2.3 only in its own.
            assert_eq!(got, want, "{addr}");
        }
    }

    #[test]
    fn ranges_merge_and_overflow_is_counted_not_allowed() {
        let set: BTreeSet<PortRange> = [
            tcp(80, 80),
            tcp(81, 90),
            tcp(85, 100),
            PortRange {
                protocol: 17,
                first: 53,
                last: 53,
            },
        ]
        .into();
        assert_eq!(
            merge(&set),
            vec![
                tcp(80, 100),
                PortRange {
                    protocol: 17,
                    first: 53,
                    last: 53
                }
            ]
        );
        let many: BTreeSet<PortRange> =
            (0..20).map(|i| tcp(1000 + 10 * i, 1000 + 10 * i)).collect();
        let (value, dropped) = to_ranges(&Allowed::Ranges(many));
        assert_eq!((value.count, dropped), (16, 4));
    }
}

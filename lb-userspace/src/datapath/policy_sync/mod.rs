//! NetworkPolicy into the maps (lb-ebpf `policy.rs` reads them):
//! `policy_pods` (each pod's rule set per direction), `policy_rules` (per
//! rule set and peer prefix, the ports allowed and by which policy),
//! `policy_names` (policy IDs, counted in `policy_hits`) and
//! `policy_notes` (pod names, for `inspect policy`).
//!
//! Pods whose policies compile to the same rules share one rule set, so
//! the entries grow with distinct rule sets × peers, not with isolated
//! pods × peers. The datapath takes the longest matching peer prefix, so
//! each prefix's entry holds the ports of every rule whose peers contain
//! that prefix (`ranges.rs`; peers are disjoint per rule: `ipBlock`
//! exceptions are already cut out, `policy/cidr.rs`).
//!
//! Only differences are written: a changed set gets a fresh ID, written
//! before the pods move to it and removed after they left, so no packet
//! meets a half-written policy. The first pass adopts what an earlier run
//! left.

mod entries;
mod ranges;

use anyhow::{Context, Result};
use aya::maps::PerCpuValues;
use aya::maps::lpm_trie::Key;
use lb_common::{POLICY_NOTE_LEN, PolicyCounters, PolicyHits, PolicyNote, PolicyStatsKey};
use tracing::{info, warn};

use crate::datapath::maps::PinnedMaps;
use crate::policy::PolicyState;
use entries::{Entries, RuleKey};
pub use ranges::longest_match;

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
        let current = match self.programmed.take() {
            Some(c) => c,
            None => read_entries(maps)?,
        };
        let wanted = entries::wanted(state, &current, &mut problems);
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

/// Writes the difference in an order no packet can tell apart from an
/// atomic switch: the datapath's switch off before the last isolation
/// goes; new policy names, rule sets and counters before the pods that
/// use them; what no pod uses any more removed after; the switch on once
/// the first isolation is written.
fn write(maps: &mut PinnedMaps, current: &Entries, wanted: &Entries) -> Result<()> {
    if wanted.pods.is_empty() {
        set_active(maps, 0)?;
    }
    write_policy_names(maps, current, wanted)?;
    for (key, ports) in &wanted.rules {
        if current.rules.get(key) != Some(ports) {
            maps.policy_rules
                .insert(&rule_key(key), ports, 0)
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
    remove_stale(maps, current, wanted)?;
    if !wanted.pods.is_empty() {
        set_active(maps, wanted.pods.len())?;
    }
    Ok(())
}

/// The datapath's switch: the number of isolated pods.
fn set_active(maps: &mut PinnedMaps, pods: usize) -> Result<()> {
    let pods = u32::try_from(pods).unwrap_or(u32::MAX);
    maps.policy_active
        .set(0, pods, 0)
        .context("writing policy_active")
}

/// Names of newly numbered policies, their `policy_hits` zeroed first
/// (an ID is never reused while the maps still hold it, but an older
/// owner's counts may linger).
fn write_policy_names(maps: &mut PinnedMaps, current: &Entries, wanted: &Entries) -> Result<()> {
    for (id, name) in &wanted.policies {
        if current.policies.get(id) == Some(name) {
            continue;
        }
        maps.policy_hits
            .set(*id, per_cpu(PolicyHits::default())?, 0)
            .context("zeroing policy_hits")?;
        maps.policy_names
            .insert(id, encode_note(name), 0)
            .context("writing policy_names")?;
    }
    Ok(())
}

/// What `current` holds and `wanted` does not: pods first, then what
/// only they used.
fn remove_stale(maps: &mut PinnedMaps, current: &Entries, wanted: &Entries) -> Result<()> {
    for ip in current.pods.keys().filter(|k| !wanted.pods.contains_key(k)) {
        ignore_missing(maps.policy_pods.remove(ip)).context("removing from policy_pods")?;
    }
    for ip in current
        .notes
        .keys()
        .filter(|k| !wanted.notes.contains_key(k))
    {
        ignore_missing(maps.policy_notes.remove(ip)).context("removing from policy_notes")?;
    }
    for key in current.counted.difference(&wanted.counted) {
        let key = PolicyStatsKey {
            pod_ip_be: key.0,
            direction: key.1,
        };
        ignore_missing(maps.policy_stats.remove(&key)).context("removing from policy_stats")?;
    }
    for key in current
        .rules
        .keys()
        .filter(|k| !wanted.rules.contains_key(k))
    {
        ignore_missing(maps.policy_rules.remove(&rule_key(key)))
            .context("removing from policy_rules")?;
    }
    for id in current
        .policies
        .keys()
        .filter(|id| !wanted.policies.contains_key(id))
    {
        ignore_missing(maps.policy_names.remove(id)).context("removing from policy_names")?;
    }
    Ok(())
}

fn rule_key((data, peer_len): &RuleKey) -> Key<lb_common::PolicyRuleKey> {
    // The rule set is matched in full, then the peer prefix.
    Key::new(32 + u32::from(*peer_len), *data)
}

/// `value` on every CPU.
fn per_cpu<T: aya::Pod + Clone>(value: T) -> Result<PerCpuValues<T>> {
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    Ok(PerCpuValues::try_from(vec![value; cpus])?)
}

/// Zeroed counters for a (pod, direction) about to be isolated.
fn start_counting(maps: &mut PinnedMaps, (pod_ip_be, direction): (u32, u32)) -> Result<()> {
    let key = PolicyStatsKey {
        pod_ip_be,
        direction,
    };
    maps.policy_stats
        .insert(key, per_cpu(PolicyCounters::default())?, 0)
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
        let len = key.prefix_len().saturating_sub(32).min(32) as u8;
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
    for item in maps.policy_names.iter() {
        let (id, name) = item.context("reading policy_names")?;
        e.policies.insert(id, decode_note(&name));
    }
    Ok(e)
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

//! Admission to the conntrack table (the datapath's side is lb-ebpf
//! `admission.rs`): the flows one client address may have tracked, and a
//! switch that refuses new flows while the table is nearly full, so an LRU
//! never has to push established connections out to make room. Both are
//! kept true by the conntrack sweeps: each recounts every client's flows
//! (the datapath only counts up) and the table's fill.

use std::collections::HashMap;

use anyhow::{Context, Result};
use lb_common::Admission;
use tracing::warn;

use crate::datapath::maps::PinnedMaps;

/// New flows are refused from this fill of the conntrack table…
const CLOSE_AT: f64 = 0.90;
/// …until the sweeps bring it below this one.
const REOPEN_AT: f64 = 0.80;

/// The admission policy and its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gate {
    /// Tracked flows per client address; 0: no quota.
    pub flows_per_source: u32,
    /// Conntrack entries the table holds (two per flow).
    pub capacity: u32,
    closed: bool,
}

impl Gate {
    pub fn new(flows_per_source: u32, capacity: u32) -> Self {
        Self {
            flows_per_source,
            capacity,
            closed: false,
        }
    }

    /// The default quota: a client address may hold 1/4 of the table's
    /// flows (32 768 at the default size): a busy client opening 1 000
    /// connections a second holds about 20 000 (each closed one stays until
    /// its closing timeout and the next sweep), while no single client can
    /// fill the table.
    pub fn default_quota(capacity: u32) -> u32 {
        (capacity / 2 / 4).max(1)
    }

    /// Whether new flows must wait, given `entries` in the table now
    /// (with hysteresis, so admission does not flap at the threshold).
    fn closes(&mut self, entries: usize) -> bool {
        let fill = entries as f64 / f64::from(self.capacity.max(1));
        self.closed = if self.closed {
            fill >= REOPEN_AT
        } else {
            fill >= CLOSE_AT
        };
        self.closed
    }

    /// Writes the policy (at start, before any traffic is translated).
    pub fn install(&self, maps: &mut PinnedMaps) -> Result<()> {
        self.write(maps)
    }

    fn write(&self, maps: &mut PinnedMaps) -> Result<()> {
        let value = Admission {
            flows_per_source: self.flows_per_source,
            refuse_new: u32::from(self.closed),
        };
        maps.admission
            .set(0, value, 0)
            .context("writing the admission map")
    }

    /// After a sweep: the exact flow count of every client, and whether
    /// new flows must wait for room.
    pub fn after_sweep(
        &mut self,
        maps: &mut PinnedMaps,
        entries: usize,
        flows_by_source: &HashMap<u32, u32>,
    ) -> Result<()> {
        let was_closed = self.closed;
        if self.closes(entries) != was_closed {
            if self.closed {
                warn!(
                    entries,
                    capacity = self.capacity,
                    "conntrack table {:.0} % full: new flows are refused until sweeps make room \
                     (established ones keep their entries); --map-size-conntrack sizes it",
                    100.0 * entries as f64 / f64::from(self.capacity.max(1))
                );
            } else {
                warn!(
                    entries,
                    "conntrack table has room again: new flows admitted"
                );
            }
        }
        self.write(maps)?;
        recount(maps, flows_by_source)
    }
}

/// Replaces the datapath's running counts with the sweep's exact ones.
fn recount(maps: &mut PinnedMaps, flows_by_source: &HashMap<u32, u32>) -> Result<()> {
    let stale: Vec<u32> = maps
        .ct_sources
        .keys()
        .filter_map(Result::ok)
        .filter(|src| !flows_by_source.contains_key(src))
        .collect();
    for src in stale {
        // Gone meanwhile is fine.
        let _ = maps.ct_sources.remove(&src);
    }
    for (src, flows) in flows_by_source {
        maps.ct_sources
            .insert(src, flows, 0)
            .context("writing ct_sources")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_closes_near_full_and_reopens_with_room() {
        let mut gate = Gate::new(100, 1000);
        // (entries in the table, closed afterwards)
        let steps = [
            (500, false),
            (899, false),
            (900, true),
            (850, true),
            (801, true),
            (799, false),
            (880, false),
            (1000, true),
        ];
        for (entries, closed) in steps {
            assert_eq!(gate.closes(entries), closed, "at {entries} entries");
        }
        assert_eq!(Gate::default_quota(262_144), 32_768);
    }
}

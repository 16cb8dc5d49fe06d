//! Open flows per backend (`backend_flows`; the datapath's side is lb-ebpf
//! `load.rs`), which least-connection frontends choose by and `inspect
//! backends` shows. The datapath counts a flow up when it creates it and
//! down when its client closes it, atomically. Each conntrack sweep takes
//! out the flows it removed that were still counted (expired, reset by the
//! backend). It does not overwrite the counts with its own: the snapshot
//! it counts from is milliseconds old under load, and flows opened in that
//! window and closed later would drive a count below zero — the backend
//! would then look idle and draw every new flow until the next sweep (the
//! schedulers benchmark caught exactly that). Only a count that cannot be
//! right (below zero, or missing: maps from an agent without counts) is
//! set to the sweep's.

use std::collections::HashMap;

use anyhow::{Context, Result};
use lb_common::BackendId;

use crate::datapath::conntrack::Sweep;
use crate::datapath::maps::PinnedMaps;

/// Brings every backend's count in line after `sweep`.
pub fn after_sweep(maps: &mut PinnedMaps, sweep: &Sweep) -> Result<()> {
    let ids: Vec<BackendId> = maps
        .backends
        .keys()
        .collect::<Result<_, _>>()
        .context("reading backend IDs")?;
    for id in ids {
        let exact = count(sweep.flows_by_backend.get(&id));
        let removed = count(sweep.removed_open_by_backend.get(&id));
        let now = maps.backend_flows.get(&id, 0).ok();
        let next = match now {
            Some(n) if n.saturating_sub(removed) >= 0 => n.saturating_sub(removed),
            _ => exact,
        };
        if now != Some(next) {
            // Between this read and write the datapath may count one flow:
            // a window of microseconds, not the sweep's milliseconds.
            maps.backend_flows
                .insert(id, next, 0)
                .with_context(|| format!("writing backend {id}'s open flows"))?;
        }
    }
    Ok(())
}

fn count(n: Option<&u32>) -> i32 {
    n.map_or(0, |n| i32::try_from(*n).unwrap_or(i32::MAX))
}

/// Each backend's open flows as the datapath counts them now (below 0
/// reads as 0).
pub fn read(maps: &PinnedMaps) -> HashMap<BackendId, u32> {
    maps.backend_flows
        .iter()
        .filter_map(Result::ok)
        .map(|(id, flows)| (id, u32::try_from(flows).unwrap_or(0)))
        .collect()
}

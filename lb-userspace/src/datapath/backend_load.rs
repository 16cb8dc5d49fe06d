//! Open flows per backend (`backend_flows`; the datapath's side is lb-ebpf
//! `load.rs`), which least-connection frontends choose by and `inspect
//! backends` shows. The datapath counts a flow up when it creates it and
//! down when its client closes it; flows that end any other way (expired,
//! reset by the backend, evicted) and counts lost to two CPUs updating at
//! once are set right by each conntrack sweep's exact recount.

use std::collections::HashMap;

use anyhow::{Context, Result};
use lb_common::BackendId;

use crate::datapath::maps::PinnedMaps;

/// Replaces every backend's running count with the sweep's exact one
/// (0 for a backend with no open flow). Counts only backends in the
/// `backends` map, so a backend removed meanwhile gets no entry back.
pub fn recount(maps: &mut PinnedMaps, flows_by_backend: &HashMap<u32, u32>) -> Result<()> {
    let ids: Vec<BackendId> = maps
        .backends
        .keys()
        .collect::<Result<_, _>>()
        .context("reading backend IDs")?;
    for id in ids {
        let open = flows_by_backend.get(&id).copied().unwrap_or(0);
        let open = i32::try_from(open).unwrap_or(i32::MAX);
        maps.backend_flows
            .insert(id, open, 0)
            .with_context(|| format!("writing backend {id}'s open flows"))?;
    }
    Ok(())
}

/// Each backend's open flows as the datapath counts them now (below 0,
/// after a close raced a recount, reads as 0).
pub fn read(maps: &PinnedMaps) -> HashMap<BackendId, u32> {
    maps.backend_flows
        .iter()
        .filter_map(Result::ok)
        .map(|(id, flows)| (id, u32::try_from(flows).unwrap_or(0)))
        .collect()
}

//! Admission to the conntrack table. The table is an LRU: were it allowed
//! to fill, each new flow would push out the least recently used entry —
//! someone's established connection, which would then lose its backend or
//! its reverse NAT. So a new flow is refused (dropped: TCP retries its SYN)
//! when its client already has its quota of open flows, or while the
//! agent says the table is nearly full; established flows never are. A
//! flow stops counting against its client once the client closes it (FIN
//! or RST). The agent recounts every client's open flows and the table's
//! fill at each sweep (user space `datapath/admission.rs`).

use lb_common::reason;

use crate::maps::{admission, ct_sources};
use crate::stats;

/// Whether a new flow from `src_ip_be` may be tracked; counts it if so.
#[inline(always)]
pub fn admit(src_ip_be: u32) -> bool {
    let Some(cfg) = admission.get(0) else {
        return true;
    };
    if cfg.refuse_new != 0 {
        stats::count(reason::CONNTRACK_ADMISSION_CLOSED);
        return false;
    }
    if cfg.flows_per_source == 0 {
        return true;
    }
    match ct_sources.get_ptr_mut(src_ip_be) {
        Some(flows) => {
            // Not atomic: two CPUs may both take the last place; the sweep's
            // recount corrects the drift.
            let flows = unsafe { &mut *flows };
            if *flows >= cfg.flows_per_source {
                stats::count(reason::CONNTRACK_SOURCE_QUOTA);
                return false;
            }
            *flows += 1;
        }
        None => {
            let _ = ct_sources.insert(src_ip_be, 1, 0);
        }
    }
    true
}

/// Gives back the quota place of a flow its client has closed (its first
/// FIN or RST): a client making many short connections holds places only
/// for its open ones, not for the closed ones waiting to expire.
#[inline(always)]
pub fn release(src_ip_be: u32) {
    if let Some(flows) = ct_sources.get_ptr_mut(src_ip_be) {
        let flows = unsafe { &mut *flows };
        *flows = flows.saturating_sub(1);
    }
}

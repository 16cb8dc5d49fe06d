//! Open flows per backend (`backend_flows`), for least-connection
//! scheduling and `inspect backends`: counted up when this node creates a
//! flow to the backend, down when the flow's client closes it (its first
//! FIN or RST). Flows that end otherwise — expired, reset by the backend,
//! evicted — are taken out by the agent's sweeps, which recount exactly.

use lb_common::BackendId;

use crate::maps::backend_flows;

/// A flow to `backend_id` was created.
#[inline(always)]
pub fn opened(backend_id: BackendId) {
    add(backend_id, 1);
}

/// A flow to `backend_id` was closed by its client.
#[inline(always)]
pub fn closed(backend_id: BackendId) {
    add(backend_id, -1);
}

/// An atomic add (BPF_XADD), so CPUs counting the same backend at once
/// both count: Rust's `core` offers no atomic read-modify-write on the BPF
/// target, so it is written as the instruction itself.
#[inline(always)]
fn add(backend_id: BackendId, delta: i32) {
    if let Some(flows) = backend_flows.get_ptr_mut(backend_id) {
        unsafe {
            core::arch::asm!(
                "lock *(u32 *)({flows} + 0) += {delta}",
                flows = in(reg) flows,
                delta = in(reg) i64::from(delta),
                options(nostack),
            );
        }
    }
}

/// The backend's open flows (0 when unknown or below 0 after a race with
/// a recount).
#[inline(always)]
pub fn of(backend_id: BackendId) -> u32 {
    match unsafe { backend_flows.get(backend_id) } {
        Some(flows) if *flows > 0 => *flows as u32,
        _ => 0,
    }
}

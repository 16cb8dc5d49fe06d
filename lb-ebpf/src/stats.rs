//! Per-CPU counters: no atomics needed, user space sums the CPUs.

use lb_common::{ServiceCounters, reason};

use crate::maps::{reason_stats, service_stats};

#[inline(always)]
pub fn count(reason: u32) {
    if let Some(c) = reason_stats.get_ptr_mut(reason) {
        unsafe { *c += 1 };
    }
}

/// User space creates a service's entry when it assigns the ID; a packet
/// racing that just goes uncounted.
#[inline(always)]
pub fn service(service_id: u32, f: impl FnOnce(&mut ServiceCounters)) {
    if let Some(c) = service_stats.get_ptr_mut(service_id) {
        f(unsafe { &mut *c });
    }
}

/// A packet of an established flow of `service_id` was translated.
#[inline(always)]
pub fn established(service_id: u32, bytes: u64) {
    count(reason::ESTABLISHED);
    service(service_id, |c| {
        c.packets += 1;
        c.bytes += bytes;
    });
}

/// The first packet of a new flow of `service_id` was translated.
#[inline(always)]
pub fn new_flow(service_id: u32, bytes: u64) {
    count(reason::NEW_FLOW);
    service(service_id, |c| {
        c.packets += 1;
        c.bytes += bytes;
        c.new_flows += 1;
    });
}

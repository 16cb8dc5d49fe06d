//! Per-CPU counters: no atomics needed, user space sums the CPUs.

use lb_common::ServiceCounters;

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

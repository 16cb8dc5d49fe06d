//! The datapath's clock: CLOCK_MONOTONIC as of the last timer tick. It is
//! a few milliseconds behind at most, and far cheaper to read than the
//! exact clock (no clock-source read per packet); every interval it serves
//! is a second or longer, or a rate over a second. One clock for every
//! program, so the timestamps they leave in shared maps compare with each
//! other, and user space (reading the exact clock, never behind this one)
//! sees ages that are never negative.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;

#[inline(always)]
pub fn now() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

//! Owns the per-CPU counters: every verdict that is not a drop counts one `NP_STATS` counter,
//! every drop counts its reason in `NP_DROPS`. The verdict helpers return the TC action so a
//! verdict and its count can never drift apart.
use aya_ebpf::bindings::{TC_ACT_OK, TC_ACT_SHOT};
use netpath_common::counter;

use crate::maps::{NP_DROPS, NP_STATS};

/// Adds one to an `NP_STATS` counter. Per-CPU slots: a plain add is race-free (the program
/// cannot be migrated while it runs).
#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = NP_STATS.get_ptr_mut(index) {
        // SAFETY: a valid per-CPU array slot of this CPU.
        unsafe { *slot += 1 };
    }
}

/// Drops the packet, counting `reason` in `NP_DROPS`.
#[inline(always)]
pub fn drop_packet(reason: u32) -> i32 {
    if let Some(slot) = NP_DROPS.get_ptr_mut(reason) {
        // SAFETY: a valid per-CPU array slot of this CPU.
        unsafe { *slot += 1 };
    }
    TC_ACT_SHOT as i32
}

/// Hands the packet to the bridge / host stack unchanged.
#[inline(always)]
pub fn pass_to_stack() -> i32 {
    count(counter::PASSED_TO_STACK);
    TC_ACT_OK as i32
}

//! The wall clock a leader stamps into the entries it proposes (see [`crate::kv`]'s
//! "Time and expiry"), with a fault-injection offset for tests of clock jumps.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Added to the system clock: set only by `--debug-clock-offset-ms` (hidden), to make one
/// node's clock jump in tests.
static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Unix time in milliseconds, plus the fault-injection offset; 0 before 1970.
pub fn now_ms() -> u64 {
    let system = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    system
        .saturating_add(OFFSET_MS.load(Ordering::Relaxed))
        .max(0) as u64
}

/// FAULT INJECTION, for tests only: shifts this process's clock by `offset_ms`.
pub fn set_debug_offset_ms(offset_ms: i64) {
    OFFSET_MS.store(offset_ms, Ordering::Relaxed);
}

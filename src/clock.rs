//! The engine clock: monotonic nanoseconds since the process's first reading.
//! Ingest stamps frames with it and workers subtract at write time.

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the engine's epoch (monotonic).
#[inline]
pub fn now_ns() -> u64 {
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_nanos() as u64
}

/// The epoch, set on first use.
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

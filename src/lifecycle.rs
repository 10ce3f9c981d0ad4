//! Readiness and the SIGTERM drain, shared by the main thread and the
//! workers. Workers read it once per housekeeping tick (and at upgrades),
//! never per message.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Whether the engine serves, and when a drain started and must end.
#[derive(Debug, Default)]
pub struct Lifecycle {
    ready: AtomicBool,
    /// Engine-clock ms; 0 while not draining.
    drain_start_ms: AtomicU64,
    drain_deadline_ms: AtomicU64,
}

impl Lifecycle {
    /// Marks the engine ready (every worker is up).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Starts draining over `window_ms` from now: readiness drops at once.
    pub fn begin_drain(&self, window_ms: u64) {
        self.ready.store(false, Ordering::SeqCst);
        // +1: 0 means "not draining", even at the epoch's first ms.
        let now = crate::clock::now_ns() / 1_000_000 + 1;
        self.drain_start_ms.store(now, Ordering::SeqCst);
        self.drain_deadline_ms
            .store(now + window_ms.max(1), Ordering::SeqCst);
    }

    /// `(start, deadline)` in engine-clock ms while draining.
    pub fn drain_window(&self) -> Option<(u64, u64)> {
        let deadline = self.drain_deadline_ms.load(Ordering::Acquire);
        (deadline != 0).then(|| (self.drain_start_ms.load(Ordering::Acquire), deadline))
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.drain_deadline_ms.load(Ordering::Relaxed) != 0
    }
}

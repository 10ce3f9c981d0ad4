//! Batch hold: a write pass that carried a batch of updates holds the next
//! one back (counted in metrics), a feed slower than one tick per pass is
//! never held, and clients still get every channel's newest update, in
//! order. Apart from tests/pacing.rs, whose test loads every core.

mod common;

use std::time::Duration;

use common::*;

const CLIENTS: usize = 50;
const CH: &str = "BATCH";

/// Feeds 50 clients `ticks` ticks in writes of `burst`, one write every
/// `every`, then a last tick; every client checks that seqs only rise and
/// that it ends on the last tick. Returns the passes held for a batch.
fn batch_held_passes(extra: &[&str], burst: u64, every: Duration, ticks: u64) -> f64 {
    let srv = Server::start(extra);
    let readers = spawn_readers(srv.listen, CLIENTS, &[CH], Duration::from_secs(20));
    let lasts = Feed::connect(srv.ingest).send_bursts_then_last(&[CH], burst, every, ticks);
    join_readers(readers, &lasts);
    srv.metric("tickwire_worker_batch_held_passes_total")
}

#[test]
fn a_pass_that_carried_a_batch_holds_the_next_and_a_slow_feed_is_never_held() {
    // Bursts of 40 ticks (about 3.6 KB of updates per turn): held.
    let bursts = Duration::from_millis(10);
    let held = batch_held_passes(&[], 40, bursts, 4_000);
    assert!(held > 0.0, "bursts of 40 ticks never held a pass back");
    // The same with the hold switched off.
    let off = batch_held_passes(&["--hold-batches", "false"], 40, bursts, 4_000);
    assert_eq!(off, 0.0, "--hold-batches false still held passes back");
    // One tick every 20 ms (about 90 bytes per turn): written at once.
    let slow = batch_held_passes(&[], 1, Duration::from_millis(20), 50);
    assert_eq!(slow, 0.0, "a feed of one tick per turn was held back");
}

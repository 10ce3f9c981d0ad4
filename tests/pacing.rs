//! Write-pass pacing: while busy threads wait for the workers' cores, workers
//! hold their write passes back (counted in metrics), and clients still get
//! every channel's newest update, in order. A test binary of its own: it
//! deliberately loads every core.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

const CLIENTS: usize = 50;
const CH: &str = "PACE";

/// Runs a fed engine for a while with every core loaded by spinning threads;
/// returns the engine's paced pass count and its contended windows (the
/// condition pacing reacts to, counted whatever the setting). Each client
/// checks that seqs only rise and that it ends with the last tick sent.
fn paced_passes_under_load(extra: &[&str]) -> (f64, f64) {
    let srv = Server::start(extra);
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|_| {
            let mut c = Client::connect(srv.listen);
            c.set_timeout(Duration::from_secs(20));
            c.subscribe(&[CH]);
            c
        })
        .collect();
    let readers: Vec<_> = clients
        .drain(..)
        .map(|mut c| std::thread::spawn(move || c.read_until_last()))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hogs: Vec<_> = (0..(4 * cores).min(32))
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();

    // About 4,000 ticks/s in bursts of 40, for 2 s.
    let mut feed = Feed::connect(srv.ingest);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        let mut batch = String::new();
        for _ in 0..40 {
            sent += 1;
            batch.push_str(&tick(CH, sent));
            batch.push('\n');
        }
        feed.send_raw(batch.as_bytes());
        std::thread::sleep(Duration::from_millis(10));
    }
    sent += 1;
    feed.send(&format!(r#"{{"ch":"{CH}","i":{sent},"last":true}}"#));
    // Read while the cores are still loaded: holds last as long as that.
    let passes = srv.wait_metric(
        "tickwire_worker_paced_passes_total",
        |v| v > 0.0,
        Duration::from_millis(500),
    );
    let contended = srv.wait_metric(
        "tickwire_worker_contended_windows_total",
        |v| v > 0.0,
        Duration::from_millis(500),
    );
    stop.store(true, Ordering::Relaxed);
    for h in hogs {
        h.join().unwrap();
    }
    for r in readers {
        assert_eq!(
            r.join().unwrap(),
            sent,
            "every client ends on the last tick"
        );
    }
    (passes, contended)
}

#[test]
fn workers_hold_write_passes_back_while_their_cores_are_contended_and_lose_nothing() {
    let (paced, _) = paced_passes_under_load(&["--workers", "2"]);
    assert!(
        paced > 0.0,
        "two workers on loaded cores never held a pass back"
    );
    // Zero held passes below mean something only if the cores were
    // contended all the same: the setting, not the load, kept them at zero.
    let (unpaced, contended) =
        paced_passes_under_load(&["--workers", "2", "--pace-when-contended", "false"]);
    assert!(
        contended > 0.0,
        "the load never contended the workers' cores"
    );
    assert_eq!(unpaced, 0.0, "pacing switched off still held passes back");
    let (single, contended) = paced_passes_under_load(&["--workers", "1"]);
    assert!(
        contended > 0.0,
        "the load never contended the worker's core"
    );
    assert_eq!(single, 0.0, "a single worker has no one to leave room for");
}

//! Pass refresh: while a write pass is under way, updates that arrived
//! meanwhile go to the connections the pass has not written yet (counted in
//! metrics); with `--refresh-passes false` a pass writes only what was due
//! when it started. Either way every client gets every channel's newest
//! update, with seqs that only rise.

mod common;

use std::time::Duration;

use common::*;

/// Enough clients that a write pass lasts past the refresh gap.
const CLIENTS: usize = 300;
const CH: &str = "REFRESH";

/// Feeds `CLIENTS` clients a steady stream (one small write every
/// millisecond for about 1.5 s) and a last tick; every client checks that
/// seqs only rise and that it ends on the last tick. Returns the updates
/// taken mid-pass.
fn refreshed_updates(extra: &[&str]) -> f64 {
    // One test address opens all the clients at once.
    let mut args = vec![
        "--max-connections-per-ip",
        "0",
        "--new-connections-per-ip-per-second",
        "0",
    ];
    args.extend_from_slice(extra);
    let srv = Server::start(&args);
    let readers = spawn_readers(srv.listen, CLIENTS, CH, Duration::from_secs(30));
    let feed = &mut Feed::connect(srv.ingest);
    let last = feed.send_bursts_then_last(CH, 2, Duration::from_millis(1), 3_000);
    join_readers(readers, last);
    srv.metric("tickwire_worker_pass_refresh_updates_total")
}

#[test]
fn updates_that_arrive_during_a_pass_reach_the_clients_it_has_not_written_yet() {
    let refreshed = refreshed_updates(&[]);
    assert!(
        refreshed > 0.0,
        "no update was taken off the ring during a pass to {CLIENTS} clients"
    );
    let off = refreshed_updates(&["--refresh-passes", "false"]);
    assert_eq!(off, 0.0, "--refresh-passes false still refreshed passes");
}

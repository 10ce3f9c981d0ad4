//! Pass refresh: while a write pass is under way, updates that arrived
//! meanwhile go to the connections the pass has not written yet (counted in
//! metrics), and the others get them in the next pass; with
//! `--refresh-passes false` a pass writes only what was due when it
//! started. Either way every client gets every update of both its channels
//! once, in order, unless conflation dropped some (counted).

mod common;

use std::time::Duration;

use common::*;

/// Enough clients that a write pass lasts past the refresh gap.
const CLIENTS: usize = 300;
/// Two channels, one tick each in turn: a refresh often finds one channel
/// fresh and the next refresh the other, so a connection may pull one
/// channel and be handed the other after its write.
const CHS: [&str; 2] = ["REFRESH-A", "REFRESH-B"];

/// Feeds `CLIENTS` clients a steady stream (one tick every millisecond,
/// alternating channels, for about 2.5 s) and a last tick per channel;
/// every client checks that each channel's seqs only rise and that it ends
/// on each last tick. Returns the updates taken mid-pass.
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
    let readers = spawn_readers(srv.listen, CLIENTS, &CHS, Duration::from_secs(30));
    let feed = &mut Feed::connect(srv.ingest);
    let lasts = feed.send_bursts_then_last(&CHS, 1, Duration::from_millis(1), 2_400);
    let skipped = join_readers(readers, &lasts);
    let conflated = srv.metric("tickwire_conflated_total");
    assert!(
        skipped == 0 || conflated > 0.0,
        "{skipped} updates never reached their clients, none conflated"
    );
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

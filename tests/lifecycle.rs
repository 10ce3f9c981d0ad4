//! Connection lifecycle at the edges: accepting again after the engine ran
//! out of file descriptors, closing without a reset that would discard the
//! last frames, closing or shutting down thousands of subscribers at once,
//! scraping /metrics while delivering, protocol and HTTP odds, a second
//! instance on a port already in use, ingest lines at the line limit, and
//! which threads a worker layout starts and which of them are pinned.
//!
//! Every wait has a deadline; every engine started here is killed on drop.

mod common;

/// These tests take turns: they exhaust file descriptors, hold 9,000 client
/// sockets (two such tests at once would near the 20,000 files one process
/// may open), or time the engine's reading, which other tests' load on the
/// same cores would disturb.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Subscribes a raw client to `channels` and checks the ack.
fn subscribe_raw(ws: &mut RawWs, channels: &[String]) {
    let sub = json!({"op":"subscribe","channels":channels}).to_string();
    ws.send_frame(0x81, sub.as_bytes(), true);
    let (op, ack) = ws.read_frame().expect("ack");
    assert_eq!(op, 0x1);
    assert_eq!(
        serde_json::from_slice::<Value>(&ack).unwrap()["type"],
        "subscribed"
    );
}

/// Ticks 1..=n of `ch` in one write.
fn send_ticks(feed: &mut Feed, ch: &str, n: u64) {
    let mut batch = String::new();
    for i in 1..=n {
        batch.push_str(&tick(ch, i));
        batch.push('\n');
    }
    feed.send_raw(batch.as_bytes());
}

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tungstenite::Message;

// ---------------------------------------------------------------------------
// Shared pieces
// ---------------------------------------------------------------------------

/// The next update a client receives before `deadline` (pings are answered,
/// other replies skipped); None when none came in time.
fn update_within(c: &mut Client, deadline: Instant) -> Option<Value> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        c.set_timeout(left);
        match c.try_recv() {
            Some(Message::Text(t)) => {
                let v: Value = serde_json::from_str(&t).expect("json");
                if v["type"] == "update" {
                    return Some(v);
                }
            }
            Some(_) => {}
            None => return None,
        }
    }
}

/// Reads updates until one of `ch` carries tick number `i` (earlier ones are
/// skipped); the time it took, or None by the deadline.
fn wait_tick(c: &mut Client, ch: &str, i: u64, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    let deadline = start + timeout;
    while let Some(v) = update_within(c, deadline) {
        if v["ch"] == ch && v["data"]["i"] == i {
            return Some(start.elapsed());
        }
    }
    None
}

/// A subscriber-to-be, upgraded within 5 s (tungstenite's own connect has
/// no deadline).
fn new_client(addr: SocketAddr) -> Client {
    connect_client_within(addr, Duration::from_secs(5)).expect("client")
}

/// A feed connection whose writes give up after 10 s.
fn new_feed(addr: SocketAddr) -> Feed {
    let f = Feed::connect(addr);
    f.stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    f
}

/// A masked client text frame (short payloads).
fn masked_text(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let key = [0x21u8, 0x43, 0x65, 0x07];
    let mut f = vec![0x81, 0x80 | payload.len() as u8];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

// ---------------------------------------------------------------------------
// 1. Accepting again after file-descriptor exhaustion
// ---------------------------------------------------------------------------

/// The engine's file limit in the exhaustion tests: about a dozen descriptors
/// go to stdio, polls, wakers, listeners and the signal pipe, the rest to
/// connections.
const NOFILE: u64 = 64;

/// Opens more connections to `addr` than the engine has descriptors left
/// for, and waits until it has all `NOFILE` open (its next accept fails with
/// EMFILE; the surplus waits in the listen backlog).
fn exhaust_fds(srv: &Server, addr: SocketAddr) -> Vec<TcpStream> {
    let hogs: Vec<TcpStream> = (0..NOFILE + 16)
        .map(|k| {
            TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("hog {k}: {e}"))
        })
        .collect();
    let open = srv.wait_fds_exhausted(NOFILE as usize, Duration::from_secs(5));
    assert_eq!(
        open, NOFILE as usize,
        "the engine never used up its {NOFILE} descriptors"
    );
    // Let its accept fail and settle.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(srv.open_fds_below(NOFILE as usize), NOFILE as usize);
    hogs
}

/// Frees the hogs' descriptors and waits until the engine has closed its ends.
fn release_fds(srv: &Server, hogs: Vec<TcpStream>) -> Instant {
    drop(hogs);
    let freed = Instant::now();
    let deadline = freed + Duration::from_secs(5);
    while srv.open_fds_below(NOFILE as usize) > NOFILE as usize - 16 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    freed
}

#[test]
fn websocket_accept_resumes_after_descriptors_run_out() {
    let _turn = one_at_a_time();
    let srv = Server::start_with_nofile(NOFILE, &["--workers", "1"]);
    let mut feed = new_feed(srv.ingest);
    let mut old = new_client(srv.listen);
    old.subscribe(&["X"]);

    let hogs = exhaust_fds(&srv, srv.listen);
    // A client that arrives while the engine is out of descriptors waits in
    // the backlog with its upgrade request sent.
    let queued = PendingUpgrade::send(srv.listen, Duration::from_secs(2)).expect("connect");
    std::thread::sleep(Duration::from_millis(200));
    let freed = release_fds(&srv, hogs);
    let fds_after = srv.open_fds_below(NOFILE as usize);

    let mut failures = Vec::new();
    // 1. The queued client is served once descriptors are free again, with no
    //    new connection arriving to wake the listener.
    match queued.finish(Duration::from_secs(5)) {
        Ok(mut c) => {
            eprintln!(
                "queued client upgraded {:?} after the fds were freed",
                freed.elapsed()
            );
            c.subscribe(&["X"]);
            feed.send(&tick("X", 1));
            if wait_tick(&mut c, "X", 1, Duration::from_secs(5)).is_none() {
                failures.push("the queued client got no update".to_string());
            }
        }
        Err(e) => failures.push(format!(
            "a client queued in the backlog while descriptors ran out was not served \
             within 5 s after they were freed ({fds_after} of {NOFILE} open): {e}"
        )),
    }
    // 2. A new client subscribes and receives an update.
    match connect_client_within(srv.listen, Duration::from_secs(5)) {
        Ok(mut c) => {
            c.subscribe(&["X"]);
            feed.send(&tick("X", 2));
            if wait_tick(&mut c, "X", 2, Duration::from_secs(5)).is_none() {
                failures.push("a new client got no update".to_string());
            }
        }
        Err(e) => failures.push(format!("a new client was not served: {e}")),
    }
    // 3. A new feed connection's line is ingested and delivered.
    let mut feed2 = new_feed(srv.ingest);
    feed2.send(&tick("X", 3));
    if wait_tick(&mut old, "X", 3, Duration::from_secs(5)).is_none() {
        failures.push("a new feed's line was not delivered".to_string());
    }
    assert!(failures.is_empty(), "{}", failures.join("; "));
}

#[test]
fn ingest_accept_resumes_after_descriptors_run_out() {
    let _turn = one_at_a_time();
    let srv = Server::start_with_nofile(NOFILE, &["--workers", "1"]);
    let mut sub = new_client(srv.listen);
    sub.subscribe(&["F"]);

    let hogs = exhaust_fds(&srv, srv.ingest);
    // A feed that connects meanwhile waits in the ingest backlog, its line sent.
    let mut queued = TcpStream::connect_timeout(&srv.ingest, Duration::from_secs(2)).unwrap();
    queued
        .write_all(format!("{}\n", tick("F", 1)).as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let freed = release_fds(&srv, hogs);
    let fds_after = srv.open_fds_below(NOFILE as usize);

    let mut failures = Vec::new();
    // 1. The queued feed's line arrives once descriptors are free again.
    match wait_tick(&mut sub, "F", 1, Duration::from_secs(5)) {
        Some(_) => eprintln!(
            "queued feed's line delivered {:?} after the fds were freed",
            freed.elapsed()
        ),
        None => failures.push(format!(
            "the line of a feed queued in the ingest backlog while descriptors ran out \
             was not delivered within 5 s after they were freed ({fds_after} of {NOFILE} open)"
        )),
    }
    // 2. A new feed connection's line is ingested and delivered.
    let mut feed = new_feed(srv.ingest);
    feed.send(&tick("F", 2));
    if wait_tick(&mut sub, "F", 2, Duration::from_secs(5)).is_none() {
        failures.push("a new feed's line was not delivered".to_string());
    }
    // 3. A new client subscribes and receives an update.
    match connect_client_within(srv.listen, Duration::from_secs(5)) {
        Ok(mut c) => {
            c.subscribe(&["F"]);
            feed.send(&tick("F", 3));
            if wait_tick(&mut c, "F", 3, Duration::from_secs(5)).is_none() {
                failures.push("a new client got no update".to_string());
            }
        }
        Err(e) => failures.push(format!("a new client was not served: {e}")),
    }
    drop(queued);
    assert!(failures.is_empty(), "{}", failures.join("; "));
}

// ---------------------------------------------------------------------------
// 2. Closing a connection whose input the engine has not read
// ---------------------------------------------------------------------------

/// Updates of `S` sent before the client's request flood.
const BEFORE: u64 = 100;
/// Channels `T0..` that each get one update after the engine stopped reading.
const AFTER: usize = 50;

/// An engine and a client with a small receive buffer that subscribed to `S`
/// and `T0..T49`, got `BEFORE` updates of S (unread), then sent bad requests
/// without reading the error replies until the engine stopped reading its
/// input (their replies passed the budget): that input now sits unread in the
/// engine's socket. Then each T channel gets one update, queued behind the
/// replies. Returns the engine, the client and the unread bytes.
fn client_with_unread_input(extra: &[&str]) -> (Server, Feed, RawWs, u64) {
    let mut args = vec![
        "--workers",
        "1",
        "--outbound-budget",
        "64KiB",
        // Everything queued is delivered in order (no conflation of S)...
        "--conflate-on-block",
        "false",
        // ...and the kernel takes as much as its send buffer holds, so the
        // last flush hands it the whole rest of the queue at once.
        "--socket-notsent-lowat",
        "0",
        // SIGTERM without a drain: the immediate 1001 path.
        "--drain-timeout",
        "0",
    ];
    args.extend_from_slice(extra);
    let srv = Server::start(&common::one_host(&args));
    let mut feed = new_feed(srv.ingest);
    let mut ws = RawWs::connect_with_rcvbuf(srv.listen, 4096);
    let mut names = vec!["S".to_string()];
    names.extend((0..AFTER).map(|k| format!("T{k}")));
    subscribe_raw(&mut ws, &names);
    send_ticks(&mut feed, "S", BEFORE);
    srv.wait_metric(
        "tickwire_ingest_messages_total",
        |v| v >= BEFORE as f64,
        Duration::from_secs(5),
    );

    // Bad requests in small batches (each read's replies stay far below the
    // four budgets that would cut the client), until the engine's socket
    // keeps input it does not read.
    let me = ws.s.local_addr().unwrap();
    ws.s.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let requests = masked_text(b"x").repeat(200);
    let unread = |srv: &Server| tcp_queues(srv.listen, me).map_or(0, |(_, rx)| rx);
    // Input that sits unread for a while may only mean the engine has not
    // had the CPU (a loaded test machine). The worker publishes its counters
    // once per housekeeping turn: two new values of its turn count mean it
    // polled after `a` bytes were seen waiting, and a worker still reading
    // would have read them.
    let stays_unread = |srv: &Server, a: u64| {
        if a == 0 {
            return false;
        }
        let t0 = srv.metric("tickwire_worker_loop_turns_total");
        let t1 = srv.wait_metric(
            "tickwire_worker_loop_turns_total",
            |v| v > t0,
            Duration::from_secs(10),
        );
        srv.wait_metric(
            "tickwire_worker_loop_turns_total",
            |v| v > t1,
            Duration::from_secs(10),
        );
        unread(srv) == a
    };
    let mut paused = 0;
    let mut aligned = true;
    for round in 0..2000 {
        if ws.s.write_all(&requests).is_err() {
            // The engine's receive window is full (the last frame may be cut
            // short; nothing more is sent after it).
            aligned = false;
            let a = unread(&srv);
            if stays_unread(&srv, a) {
                paused = a;
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(3));
        if round % 16 == 15 {
            std::thread::sleep(Duration::from_millis(50));
            let a = unread(&srv);
            if stays_unread(&srv, a) {
                paused = a;
                break;
            }
        }
    }
    // More input it will not read.
    if aligned {
        let _ = ws.s.write_all(&masked_text(b"y").repeat(4096));
    }
    std::thread::sleep(Duration::from_millis(100));
    let unread_bytes = unread(&srv);
    assert!(
        paused > 0 && unread_bytes > 0,
        "the engine never stopped reading the client ({paused} then {unread_bytes} bytes unread; \
         {} slow-consumer closes so far)",
        srv.metric("tickwire_slow_consumer_closes_total")
    );

    let mut batch = String::new();
    for k in 0..AFTER {
        batch.push_str(&tick(&format!("T{k}"), 1));
        batch.push('\n');
    }
    feed.send_raw(batch.as_bytes());
    srv.wait_metric(
        "tickwire_ingest_messages_total",
        |v| v >= (BEFORE as usize + AFTER) as f64,
        Duration::from_secs(5),
    );
    (srv, feed, ws, unread_bytes)
}

/// What a client read to the end of its connection.
#[derive(Debug, Default)]
struct Drained {
    s_updates: u64,
    errors: u64,
    t_updates: HashSet<String>,
    close: Option<(u16, String)>,
    /// How the connection ended if not with a close frame.
    failure: Option<String>,
}

/// Reads every frame until the close frame (or EOF, error, or 5 s of silence).
fn drain(ws: &mut RawWs) -> Drained {
    ws.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut d = Drained::default();
    loop {
        match ws.try_read_frame() {
            Ok(Some((0x1, p))) => {
                let v: Value = serde_json::from_slice(&p).unwrap();
                match (v["type"].as_str(), v["ch"].as_str()) {
                    (Some("error"), _) => d.errors += 1,
                    (Some("update"), Some("S")) => {
                        assert_eq!(v["seq"], d.s_updates + 1, "S out of order: {v}");
                        d.s_updates += 1;
                    }
                    (Some("update"), Some(t)) => {
                        d.t_updates.insert(t.to_string());
                    }
                    _ => panic!("unexpected {v}"),
                }
            }
            Ok(Some((0x8, p))) => {
                let code = u16::from_be_bytes([p[0], p[1]]);
                d.close = Some((code, String::from_utf8_lossy(&p[2..]).to_string()));
                return d;
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                d.failure = Some("EOF before the close frame".into());
                return d;
            }
            Err(e) => {
                d.failure = Some(format!("{e} before the close frame"));
                return d;
            }
        }
    }
}

/// SIGTERM while a client's input sits unread: it still gets every update
/// queued for it, then close 1001 (not a reset that discards them).
#[test]
fn shutdown_delivers_every_queued_update_and_the_close_to_a_client_with_unread_input() {
    let _turn = one_at_a_time();
    let (mut srv, _feed, mut ws, unread) = client_with_unread_input(&[]);
    srv.signal(libc::SIGTERM);
    // Read only once the engine has queued the close.
    std::thread::sleep(Duration::from_millis(300));
    let d = drain(&mut ws);
    let status = srv.wait_exit(Duration::from_secs(5));
    eprintln!("{unread} bytes unread by the engine at SIGTERM; client read {d:?}; exit {status:?}");
    assert!(
        d.failure.is_none()
            && d.s_updates == BEFORE
            && d.t_updates.len() == AFTER
            && d.close.as_ref().is_some_and(|(code, _)| *code == 1001),
        "with {unread} bytes of its input unread, the client got {} of {BEFORE} S updates, \
         {} error replies, {} of {AFTER} T updates, close {:?}, then {:?}",
        d.s_updates,
        d.errors,
        d.t_updates.len(),
        d.close,
        d.failure
    );
    assert!(status.is_some_and(|s| s.success()), "exit {status:?}");
}

/// A slow-consumer cut (1008) of a client whose input sits unread: what the
/// engine had written before the cut, then the close frame, reach it.
#[test]
fn slow_consumer_close_reaches_a_client_with_unread_input() {
    let _turn = one_at_a_time();
    // The cut's clock starts when the client stops reading, before the
    // request flood: the timeout leaves the flood (seconds in a loaded debug
    // build) time to finish first, or the cut lands while it is being set up.
    let (srv, _feed, mut ws, unread) = client_with_unread_input(&["--slow-consumer-timeout", "4s"]);
    let cuts = srv.wait_metric(
        "tickwire_slow_consumer_closes_total",
        |v| v >= 1.0,
        Duration::from_secs(15),
    );
    assert_eq!(cuts, 1.0, "no slow-consumer close");
    let d = drain(&mut ws);
    eprintln!("{unread} bytes unread by the engine at the cut; client read {d:?}");
    assert!(
        d.failure.is_none()
            && d.s_updates == BEFORE
            && d.close
                .as_ref()
                .is_some_and(|(code, why)| *code == 1008 && why.contains("slow consumer")),
        "with {unread} bytes of its input unread, the client got {} of {BEFORE} S updates, \
         {} error replies, close {:?}, then {:?}",
        d.s_updates,
        d.errors,
        d.close,
        d.failure
    );
}

/// A client that floods requests without reading the replies is cut with
/// 1008 `too many requests`; it keeps writing while it reads to the end.
/// What the engine had written before the cut and the close frame must reach
/// it, not a reset that discards them.
#[test]
fn too_many_requests_close_reaches_a_client_that_keeps_writing() {
    let _turn = one_at_a_time();
    let srv = Server::start(&common::one_host(&[
        "--workers",
        "1",
        "--outbound-budget",
        "64KiB",
    ]));
    let mut feed = new_feed(srv.ingest);
    let mut ws = RawWs::connect_with_rcvbuf(srv.listen, 4096);
    subscribe_raw(&mut ws, &["S".to_string()]);
    send_ticks(&mut feed, "S", BEFORE);
    srv.wait_metric(
        "tickwire_deliveries_total",
        |v| v >= BEFORE as f64,
        Duration::from_secs(5),
    );
    // One read's worth of bad requests makes more replies than four budgets.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut s = ws.s.try_clone().unwrap();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            s.set_write_timeout(Some(Duration::from_millis(50)))
                .unwrap();
            let flood = masked_text(b"x").repeat(64 * 1024 / 7);
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match s.write(&flood) {
                    Ok(n) => sent += n as u64,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => return (sent, Some(e.to_string())),
                }
            }
            (sent, None)
        })
    };
    let cut = srv.wait_metric(
        "tickwire_protocol_closes_total",
        |v| v >= 1.0,
        Duration::from_secs(5),
    );
    assert_eq!(cut, 1.0, "the flooding client was not cut");
    std::thread::sleep(Duration::from_millis(300));
    let d = drain(&mut ws);
    stop.store(true, Ordering::Relaxed);
    let (sent, write_end) = writer.join().unwrap();
    eprintln!("flooded {sent} bytes ({write_end:?}); client read {d:?}");
    assert!(
        d.failure.is_none()
            && d.s_updates == BEFORE
            && d.close
                .as_ref()
                .is_some_and(|(code, why)| *code == 1008 && why.contains("too many requests")),
        "while its input kept arriving, the client got {} of {BEFORE} S updates, \
         {} error replies, close {:?}, then {:?}",
        d.s_updates,
        d.errors,
        d.close,
        d.failure
    );
}

// ---------------------------------------------------------------------------
// 3. Thousands of subscribers of one channel closing at once
// ---------------------------------------------------------------------------

/// Subscribers of one channel: as many as fit well within this machine's
/// 20,000 descriptors per process, for the engine and for the test.
const MASS: usize = 9_000;
const MASS_THREADS: usize = 4;

/// `MASS` raw clients subscribed to `ch`, in `MASS_THREADS` groups, each of
/// which has received `ch`'s update `i = 1` (sent here once all are live).
fn mass_subscribers(srv: &Server, feed: &mut Feed, ch: &str) -> Vec<Vec<RawWs>> {
    let start = Instant::now();
    let sub = json!({"op":"subscribe","channels":[ch]}).to_string();
    let listen = srv.listen;
    let mut groups: Vec<Vec<RawWs>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..MASS_THREADS)
            .map(|_| {
                let sub = sub.as_bytes();
                s.spawn(move || {
                    let mut group: Vec<RawWs> = (0..MASS / MASS_THREADS)
                        .map(|_| {
                            let mut ws = RawWs::connect_within(listen, Duration::from_secs(5));
                            ws.send_frame(0x81, sub, true);
                            ws
                        })
                        .collect();
                    for ws in &mut group {
                        let (op, ack) = ws.read_frame().expect("ack");
                        assert_eq!(op, 0x1);
                        assert!(ack.starts_with(br#"{"type":"subscribed""#));
                    }
                    group
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!(
        "{MASS} clients connected and subscribed in {:?}",
        start.elapsed()
    );
    feed.send(&tick(ch, 1));
    std::thread::scope(|s| {
        for group in &mut groups {
            s.spawn(move || {
                for ws in group {
                    let (op, p) = ws.read_frame().expect("update");
                    assert_eq!(op, 0x1);
                    let v: Value = serde_json::from_slice(&p).unwrap();
                    assert_eq!((v["ch"].as_str(), v["seq"].as_u64()), (Some(ch), Some(1)));
                }
            });
        }
    });
    assert_eq!(srv.metric("tickwire_subscriptions"), MASS as f64);
    groups
}

#[test]
fn nine_thousand_subscribers_closing_at_once_leave_the_engine_responsive() {
    let _turn = one_at_a_time();
    // No pings: connecting 9,000 clients in a debug build on loaded cores
    // can take longer than the default ping interval.
    let srv = Server::start(&common::one_host(&[
        "--workers",
        "1",
        "--ping-interval",
        "120s",
        "--idle-timeout",
        "300s",
    ]));
    let mut feed = new_feed(srv.ingest);
    let groups = mass_subscribers(&srv, &mut feed, "M");

    let t0 = Instant::now();
    drop(groups);
    let closed = t0.elapsed();
    // A new client subscribes and gets the snapshot, then a live update.
    let mut probe = connect_client_within(srv.listen, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("no new client {:?} after the mass close: {e}", t0.elapsed()));
    probe.subscribe(&["M"]);
    let snapshot = update_within(&mut probe, Instant::now() + Duration::from_secs(10));
    assert_eq!(snapshot.map(|v| v["seq"].clone()), Some(json!(1)));
    feed.send(&tick("M", 2));
    assert!(
        wait_tick(&mut probe, "M", 2, Duration::from_secs(10)).is_some(),
        "no live update after the mass close"
    );
    let responsive = t0.elapsed();
    let subs = srv.wait_metric(
        "tickwire_subscriptions",
        |v| v <= 1.0,
        Duration::from_secs(10),
    );
    let settled = t0.elapsed();
    eprintln!(
        "mass close of {MASS}: sockets closed in {closed:?}; a new client subscribed and got \
         a live update {responsive:?} after; all subscriptions gone {settled:?} after"
    );
    assert_eq!(
        subs, 1.0,
        "subscriptions left {settled:?} after the mass close"
    );
    assert!(
        responsive < Duration::from_secs(2),
        "a new client was served only {responsive:?} after {MASS} subscribers closed"
    );
}

#[test]
fn sigterm_with_nine_thousand_subscribers_exits_in_time_after_closing_each() {
    let _turn = one_at_a_time();
    let mut srv = Server::start(&common::one_host(&[
        // SIGTERM without a drain: the immediate 1001 path.
        "--drain-timeout",
        "0",
        "--workers",
        "1",
        "--ping-interval",
        "120s",
        "--idle-timeout",
        "300s",
    ]));
    let mut feed = new_feed(srv.ingest);
    let mut groups = mass_subscribers(&srv, &mut feed, "M");

    let t0 = Instant::now();
    srv.signal(libc::SIGTERM);
    let status = srv.wait_exit(Duration::from_secs(10));
    let exited = t0.elapsed();
    let closes: Vec<(usize, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = groups
            .iter_mut()
            .map(|group| {
                s.spawn(move || {
                    let mut got = 0;
                    let mut other = Vec::new();
                    for ws in group {
                        ws.s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                        match ws.try_read_frame() {
                            Ok(Some((0x8, p))) if p.starts_with(&1001u16.to_be_bytes()) => got += 1,
                            r => other.push(format!("{r:?}")),
                        }
                    }
                    (got, other)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let got: usize = closes.iter().map(|(g, _)| g).sum();
    let other: Vec<&String> = closes.iter().flat_map(|(_, o)| o).take(3).collect();
    eprintln!(
        "SIGTERM with {MASS} subscribers: exited {status:?} after {exited:?}; {got} got close 1001"
    );
    assert!(
        status.is_some() && exited < Duration::from_secs(5),
        "not exited within 5 s of SIGTERM ({exited:?}, {status:?})"
    );
    assert!(status.unwrap().success(), "{status:?}");
    assert_eq!(got, MASS, "clients without close 1001, e.g. {other:?}");
}

// ---------------------------------------------------------------------------
// 4. Scraping /metrics while delivering (a measurement)
// ---------------------------------------------------------------------------

/// Percentiles of a sorted sample, in µs.
fn percentiles(sorted: &[u64]) -> String {
    if sorted.is_empty() {
        return "no samples".into();
    }
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
    format!(
        "n={} p50={:.0}µs p90={:.0}µs p99={:.0}µs p99.9={:.0}µs max={:.0}µs",
        sorted.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(0.999),
        at(1.0)
    )
}

/// The number after `key` in `p` (e.g. `"t":`).
fn number_after(p: &[u8], key: &[u8]) -> Option<u64> {
    let at = p.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = p[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&p[at..at + digits]).ok()?.parse().ok()
}

/// 200 clients of one channel fed 2,000 ticks/s; in alternate seconds a
/// scraper GETs /metrics every 100 ms. Each tick carries its send time; the
/// clients record receive minus send. Prints the percentiles of both halves.
#[test]
#[ignore = "measurement: run with --ignored"]
fn metrics_scraping_while_delivering_latency_measurement() {
    let _turn = one_at_a_time();
    const CLIENTS: usize = 200;
    const PER_MS: u64 = 2; // 2,000 ticks/s
    const SECONDS: u64 = 13; // the first is warm-up
    let srv = Server::start(&common::ONE_HOST);
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(Barrier::new(CLIENTS + 1));
    // (scraping?, latency ns)
    let samples: Arc<Mutex<[Vec<u64>; 2]>> = Arc::new(Mutex::new([Vec::new(), Vec::new()]));
    let gaps = Arc::new(Mutex::new(0u64));
    let sub = json!({"op":"subscribe","channels":["L"]}).to_string();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, ready, samples, gaps, sub) = (
                Arc::clone(&stop),
                Arc::clone(&ready),
                Arc::clone(&samples),
                Arc::clone(&gaps),
                sub.clone(),
            );
            let listen = srv.listen;
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut ws = RawWs::connect_within(listen, Duration::from_secs(5));
                    ws.send_frame(0x81, sub.as_bytes(), true);
                    let (_, ack) = ws.read_frame().expect("ack");
                    assert!(ack.starts_with(br#"{"type":"subscribed""#));
                    ready.wait();
                    ws.s.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    let mut mine: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
                    let mut buf = std::mem::take(&mut ws.buf);
                    let mut chunk = vec![0u8; 64 * 1024];
                    let mut last_seq = 0u64;
                    let mut my_gaps = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let n = match ws.s.read(&mut chunk) {
                            Ok(0) => break,
                            Ok(n) => n,
                            Err(_) => continue,
                        };
                        let now = epoch.elapsed().as_nanos() as u64;
                        buf.extend_from_slice(&chunk[..n]);
                        let mut at = 0;
                        while buf.len() - at >= 2 {
                            let (len, hdr) = match buf[at + 1] & 0x7F {
                                126 if buf.len() - at >= 4 => {
                                    (u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize, 4)
                                }
                                126 => break,
                                127 => panic!("unexpected 64-bit frame"),
                                n => (n as usize, 2),
                            };
                            if buf.len() - at < hdr + len {
                                break;
                            }
                            let p = &buf[at + hdr..at + hdr + len];
                            if buf[at] & 0x0F == 0x1
                                && let (Some(t), Some(ph), Some(seq)) = (
                                    number_after(p, br#""t":"#),
                                    number_after(p, br#""ph":"#),
                                    number_after(p, br#""seq":"#),
                                )
                            {
                                if ph < 2 {
                                    mine[ph as usize].push(now.saturating_sub(t));
                                }
                                my_gaps += seq.saturating_sub(last_seq + 1);
                                last_seq = seq;
                            }
                            at += hdr + len;
                        }
                        buf.drain(..at);
                    }
                    let mut all = samples.lock().unwrap();
                    all[0].append(&mut mine[0]);
                    all[1].append(&mut mine[1]);
                    *gaps.lock().unwrap() += my_gaps;
                })
                .unwrap()
        })
        .collect();
    ready.wait();
    let start = Instant::now();
    let scraping = move |at: Instant| (at.duration_since(start).as_secs() % 2) == 1;
    let scraper = {
        let (stop, listen) = (Arc::clone(&stop), srv.listen);
        std::thread::spawn(move || {
            let mut times = Vec::new();
            let mut failed = Vec::new();
            let mut k = 0u32;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let next = start + Duration::from_millis(100) * k;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                if scraping(Instant::now()) {
                    let t = Instant::now();
                    let (status, head, body) = http_exchange(
                        listen,
                        "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n",
                        Duration::from_secs(5),
                    );
                    times.push(t.elapsed().as_nanos() as u64);
                    if status != 200 || !body.contains("tickwire_deliveries_total") {
                        failed.push(format!("{status} {head:?} {} body bytes", body.len()));
                    }
                }
            }
            (times, failed)
        })
    };
    let mut feed = new_feed(srv.ingest);
    let mut line = String::new();
    for ms in 0..SECONDS * 1000 {
        let due = start + Duration::from_millis(ms);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let now = Instant::now();
        let ph = if ms < 1000 {
            2
        } else {
            u64::from(scraping(now))
        };
        line.clear();
        for k in 0..PER_MS {
            let t = epoch.elapsed().as_nanos() as u64;
            line.push_str(&format!(
                "{{\"ch\":\"L\",\"t\":{t},\"ph\":{ph},\"i\":{},\"bid\":101.25}}\n",
                ms * PER_MS + k
            ));
        }
        feed.send_raw(line.as_bytes());
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (mut scrape_times, failed_scrapes) = scraper.join().unwrap();
    for c in clients {
        c.join().unwrap();
    }
    let mut all = samples.lock().unwrap();
    all[0].sort_unstable();
    all[1].sort_unstable();
    scrape_times.sort_unstable();
    let expected = (SECONDS - 1) * 1000 * PER_MS * CLIENTS as u64 / 2;
    eprintln!(
        "{CLIENTS} clients, {} ticks/s, {} s alternating (each half ~{expected} deliveries):",
        PER_MS * 1000,
        SECONDS - 1
    );
    eprintln!("  without scraper: {}", percentiles(&all[0]));
    eprintln!("  with scraper:    {}", percentiles(&all[1]));
    eprintln!(
        "  /metrics response time: {}; failed scrapes: {} {:?}",
        percentiles(&scrape_times),
        failed_scrapes.len(),
        failed_scrapes.iter().take(3).collect::<Vec<_>>()
    );
    eprintln!(
        "  updates skipped (conflated): {}; engine conflated_total {}",
        gaps.lock().unwrap(),
        srv.metric("tickwire_conflated_total")
    );
}

// ---------------------------------------------------------------------------
// 5. Protocol and HTTP odds
// ---------------------------------------------------------------------------

/// RFC 6455 5.2: "the most significant bit MUST be 0" in a 64-bit length.
#[test]
fn a_64_bit_length_with_the_top_bit_set_gets_1002_naming_the_length() {
    let _turn = one_at_a_time();
    let srv = Server::start(&[]);
    for len in [1u64 << 63, u64::MAX] {
        let mut ws = RawWs::connect(srv.listen);
        let mut f = vec![0x81, 0x80 | 127];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend_from_slice(&[1, 2, 3, 4, b'x']);
        ws.s.write_all(&f).unwrap();
        ws.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (code, reason) = ws.read_close();
        assert_eq!(code, 1002, "length {len:#x}: {reason}");
        assert!(
            reason.contains("length"),
            "length {len:#x}: close 1002 with reason {reason:?}, which does not say the length is invalid"
        );
    }
    assert_eq!(srv.http_get("/healthz").0, 200);
}

fn has_header(head: &str, name: &str, value: &str) -> bool {
    head.lines().any(|l| {
        l.split_once(':')
            .is_some_and(|(n, v)| n.trim().eq_ignore_ascii_case(name) && v.trim() == value)
    })
}

/// RFC 6455 4.2.2 / RFC 7231 6.5.15: a plain GET of the WebSocket endpoint
/// gets 426 Upgrade Required naming the protocol; an upgrade with a version
/// the server does not speak gets 400 with the version it does (4.4).
#[test]
fn non_upgrade_get_of_ws_gets_426_and_a_bad_version_400() {
    let _turn = one_at_a_time();
    let srv = Server::start(&[]);
    let t = Duration::from_secs(5);
    let (status, head, body) = http_exchange(srv.listen, "GET /ws HTTP/1.1\r\nHost: t\r\n\r\n", t);
    let plain = (status, has_header(&head, "Sec-WebSocket-Version", "13"));
    let (status, head, _) = http_exchange(
        srv.listen,
        "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        t,
    );
    let bad_version = (status, has_header(&head, "Sec-WebSocket-Version", "13"));
    assert_eq!(
        bad_version,
        (400, true),
        "bad Sec-WebSocket-Version: {head}"
    );
    assert_eq!(
        plain,
        (426, true),
        "non-upgrade GET /ws: want 426 with Sec-WebSocket-Version: 13, got {plain:?}: {body}"
    );
}

fn is_dashboard(body: &str) -> bool {
    body.contains("id=\"board\"") && body.contains("/tickwire.js")
}

/// `/` is the dashboard (on tickwire.js, served at `/tickwire.js`) with or
/// without --demo; while the engine has no channels it says how to feed
/// it, naming the ingest port it really listens on.
#[test]
fn index_page_is_the_dashboard_and_says_how_to_feed_the_engine() {
    let _turn = one_at_a_time();
    let demo = Server::start(&["--demo", "--demo-rate", "100"]);
    let (status, page) = demo.http_get("/");
    assert_eq!(status, 200);
    assert!(is_dashboard(&page), "--demo: {page}");
    let (status, js) = demo.http_get("/tickwire.js");
    assert_eq!(status, 200);
    assert!(js.contains("export function connect"));
    drop(demo);

    let srv = Server::start(&[]);
    let (status, page) = srv.http_get("/");
    assert_eq!(status, 200, "{page}");
    assert!(is_dashboard(&page), "{page}");
    // The HTML always carries the help block: this checks only that it is
    // there and names this engine's ingest port. That the page shows it
    // while there are no channels, and hides it once one exists, is checked
    // in Chromium (tests/js/dashboard-interactions.test.js).
    assert!(
        page.contains("id=\"help\"") && page.to_ascii_lowercase().contains("ingest"),
        "without channels, / does not say how to feed the engine: {page}"
    );
    let addr = srv.ingest.to_string();
    assert!(
        page.contains(&addr),
        "the page does not name the ingest port {addr}"
    );
}

// ---------------------------------------------------------------------------
// 6. A second instance on an address in use
// ---------------------------------------------------------------------------

/// Runs the binary for at most 5 s: (exit code, None if it was still
/// running; stdout; stderr).
fn run_bounded(args: &[&str]) -> (Option<Option<i32>>, String, String) {
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_tickwire"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = child.0.stdout.take().unwrap();
    let mut err = child.0.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break Some(s.code());
        }
        if Instant::now() > deadline {
            let _ = child.0.kill();
            let _ = child.0.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, out.join().unwrap(), err.join().unwrap())
}

#[test]
fn a_second_instance_on_the_same_address_exits_nonzero_naming_it() {
    let _turn = one_at_a_time();
    let first = Server::start(&["--workers", "1"]);
    let (listen, ingest) = (first.listen.to_string(), first.ingest.to_string());
    let mut failures = Vec::new();
    for (what, args, addr) in [
        (
            "--ingest",
            [
                "--listen",
                "127.0.0.1:0",
                "--ingest",
                ingest.as_str(),
                "--workers",
                "1",
            ],
            &ingest,
        ),
        (
            "--listen",
            [
                "--listen",
                listen.as_str(),
                "--ingest",
                "127.0.0.1:0",
                "--workers",
                "1",
            ],
            &listen,
        ),
    ] {
        let (status, out, err) = run_bounded(&args);
        match status {
            None => failures.push(format!(
                "same {what} {addr}: the second instance was still running after 5 s \
                 (stdout {out:?}, stderr {err:?})"
            )),
            Some(Some(0)) | Some(None) => failures.push(format!(
                "same {what} {addr}: exit {status:?} (stderr {err:?})"
            )),
            Some(Some(_)) if !err.contains(addr.as_str()) => failures.push(format!(
                "same {what} {addr}: stderr does not name the address: {err:?}"
            )),
            Some(Some(code)) => eprintln!("same {what}: exit {code}, {}", err.trim()),
        }
    }
    // The first instance is unaffected.
    assert_eq!(first.http_get("/healthz").0, 200);
    assert!(failures.is_empty(), "{}", failures.join("; "));
}

// ---------------------------------------------------------------------------
// 7. Ingest lines at and around --max-line-size
// ---------------------------------------------------------------------------

const MAX_LINE: usize = 1024;
/// The ingest thread reads into max_line_size plus one 64 KiB read's room.
const INGEST_BUF: usize = MAX_LINE + 64 * 1024;

/// A JSON tick of `W` numbered `i`, exactly `len` bytes long (no newline).
fn line_of(i: u64, len: usize) -> String {
    let head = format!(r#"{{"ch":"W","i":{i},"p":""#);
    assert!(len >= head.len() + 2, "{len}");
    format!("{head}{}\"}}", "x".repeat(len - head.len() - 2))
}

/// Feed input and what it must produce: valid lines' `i` in order, and the
/// line numbers rejected as too long.
#[derive(Default)]
struct Script {
    writes: Vec<(Vec<u8>, Duration)>,
    valid: Vec<u64>,
    too_long: Vec<u64>,
    lines: u64,
    next_i: u64,
}

impl Script {
    /// Appends a line of `len` bytes (plus newline) to the current write.
    fn line(&mut self, len: usize) -> &mut Self {
        self.lines += 1;
        let text = if len <= MAX_LINE {
            self.next_i += 1;
            self.valid.push(self.next_i);
            line_of(self.next_i, len)
        } else {
            self.too_long.push(self.lines);
            line_of(0, len)
        };
        self.bytes(text.as_bytes()).bytes(b"\n")
    }

    /// Appends raw bytes to the current write (the caller counts lines).
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        if self.writes.is_empty() {
            self.writes.push((Vec::new(), Duration::ZERO));
        }
        self.writes.last_mut().unwrap().0.extend_from_slice(b);
        self
    }

    /// Ends the current write; the next starts after `pause`, so the engine
    /// reads what came before on its own.
    fn pause(&mut self, pause: Duration) -> &mut Self {
        self.writes.push((Vec::new(), pause));
        self
    }

    /// A line of `len` bytes split after `at` bytes across two writes.
    fn split_line(&mut self, len: usize, at: usize) -> &mut Self {
        self.lines += 1;
        let text = if len <= MAX_LINE {
            self.next_i += 1;
            self.valid.push(self.next_i);
            line_of(self.next_i, len)
        } else {
            self.too_long.push(self.lines);
            line_of(0, len)
        };
        let b = text.into_bytes();
        self.bytes(&b[..at])
            .pause(Duration::from_millis(100))
            .bytes(&b[at..])
            .bytes(b"\n")
    }
}

#[test]
fn ingest_lines_at_the_line_limit_and_the_read_buffer_boundary() {
    let _turn = one_at_a_time();
    // The subscriber gets every update in order, also if it falls behind
    // for a moment (a seq gap would be conflation, not a lost line).
    let srv = Server::start(&[
        "--workers",
        "1",
        "--max-line-size",
        "1KiB",
        "--conflate-on-block",
        "false",
        "--outbound-budget",
        "16MiB",
    ]);
    let mut sub = new_client(srv.listen);
    sub.subscribe(&["W"]);
    let mut s = Script::default();
    // At and around the limit, one write.
    for len in [1023, 1024, 1025, 1024, 1023, 2048, 1024] {
        s.line(len);
    }
    // Many long lines back to back in one write (over 400 KB): reads end
    // inside lines at many offsets, also inside over-long ones.
    for k in 0..300usize {
        s.line([1024, 1025, 1023, 3000, 1024, 64][k % 6].max(40));
    }
    // Lines as long as the read buffer, one byte shorter and one longer.
    for len in [INGEST_BUF - 1, INGEST_BUF, INGEST_BUF + 1] {
        s.line(len);
        s.line(1024);
    }
    // Split across writes: a valid line left at exactly the limit when read,
    // an over-long one left at exactly the limit, one left just over it (and
    // rejected before its newline arrives), and one whose newline comes alone.
    s.pause(Duration::from_millis(100));
    s.split_line(1024, 1024);
    s.split_line(1025, 1024);
    s.split_line(1025, 1025);
    s.split_line(2000, 1500);
    s.split_line(1000, 10);
    // The buffer filled exactly by one read: a partial line at the limit
    // waits in it, then one write brings more than a read takes (64 KiB).
    s.pause(Duration::from_millis(100));
    s.lines += 1;
    s.next_i += 1;
    s.valid.push(s.next_i);
    let held = line_of(s.next_i, 1024);
    s.bytes(held.as_bytes()).pause(Duration::from_millis(100));
    s.bytes(b"\n");
    for _ in 0..200 {
        s.line(700);
    }
    // The same with no newline in the read that fills it.
    s.pause(Duration::from_millis(100));
    s.lines += 1;
    s.too_long.push(s.lines);
    s.bytes(&line_of(0, 1024).into_bytes())
        .pause(Duration::from_millis(100));
    s.bytes(&vec![b'z'; 64 * 1024 + 100]).bytes(b"\n");
    s.line(1024).line(1024);

    let want = s.valid.clone();
    let reader = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut got = Vec::new();
        while got.len() < want.len() {
            let Some(v) = update_within(&mut sub, deadline) else {
                break;
            };
            assert_eq!(
                v["seq"],
                got.len() as u64 + 1,
                "seq gap (conflated?) after {got:?}"
            );
            got.push(v["data"]["i"].as_u64().unwrap());
        }
        (sub, got)
    });
    let mut feed = new_feed(srv.ingest);
    for (bytes, pause) in &s.writes {
        std::thread::sleep(*pause);
        feed.send_raw(bytes);
    }
    let mut rejected = Vec::new();
    for _ in 0..s.too_long.len() {
        let e = feed.read_error(Duration::from_secs(5));
        assert_eq!(e["error"], "line too long", "{e}");
        rejected.push(e["line"].as_u64().unwrap());
    }
    let (mut sub, got) = reader.join().unwrap();
    assert_eq!(rejected, s.too_long, "line numbers rejected as too long");
    assert_eq!(got.len(), s.valid.len(), "valid lines delivered");
    assert_eq!(got, s.valid, "valid lines in order");
    // The connection is still open and ingesting.
    s.next_i += 1;
    feed.send(&line_of(s.next_i, 1024));
    let v = update_within(&mut sub, Instant::now() + Duration::from_secs(5)).expect("last line");
    assert_eq!(v["data"]["i"], s.next_i);
    feed.stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut byte = [0u8; 1];
    match feed.stream.read(&mut byte) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("feed connection: {other:?} (expected it open and silent)"),
    }
    eprintln!(
        "{} lines: {} valid delivered, {} rejected as too long; {} rejects counted",
        s.lines,
        got.len(),
        rejected.len(),
        srv.metric_label("tickwire_ingest_rejects_total", "reason=\"line_too_long\"")
    );
}

/// Each thread of `pid`: its name and the CPUs it may run on
/// (`Cpus_allowed_list`, e.g. `0-1` or `0`).
fn threads(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or_default();
        out.push((comm.trim().to_string(), cpus.trim().to_string()));
    }
    out
}

/// The CPUs a thread of this name may run on (names are cut to 15 bytes).
fn cpus_of(threads: &[(String, String)], name: &str) -> Option<String> {
    threads
        .iter()
        .find(|(comm, _)| comm.as_str() == name)
        .map(|(_, cpus)| cpus.clone())
}

/// Whether a `Cpus_allowed_list` names one CPU.
fn one_cpu(list: &str) -> bool {
    !list.is_empty() && !list.contains(',') && !list.contains('-')
}

#[test]
fn one_worker_drives_ingest_unpinned_and_an_ingest_thread_means_pinning() {
    let _turn = one_at_a_time();

    // One worker driving ingest: no ingest thread, and `auto` leaves the
    // worker where the scheduler puts it (the whole engine is that thread),
    // free to run wherever the engine's main thread may.
    let srv = Server::start(&["--workers", "1"]);
    let t = threads(srv.pid());
    assert!(cpus_of(&t, "tickwire-ingest").is_none(), "{t:?}");
    let allowed = cpus_of(&t, "tickwire").expect("main thread");
    let many_cpus = !one_cpu(&allowed);
    let worker = cpus_of(&t, "tickwire-worker").expect("worker thread");
    assert_eq!(worker, allowed, "an unpinned worker may run on every CPU");
    drop(srv);

    // Ingest on its own thread: `auto` pins the worker when a core is left.
    let srv = Server::start(&["--workers", "1", "--ingest-on-worker", "false"]);
    let t = threads(srv.pid());
    assert!(cpus_of(&t, "tickwire-ingest").is_some(), "{t:?}");
    let worker = cpus_of(&t, "tickwire-worker").expect("worker thread");
    assert_eq!(one_cpu(&worker), many_cpus, "worker may run on {worker}");
    drop(srv);

    // Asked for, pinning applies with ingest on the worker too.
    let srv = Server::start(&["--workers", "1", "--pin-workers", "true"]);
    let worker = cpus_of(&threads(srv.pid()), "tickwire-worker").expect("worker thread");
    assert!(one_cpu(&worker), "worker may run on {worker}");
}

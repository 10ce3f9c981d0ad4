//! End-to-end tests of the engine contract: the real binary on ephemeral
//! loopback ports, fed over TCP, read by real WebSocket clients.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn update_of(v: &Value) -> (String, u64) {
    assert_eq!(v["type"], "update", "{v}");
    (
        v["ch"].as_str().unwrap().to_string(),
        v["seq"].as_u64().unwrap(),
    )
}

#[test]
fn subscribe_snapshot_then_live_updates_in_order_with_data_verbatim() {
    let srv = Server::start(&[]);
    let mut feed = Feed::connect(srv.ingest);
    for i in 1..=5 {
        feed.send(&tick("AAPL", i));
    }
    srv.wait_metric(
        "tickwire_ingest_messages_total",
        |v| v >= 5.0,
        Duration::from_secs(5),
    );
    let mut c = Client::connect(srv.listen);
    let ack = c.subscribe(&["AAPL", "MSFT"]);
    assert_eq!(ack["channels"], json!(["AAPL", "MSFT"]));
    // Snapshot: the current value at once (MSFT has none yet).
    let snap = c.recv();
    assert_eq!(update_of(&snap), ("AAPL".into(), 5));
    assert_eq!(snap["data"]["i"], 5);
    // Data is the ingested object byte for byte.
    let odd = r#"{ "ch" : "MSFT", "px":1.50, "s":"é\u00e9", "n":[1, {"a":null}] }"#;
    feed.send(odd);
    for i in 6..=105 {
        feed.send(&tick("AAPL", i));
    }
    let mut raw_msft = None;
    let mut next = 6;
    // A lost update must fail the test, not hang it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while next <= 105 || raw_msft.is_none() {
        assert!(
            Instant::now() < deadline,
            "updates missing after 10 s: AAPL next seq {next}, MSFT seen: {}",
            raw_msft.is_some()
        );
        let Some(tungstenite::Message::Text(t)) = c.try_recv() else {
            continue;
        };
        let v: Value = serde_json::from_str(&t).unwrap();
        match update_of(&v) {
            (ch, seq) if ch == "AAPL" => {
                assert_eq!(seq, next, "AAPL seq");
                assert_eq!(v["data"]["i"], next);
                next += 1;
            }
            (_, seq) => {
                assert_eq!(seq, 1);
                raw_msft = Some(t.to_string());
            }
        }
    }
    let expected = format!(r#"{{"type":"update","ch":"MSFT","seq":1,"data":{odd}}}"#);
    assert_eq!(raw_msft.unwrap(), expected);
}

#[test]
fn unsubscribe_stops_delivery() {
    let srv = Server::start(&[]);
    let mut feed = Feed::connect(srv.ingest);
    let mut c = Client::connect(srv.listen);
    c.subscribe(&["A", "B"]);
    feed.send(&tick("A", 1));
    assert_eq!(update_of(&c.recv()), ("A".into(), 1));
    c.send(&json!({"op":"unsubscribe","channels":["A"]}));
    let ack = c.recv();
    assert_eq!(ack, json!({"type":"unsubscribed","channels":["A"]}));
    for i in 2..=50 {
        feed.send(&tick("A", i));
    }
    feed.send(&tick("B", 1));
    // B arrives after all those A ticks were ingested; no A after the ack.
    assert_eq!(update_of(&c.recv()), ("B".into(), 1));
    c.set_timeout(Duration::from_millis(300));
    assert!(c.try_recv().is_none(), "nothing more after unsubscribe");
}

/// Races a fast feed against subscribers joining at random moments: each
/// subscriber's stream must start at its snapshot and continue with no gap
/// and no duplicate up to the last tick.
#[test]
fn snapshot_joins_live_stream_without_gap_or_duplicate_under_a_fast_feed() {
    // Conflation stays out of it (a large budget, no conflating on a blocked
    // socket): this is about the join.
    let srv = Server::start(&[
        "--outbound-budget",
        "256MiB",
        "--conflate-on-block",
        "false",
    ]);
    let total: u64 = 150_000;
    let ingest = srv.ingest;
    let feeder = std::thread::spawn(move || {
        let mut feed = Feed::connect(ingest);
        let mut batch = String::new();
        for i in 1..=total {
            batch.push_str(&tick("RACE", i));
            batch.push('\n');
            if i % 500 == 0 {
                feed.send_raw(batch.as_bytes());
                batch.clear();
            }
        }
        feed.send_raw(batch.as_bytes());
        feed
    });
    let mut joiners = Vec::new();
    for k in 0..16u64 {
        let listen = srv.listen;
        joiners.push(std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(k * 7));
            let mut c = Client::connect(listen);
            c.subscribe(&["RACE"]);
            let mut expect: Option<u64> = None;
            let mut first = 0;
            loop {
                let (_, seq) = update_of(&c.recv());
                match expect {
                    None => first = seq,
                    Some(e) => assert_eq!(seq, e, "gap or duplicate after first seq {first}"),
                }
                if seq == total {
                    return first;
                }
                expect = Some(seq + 1);
            }
        }));
    }
    let firsts: Vec<u64> = joiners.into_iter().map(|j| j.join().unwrap()).collect();
    let _feed = feeder.join().unwrap();
    // At least some joined mid-stream, which is what the race is about.
    assert!(
        firsts.iter().any(|&f| f > 1 && f < total),
        "firsts {firsts:?}"
    );
}

#[test]
fn bad_ingest_lines_get_an_error_and_lose_nothing() {
    let srv = Server::start(&["--max-line-size", "1KiB"]);
    let mut c = Client::connect(srv.listen);
    c.subscribe(&["X"]);
    let mut feed = Feed::connect(srv.ingest);
    let mut other = Feed::connect(srv.ingest);
    let long = format!(r#"{{"ch":"X","pad":"{}"}}"#, "p".repeat(5000));
    let lines: Vec<(String, Option<&str>)> = vec![
        (tick("X", 1), None),
        ("{not json".into(), Some("malformed JSON")),
        (tick("X", 2), None),
        (r#"{"sym":"X"}"#.into(), Some("missing string field ch")),
        (r#"{"ch":"bad channel!"}"#.into(), Some("invalid ch")),
        ("[1,2,3]".into(), Some("not a JSON object")),
        (long, Some("line too long")),
        (tick("X", 3), None),
        ("".into(), None),
        (tick("X", 4), None),
    ];
    for (l, _) in &lines {
        feed.send(l);
    }
    // Another feed connection keeps working alongside.
    other.send(&tick("X", 100));
    let mut expected_errors = Vec::new();
    for (n, (_, err)) in lines.iter().enumerate() {
        if let Some(e) = err {
            expected_errors.push((n as u64 + 1, *e));
        }
    }
    for (line_no, reason) in expected_errors {
        let e = feed.read_error(Duration::from_secs(5));
        assert_eq!(e["line"], line_no, "{e}");
        assert!(e["error"].as_str().unwrap().starts_with(reason), "{e}");
    }
    // Every good line is delivered, with consecutive seqs.
    let mut got = Vec::new();
    while got.len() < 5 {
        let v = c.recv();
        got.push((v["seq"].as_u64().unwrap(), v["data"]["i"].as_u64().unwrap()));
    }
    got.sort();
    let is: Vec<u64> = got.iter().map(|g| g.1).collect();
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert!(is.contains(&100) && is.contains(&1) && is.contains(&4));
    let rejects = srv.metric("tickwire_ingest_rejects_total");
    assert_eq!(rejects, 5.0);
    assert_eq!(
        srv.metric_label("tickwire_ingest_rejects_total", "reason=\"line_too_long\""),
        1.0
    );
    // A long line with no newline in sight is rejected as it streams in.
    feed.send_raw(&vec![b'x'; 200_000]);
    feed.send_raw(b"\n");
    feed.send(&tick("X", 6));
    let e = feed.read_error(Duration::from_secs(5));
    assert_eq!(e["line"], 11);
    assert_eq!(update_of(&c.recv()).1, 6);
}

#[test]
fn bad_client_messages_get_errors_and_the_connection_stays_open() {
    let srv = Server::start(&["--max-channels-per-connection", "3"]);
    let mut feed = Feed::connect(srv.ingest);
    let mut c = Client::connect(srv.listen);
    let mut bystander = Client::connect(srv.listen);
    bystander.subscribe(&["Q"]);
    c.subscribe(&["Q"]);
    let cases = [
        ("this is not json", "bad_json"),
        (r#"{"op":"explode","channels":["Q"]}"#, "unknown_op"),
        (
            r#"{"op":"subscribe","channels":["has space"]}"#,
            "bad_channel",
        ),
        (
            r#"{"op":"subscribe","channels":["A","B","C","D"]}"#,
            "too_many_channels",
        ),
        (
            r#"{"op":"subscribe","channels":["A","B","C"]}"#,
            "too_many_channels",
        ),
        (r#"{"channels":["Q"]}"#, "bad_request"),
    ];
    for (msg, code) in cases {
        c.send_text(msg);
        let e = c.recv();
        assert_eq!(e["type"], "error", "{msg}: {e}");
        assert_eq!(e["code"], code, "{msg}: {e}");
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
    c.ws.send(tungstenite::Message::binary(vec![1, 2, 3]))
        .unwrap();
    assert_eq!(c.recv()["code"], "unsupported");
    feed.send(&tick("Q", 1));
    assert_eq!(update_of(&c.recv()), ("Q".into(), 1));
    assert_eq!(update_of(&bystander.recv()), ("Q".into(), 1));
    assert_eq!(srv.metric("tickwire_client_errors_total"), 7.0);
}

#[test]
fn oversized_frames_get_1009_and_protocol_violations_1002() {
    let srv = Server::start(&["--max-frame-size", "1KiB"]);
    let mut feed = Feed::connect(srv.ingest);
    let mut bystander = Client::connect(srv.listen);
    bystander.subscribe(&["Z"]);

    let mut big = RawWs::connect(srv.listen);
    big.send_frame(0x81, &vec![b'a'; 2000], true);
    assert_eq!(big.read_close().0, 1009);

    let mut unmasked = RawWs::connect(srv.listen);
    unmasked.send_frame(0x81, br#"{"op":"subscribe","channels":["Z"]}"#, false);
    assert_eq!(unmasked.read_close().0, 1002);

    let mut reserved = RawWs::connect(srv.listen);
    reserved.send_frame(0x83, b"x", true);
    assert_eq!(reserved.read_close().0, 1002);

    let mut bad_utf8 = RawWs::connect(srv.listen);
    bad_utf8.send_frame(0x81, &[0xC3, 0x28], true);
    assert_eq!(bad_utf8.read_close().0, 1007);

    // Fragmented messages within the limit are fine, and pings get pongs.
    let mut frag = RawWs::connect(srv.listen);
    frag.send_frame(0x01, br#"{"op":"subscribe","#, true);
    frag.send_frame(0x89, b"hi", true);
    frag.send_frame(0x80, br#""channels":["Z"]}"#, true);
    assert_eq!(frag.read_frame().unwrap(), (0xA, b"hi".to_vec()));
    let (op, ack) = frag.read_frame().unwrap();
    assert_eq!(op, 1);
    assert_eq!(
        serde_json::from_slice::<Value>(&ack).unwrap()["type"],
        "subscribed"
    );

    feed.send(&tick("Z", 1));
    assert_eq!(update_of(&bystander.recv()), ("Z".into(), 1));
    assert!(srv.metric("tickwire_protocol_closes_total") >= 4.0);
}

#[test]
fn http_endpoints() {
    let srv = Server::start(&[]);
    assert_eq!(srv.http_get("/healthz"), (200, "ok\n".into()));
    let (code, body) = srv.http_get("/metrics");
    assert_eq!(code, 200);
    for name in [
        "tickwire_connections",
        "tickwire_subscriptions",
        "tickwire_ingest_messages_total",
        "tickwire_ingest_bytes_total",
        "tickwire_ingest_rejects_total",
        "tickwire_deliveries_total",
        "tickwire_conflated_total",
        "tickwire_slow_consumer_closes_total",
        "tickwire_worker_loop_turns_total{worker=\"1\"}",
        "tickwire_delivery_latency_seconds{quantile=\"0.99\"}",
    ] {
        assert!(body.contains(name), "{name} missing from metrics");
    }
    assert_eq!(srv.http_get("/nope").0, 404);
    assert_eq!(srv.http_get("/ws").0, 426);
    assert_eq!(srv.http_get("/").0, 200);
    assert_eq!(http_request(srv.listen, "garbage\r\n\r\n").0, 400);
    assert_eq!(http_request(srv.listen, "POST /ws HTTP/1.1\r\n\r\n").0, 405);
}

#[test]
fn a_thousand_clients_each_receive_every_tick_of_their_channel_in_order() {
    every_client_gets_every_tick_in_order(&[]);
}

/// The same with one `send`/`writev` syscall per write instead of the
/// pass's io_uring batches.
#[test]
fn a_thousand_clients_get_every_tick_in_order_with_one_syscall_per_write() {
    every_client_gets_every_tick_in_order(&["--batch-sends", "false"]);
}

fn every_client_gets_every_tick_in_order(extra: &[&str]) {
    let mut args = common::ONE_HOST.to_vec();
    args.extend_from_slice(extra);
    let srv = Server::start(&args);
    let clients = 1000;
    let channels = ["C0", "C1", "C2", "C3"];
    let ticks_per_channel = 200u64;
    let ready = Arc::new(Barrier::new(clients + 1));
    let mut handles = Vec::new();
    for k in 0..clients {
        let listen = srv.listen;
        let ready = Arc::clone(&ready);
        let ch = channels[k % channels.len()];
        handles.push(
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut c = Client::connect(listen);
                    c.set_timeout(Duration::from_secs(60));
                    c.subscribe(&[ch]);
                    ready.wait();
                    for want in 1..=ticks_per_channel {
                        let (got_ch, seq) = update_of(&c.recv());
                        assert_eq!((got_ch.as_str(), seq), (ch, want));
                    }
                })
                .unwrap(),
        );
    }
    ready.wait();
    // The metrics request itself is a connection too.
    assert!(srv.metric("tickwire_connections") >= clients as f64);
    let mut feed = Feed::connect(srv.ingest);
    let mut batch = String::new();
    for i in 1..=ticks_per_channel {
        for ch in channels {
            batch.push_str(&tick(ch, i));
            batch.push('\n');
        }
    }
    feed.send_raw(batch.as_bytes());
    for h in handles {
        h.join().unwrap();
    }
    let delivered = srv.wait_metric(
        "tickwire_deliveries_total",
        |v| v >= (clients as u64 * ticks_per_channel) as f64,
        Duration::from_secs(5),
    );
    assert_eq!(delivered, (clients as u64 * ticks_per_channel) as f64);
}

/// The head of an update frame, `{"type":"update","ch":C,"seq":N,"data":D}`,
/// parsed without parsing a large `data`; checks that `data` is the tick
/// ingested for that seq (these feeds number each channel's ticks `i` = seq).
fn big_update_of(text: &str) -> (String, u64) {
    let at = text
        .find(r#","data":"#)
        .unwrap_or_else(|| panic!("no data in {:.200}", text));
    let head: Value = serde_json::from_str(&format!("{}}}", &text[..at])).expect("update head");
    let (ch, seq) = update_of(&head);
    let want = format!(r#"{{"ch":"{ch}","i":{seq},"#);
    assert!(
        text[at + 8..].starts_with(&want),
        "{ch} seq {seq} carries {:.60}",
        &text[at + 8..]
    );
    (ch, seq)
}

/// A client that stops reading gets conflated updates: while the feed offers
/// it many times its memory bound, the engine holds at most its budget plus
/// one frame per channel for it; when it reads again it gets the newest value
/// of every channel (its seqs jump instead of replaying a backlog); and fast
/// clients on the same channels and the same worker still receive every tick.
#[test]
fn slow_consumer_is_conflated_with_bounded_memory_and_fast_clients_unaffected() {
    const CHANNELS: usize = 50;
    const PER_CHANNEL: u64 = 400;
    const PAD: usize = 8_000;
    const BUDGET: u64 = 2 << 20;
    const SNDBUF: u64 = 64 << 10;
    const SLOW_RCVBUF: usize = 4096;
    // In-order queueing up to the budget (no conflating on a blocked socket):
    // the fast clients, never more than two rounds (~0.8 MB) behind the feed
    // (see below), stay far below the budget and so cannot lose a tick
    // however they are scheduled; the stalled client's queue reaches it and
    // conflates.
    let srv = Server::start(&[
        "--workers",
        "1",
        "--outbound-budget",
        "2MiB",
        "--conflate-on-block",
        "false",
        "--socket-send-buffer",
        "64KiB",
        "--socket-notsent-lowat",
        "16KiB",
        "--slow-consumer-timeout",
        "10m",
        "--idle-timeout",
        "10m",
    ]);
    let names: Vec<String> = (0..CHANNELS).map(|i| format!("K{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let total = PER_CHANNEL * CHANNELS as u64;
    let mut slow = RawWs::connect_with_rcvbuf(srv.listen, SLOW_RCVBUF);
    let sub = json!({"op":"subscribe","channels":refs}).to_string();
    slow.send_frame(0x81, sub.as_bytes(), true);
    let (_, ack) = slow.read_frame().unwrap();
    assert!(String::from_utf8_lossy(&ack).contains("subscribed"));
    let mut fast_clients: Vec<Client> = (0..2).map(|_| Client::connect(srv.listen)).collect();
    for c in &mut fast_clients {
        c.subscribe(&refs);
    }

    // Warm-up on a channel nobody subscribes to, so that what RSS gains from
    // here on is what the connections hold: the ingest ring (64K slots) wraps,
    // and the allocator has served frames of this size before.
    let pad = "x".repeat(PAD);
    let mut feed = Feed::connect(srv.ingest);
    let warm = 70_000u64;
    let mut batch = String::new();
    for i in 1..=warm {
        if i % 100 == 0 {
            batch.push_str(&format!(r#"{{"ch":"WARM","i":{i},"pad":"{pad}"}}"#));
            batch.push('\n');
        } else {
            batch.push_str(&tick("WARM", i));
            batch.push('\n');
        }
        if i % 1000 == 0 {
            feed.send_raw(batch.as_bytes());
            batch.clear();
        }
    }
    srv.wait_metric(
        "tickwire_ingest_messages_total",
        |v| v >= warm as f64,
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(200));
    let rss_before = srv.rss_kib();
    let bytes_before = srv.metric("tickwire_ingest_bytes_total");

    let received: Vec<Arc<AtomicU64>> = (0..fast_clients.len())
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let fast_threads: Vec<_> = fast_clients
        .into_iter()
        .zip(&received)
        .enumerate()
        .map(|(k, (mut c, n))| {
            let n = Arc::clone(n);
            std::thread::spawn(move || {
                let mut last: HashMap<String, u64> = HashMap::new();
                let mut got = 0;
                while got < total {
                    let text = match c.ws.read() {
                        Ok(tungstenite::Message::Text(t)) => t,
                        Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => {
                            continue;
                        }
                        other => {
                            panic!("fast client {k} after {got} of {total} updates: {other:?}")
                        }
                    };
                    got += 1;
                    let (ch, seq) = big_update_of(&text);
                    let prev = last.insert(ch.clone(), seq).unwrap_or(0);
                    assert_eq!(seq, prev + 1, "fast client {k} gap on {ch}");
                    n.store(got, Ordering::Release);
                }
            })
        })
        .collect();

    // One tick per channel per round; a round goes out only once both fast
    // clients are within one round of the feed. The stalled client reads
    // nothing all along.
    let round = CHANNELS as u64;
    let deadline = Instant::now() + Duration::from_secs(25);
    let (mut sent, mut offered) = (0u64, 0u64);
    let mut rss_peak = rss_before;
    'feed: for i in 1..=PER_CHANNEL {
        while received
            .iter()
            .any(|n| n.load(Ordering::Acquire) + round < sent)
        {
            if fast_threads.iter().any(|t| t.is_finished()) {
                break 'feed; // it panicked: joined below
            }
            assert!(
                Instant::now() < deadline,
                "fast clients stalled: {:?} of {sent} sent",
                received
                    .iter()
                    .map(|n| n.load(Ordering::Relaxed))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        batch.clear();
        for n in &names {
            batch.push_str(&format!(r#"{{"ch":"{n}","i":{i},"pad":"{pad}"}}"#));
            batch.push('\n');
        }
        feed.send_raw(batch.as_bytes());
        sent += round;
        offered += batch.len() as u64;
        rss_peak = rss_peak.max(srv.rss_kib());
    }
    for t in fast_threads {
        if let Err(e) = t.join() {
            std::panic::resume_unwind(e);
        }
    }
    // Both fast clients got every tick in order, so the feed is fanned out:
    // the stalled client's queue holds all it will get.
    assert!(offered >= 150_000_000, "offered only {offered} bytes");
    let ingested = srv.wait_metric(
        "tickwire_ingest_bytes_total",
        |v| v - bytes_before >= offered as f64,
        Duration::from_secs(5),
    ) - bytes_before;
    assert_eq!(ingested, offered as f64, "ingested bytes");
    rss_peak = rss_peak.max(srv.rss_kib());

    // The documented bound: budget + one frame per subscribed channel, per
    // connection (the fast clients' queues stay below it too). Socket
    // buffers are kernel memory, outside VmRSS. The slack covers transient
    // turn buffers (coalescing packs up to 32 KiB per channel per turn) and
    // the allocator's fragmentation.
    let frame = PAD as u64 + 100;
    let per_conn = BUDGET + CHANNELS as u64 * frame;
    let slack = 8 << 20;
    let bound = 3 * per_conn + slack;
    let growth = (rss_peak - rss_before) * 1024;
    eprintln!(
        "offered {offered} bytes to a stalled client; RSS grew {growth} bytes (peak {rss_peak} KiB), bound {bound}"
    );
    assert!(
        growth < bound,
        "RSS grew {growth} bytes while {offered} were offered to a stalled client (bound {bound}, before {rss_before} KiB)"
    );

    let conflated = srv.wait_metric(
        "tickwire_conflated_total",
        |v| v > 0.0,
        Duration::from_secs(5),
    );
    assert!(conflated > 0.0, "nothing conflated");

    // Now the stalled client reads: it ends with the newest value of every
    // channel, having read no more than the engine may hold for it plus what
    // sits in the socket buffers (2x for the kernel's accounting).
    let mut last: HashMap<String, u64> = HashMap::new();
    let (mut frames, mut bytes) = (0u64, 0u64);
    while last.len() < CHANNELS || last.values().any(|&s| s < PER_CHANNEL) {
        let (op, p) = match slow.try_read_frame() {
            Ok(Some(f)) => f,
            other => panic!(
                "stalled client did not reach the newest of every channel ({other:?} after {frames} updates); last seqs: {last:?}"
            ),
        };
        bytes += p.len() as u64 + 4;
        if op != 1 {
            continue;
        }
        frames += 1;
        let (ch, seq) = big_update_of(std::str::from_utf8(&p).unwrap());
        assert!(seq <= PER_CHANNEL, "{ch} seq {seq}");
        let prev = last.insert(ch.clone(), seq).unwrap_or(0);
        assert!(seq > prev, "{ch} went backwards: {prev} -> {seq}");
    }
    let held = per_conn + 2 * SNDBUF + 2 * SLOW_RCVBUF as u64 + (64 << 10);
    eprintln!("stalled client read {frames} updates, {bytes} bytes, to reach the newest");
    assert!(
        bytes < held,
        "stalled client read {bytes} bytes ({frames} updates) to reach the newest: more than budget + a frame per channel + socket buffers ({held})"
    );
    assert!(
        frames < total,
        "slow client got every tick ({frames}): no conflation"
    );
}

/// Reads nothing while `total` ticks of one channel go by, then reads until
/// the newest: returns how many updates it had to read to get there.
fn frames_to_newest_after_a_stall(extra: &[&str], total: u64) -> u64 {
    let mut args = vec!["--workers", "1", "--outbound-budget", "64KiB"];
    args.extend_from_slice(extra);
    let srv = Server::start(&args);
    let mut lagging = RawWs::connect_with_rcvbuf(srv.listen, 4096);
    lagging.send_frame(0x81, br#"{"op":"subscribe","channels":["Q"]}"#, true);
    let (_, ack) = lagging.read_frame().unwrap();
    assert!(String::from_utf8_lossy(&ack).contains("subscribed"));
    let mut feed = Feed::connect(srv.ingest);
    let mut batch = String::new();
    for i in 1..=total {
        batch.push_str(&tick("Q", i));
        batch.push('\n');
        if i % 500 == 0 {
            feed.send_raw(batch.as_bytes());
            batch.clear();
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    feed.send_raw(batch.as_bytes());
    srv.wait_metric(
        "tickwire_ingest_messages_total",
        |v| v >= total as f64,
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(200));
    let (mut frames, mut last) = (0u64, 0u64);
    while last < total {
        let (op, p) = lagging.read_frame().expect("update");
        if op != 1 {
            continue;
        }
        let (_, seq) = update_of(&serde_json::from_slice(&p).unwrap());
        assert!(seq > last, "went backwards: {last} -> {seq}");
        last = seq;
        frames += 1;
    }
    frames
}

/// A client that stalls is kept fresh: once its socket would block, the
/// engine conflates (and the kernel holds only `socket_notsent_lowat` unsent),
/// so it catches up within about its buffers' worth of updates, not the
/// backlog that in-order queueing up to the budget plus a full kernel send
/// buffer would leave it.
#[test]
fn stalled_client_catches_up_within_its_buffers_not_through_a_backlog() {
    let total = 20_000;
    let fresh = frames_to_newest_after_a_stall(&[], total);
    let backlog = frames_to_newest_after_a_stall(
        &[
            "--conflate-on-block",
            "false",
            "--socket-notsent-lowat",
            "0",
        ],
        total,
    );
    eprintln!("updates read to reach the newest: {fresh} conflating on block, {backlog} in order");
    assert!(
        fresh * 2 < backlog,
        "conflating on block read {fresh} updates to the newest, in-order queueing {backlog}"
    );
    // rcvbuf (8 KiB) + ~16 KiB unsent + one write + the 64 KiB budget, at
    // ~70 bytes an update.
    assert!(fresh < 3_000, "{fresh} updates before the newest");
}

#[test]
fn idle_clients_are_pinged_then_closed_while_live_ones_stay() {
    let srv = Server::start(&["--ping-interval", "200ms", "--idle-timeout", "1s"]);
    let mut silent = RawWs::connect(srv.listen);
    let mut live = Client::connect(srv.listen);
    live.set_timeout(Duration::from_millis(100));
    let start = Instant::now();
    let mut pings = 0;
    let (code, reason) = loop {
        match silent.read_frame() {
            Some((0x9, _)) => pings += 1,
            Some((0x8, p)) => {
                break (
                    u16::from_be_bytes([p[0], p[1]]),
                    String::from_utf8_lossy(&p[2..]).to_string(),
                );
            }
            Some(_) => {}
            None => panic!("EOF without close frame"),
        }
        // tungstenite answers pings as it reads.
        let _ = live.try_recv();
    };
    let waited = start.elapsed();
    assert!(pings >= 2, "pings {pings}");
    assert_eq!(code, 1001);
    assert!(reason.contains("idle"), "{reason}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(
        silent.read_frame().is_none(),
        "socket closed after the close frame"
    );
    // The live client answered pings and is still served.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        let _ = live.try_recv();
    }
    live.subscribe(&["L"]);
    assert_eq!(srv.metric("tickwire_idle_closes_total"), 1.0);
}

#[test]
fn blocked_consumer_is_closed_after_slow_consumer_timeout() {
    let srv = Server::start(&[
        "--workers",
        "1",
        "--slow-consumer-timeout",
        "1s",
        "--outbound-budget",
        "64KiB",
    ]);
    let mut stuck = RawWs::connect(srv.listen);
    stuck.send_frame(0x81, br#"{"op":"subscribe","channels":["S"]}"#, true);
    let _ = stuck.read_frame().unwrap();
    let mut feed = Feed::connect(srv.ingest);
    let pad = "y".repeat(2000);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    while srv.metric("tickwire_slow_consumer_closes_total") < 1.0 {
        assert!(Instant::now() < deadline, "slow consumer never closed");
        let mut batch = String::new();
        for _ in 0..500 {
            i += 1;
            batch.push_str(&format!(r#"{{"ch":"S","i":{i},"pad":"{pad}"}}"#));
            batch.push('\n');
        }
        feed.send_raw(batch.as_bytes());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, reason) = stuck.read_close();
    assert_eq!(code, 1008);
    assert!(reason.contains("slow consumer"), "{reason}");
}

/// SIGTERM: the engine stops accepting, flushes what it queued, sends every
/// client close 1001 after its last update, and exits 0 within 5 s.
#[test]
fn sigterm_sends_1001_to_every_client_and_exits_zero() {
    // Clients queue in order up to a budget larger than the burst below, and
    // their small receive buffers leave most of it in the engine's queues at
    // the signal: only a flush delivers it.
    let mut srv = Server::start(&[
        // SIGTERM without a drain: the immediate 1001 path.
        "--drain-timeout",
        "0",
        "--outbound-budget",
        "8MiB",
        "--conflate-on-block",
        "false",
        "--socket-send-buffer",
        "64KiB",
    ]);
    // ~400 KB per client, few messages: reading them all stays quick on a
    // loaded machine (the engine gives a closing connection 2 s).
    let n = 400u64;
    let pad = "p".repeat(1000);
    let connect = |srv: &Server| {
        let mut c = Client::connect_with_rcvbuf(srv.listen, 16 << 10);
        c.subscribe(&["G"]);
        c
    };
    // Connections per worker, as /metrics counts them: the /metrics request
    // itself may count as one more on either.
    let per_worker = |srv: &Server| -> [f64; 2] {
        let (_, body) = srv.http_get("/metrics");
        [0, 1].map(|w| {
            let prefix = format!("tickwire_worker_connections{{worker=\"{w}\"}} ");
            body.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{prefix} not in metrics"))
        })
    };
    // `clients` are read right after the signal: their close frames show
    // that the workers serving them have begun shutting down, so each worker
    // must serve one (2 counted on each: 1 at least is a client). The `held`
    // ones read nothing until the listen port has been probed, so that every
    // worker is still draining then (2 more counted on each).
    let mut clients: Vec<Client> = Vec::new();
    while clients.len() < 2 || per_worker(&srv).iter().any(|&c| c < 2.0) {
        assert!(clients.len() < 64, "connections all land on one worker");
        clients.push(connect(&srv));
    }
    let base = per_worker(&srv);
    let mut held: Vec<Client> = Vec::new();
    while held.is_empty() || per_worker(&srv).iter().zip(base).any(|(&c, b)| c < b + 2.0) {
        assert!(held.len() < 64, "connections all land on one worker");
        held.push(connect(&srv));
    }
    let mut feed = Feed::connect(srv.ingest);
    let mut batch = String::new();
    for i in 1..=n {
        batch.push_str(&format!(r#"{{"ch":"G","i":{i},"pad":"{pad}"}}"#));
        batch.push('\n');
    }
    feed.send_raw(batch.as_bytes());
    let ingested = srv.wait_metric(
        "tickwire_ingest_messages_total",
        |v| v >= n as f64,
        Duration::from_secs(10),
    );
    assert_eq!(ingested, n as f64);

    let start = Instant::now();
    srv.signal(libc::SIGTERM);
    // Every update published before the signal, in order, then close 1001.
    let drained = |c: &mut Client, who: &str| {
        let mut got = 0;
        while got < n {
            match c.ws.read() {
                Ok(tungstenite::Message::Text(t)) => {
                    got += 1;
                    let v: Value = serde_json::from_str(&t).unwrap();
                    assert_eq!(update_of(&v), ("G".into(), got), "{who}");
                    assert_eq!(v["data"]["i"], got, "{who}");
                }
                Ok(tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_)) => {}
                other => panic!("{who}: {other:?} after {got} of {n} updates"),
            }
        }
        let close = c.expect_close().expect("close frame");
        assert_eq!(u16::from(close.code), 1001, "{who}: {close:?}");
    };
    for (k, c) in clients.iter_mut().enumerate() {
        drained(c, &format!("client {k}"));
    }
    // Still draining (each worker has a `held` client waiting): a new
    // connection must not be served.
    assert!(srv.is_running(), "exited before draining a client");
    let probe = try_ws_upgrade(srv.listen, Duration::from_millis(500));
    assert!(srv.is_running(), "exited before draining a client");
    if let Ok(status) = &probe {
        assert!(
            !status.contains(" 101 "),
            "upgraded a new connection after SIGTERM: {status}"
        );
    }
    eprintln!(
        "{} clients drained, {} held; probe {:?} after SIGTERM: {probe:?}",
        clients.len(),
        held.len(),
        start.elapsed()
    );
    for (k, c) in held.iter_mut().enumerate() {
        drained(c, &format!("held client {k}"));
    }
    let left = Duration::from_secs(5).saturating_sub(start.elapsed());
    let status = srv.wait_exit(left).expect("exited within 5 s");
    assert!(status.success(), "{status:?}");
    eprintln!("exited {:?} after SIGTERM", start.elapsed());
}

#[test]
fn bad_config_is_refused_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("tw-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "listen = \"127.0.0.1:0\"\nping_intervl = \"1s\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickwire"))
        .args(["--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ping_intervl"), "{err}");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_tickwire"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for opt in [
        "--listen",
        "--ingest",
        "--workers",
        "--demo",
        "--config",
        "--idle-timeout",
        "default: 127.0.0.1:8080",
    ] {
        assert!(help.contains(opt), "--help lacks {opt}");
    }
    std::fs::remove_dir_all(dir).ok();
}

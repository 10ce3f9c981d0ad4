//! History and resume against the real engine: positions in the subscribe
//! ack, an exact replay of what a client missed, resync (never a silent
//! gap) when the position is too old or of another epoch (an engine
//! restart), the replay/live seam under a fast feed, and the history's
//! memory cap.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Client, Feed, Server, tick};
use serde_json::{Value, json};
use tungstenite::Message;

/// Subscribes with an optional `since`; returns the ack.
fn subscribe(c: &mut Client, ch: &str, since: Option<(u64, &str)>) -> Value {
    let mut req = json!({"op":"subscribe","channels":[ch]});
    if let Some((seq, epoch)) = since {
        req["since"] = json!({ch: {"seq": seq, "epoch": epoch}});
    }
    c.send(&req);
    let ack = c.recv();
    assert_eq!(ack["type"], "subscribed", "{ack}");
    ack
}

/// The (seq, epoch) the ack gives for `ch`.
fn position(ack: &Value, ch: &str) -> (u64, String) {
    let p = &ack["positions"][ch];
    (
        p["seq"].as_u64().unwrap_or_else(|| panic!("{ack}")),
        p["epoch"].as_str().unwrap().to_string(),
    )
}

/// Reads updates of `ch` and returns their seqs until `last` is seen.
fn seqs_until(c: &mut Client, ch: &str, last: u64) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        let v = c.recv();
        if v["type"] == "update" && v["ch"] == ch {
            let s = v["seq"].as_u64().unwrap();
            got.push(s);
            if s >= last {
                return got;
            }
        }
    }
}

#[test]
fn resume_within_history_replays_exactly_then_goes_live() {
    let srv = Server::start(&["--history-size", "64"]);
    let mut feed = Feed::connect(srv.ingest);
    for i in 1..=5 {
        feed.send(&tick("A", i));
    }
    srv.wait_metric(
        "tickwire_ingest_messages_total",
        |v| v >= 5.0,
        Duration::from_secs(5),
    );
    let mut c = Client::connect(srv.listen);
    let ack = subscribe(&mut c, "A", None);
    let (seq, epoch) = position(&ack, "A");
    assert_eq!(seq, 5, "{ack}");
    assert_eq!(c.recv()["seq"], 5, "the snapshot follows the ack");
    for i in 6..=10 {
        feed.send(&tick("A", i));
    }
    assert_eq!(seqs_until(&mut c, "A", 10), (6..=10).collect::<Vec<_>>());
    drop(c);
    // Missed while away: 11..=30.
    for i in 11..=30 {
        feed.send(&tick("A", i));
    }
    srv.wait_metric(
        "tickwire_ingest_messages_total",
        |v| v >= 30.0,
        Duration::from_secs(5),
    );
    let mut c = Client::connect(srv.listen);
    let ack = subscribe(&mut c, "A", Some((10, &epoch)));
    assert_eq!(position(&ack, "A"), (30, epoch.clone()));
    let replay = seqs_until(&mut c, "A", 30);
    assert_eq!(
        replay,
        (11..=30).collect::<Vec<_>>(),
        "exactly what was missed"
    );
    feed.send(&tick("A", 31));
    assert_eq!(c.recv()["seq"], 31, "then live, no gap, no duplicate");
    // Up to date: nothing replayed, live follows.
    let mut d = Client::connect(srv.listen);
    subscribe(&mut d, "A", Some((31, &epoch)));
    feed.send(&tick("A", 32));
    assert_eq!(d.recv()["seq"], 32);
    assert_eq!(srv.metric("tickwire_replayed_total"), 20.0);
}

#[test]
fn resume_outside_history_or_from_another_epoch_is_a_resync() {
    let mut srv = Server::start(&["--history-size", "8"]);
    let mut feed = Feed::connect(srv.ingest);
    for i in 1..=50 {
        feed.send(&tick("B", i));
    }
    srv.wait_metric(
        "tickwire_ingest_messages_total",
        |v| v >= 50.0,
        Duration::from_secs(5),
    );
    let mut c = Client::connect(srv.listen);
    let ack = subscribe(&mut c, "B", None);
    let (_, epoch) = position(&ack, "B");
    let _snapshot = c.recv();
    // Seq 10 is long gone (8 kept: 43..=50).
    let mut r = Client::connect(srv.listen);
    subscribe(&mut r, "B", Some((10, &epoch)));
    let v = r.recv();
    assert_eq!(v["type"], "resync", "{v}");
    assert_eq!(v["ch"], "B");
    assert_eq!(v["epoch"], epoch.as_str());
    assert!(v["reason"].as_str().unwrap().contains("older"), "{v}");
    assert_eq!(r.recv()["seq"], 50, "then the snapshot");
    // 42 is the newest that still resumes (43 is kept).
    let mut ok = Client::connect(srv.listen);
    subscribe(&mut ok, "B", Some((42, &epoch)));
    assert_eq!(seqs_until(&mut ok, "B", 50), (43..=50).collect::<Vec<_>>());
    // Another epoch.
    let mut e = Client::connect(srv.listen);
    subscribe(&mut e, "B", Some((49, "0000000000000000-1")));
    let v = e.recv();
    assert_eq!(v["type"], "resync", "{v}");
    assert!(v["reason"].as_str().unwrap().contains("epoch"), "{v}");
    assert_eq!(e.recv()["seq"], 50);
    assert_eq!(srv.metric("tickwire_resyncs_total"), 2.0);

    // An engine restart starts new epochs: the old position resyncs.
    srv.signal(libc::SIGINT);
    srv.wait_exit(Duration::from_secs(10)).expect("exit");
    let srv2 = Server::start(&[]);
    let mut feed = Feed::connect(srv2.ingest);
    for i in 1..=3 {
        feed.send(&tick("B", i));
    }
    srv2.wait_metric(
        "tickwire_ingest_messages_total",
        |v| v >= 3.0,
        Duration::from_secs(5),
    );
    let mut c = Client::connect(srv2.listen);
    let ack = subscribe(&mut c, "B", Some((2, &epoch)));
    let (seq, new_epoch) = position(&ack, "B");
    assert_eq!(seq, 3);
    assert_ne!(new_epoch, epoch, "a restart changes the epoch");
    let v = c.recv();
    assert_eq!(v["type"], "resync", "{v}");
    assert_eq!(v["epoch"], new_epoch.as_str());
    assert_eq!(c.recv()["seq"], 3);
}

#[test]
fn resume_seam_under_a_fast_feed_has_no_gap_and_no_duplicate() {
    let srv = Server::start(&common::one_host(&[
        "--history-size",
        "100000",
        "--history-memory-max",
        "64MiB",
        "--conflate-on-block",
        "false",
    ]));
    let ingest = srv.ingest;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeding = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut feed = Feed::connect(ingest);
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut batch = String::new();
                for _ in 0..20 {
                    i += 1;
                    batch.push_str(&tick("R", i));
                    batch.push('\n');
                }
                feed.send_raw(batch.as_bytes());
                std::thread::sleep(Duration::from_millis(1));
            }
            i
        })
    };
    let mut first = Client::connect(srv.listen);
    let ack = subscribe(&mut first, "R", None);
    let (_, epoch) = position(&ack, "R");
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(60);
    let workers: Vec<_> = (0..16)
        .map(|k| {
            let epoch = epoch.clone();
            let listen = srv.listen;
            std::thread::spawn(move || {
                // Each client: live for a while, away, resumes; three times.
                let mut c = Client::connect(listen);
                let ack = subscribe(&mut c, "R", None);
                let (p, e) = position(&ack, "R");
                assert_eq!(e, epoch);
                // The snapshot (seq p) first, then every later seq.
                let mut want = p.max(1);
                for round in 0..4 {
                    let until = want + 150 + 37 * k as u64;
                    while want <= until {
                        assert!(Instant::now() < deadline, "client {k} timed out");
                        let v = c.recv();
                        assert_eq!(v["type"], "update", "client {k} round {round}: {v}");
                        assert_eq!(
                            v["seq"].as_u64().unwrap(),
                            want,
                            "client {k} round {round}: {v}"
                        );
                        want += 1;
                    }
                    if round == 3 {
                        break;
                    }
                    drop(c);
                    std::thread::sleep(Duration::from_millis(20 + 7 * k as u64));
                    c = Client::connect(listen);
                    let ack = subscribe(&mut c, "R", Some((want - 1, &epoch)));
                    assert!(ack["positions"]["R"]["seq"].as_u64().unwrap() >= want - 1);
                }
            })
        })
        .collect();
    for w in workers {
        w.join()
            .expect("a resuming client saw a gap or a duplicate");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = feeding.join().unwrap();
    eprintln!(
        "{sent} ticks fed, {} updates replayed",
        srv.metric("tickwire_replayed_total")
    );
    assert_eq!(srv.metric("tickwire_resyncs_total"), 0.0);
    assert!(srv.metric("tickwire_replayed_total") > 0.0);
}

#[test]
fn history_memory_stays_under_its_cap() {
    let srv = Server::start(&["--history-size", "100000", "--history-memory-max", "2MiB"]);
    let rss0 = srv.rss_kib();
    let mut feed = Feed::connect(srv.ingest);
    let pad = "p".repeat(4000);
    let mut n = 0u64;
    // About 40 MB of updates over 20 channels.
    for i in 1..=500u64 {
        let mut batch = String::new();
        for ch in 0..20 {
            n += 1;
            batch.push_str(&format!(r#"{{"ch":"H{ch}","i":{i},"pad":"{pad}"}}"#));
            batch.push('\n');
        }
        feed.send_raw(batch.as_bytes());
    }
    srv.wait_metric(
        "tickwire_ingest_messages_total",
        |v| v >= n as f64,
        Duration::from_secs(30),
    );
    let kept = srv.metric("tickwire_history_bytes");
    let rss = srv.rss_kib();
    eprintln!("history {kept} bytes kept of {n} updates; RSS {rss0} -> {rss} KiB");
    assert!(
        kept <= (2 << 20) as f64,
        "history {kept} bytes past the 2 MiB cap"
    );
    assert!(
        kept >= (1 << 20) as f64,
        "the cap is used, not emptied: {kept}"
    );
    // The cap, the last values (20 × 4 KB) and the engine: far below the
    // 40 MB fed.
    assert!(rss < rss0 + 16 * 1024, "RSS {rss0} -> {rss} KiB");
    // An evicted position resyncs; a kept one resumes.
    let mut c = Client::connect(srv.listen);
    let ack = subscribe(&mut c, "H3", Some((1, "x")));
    let (seq, epoch) = position(&ack, "H3");
    assert_eq!(seq, 500);
    assert_eq!(c.recv()["type"], "resync");
    let _ = c.recv();
    let mut d = Client::connect(srv.listen);
    subscribe(&mut d, "H3", Some((1, &epoch)));
    assert_eq!(d.recv()["type"], "resync", "seq 1 was evicted");
    let _ = d.recv();
    let mut e = Client::connect(srv.listen);
    subscribe(&mut e, "H3", Some((498, &epoch)));
    assert_eq!(seqs_until(&mut e, "H3", 500), vec![499, 500]);
}

/// Reads `c` as updates come (never stalling it) until `target` is set and
/// reached; returns every message, so a resync or a repeat is visible.
fn read_until(c: &mut Client, target: &AtomicU64, deadline: Instant) -> Vec<Value> {
    c.set_timeout(Duration::from_millis(50));
    let mut got = Vec::new();
    let mut last = 0;
    loop {
        let t = target.load(Ordering::SeqCst);
        if t != 0 && last >= t {
            return got;
        }
        assert!(Instant::now() < deadline, "timed out at seq {last} of {t}");
        if let Some(Message::Text(text)) = c.try_recv() {
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["type"] == "update" {
                last = v["seq"].as_u64().unwrap();
            }
            got.push(v);
        }
    }
}

/// The seqs of the updates in `msgs`; panics on anything but updates.
fn update_seqs(msgs: &[Value]) -> Vec<u64> {
    msgs.iter()
        .map(|v| {
            assert_eq!(v["type"], "update", "only updates expected: {v}");
            v["seq"].as_u64().unwrap()
        })
        .collect()
}

#[test]
fn notification_class_never_conflates_cuts_a_slow_consumer_who_then_resumes() {
    // The notification defaults: never conflated, 256 updates of history.
    let (dir, cfg) = common::notify_class_config("classes");
    let srv = Server::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--outbound-budget",
        "64KiB",
        // A small kernel buffer: the budget, not the kernel, decides the cut.
        "--socket-send-buffer",
        "16KiB",
        "--workers",
        "1",
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut fast = Client::connect(srv.listen);
    let ack = subscribe(&mut fast, "user.1", None);
    let (_, epoch) = position(&ack, "user.1");
    // A consumer that stops reading, with a small receive buffer.
    let mut slow = common::RawWs::connect_with_rcvbuf(srv.listen, 4096);
    slow.send_frame(0x81, br#"{"op":"subscribe","channels":["user.1"]}"#, true);
    let (_, ack) = slow.read_frame().unwrap();
    assert!(ack.starts_with(br#"{"type":"subscribed""#));

    // The feed runs on through the cut and the reconnect (the resume races
    // a live feed), then publishes a tail and stops; its last seq is the
    // readers' target.
    let last_seq = AtomicU64::new(0);
    let cut_seen = AtomicBool::new(false);
    let resumed = AtomicBool::new(false);
    let (last, at_resume, n, fast_msgs, resumed_msgs) = std::thread::scope(|s| {
        let reader = s.spawn(|| read_until(&mut fast, &last_seq, deadline));
        let feeder = s.spawn(|| {
            let mut feed = Feed::connect(srv.ingest);
            let pad = "n".repeat(1000);
            let (mut at_cut, mut at_resume) = (None, None);
            for i in 1.. {
                feed.send(&format!(r#"{{"ch":"user.1","i":{i},"pad":"{pad}"}}"#));
                if i % 10 == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                    // The feed itself watches for the cut, so however the
                    // machine schedules the test, it is at most a few
                    // updates past it when it knows.
                    if at_cut.is_none() && srv.metric("tickwire_slow_consumer_closes_total") >= 1.0
                    {
                        at_cut = Some(i);
                        cut_seen.store(true, Ordering::SeqCst);
                    }
                }
                if at_resume.is_none() && resumed.load(Ordering::SeqCst) {
                    at_resume = Some(i);
                }
                match (at_cut, at_resume) {
                    // Live until 50 updates after the resume.
                    (_, Some(r)) if i >= r + 50 => {
                        last_seq.store(i, Ordering::SeqCst);
                        return i;
                    }
                    // Live during the reconnect, but a starved machine must
                    // not stretch it into a long absence: 50 updates after
                    // the cut the feed waits for the resume (so the queue
                    // the cut dropped, at most the 64 KiB budget, and these
                    // stay within the 256 updates of history).
                    (Some(c), None) if i >= c + 50 => {
                        while !resumed.load(Ordering::SeqCst) {
                            assert!(Instant::now() < deadline, "no resume");
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                    (None, _) => assert!(Instant::now() < deadline, "never cut"),
                    _ => {}
                }
            }
            unreachable!()
        });

        // The cut: 1008 `slow consumer`, after a gap-free prefix.
        while !cut_seen.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "never cut");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut last = 0;
        let close = loop {
            let (op, payload) = slow.read_frame().expect("a frame before the close");
            match op {
                0x1 => {
                    let v: Value = serde_json::from_slice(&payload).unwrap();
                    let s = v["seq"].as_u64().unwrap();
                    assert_eq!(s, last + 1, "a notification was skipped: {v}");
                    last = s;
                }
                0x8 => break payload,
                _ => {}
            }
        };
        let code = u16::from_be_bytes([close[0], close[1]]);
        let reason = String::from_utf8_lossy(&close[2..]).to_string();
        assert_eq!(code, 1008, "{reason}");
        assert!(reason.starts_with("slow consumer"), "{reason}");
        // Right away, from exactly the last seq it has.
        let mut again = Client::connect(srv.listen);
        let ack = subscribe(&mut again, "user.1", Some((last, &epoch)));
        resumed.store(true, Ordering::SeqCst);
        let (at_resume, _) = position(&ack, "user.1");
        let resumed_msgs = read_until(&mut again, &last_seq, deadline);
        let n = feeder.join().unwrap();
        (last, at_resume, n, reader.join().unwrap(), resumed_msgs)
    });
    eprintln!("cut after seq {last}; resumed at {at_resume}; feed ended at {n}");
    assert!(
        at_resume > last,
        "it missed updates ({last} vs {at_resume})"
    );

    // Every notification reached the reader that kept up, in order...
    assert_eq!(update_seqs(&fast_msgs), (1..=n).collect::<Vec<_>>());
    // ...and the resumed one got every seq after its last exactly once, in
    // order, through to the end: no resync, no gap, no repeat at the seam.
    assert_eq!(
        update_seqs(&resumed_msgs),
        (last + 1..=n).collect::<Vec<_>>()
    );
    assert!(n > at_resume, "the feed went on after the resume");
    assert_eq!(srv.metric("tickwire_resyncs_total"), 0.0);
    assert_eq!(
        srv.metric("tickwire_conflated_total"),
        0.0,
        "never conflated"
    );
    assert_eq!(
        srv.metric_label("tickwire_class_channels", "class=\"notify\""),
        1.0
    );
    // Counted by class: the cut, and the replay (once the worker has
    // published the counters of the turn that wrote it).
    let notify = |name: &str| srv.metric_label(name, "class=\"notify\"");
    let replayed = "tickwire_class_replayed_total";
    let t0 = Instant::now();
    while notify(replayed) < (at_resume - last) as f64 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(notify(replayed), (at_resume - last) as f64);
    assert_eq!(notify("tickwire_class_slow_consumer_closes_total"), 1.0);
    for name in [replayed, "tickwire_class_slow_consumer_closes_total"] {
        assert_eq!(srv.metric_label(name, "class=\"default\""), 0.0, "{name}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn history_api_serves_stored_updates_with_the_position_rules() {
    let srv = Server::start(&["--history-size", "20"]);
    let mut feed = Feed::connect(srv.ingest);
    for i in 1..=30 {
        feed.send(&tick("A", i));
    }
    srv.wait_metric(
        "tickwire_ingest_messages_total",
        |v| v >= 30.0,
        Duration::from_secs(5),
    );
    let get = |q: &str| {
        let (code, body) = common::http_request(
            srv.listen,
            &format!("GET /api/history?{q} HTTP/1.1\r\n\r\n"),
        );
        let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        (code, v, body)
    };
    let seqs = |v: &Value| -> Vec<u64> {
        v["updates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["seq"].as_u64().unwrap())
            .collect()
    };
    let (code, v, _) = get("ch=A&since=20&limit=5");
    assert_eq!(code, 200);
    assert_eq!(seqs(&v), vec![21, 22, 23, 24, 25]);
    assert_eq!(v["seq"], 30);
    assert!(v.get("resync").is_none(), "{v}");
    let epoch = v["epoch"].as_str().unwrap().to_string();
    // The update objects are the WebSocket ones, data verbatim.
    assert_eq!(v["updates"][0]["data"]["i"], 21);
    let (_, v, _) = get(&format!("ch=A&since=25&epoch={epoch}"));
    assert_eq!(seqs(&v), vec![26, 27, 28, 29, 30]);
    // Older than the 20 kept (11..=30): a resync and what is kept.
    let (_, v, _) = get("ch=A&since=3");
    assert_eq!(v["resync"], "position is older than the history");
    assert_eq!(seqs(&v), (11..=30).collect::<Vec<_>>());
    let (_, v, _) = get("ch=A&since=29&epoch=0000000000000000-9");
    assert!(v["resync"].as_str().unwrap().contains("epoch"), "{v}");
    assert_eq!(seqs(&v).len(), 20);
    let (code, v, _) = get("ch=A&since=30");
    assert_eq!((code, seqs(&v).len()), (200, 0), "up to date: {v}");
    assert!(v.get("resync").is_none());
    let (code, _, body) = get("ch=NOPE");
    assert_eq!(
        (code, body.as_str()),
        (404, r#"{"error":"unknown channel"}"#)
    );
    for bad in [
        "since=1",
        "ch=a%20b",
        "ch=A&since=x",
        "ch=A&limit=0",
        "ch=A&limit=5000",
    ] {
        assert_eq!(get(bad).0, 400, "{bad}");
    }

    // With authentication: a token, and a channel it allows.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tickwire"));
    cmd.args(["--listen", "127.0.0.1:0", "--ingest", "127.0.0.1:0"])
        .env("TICKWIRE_JWT_SECRET", "history-secret");
    let auth = Server::spawn_ready(cmd);
    let mut feed = Feed::connect(auth.ingest);
    feed.send(&tick("user.7", 1));
    feed.send(&tick("user.8", 1));
    std::thread::sleep(Duration::from_millis(200));
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub":"7","exp": 4_000_000_000u64,"channels":["user.{sub}"]}),
        &jsonwebtoken::EncodingKey::from_secret(b"history-secret").unwrap(),
    )
    .unwrap();
    let req = |path: &str, bearer: bool| {
        let h = if bearer {
            format!("Authorization: Bearer {token}\r\n")
        } else {
            String::new()
        };
        common::http_request(auth.listen, &format!("GET {path} HTTP/1.1\r\n{h}\r\n"))
    };
    assert_eq!(req("/api/history?ch=user.7", false).0, 401);
    assert_eq!(req("/api/history?ch=user.8", true).0, 403);
    let (code, body) = req("/api/history?ch=user.7", true);
    assert_eq!(code, 200, "{body}");
    let (code, _) = req(&format!("/api/history?ch=user.7&token={token}"), false);
    assert_eq!(code, 200);
}

#[test]
fn channels_api_lists_the_table_page_by_page() {
    let (dir, cfg) = common::notify_class_config("chanapi");
    let srv = Server::start(&["--config", cfg.to_str().unwrap()]);
    let mut feed = Feed::connect(srv.ingest);
    for k in 0..5 {
        feed.send(&tick(&format!("C{k}"), 1));
    }
    feed.send(&tick("user.1", 1));
    feed.send(&tick("user.1", 2));
    srv.wait_metric(
        "tickwire_ingest_messages_total",
        |v| v >= 7.0,
        Duration::from_secs(5),
    );
    let mut c = Client::connect(srv.listen);
    subscribe(&mut c, "user.1", None);
    let get = |q: &str| {
        let (code, body) = common::http_request(
            srv.listen,
            &format!("GET /api/channels{q} HTTP/1.1\r\n\r\n"),
        );
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()
    };
    let mut names = Vec::new();
    let mut cursor = Some(0u64);
    while let Some(at) = cursor {
        let page = get(&format!("?limit=2&cursor={at}"));
        let list = page["channels"].as_array().unwrap();
        assert!(list.len() <= 2);
        for ch in list {
            names.push(ch["name"].as_str().unwrap().to_string());
            if ch["name"] == "user.1" {
                assert_eq!(ch["class"], "notify");
                assert_eq!(ch["seq"], 2);
                assert_eq!(ch["history"], 2);
                assert_eq!(ch["subscriptions"], 1);
                assert_eq!(ch["subscribers"], 1);
            } else {
                assert_eq!(ch["class"], "default");
            }
        }
        cursor = page["next"].as_u64();
    }
    names.sort();
    assert_eq!(names, ["C0", "C1", "C2", "C3", "C4", "user.1"]);
    assert_eq!(get("")["channels"].as_array().unwrap().len(), 6);
    std::fs::remove_dir_all(dir).ok();
}

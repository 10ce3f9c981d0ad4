//! Clients that abuse the engine's resources: floods of requests they never
//! read the answers to, pipelined requests, made-up channel names, and
//! out-of-range configuration and HTTP heads. Each must cost bounded memory
//! and leave everyone else served.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{Client, Feed, RawWs, Server, http_request, tick};
use serde_json::{Value, json};

/// Writes `frame` over and over for `secs` from a client that never reads,
/// without blocking on a full socket (the engine may stop reading it).
fn flood(ws: &mut RawWs, frame: &[u8], secs: u64) -> usize {
    ws.s.set_write_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let batch: Vec<u8> = frame.repeat(64 * 1024 / frame.len());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut sent = 0;
    while Instant::now() < deadline {
        match ws.s.write(&batch) {
            Ok(n) => sent += n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break, // cut by the engine
        }
    }
    sent
}

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let key = [1u8, 2, 3, 4];
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

/// A bystander gets a fresh tick of its channel.
fn bystander_served(srv: &Server, feed: &mut Feed, client: &mut Client, ch: &str, i: u64) {
    feed.send(&tick(ch, i));
    let v = client.recv();
    assert_eq!(v["type"], "update", "{v}");
    assert_eq!(v["data"]["i"], i, "{v}");
    assert_eq!(srv.http_get("/healthz").0, 200);
}

/// An engine with a 64 KiB budget, a feed and a bystander subscribed to
/// `ch`, and a client with a 4 KiB receive buffer that sends `frame` for 3 s
/// without reading. Returns them with the bytes flooded and the RSS growth.
fn flood_beside(frame: &[u8], ch: &str) -> (Server, Feed, Client, RawWs, usize, u64) {
    let srv = Server::start(&common::one_host(&[
        "--workers",
        "1",
        "--outbound-budget",
        "64KiB",
    ]));
    let feed = Feed::connect(srv.ingest);
    let mut other = Client::connect(srv.listen);
    other.subscribe(&[ch]);
    let rss0 = srv.rss_kib();
    let mut flooder = RawWs::connect_with_rcvbuf(srv.listen, 4096);
    let sent = flood(&mut flooder, frame, 3);
    let grown = srv.rss_kib().saturating_sub(rss0);
    (srv, feed, other, flooder, sent, grown)
}

#[test]
fn ping_flood_from_a_client_that_never_reads_costs_bounded_memory() {
    let (srv, mut feed, mut other, _flooder, sent, grown) = flood_beside(&masked(0x9, b""), "P");
    // Before pongs were coalesced, ~8M pings took over 1 GiB here.
    assert!(sent > 1 << 20, "the flood sent only {sent} bytes");
    assert!(
        grown < 16 * 1024,
        "RSS grew {grown} KiB after {sent} bytes of pings"
    );
    bystander_served(&srv, &mut feed, &mut other, "P", 1);
}

#[test]
fn bad_message_flood_without_reading_is_bounded_then_cut() {
    let (srv, mut feed, mut other, mut flooder, sent, grown) =
        flood_beside(&masked(0x1, b"x"), "E");
    assert!(sent > 64 * 1024, "the flood sent only {sent} bytes");
    assert!(
        grown < 16 * 1024,
        "RSS grew {grown} KiB after {sent} bytes of bad messages"
    );
    bystander_served(&srv, &mut feed, &mut other, "E", 1);
    // One read of such requests already makes more answers than four
    // budgets: the client is cut with 1008 (what was queued is dropped).
    flooder
        .s
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let (code, reason) = flooder.read_close();
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("too many requests"), "{reason}");
    assert!(srv.metric("tickwire_protocol_closes_total") >= 1.0);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let srv = Server::start(&[]);
    let mut feed = Feed::connect(srv.ingest);
    feed.send(&tick("B", 1));
    srv.wait_metric(
        "tickwire_ingest_messages_total",
        |n| n >= 1.0,
        Duration::from_secs(5),
    );
    let mut ws = RawWs::connect(srv.listen);
    // One write: the worker sees all four requests in one read.
    let mut wire = Vec::new();
    for msg in [
        json!({"op":"subscribe","channels":["A"]}).to_string(),
        json!({"op":"unsubscribe","channels":["A"]}).to_string(),
        json!({"op":"subscribe","channels":["B"]}).to_string(),
        "nonsense".to_string(),
    ] {
        wire.extend(masked(0x1, msg.as_bytes()));
    }
    ws.s.write_all(&wire).unwrap();
    let mut got = Vec::new();
    while got.len() < 5 {
        let (op, p) = ws.read_frame().expect("reply");
        assert_eq!(op, 0x1);
        let v: Value = serde_json::from_slice(&p).unwrap();
        got.push(match v["type"].as_str().unwrap() {
            "error" => format!("error {}", v["code"].as_str().unwrap()),
            "update" => format!("update {} {}", v["ch"].as_str().unwrap(), v["seq"]),
            t => format!("{t} {}", v["channels"]),
        });
    }
    assert_eq!(
        got,
        [
            r#"subscribed ["A"]"#,
            r#"unsubscribed ["A"]"#,
            r#"subscribed ["B"]"#,
            "update B 1",
            "error bad_json",
        ]
    );
    // A was unsubscribed: its first value does not arrive; B's next does.
    feed.send(&tick("A", 1));
    feed.send(&tick("B", 2));
    let (_, p) = ws.read_frame().unwrap();
    let v: Value = serde_json::from_slice(&p).unwrap();
    assert_eq!((v["ch"].as_str(), v["seq"].as_u64()), (Some("B"), Some(2)));
}

#[test]
fn clients_subscribing_to_made_up_names_cannot_starve_the_feeds() {
    let srv = Server::start(&["--max-channels", "10"]);
    let mut c = Client::connect(srv.listen);
    let names: Vec<String> = (0..30).map(|i| format!("MADE.UP.{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    c.send(&json!({"op":"subscribe","channels":refs}));
    let first = c.recv();
    assert_eq!(first["code"], "channel_limit", "{first}");
    let ack = c.recv();
    assert_eq!(ack["type"], "subscribed");
    assert_eq!(ack["channels"].as_array().unwrap().len(), 10);
    // The feeds still have their ten channels.
    let mut feed = Feed::connect(srv.ingest);
    for i in 0..11 {
        feed.send(&tick(&format!("REAL{i}"), 1));
    }
    let err = feed.read_error(Duration::from_secs(5));
    assert_eq!(err["error"], "too many channels in the engine");
    assert_eq!(err["line"], 11, "the first ten new channels were accepted");
    // A subscriber's own made-up channel goes live when a feed publishes it
    // while the feeds' pool has room; here it is full, so it is refused too.
    feed.send(&tick("MADE.UP.0", 1));
    assert_eq!(feed.read_error(Duration::from_secs(5))["line"], 12);
    let mut d = Client::connect(srv.listen);
    d.subscribe(&["REAL3"]);
    assert_eq!(d.recv()["ch"], "REAL3", "snapshot of a feed channel");
    // Made-up names nobody holds any more are forgotten: after the
    // unsubscribe, ten new ones fit (same connection, so the same worker
    // hands the release to the ingest thread before the next request).
    let ten: Vec<&str> = refs[..10].to_vec();
    c.send(&json!({"op":"unsubscribe","channels":ten}));
    assert_eq!(c.recv()["type"], "unsubscribed");
    let fresh: Vec<String> = (0..10).map(|i| format!("OTHER.{i}")).collect();
    let fresh: Vec<&str> = fresh.iter().map(String::as_str).collect();
    let ack = c.subscribe(&fresh);
    assert_eq!(ack["channels"].as_array().unwrap().len(), 10, "{ack}");
}

#[test]
fn out_of_range_settings_and_oversized_heads_are_refused() {
    for args in [
        &["--ping-interval", "1e300"][..],
        &["--idle-timeout=-5"],
        &["--slow-consumer-timeout", "30d"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickwire"))
            .args(["--listen", "127.0.0.1:0", "--ingest", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let flag = args[0].trim_start_matches("--").split('=').next().unwrap();
        assert!(
            err.contains(flag) || err.contains(&flag.replace('-', "_")),
            "{args:?}: {err}"
        );
    }
    let srv = Server::start(&[]);
    let big = format!(
        "GET /healthz HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(9 * 1024)
    );
    assert_eq!(http_request(srv.listen, &big).0, 431);
    let many: String = (0..100).map(|i| format!("H{i}: v\r\n")).collect();
    let many = format!("GET /healthz HTTP/1.1\r\n{many}\r\n");
    assert_eq!(http_request(srv.listen, &many).0, 431);
    let head_ws = "HEAD /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    assert_eq!(http_request(srv.listen, head_ws).0, 400);
    assert_eq!(srv.http_get("/healthz").0, 200);
}

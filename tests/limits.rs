//! Abuse limits against the real engine: connections and new connections
//! per client address (with and without a trusted proxy naming the client),
//! client messages per second, allowed origins, feed connections, and the
//! admin port. Each hit is answered clearly and counted by reason; a
//! subscribed witness loses nothing.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{Client, Feed, Server, tick};
use serde_json::{Value, json};

/// An upgrade with extra header lines: the status, the head and the open
/// stream (kept open while the connection should count).
fn upgrade(addr: SocketAddr, headers: &str) -> (u16, String, TcpStream) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{headers}\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    if code != 101 {
        // The body follows the head; the engine closes after it.
        let mut body = String::new();
        let _ = r.read_to_string(&mut body);
        head.push_str("\r\n");
        head.push_str(&body);
    }
    (code, head, s)
}

fn limit_hits(srv: &Server, reason: &str) -> f64 {
    srv.metric_label(
        "tickwire_limit_rejects_total",
        &format!("reason=\"{reason}\""),
    )
}

#[test]
fn limits_connections_per_ip_and_through_a_trusted_proxy() {
    let srv = Server::start(&[
        "--max-connections-per-ip",
        "2",
        "--new-connections-per-ip-per-second",
        "0",
    ]);
    let (a, _, _a) = upgrade(srv.listen, "");
    let (b, _, b_stream) = upgrade(srv.listen, "");
    assert_eq!((a, b), (101, 101));
    let (c, head, _) = upgrade(srv.listen, "");
    assert_eq!(c, 503, "{head}");
    assert_eq!(limit_hits(&srv, "connections_per_ip"), 1.0);
    // An untrusted peer cannot claim another address.
    let (d, _, _) = upgrade(srv.listen, "X-Forwarded-For: 9.9.9.9\r\n");
    assert_eq!(d, 503);
    // One closes: room again.
    drop(b_stream);
    let mut ok = false;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(50));
        if upgrade(srv.listen, "").0 == 101 {
            ok = true;
            break;
        }
    }
    assert!(ok, "a closed connection frees its place");

    // Behind a trusted proxy each forwarded client counts for itself.
    let proxied = Server::start(&[
        "--max-connections-per-ip",
        "1",
        "--trusted-proxies",
        "127.0.0.0/8",
    ]);
    let (x, _, _x) = upgrade(proxied.listen, "X-Forwarded-For: 1.1.1.1\r\n");
    let (y, _, _y) = upgrade(proxied.listen, "Forwarded: for=\"[2001:db8::1]:4711\"\r\n");
    let (z, _, _z) = upgrade(proxied.listen, "X-Forwarded-For: 6.6.6.6, 1.1.1.1\r\n");
    assert_eq!(
        (x, y, z),
        (101, 101, 503),
        "1.1.1.1 twice (the forged left entry is ignored)"
    );
}

#[test]
fn limits_new_connections_per_ip_per_second_answer_429() {
    let srv = Server::start(&["--new-connections-per-ip-per-second", "5"]);
    let mut codes = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..8 {
        let (code, head, s) = upgrade(srv.listen, "");
        if code == 429 {
            assert!(head.contains("Retry-After: 1"), "{head}");
        }
        codes.push(code);
        keep.push(s);
    }
    let ok = codes.iter().filter(|c| **c == 101).count();
    // Five in the bucket, perhaps one more refilled while connecting.
    assert!((5..=6).contains(&ok), "{codes:?}");
    assert!(codes.contains(&429), "{codes:?}");
    assert!(limit_hits(&srv, "new_connections_per_ip") >= 2.0);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(upgrade(srv.listen, "").0, 101, "the bucket refills");
}

#[test]
fn limits_client_messages_rate_limited_then_1008() {
    let srv = Server::start(&["--client-messages-per-second", "5"]);
    let mut witness = Client::connect(srv.listen);
    witness.subscribe(&["W"]);
    let mut c = Client::connect(srv.listen);
    // The burst (two seconds' worth) is served.
    for _ in 0..10 {
        c.send(&json!({"op":"unsubscribe","channels":["X"]}));
    }
    for _ in 0..10 {
        assert_eq!(c.recv()["type"], "unsubscribed");
    }
    // Then one more at a time until refused (a token may refill meanwhile).
    let mut refused = false;
    for _ in 0..5 {
        c.send(&json!({"op":"unsubscribe","channels":["X"]}));
        let v = c.recv();
        if v["code"] == "rate_limited" {
            refused = true;
            break;
        }
        assert_eq!(v["type"], "unsubscribed", "{v}");
    }
    assert!(refused, "never rate limited");
    // Keeping on: closed 1008.
    for _ in 0..20 {
        if c.ws.send(tungstenite::Message::text("{}")).is_err() {
            break;
        }
    }
    let close = loop {
        match c.ws.read() {
            Ok(tungstenite::Message::Close(f)) => break f.expect("close frame"),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    };
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("rate limit"), "{}", close.reason);
    assert!(limit_hits(&srv, "client_messages") >= 1.0);
    assert_eq!(limit_hits(&srv, "client_messages_close"), 1.0);
    let mut feed = Feed::connect(srv.ingest);
    feed.send(&tick("W", 1));
    assert_eq!(witness.recv()["seq"], 1);
}

#[test]
fn limits_allowed_origins_and_feed_connections() {
    let srv = Server::start(&[
        "--allowed-origins",
        "https://app.example.com,http://localhost:3000",
        "--max-feed-connections",
        "2",
    ]);
    let (bad, head, _) = upgrade(srv.listen, "Origin: https://evil.example\r\n");
    assert_eq!(bad, 403, "{head}");
    assert!(head.ends_with("\r\n\r\norigin not allowed\n"), "{head:?}");
    assert_eq!(
        upgrade(srv.listen, "Origin: https://app.example.com\r\n").0,
        101
    );
    assert_eq!(
        upgrade(srv.listen, "Origin: http://localhost:3000\r\n").0,
        101
    );
    // No Origin: not a browser; allowed.
    assert_eq!(upgrade(srv.listen, "").0, 101);
    assert_eq!(limit_hits(&srv, "origin"), 1.0);

    let mut c = Client::connect(srv.listen);
    c.subscribe(&["A"]);
    let mut f1 = Feed::connect(srv.ingest);
    let mut f2 = Feed::connect(srv.ingest);
    f1.send(&tick("A", 1));
    f2.send(&tick("A", 2));
    assert_eq!(c.recv()["seq"], 1);
    assert_eq!(c.recv()["seq"], 2);
    let mut f3 = Feed::connect(srv.ingest);
    let err: Value = f3.read_error(Duration::from_secs(5));
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("too many feed connections"),
        "{err}"
    );
    assert_eq!(limit_hits(&srv, "feed_connections"), 1.0);
    drop(f3);
    // The first two go on.
    f1.send(&tick("A", 3));
    assert_eq!(c.recv()["seq"], 3);
}

#[test]
fn limits_admin_port_serves_metrics_off_the_public_one() {
    let srv = Server::start(&["--admin-listen", "127.0.0.1:0"]);
    let admin = srv.admin.expect("admin= in the ready line");
    let (code, _) = common::http_request(srv.listen, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(code, 404, "not on the public port");
    let (code, body) = common::http_request(admin, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(code, 200);
    assert!(
        body.contains("tickwire_limit_rejects_total{reason=\"origin\"} 0"),
        "{body}"
    );
    assert!(body.contains("tickwire_auth_failures_total"), "{body}");
    let (code, _) = common::http_request(admin, "GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(code, 200);
    let (code, _) = common::http_request(admin, "GET /ws HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(code, 404);
    // The public port keeps its health endpoints.
    assert_eq!(srv.http_get("/healthz").0, 200);
}

#[test]
fn limits_older_limits_are_counted_by_reason() {
    let srv = Server::start(&[
        "--max-frame-size",
        "128",
        "--max-channels-per-connection",
        "2",
        "--max-line-size",
        "64",
        "--handshake-timeout",
        "1s",
    ]);
    for reason in [
        "subscriptions_per_connection",
        "frame_too_large",
        "handshake_timeout",
        "line_too_long",
    ] {
        assert_eq!(limit_hits(&srv, reason), 0.0, "{reason} before any hit");
    }
    // Too many subscriptions: refused with an error, counted.
    let mut c = Client::connect(srv.listen);
    c.send(&json!({"op":"subscribe","channels":["A","B","C"]}));
    let err = c.recv();
    assert_eq!(err["code"], "too_many_channels", "{err}");
    assert_eq!(limit_hits(&srv, "subscriptions_per_connection"), 1.0);
    // A frame over max_frame_size: 1009, counted.
    c.send_text(&"x".repeat(200));
    let close = c.expect_close().expect("close frame");
    assert_eq!(u16::from(close.code), 1009);
    // Counted before the close frame was queued.
    assert_eq!(limit_hits(&srv, "frame_too_large"), 1.0);
    // A handshake that never completes: closed after handshake_timeout.
    let mut slow = TcpStream::connect(srv.listen).unwrap();
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\n").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "handshake closed after {took:?}"
    );
    assert_eq!(limit_hits(&srv, "handshake_timeout"), 1.0);
    // A feed line over max_line_size.
    let mut feed = Feed::connect(srv.ingest);
    feed.send(&format!("{{\"ch\":\"A\",\"pad\":\"{}\"}}", "p".repeat(100)));
    let err = feed.read_error(Duration::from_secs(5));
    assert_eq!(err["error"], "line too long", "{err}");
    assert_eq!(limit_hits(&srv, "line_too_long"), 1.0);
}

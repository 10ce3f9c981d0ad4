//! JWT authentication and per-channel permissions, against the real engine
//! with a real WebSocket client and tokens signed here: the token on the
//! upgrade (header or query) or in the first message, 401 and 1008 with
//! one-line reasons, forbidden channels never delivered, live refresh and
//! the close at `exp`, the feed `AUTH` line, and the cost of a flood of bad
//! tokens.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Client, Feed, Server, tick};
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::Message;

const SECRET: &str = "test-secret-of-some-length";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: Value, secret: &str) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn user_token(sub: &str, exp_in: u64, channels: &[&str]) -> String {
    token(
        json!({"sub": sub, "exp": now() + exp_in, "channels": channels}),
        SECRET,
    )
}

/// The engine with HS256 authentication, the secret from the environment.
fn start(extra: &[&str]) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickwire"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--ingest",
        "127.0.0.1:0",
        "--workers",
        "2",
    ]);
    cmd.args(extra);
    cmd.env("TICKWIRE_JWT_SECRET", SECRET);
    Server::spawn_ready(cmd)
}

/// Sends an upgrade with extra header lines; (status, body) of the answer
/// (the body only when it is not 101).
fn upgrade(addr: SocketAddr, path: &str, headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{headers}\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let code = status.split(' ').nth(1).unwrap().parse().unwrap();
    if code == 101 {
        return (101, String::new());
    }
    let mut rest = String::new();
    let _ = r.read_to_string(&mut rest);
    let body = rest.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (code, body.trim().to_string())
}

/// A WebSocket client whose upgrade carries `Authorization: Bearer`.
fn connect_bearer(addr: SocketAddr, token: &str) -> Client {
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, resp) = tungstenite::connect(req).expect("ws connect");
    assert_eq!(resp.status().as_u16(), 101);
    let c = Client { ws };
    c.set_timeout(Duration::from_secs(10));
    c
}

fn connect_plain(addr: SocketAddr, path: &str) -> Client {
    let (ws, _) = tungstenite::connect(format!("ws://{addr}{path}")).expect("ws connect");
    let c = Client { ws };
    c.set_timeout(Duration::from_secs(10));
    c
}

/// Reads until `pred` holds for a JSON message; panics after `timeout`.
fn recv_until(c: &mut Client, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    c.set_timeout(Duration::from_millis(200));
    loop {
        assert!(Instant::now() < deadline, "no matching message in time");
        if let Some(Message::Text(t)) = c.try_recv() {
            let v: Value = serde_json::from_str(&t).unwrap();
            if pred(&v) {
                return v;
            }
        }
    }
}

#[test]
fn auth_upgrade_token_grants_only_its_channels() {
    let srv = start(&[]);
    let good = user_token("u1", 600, &["A", "fx.*", "user.{sub}"]);
    // Refusals: one line each, 401.
    let expired = token(json!({"sub":"u1","exp": now() - 120}), SECRET);
    let forged = token(json!({"sub":"u1","exp": now() + 600}), "another-secret");
    for (tok, why) in [
        (expired.as_str(), "token expired"),
        (forged.as_str(), "bad signature"),
        ("not.a.jwt", "malformed token"),
    ] {
        let (code, body) = upgrade(
            srv.listen,
            "/ws",
            &format!("Authorization: Bearer {tok}\r\n"),
        );
        assert_eq!((code, body.as_str()), (401, why));
        let (code, body) = upgrade(srv.listen, &format!("/ws?token={tok}"), "");
        assert_eq!((code, body.as_str()), (401, why), "query token");
    }
    assert!(srv.metric_label("tickwire_auth_failures_total", "reason=\"bad_signature\"") >= 2.0);
    assert!(srv.metric_label("tickwire_auth_failures_total", "reason=\"expired\"") >= 2.0);

    let mut c = connect_bearer(srv.listen, &good);
    c.send(&json!({"op":"subscribe","channels":["A","B","fx.EUR","user.u1","user.u2"]}));
    let err = c.recv();
    assert_eq!(err["type"], "error", "{err}");
    assert_eq!(err["code"], "forbidden", "{err}");
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.contains("B") && msg.contains("user.u2") && !msg.contains("fx.EUR"),
        "{msg}"
    );
    let ack = c.recv();
    assert_eq!(ack["type"], "subscribed");
    assert_eq!(ack["channels"], json!(["A", "fx.EUR", "user.u1"]));
    // The query token works the same way.
    let mut q = connect_plain(srv.listen, &format!("/ws?token={good}"));
    q.subscribe(&["user.u1"]);

    let mut feed = Feed::connect(srv.ingest);
    for i in 1..=50 {
        feed.send(&tick("B", i));
        feed.send(&tick("user.u2", i));
        feed.send(&tick("A", i));
        feed.send(&tick("user.u1", i));
    }
    let mut a = 0;
    let mut mine = 0;
    while a < 50 || mine < 50 {
        let v = c.recv();
        match v["ch"].as_str().unwrap() {
            "A" => a += 1,
            "user.u1" => mine += 1,
            other => panic!("delivered a forbidden channel {other}: {v}"),
        }
    }
    for _ in 0..50 {
        assert_eq!(q.recv()["ch"], "user.u1");
    }
}

#[test]
fn auth_first_message_token_or_close_1008() {
    let srv = start(&[]);
    // Something other than auth first: 1008, missing token.
    let mut c = connect_plain(srv.listen, "/ws");
    c.send(&json!({"op":"subscribe","channels":["A"]}));
    let close = c.expect_close().expect("close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert!(
        close.reason.starts_with("missing token"),
        "{}",
        close.reason
    );
    // A bad token in the first message: 1008 with the reason.
    let mut c = connect_plain(srv.listen, "/ws");
    let forged = token(json!({"sub":"u1","exp": now() + 600}), "nope");
    c.send(&json!({"op":"auth","token":forged}));
    let close = c.expect_close().expect("close frame");
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1008, "bad signature")
    );
    // A good one: authenticated, then served.
    let mut c = connect_plain(srv.listen, "/ws");
    c.send(&json!({"op":"auth","token": user_token("u9", 600, &["A"])}));
    let ok = c.recv();
    assert_eq!(ok["type"], "authenticated", "{ok}");
    assert_eq!(ok["sub"], "u9");
    c.subscribe(&["A"]);
    let mut feed = Feed::connect(srv.ingest);
    feed.send(&tick("A", 1));
    assert_eq!(c.recv()["seq"], 1);
}

#[test]
fn auth_refresh_narrows_channels_and_expiry_closes_1008() {
    let srv = start(&["--jwt-leeway", "0s", "--token-refresh-lead", "3s"]);
    let mut c = connect_bearer(srv.listen, &user_token("u1", 5, &["A", "B"]));
    c.subscribe(&["A", "B"]);
    let warn = recv_until(&mut c, Duration::from_secs(8), |v| {
        v["type"] == "token_expiring"
    });
    assert!(warn["exp"].as_u64().unwrap() <= now() + 5, "{warn}");
    // A token for another user: 1008.
    let mut other = connect_bearer(srv.listen, &user_token("u1", 600, &["A"]));
    other.send(&json!({"op":"auth","token": user_token("u2", 600, &["A"])}));
    let close = other.expect_close().expect("close frame");
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1008, "token for another user")
    );
    // The refresh allows A only: B ends, A goes on.
    c.send(&json!({"op":"auth","token": user_token("u1", 4, &["A"])}));
    let ended = recv_until(&mut c, Duration::from_secs(5), |v| {
        v["type"] == "unsubscribed"
    });
    assert_eq!(
        ended,
        json!({"type":"unsubscribed","channels":["B"],"reason":"forbidden"})
    );
    let ok = recv_until(&mut c, Duration::from_secs(5), |v| {
        v["type"] == "authenticated"
    });
    assert_eq!(ok["sub"], "u1");
    let mut feed = Feed::connect(srv.ingest);
    feed.send(&tick("B", 1));
    feed.send(&tick("A", 1));
    let v = recv_until(&mut c, Duration::from_secs(5), |v| v.get("ch").is_some());
    assert_eq!(v["ch"], "A", "B is no longer delivered: {v}");
    // No second refresh: closed at exp.
    let started = Instant::now();
    c.set_timeout(Duration::from_secs(10));
    let close = loop {
        match c.ws.read().expect("read") {
            Message::Close(f) => break f.expect("close frame"),
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                assert_ne!(v["ch"], "B", "{v}");
            }
            _ => {}
        }
    };
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1008, "token expired")
    );
    assert!(started.elapsed() < Duration::from_secs(7));
}

#[test]
fn auth_feed_needs_its_auth_line() {
    let dir = std::env::temp_dir().join(format!("tickwire-ingest-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    std::fs::write(&path, "feed-token-123\n").unwrap();
    let srv = Server::start(&["--ingest-token-file", path.to_str().unwrap()]);
    let mut c = Client::connect(srv.listen);
    c.subscribe(&["A"]);
    let refused = |first: &str| {
        let mut f = Feed::connect(srv.ingest);
        f.send(first);
        f.send(&tick("A", 99));
        let err = f.read_error(Duration::from_secs(5));
        // Then closed.
        let mut rest = Vec::new();
        f.stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let _ = f.stream.read_to_end(&mut rest);
        (err, rest)
    };
    let (err, rest) = refused(&tick("A", 99));
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .starts_with("authentication required"),
        "{err}"
    );
    assert!(rest.is_empty(), "one error line, then closed");
    let (err, _) = refused("AUTH wrong-token");
    assert_eq!(err["error"], "bad token");
    let mut good = Feed::connect(srv.ingest);
    good.send("AUTH feed-token-123");
    good.send(&tick("A", 1));
    let v = c.recv();
    assert_eq!(
        (v["seq"].as_u64(), v["data"]["i"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    std::fs::remove_dir_all(dir).ok();
}

/// CPU seconds the process has used (utime + stime).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf(3) reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

#[test]
fn auth_bad_token_flood_costs_little_and_loses_nothing() {
    let srv = start(&["--new-connections-per-ip-per-second", "0"]);
    let mut witness = connect_bearer(srv.listen, &user_token("w", 600, &["W"]));
    witness.subscribe(&["W"]);
    let forged = token(json!({"sub":"x","exp": now() + 600}), "forged");
    let mut feed = Feed::connect(srv.ingest);
    let cpu0 = cpu_seconds(srv.pid());
    const N: u64 = 400;
    for i in 1..=N {
        let (code, _) = upgrade(
            srv.listen,
            "/ws",
            &format!("Authorization: Bearer {forged}\r\n"),
        );
        assert_eq!(code, 401);
        feed.send(&tick("W", i));
        // Read as we go: a witness that stops reading is a slow consumer
        // and is rightly conflated once the kernel's buffers fill.
        assert_eq!(witness.recv()["seq"], i);
    }
    let cpu = cpu_seconds(srv.pid()) - cpu0;
    let per = cpu / N as f64 * 1e6;
    eprintln!("{N} bad-token upgrades: {per:.0} µs engine CPU each (with one delivery each)");
    // Debug build, loaded machine: far under a millisecond each.
    assert!(per < 2_000.0, "{per} µs CPU per rejected upgrade");
    assert!(
        srv.metric_label("tickwire_auth_failures_total", "reason=\"bad_signature\"") >= N as f64
    );
}

#[test]
fn auth_key_options_are_checked_at_start() {
    let run = |args: &[&str], env: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickwire"));
        cmd.args(["--listen", "127.0.0.1:0", "--ingest", "127.0.0.1:0"])
            .args(args);
        cmd.env_remove("TICKWIRE_JWT_SECRET");
        if let Some(e) = env {
            cmd.env("TICKWIRE_JWT_SECRET", e);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(&["--jwt-secret-file", "/nonexistent/secret"], None);
    assert_eq!(code, Some(2));
    assert!(err.contains("/nonexistent/secret"), "{err}");
    let (code, err) = run(&["--jwt-public-key", "/nonexistent/key.pem"], Some("s"));
    assert_eq!(code, Some(2));
    assert!(err.contains("give one of"), "{err}");
    let (code, err) = run(&["--jwt-audience", "x"], None);
    assert_eq!(code, Some(2));
    assert!(err.contains("jwt_audience"), "{err}");
}

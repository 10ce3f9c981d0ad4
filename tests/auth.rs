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
    user_token_at(sub, now() + exp_in, channels)
}

fn user_token_at(sub: &str, exp: u64, channels: &[&str]) -> String {
    token(
        json!({"sub": sub, "exp": exp, "channels": channels}),
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
fn auth_client_that_never_authenticates_is_closed_within_the_handshake_timeout() {
    let srv = start(&["--handshake-timeout", "1s"]);
    let mut c = connect_plain(srv.listen, "/ws");
    let started = Instant::now();
    c.set_timeout(Duration::from_secs(5));
    let close = match c.ws.read().expect("read") {
        Message::Close(f) => f.expect("close frame"),
        m => panic!("nothing is sent before auth: {m:?}"),
    };
    let took = started.elapsed();
    assert_eq!(u16::from(close.code), 1008);
    assert!(
        close.reason.starts_with("authentication timeout"),
        "{}",
        close.reason
    );
    // The configured 1 s (plus a housekeeping tick), not the default 10 s.
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    assert!(srv.metric_label("tickwire_auth_failures_total", "reason=\"missing\"") >= 1.0);
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
fn auth_token_within_leeway_lives_until_exp_plus_leeway() {
    let srv = start(&["--jwt-leeway", "4s", "--token-refresh-lead", "2s"]);
    // exp is this second: accepted within the leeway, good until exp + 4 s.
    let exp = now();
    let mut c = connect_bearer(srv.listen, &user_token_at("u1", exp, &["A"]));
    let started = Instant::now();
    c.subscribe(&["A"]);
    let mut feed = Feed::connect(srv.ingest);
    feed.send(&tick("A", 1));
    let v = recv_until(&mut c, Duration::from_secs(5), |v| v.get("ch").is_some());
    assert_eq!(v["seq"], 1, "served while within the leeway: {v}");
    // The warning comes a lead before exp + leeway, not at once.
    let warn = recv_until(&mut c, Duration::from_secs(8), |v| {
        v["type"] == "token_expiring"
    });
    assert_eq!(warn["exp"], exp, "{warn}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "warned after {:?}",
        started.elapsed()
    );
    c.set_timeout(Duration::from_secs(10));
    let close = loop {
        if let Message::Close(f) = c.ws.read().expect("read") {
            break f.expect("close frame");
        }
    };
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (1008, "token expired")
    );
    // exp + 4 s is at least 3 s after the token was made.
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_millis(2900) && lived < Duration::from_secs(8),
        "closed after {lived:?}"
    );
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
    // Feed refusals have reasons of their own, apart from the JWT ones.
    let reason =
        |r: &str| srv.metric_label("tickwire_auth_failures_total", &format!("reason=\"{r}\""));
    assert_eq!(reason("feed_missing"), 1.0);
    assert_eq!(reason("feed_bad_token"), 1.0);
    assert_eq!(reason("feed_timeout"), 0.0);
    assert_eq!(reason("missing") + reason("bad_signature"), 0.0);
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

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn rs256(claims: Value) -> String {
    let pem = std::fs::read(fixture("rs256-test.key")).unwrap();
    encode(
        &Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&pem).unwrap(),
    )
    .unwrap()
}

#[test]
fn auth_rs256_public_key_end_to_end_and_issuer_mismatch_401() {
    let key = fixture("rs256-test.pub");
    let srv = Server::start(&[
        "--jwt-public-key",
        &key,
        "--jwt-issuer",
        "https://issuer.test",
    ]);
    let good =
        rs256(json!({"sub":"r1","exp": now() + 600,"iss":"https://issuer.test","channels":["A"]}));
    let mut c = connect_bearer(srv.listen, &good);
    assert_eq!(c.subscribe(&["A"])["type"], "subscribed");
    let mut feed = Feed::connect(srv.ingest);
    feed.send(&tick("A", 1));
    assert_eq!(c.recv()["seq"], 1);
    let other = rs256(json!({"sub":"r1","exp": now() + 600,"iss":"https://other.test"}));
    let none = rs256(json!({"sub":"r1","exp": now() + 600}));
    for t in [&other, &none] {
        assert_eq!(
            upgrade(srv.listen, "/ws", &format!("Authorization: Bearer {t}\r\n")),
            (401, "wrong issuer".to_string())
        );
    }
    // The HS256 secret path is off: a token signed with the public key
    // text as an HMAC secret is refused.
    let pem = std::fs::read_to_string(&key).unwrap();
    let forged = token(
        json!({"sub":"r1","exp": now() + 600,"iss":"https://issuer.test"}),
        &pem,
    );
    assert_eq!(
        upgrade(srv.listen, &format!("/ws?token={forged}"), "").0,
        401
    );
    assert_eq!(
        srv.metric_label("tickwire_auth_failures_total", "reason=\"issuer\""),
        2.0
    );
}

fn b64url(data: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(data)
}

#[test]
fn auth_jwks_kid_tokens_end_to_end() {
    let k1 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let k2 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let jwk = |kid: &str, k: &rcgen::KeyPair| {
        let raw = k.public_key_raw();
        json!({"kty":"EC","crv":"P-256","kid":kid,"x": b64url(&raw[1..33]), "y": b64url(&raw[33..])})
    };
    let dir = std::env::temp_dir().join(format!("tickwire-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("keys.json");
    std::fs::write(
        &path,
        json!({"keys":[jwk("one", &k1), jwk("two", &k2)]}).to_string(),
    )
    .unwrap();
    let srv = Server::start(&["--jwt-jwks-file", path.to_str().unwrap()]);
    let sign = |kid: &str, k: &rcgen::KeyPair, sub: &str| {
        let mut h = Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some(kid.to_string());
        let enc = EncodingKey::from_ec_pem(k.serialize_pem().as_bytes()).unwrap();
        encode(
            &h,
            &json!({"sub": sub, "exp": now() + 600, "channels": ["user.{sub}"]}),
            &enc,
        )
        .unwrap()
    };
    let mut feed = Feed::connect(srv.ingest);
    // Each key by its kid, the token on the upgrade or in the first message.
    let mut a = connect_bearer(srv.listen, &sign("one", &k1, "ann"));
    assert_eq!(a.subscribe(&["user.ann"])["type"], "subscribed");
    let mut b = connect_plain(srv.listen, "/ws");
    b.send(&json!({"op":"auth","token": sign("two", &k2, "bob")}));
    assert_eq!(b.recv()["type"], "authenticated");
    assert_eq!(b.subscribe(&["user.bob"])["type"], "subscribed");
    feed.send(&tick("user.ann", 1));
    feed.send(&tick("user.bob", 1));
    assert_eq!(a.recv()["ch"], "user.ann");
    assert_eq!(b.recv()["ch"], "user.bob");
    // A kid naming the other key, or no key at all: 401.
    let wrong = sign("one", &k2, "eve");
    let unknown = sign("three", &k1, "eve");
    let auth = |t: &str| format!("Authorization: Bearer {t}\r\n");
    assert_eq!(
        upgrade(srv.listen, "/ws", &auth(&wrong)),
        (401, "bad signature".to_string())
    );
    assert_eq!(
        upgrade(srv.listen, "/ws", &auth(&unknown)),
        (401, "unknown key id".to_string())
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn auth_stderr_never_holds_a_token() {
    let log = std::env::temp_dir().join(format!("tickwire-auth-log-{}", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickwire"));
    cmd.args(["--listen", "127.0.0.1:0", "--ingest", "127.0.0.1:0"]);
    cmd.env("TICKWIRE_JWT_SECRET", SECRET);
    let mut srv = Server::spawn_ready_with_stderr(cmd, std::fs::File::create(&log).unwrap().into());
    let forged = token(json!({"sub":"u1","exp": now() + 600}), "not-the-secret");
    let expired = token(json!({"sub":"u1","exp": now() - 600}), SECRET);
    let junk = "eyJhbGciOiJIUzI1NiJ9.not-a-payload.sig-nature-xyz";
    for t in [&forged, &expired, &junk.to_string()] {
        assert_eq!(
            upgrade(srv.listen, "/ws", &format!("Authorization: Bearer {t}\r\n")).0,
            401
        );
        assert_eq!(upgrade(srv.listen, &format!("/ws?token={t}"), "").0, 401);
        let mut c = connect_plain(srv.listen, "/ws");
        c.send(&json!({"op":"auth","token": t}));
        let close = c.expect_close().expect("close frame");
        assert_eq!(u16::from(close.code), 1008);
    }
    // A good token refreshed with a bad one is cut too.
    let mut c = connect_bearer(srv.listen, &user_token("u1", 600, &["A"]));
    c.send(&json!({"op":"auth","token": forged}));
    assert_eq!(u16::from(c.expect_close().expect("close").code), 1008);
    // Stop it so everything it would log is written.
    srv.signal(15);
    srv.wait_exit(Duration::from_secs(15)).expect("exits");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_file(&log).ok();
    for t in [&forged, &expired, &junk.to_string()] {
        // No whole token, and not its signature either.
        let sig = t.rsplit('.').next().unwrap();
        assert!(!text.contains(t.as_str()), "a token in stderr:\n{text}");
        assert!(!text.contains(sig), "a signature in stderr:\n{text}");
    }
    assert!(!text.contains(SECRET), "the secret in stderr");
}

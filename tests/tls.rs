//! TLS on the listen port: wss:// and https:// with a certificate made in the
//! test, delivery by seq over TLS, bad files refused at start, SIGHUP reloads
//! (new handshakes see the new certificate, open connections stay), and a
//! plain-text client on the TLS port costs nobody else their data.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Feed, Server, tick};
use rustls::pki_types::{CertificateDer, ServerName};
use tungstenite::Message;

type TlsWs = tungstenite::WebSocket<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

struct Pair {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

fn make_pair(dir: &Path, name: &str) -> Pair {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    Pair {
        cert,
        key,
        der: ck.cert.der().clone(),
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tickwire-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A TLS client that trusts exactly `roots`; returns the stream and the
/// certificate the server presented.
fn tls_connect(
    addr: SocketAddr,
    roots: &[&CertificateDer<'static>],
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add((*r).clone()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

fn wss(addr: SocketAddr, root: &CertificateDer<'static>) -> TlsWs {
    wss_at(addr, root, "/ws")
}

fn wss_at(addr: SocketAddr, root: &CertificateDer<'static>, path: &str) -> TlsWs {
    let stream = tls_connect(addr, &[root]);
    let (ws, resp) = tungstenite::client(format!("wss://localhost:{}{path}", addr.port()), stream)
        .expect("wss handshake");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

fn recv_json(ws: &mut TlsWs) -> serde_json::Value {
    loop {
        match ws.read().expect("wss read") {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A batched client's next message (`/ws?batch=1`): its lines.
fn recv_lines(ws: &mut TlsWs) -> Vec<serde_json::Value> {
    loop {
        match ws.read().expect("wss read") {
            Message::Text(t) => {
                return t
                    .split('\n')
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect();
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn subscribe(ws: &mut TlsWs, ch: &str) {
    let req = format!(r#"{{"op":"subscribe","channels":["{ch}"]}}"#);
    ws.send(Message::text(req)).unwrap();
    let ack = recv_json(ws);
    assert_eq!(ack["type"], "subscribed", "{ack}");
}

/// Reads updates of `ch` until seq `last`, asserting each seq follows the
/// one before (no gap, no duplicate).
fn expect_seqs(ws: &mut TlsWs, ch: &str, first: u64, last: u64) {
    let mut want = first;
    let deadline = Instant::now() + Duration::from_secs(20);
    while want <= last {
        assert!(Instant::now() < deadline, "timed out at seq {want}");
        let v = recv_json(ws);
        if v["type"] != "update" || v["ch"] != ch {
            continue;
        }
        assert_eq!(v["seq"].as_u64(), Some(want), "{v}");
        want += 1;
    }
}

fn start_tls(p: &Pair) -> Server {
    Server::start(&[
        "--tls-cert",
        p.cert.to_str().unwrap(),
        "--tls-key",
        p.key.to_str().unwrap(),
        "--conflate-on-block",
        "false",
    ])
}

#[test]
fn wss_delivers_every_seq_and_https_serves_health() {
    let dir = temp_dir("deliver");
    let p = make_pair(&dir, "a");
    let s = start_tls(&p);
    let mut ws = wss(s.listen, &p.der);
    subscribe(&mut ws, "AAPL");
    // A batched client beside it: its messages go through the TLS writer
    // from the staging buffer.
    let mut batched = wss_at(s.listen, &p.der, "/ws?batch=1");
    batched
        .send(Message::text(r#"{"op":"subscribe","channels":["AAPL"]}"#))
        .unwrap();
    assert_eq!(recv_lines(&mut batched)[0]["type"], "subscribed");
    // A plain-text client on the TLS port is refused by the handshake; it
    // must cost nobody else their data.
    let mut plain = TcpStream::connect(s.listen).unwrap();
    plain
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // One that resets in the middle of its TLS handshake.
    {
        let mut half = TcpStream::connect(s.listen).unwrap();
        half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
            .unwrap();
        socket2::SockRef::from(&half)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
    }
    let mut feed = Feed::connect(s.ingest);
    for i in 0..2000 {
        feed.send(&tick("AAPL", i));
    }
    expect_seqs(&mut ws, "AAPL", 1, 2000);
    let (mut want, mut messages) = (1, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while want <= 2000 {
        assert!(
            Instant::now() < deadline,
            "batched: timed out at seq {want}"
        );
        messages += 1;
        for v in recv_lines(&mut batched) {
            assert_eq!(v["seq"].as_u64(), Some(want), "batched: {v}");
            want += 1;
        }
    }
    assert!(
        messages < 2000,
        "batched: 2,000 updates in {messages} messages"
    );
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut sink = Vec::new();
    let _ = plain.read_to_end(&mut sink);
    assert!(
        !sink.starts_with(b"HTTP/1.1 101"),
        "a plain-text upgrade was accepted on the TLS port"
    );

    // https:// on the same port.
    let mut https = tls_connect(s.listen, &[&p.der]);
    https
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut body = Vec::new();
    let _ = https.read_to_end(&mut body);
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    // The plain-text client and the reset one are counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut m = tls_connect(s.listen, &[&p.der]);
        m.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut page = Vec::new();
        let _ = m.read_to_end(&mut page);
        let page = String::from_utf8_lossy(&page);
        let failures: f64 = page
            .lines()
            .find_map(|l| l.strip_prefix("tickwire_tls_handshake_failures_total "))
            .map(|v| v.trim().parse().unwrap())
            .expect("metric present");
        if failures >= 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "handshake failures {failures}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_or_mismatched_files_exit_2_naming_the_file() {
    let dir = temp_dir("bad");
    let a = make_pair(&dir, "a");
    let b = make_pair(&dir, "b");
    let missing = dir.join("missing.crt");
    let run = |cert: &Path, key: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_tickwire"))
            .args(["--listen", "127.0.0.1:0", "--ingest", "127.0.0.1:0"])
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&missing, &a.key);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("missing.crt"), "{err}");
    let (code, err) = run(&a.cert, &b.key);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("b.key") && err.contains("match"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_tickwire"))
        .arg("--tls-cert")
        .arg(&a.cert)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls_key"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn sighup_reloads_for_new_handshakes_and_keeps_open_connections() {
    let dir = temp_dir("reload");
    let a = make_pair(&dir, "a");
    let b = make_pair(&dir, "b");
    let live = Pair {
        cert: dir.join("live.crt"),
        key: dir.join("live.key"),
        der: a.der.clone(),
    };
    std::fs::copy(&a.cert, &live.cert).unwrap();
    std::fs::copy(&a.key, &live.key).unwrap();
    let s = start_tls(&live);
    let mut old = wss(s.listen, &a.der);
    subscribe(&mut old, "MSFT");
    let mut feed = Feed::connect(s.ingest);
    feed.send(&tick("MSFT", 1));
    expect_seqs(&mut old, "MSFT", 1, 1);

    // A broken file: the old certificate stays.
    std::fs::write(&live.cert, "not a certificate").unwrap();
    s.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    let mut again = wss(s.listen, &a.der);
    subscribe(&mut again, "MSFT");

    // The new pair: new handshakes present it; open connections stay.
    std::fs::copy(&b.cert, &live.cert).unwrap();
    std::fs::copy(&b.key, &live.key).unwrap();
    s.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut t = tls_connect(s.listen, &[&a.der, &b.der]);
        t.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut body = Vec::new();
        let _ = t.read_to_end(&mut body);
        let presented = t.conn.peer_certificates().unwrap()[0].clone();
        if presented == b.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not switch certificates"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in 2..=200 {
        feed.send(&tick("MSFT", i));
    }
    expect_seqs(&mut old, "MSFT", 2, 200);
    // It subscribed after seq 1: the snapshot (seq 1) comes first.
    expect_seqs(&mut again, "MSFT", 1, 200);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn ingest_tls_feeds_over_tls_and_refuses_plain_text() {
    let dir = temp_dir("ingest");
    let p = make_pair(&dir, "i");
    let s = Server::start(&[
        "--tls-cert",
        p.cert.to_str().unwrap(),
        "--tls-key",
        p.key.to_str().unwrap(),
        "--ingest-tls",
        "--conflate-on-block",
        "false",
    ]);
    let mut ws = wss(s.listen, &p.der);
    subscribe(&mut ws, "F");
    // A plain-text feed: its lines never parse as a TLS handshake, nothing
    // of it is ingested.
    let mut plain = Feed::connect(s.ingest);
    plain.send(&tick("F", 999));
    // A TLS feed: every line, bad ones answered over TLS.
    let mut feed = tls_connect(s.ingest, &[&p.der]);
    feed.write_all(b"not json\n").unwrap();
    let mut lines = String::new();
    for i in 1..=500 {
        lines.push_str(&tick("F", i));
        lines.push('\n');
    }
    feed.write_all(lines.as_bytes()).unwrap();
    feed.flush().unwrap();
    let mut err = [0u8; 64];
    let n = feed.read(&mut err).unwrap();
    let err = String::from_utf8_lossy(&err[..n]);
    assert!(
        err.starts_with(r#"{"error":"malformed JSON","line":1}"#),
        "{err}"
    );
    expect_seqs(&mut ws, "F", 1, 500);
    let v = recv_or_none(&mut ws);
    assert!(v.is_none(), "the plain-text feed's line arrived: {v:?}");
    // Without a certificate the option is refused at start.
    let out = Command::new(env!("CARGO_BIN_EXE_tickwire"))
        .args([
            "--ingest-tls",
            "--listen",
            "127.0.0.1:0",
            "--ingest",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ingest_tls"));
}

/// The next JSON message within a second, if any.
fn recv_or_none(ws: &mut TlsWs) -> Option<serde_json::Value> {
    ws.get_ref()
        .sock
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    match ws.read() {
        Ok(Message::Text(t)) => Some(serde_json::from_str(&t).unwrap()),
        _ => None,
    }
}

/// A TLS client that speaks only `version` and offers `alpn`.
fn tls_connect_with(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    version: &'static rustls::SupportedProtocolVersion,
    alpn: &[&[u8]],
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut store = rustls::RootCertStore::empty();
    store.add(root.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

#[test]
fn tls12_only_and_tls13_only_clients_connect_with_alpn_http11() {
    let dir = temp_dir("versions");
    let pair = make_pair(&dir, "a");
    let srv = start_tls(&pair);
    let mut feed = Feed::connect(srv.ingest);
    for (i, (version, want)) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ]
    .into_iter()
    .enumerate()
    {
        // h2 first: the server must still pick http/1.1.
        let mut stream = tls_connect_with(srv.listen, &pair.der, version, &[b"h2", b"http/1.1"]);
        while stream.conn.is_handshaking() {
            stream
                .conn
                .complete_io(&mut stream.sock)
                .expect("handshake");
        }
        assert_eq!(stream.conn.protocol_version(), Some(want));
        assert_eq!(stream.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        let (mut ws, resp) =
            tungstenite::client(format!("wss://localhost:{}/ws", srv.listen.port()), stream)
                .expect("wss handshake");
        assert_eq!(resp.status().as_u16(), 101);
        let ch = format!("V{i}");
        subscribe(&mut ws, &ch);
        feed.send(&tick(&ch, 1));
        expect_seqs(&mut ws, &ch, 1, 1);
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_stalled_wss_reader_is_conflated_not_closed() {
    let dir = temp_dir("stall");
    let pair = make_pair(&dir, "a");
    // Defaults: conflate as soon as the socket (here: TLS) would block.
    let srv = Server::start(&[
        "--tls-cert",
        pair.cert.to_str().unwrap(),
        "--tls-key",
        pair.key.to_str().unwrap(),
        "--socket-send-buffer",
        "16KiB",
        // /metrics in plain HTTP: the listen port speaks only TLS.
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let admin = srv.admin.expect("admin port");
    let metric = |name: &str| -> f64 {
        let (_, body) = common::http_request(admin, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut store = rustls::RootCertStore::empty();
    store.add(pair.der.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let tcp = common::stream_with_rcvbuf(srv.listen, 4096);
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (mut slow, _) = tungstenite::client(
        format!("wss://localhost:{}/ws", srv.listen.port()),
        rustls::StreamOwned::new(conn, tcp),
    )
    .expect("wss handshake");
    subscribe(&mut slow, "S");
    // A witness that reads as it goes reaches the latest, in order.
    let mut witness = wss(srv.listen, &pair.der);
    subscribe(&mut witness, "S");
    let last = 3000u64;
    let witness = std::thread::spawn(move || {
        let mut prev = 0;
        while prev < last {
            let v = recv_json(&mut witness);
            if v["type"] == "update" {
                let seq = v["seq"].as_u64().unwrap();
                assert!(seq > prev, "witness out of order: {prev} then {seq}");
                prev = seq;
            }
        }
    });
    let mut feed = Feed::connect(srv.ingest);
    let pad = "p".repeat(1000);
    let conflated0 = metric("tickwire_conflated_total");
    for seq in 1..=last {
        feed.send(&format!(
            r#"{{"ch":"S","data":{{"i":{seq},"pad":"{pad}"}}}}"#
        ));
    }
    witness.join().expect("the witness reached the latest");
    // The slow reader's kernel buffers filled long ago (3 MB against tens
    // of KiB): its updates conflated in the engine's queue.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric("tickwire_conflated_total") <= conflated0 {
        assert!(Instant::now() < deadline, "nothing conflated");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric("tickwire_slow_consumer_closes_total"), 0.0);
    // It reads now: updates with a jump in seq, ending at the latest, and
    // no close.
    let mut seqs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seqs.last() != Some(&last) {
        assert!(Instant::now() < deadline, "latest never came: {seqs:?}");
        let v = recv_json(&mut slow);
        if v["type"] == "update" {
            seqs.push(v["seq"].as_u64().unwrap());
        }
    }
    assert!(
        (seqs.len() as u64) < last,
        "every update came: not conflated"
    );
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "out of order");
    // Still connected: the next update arrives.
    feed.send(&tick("S", last + 1));
    let v = recv_json(&mut slow);
    assert_eq!(v["seq"].as_u64(), Some(last + 1), "{v}");
    std::fs::remove_dir_all(dir).ok();
}

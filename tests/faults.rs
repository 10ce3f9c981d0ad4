//! Faults and hostile input against the real engine: feeds killed mid-line,
//! clients reset mid-frame, mid-handshake and mid-TLS-handshake, slowloris,
//! random bytes and huge heads on both ports, waves of thousands of
//! connections, and a ping flood. In every test a witness client keeps
//! receiving a steady feed and must get every seq.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Client, Feed, RawWs, Server, UPGRADE_REQUEST, tcp_queues, tick};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// Witness ticks are this far apart: steady, and light on a debug build.
const WITNESS_PERIOD: Duration = Duration::from_millis(2);
/// Witness ticks sent after the faults, before the check.
const MIN_TAIL_TICKS: u64 = 200;

/// A subscribed client read by its own thread while a feed thread publishes
/// to its channel; [`Witness::finish`] checks that every seq arrived.
struct Witness {
    stop: Arc<AtomicBool>,
    target: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    feeder: Option<JoinHandle<u64>>,
    reader: Option<JoinHandle<Result<u64, String>>>,
}

impl Witness {
    /// A plain ws:// witness on `ch`.
    fn plain(srv: &Server, ch: &'static str) -> Witness {
        let mut c = Client::connect(srv.listen);
        c.subscribe(&[ch]);
        c.set_timeout(Duration::from_millis(200));
        Witness::spawn(c.ws, srv.ingest, ch)
    }

    /// `ws` is subscribed to `ch` (no update yet) and its reads time out.
    fn spawn<S: Read + Write + Send + 'static>(
        mut ws: WebSocket<S>,
        ingest: SocketAddr,
        ch: &'static str,
    ) -> Witness {
        let stop = Arc::new(AtomicBool::new(false));
        let target = Arc::new(AtomicU64::new(u64::MAX));
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let mut feed = Feed::connect(ingest);
        let feeder = {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    feed.send(&tick(ch, n));
                    sent.store(n, Ordering::Relaxed);
                    std::thread::sleep(WITNESS_PERIOD);
                }
                n
            })
        };
        let reader = {
            let (target, received) = (target.clone(), received.clone());
            std::thread::spawn(move || {
                let mut next = 1;
                let mut give_up: Option<Instant> = None;
                loop {
                    let last = target.load(Ordering::Acquire);
                    if last != u64::MAX {
                        if next > last {
                            return Ok(last);
                        }
                        let t = *give_up.get_or_insert(Instant::now() + Duration::from_secs(10));
                        if Instant::now() > t {
                            return Err(format!("witness: seq {next} of {last} never came"));
                        }
                    }
                    match ws.read() {
                        Ok(Message::Text(t)) => {
                            let v: Value = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                            if v["type"] != "update" || v["ch"] != ch {
                                continue;
                            }
                            if v["seq"].as_u64() != Some(next) {
                                return Err(format!("witness: wanted seq {next}, got {v}"));
                            }
                            received.store(next, Ordering::Relaxed);
                            next += 1;
                        }
                        Ok(Message::Close(c)) => {
                            return Err(format!("witness closed at seq {next}: {c:?}"));
                        }
                        Ok(_) => {}
                        Err(tungstenite::Error::Io(e))
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(e) => return Err(format!("witness read at seq {next}: {e}")),
                    }
                }
            })
        };
        // The faults start only once the feed flows (and the engine holds
        // the witness's descriptors).
        let deadline = Instant::now() + Duration::from_secs(5);
        while received.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "the witness got no update");
            std::thread::sleep(Duration::from_millis(5));
        }
        Witness {
            stop,
            target,
            sent,
            feeder: Some(feeder),
            reader: Some(reader),
        }
    }

    /// Stops the feed and waits for its last tick: every seq from 1 must
    /// have arrived in order. Returns how many.
    fn finish(mut self) -> u64 {
        // Keep feeding a little past the faults, and never stop at once.
        let more = self.sent.load(Ordering::Relaxed) + MIN_TAIL_TICKS;
        while self.sent.load(Ordering::Relaxed) < more {
            std::thread::sleep(WITNESS_PERIOD);
        }
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.feeder.take().unwrap().join().expect("witness feed");
        self.target.store(sent, Ordering::Release);
        let got = self.reader.take().unwrap().join().expect("witness reader");
        let got = got.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got, sent);
        println!("witness: {sent} ticks, every seq received");
        sent
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        // A failed test must not leave the feed thread running.
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn assert_alive(srv: &mut Server) {
    assert!(srv.is_running(), "the engine exited");
    assert_eq!(srv.http_get("/healthz").0, 200);
}

fn start() -> Server {
    // A witness thread descheduled for a moment on a loaded box must not
    // read as a loss: queue in order up to the budget before conflating.
    Server::start(&common::one_host(&[
        "--workers",
        "1",
        "--conflate-on-block",
        "false",
    ]))
}

fn engine_fds(srv: &Server) -> usize {
    srv.open_fds_below(usize::MAX)
}

/// Polls until the engine holds exactly `want` descriptors.
fn wait_fds(srv: &Server, want: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let n = engine_fds(srv);
        if n == want || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Raises this process's soft file limit to its hard limit (the engine
/// inherits it), which must allow `need`.
fn raise_nofile(need: libc::rlim_t) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_cur >= need,
        "the file limit {} is below the {need} this test needs",
        lim.rlim_cur
    );
}

/// Drops `s` with a TCP reset instead of a FIN.
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// Deterministic noise (xorshift64).
fn noise(len: usize, mut seed: u64, skip_newline: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        for b in seed.to_le_bytes() {
            if out.len() < len && !(skip_newline && b == b'\n') {
                out.push(b);
            }
        }
    }
    out
}

fn masked(opcode_byte: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let key = [7u8, 1, 9, 3];
    let mut f = vec![opcode_byte, 0x80 | payload.len() as u8];
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

fn raw_subscribe(ws: &mut RawWs, ch: &str) {
    let req = json!({"op":"subscribe","channels":[ch]}).to_string();
    ws.send_frame(0x81, req.as_bytes(), true);
    loop {
        let (op, p) = ws.read_frame().expect("ack");
        if op == 0x1 {
            let v: Value = serde_json::from_slice(&p).unwrap();
            assert_eq!(v["type"], "subscribed", "{v}");
            return;
        }
    }
}

/// Sends `bytes` and reads the answer until EOF (or 5 s): (answer, whether
/// the engine closed).
fn send_and_read(addr: SocketAddr, bytes: &[u8]) -> (String, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // The engine may answer before it has read everything; it then reads
    // the rest and drops it.
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        match s.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

// --- TLS helpers (as in tests/tls.rs) --------------------------------------

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

struct Tls {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Tls {
    fn new(tag: &str) -> Tls {
        let dir =
            std::env::temp_dir().join(format!("tickwire-faults-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.join("c.crt");
        let key = dir.join("c.key");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        Tls {
            dir,
            cert,
            key,
            der: ck.cert.der().clone(),
        }
    }

    fn client(&self) -> rustls::ClientConnection {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut store = rustls::RootCertStore::empty();
        store.add(self.der.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap()
    }

    fn connect(&self, addr: SocketAddr) -> TlsStream {
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        rustls::StreamOwned::new(self.client(), tcp)
    }

    /// The bytes a client's first flight (its ClientHello) is made of.
    fn client_hello(&self) -> Vec<u8> {
        let mut hello = Vec::new();
        self.client().write_tls(&mut hello).unwrap();
        hello
    }

    /// A metric over https (sum over label sets).
    fn metric(&self, addr: SocketAddr, name: &str) -> f64 {
        let mut s = self.connect(addr);
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut page = Vec::new();
        let _ = s.read_to_end(&mut page);
        String::from_utf8_lossy(&page)
            .lines()
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Tls {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

// ---------------------------------------------------------------------------

#[test]
fn fault_feed_killed_mid_line_never_joins_another_feed() {
    let mut srv = start();
    let witness = Witness::plain(&srv, "W");
    let mut sub = Client::connect(srv.listen);
    sub.subscribe(&["P"]);

    // Half a line, then a reset; another half line, then a plain close.
    let mut a = Feed::connect(srv.ingest);
    a.send_raw(br#"{"ch":"P","poison":"HALF-"#);
    let mut a2 = Feed::connect(srv.ingest);
    a2.send_raw(br#"{"ch":"P","poison":"#);
    // The engine must have read both halves before the connections die.
    for f in [&a, &a2] {
        let me = f.stream.local_addr().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while tcp_queues(srv.ingest, me).is_none_or(|(_, unread)| unread > 0) {
            assert!(
                Instant::now() < deadline,
                "the engine did not read a half line"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // The feed's reader holds a second descriptor of the same socket.
    socket2::SockRef::from(&a.stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(a);
    drop(a2);
    let rejects = srv.wait_metric(
        "tickwire_ingest_rejects_total",
        |n| n >= 2.0,
        Duration::from_secs(5),
    );
    assert_eq!(rejects, 2.0, "each dead feed's half line is one reject");
    let feeds = srv.wait_metric(
        "tickwire_ingest_connections",
        |n| n <= 1.0,
        Duration::from_secs(5),
    );
    assert_eq!(feeds, 1.0, "only the witness's feed is left");

    // What would complete the first half, were it kept, is a bad line of
    // its own on the next feed; the next good line arrives intact.
    let mut b = Feed::connect(srv.ingest);
    b.send_raw(b"END\"}\n");
    let err = b.read_error(Duration::from_secs(5));
    assert_eq!(err, json!({"error":"malformed JSON","line":1}));
    for i in 1..=2 {
        let line = format!(r#"{{"ch":"P","ok":{i}}}"#);
        b.send(&line);
        let v = sub.recv();
        assert_eq!(v["type"], "update", "{v}");
        assert_eq!(v["seq"], i, "{v}");
        assert_eq!(
            v["data"],
            serde_json::from_str::<Value>(&line).unwrap(),
            "{v}"
        );
    }
    assert_eq!(
        srv.metric_label("tickwire_ingest_rejects_total", "reason=\"bad_json\""),
        3.0
    );

    let sent = witness.finish();
    // Nothing but the witness's ticks and the two good lines was accepted.
    let messages = srv.wait_metric(
        "tickwire_ingest_messages_total",
        |n| n >= sent as f64 + 2.0,
        Duration::from_secs(5),
    );
    assert_eq!(messages, sent as f64 + 2.0);
    assert_alive(&mut srv);
}

#[test]
fn fault_clients_reset_mid_frame_mid_handshake_and_mid_tls_handshake() {
    let mut srv = start();
    let witness = Witness::plain(&srv, "W");
    let base_fds = engine_fds(&srv);

    // Subscribed to the witness's channel (the engine is writing to them)
    // and reset in the middle of a frame: in its header, in its payload,
    // and in the continuation of a fragmented message.
    let mut big = vec![0x81, 0x80 | 126];
    big.extend_from_slice(&1000u16.to_be_bytes());
    big.extend_from_slice(&[1, 2, 3, 4]);
    big.extend_from_slice(&[b'x'; 300]);
    let mut fragmented = masked(0x01, br#"{"op":"subscr"#);
    fragmented.extend_from_slice(&[0x80, 0x80 | 100, 1, 2, 3, 4, b'y', b'z']);
    let partials: [&[u8]; 3] = [&[0x81], &big, &fragmented];
    for i in 0..30 {
        let mut ws = RawWs::connect(srv.listen);
        raw_subscribe(&mut ws, "W");
        ws.s.write_all(partials[i % 3]).unwrap();
        reset(ws.s);
    }
    // Half an upgrade request, then a reset (or, for some, a plain close).
    let half = &UPGRADE_REQUEST[..UPGRADE_REQUEST.len() / 2];
    for i in 0..40 {
        let mut s = TcpStream::connect(srv.listen).unwrap();
        s.write_all(half).unwrap();
        if i % 4 == 0 {
            drop(s);
        } else {
            reset(s);
        }
    }
    let fds = wait_fds(&srv, base_fds, Duration::from_secs(5));
    assert_eq!(fds, base_fds, "descriptors of reset clients still open");
    witness.finish();
    assert_alive(&mut srv);
    drop(srv);

    // TLS: half a ClientHello, random bytes, or a whole ClientHello whose
    // handshake is never finished, each followed by a reset.
    let tls = Tls::new("reset");
    let mut srv = Server::start(&[
        "--workers",
        "1",
        "--conflate-on-block",
        "false",
        "--tls-cert",
        tls.cert.to_str().unwrap(),
        "--tls-key",
        tls.key.to_str().unwrap(),
    ]);
    let stream = tls.connect(srv.listen);
    let (mut ws, resp) =
        tungstenite::client(format!("wss://localhost:{}/ws", srv.listen.port()), stream)
            .expect("wss handshake");
    assert_eq!(resp.status().as_u16(), 101);
    ws.send(Message::text(r#"{"op":"subscribe","channels":["W"]}"#))
        .unwrap();
    loop {
        if let Message::Text(t) = ws.read().unwrap() {
            assert!(t.contains("subscribed"), "{t}");
            break;
        }
    }
    ws.get_ref()
        .sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let witness = Witness::spawn(ws, srv.ingest, "W");
    let base_fds = engine_fds(&srv);
    let hello = tls.client_hello();
    let kinds: [Vec<u8>; 3] = [
        hello[..hello.len() / 2].to_vec(),
        noise(300, 0x5eed, false),
        hello.clone(),
    ];
    let rounds = 20;
    for i in 0..rounds * kinds.len() {
        let mut s = TcpStream::connect(srv.listen).unwrap();
        s.write_all(&kinds[i % kinds.len()]).unwrap();
        if i % kinds.len() == 2 {
            // Wait for the server's flight, so the reset comes mid-handshake.
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut b = [0u8; 1];
            assert_eq!(s.read(&mut b).unwrap(), 1, "no ServerHello");
        } else {
            std::thread::sleep(Duration::from_millis(5));
        }
        reset(s);
    }
    let fds = wait_fds(&srv, base_fds, Duration::from_secs(5));
    assert_eq!(fds, base_fds, "descriptors of reset TLS clients still open");
    let want = (rounds * kinds.len()) as f64;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut failures = tls.metric(srv.listen, "tickwire_tls_handshake_failures_total");
    while failures < want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        failures = tls.metric(srv.listen, "tickwire_tls_handshake_failures_total");
    }
    assert_eq!(failures, want, "TLS handshake failures counted");
    witness.finish();
    assert!(srv.is_running(), "the engine exited");
}

#[test]
fn fault_slowloris_handshakes_are_closed_and_others_still_connect() {
    const SLOW: usize = 200;
    let mut srv = start();
    let witness = Witness::plain(&srv, "W");
    let base_fds = engine_fds(&srv);
    let started = Instant::now();
    // (socket, bytes sent, when the engine closed it)
    let mut slow: Vec<(TcpStream, usize, Option<Duration>)> = (0..SLOW)
        .map(|_| {
            let mut s = TcpStream::connect(srv.listen).unwrap();
            s.write_all(&UPGRADE_REQUEST[..1]).unwrap();
            s.set_nonblocking(true).unwrap();
            (s, 1, None)
        })
        .collect();
    let mut newcomers = 0;
    // The request is never finished: at most ~60 of its bytes go out.
    while started.elapsed() < Duration::from_secs(16) {
        std::thread::sleep(Duration::from_millis(300));
        for (s, sent, closed) in slow.iter_mut().filter(|c| c.2.is_none()) {
            let mut b = [0u8; 512];
            let gone = match s.read(&mut b) {
                Ok(_) => true,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            let gone = gone || s.write_all(&UPGRADE_REQUEST[*sent..*sent + 1]).is_err();
            if gone {
                *closed = Some(started.elapsed());
            } else {
                *sent += 1;
            }
        }
        if slow.iter().all(|c| c.2.is_some()) {
            break;
        }
        // New clients are served while the slow ones hang.
        if newcomers < 3 && started.elapsed() > Duration::from_secs(2 + 3 * newcomers) {
            let mut c = Client::connect(srv.listen);
            c.subscribe(&["N"]);
            newcomers += 1;
        }
    }
    let open = slow.iter().filter(|c| c.2.is_none()).count();
    let latest = slow.iter().filter_map(|c| c.2).max();
    println!(
        "slowloris: {} of {SLOW} closed by the engine, the last after {latest:?}; {open} still open after {:?}",
        SLOW - open,
        started.elapsed()
    );
    assert_eq!(newcomers, 3);
    assert_eq!(
        open,
        0,
        "slow handshakes still open after {:?} (the handshake timeout is 10 s by default)",
        started.elapsed()
    );
    drop(slow);
    assert_eq!(wait_fds(&srv, base_fds, Duration::from_secs(5)), base_fds);
    witness.finish();
    assert_alive(&mut srv);
}

#[test]
fn fault_random_bytes_and_huge_heads_on_both_ports() {
    let mut srv = start();
    let witness = Witness::plain(&srv, "W");
    let mut sub = Client::connect(srv.listen);
    sub.subscribe(&["G"]);

    // Listen port: noise is a malformed request, a 100 KB header or a
    // thousand headers are too large; each is answered and closed.
    let huge_header = format!(
        "GET /ws HTTP/1.1\r\nHost: t\r\nX-Fill: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let many_headers = format!(
        "GET /ws HTTP/1.1\r\nHost: t\r\n{}\r\n",
        (0..1000)
            .map(|i| format!("X-H{i:04}: {}\r\n", "b".repeat(90)))
            .collect::<String>()
    );
    let cases: [(&[u8], &str); 4] = [
        (&noise(100_000, 0xfeed, false), "HTTP/1.1 400 "),
        (&noise(300, 0xbeef, false), "HTTP/1.1 400 "),
        (huge_header.as_bytes(), "HTTP/1.1 431 "),
        (many_headers.as_bytes(), "HTTP/1.1 431 "),
    ];
    for (bytes, want) in cases {
        let (answer, closed) = send_and_read(srv.listen, bytes);
        assert!(answer.starts_with(want), "{want}: got {answer:?}");
        assert!(closed, "not closed after {want}");
    }

    // Ingest port: 100 KB of noise is one over-long line, 4 KB one
    // malformed line; the feed stays open and its next line is served.
    let mut feed = Feed::connect(srv.ingest);
    let mut bytes = noise(100_000, 0xabcd, true);
    bytes.push(b'\n');
    bytes.extend(noise(4_000, 0x1234, true));
    bytes.push(b'\n');
    feed.send_raw(&bytes);
    let t = Duration::from_secs(5);
    assert_eq!(
        feed.read_error(t),
        json!({"error":"line too long","line":1})
    );
    assert_eq!(
        feed.read_error(t),
        json!({"error":"malformed JSON","line":2})
    );
    let good = r#"{"ch":"G","n":1}"#;
    feed.send(good);
    let v = sub.recv();
    assert_eq!(
        (v["seq"].as_u64(), &v["data"]),
        (Some(1), &json!({"ch":"G","n":1}))
    );

    // An HTTP request with a 100 KB header on the ingest port: its lines
    // are rejected one by one (the blank one is ignored), then it feeds.
    let mut http_feed = Feed::connect(srv.ingest);
    http_feed.send_raw(huge_header.as_bytes());
    assert_eq!(
        http_feed.read_error(t),
        json!({"error":"malformed JSON","line":1})
    );
    assert_eq!(
        http_feed.read_error(t),
        json!({"error":"malformed JSON","line":2})
    );
    assert_eq!(
        http_feed.read_error(t),
        json!({"error":"line too long","line":3})
    );
    http_feed.send(r#"{"ch":"G","n":2}"#);
    let v = sub.recv();
    assert_eq!(
        (v["seq"].as_u64(), &v["data"]),
        (Some(2), &json!({"ch":"G","n":2}))
    );
    assert_eq!(
        srv.metric_label("tickwire_ingest_rejects_total", "reason=\"bad_json\""),
        3.0
    );
    assert_eq!(
        srv.metric_label("tickwire_ingest_rejects_total", "reason=\"line_too_long\""),
        2.0
    );
    // The first feed still works after the second one's abuse.
    feed.send(r#"{"ch":"G","n":3}"#);
    assert_eq!(sub.recv()["seq"], 3);

    witness.finish();
    assert_alive(&mut srv);
}

#[test]
fn fault_ten_thousand_connections_in_waves_leave_no_descriptor_behind() {
    const WAVES: usize = 5;
    const PER_WAVE: usize = 2000;
    const BATCH: usize = 250;
    raise_nofile(PER_WAVE as libc::rlim_t + 1000);
    // Two workers: the waves land on both.
    let mut srv = Server::start(&common::one_host(&["--conflate-on-block", "false"]));
    let witness = Witness::plain(&srv, "W");
    std::thread::sleep(Duration::from_millis(500));
    let base_fds = engine_fds(&srv);
    let base_rss = srv.rss_kib();
    let started = Instant::now();
    let mut peak_fds = 0;
    let mut peak_rss = 0;
    for wave in 0..WAVES {
        // At most one wave open at a time in this process.
        let mut open: Vec<TcpStream> = Vec::with_capacity(PER_WAVE);
        while open.len() < PER_WAVE {
            let from = open.len();
            for _ in 0..BATCH {
                let mut s = TcpStream::connect(srv.listen).unwrap();
                s.write_all(UPGRADE_REQUEST).unwrap();
                open.push(s);
            }
            for s in &mut open[from..] {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut head = Vec::new();
                let mut chunk = [0u8; 512];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut chunk).expect("upgrade answer");
                    assert!(n > 0, "closed during the upgrade");
                    head.extend_from_slice(&chunk[..n]);
                }
                assert!(head.starts_with(b"HTTP/1.1 101"), "wave {wave}");
            }
        }
        let fds = engine_fds(&srv);
        assert!(fds >= base_fds + PER_WAVE, "wave {wave}: {fds} descriptors");
        peak_fds = peak_fds.max(fds);
        peak_rss = peak_rss.max(srv.rss_kib());
        // Half the waves end with resets, half with FINs.
        for s in open {
            if wave % 2 == 1 {
                reset(s);
            } else {
                drop(s);
            }
        }
    }
    let waves_took = started.elapsed();
    let fds = wait_fds(&srv, base_fds, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    let rss = srv.rss_kib();
    println!(
        "waves: {} connections in {waves_took:?}; fds {base_fds} -> peak {peak_fds} -> {fds}; \
         RSS {base_rss} KiB -> peak {peak_rss} KiB -> {rss} KiB",
        WAVES * PER_WAVE
    );
    assert_eq!(fds, base_fds, "descriptors left open after the waves");
    // Measured: about 0.6 MiB above the baseline stays (the slab and the
    // allocator keep the peak's pages); 4 MiB leaves room for allocator noise.
    assert!(
        rss <= base_rss + 4 * 1024,
        "RSS {rss} KiB after the waves, baseline {base_rss} KiB"
    );
    witness.finish();
    assert_alive(&mut srv);
}

#[test]
fn fault_ping_flood_is_answered_with_coalesced_pongs() {
    const PINGS: u32 = 50_000;
    let mut srv = start();
    let witness = Witness::plain(&srv, "W");
    // A small receive buffer: the engine's pongs back up at once.
    let mut flooder = RawWs::connect_with_rcvbuf(srv.listen, 4096);
    let rss0 = srv.rss_kib();
    // Largest control payloads (125 bytes, numbered): 6.5 MB, far more than
    // the kernel buffers, so the engine reads while its pongs cannot go out.
    let flood: Vec<u8> = (0..PINGS)
        .flat_map(|i| {
            let mut payload = i.to_be_bytes().to_vec();
            payload.resize(125, b'p');
            masked(0x89, &payload)
        })
        .collect();
    flooder
        .s
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t0 = Instant::now();
    // Pongs waiting unsent are replaced by the newest, so the replies never
    // reach the budget: the engine neither stops reading nor cuts.
    flooder
        .s
        .write_all(&flood)
        .expect("the engine stopped reading the ping flood");
    let flood_took = t0.elapsed();
    // Not reading for a while.
    std::thread::sleep(Duration::from_secs(1));
    let grown = srv.rss_kib().saturating_sub(rss0);
    assert_eq!(srv.metric("tickwire_protocol_closes_total"), 0.0);

    let mut pongs = 0u32;
    let mut last = None;
    while last != Some(PINGS - 1) {
        let (op, p) = flooder.read_frame().expect("closed during the flood");
        assert_ne!(op, 0x8, "closed: {p:?}");
        if op == 0xA {
            let n = u32::from_be_bytes(p[..4].try_into().unwrap());
            assert!(last.is_none_or(|l| n > l), "pong {n} after {last:?}");
            last = Some(n);
            pongs += 1;
        }
    }
    println!(
        "ping flood: {PINGS} pings in {flood_took:?}, {pongs} pongs back, RSS grew {grown} KiB"
    );
    assert!(pongs < PINGS / 10, "{pongs} pongs for {PINGS} pings");
    assert!(grown < 16 * 1024, "RSS grew {grown} KiB during the flood");
    // It is still a working client.
    raw_subscribe(&mut flooder, "F");
    witness.finish();
    assert_alive(&mut srv);
}

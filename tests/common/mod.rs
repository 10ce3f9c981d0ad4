//! Shared helpers for the integration tests: start the real `tickwire` binary
//! on ephemeral loopback ports, feed it over TCP, and talk to it with a real
//! WebSocket client (tungstenite) or raw sockets.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::WebSocket;
use tungstenite::protocol::{CloseFrame, Message};
use tungstenite::stream::MaybeTlsStream;

/// The per-address abuse limits off: every test client comes from
/// 127.0.0.1, so tests of many clients or message floods run with these
/// (the limits have tests of their own).
pub const ONE_HOST: [&str; 6] = [
    "--max-connections-per-ip",
    "0",
    "--new-connections-per-ip-per-second",
    "0",
    "--client-messages-per-second",
    "0",
];

/// `extra` and [`ONE_HOST`].
pub fn one_host<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    [extra, &ONE_HOST[..]].concat()
}

/// A running engine process; killed on drop unless stopped.
pub struct Server {
    pub child: Child,
    pub listen: SocketAddr,
    pub ingest: SocketAddr,
    /// The admin port, when `--admin-listen` is given.
    pub admin: Option<SocketAddr>,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickwire"));
        cmd.args(["--listen", "127.0.0.1:0", "--ingest", "127.0.0.1:0"]);
        if !extra.contains(&"--workers") {
            cmd.args(["--workers", "2"]);
        }
        cmd.args(extra);
        Server::spawn_ready(cmd)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size of the engine, KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a pid we spawned; no memory is touched.
        let rc = unsafe { libc::kill(self.pid() as i32, sig) };
        assert_eq!(rc, 0);
    }

    /// Whether the process is still running (not exited, reaped or not).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the process to exit; returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_request(
            self.listen,
            &format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n"),
        )
    }

    /// A metric's value (sum over label sets) from /metrics.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn metric_label(&self, name: &str, label: &str) -> f64 {
        let (_, body) = self.http_get("/metrics");
        let prefix = format!("{name}{{{label}}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{prefix} not in metrics"))
    }

    /// Polls a metric until `pred` holds.
    pub fn wait_metric(&self, name: &str, pred: impl Fn(f64) -> bool, timeout: Duration) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(name);
            if pred(v) || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_request(addr: SocketAddr, req: &str) -> (u16, String) {
    let (status, _, body) = http_exchange(addr, req, Duration::from_secs(5));
    (status, body)
}

/// Attempts a WebSocket upgrade at `addr`: `Ok(status line)` if the server
/// answered the request, `Err(what happened)` if the connection was refused,
/// reset or closed, or no answer came within `timeout`.
pub fn try_ws_upgrade(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut chunk) {
            Ok(0) => return Err("closed without an answer".into()),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let text = String::from_utf8_lossy(&head);
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// A feed handler connection.
pub struct Feed {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Feed {
    pub fn connect(addr: SocketAddr) -> Feed {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Feed { stream, reader }
    }

    pub fn send(&mut self, line: &str) {
        self.stream.write_all(line.as_bytes()).unwrap();
        self.stream.write_all(b"\n").unwrap();
    }

    /// Sends `ticks` ticks ([`tick`]), each to the next of `chs` in turn,
    /// in writes of `burst` lines, sleeping `every` after each write, then
    /// one more tick on each channel whose data has `"last": true`. Returns
    /// each channel's tick count (its last seq on a fresh engine).
    pub fn send_bursts_then_last(
        &mut self,
        chs: &[&str],
        burst: u64,
        every: Duration,
        ticks: u64,
    ) -> BTreeMap<String, u64> {
        let mut sent = 0u64;
        let mut counts: BTreeMap<String, u64> = chs.iter().map(|c| (c.to_string(), 0)).collect();
        while sent < ticks {
            let mut batch = String::new();
            for _ in 0..burst {
                let ch = chs[(sent % chs.len() as u64) as usize];
                sent += 1;
                *counts.get_mut(ch).unwrap() += 1;
                batch.push_str(&tick(ch, sent));
                batch.push('\n');
            }
            self.send_raw(batch.as_bytes());
            std::thread::sleep(every);
        }
        for (ch, n) in counts.iter_mut() {
            *n += 1;
            self.send(&format!(r#"{{"ch":"{ch}","i":{n},"last":true}}"#));
        }
        counts
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Next line the engine sent back (an error report), parsed.
    pub fn read_error(&mut self, timeout: Duration) -> Value {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .unwrap();
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("error line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad error line {line:?}: {e}"))
    }
}

pub type Ws = WebSocket<MaybeTlsStream<TcpStream>>;

/// A real WebSocket client.
pub struct Client {
    pub ws: Ws,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let (ws, resp) = tungstenite::connect(format!("ws://{addr}/ws")).expect("ws connect");
        Self::ready(ws, resp.status().as_u16())
    }

    /// A client whose socket has this receive buffer (set before connecting,
    /// so TCP's window scaling honours it).
    pub fn connect_with_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> Client {
        let stream = stream_with_rcvbuf(addr, rcvbuf);
        let (ws, resp) =
            tungstenite::client(format!("ws://{addr}/ws"), MaybeTlsStream::Plain(stream))
                .expect("ws connect");
        Self::ready(ws, resp.status().as_u16())
    }

    fn ready(ws: Ws, status: u16) -> Client {
        assert_eq!(status, 101);
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        Client { ws }
    }

    pub fn set_timeout(&self, t: Duration) {
        if let MaybeTlsStream::Plain(s) = self.ws.get_ref() {
            s.set_read_timeout(Some(t)).unwrap();
        }
    }

    pub fn send(&mut self, v: &Value) {
        self.ws.send(Message::text(v.to_string())).unwrap();
    }

    pub fn send_text(&mut self, t: &str) {
        self.ws.send(Message::text(t.to_string())).unwrap();
    }

    /// Reads updates, checking that seqs only rise, until one whose data
    /// has `"last": true`; returns its seq.
    pub fn read_until_last(&mut self) -> u64 {
        let seen = self.read_until_lasts(1);
        *seen.lasts.values().next().unwrap()
    }

    /// Reads updates, checking that each channel's seqs only rise, until
    /// `channels` channels each sent one whose data has `"last": true`.
    pub fn read_until_lasts(&mut self, channels: usize) -> Seen {
        let mut newest: BTreeMap<String, u64> = BTreeMap::new();
        let mut seen = Seen::default();
        while seen.lasts.len() < channels {
            let v = self.recv();
            let seq = v["seq"].as_u64().expect("an update");
            let ch = v["ch"].as_str().expect("a channel").to_string();
            let prev = newest.insert(ch.clone(), seq);
            if let Some(prev) = prev {
                assert!(seq > prev, "{ch}: seq went from {prev} to {seq}");
                seen.skipped += seq - prev - 1;
            }
            if v["data"]["last"].as_bool() == Some(true) {
                seen.lasts.insert(ch, seq);
            }
        }
        seen
    }

    pub fn recv(&mut self) -> Value {
        loop {
            match self.ws.read().expect("ws read") {
                Message::Text(t) => return serde_json::from_str(&t).expect("json"),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    /// Next message of any kind, or None on timeout.
    pub fn try_recv(&mut self) -> Option<Message> {
        match self.ws.read() {
            Ok(m) => Some(m),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("ws error {e}"),
        }
    }

    pub fn subscribe(&mut self, channels: &[&str]) -> Value {
        self.send(&serde_json::json!({"op":"subscribe","channels":channels}));
        let ack = self.recv();
        assert_eq!(ack["type"], "subscribed", "{ack}");
        ack
    }

    /// Reads until a close frame; returns it.
    pub fn expect_close(&mut self) -> Option<CloseFrame> {
        loop {
            match self.ws.read() {
                Ok(Message::Close(c)) => return c,
                Ok(_) => {}
                Err(e) => panic!("expected close frame, got error {e}"),
            }
        }
    }
}

/// A tick line for `ch`.
/// A config file (in a new temp dir named after `tag`) with one channel
/// class, `notify`: channels `user.*`, never conflated. Returns the dir
/// (for the test to remove) and the file.
pub fn notify_class_config(tag: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("tickwire-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("classes.toml");
    std::fs::write(
        &cfg,
        "[[classes]]\nname = \"notify\"\npattern = \"user.*\"\nconflate = false\n",
    )
    .unwrap();
    (dir, cfg)
}

/// `n` clients subscribed to `ch`, each reading on a thread of its own
/// until the last tick ([`Client::read_until_last`]).
pub fn spawn_readers(
    listen: SocketAddr,
    n: usize,
    chs: &[&str],
    timeout: Duration,
) -> Vec<std::thread::JoinHandle<Seen>> {
    (0..n)
        .map(|_| {
            let mut c = Client::connect(listen);
            c.set_timeout(timeout);
            c.subscribe(chs);
            let channels = chs.len();
            std::thread::spawn(move || c.read_until_lasts(channels))
        })
        .collect()
}

/// Joins [`spawn_readers`]'s readers: every one must have ended each
/// channel on its last tick. Returns the seqs they skipped in all.
pub fn join_readers(
    readers: Vec<std::thread::JoinHandle<Seen>>,
    lasts: &BTreeMap<String, u64>,
) -> u64 {
    let mut skipped = 0;
    for r in readers {
        let seen = r.join().unwrap();
        assert_eq!(&seen.lasts, lasts, "every client ends on the last ticks");
        skipped += seen.skipped;
    }
    skipped
}

/// What a reader saw until every channel's last tick.
#[derive(Debug, Default)]
pub struct Seen {
    /// Channel → seq of its last tick.
    pub lasts: BTreeMap<String, u64>,
    /// Seqs skipped between updates received (conflation).
    pub skipped: u64,
}

pub fn tick(ch: &str, i: u64) -> String {
    format!(
        r#"{{"ch":"{ch}","i":{i},"bid":{}.25,"ask":{}.5}}"#,
        100 + i % 7,
        100 + i % 7
    )
}

/// Raw-socket WebSocket client for protocol abuse.
pub struct RawWs {
    pub s: TcpStream,
    pub buf: Vec<u8>,
}

/// A connected socket with SO_RCVBUF set before the handshake.
pub fn stream_with_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(rcvbuf).unwrap();
    sock.connect(&addr.into()).unwrap();
    sock.into()
}

impl RawWs {
    pub fn connect(addr: SocketAddr) -> RawWs {
        Self::handshake(TcpStream::connect(addr).unwrap())
    }

    pub fn connect_with_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> RawWs {
        Self::handshake(stream_with_rcvbuf(addr, rcvbuf))
    }

    fn handshake(mut s: TcpStream) -> RawWs {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "closed during handshake");
            buf.extend_from_slice(&chunk[..n]);
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(
            buf.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&buf)
        );
        let rest = buf[end..].to_vec();
        RawWs { s, buf: rest }
    }

    /// Sends a client frame, masked unless `masked` is false.
    pub fn send_frame(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mut out = vec![first];
        let m = if masked { 0x80 } else { 0 };
        if payload.len() < 126 {
            out.push(m | payload.len() as u8);
        } else if payload.len() < 65536 {
            out.push(m | 126);
            out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        } else {
            out.push(m | 127);
            out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        }
        let key = [0x12, 0x34, 0x56, 0x78];
        if masked {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        let _ = self.s.write_all(&out);
    }

    /// Next server frame: (opcode, payload); None at EOF.
    pub fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        self.try_read_frame()
            .unwrap_or_else(|e| panic!("raw read: {e}"))
    }

    /// Next server frame: (opcode, payload); None at EOF; `Err` on a read
    /// error or timeout.
    pub fn try_read_frame(&mut self) -> std::io::Result<Option<(u8, Vec<u8>)>> {
        loop {
            if self.buf.len() >= 2 {
                let op = self.buf[0] & 0x0F;
                let (len, hdr) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    n if n < 126 => (n as usize, 2),
                    _ => (usize::MAX, 0),
                };
                if len != usize::MAX && self.buf.len() >= hdr + len {
                    let payload = self.buf[hdr..hdr + len].to_vec();
                    self.buf.drain(..hdr + len);
                    return Ok(Some((op, payload)));
                }
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads frames until a close frame; returns its code and reason.
    pub fn read_close(&mut self) -> (u16, String) {
        loop {
            match self.read_frame() {
                Some((0x8, p)) => {
                    let code = u16::from_be_bytes([p[0], p[1]]);
                    return (code, String::from_utf8_lossy(&p[2..]).to_string());
                }
                Some(_) => {}
                None => panic!("EOF before close frame"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Lifecycle helpers (used by tests/lifecycle.rs): an engine started with a
// file limit, WebSocket upgrades that are answered later (or not at all)
// within a deadline, raw HTTP answers with their head, a child process that is
// killed on drop, and the kernel's queues of a loopback TCP socket.
// ---------------------------------------------------------------------------

impl Server {
    /// Starts the engine with RLIMIT_NOFILE set to `limit` (soft and hard),
    /// like `prlimit --nofile=limit:limit tickwire ...`.
    pub fn start_with_nofile(limit: u64, extra: &[&str]) -> Server {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickwire"));
        cmd.args(["--listen", "127.0.0.1:0", "--ingest", "127.0.0.1:0"]);
        if !extra.contains(&"--workers") {
            cmd.args(["--workers", "2"]);
        }
        cmd.args(extra);
        // SAFETY: runs in the forked child before exec; setrlimit(2) is
        // async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: limit as libc::rlim_t,
                    rlim_max: limit as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Server::spawn_ready(cmd)
    }

    /// Spawns a prepared engine command (its stdout is taken here) and waits
    /// for its ready line, as [`Server::start`] does.
    pub fn spawn_ready(cmd: Command) -> Server {
        Server::spawn_ready_with_stderr(cmd, Stdio::inherit())
    }

    /// [`Server::spawn_ready`] with the engine's stderr sent to `stderr`
    /// (a file, for tests of what the engine logs).
    pub fn spawn_ready_with_stderr(mut cmd: Command, stderr: Stdio) -> Server {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn tickwire");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let ready = lines.next().expect("ready line").expect("read stdout");
        assert!(
            ready.starts_with("tickwire ready "),
            "unexpected first line: {ready}"
        );
        let field = |k: &str| -> SocketAddr {
            ready
                .split(' ')
                .find_map(|kv| kv.strip_prefix(k))
                .unwrap_or_else(|| panic!("{k} in {ready}"))
                .parse()
                .unwrap()
        };
        let (listen, ingest) = (field("listen="), field("ingest="));
        let admin = ready
            .split(' ')
            .find_map(|kv| kv.strip_prefix("admin="))
            .map(|a| a.parse().unwrap());
        // Keep draining stdout so the engine never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            listen,
            ingest,
            admin,
        }
    }

    /// Descriptors the engine has open numbered below `limit` (descriptors
    /// it inherited above its file limit do not count against it).
    pub fn open_fds_below(&self, limit: usize) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<usize>().ok())
                    .filter(|&fd| fd < limit)
                    .count()
            })
            .unwrap_or(0)
    }

    /// Polls until every descriptor below `limit` is open in the engine (its
    /// next accept fails with EMFILE); returns the last count.
    pub fn wait_fds_exhausted(&self, limit: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let open = self.open_fds_below(limit);
            if open >= limit || Instant::now() > deadline {
                return open;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The upgrade request [`RawWs`] and [`try_ws_upgrade`] send.
pub const UPGRADE_REQUEST: &[u8] = b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

/// A WebSocket upgrade request already sent, its answer not yet read: the
/// connection may sit in the engine's accept backlog meanwhile.
pub struct PendingUpgrade {
    pub s: TcpStream,
}

impl PendingUpgrade {
    /// Connects (within `timeout`) and sends the upgrade request.
    pub fn send(addr: SocketAddr, timeout: Duration) -> Result<PendingUpgrade, String> {
        let mut s =
            TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
        s.set_write_timeout(Some(timeout)).unwrap();
        s.write_all(UPGRADE_REQUEST)
            .map_err(|e| format!("write: {e}"))?;
        Ok(PendingUpgrade { s })
    }

    /// Reads the answer within `timeout`: a [`Client`] on 101, else what
    /// happened instead.
    pub fn finish(mut self, timeout: Duration) -> Result<Client, String> {
        let deadline = Instant::now() + timeout;
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        let end = loop {
            if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no answer to the upgrade within {timeout:?}"));
            }
            self.s.set_read_timeout(Some(left)).unwrap();
            match self.s.read(&mut chunk) {
                Ok(0) => return Err("closed without an answer".into()),
                Ok(n) => head.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(format!("no answer to the upgrade within {timeout:?}"));
                }
                Err(e) => return Err(format!("read: {e}")),
            }
        };
        if !head.starts_with(b"HTTP/1.1 101") {
            return Err(format!("answer: {}", String::from_utf8_lossy(&head[..end])));
        }
        let rest = head[end..].to_vec();
        let ws = WebSocket::from_partially_read(
            MaybeTlsStream::Plain(self.s),
            rest,
            tungstenite::protocol::Role::Client,
            None,
        );
        Ok(Client::ready(ws, 101))
    }
}

/// A WebSocket client, or why none was upgraded within `timeout`.
pub fn connect_client_within(addr: SocketAddr, timeout: Duration) -> Result<Client, String> {
    PendingUpgrade::send(addr, timeout)?.finish(timeout)
}

/// Sends `req` and reads the answer to EOF (at most `timeout` per read):
/// (status, head, body).
pub fn http_exchange(addr: SocketAddr, req: &str, timeout: Duration) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, timeout).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_string(), b.to_string()))
        .unwrap_or((text.clone(), String::new()));
    (status, head, body)
}

/// A child process killed (and reaped) on drop.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The kernel's (send, receive) queue bytes of the IPv4 TCP socket with this
/// local and remote address, from /proc/net/tcp; None if there is none. On
/// the engine's side of a client connection, local is the listen address and
/// remote the client's: the receive queue is what the engine has not read.
pub fn tcp_queues(local: SocketAddr, remote: SocketAddr) -> Option<(u64, u64)> {
    let hex = |a: SocketAddr| -> String {
        match a {
            SocketAddr::V4(v4) => format!(
                "{:08X}:{:04X}",
                u32::from_ne_bytes(v4.ip().octets()),
                v4.port()
            ),
            SocketAddr::V6(_) => String::new(),
        }
    };
    let (l, r) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[1] != l || f[2] != r {
            return None;
        }
        let (tx, rx) = f[4].split_once(':')?;
        Some((
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}

impl RawWs {
    /// Connects within `timeout` and upgrades (reads time out after 10 s).
    pub fn connect_within(addr: SocketAddr, timeout: Duration) -> RawWs {
        let s = TcpStream::connect_timeout(&addr, timeout)
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        Self::handshake(s)
    }
}

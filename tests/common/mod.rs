//! Shared helpers for the integration tests: start the real `tickwire` binary
//! on ephemeral loopback ports, feed it over TCP, and talk to it with a real
//! WebSocket client (tungstenite) or raw sockets.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::WebSocket;
use tungstenite::protocol::{CloseFrame, Message};
use tungstenite::stream::MaybeTlsStream;

/// A running engine process; killed on drop unless stopped.
pub struct Server {
    pub child: Child,
    pub listen: SocketAddr,
    pub ingest: SocketAddr,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tickwire"));
        cmd.args(["--listen", "127.0.0.1:0", "--ingest", "127.0.0.1:0"]);
        if !extra.contains(&"--workers") {
            cmd.args(["--workers", "2"]);
        }
        let mut child = cmd
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
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
        // Keep draining stdout so the engine never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            listen,
            ingest,
        }
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
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
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

    /// Next JSON text message (pings are answered by tungstenite).
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

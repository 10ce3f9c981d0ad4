//! Publishing targets: tickwire ingest (TCP NDJSON), NATS (TCP `PUB`),
//! WebSocket text frames, or stdout. Each connection frames ticks into one
//! buffer that is written with a single `write_all` per batch, and a reader
//! thread counts (and prints) whatever errors the server sends back.

use anyhow::{Context, Result, bail};
use base64::Engine;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone)]
pub enum Target {
    Ingest(String),
    Nats(String),
    /// `ws://host:port/path`
    Ws(String),
    Stdout,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Ingest(a) => write!(f, "ingest {a}"),
            Target::Nats(a) => write!(f, "nats {a}"),
            Target::Ws(u) => write!(f, "ws {u}"),
            Target::Stdout => write!(f, "stdout"),
        }
    }
}

/// Errors reported back by servers, over all connections.
#[derive(Default)]
pub struct ErrorCount {
    pub errors: AtomicU64,
}

impl ErrorCount {
    fn report(&self, what: &str) {
        let n = self.errors.fetch_add(1, Relaxed) + 1;
        // Print the first few verbatim; a broken feed would otherwise flood stderr.
        if n <= 20 {
            eprintln!("feedsim: server error: {}", what.trim_end());
        } else if n == 21 {
            eprintln!("feedsim: (further server errors only counted)");
        }
    }
}

enum Out {
    Tcp(Arc<Mutex<TcpStream>>),
    Stdout,
}

pub struct Sink {
    kind: Kind,
    out: Out,
    pub buf: Vec<u8>,
    mask_state: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ndjson,
    Nats,
    Ws,
}

fn connect_tcp(addr: &str) -> Result<TcpStream> {
    let a = addr
        .to_socket_addrs()
        .with_context(|| format!("resolve {addr}"))?
        .next()
        .with_context(|| format!("no address for {addr}"))?;
    let s = TcpStream::connect(a).with_context(|| format!("connect to {addr}"))?;
    s.set_nodelay(true)?;
    Ok(s)
}

impl Sink {
    pub fn open(target: &Target, errors: Arc<ErrorCount>) -> Result<Sink> {
        let (kind, out) = match target {
            Target::Stdout => (Kind::Ndjson, Out::Stdout),
            Target::Ingest(addr) => {
                let s = connect_tcp(addr)?;
                let r = s.try_clone()?;
                // The engine answers bad lines with {"error":..,"line":N}.
                std::thread::spawn(move || {
                    for line in BufReader::new(r).lines().map_while(Result::ok) {
                        errors.report(&line);
                    }
                });
                (Kind::Ndjson, Out::Tcp(Arc::new(Mutex::new(s))))
            }
            Target::Nats(addr) => {
                let s = connect_tcp(addr)?;
                let mut r = BufReader::new(s.try_clone()?);
                let mut info = String::new();
                r.read_line(&mut info).context("read NATS INFO")?;
                if !info.starts_with("INFO") {
                    bail!("expected NATS INFO, got {:?}", info.trim_end());
                }
                let w = Arc::new(Mutex::new(s));
                w.lock()
                    .unwrap()
                    .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")?;
                let w2 = w.clone();
                std::thread::spawn(move || {
                    let mut line = String::new();
                    while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                        if line.starts_with("PING") {
                            let _ = w2.lock().unwrap().write_all(b"PONG\r\n");
                        } else if line.starts_with("-ERR") {
                            errors.report(&line);
                        }
                        line.clear();
                    }
                });
                (Kind::Nats, Out::Tcp(w))
            }
            Target::Ws(url) => {
                let rest = url
                    .strip_prefix("ws://")
                    .with_context(|| format!("only ws:// URLs are supported: {url}"))?;
                let (auth, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                let path = if path.is_empty() { "/" } else { path };
                let mut s = connect_tcp(auth)?;
                let key = base64::engine::general_purpose::STANDARD
                    .encode(std::process::id().to_be_bytes().repeat(4));
                write!(
                    s,
                    "GET {path} HTTP/1.1\r\nHost: {auth}\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
                     Sec-WebSocket-Version: 13\r\n\r\n"
                )?;
                // Read the response head byte by byte so no frame bytes are lost.
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b)? == 0 || head.len() > 16384 {
                        bail!("WebSocket upgrade to {url} failed: connection closed");
                    }
                    head.push(b[0]);
                }
                let status = String::from_utf8_lossy(&head);
                if status.split_whitespace().nth(1) != Some("101") {
                    bail!(
                        "WebSocket upgrade to {url} refused: {}",
                        status.lines().next().unwrap_or("")
                    );
                }
                let r = s.try_clone()?;
                let w = Arc::new(Mutex::new(s));
                let w2 = w.clone();
                std::thread::spawn(move || ws_reader(r, w2, errors));
                (Kind::Ws, Out::Tcp(w))
            }
        };
        Ok(Sink {
            kind,
            out,
            buf: Vec::with_capacity(64 * 1024),
            mask_state: 0x2545_F491_4F6C_DD1D ^ std::process::id() as u64,
        })
    }

    /// Frames one tick (JSON object without newline) into the batch buffer.
    pub fn push(&mut self, ch: &str, tick: &[u8]) {
        match self.kind {
            Kind::Ndjson => {
                self.buf.extend_from_slice(tick);
                self.buf.push(b'\n');
            }
            Kind::Nats => {
                let mut ib = itoa::Buffer::new();
                self.buf.extend_from_slice(b"PUB ");
                self.buf.extend_from_slice(ch.as_bytes());
                self.buf.push(b' ');
                self.buf.extend_from_slice(ib.format(tick.len()).as_bytes());
                self.buf.extend_from_slice(b"\r\n");
                self.buf.extend_from_slice(tick);
                self.buf.extend_from_slice(b"\r\n");
            }
            Kind::Ws => {
                // xorshift: masks only need to be unpredictable-ish, not secure.
                self.mask_state ^= self.mask_state << 13;
                self.mask_state ^= self.mask_state >> 7;
                self.mask_state ^= self.mask_state << 17;
                let mask = (self.mask_state as u32).to_ne_bytes();
                ws_frame(&mut self.buf, 0x1, tick, mask);
            }
        }
    }

    /// Writes the batch (one syscall when the socket keeps up) and clears it.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        match &self.out {
            Out::Tcp(s) => s.lock().unwrap().write_all(&self.buf)?,
            Out::Stdout => std::io::stdout().lock().write_all(&self.buf)?,
        }
        self.buf.clear();
        Ok(())
    }
}

/// Masked client frame with FIN set.
pub fn ws_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// Reads server frames on a publishing WebSocket: answers pings and counts
/// text messages that look like errors.
fn ws_reader(mut r: TcpStream, w: Arc<Mutex<TcpStream>>, errors: Arc<ErrorCount>) {
    let mut hdr = [0u8; 2];
    while r.read_exact(&mut hdr).is_ok() {
        let opcode = hdr[0] & 0x0F;
        let mut len = (hdr[1] & 0x7F) as u64;
        let mut ext = [0u8; 8];
        if len == 126 {
            if r.read_exact(&mut ext[..2]).is_err() {
                return;
            }
            len = u16::from_be_bytes([ext[0], ext[1]]) as u64;
        } else if len == 127 {
            if r.read_exact(&mut ext).is_err() {
                return;
            }
            len = u64::from_be_bytes(ext);
        }
        let mut mask = [0u8; 4];
        if hdr[1] & 0x80 != 0 && r.read_exact(&mut mask).is_err() {
            return;
        }
        if len > 16 << 20 {
            return;
        }
        let mut payload = vec![0u8; len as usize];
        if r.read_exact(&mut payload).is_err() {
            return;
        }
        if hdr[1] & 0x80 != 0 {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i & 3];
            }
        }
        match opcode {
            0x9 => {
                let mut f = Vec::new();
                ws_frame(&mut f, 0xA, &payload, [7, 3, 1, 9]);
                let _ = w.lock().unwrap().write_all(&f);
            }
            0x8 => return,
            0x1 if memchr::memmem::find(&payload, b"error").is_some() => {
                errors.report(&String::from_utf8_lossy(&payload));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(kind: Kind) -> Sink {
        Sink {
            kind,
            out: Out::Stdout,
            buf: Vec::new(),
            mask_state: 1,
        }
    }

    #[test]
    fn framing() {
        let mut s = sink(Kind::Ndjson);
        s.push("A", b"{\"ch\":\"A\"}");
        assert_eq!(s.buf, b"{\"ch\":\"A\"}\n");
        let mut s = sink(Kind::Nats);
        s.push("A", b"{\"ch\":\"A\"}");
        assert_eq!(s.buf, b"PUB A 10\r\n{\"ch\":\"A\"}\r\n");
        let mut s = sink(Kind::Ws);
        s.push("A", b"{\"ch\":\"A\"}");
        assert_eq!(s.buf[0], 0x81);
        assert_eq!(s.buf[1], 0x80 | 10);
        let mask = &s.buf[2..6];
        let un: Vec<u8> = s.buf[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i & 3])
            .collect();
        assert_eq!(un, b"{\"ch\":\"A\"}");
    }
}

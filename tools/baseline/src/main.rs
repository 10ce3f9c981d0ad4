//! Raw-TCP baseline: the least a WebSocket fanout server can do on this kernel.
//!
//! One thread, one mio loop. Clients get the minimal WebSocket upgrade and are then
//! never parsed again (their input is read and discarded). Every ingested tick is
//! turned into one unmasked text frame, built once into a shared buffer, and every
//! client gets every frame. Each socket is written at most once per loop turn with
//! everything due for it; unsent tails wait in a per-client backlog (bounded).
//!
//! It is a yardstick for the engine, not a product: no subscriptions, no snapshots,
//! no conflation, no multi-core.
//!
//! `--reply-subscribe` answers a client's first message with one `subscribed`
//! frame, as a server that confirms subscriptions does. It changes nothing for
//! the server but a lot for a client's TCP: a reply followed by a quiet
//! moment lets the client's delayed-ACK timer fire, which takes its socket
//! out of the interactive ("pingpong") mode, and from then on it ACKs every
//! read instead of every second segment (perf/DEFAULTS.md, "The clients' ACKs").

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTEN: Token = Token(usize::MAX - 1);
const INGEST: Token = Token(usize::MAX - 2);
/// A client whose unsent bytes exceed this is dropped rather than buffered forever.
const MAX_BACKLOG: usize = 64 << 20;
/// Retained backlog capacity above this is given back once a client catches up.
const KEEP_CAPACITY: usize = 256 << 10;
const MAX_REQUEST: usize = 16 << 10;

enum Conn {
    Client(Client),
    Ingest(Ingest),
}

struct Client {
    stream: TcpStream,
    /// Request bytes until the upgrade is done; then unused.
    request: Vec<u8>,
    upgraded: bool,
    /// Bytes due but not yet accepted by the kernel.
    backlog: Vec<u8>,
    /// Last write was short or would block: wait for a writable event.
    blocked: bool,
    /// `--reply-subscribe`: the confirmation is still to be sent.
    confirm: bool,
}

struct Ingest {
    stream: TcpStream,
    /// Partial line carried over between reads.
    buf: Vec<u8>,
}

struct Server {
    poll: Poll,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Frames produced in this loop turn, shared by all clients.
    frames: Vec<u8>,
    /// Clients that became writable this turn (flushed even with no new frames).
    writable: Vec<usize>,
    seqs: HashMap<Box<[u8]>, u64>,
    scratch: Box<[u8]>,
    dropped_slow: u64,
    reply_subscribe: bool,
}

/// `--reply-subscribe`'s answer: what a subscribing server confirms with.
const SUBSCRIBED: &[u8] = b"\x81\x15{\"type\":\"subscribed\"}";

fn main() -> Result<()> {
    let mut listen: Option<SocketAddr> = None;
    let mut ingest: Option<SocketAddr> = None;
    let mut reply_subscribe = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => listen = Some(value()?.parse().context("--listen")?),
            "--ingest" => ingest = Some(value()?.parse().context("--ingest")?),
            "--reply-subscribe" => reply_subscribe = true,
            _ => bail!("usage: baseline --listen ADDR --ingest ADDR [--reply-subscribe]"),
        }
    }
    let listen = listen.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
    let ingest = ingest.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap());
    run(listen, ingest, reply_subscribe)
}

fn run(listen: SocketAddr, ingest: SocketAddr, reply_subscribe: bool) -> Result<()> {
    let poll = Poll::new()?;
    let mut listener = TcpListener::bind(listen).context("bind --listen")?;
    let mut ingest_listener = TcpListener::bind(ingest).context("bind --ingest")?;
    poll.registry()
        .register(&mut listener, LISTEN, Interest::READABLE)?;
    poll.registry()
        .register(&mut ingest_listener, INGEST, Interest::READABLE)?;
    println!(
        "baseline ready listen={} ingest={}",
        listener.local_addr()?,
        ingest_listener.local_addr()?
    );
    io::stdout().flush()?;

    let mut s = Server {
        poll,
        conns: Vec::new(),
        free: Vec::new(),
        frames: Vec::with_capacity(1 << 20),
        writable: Vec::new(),
        seqs: HashMap::new(),
        scratch: vec![0u8; 256 << 10].into_boxed_slice(),
        dropped_slow: 0,
        reply_subscribe,
    };
    let mut events = Events::with_capacity(4096);
    loop {
        if let Err(e) = s.poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        for ev in events.iter() {
            match ev.token() {
                LISTEN => s.accept(&listener, true),
                INGEST => s.accept(&ingest_listener, false),
                Token(i) => {
                    if ev.is_writable()
                        && let Some(Some(Conn::Client(c))) = s.conns.get_mut(i)
                    {
                        c.blocked = false;
                        s.writable.push(i);
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        s.on_readable(i);
                    }
                }
            }
        }
        s.flush_all();
    }
}

impl Server {
    fn accept(&mut self, listener: &TcpListener, client: bool) {
        loop {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let i = self.free.pop().unwrap_or_else(|| {
                        self.conns.push(None);
                        self.conns.len() - 1
                    });
                    let interest = if client {
                        Interest::READABLE | Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, Token(i), interest)
                        .is_err()
                    {
                        self.free.push(i);
                        continue;
                    }
                    self.conns[i] = Some(if client {
                        Conn::Client(Client {
                            stream,
                            request: Vec::new(),
                            upgraded: false,
                            backlog: Vec::new(),
                            blocked: false,
                            confirm: self.reply_subscribe,
                        })
                    } else {
                        Conn::Ingest(Ingest {
                            stream,
                            buf: Vec::with_capacity(64 << 10),
                        })
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the backlog stays queued; report and move on.
                    eprintln!("baseline: accept: {e}");
                    return;
                }
            }
        }
    }

    fn on_readable(&mut self, i: usize) {
        let keep = match self.conns.get_mut(i) {
            Some(Some(Conn::Client(c))) => read_client(c, &mut self.scratch),
            Some(Some(Conn::Ingest(g))) => {
                read_ingest(g, &mut self.scratch, &mut self.seqs, &mut self.frames)
            }
            _ => true,
        };
        if !keep {
            self.close(i);
        }
    }

    fn close(&mut self, i: usize) {
        if let Some(mut conn) = self.conns[i].take() {
            let stream = match &mut conn {
                Conn::Client(c) => &mut c.stream,
                Conn::Ingest(g) => &mut g.stream,
            };
            let _ = self.poll.registry().deregister(stream);
            self.free.push(i);
        }
    }

    /// End of a loop turn: hand this turn's frames to every client, one write each.
    fn flush_all(&mut self) {
        let frames = std::mem::take(&mut self.frames);
        let mut doomed = Vec::new();
        let mut flush = |i: usize, c: &mut Client| {
            if !c.upgraded {
                return;
            }
            if !flush_client(c, &frames) {
                doomed.push(i);
            }
        };
        if !frames.is_empty() {
            for (i, conn) in self.conns.iter_mut().enumerate() {
                if let Some(Conn::Client(c)) = conn {
                    flush(i, c);
                }
            }
        } else {
            for &i in &self.writable {
                if let Some(Some(Conn::Client(c))) = self.conns.get_mut(i) {
                    flush(i, c);
                }
            }
        }
        self.writable.clear();
        for i in doomed {
            if let Some(Some(Conn::Client(c))) = self.conns.get(i)
                && c.backlog.len() > MAX_BACKLOG
            {
                self.dropped_slow += 1;
                eprintln!(
                    "baseline: dropped slow client (backlog {} bytes), {} so far",
                    c.backlog.len(),
                    self.dropped_slow
                );
            }
            self.close(i);
        }
        self.frames = frames;
        self.frames.clear();
    }
}

/// Appends `frames` to the client's due bytes and writes once. False: drop the client.
fn flush_client(c: &mut Client, frames: &[u8]) -> bool {
    // Fast path: nothing queued, write straight from the shared buffer.
    if c.backlog.is_empty() {
        if frames.is_empty() {
            return true;
        }
        if c.blocked {
            c.backlog.extend_from_slice(frames);
            return true;
        }
        return match write_once(&mut c.stream, frames) {
            Ok(n) => {
                if n < frames.len() {
                    c.blocked = true;
                    c.backlog.extend_from_slice(&frames[n..]);
                }
                true
            }
            Err(_) => false,
        };
    }
    c.backlog.extend_from_slice(frames);
    if c.backlog.len() > MAX_BACKLOG {
        return false;
    }
    if c.blocked {
        return true;
    }
    match write_once(&mut c.stream, &c.backlog) {
        Ok(n) => {
            c.backlog.drain(..n);
            if c.backlog.is_empty() {
                if c.backlog.capacity() > KEEP_CAPACITY {
                    c.backlog.shrink_to(KEEP_CAPACITY);
                }
            } else {
                c.blocked = true;
            }
            true
        }
        Err(_) => false,
    }
}

/// One write() call; WouldBlock counts as zero bytes written.
fn write_once(stream: &mut TcpStream, buf: &[u8]) -> io::Result<usize> {
    loop {
        match stream.write(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reads and discards client input, doing the upgrade first (and confirming
/// the first message after it, with `--reply-subscribe`). False: connection gone.
fn read_client(c: &mut Client, scratch: &mut [u8]) -> bool {
    loop {
        match c.stream.read(scratch) {
            Ok(0) => return false,
            Ok(n) => {
                let message = if c.upgraded {
                    true
                } else {
                    c.request.extend_from_slice(&scratch[..n]);
                    match upgrade(c) {
                        Ok(Some(pipelined)) => pipelined,
                        Ok(None) if c.request.len() < MAX_REQUEST => false,
                        _ => return false,
                    }
                };
                if message && c.confirm {
                    c.confirm = false;
                    if !flush_client(c, SUBSCRIBED) {
                        return false;
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// Completes the handshake once the request head is in: `Ok(Some(pipelined))`
/// (whether bytes followed the head), `Ok(None)`: need more bytes.
fn upgrade(c: &mut Client) -> Result<Option<bool>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head) = req.parse(&c.request)? else {
        return Ok(None);
    };
    let pipelined = c.request.len() > head;
    let key = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
        .context("no Sec-WebSocket-Key")?;
    let accept = tungstenite::handshake::derive_accept_key(key.value);
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    // Anything after the request head (e.g. a subscribe op) is ignored on purpose.
    c.request = Vec::new();
    c.upgraded = true;
    let n = write_once(&mut c.stream, reply.as_bytes())?;
    if n < reply.len() {
        c.backlog.extend_from_slice(&reply.as_bytes()[n..]);
        c.blocked = true;
    }
    Ok(Some(pipelined))
}

/// Reads ingest lines and appends one frame per line to `frames`. False: closed.
fn read_ingest(
    g: &mut Ingest,
    scratch: &mut [u8],
    seqs: &mut HashMap<Box<[u8]>, u64>,
    frames: &mut Vec<u8>,
) -> bool {
    // Edge-triggered: drain until WouldBlock, framing complete lines as they arrive.
    loop {
        match g.stream.read(scratch) {
            Ok(0) => return false,
            Ok(n) => {
                g.buf.extend_from_slice(&scratch[..n]);
                frame_lines(&mut g.buf, seqs, frames);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// Frames every complete line in `buf`, leaving a partial last line in place.
fn frame_lines(buf: &mut Vec<u8>, seqs: &mut HashMap<Box<[u8]>, u64>, frames: &mut Vec<u8>) {
    let mut start = 0;
    while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
        let mut line = &buf[start..start + nl];
        start += nl + 1;
        if let [rest @ .., b'\r'] = line {
            line = rest;
        }
        if let Some(ch) = find_ch(line) {
            let seq = match seqs.get_mut(ch) {
                Some(s) => {
                    *s += 1;
                    *s
                }
                None => {
                    seqs.insert(ch.into(), 1);
                    1
                }
            };
            push_frame(frames, ch, seq, line);
        }
    }
    buf.drain(..start);
}

/// The value of the top-level-looking `"ch":"..."` in a line, by byte scan only.
fn find_ch(line: &[u8]) -> Option<&[u8]> {
    let key = b"\"ch\"";
    let mut i = line.windows(key.len()).position(|w| w == key)? + key.len();
    while i < line.len() && matches!(line[i], b' ' | b'\t' | b':') {
        i += 1;
    }
    if line.get(i) != Some(&b'"') {
        return None;
    }
    let rest = &line[i + 1..];
    let end = rest.iter().position(|&b| b == b'"')?;
    Some(&rest[..end])
}

/// Appends one unmasked text frame `{"type":"update","ch":..,"seq":..,"data":line}`.
fn push_frame(out: &mut Vec<u8>, ch: &[u8], seq: u64, data: &[u8]) {
    const A: &[u8] = b"{\"type\":\"update\",\"ch\":\"";
    const B: &[u8] = b"\",\"seq\":";
    const C: &[u8] = b",\"data\":";
    let mut digits = [0u8; 20];
    let mut d = digits.len();
    let mut v = seq;
    loop {
        d -= 1;
        digits[d] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let seq = &digits[d..];
    let len = A.len() + ch.len() + B.len() + seq.len() + C.len() + data.len() + 1;
    out.push(0x81); // FIN + text
    if len < 126 {
        out.push(len as u8);
    } else if len <= 0xffff {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    for part in [A, ch, B, seq, C, data, b"}"] {
        out.extend_from_slice(part);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_channel() {
        assert_eq!(find_ch(br#"{"ch":"S0001","n":1}"#), Some(&b"S0001"[..]));
        assert_eq!(find_ch(br#"{"n":1, "ch" : "X"}"#), Some(&b"X"[..]));
        assert_eq!(find_ch(br#"{"n":1}"#), None);
    }

    #[test]
    fn frame_layout() {
        let mut out = Vec::new();
        push_frame(&mut out, b"A", 42, br#"{"ch":"A"}"#);
        let body = br#"{"type":"update","ch":"A","seq":42,"data":{"ch":"A"}}"#;
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1] as usize, body.len());
        assert_eq!(&out[2..], &body[..]);
        out.clear();
        push_frame(&mut out, b"A", 1, &[b'x'; 300]);
        assert_eq!(out[1], 126);
        let len = u16::from_be_bytes([out[2], out[3]]) as usize;
        assert_eq!(len, out.len() - 4);
    }

    /// A client over a real loopback socket: the 101, then (with
    /// `--reply-subscribe`) one `subscribed` frame for its first message, and
    /// nothing for the next, whether the first came with the request or after it.
    #[test]
    fn reply_subscribe_confirms_the_first_message_once() {
        use std::io::{Read, Write};
        use std::time::Duration;
        let req = "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let sub = b"\x81\x80abcd"; // an empty masked text frame
        for (confirm, pipelined) in [(true, false), (true, true), (false, false)] {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let mut client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (server, _) = l.accept().unwrap();
            server.set_nonblocking(true).unwrap();
            let mut c = Client {
                stream: TcpStream::from_std(server),
                request: Vec::new(),
                upgraded: false,
                backlog: Vec::new(),
                blocked: false,
                confirm,
            };
            let mut scratch = vec![0u8; 4096];
            let mut first = req.as_bytes().to_vec();
            if pipelined {
                first.extend_from_slice(sub);
            }
            client.write_all(&first).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            assert!(read_client(&mut c, &mut scratch));
            for _ in 0..2 {
                client.write_all(sub).unwrap();
                std::thread::sleep(Duration::from_millis(50));
                assert!(read_client(&mut c, &mut scratch));
            }
            client
                .set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while let Ok(n) = client.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
            let head = text.find("\r\n\r\n").unwrap() + 4;
            let want: &[u8] = if confirm { SUBSCRIBED } else { b"" };
            assert_eq!(
                &got[head..],
                want,
                "confirm {confirm}, pipelined {pipelined}"
            );
        }
        assert_eq!(SUBSCRIBED[1] as usize, SUBSCRIBED.len() - 2);
    }
}

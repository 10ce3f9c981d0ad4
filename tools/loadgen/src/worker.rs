//! One load-generating thread: its own mio `Poll` (edge-triggered) driving a
//! share of the client connections through connect → (TLS) → HTTP upgrade →
//! subscribe → receive (or, for tickwire's HTTP transports, an SSE stream or
//! a long-poll loop), with slow-consumer emulation and local statistics
//! that are published to the main thread for progress and the final report.

use crate::http::{self, PollItem};
use crate::nats::{self, NatsEvent, NatsParser};
use crate::scan::{self, FrameType};
use crate::stats::{self, Counters, SeqOutcome};
use crate::stream::{Stream, TlsClient};
use crate::ws::{self, Event, FrameParser};
use crate::zipf::Rng;
use base64::Engine;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tickwire,
    Nats,
    /// tickwire's `GET /sse`: one event stream per client.
    Sse,
    /// tickwire's `GET /poll`: a keep-alive loop of long polls, each with
    /// the previous answer's resume token.
    Poll,
}

impl Protocol {
    fn is_http(self) -> bool {
        matches!(self, Protocol::Sse | Protocol::Poll)
    }
}

#[derive(Debug, Clone, Copy)]
pub enum SlowMode {
    /// Token bucket: read at most this many messages per second.
    Rate(f64),
    /// Stop reading for this many seconds right after warmup.
    Pause(f64),
}

/// Settings shared by all workers.
pub struct Config {
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    pub protocol: Protocol,
    /// Connections started per second by this worker.
    pub connect_rate: f64,
    pub slow_mode: Option<SlowMode>,
    /// SO_RCVBUF for slow clients (0 = kernel default).
    pub slow_rcvbuf: usize,
    pub handshake_timeout: Duration,
    /// Set for wss:// URLs.
    pub tls: Option<TlsClient>,
}

/// One client to open.
pub struct ConnSpec {
    pub channels: Vec<String>,
    pub slow: bool,
    pub source_ip: Option<IpAddr>,
}

/// Run-wide switches set by the main thread.
pub struct Control {
    pub stop: AtomicBool,
    /// Realtime ns before which latency samples are discarded.
    pub warmup_end_ns: AtomicU64,
}

/// What a worker publishes for the main thread.
pub struct Shared {
    counters: [AtomicU64; 12],
    pub hist: Mutex<Histogram<u64>>,
    pub slow_hist: Mutex<Histogram<u64>>,
    pub first_error: Mutex<Option<String>>,
    pub done: AtomicBool,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            counters: Default::default(),
            hist: Mutex::new(stats::new_hist()),
            slow_hist: Mutex::new(stats::new_hist()),
            first_error: Mutex::new(None),
            done: AtomicBool::new(false),
        }
    }
}

impl Shared {
    fn publish(&self, c: &Counters) {
        let v = [
            c.connected,
            c.connect_failures,
            c.disconnects,
            c.deliveries,
            c.gaps,
            c.duplicates,
            c.out_of_order,
            c.server_errors,
            c.slow_deliveries,
            c.slow_skipped,
            c.slow_duplicates,
            c.slow_out_of_order,
        ];
        for (a, v) in self.counters.iter().zip(v) {
            a.store(v, Relaxed);
        }
    }

    pub fn counters(&self) -> Counters {
        let g = |i: usize| self.counters[i].load(Relaxed);
        Counters {
            connected: g(0),
            connect_failures: g(1),
            disconnects: g(2),
            deliveries: g(3),
            gaps: g(4),
            duplicates: g(5),
            out_of_order: g(6),
            server_errors: g(7),
            slow_deliveries: g(8),
            slow_skipped: g(9),
            slow_duplicates: g(10),
            slow_out_of_order: g(11),
        }
    }

    fn note_error(&self, msg: impl FnOnce() -> String) {
        let mut e = self.first_error.lock().unwrap();
        if e.is_none() {
            *e = Some(msg());
        }
    }
}

pub fn now_realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Handshake,
    Open,
}

/// Per-connection protocol state touched while handling received messages.
struct Session {
    slow: bool,
    /// (channel id, last seq) sorted by id; ids are per-worker interned names
    /// (tickwire) or SUB sids (NATS).
    chans: Vec<(u32, u64)>,
    wbuf: Vec<u8>,
    /// Set when the peer sent Close or a protocol error occurred.
    closing: Option<String>,
    nats_greeted: bool,
}

struct Conn {
    sock: Stream,
    state: State,
    spec: usize,
    started: Instant,
    rbuf: Vec<u8>,
    parser: FrameParser,
    nats: NatsParser,
    sess: Session,
    /// Slow-rate token bucket (messages).
    tokens: f64,
    last_refill: Instant,
    /// Edge-triggered: data may still be queued in the socket that we chose
    /// not to read yet (slow consumer).
    read_pending: bool,
    /// Already in the worker's revisit list.
    queued: bool,
}

/// Thread-local state used while parsing (split from `Conn` for borrowing).
struct Ctx<'a> {
    c: Counters,
    hist: Histogram<u64>,
    slow_hist: Histogram<u64>,
    interner: HashMap<Vec<u8>, u32, BuildHasherDefault<Fnv>>,
    rng: Rng,
    cfg: &'a Config,
    shared: &'a Shared,
    warmup_end_ns: u64,
}

/// FNV-1a: channel names are short, so SipHash's setup cost dominates.
#[derive(Default)]
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
}

const READ_CHUNK: usize = 256 * 1024;
/// Room before each read for the partial frame the last read left, so only
/// that frame is copied, not the whole read behind it (a backlogged reader's
/// reads are all full, and copying them cost an eighth of its CPU).
const CARRY_ROOM: usize = 16 * 1024;

pub fn run(cfg: &Config, specs: Vec<ConnSpec>, ctl: &Control, shared: &Shared, seed: u64) {
    if let Err(e) = run_inner(cfg, &specs, ctl, shared, seed) {
        shared.note_error(|| format!("worker failed: {e}"));
    }
    shared.done.store(true, Relaxed);
}

fn run_inner(
    cfg: &Config,
    specs: &[ConnSpec],
    ctl: &Control,
    shared: &Shared,
    seed: u64,
) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(4096);
    let mut conns: Vec<Option<Conn>> = (0..specs.len()).map(|_| None).collect();
    let mut scratch = vec![0u8; CARRY_ROOM + READ_CHUNK];
    let mut cx = Ctx {
        c: Counters::default(),
        hist: stats::new_hist(),
        slow_hist: stats::new_hist(),
        interner: HashMap::default(),
        rng: Rng::new(seed),
        cfg,
        shared,
        warmup_end_ns: u64::MAX,
    };
    // Connections that still have unread data (read cap hit, or a slow
    // consumer holding back); edge-triggered polling will not remind us.
    let mut pending: Vec<usize> = Vec::new();
    let mut pending_next: Vec<usize> = Vec::new();
    let subscribe_msgs: Vec<Vec<u8>> = specs
        .iter()
        .map(|s| match cfg.protocol {
            Protocol::Tickwire => serde_json::to_vec(&serde_json::json!({
                "op": "subscribe", "channels": s.channels,
            }))
            .expect("json"),
            Protocol::Nats => nats::connect_and_subscribe(&s.channels),
            // The query's channel list; the request is built per poll.
            Protocol::Sse | Protocol::Poll => s.channels.join(",").into_bytes(),
        })
        .collect();

    let start = Instant::now();
    let mut next_spec = 0usize;
    let mut in_flight = 0usize;
    let mut last_flush = Instant::now();
    const MAX_IN_FLIGHT: usize = 2000;

    loop {
        if ctl.stop.load(Relaxed) {
            break;
        }
        cx.warmup_end_ns = ctl.warmup_end_ns.load(Relaxed);

        // Ramp: start connections at the configured rate, bounded in flight.
        if next_spec < specs.len() {
            let due =
                ((start.elapsed().as_secs_f64() * cfg.connect_rate) as usize + 1).min(specs.len());
            // connect() can get slow when ephemeral ports run low; never
            // let it starve the established connections for long.
            let ramp_turn = Instant::now();
            while next_spec < due
                && in_flight < MAX_IN_FLIGHT
                && ramp_turn.elapsed() < Duration::from_millis(5)
            {
                let i = next_spec;
                next_spec += 1;
                match open_socket(cfg, &specs[i]).and_then(|tcp| Stream::new(tcp, cfg.tls.as_ref()))
                {
                    Ok(mut sock) => {
                        poll.registry().register(
                            &mut sock,
                            Token(i),
                            Interest::READABLE | Interest::WRITABLE,
                        )?;
                        in_flight += 1;
                        conns[i] = Some(Conn {
                            sock,
                            state: State::Connecting,
                            spec: i,
                            started: Instant::now(),
                            rbuf: Vec::new(),
                            parser: FrameParser::new(),
                            nats: NatsParser::new(),
                            sess: Session {
                                slow: specs[i].slow,
                                chans: Vec::new(),
                                wbuf: Vec::new(),
                                closing: None,
                                nats_greeted: false,
                            },
                            tokens: 1.0,
                            last_refill: Instant::now(),
                            read_pending: false,
                            queued: false,
                        });
                    }
                    Err(e) => {
                        cx.c.connect_failures += 1;
                        shared.note_error(|| format!("connect to {}: {e}", cfg.addr));
                    }
                }
            }
        }

        let timeout = if !pending.is_empty() {
            // Fast clients with a backlog must not wait; slow ones tick at 1 ms.
            let only_slow = pending
                .iter()
                .all(|&i| conns[i].as_ref().is_none_or(|c| c.sess.slow));
            Duration::from_millis(only_slow as u64)
        } else if next_spec < specs.len() || in_flight > 0 {
            Duration::from_millis(1)
        } else {
            Duration::from_millis(20)
        };
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }

        for ev in events.iter() {
            let i = ev.token().0;
            let Some(conn) = conns[i].as_mut() else {
                continue;
            };
            let before = conn.state;
            let alive = drive(
                conn,
                &mut cx,
                &mut scratch,
                &subscribe_msgs,
                ev.is_writable(),
            );
            let after_open = alive && conn.state == State::Open;
            if before != State::Open && (after_open || !alive) {
                in_flight -= 1;
            }
            if !alive {
                let mut c = conns[i].take().expect("conn");
                let _ = poll.registry().deregister(&mut c.sock);
            } else if conn_needs_revisit(conns[i].as_mut()) {
                pending.push(i);
            }
        }

        // Revisit connections with unread data (bucket refilled, pause over,
        // or a fast client that hit the per-turn read cap).
        for i in pending.drain(..) {
            let Some(conn) = conns[i].as_mut() else {
                continue;
            };
            conn.queued = false;
            if conn.read_pending && conn.state == State::Open {
                let alive = drive(conn, &mut cx, &mut scratch, &subscribe_msgs, false);
                if !alive {
                    let mut c = conns[i].take().expect("conn");
                    let _ = poll.registry().deregister(&mut c.sock);
                    continue;
                }
            }
            if conn_needs_revisit(conns[i].as_mut()) {
                pending_next.push(i);
            }
        }
        std::mem::swap(&mut pending, &mut pending_next);

        shared.publish(&cx.c);
        if last_flush.elapsed() >= Duration::from_millis(200) {
            last_flush = Instant::now();
            flush_hists(&mut cx);
            // Handshake timeouts.
            for slot in conns.iter_mut() {
                if let Some(c) = slot
                    && c.state != State::Open
                    && c.started.elapsed() > cfg.handshake_timeout
                {
                    cx.c.connect_failures += 1;
                    in_flight -= 1;
                    shared.note_error(|| format!("{}: handshake timed out", cfg.addr));
                    let mut c = slot.take().expect("conn");
                    let _ = poll.registry().deregister(&mut c.sock);
                }
            }
        }
    }
    flush_hists(&mut cx);
    shared.publish(&cx.c);
    // Polite close for the peers; errors do not matter at this point.
    for c in conns.iter_mut().flatten() {
        if c.state == State::Open && !cfg.protocol.is_http() {
            let mut f = Vec::new();
            ws::encode_client_frame(&mut f, ws::OP_CLOSE, &1000u16.to_be_bytes(), mask(&mut cx));
            let _ = c.sock.write(&f);
        }
    }
    Ok(())
}

/// Marks a connection for a later read attempt; false if already queued or
/// nothing is left to read.
fn conn_needs_revisit(conn: Option<&mut Conn>) -> bool {
    match conn {
        Some(c) if c.read_pending && !c.queued => {
            c.queued = true;
            true
        }
        _ => false,
    }
}

fn flush_hists(cx: &mut Ctx<'_>) {
    if !cx.hist.is_empty() {
        let _ = cx.shared.hist.lock().unwrap().add(&cx.hist);
        cx.hist.reset();
    }
    if !cx.slow_hist.is_empty() {
        let _ = cx.shared.slow_hist.lock().unwrap().add(&cx.slow_hist);
        cx.slow_hist.reset();
    }
}

fn mask(cx: &mut Ctx<'_>) -> [u8; 4] {
    (cx.rng.next_u64() as u32).to_ne_bytes()
}

fn open_socket(cfg: &Config, spec: &ConnSpec) -> io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(cfg.addr), Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    if spec.slow && cfg.slow_rcvbuf > 0 {
        // Before connect, so the advertised window stays small: otherwise
        // loopback autotuning buffers megabytes and the server never feels
        // the slow reader.
        s.set_recv_buffer_size(cfg.slow_rcvbuf)?;
    }
    if let Some(ip) = spec.source_ip {
        if ip.is_ipv4() {
            // Defer the port choice to connect() so one source IP can use the
            // whole ephemeral range per destination.
            let one: libc::c_int = 1;
            // SAFETY: valid fd, option value points at a live c_int.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
        s.bind(&SocketAddr::new(ip, 0).into())?;
    }
    match s.connect(&cfg.addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(TcpStream::from_std(s.into()))
}

/// Handles readiness for one connection. Returns false if it must be dropped.
fn drive(
    conn: &mut Conn,
    cx: &mut Ctx<'_>,
    scratch: &mut [u8],
    subscribe_msgs: &[Vec<u8>],
    writable: bool,
) -> bool {
    match drive_inner(conn, cx, scratch, subscribe_msgs, writable) {
        Ok(true) => true,
        Ok(false) if conn.state != State::Open => {
            cx.c.connect_failures += 1;
            false
        }
        // Say why (a refused upgrade, a certificate that does not verify).
        Err(e) if conn.state != State::Open => {
            cx.c.connect_failures += 1;
            cx.shared
                .note_error(|| format!("{}: handshake failed: {e}", cx.cfg.addr));
            false
        }
        Ok(false) => {
            cx.c.disconnects += 1;
            let why = conn.sess.closing.clone().unwrap_or_else(|| "closed".into());
            cx.shared
                .note_error(|| format!("{}: disconnected: {why}", cx.cfg.addr));
            false
        }
        Err(e) => {
            cx.c.disconnects += 1;
            cx.shared
                .note_error(|| format!("{}: disconnected: {e}", cx.cfg.addr));
            false
        }
    }
}

fn drive_inner(
    conn: &mut Conn,
    cx: &mut Ctx<'_>,
    scratch: &mut [u8],
    subscribe_msgs: &[Vec<u8>],
    writable: bool,
) -> anyhow::Result<bool> {
    if conn.state == State::Connecting {
        if let Some(e) = conn.sock.take_error()? {
            let msg = format!("connect to {}: {e}", cx.cfg.addr);
            cx.shared.note_error(|| msg);
            return Ok(false);
        }
        match conn.sock.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(true),
            Err(e) => {
                cx.shared
                    .note_error(|| format!("connect to {}: {e}", cx.cfg.addr));
                return Ok(false);
            }
        }
        match cx.cfg.protocol {
            Protocol::Sse | Protocol::Poll => {
                let path = if cx.cfg.protocol == Protocol::Sse {
                    "/sse"
                } else {
                    "/poll"
                };
                http::stream_request(
                    &mut conn.sess.wbuf,
                    &cx.cfg.host,
                    path,
                    &subscribe_msgs[conn.spec],
                    None,
                );
            }
            Protocol::Tickwire | Protocol::Nats => {
                let key = base64::engine::general_purpose::STANDARD
                    .encode(cx.rng.next_u64().to_ne_bytes().repeat(2));
                conn.sess
                    .wbuf
                    .extend(ws::upgrade_request(&cx.cfg.host, &cx.cfg.path, &key));
            }
        }
        conn.state = State::Handshake;
    }
    if (writable || !conn.sess.wbuf.is_empty() || conn.sock.has_pending()) && !flush(conn)? {
        return Ok(false);
    }

    // Read loop. Fast clients read until WouldBlock (edge-triggered) or the
    // per-turn cap, so one firehose connection cannot starve the others;
    // slow ones only as far as their budget allows.
    let mut reads = 0;
    loop {
        if reads == 32 {
            conn.read_pending = true;
            break;
        }
        reads += 1;
        let mut limit = READ_CHUNK;
        if conn.sess.slow && conn.state == State::Open {
            match cx.cfg.slow_mode {
                Some(SlowMode::Rate(rate)) => {
                    let now = Instant::now();
                    let dt = now.duration_since(conn.last_refill).as_secs_f64();
                    conn.last_refill = now;
                    // Burst capacity of ~50 ms worth (at least one message).
                    conn.tokens = (conn.tokens + dt * rate).min((rate * 0.05).max(1.0));
                    if conn.tokens < 1.0 {
                        conn.read_pending = true;
                        break;
                    }
                    // Read roughly what the budget covers, so the kernel
                    // buffer (not our memory) holds the backlog.
                    limit = ((conn.tokens as usize) * 256).clamp(512, READ_CHUNK);
                }
                Some(SlowMode::Pause(secs)) => {
                    let now = now_realtime_ns();
                    let w = cx.warmup_end_ns;
                    if now >= w && now < w.saturating_add((secs * 1e9) as u64) {
                        conn.read_pending = true;
                        break;
                    }
                }
                None => {}
            }
        }
        let n = match conn.sock.read(&mut scratch[CARRY_ROOM..CARRY_ROOM + limit]) {
            Ok(0) => {
                conn.sess.closing.get_or_insert_with(|| "EOF".into());
                return Ok(false);
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.read_pending = false;
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        let now_ns = now_realtime_ns();
        let delivered_before = cx.c.deliveries;
        let end = CARRY_ROOM + n;
        if conn.state == State::Handshake {
            conn.rbuf.extend_from_slice(&scratch[CARRY_ROOM..end]);
            let head = if cx.cfg.protocol.is_http() {
                let Some(h) = http::parse_head(&conn.rbuf)? else {
                    continue;
                };
                if h.status != 200 {
                    let line = conn.rbuf.split(|&b| b == b'\r').next().unwrap_or_default();
                    anyhow::bail!("answered {}", String::from_utf8_lossy(line));
                }
                // A poll answer is parsed whole, head and body.
                if cx.cfg.protocol == Protocol::Sse {
                    h.len
                } else {
                    0
                }
            } else {
                let Some(head) = ws::parse_upgrade_response(&conn.rbuf)? else {
                    continue;
                };
                head
            };
            conn.rbuf.drain(..head);
            conn.state = State::Open;
            cx.c.connected += 1;
            if cx.cfg.protocol == Protocol::Tickwire {
                let m = mask(cx);
                ws::encode_client_frame(
                    &mut conn.sess.wbuf,
                    ws::OP_TEXT,
                    &subscribe_msgs[conn.spec],
                    m,
                );
            }
            let buf = std::mem::take(&mut conn.rbuf);
            let used = on_bytes(conn, cx, subscribe_msgs, &buf, now_ns)?;
            conn.rbuf = buf;
            conn.rbuf.drain(..used);
        } else if conn.rbuf.len() <= CARRY_ROOM {
            let start = CARRY_ROOM - conn.rbuf.len();
            scratch[start..CARRY_ROOM].copy_from_slice(&conn.rbuf);
            conn.rbuf.clear();
            let used = on_bytes(conn, cx, subscribe_msgs, &scratch[start..end], now_ns)?;
            conn.rbuf.extend_from_slice(&scratch[start + used..end]);
        } else {
            conn.rbuf.extend_from_slice(&scratch[CARRY_ROOM..end]);
            let buf = std::mem::take(&mut conn.rbuf);
            let used = on_bytes(conn, cx, subscribe_msgs, &buf, now_ns)?;
            conn.rbuf = buf;
            conn.rbuf.drain(..used);
        }
        if conn.sess.slow {
            conn.tokens -= (cx.c.deliveries - delivered_before) as f64;
        }
        if (!conn.sess.wbuf.is_empty() || conn.sock.has_pending()) && !flush(conn)? {
            return Ok(false);
        }
        if conn.sess.closing.is_some() {
            return Ok(false);
        }
        if n < limit && conn.state == State::Open {
            // A short read on a stream socket means the receive queue is
            // empty; new data will raise a fresh edge. Saves the extra
            // read() that would only return WouldBlock.
            conn.read_pending = false;
            break;
        }
    }
    Ok(true)
}

/// Writes queued bytes; returns false if the peer is gone.
fn flush(conn: &mut Conn) -> io::Result<bool> {
    let mut off = 0;
    while off < conn.sess.wbuf.len() {
        match conn.sock.write(&conn.sess.wbuf[off..]) {
            Ok(0) => return Ok(false),
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::NotConnected => break,
            Err(e) => return Err(e),
        }
    }
    conn.sess.wbuf.drain(..off);
    match conn.sock.flush_pending() {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(true),
        Err(e) => Err(e),
    }
}

/// Parses WebSocket frames (or SSE events, or poll answers) from `data`;
/// returns bytes consumed.
fn on_bytes(
    conn: &mut Conn,
    cx: &mut Ctx<'_>,
    subscribe_msgs: &[Vec<u8>],
    data: &[u8],
    now_ns: u64,
) -> anyhow::Result<usize> {
    match cx.cfg.protocol {
        Protocol::Sse => return on_sse(&mut conn.sess, cx, data, now_ns),
        Protocol::Poll => {
            return on_poll(&mut conn.sess, cx, &subscribe_msgs[conn.spec], data, now_ns);
        }
        Protocol::Tickwire | Protocol::Nats => {}
    }
    let Conn {
        parser,
        nats: nats_parser,
        sess,
        spec,
        ..
    } = conn;
    let mut err: Option<anyhow::Error> = None;
    let used = parser.parse(data, |ev| match ev {
        Event::Message(m) => match cx.cfg.protocol {
            Protocol::Tickwire | Protocol::Sse | Protocol::Poll => on_tickwire(sess, cx, m, now_ns),
            Protocol::Nats => {
                let r = nats_parser.feed(m, |nev| {
                    on_nats(sess, cx, &subscribe_msgs[*spec], nev, now_ns)
                });
                if let Err(e) = r {
                    err.get_or_insert(e);
                }
            }
        },
        Event::Ping(p) => {
            let m = mask(cx);
            ws::encode_client_frame(&mut sess.wbuf, ws::OP_PONG, p, m);
        }
        Event::Pong => {}
        Event::Close(p) => {
            let m = mask(cx);
            ws::encode_client_frame(&mut sess.wbuf, ws::OP_CLOSE, p.get(..2).unwrap_or(&[]), m);
            let reason = String::from_utf8_lossy(p.get(2..).unwrap_or(&[])).into_owned();
            sess.closing = Some(format!("server sent close {reason}"));
        }
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    Ok(used)
}

/// SSE events carry the WebSocket messages as their data; `close` says why
/// the stream ends.
fn on_sse(sess: &mut Session, cx: &mut Ctx<'_>, data: &[u8], now_ns: u64) -> anyhow::Result<usize> {
    http::parse_sse(data, |e| {
        if e.name == b"close" {
            sess.closing = Some(format!("server sent {}", String::from_utf8_lossy(e.data)));
        } else {
            on_tickwire(sess, cx, e.data, now_ns);
        }
    })
}

/// Each poll answer's messages, then the next poll with its token.
fn on_poll(
    sess: &mut Session,
    cx: &mut Ctx<'_>,
    channels: &[u8],
    data: &[u8],
    now_ns: u64,
) -> anyhow::Result<usize> {
    http::parse_poll(data, |it| match it {
        PollItem::Message(m) => on_tickwire(sess, cx, m, now_ns),
        PollItem::Next(token) => {
            http::stream_request(&mut sess.wbuf, &cx.cfg.host, "/poll", channels, Some(token))
        }
    })
}

#[inline]
fn track(sess: &mut Session, cx: &mut Ctx<'_>, ch_id: u32, seq: u64, t: Option<u64>, now_ns: u64) {
    let slot = match sess.chans.binary_search_by_key(&ch_id, |e| e.0) {
        Ok(i) => i,
        Err(i) => {
            sess.chans.insert(i, (ch_id, 0));
            i
        }
    };
    let o: SeqOutcome = stats::observe_seq(&mut sess.chans[slot].1, seq);
    cx.c.apply(o, sess.slow);
    if sess.slow {
        cx.c.slow_deliveries += 1;
    }
    cx.c.deliveries += 1;
    if let Some(t) = t {
        let h = if sess.slow {
            &mut cx.slow_hist
        } else {
            &mut cx.hist
        };
        stats::record_latency(h, now_ns, t, cx.warmup_end_ns);
    }
}

fn on_tickwire(sess: &mut Session, cx: &mut Ctx<'_>, m: &[u8], now_ns: u64) {
    if let Some(u) = scan::update(m) {
        let next_id = cx.interner.len() as u32;
        let id = match cx.interner.get(u.ch) {
            Some(&id) => id,
            None => {
                cx.interner.insert(u.ch.to_vec(), next_id);
                next_id
            }
        };
        track(sess, cx, id, u.seq, u.t_ns, now_ns);
        return;
    }
    if scan::frame_type(m) == FrameType::Error {
        cx.c.server_errors += 1;
        cx.shared
            .note_error(|| format!("server error frame: {}", String::from_utf8_lossy(m)));
    }
}

fn on_nats(sess: &mut Session, cx: &mut Ctx<'_>, greeting: &[u8], ev: NatsEvent<'_>, now_ns: u64) {
    match ev {
        NatsEvent::Info(_) => {
            if !sess.nats_greeted {
                sess.nats_greeted = true;
                let m = mask(cx);
                ws::encode_client_frame(&mut sess.wbuf, ws::OP_BINARY, greeting, m);
            }
        }
        NatsEvent::Msg { sid, payload, .. } => {
            let Some(n) = scan::n(payload) else {
                return;
            };
            let t = scan::t_ns(payload);
            track(sess, cx, sid as u32, n, t, now_ns);
        }
        NatsEvent::Ping => {
            let m = mask(cx);
            ws::encode_client_frame(&mut sess.wbuf, ws::OP_BINARY, b"PONG\r\n", m);
        }
        NatsEvent::Err(e) => {
            cx.c.server_errors += 1;
            cx.shared
                .note_error(|| format!("NATS -ERR {}", String::from_utf8_lossy(e)));
        }
        NatsEvent::Pong | NatsEvent::Ok => {}
    }
}

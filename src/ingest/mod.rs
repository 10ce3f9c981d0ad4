//! The ingest thread: the TCP feed server and the [`Sequencer`].
//!
//! It owns the feed connections on its own mio `Poll`, splits
//! newline-delimited JSON, validates each line ([`line`](mod@line)), sequences it
//! ([`sequencer`]: per-channel seq, last value, the update frame built once)
//! and pushes the update to every worker's ring. It also answers workers'
//! subscribe requests on the same rings, which is what joins a snapshot to
//! the live stream without a gap or a duplicate.

pub mod history;
pub mod idempotency;
pub mod line;
pub mod sequencer;

pub use line::{LineParser, Reject};
pub use sequencer::{Sequencer, accept_line};

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use rtrb::{Consumer, Producer, PushError};
use slab::Slab;

use crate::clock;
use crate::limits::{FeedAuth, Limit};
use crate::metrics::Metrics;
use crate::ring::{
    Doorbell, Resolved, RingBytes, SubscribeReply, ToIngest, ToWorker, WORKER_RING_BYTES_MAX,
};
use crate::transport::{TlsStream, Transport};
use crate::update::Update;

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// Read room beyond the longest line: one read call's worth.
const READ_CHUNK: usize = 64 * 1024;
/// Error replies buffered for a feed that does not read them; past this they
/// are dropped (still counted as rejects).
const FEED_OUT_MAX: usize = 1 << 20;
/// Reads per feed per loop turn before the loop serves others (fairness).
const READS_PER_TURN: usize = 16;
/// How long a refused feed may take to close after its error line (its
/// input is read and dropped meanwhile, so the close is not a reset that
/// could discard the error line).
const FEED_REFUSED_LINGER: Duration = Duration::from_secs(2);
/// How long the loop blocks when idle, to notice shutdown promptly.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// After an accept failed for want of file descriptors (EMFILE, ENFILE),
/// how long until the backlog is tried again: the listener is edge-triggered
/// and will not report the connections already waiting in it.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Whether a frame of `len` bytes may join `unread` bytes in a worker's ring:
/// the bytes bound, except that one frame always fits in an empty ring.
fn ring_has_room(unread: u64, len: u64) -> bool {
    unread == 0 || unread + len <= WORKER_RING_BYTES_MAX
}

struct Feed {
    stream: Transport,
    buf: Box<[u8]>,
    start: usize,
    filled: usize,
    /// Lines seen on this connection (numbering starts at 1).
    line: u64,
    /// Inside a line already rejected as too long: drop bytes to its newline.
    discarding: bool,
    out: Vec<u8>,
    out_dropped: u64,
    /// Sent its `AUTH` line (or none is required).
    authed: bool,
    /// Refused: its write side is shut, input is dropped until it closes.
    refused: bool,
    /// When it connected, or was refused.
    since: Instant,
}

/// The ingest thread's state.
pub struct Ingest {
    poll: Poll,
    listener: TcpListener,
    feeds: Slab<Feed>,
    /// Whether the backlog must be accepted again (after EMFILE) at `ACCEPT_RETRY`.
    accept_retry: bool,
    /// An accept failed and nothing was accepted since (logged once).
    accept_failing: bool,
    parser: LineParser,
    sequencer: Sequencer,
    to_workers: Vec<Producer<ToWorker>>,
    worker_bells: Vec<Arc<Doorbell>>,
    /// Per worker: frame bytes it has taken, and bytes pushed to it.
    ring_bytes: Vec<Arc<RingBytes>>,
    pushed_bytes: Vec<u64>,
    from_workers: Vec<Consumer<ToIngest>>,
    bell: Arc<Doorbell>,
    metrics: Arc<Metrics>,
    shutdown: Arc<AtomicBool>,
    max_line: usize,
    /// The token an `AUTH` first line must carry.
    token: Option<Arc<[u8]>>,
    max_feeds: usize,
    /// How long a feed may take to send its `AUTH` line (`handshake_timeout`).
    auth_timeout: Duration,
    /// Idempotency keys of the publish API.
    idempotency: idempotency::Idempotency,
    /// Messages published through the HTTP API.
    published_total: u64,
    /// HTTP publishes that repeated an idempotency key (nothing published).
    repeats_total: u64,
    /// Feeds speak TLS (`--ingest-tls`).
    tls: Option<crate::tls::SharedConfig>,
    messages: u64,
    bytes: u64,
    rejects: [u64; 6],
    ring_full_waits: u64,
    loop_turns: u64,
    /// Feeds whose reads were cut short (fairness cap): read again next turn.
    retry: Vec<usize>,
    last_sweep: Instant,
    /// Runs on the (only) worker's thread: a full ring cannot be waited
    /// out, since that thread is the one that drains it.
    on_worker: bool,
    /// On a worker's thread: what a full ring did not take yet, in order.
    /// While it holds anything no feed is read and no new pass starts, so
    /// it holds at most what one pass produced (one read per feed and the
    /// requests then waiting).
    parked: std::collections::VecDeque<(usize, ToWorker)>,
}

/// Everything the ingest thread is built from.
pub struct IngestParts {
    /// Its Poll (its waker is registered with `WAKER_TOKEN`).
    pub poll: Poll,
    /// The bound listener.
    pub listener: std::net::TcpListener,
    /// One producer per worker.
    pub to_workers: Vec<Producer<ToWorker>>,
    /// One doorbell per worker.
    pub worker_bells: Vec<Arc<Doorbell>>,
    /// Per worker: frame bytes it has taken off its ring.
    pub ring_bytes: Vec<Arc<RingBytes>>,
    /// One control consumer per worker.
    pub from_workers: Vec<Consumer<ToIngest>>,
    /// The ingest thread's own doorbell.
    pub bell: Arc<Doorbell>,
    /// Shared metrics.
    pub metrics: Arc<Metrics>,
    /// Set to stop.
    pub shutdown: Arc<AtomicBool>,
    /// Longest line.
    pub max_line: usize,
    /// Channel limit.
    pub max_channels: usize,
    /// A feed's first line must be `AUTH <token>` with this token.
    pub token: Option<Arc<[u8]>>,
    /// Feed connections at once.
    pub max_feeds: usize,
    /// How long a feed may take to send its `AUTH` line.
    pub auth_timeout: Duration,
    /// When feeds speak TLS: the listen port's certificate.
    pub tls: Option<crate::tls::SharedConfig>,
    /// History kept for resuming subscribers.
    pub history: history::HistoryLimits,
    /// Channel classes (first match wins).
    pub classes: Vec<history::ClassRule>,
    /// How long publish idempotency keys are remembered.
    pub idempotency_window_ns: u64,
    /// Driven by the only worker's loop ([`Ingest::turn`]) instead of a
    /// thread of its own.
    pub on_worker: bool,
}

/// The token the ingest Poll's waker must use.
pub const WAKER_TOKEN: Token = WAKER;

impl Ingest {
    /// Builds the ingest loop.
    ///
    /// # Errors
    /// Registering the listener failed.
    pub fn new(p: IngestParts) -> io::Result<Self> {
        p.listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(p.listener);
        p.poll
            .registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Ingest {
            poll: p.poll,
            listener,
            feeds: Slab::new(),
            accept_retry: false,
            accept_failing: false,
            parser: LineParser::default(),
            sequencer: Sequencer::with_classes(p.max_channels, p.history, p.classes),
            to_workers: p.to_workers,
            worker_bells: p.worker_bells,
            pushed_bytes: vec![0; p.ring_bytes.len()],
            ring_bytes: p.ring_bytes,
            from_workers: p.from_workers,
            bell: p.bell,
            metrics: p.metrics,
            shutdown: p.shutdown,
            max_line: p.max_line,
            token: p.token,
            max_feeds: p.max_feeds,
            auth_timeout: p.auth_timeout,
            idempotency: idempotency::Idempotency::new(p.idempotency_window_ns),
            published_total: 0,
            repeats_total: 0,
            tls: p.tls,
            messages: 0,
            bytes: 0,
            rejects: [0; 6],
            ring_full_waits: 0,
            loop_turns: 0,
            retry: Vec::new(),
            last_sweep: Instant::now(),
            on_worker: p.on_worker,
            parked: std::collections::VecDeque::new(),
        })
    }

    /// The loop's epoll descriptor: a worker that drives this loop
    /// ([`Ingest::turn`]) registers it in its own Poll, which reports it
    /// readable when a feed or a request is ready here.
    pub fn poll_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.poll.as_raw_fd()
    }

    /// Runs until shutdown, on a thread of its own.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(256);
        while !self.shutdown.load(Ordering::Relaxed) {
            if !self.turn(&mut events, true) {
                break;
            }
        }
        self.publish();
    }

    /// One pass of the loop: requests, accepts, feed reads. On its own
    /// thread (`may_block`) it sleeps while nothing is due; on a worker's
    /// thread it never blocks, and the worker calls it again while
    /// [`Ingest::has_work`] says so. False: the poll failed, stop.
    pub fn turn(&mut self, events: &mut Events, may_block: bool) -> bool {
        self.loop_turns += 1;
        if !self.unpark() {
            // The worker drains its ring first; no new input until then.
            self.publish();
            return true;
        }
        let busy = self.serve_control() || !self.retry.is_empty();
        let timeout = if busy || !may_block {
            Duration::ZERO
        } else {
            self.bell.prepare_sleep();
            if self.from_workers.iter().any(|c| !c.is_empty()) {
                Duration::ZERO
            } else if self.accept_retry {
                ACCEPT_RETRY
            } else {
                IDLE_POLL
            }
        };
        if let Err(e) = self.poll.poll(events, Some(timeout))
            && e.kind() != io::ErrorKind::Interrupted
        {
            tracing_error(&format!("ingest poll failed: {e}"));
            return false;
        }
        if may_block {
            self.bell.awake();
        }
        if self.accept_retry {
            self.accept();
        }
        if self.token.is_some() && self.last_sweep.elapsed() >= IDLE_POLL {
            self.last_sweep = Instant::now();
            self.sweep_feeds();
        }
        let mut again = std::mem::take(&mut self.retry);
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept(),
                WAKER => {}
                Token(key) => {
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        again.push(key);
                    }
                    if event.is_writable() {
                        self.flush_feed(key);
                    }
                }
            }
        }
        again.sort_unstable();
        again.dedup();
        for key in again {
            if self.read_feed(key) {
                self.retry.push(key);
            }
        }
        self.publish();
        true
    }

    /// Whether work is left that no readiness event will announce: reads
    /// cut short, requests waiting, updates parked for a full ring, or an
    /// accept to retry.
    pub fn has_work(&self) -> bool {
        !self.retry.is_empty()
            || !self.parked.is_empty()
            || self.from_workers.iter().any(|c| !c.is_empty())
    }

    /// Stops: the last counts reach `/metrics`.
    pub fn finish(&mut self) {
        self.publish();
    }

    fn accept(&mut self) {
        self.accept_retry = false;
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    self.accept_failing = false;
                    let _ = stream.set_nodelay(true);
                    if self.feeds.len() >= self.max_feeds {
                        self.metrics.refusals.limit(Limit::FeedConnections);
                        let msg = format!(
                            "{{\"error\":\"too many feed connections (max_feed_connections is {})\",\"line\":0}}\n",
                            self.max_feeds
                        );
                        // A fresh socket takes one short line; then it is
                        // dropped (a TLS feed just sees the close).
                        if self.tls.is_none() {
                            let _ = stream.write(msg.as_bytes());
                        }
                        let _ = stream.shutdown(std::net::Shutdown::Write);
                        continue;
                    }
                    let mut stream = match &self.tls {
                        None => Transport::Plain(stream),
                        Some(tls) => match TlsStream::new(tls.load_full(), stream) {
                            Ok(t) => Transport::Tls(Box::new(t)),
                            Err(_) => continue,
                        },
                    };
                    let entry = self.feeds.vacant_entry();
                    let key = entry.key();
                    if self
                        .poll
                        .registry()
                        .register(
                            &mut stream,
                            Token(key),
                            Interest::READABLE | Interest::WRITABLE,
                        )
                        .is_err()
                    {
                        continue;
                    }
                    entry.insert(Feed {
                        stream,
                        buf: vec![0; self.max_line + READ_CHUNK].into_boxed_slice(),
                        start: 0,
                        filled: 0,
                        line: 0,
                        discarding: false,
                        out: Vec::new(),
                        out_dropped: 0,
                        authed: self.token.is_none(),
                        refused: false,
                        since: Instant::now(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the connections stay in the backlog
                    // and are accepted once descriptors are free again.
                    if !self.accept_failing {
                        tracing_error(&format!("ingest accept failed: {e} (retrying)"));
                    }
                    self.accept_failing = true;
                    self.accept_retry = true;
                    return;
                }
            }
        }
    }

    /// Reads and processes a feed; true if it has more to read (fairness cap).
    fn read_feed(&mut self, key: usize) -> bool {
        for _ in 0..READS_PER_TURN {
            if !self.parked.is_empty() {
                // A full ring on the worker's thread: read on once drained.
                return true;
            }
            let Some(feed) = self.feeds.get_mut(key) else {
                return false;
            };
            if feed.refused {
                return self.linger(key);
            }
            if feed.filled == feed.buf.len() {
                // process() leaves at most max_line bytes, so this is not
                // reached; were it, reading into an empty slice would look
                // like EOF and close the feed, so make room first.
                self.process(key);
                let feed = &mut self.feeds[key];
                if feed.filled == feed.buf.len() {
                    self.drop_overlong(key);
                }
                continue;
            }
            let n = match feed.stream.read(&mut feed.buf[feed.filled..]) {
                Ok(0) => {
                    self.close_feed(key);
                    return false;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // A reset cut a partial last line: it cannot parse as a
                    // whole object, so close_feed counts it as a reject.
                    self.close_feed(key);
                    return false;
                }
            };
            feed.filled += n;
            self.process(key);
            self.ring_workers();
            self.flush_feed(key);
            if self.feeds.get(key).is_some_and(|f| f.refused) {
                return self.linger(key);
            }
        }
        true
    }

    /// Splits complete lines out of a feed's buffer and ingests them.
    fn process(&mut self, key: usize) {
        let now = clock::now_ns();
        let max_line = self.max_line;
        loop {
            let feed = &mut self.feeds[key];
            let window = &feed.buf[feed.start..feed.filled];
            let Some(nl) = memchr::memchr(b'\n', window) else {
                break;
            };
            let line_start = feed.start;
            feed.start += nl + 1;
            if feed.discarding {
                // The tail of a line already rejected as too long.
                feed.discarding = false;
                continue;
            }
            feed.line += 1;
            let line_no = feed.line;
            self.bytes += nl as u64 + 1;
            if !feed.authed {
                // Once per feed: copied out of the buffer it borrows.
                let line = feed.buf[line_start..line_start + nl].to_vec();
                if self.authenticate(key, &line) {
                    continue;
                }
                break;
            }
            if nl > max_line {
                self.reject(key, Reject::LineTooLong, line_no);
                continue;
            }
            // Borrow the line out of the feed's buffer while sequencing: the
            // buffer is a separate allocation from the sequencer's state.
            let feed = &self.feeds[key];
            let line = &feed.buf[line_start..line_start + nl];
            match accept_line(&mut self.parser, &mut self.sequencer, line, now) {
                Ok(Some(update)) => {
                    self.messages += 1;
                    self.fan_out(update);
                }
                Ok(None) => {}
                Err(reason) => self.reject(key, reason, line_no),
            }
        }
        let feed = &mut self.feeds[key];
        let left = feed.filled - feed.start;
        if feed.discarding {
            feed.start = 0;
            feed.filled = 0;
        } else if left > max_line {
            self.drop_overlong(key);
        } else {
            feed.buf.copy_within(feed.start..feed.filled, 0);
            feed.filled = left;
            feed.start = 0;
        }
    }

    /// A line with no newline within `max_line`: rejected now, and the rest
    /// of it dropped up to its newline.
    fn drop_overlong(&mut self, key: usize) {
        let feed = &mut self.feeds[key];
        let left = feed.filled - feed.start;
        feed.line += 1;
        let line_no = feed.line;
        feed.discarding = true;
        feed.start = 0;
        feed.filled = 0;
        self.bytes += left as u64;
        self.reject(key, Reject::LineTooLong, line_no);
    }

    /// A refused feed: its error line is flushed and its write side shut;
    /// its input is dropped until it closes (or the linger ends).
    fn linger(&mut self, key: usize) -> bool {
        let feed = &mut self.feeds[key];
        feed.discarding = true;
        feed.start = 0;
        feed.filled = 0;
        if feed.out.is_empty() && !feed.stream.has_pending() {
            feed.stream.shutdown_write();
        }
        for _ in 0..READS_PER_TURN {
            let feed = &mut self.feeds[key];
            match feed.stream.read(&mut feed.buf) {
                Ok(0) => {
                    self.close_feed(key);
                    return false;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.close_feed(key);
                    return false;
                }
            }
        }
        true
    }

    /// Feeds past their deadlines: no `AUTH` line in time (refused), or
    /// refused and lingering too long (closed).
    fn sweep_feeds(&mut self) {
        let mut late = Vec::new();
        let mut gone = Vec::new();
        for (key, f) in self.feeds.iter() {
            if f.refused && f.since.elapsed() >= FEED_REFUSED_LINGER {
                gone.push(key);
            } else if !f.authed && !f.refused && f.since.elapsed() >= self.auth_timeout {
                late.push(key);
            }
        }
        for key in late {
            self.metrics.refusals.feed_auth(FeedAuth::Timeout);
            let feed = &mut self.feeds[key];
            // Rare (one per late feed): formatting here is fine.
            let line = format!(
                "{{\"error\":\"authentication timeout: no AUTH line within {}\",\"line\":1}}\n",
                humantime::format_duration(self.auth_timeout)
            );
            feed.out.extend_from_slice(line.as_bytes());
            feed.refused = true;
            feed.since = Instant::now();
            self.flush_feed(key);
            self.linger(key);
        }
        for key in gone {
            if self.feeds.contains(key) {
                self.close_feed(key);
            }
        }
    }

    /// Checks a feed's first line, `AUTH <token>`; a refused feed gets one
    /// error line and is closed.
    fn authenticate(&mut self, key: usize, line: &[u8]) -> bool {
        let token = self.token.as_deref().unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (ok, why, reason) = match line.strip_prefix(b"AUTH ") {
            Some(t) if crate::auth::constant_time_eq(t.trim_ascii(), token) => {
                (true, "", FeedAuth::Missing)
            }
            Some(_) => (false, "bad token", FeedAuth::BadToken),
            None => (
                false,
                "authentication required: the first line must be AUTH <token>",
                FeedAuth::Missing,
            ),
        };
        let feed = &mut self.feeds[key];
        if ok {
            feed.authed = true;
            return true;
        }
        self.metrics.refusals.feed_auth(reason);
        feed.out.extend_from_slice(b"{\"error\":\"");
        feed.out.extend_from_slice(why.as_bytes());
        feed.out.extend_from_slice(b"\",\"line\":1}\n");
        feed.refused = true;
        feed.since = Instant::now();
        feed.start = feed.filled;
        false
    }

    fn fan_out(&mut self, update: Update) {
        let last = self.to_workers.len() - 1;
        let mut update = Some(update);
        for w in 0..=last {
            // The last worker takes the original: one refcount bump fewer.
            let u = if w == last {
                update.take().expect("update")
            } else {
                update.as_ref().expect("update").clone()
            };
            self.push(w, ToWorker::Update(u));
        }
    }

    /// Pushes to a worker's ring, waiting while it is full. Waiting is the
    /// backpressure: the feed's TCP window closes and nothing is dropped.
    /// On the worker's own thread the message is parked instead (in order)
    /// and the loop takes no new input until the worker has drained.
    fn push(&mut self, worker: usize, mut msg: ToWorker) {
        if !self.parked.is_empty() {
            self.parked.push_back((worker, msg));
            return;
        }
        loop {
            match self.try_push(worker, msg) {
                Ok(()) => return,
                Err(back) => {
                    msg = back;
                    self.ring_full_waits += 1;
                    if self.on_worker {
                        self.parked.push_back((worker, msg));
                        return;
                    }
                    self.worker_bells[worker].ring();
                    if self.shutdown.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_micros(20));
                }
            }
        }
    }

    fn try_push(&mut self, worker: usize, msg: ToWorker) -> Result<(), ToWorker> {
        let len = match &msg {
            ToWorker::Update(u) => u.frame.len() as u64,
            ToWorker::Subscribed(_) | ToWorker::Page(..) | ToWorker::Published { .. } => 0,
        };
        let unread = self.pushed_bytes[worker] - self.ring_bytes[worker].consumed();
        if !ring_has_room(unread, len) {
            return Err(msg);
        }
        match self.to_workers[worker].push(msg) {
            Ok(()) => {
                self.pushed_bytes[worker] += len;
                Ok(())
            }
            Err(PushError::Full(back)) => Err(back),
        }
    }

    /// Moves parked messages to their rings; true when none is left.
    fn unpark(&mut self) -> bool {
        while let Some((worker, msg)) = self.parked.pop_front() {
            if let Err(back) = self.try_push(worker, msg) {
                self.parked.push_front((worker, back));
                return false;
            }
        }
        true
    }

    fn ring_workers(&self) {
        for bell in &self.worker_bells {
            bell.ring();
        }
    }

    fn reject(&mut self, key: usize, reason: Reject, line_no: u64) {
        self.rejects[reason.index()] += 1;
        // The limits among the reasons count in the limit family too.
        match reason {
            Reject::LineTooLong => self.metrics.refusals.limit(Limit::LineTooLong),
            Reject::ChannelLimit => self.metrics.refusals.limit(Limit::Channels),
            _ => {}
        }
        let feed = &mut self.feeds[key];
        if feed.out.len() > FEED_OUT_MAX {
            feed.out_dropped += 1;
            return;
        }
        let mut n = itoa::Buffer::new();
        feed.out.extend_from_slice(b"{\"error\":\"");
        feed.out.extend_from_slice(reason.message().as_bytes());
        feed.out.extend_from_slice(b"\",\"line\":");
        feed.out.extend_from_slice(n.format(line_no).as_bytes());
        feed.out.extend_from_slice(b"}\n");
    }

    fn flush_feed(&mut self, key: usize) {
        let Some(feed) = self.feeds.get_mut(key) else {
            return;
        };
        // TLS: ciphertext of earlier lines first.
        if !matches!(feed.stream.flush_pending(), Ok(true)) {
            return;
        }
        while !feed.out.is_empty() {
            match feed.stream.write(&feed.out) {
                Ok(0) => break,
                Ok(n) => {
                    feed.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    }

    fn close_feed(&mut self, key: usize) {
        let mut feed = self.feeds.remove(key);
        // A last unterminated line still counts: feeds may omit the final newline.
        if feed.authed && !feed.discarding && feed.filled > feed.start {
            let now = clock::now_ns();
            let bytes = &feed.buf[feed.start..feed.filled];
            match accept_line(&mut self.parser, &mut self.sequencer, bytes, now) {
                Ok(Some(update)) => {
                    self.messages += 1;
                    self.bytes += bytes.len() as u64;
                    self.fan_out(update);
                    self.ring_workers();
                }
                Ok(None) => {}
                // Nobody is left to tell; count it.
                Err(reason) => self.rejects[reason.index()] += 1,
            }
        }
        let _ = self.poll.registry().deregister(&mut feed.stream);
    }

    /// Answers subscribe requests; true if any were served.
    fn serve_control(&mut self) -> bool {
        let mut served = false;
        for w in 0..self.from_workers.len() {
            while let Ok(msg) = self.from_workers[w].pop() {
                served = true;
                let (worker, conn, names, since) = match msg {
                    ToIngest::Subscribe {
                        worker,
                        conn,
                        names,
                        since,
                    } => (worker, conn, names, since),
                    ToIngest::Release { channels } => {
                        for id in channels {
                            self.sequencer.release(id);
                        }
                        continue;
                    }
                    ToIngest::Publish {
                        worker,
                        conn,
                        items,
                        close,
                    } => {
                        let response = self.publish_items(&items, close);
                        self.ring_workers();
                        self.push(
                            worker,
                            ToWorker::Published {
                                conn,
                                response,
                                close,
                            },
                        );
                        self.worker_bells[worker].ring();
                        continue;
                    }
                    ToIngest::Channels {
                        worker,
                        conn,
                        cursor,
                        limit,
                        head_only,
                    } => {
                        let body =
                            self.sequencer
                                .channels_json(cursor, limit, self.metrics.class_names());
                        let page = crate::protocol::http::respond(
                            "200 OK",
                            "application/json",
                            &body,
                            head_only,
                        );
                        self.push(worker, ToWorker::Page(conn, page));
                        self.worker_bells[worker].ring();
                        continue;
                    }
                    ToIngest::History {
                        worker,
                        conn,
                        query,
                    } => {
                        let page = self.history_page(&query);
                        self.push(worker, ToWorker::Page(conn, page));
                        self.worker_bells[worker].ring();
                        continue;
                    }
                };
                debug_assert_eq!(worker, w);
                let now = clock::now_ns();
                let channels = names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        let id = self.sequencer.resolve(n)?;
                        self.sequencer.grant(id);
                        let from = since.get(i).and_then(Option::as_ref);
                        let (start, seq, epoch) = self.sequencer.start(id, from, now);
                        Some(Resolved {
                            id,
                            start,
                            seq,
                            epoch,
                            conflate: self.sequencer.conflates(id),
                            class: self.sequencer.class_of(id),
                        })
                    })
                    .collect();
                let reply = ToWorker::Subscribed(Box::new(SubscribeReply {
                    conn,
                    names,
                    channels,
                }));
                self.push(worker, reply);
                self.worker_bells[worker].ring();
            }
        }
        served
    }

    /// Publishes a checked batch, all or nothing: repeats of idempotency
    /// keys answer their first seq; the rest go through the sequencer like
    /// feed lines. Returns the complete HTTP response.
    fn publish_items(
        &mut self,
        items: &[crate::protocol::publish::Item],
        close: bool,
    ) -> bytes::Bytes {
        use crate::protocol::http::respond_keep_alive;
        use crate::protocol::publish;
        let now = clock::now_ns();
        let names: Vec<&str> = items.iter().map(|i| &*i.ch).collect();
        if !self.sequencer.has_room_for(&names) {
            self.rejects[Reject::ChannelLimit.index()] += 1;
            self.metrics.refusals.limit(Limit::Channels);
            let r = publish::Refusal {
                error: "too many channels in the engine".into(),
                index: 0,
            };
            return respond_keep_alive(
                "503 Service Unavailable",
                "application/json",
                &publish::refusal_body(&r),
                close,
            );
        }
        let mut results: Vec<(&str, u64)> = Vec::with_capacity(items.len());
        for item in items {
            if let Some(key) = &item.key
                && let Some(seq) = self.idempotency.get(&item.ch, key, now)
            {
                self.repeats_total += 1;
                results.push((&item.ch, seq));
                continue;
            }
            match self.sequencer.accept(&item.ch, &item.data, now) {
                Ok(update) => {
                    let seq = update.seq;
                    self.messages += 1;
                    self.published_total += 1;
                    self.bytes += item.data.len() as u64;
                    self.fan_out(update);
                    if let Some(key) = &item.key {
                        self.idempotency.insert(&item.ch, key, seq, now);
                    }
                    results.push((&item.ch, seq));
                }
                // Checked above; a name is valid (the worker checked it).
                Err(reason) => {
                    self.rejects[reason.index()] += 1;
                    results.push((&item.ch, 0));
                }
            }
        }
        respond_keep_alive(
            "200 OK",
            "application/json",
            &publish::results_body(&results),
            close,
        )
    }

    /// The complete `/api/history` response.
    fn history_page(&self, q: &crate::protocol::http::HistoryQuery) -> bytes::Bytes {
        use crate::protocol::http::respond;
        match self.sequencer.history_json(
            &q.ch,
            q.since,
            q.epoch.as_deref(),
            q.limit,
            clock::now_ns(),
        ) {
            Some(body) => respond("200 OK", "application/json", &body, q.head_only),
            None => respond(
                "404 Not Found",
                "application/json",
                b"{\"error\":\"unknown channel\"}",
                q.head_only,
            ),
        }
    }

    fn publish(&self) {
        let i = &self.metrics.ingest;
        let r = Ordering::Relaxed;
        i.feed_connections.store(self.feeds.len() as u64, r);
        i.messages.store(self.messages, r);
        i.bytes.store(self.bytes, r);
        for (k, v) in self.rejects.iter().enumerate() {
            i.rejects[k].store(*v, r);
        }
        i.channels.store(self.sequencer.channel_count() as u64, r);
        i.history_bytes
            .store(self.sequencer.history_bytes() as u64, r);
        i.published.store(self.published_total, r);
        i.publish_repeats.store(self.repeats_total, r);
        for (k, n) in self.sequencer.class_channels().iter().enumerate() {
            if let Some(a) = i.class_channels.get(k) {
                a.store(*n, r);
            }
        }
        i.ring_full_waits.store(self.ring_full_waits, r);
        i.loop_turns.store(self.loop_turns, r);
    }
}

fn tracing_error(msg: &str) {
    eprintln!("tickwire: {msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_ring_is_bounded_in_bytes() {
        let max = WORKER_RING_BYTES_MAX;
        assert!(ring_has_room(0, 4 * max), "one frame fits an empty ring");
        assert!(ring_has_room(max - 100, 100));
        assert!(!ring_has_room(max - 100, 101));
        assert!(!ring_has_room(1, max));
        // 64 KiB lines: the bytes bound, not the 65,536 slots, stops them.
        let line = 64 * 1024 + 20;
        let mut unread = 0;
        let mut frames = 0;
        while ring_has_room(unread, line) {
            unread += line;
            frames += 1;
        }
        assert!(frames < crate::ring::WORKER_RING_CAPACITY as u64);
        assert!(unread <= max);
    }
}

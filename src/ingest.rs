//! The ingest thread: owns the feed connections on its own mio `Poll`, splits
//! newline-delimited JSON, validates each line with simd-json, sequences it per
//! channel, keeps the channel's last value, builds the update frame once and
//! pushes it to every worker's ring. It also answers workers' subscribe
//! requests on the same rings, which is what joins a snapshot to the live
//! stream without a gap or a duplicate.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use rtrb::{Consumer, Producer, PushError};
use simd_json::{Buffers, Node, Tape};
use slab::Slab;

use crate::channel::{self, ChannelId};
use crate::clock;
use crate::metrics::{Metrics, Reject};
use crate::ring::{
    Doorbell, RingBytes, Snapshot, SubscribeReply, ToIngest, ToWorker, WORKER_RING_BYTES_MAX,
};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
/// Read room beyond the longest line: one read call's worth.
const READ_CHUNK: usize = 64 * 1024;
/// Error replies buffered for a feed that does not read them; past this they
/// are dropped (still counted as rejects).
const FEED_OUT_MAX: usize = 1 << 20;
/// Reads per feed per loop turn before the loop serves others (fairness).
const READS_PER_TURN: usize = 16;
/// How long the loop blocks when idle, to notice shutdown promptly.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// What one accepted line produced.
#[derive(Debug)]
pub struct Sequenced {
    /// Channel of the update.
    pub channel: ChannelId,
    /// Its new sequence number.
    pub seq: u64,
    /// The update frame, built once.
    pub frame: Bytes,
}

enum Lookup {
    Known(ChannelId),
    New([u8; channel::CHANNEL_NAME_MAX], usize),
}

#[derive(Debug)]
struct ChannelState {
    name: Box<str>,
    seq: u64,
    last: Option<Snapshot>,
    /// Ids handed out in subscribe replies and not yet released.
    refs: u32,
}

/// Channel table, sequencing and frame building (sans-io).
pub struct Sequencer {
    by_name: HashMap<Box<[u8]>, ChannelId>,
    channels: Vec<ChannelState>,
    max_channels: usize,
    /// Channels created by a subscribe that no feed has published yet. They
    /// have a pool of their own (also `max_channels`), so clients asking for
    /// made-up names can never take the table from the feeds.
    unpublished: usize,
    /// Slots of forgotten channels, reused before the table grows.
    free: Vec<ChannelId>,
    scratch: Vec<u8>,
    buffers: Buffers,
    tape: Option<Tape<'static>>,
}

impl std::fmt::Debug for Sequencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequencer")
            .field("channels", &self.channels.len())
            .finish()
    }
}

impl Sequencer {
    /// A sequencer keeping at most `max_channels` channels.
    pub fn new(max_channels: usize) -> Self {
        Sequencer {
            by_name: HashMap::new(),
            channels: Vec::new(),
            max_channels,
            unpublished: 0,
            free: Vec::new(),
            scratch: Vec::with_capacity(4096),
            buffers: Buffers::new(4096),
            tape: Some(Tape::null().reset()),
        }
    }

    /// Channels known.
    pub fn channel_count(&self) -> usize {
        self.channels.len() - self.free.len()
    }

    /// Validates one line (without its newline), sequences it and builds its
    /// frame. Blank lines give `Ok(None)`.
    ///
    /// # Errors
    /// The [`Reject`] reason; nothing changes then.
    pub fn accept(&mut self, line: &[u8], ingest_ns: u64) -> Result<Option<Sequenced>, Reject> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        // simd-json parses in place and reads past the end: parse a padded
        // copy and keep `line` untouched for the frame (byte for byte).
        self.scratch.clear();
        self.scratch.extend_from_slice(line);
        self.scratch
            .resize(line.len() + simd_json::INPUT_PADDING, 0);
        let mut tape = self.tape.take().expect("tape present").reset();
        let parsed = simd_json::fill_tape_padded(
            &mut self.scratch,
            line.len(),
            &mut self.buffers,
            &mut tape,
        );
        let by_name = &self.by_name;
        let found = match parsed {
            Err(_) => Err(Reject::BadJson),
            Ok(()) => Self::find_channel(&tape.0).map(|name| match by_name.get(name.as_bytes()) {
                Some(&id) => Lookup::Known(id),
                None => {
                    // Copy the name out of the tape's borrow to create it below.
                    let mut buf = [0u8; channel::CHANNEL_NAME_MAX];
                    buf[..name.len()].copy_from_slice(name.as_bytes());
                    Lookup::New(buf, name.len())
                }
            }),
        };
        self.tape = Some(tape.reset());
        let id = match found? {
            Lookup::Known(id) => {
                if self.channels[id.index()].last.is_none() {
                    // First value of a channel a subscriber created: it moves
                    // to the feeds' pool.
                    if self.published() >= self.max_channels {
                        return Err(Reject::ChannelLimit);
                    }
                    self.unpublished -= 1;
                }
                id
            }
            Lookup::New(buf, len) => {
                if self.published() >= self.max_channels {
                    return Err(Reject::ChannelLimit);
                }
                self.create(&buf[..len])?
            }
        };
        let state = &mut self.channels[id.index()];
        state.seq += 1;
        let frame = crate::frame::update(state.name.as_bytes(), state.seq, line);
        state.last = Some(Snapshot {
            seq: state.seq,
            ingest_ns,
            frame: frame.clone(),
        });
        Ok(Some(Sequenced {
            channel: id,
            seq: state.seq,
            frame,
        }))
    }

    /// The top-level string field `ch`, validated.
    fn find_channel<'t>(nodes: &'t [Node<'_>]) -> Result<&'t str, Reject> {
        let Some(Node::Object { len, .. }) = nodes.first() else {
            return Err(Reject::NotObject);
        };
        // Walk the top-level keys, skipping nested values whole.
        let mut i = 1;
        for _ in 0..*len {
            let key = match nodes.get(i) {
                Some(Node::String(k)) => *k,
                _ => return Err(Reject::BadJson),
            };
            let value = i + 1;
            if key == "ch" {
                return match nodes.get(value) {
                    Some(Node::String(ch)) if channel::is_valid(ch.as_bytes()) => Ok(ch),
                    Some(Node::String(_)) => Err(Reject::BadChannel),
                    _ => Err(Reject::MissingChannel),
                };
            }
            i = value
                + match nodes.get(value) {
                    Some(Node::Object { count, .. } | Node::Array { count, .. }) => count + 1,
                    _ => 1,
                };
        }
        Err(Reject::MissingChannel)
    }

    /// Channels with a value.
    fn published(&self) -> usize {
        self.channel_count() - self.unpublished
    }

    fn create(&mut self, name: &[u8]) -> Result<ChannelId, Reject> {
        let name: Box<str> = std::str::from_utf8(name)
            .map_err(|_| Reject::BadChannel)?
            .into();
        let state = ChannelState {
            name,
            seq: 0,
            last: None,
            refs: 0,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.channels[id.index()] = state;
                id
            }
            None => {
                self.channels.push(state);
                ChannelId(self.channels.len() as u32 - 1)
            }
        };
        let name = &self.channels[id.index()].name;
        self.by_name.insert(name.as_bytes().into(), id);
        Ok(id)
    }

    /// A subscribe reply carries `id`: one more reference to it.
    pub fn grant(&mut self, id: ChannelId) {
        self.channels[id.index()].refs += 1;
    }

    /// A worker gave back a reference. A channel that no feed has published
    /// and nobody holds is forgotten and its slot reused: its id is in no
    /// worker's index and in no reply in flight, because every reply that
    /// carried it has been answered with a release.
    pub fn release(&mut self, id: ChannelId) {
        let state = &mut self.channels[id.index()];
        debug_assert!(state.refs > 0, "release without a grant");
        state.refs = state.refs.saturating_sub(1);
        if state.refs == 0 && state.last.is_none() {
            self.by_name.remove(state.name.as_bytes());
            state.name = Box::default();
            self.free.push(id);
            self.unpublished -= 1;
        }
    }

    /// The id of `name`, creating the channel (no value yet) if needed; None
    /// if the channel table is full. `name` must be valid.
    pub fn resolve(&mut self, name: &str) -> Option<ChannelId> {
        debug_assert!(channel::is_valid(name.as_bytes()));
        match self.by_name.get(name.as_bytes()) {
            Some(&id) => Some(id),
            None if self.unpublished < self.max_channels => {
                let id = self.create(name.as_bytes()).ok()?;
                self.unpublished += 1;
                Some(id)
            }
            None => None,
        }
    }

    /// The channel's last value.
    pub fn snapshot(&self, id: ChannelId) -> Option<Snapshot> {
        self.channels[id.index()].last.clone()
    }
}

/// Whether a frame of `len` bytes may join `unread` bytes in a worker's ring:
/// the bytes bound, except that one frame always fits in an empty ring.
fn ring_has_room(unread: u64, len: u64) -> bool {
    unread == 0 || unread + len <= WORKER_RING_BYTES_MAX
}

struct Feed {
    stream: TcpStream,
    buf: Box<[u8]>,
    start: usize,
    filled: usize,
    /// Lines seen on this connection (numbering starts at 1).
    line: u64,
    /// Inside a line already rejected as too long: drop bytes to its newline.
    discarding: bool,
    out: Vec<u8>,
    out_dropped: u64,
}

/// The ingest thread's state.
pub struct Ingest {
    poll: Poll,
    listener: TcpListener,
    feeds: Slab<Feed>,
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
    messages: u64,
    bytes: u64,
    rejects: [u64; 6],
    ring_full_waits: u64,
    loop_turns: u64,
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
            sequencer: Sequencer::new(p.max_channels),
            to_workers: p.to_workers,
            worker_bells: p.worker_bells,
            pushed_bytes: vec![0; p.ring_bytes.len()],
            ring_bytes: p.ring_bytes,
            from_workers: p.from_workers,
            bell: p.bell,
            metrics: p.metrics,
            shutdown: p.shutdown,
            max_line: p.max_line,
            messages: 0,
            bytes: 0,
            rejects: [0; 6],
            ring_full_waits: 0,
            loop_turns: 0,
        })
    }

    /// Runs until shutdown.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut retry: Vec<usize> = Vec::new();
        while !self.shutdown.load(Ordering::Relaxed) {
            self.loop_turns += 1;
            let busy = self.serve_control() || !retry.is_empty();
            let timeout = if busy {
                Some(Duration::ZERO)
            } else {
                self.bell.prepare_sleep();
                if self.from_workers.iter().any(|c| !c.is_empty()) {
                    Some(Duration::ZERO)
                } else {
                    Some(IDLE_POLL)
                }
            };
            if let Err(e) = self.poll.poll(&mut events, timeout)
                && e.kind() != io::ErrorKind::Interrupted
            {
                tracing_error(&format!("ingest poll failed: {e}"));
                break;
            }
            self.bell.awake();
            let mut again = std::mem::take(&mut retry);
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
                    retry.push(key);
                }
            }
            self.publish();
        }
        self.publish();
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.set_nodelay(true);
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
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: leave the backlog for the next turn.
                    tracing_error(&format!("ingest accept failed: {e}"));
                    break;
                }
            }
        }
    }

    /// Reads and processes a feed; true if it has more to read (fairness cap).
    fn read_feed(&mut self, key: usize) -> bool {
        for _ in 0..READS_PER_TURN {
            let Some(feed) = self.feeds.get_mut(key) else {
                return false;
            };
            if feed.filled == feed.buf.len() {
                // Only reachable when a line filled the buffer; process() drops it.
                debug_assert!(false, "buffer full before processing");
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
                    self.close_feed(key);
                    return false;
                }
            };
            feed.filled += n;
            self.process(key);
            self.ring_workers();
            self.flush_feed(key);
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
            if nl > max_line {
                self.reject(key, Reject::LineTooLong, line_no);
                continue;
            }
            // Borrow the line out of the feed's buffer while sequencing: the
            // buffer is a separate allocation from the sequencer's state.
            let feed = &self.feeds[key];
            let line = &feed.buf[line_start..line_start + nl];
            match self.sequencer.accept(line, now) {
                Ok(Some(s)) => {
                    self.messages += 1;
                    self.fan_out(s, now);
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
            // No newline within the limit: reject now, drop to the newline.
            feed.line += 1;
            let line_no = feed.line;
            feed.discarding = true;
            feed.start = 0;
            feed.filled = 0;
            self.bytes += left as u64;
            self.reject(key, Reject::LineTooLong, line_no);
        } else {
            feed.buf.copy_within(feed.start..feed.filled, 0);
            feed.filled = left;
            feed.start = 0;
        }
    }

    fn fan_out(&mut self, s: Sequenced, ingest_ns: u64) {
        let last = self.to_workers.len() - 1;
        let mut frame = Some(s.frame);
        for w in 0..=last {
            // The last worker takes the original: one refcount bump fewer.
            let f = if w == last {
                frame.take().expect("frame")
            } else {
                frame.as_ref().expect("frame").clone()
            };
            self.push(
                w,
                ToWorker::Update {
                    channel: s.channel,
                    seq: s.seq,
                    ingest_ns,
                    frame: f,
                },
            );
        }
    }

    /// Pushes to a worker's ring, waiting while it is full. Waiting is the
    /// backpressure: the feed's TCP window closes and nothing is dropped.
    fn push(&mut self, worker: usize, mut msg: ToWorker) {
        let len = match &msg {
            ToWorker::Update { frame, .. } => frame.len() as u64,
            ToWorker::Subscribed(_) => 0,
        };
        loop {
            let unread = self.pushed_bytes[worker] - self.ring_bytes[worker].consumed();
            let pushed = if ring_has_room(unread, len) {
                self.to_workers[worker].push(msg)
            } else {
                Err(PushError::Full(msg))
            };
            match pushed {
                Ok(()) => {
                    self.pushed_bytes[worker] += len;
                    return;
                }
                Err(PushError::Full(back)) => {
                    msg = back;
                    self.ring_full_waits += 1;
                    self.worker_bells[worker].ring();
                    if self.shutdown.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_micros(20));
                }
            }
        }
    }

    fn ring_workers(&self) {
        for bell in &self.worker_bells {
            bell.ring();
        }
    }

    fn reject(&mut self, key: usize, reason: Reject, line_no: u64) {
        let k = Reject::ALL
            .iter()
            .position(|r| *r == reason)
            .expect("listed");
        self.rejects[k] += 1;
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
        if !feed.discarding && feed.filled > feed.start {
            let now = clock::now_ns();
            let bytes = &feed.buf[feed.start..feed.filled];
            match self.sequencer.accept(bytes, now) {
                Ok(Some(s)) => {
                    self.messages += 1;
                    self.bytes += bytes.len() as u64;
                    self.fan_out(s, now);
                    self.ring_workers();
                }
                Ok(None) => {}
                Err(reason) => {
                    let k = Reject::ALL
                        .iter()
                        .position(|r| *r == reason)
                        .expect("listed");
                    // Nobody is left to tell; count it.
                    self.rejects[k] += 1;
                }
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
                let (worker, conn, names) = match msg {
                    ToIngest::Subscribe {
                        worker,
                        conn,
                        names,
                    } => (worker, conn, names),
                    ToIngest::Release { channels } => {
                        for id in channels {
                            self.sequencer.release(id);
                        }
                        continue;
                    }
                };
                debug_assert_eq!(worker, w);
                let channels = names
                    .iter()
                    .map(|n| {
                        let id = self.sequencer.resolve(n)?;
                        self.sequencer.grant(id);
                        Some((id, self.sequencer.snapshot(id)))
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

    fn payload(frame: &Bytes) -> serde_json::Value {
        let off = crate::frame::header_len(frame.len() - 2);
        serde_json::from_slice(&frame[off..]).unwrap()
    }

    #[test]
    fn sequences_per_channel_and_keeps_data_verbatim() {
        let mut s = Sequencer::new(10);
        let line = br#"{"ch":"AAPL", "bid":1.5,"nested":{"ch":"X","a":[1,{"b":2}]}}"#;
        let a1 = s.accept(line, 1).unwrap().unwrap();
        let b1 = s
            .accept(br#"{"x":{"ch":"no"},"ch":"MSFT"}"#, 2)
            .unwrap()
            .unwrap();
        let a2 = s.accept(line, 3).unwrap().unwrap();
        assert_eq!((a1.seq, b1.seq, a2.seq), (1, 1, 2));
        assert_eq!(a1.channel, a2.channel);
        assert_ne!(a1.channel, b1.channel);
        let v = payload(&a2.frame);
        assert_eq!(v["ch"], "AAPL");
        assert_eq!(v["seq"], 2);
        let needle = br#""data":{"ch":"AAPL", "bid":1.5,"nested":{"ch":"X","a":[1,{"b":2}]}}}"#;
        assert!(a2.frame.windows(needle.len()).any(|w| w == needle));
        assert_eq!(payload(&b1.frame)["ch"], "MSFT");
        assert_eq!(s.snapshot(a1.channel).unwrap().seq, 2);
    }

    #[test]
    fn rejects_each_bad_line_with_its_reason() {
        let mut s = Sequencer::new(1);
        let cases: [(&[u8], Reject); 8] = [
            (b"{not json", Reject::BadJson),
            (b"[1,2]", Reject::NotObject),
            (b"\"ch\"", Reject::NotObject),
            (br#"{"sym":"A"}"#, Reject::MissingChannel),
            (br#"{"ch":5}"#, Reject::MissingChannel),
            (br#"{"ch":"a b"}"#, Reject::BadChannel),
            (br#"{"ch":""}"#, Reject::BadChannel),
            (br#"{"ch":"A"} trailing"#, Reject::BadJson),
        ];
        for (line, want) in cases {
            assert_eq!(
                s.accept(line, 0).unwrap_err(),
                want,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        assert!(s.accept(br#"{"ch":"A"}"#, 0).unwrap().is_some());
        assert_eq!(
            s.accept(br#"{"ch":"B"}"#, 0).unwrap_err(),
            Reject::ChannelLimit
        );
        assert!(s.accept(b"  \r", 0).unwrap().is_none());
        // Nothing rejected consumed a sequence number.
        assert_eq!(s.accept(b"{\"ch\":\"A\"}\r", 0).unwrap().unwrap().seq, 2);
    }

    #[test]
    fn resolve_creates_channels_without_values() {
        let mut s = Sequencer::new(2);
        let id = s.resolve("NEW").unwrap();
        assert!(s.snapshot(id).is_none());
        assert_eq!(
            s.accept(br#"{"ch":"NEW"}"#, 0).unwrap().unwrap().channel,
            id
        );
        assert!(s.resolve("OTHER").is_some());
        assert!(s.resolve("THIRD").is_some());
        // Two unpublished channels fill the subscribers' pool...
        assert!(s.resolve("FOURTH").is_none());
        assert!(s.resolve("NEW").is_some(), "known channels still resolve");
        // ...but not the feeds': one more published channel fits.
        assert!(s.accept(br#"{"ch":"FEED"}"#, 0).unwrap().is_some());
        assert_eq!(
            s.accept(br#"{"ch":"FEED2"}"#, 0).err(),
            Some(Reject::ChannelLimit)
        );
        // Publishing into a subscriber's channel needs room in the feeds' pool.
        assert_eq!(
            s.accept(br#"{"ch":"OTHER"}"#, 0).err(),
            Some(Reject::ChannelLimit)
        );
        assert!(s.accept(br#"{"ch":"NEW"}"#, 0).unwrap().is_some());
    }

    #[test]
    fn released_channels_without_a_value_are_forgotten_and_their_slots_reused() {
        let mut s = Sequencer::new(2);
        let a = s.resolve("A").unwrap();
        s.grant(a);
        s.grant(a);
        let b = s.resolve("B").unwrap();
        s.grant(b);
        assert!(s.resolve("C").is_none(), "the subscribers' pool is full");
        s.release(a);
        assert_eq!(s.channel_count(), 2, "A is still held once");
        s.release(a);
        assert_eq!(s.channel_count(), 1, "A is forgotten");
        let c = s.resolve("C").expect("room again");
        assert_eq!(c, a, "the slot is reused");
        assert!(s.snapshot(c).is_none());
        // A published channel keeps its last value whatever the references.
        s.grant(b);
        assert_eq!(s.accept(br#"{"ch":"B","x":1}"#, 0).unwrap().unwrap().seq, 1);
        s.release(b);
        s.release(b);
        assert_eq!(s.snapshot(b).unwrap().seq, 1);
        assert_eq!(s.resolve("B"), Some(b));
        // A name that was forgotten starts again from seq 1 when published.
        s.grant(c);
        s.release(c);
        assert_eq!(
            s.accept(br#"{"ch":"A"}"#, 0).unwrap().unwrap().seq,
            1,
            "A is a new channel"
        );
        assert_eq!(s.channel_count(), 2);
    }

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

    #[test]
    fn clients_cannot_take_the_channel_table_from_feeds() {
        let mut s = Sequencer::new(100);
        for i in 0..1000 {
            let _ = s.resolve(&format!("MADE.UP.{i}"));
        }
        for i in 0..100 {
            let line = format!(r#"{{"ch":"REAL{i}"}}"#);
            assert!(s.accept(line.as_bytes(), 0).unwrap().is_some(), "{line}");
        }
        assert_eq!(s.channel_count(), 200);
    }

    #[test]
    fn random_lines_never_panic_and_only_valid_ones_sequence() {
        let mut rng = crate::rng::Rng::new(7);
        let mut s = Sequencer::new(100);
        let base = br#"{"ch":"AB","p":[1,2,{"q":"x"}],"z":null}"#;
        let mut accepted = 0u64;
        for _ in 0..20_000 {
            let mut line = base.to_vec();
            for _ in 0..rng.below(3) {
                let at = rng.below(line.len() as u64) as usize;
                line[at] = rng.next_u64() as u8;
            }
            if let Ok(Some(seq)) = s.accept(&line, 0) {
                accepted += 1;
                // Whatever was accepted is a valid frame around the exact line.
                let payload = &seq.frame[crate::frame::header_len(seq.frame.len() - 2)..];
                assert!(payload.windows(line.len()).any(|w| w == &line[..]));
                let v: serde_json::Value =
                    serde_json::from_slice(payload).expect("valid JSON frame");
                assert!(crate::channel::is_valid(
                    v["ch"].as_str().unwrap().as_bytes()
                ));
            }
        }
        assert!(accepted > 0);
    }
}

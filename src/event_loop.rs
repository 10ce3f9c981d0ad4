//! A worker: one pinned thread, one mio `Poll`, a shard of the connections.
//!
//! Each turn it accepts, reads client input, drains its ingest ring (updates
//! fan out to the channel's subscribers as `Rc` bumps into their queues), then
//! writes each connection that has something due once, gathered with
//! `writev`. No allocation and no lock per delivered message.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use rtrb::{Consumer, Producer};
use slab::Slab;

use crate::channel::ChannelId;
use crate::clock;
use crate::coalesce::{self, Coalescer};
use crate::config::Config;
use crate::conflate::{Flushed, Frame, FrameRef, Pushed};
use crate::conn::{self, ClientOp, Conn, Phase, Sub, Violation, WsEvent};
use crate::frame::{self, CloseCode};
use crate::http::{self, Request, Response};
use crate::metrics::{self, Metrics, WorkerCounters};
use crate::pacing::{Pacer, SchedStat};
use crate::ring::{ConnKey, Doorbell, RingBytes, SubscribeReply, ToIngest, ToWorker};

const LISTENER: Token = Token(usize::MAX - 1);
/// The token a worker's waker must use.
pub const WAKER_TOKEN: Token = Token(usize::MAX - 2);
/// Read buffer shared by all connections of a worker: one socket read's worth.
const READ_SCRATCH: usize = 64 * 1024;
/// Reads per connection per turn before others get a go (fairness).
const READS_PER_TURN: usize = 8;
/// Ring messages handled per turn before sockets are written: bounds how long
/// a burst can delay the first write.
const RING_BATCH: usize = 16 * 1024;
/// Connections accepted per listener event per turn.
const ACCEPTS_PER_TURN: usize = 256;
/// Timer resolution for heartbeats and timeouts.
const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// How long a handshake may take.
const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// How long a closing connection may take to flush its last frames.
const CLOSING_TIMEOUT_MS: u64 = 2_000;
/// Replies (acks, errors, pongs) waiting unread, in multiples of the outbound
/// budget: past 1x the client's input is no longer read until they drain;
/// past this, reached within one read, the client is cut (1008): it sends
/// requests faster than it reads the answers.
const CONTROL_BUDGETS_MAX: usize = 4;
/// A queue that grew past this many frames is freed when it empties, so a
/// burst does not pin memory on an idle connection.
const QUEUE_KEEP_FRAMES: usize = 1024;

/// Everything a worker is built from.
pub struct WorkerParts {
    /// Worker index.
    pub id: usize,
    /// Its Poll; the waker is registered with [`WAKER_TOKEN`].
    pub poll: Poll,
    /// Its SO_REUSEPORT listener.
    pub listener: std::net::TcpListener,
    /// Updates and subscribe replies from ingest.
    pub from_ingest: Consumer<ToWorker>,
    /// Subscribe requests to ingest.
    pub to_ingest: Producer<ToIngest>,
    /// Wakes ingest.
    pub ingest_bell: Arc<Doorbell>,
    /// Its own doorbell.
    pub bell: Arc<Doorbell>,
    /// Where it reports the frame bytes it took off its ring.
    pub ring_bytes: Arc<RingBytes>,
    /// Shared metrics.
    pub metrics: Arc<Metrics>,
    /// Set to stop.
    pub shutdown: Arc<AtomicBool>,
    /// Configuration.
    pub config: Arc<Config>,
    /// Open connections across all workers (for `max_connections`).
    pub open_connections: Arc<AtomicUsize>,
    /// The page served at `/`.
    pub index_html: Bytes,
}

/// Worker state other than the connections, so both can be borrowed at once.
struct Ctx {
    id: usize,
    index: Vec<Vec<u32>>,
    dirty: Vec<u32>,
    dead: Vec<u32>,
    coalescer: Coalescer,
    read_retry: Vec<u32>,
    to_ingest: Producer<ToIngest>,
    control_backlog: VecDeque<ToIngest>,
    ingest_bell: Arc<Doorbell>,
    counters: WorkerCounters,
    latency: Histogram<u64>,
    metrics: Arc<Metrics>,
    config: Arc<Config>,
    ping: FrameRef,
    events: Vec<OwnedEvent>,
    now_ms: u64,
    next_generation: u32,
    index_html: Bytes,
    /// Closing connections get the whole drain deadline, not the 2 s grace.
    shutting_down: bool,
}

/// A client event copied out of the read buffer.
enum OwnedEvent {
    Text(Vec<u8>),
    Binary,
    Ping(Bytes),
    Pong,
    Close(u16),
}

/// A worker event loop.
pub struct Worker {
    poll: Poll,
    listener: Option<TcpListener>,
    from_ingest: Consumer<ToWorker>,
    bell: Arc<Doorbell>,
    ring_bytes: Arc<RingBytes>,
    /// Frame bytes taken off the ring since start.
    ring_bytes_consumed: u64,
    shutdown: Arc<AtomicBool>,
    open_connections: Arc<AtomicUsize>,
    conns: Slab<Conn>,
    ctx: Ctx,
    scratch: Box<[u8]>,
    epoch: Instant,
}

impl Worker {
    /// Builds a worker.
    ///
    /// # Errors
    /// Registering the listener failed.
    pub fn new(p: WorkerParts) -> io::Result<Self> {
        p.listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(p.listener);
        p.poll
            .registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Worker {
            poll: p.poll,
            listener: Some(listener),
            from_ingest: p.from_ingest,
            bell: p.bell,
            ring_bytes: p.ring_bytes,
            ring_bytes_consumed: 0,
            shutdown: p.shutdown,
            open_connections: p.open_connections,
            conns: Slab::with_capacity(1024),
            ctx: Ctx {
                id: p.id,
                index: Vec::new(),
                dirty: Vec::with_capacity(1024),
                dead: Vec::new(),
                // Small budgets (tests, slow links) must not see one batch
                // pass the budget and conflate a client that keeps up.
                coalescer: Coalescer::new(
                    (p.config.outbound_budget / 8).min(coalesce::MAX_BATCH_BYTES),
                ),
                read_retry: Vec::new(),
                to_ingest: p.to_ingest,
                control_backlog: VecDeque::new(),
                ingest_bell: p.ingest_bell,
                counters: WorkerCounters::default(),
                latency: metrics::latency_histogram(),
                metrics: p.metrics,
                config: p.config,
                ping: Frame::control(frame::build(frame::OPCODE_PING, b"")),
                events: Vec::new(),
                now_ms: 0,
                next_generation: 0,
                index_html: p.index_html,
                shutting_down: false,
            },
            scratch: vec![0; READ_SCRATCH].into_boxed_slice(),
            epoch: clock::epoch(),
        })
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Runs until shutdown completes (clients sent 1001 and flushed, or the
    /// drain deadline passed).
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_housekeeping = 0u64;
        let mut next_merge = 0u64;
        let mut drain_deadline: Option<u64> = None;
        // Opened here: thread-self is the worker's own thread.
        let sched = SchedStat::open();
        let mut pacer = Pacer::new(
            self.ctx.config.workers,
            self.ctx.config.pace_when_contended && sched.is_some(),
        );
        loop {
            self.ctx.counters.loop_turns += 1;
            let now_ns = self.now_ns();
            if pacer.sample_due(now_ns)
                && let Some((cpu, wait)) = sched.as_ref().and_then(SchedStat::read)
            {
                pacer.sample(now_ns, cpu, wait);
            }
            let hold = if drain_deadline.is_some() {
                0
            } else {
                pacer.wait_ns(now_ns)
            };
            let busy = !self.ctx.read_retry.is_empty() || !self.ctx.control_backlog.is_empty();
            let timeout = if busy {
                Duration::ZERO
            } else if hold > 0 {
                // Not announced as asleep: the ingest thread need not ring,
                // the pass starts when the hold ends.
                Duration::from_nanos(hold)
            } else {
                self.bell.prepare_sleep();
                if self.from_ingest.is_empty() {
                    let wait = next_housekeeping.saturating_sub(self.now_ms()).max(1);
                    Duration::from_millis(wait)
                } else {
                    Duration::ZERO
                }
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                eprintln!("tickwire: worker {} poll failed: {e}", self.ctx.id);
                break;
            }
            self.bell.awake();
            self.ctx.now_ms = self.now_ms();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER_TOKEN => {}
                    Token(slot) => {
                        let slot = slot as u32;
                        if event.is_writable()
                            && let Some(c) = self.conns.get_mut(slot as usize)
                        {
                            c.write_blocked = false;
                            mark_dirty(&mut self.ctx.dirty, c, slot);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(slot);
                        }
                    }
                }
            }
            for slot in std::mem::take(&mut self.ctx.read_retry) {
                if slot == u32::MAX
                    || self
                        .conns
                        .get(slot as usize)
                        .is_some_and(|c| c.read_pending)
                {
                    self.read(slot);
                }
            }
            if hold == 0 || pacer.wait_ns(self.now_ns()) == 0 {
                self.drain_ring();
                if self.flush_dirty() > 0 {
                    let held = pacer.pass_done(self.now_ns());
                    if held > 0 {
                        self.ctx.counters.paced_passes += 1;
                        self.ctx.counters.paced_wait_ns += held;
                    }
                }
            }
            self.send_control_backlog();
            if self.ctx.now_ms >= next_housekeeping {
                next_housekeeping = self.ctx.now_ms + HOUSEKEEPING.as_millis() as u64;
                self.housekeeping();
                if self.ctx.now_ms >= next_merge {
                    next_merge = self.ctx.now_ms + 1000;
                    self.ctx
                        .metrics
                        .merge_latency(self.ctx.id, &mut self.ctx.latency);
                }
            }
            self.ctx.counters.connections = self.conns.len() as u64;
            self.ctx
                .counters
                .publish(&self.ctx.metrics.workers[self.ctx.id]);
            if self.shutdown.load(Ordering::Relaxed) {
                let deadline = *drain_deadline.get_or_insert_with(|| {
                    // Updates already in the ring (a paced turn may not have
                    // drained it) go out before the 1001.
                    self.drain_ring();
                    self.begin_shutdown();
                    self.ctx.now_ms + 4_000
                });
                if self.conns.is_empty() || self.ctx.now_ms >= deadline {
                    break;
                }
            }
        }
        self.ctx
            .metrics
            .merge_latency(self.ctx.id, &mut self.ctx.latency);
        self.ctx.counters.connections = 0;
        self.ctx
            .counters
            .publish(&self.ctx.metrics.workers[self.ctx.id]);
    }

    fn accept(&mut self) {
        let Some(listener) = self.listener.as_mut() else {
            return;
        };
        for _ in 0..ACCEPTS_PER_TURN {
            let (mut stream, _) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE/ENFILE: connections stay in the backlog; retried
                    // on the next housekeeping tick via read_retry-free path.
                    eprintln!("tickwire: worker {} accept failed: {e}", self.ctx.id);
                    return;
                }
            };
            if self.open_connections.fetch_add(1, Ordering::Relaxed)
                >= self.ctx.config.max_connections
            {
                self.open_connections.fetch_sub(1, Ordering::Relaxed);
                drop(stream);
                continue;
            }
            let _ = stream.set_nodelay(true);
            if self.ctx.config.socket_send_buffer > 0 {
                // A capped kernel buffer keeps a slow reader's backlog in our
                // conflating queue instead of megabytes of stale kernel data.
                let _ = socket2::SockRef::from(&stream)
                    .set_send_buffer_size(self.ctx.config.socket_send_buffer);
            }
            if self.ctx.config.socket_notsent_lowat > 0 {
                // Writes block once this much waits unsent in the kernel, so a
                // lagging client's updates conflate in our queue instead.
                let _ = socket2::SockRef::from(&stream)
                    .set_tcp_notsent_lowat(self.ctx.config.socket_notsent_lowat as u32);
            }
            let entry = self.conns.vacant_entry();
            let slot = entry.key();
            if self
                .poll
                .registry()
                .register(
                    &mut stream,
                    Token(slot),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                self.open_connections.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            self.ctx.next_generation = self.ctx.next_generation.wrapping_add(1);
            let key = ConnKey {
                slot: slot as u32,
                generation: self.ctx.next_generation,
            };
            entry.insert(Conn::new(stream, key, self.ctx.now_ms));
            self.ctx.counters.accepted += 1;
        }
        // More may be waiting: edge-triggered, so look again next turn.
        self.ctx.read_retry.push(u32::MAX);
    }

    fn read(&mut self, slot: u32) {
        if slot == u32::MAX {
            self.accept();
            return;
        }
        let budget = self.ctx.config.outbound_budget;
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.conns.get_mut(slot as usize) else {
                return;
            };
            conn.read_pending = false;
            if conn.reply_bytes() > budget {
                // Its replies are not being read: leave its requests in the
                // socket (TCP backpressure) until the flush resumes reading.
                conn.read_paused = true;
                return;
            }
            let n = match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    self.close(slot);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.close(slot);
                    return;
                }
            };
            conn.last_rx_ms = self.ctx.now_ms;
            if conn.phase == Phase::Closing {
                continue;
            }
            let mut buf = std::mem::take(&mut conn.inbuf);
            if buf.is_empty() {
                let used = self.ctx.input(conn, slot, &mut self.scratch[..n]);
                buf.extend_from_slice(&self.scratch[used..n]);
            } else {
                buf.extend_from_slice(&self.scratch[..n]);
                let used = self.ctx.input(conn, slot, &mut buf);
                buf.drain(..used);
            }
            if buf.is_empty() && buf.capacity() > 0 {
                // Partial input is rare; an idle connection should hold no buffer.
                buf = Vec::new();
            }
            conn.inbuf = buf;
            self.apply_events(slot);
        }
        if let Some(conn) = self.conns.get_mut(slot as usize) {
            conn.read_pending = true;
            self.ctx.read_retry.push(slot);
        }
    }

    /// Acts on the client events the last read produced.
    fn apply_events(&mut self, slot: u32) {
        let events = std::mem::take(&mut self.ctx.events);
        let control_max = CONTROL_BUDGETS_MAX * self.ctx.config.outbound_budget;
        for ev in &events {
            let Some(conn) = self.conns.get_mut(slot as usize) else {
                break;
            };
            if conn.phase != Phase::Open {
                break;
            }
            if conn.reply_bytes() > control_max {
                self.ctx.counters.protocol_closes += 1;
                self.ctx.cut(
                    conn,
                    slot,
                    "too many requests: the client does not read the replies",
                );
                break;
            }
            match ev {
                OwnedEvent::Text(text) => self.ctx.client_message(conn, text),
                OwnedEvent::Binary => {
                    self.ctx.counters.client_errors += 1;
                    let f = conn::error_frame(
                        "unsupported",
                        "binary messages are not supported: send JSON text",
                    );
                    conn.reply(Frame::control(f));
                }
                OwnedEvent::Ping(payload) => {
                    conn.out
                        .push_pong(Frame::control(frame::build(frame::OPCODE_PONG, payload)));
                }
                OwnedEvent::Pong => {}
                OwnedEvent::Close(code) => {
                    // Echo the peer's code (RFC 6455 5.5.1; read_frames let
                    // only valid ones through); 1000 when it sent none.
                    let code = if *code == 1005 { 1000 } else { *code };
                    let payload = code.to_be_bytes();
                    conn.out
                        .push_control(Frame::control(frame::build(frame::OPCODE_CLOSE, &payload)));
                    self.ctx.enter_closing(conn);
                }
            }
            mark_dirty(&mut self.ctx.dirty, conn, slot);
        }
        let mut events = events;
        events.clear();
        self.ctx.events = events;
    }

    fn drain_ring(&mut self) {
        let mut taken = 0u64;
        for _ in 0..RING_BATCH {
            let Ok(msg) = self.from_ingest.pop() else {
                break;
            };
            match msg {
                ToWorker::Update {
                    channel,
                    seq,
                    ingest_ns,
                    frame,
                } => {
                    taken += frame.len() as u64;
                    if self
                        .ctx
                        .index
                        .get(channel.index())
                        .is_none_or(|subs| subs.is_empty())
                    {
                        continue;
                    }
                    if let Some(full) = self.ctx.coalescer.add(channel, seq, ingest_ns, frame) {
                        self.fan_out(full);
                    }
                }
                ToWorker::Subscribed(reply) => {
                    // Updates drained before the reply reach the old
                    // subscribers first; the snapshot covers them.
                    self.fan_out_coalesced();
                    self.subscribed(*reply);
                }
            }
        }
        if taken > 0 {
            self.ring_bytes_consumed += taken;
            self.ring_bytes.set_consumed(self.ring_bytes_consumed);
        }
        self.fan_out_coalesced();
        for slot in std::mem::take(&mut self.ctx.dead) {
            self.close(slot);
        }
    }

    fn fan_out_coalesced(&mut self) {
        if self.ctx.coalescer.is_empty() {
            return;
        }
        let mut coalescer = std::mem::replace(&mut self.ctx.coalescer, Coalescer::new(0));
        for f in coalescer.drain() {
            self.fan_out(f);
        }
        self.ctx.coalescer = coalescer;
    }

    /// Queues a frame (one or more updates of a channel) for every subscriber
    /// of its channel on this worker: an `Rc` bump each.
    fn fan_out(&mut self, f: FrameRef) {
        let budget = self.ctx.config.outbound_budget;
        let ctx = &mut self.ctx;
        let Some(subs) = ctx.index.get(f.channel.index()) else {
            return;
        };
        for &slot in subs {
            let conn = &mut self.conns[slot as usize];
            // A burst larger than the budget within one turn is not a slow
            // consumer: write first, conflate only if the socket cannot take it.
            if conn.out.queued_bytes() + f.bytes.len() > budget && !conn.write_blocked {
                let on_block = ctx.config.conflate_on_block;
                match write_out(
                    conn,
                    &mut ctx.counters,
                    &mut ctx.latency,
                    ctx.now_ms,
                    on_block,
                ) {
                    Ok(_) => {}
                    Err(()) => {
                        // Closed after the loop; mark it so nothing more is queued.
                        conn.write_blocked = true;
                        ctx.dead.push(slot);
                    }
                }
            }
            if conn.out.push_update(Rc::clone(&f), budget) == Pushed::Conflated {
                ctx.counters.conflated += 1;
            }
            mark_dirty(&mut ctx.dirty, conn, slot);
        }
    }

    fn subscribed(&mut self, reply: SubscribeReply) {
        let slot = reply.conn.slot;
        let live = self
            .conns
            .get(slot as usize)
            .is_some_and(|c| c.key == reply.conn && c.phase == Phase::Open);
        if !live {
            // Closed or closing meanwhile: every id it carried goes back.
            let ids = reply.channels.iter().flatten().map(|(id, _)| *id).collect();
            self.ctx.release(ids);
            return;
        }
        let conn = &mut self.conns[slot as usize];
        let mut returned: Vec<ChannelId> = Vec::new();
        let budget = self.ctx.config.outbound_budget;
        let mut refused: Vec<Box<str>> = Vec::new();
        let mut acked: Vec<Box<str>> = Vec::with_capacity(reply.names.len());
        let mut snapshots: Vec<FrameRef> = Vec::new();
        for (name, resolved) in reply.names.into_iter().zip(reply.channels) {
            match conn.subs.get(&name) {
                Some(Sub::Pending) => {}
                // Already live from an earlier request: ack, no second
                // snapshot; the earlier reply's reference is the one kept.
                Some(Sub::Active(_)) => {
                    acked.push(name);
                    returned.extend(resolved.map(|(id, _)| id));
                    continue;
                }
                // Unsubscribed while the request was in flight: the client
                // asked for both, so both are acked (the unsubscribe ack is
                // held behind this one), but nothing is activated.
                None => {
                    acked.push(name);
                    returned.extend(resolved.map(|(id, _)| id));
                    continue;
                }
            }
            let Some((id, snapshot)) = resolved else {
                conn.subs.remove(&name);
                refused.push(name);
                continue;
            };
            conn.subs.insert(name.clone(), Sub::Active(id));
            acked.push(name);
            index_entry(&mut self.ctx.index, id).push(slot);
            self.ctx.counters.subscriptions += 1;
            if let Some(s) = snapshot {
                snapshots.push(Frame::update(s.frame, id, s.seq, s.ingest_ns));
            }
        }
        if !refused.is_empty() {
            let msg = format!(
                "the engine's channel limit is reached; not subscribed: {}",
                refused.join(",")
            );
            conn.out
                .push_control(Frame::control(conn::error_frame("channel_limit", &msg)));
            self.ctx.counters.client_errors += 1;
        }
        if !acked.is_empty() || refused.is_empty() {
            conn.out
                .push_control(Frame::control(conn::ack_frame("subscribed", &acked)));
        }
        for f in snapshots {
            if conn.out.push_update(f, budget) == Pushed::Conflated {
                self.ctx.counters.conflated += 1;
            }
        }
        conn.release_held();
        mark_dirty(&mut self.ctx.dirty, conn, slot);
        self.ctx.release(returned);
    }

    /// Writes every connection marked dirty; returns how many were written.
    fn flush_dirty(&mut self) -> usize {
        let mut dirty = std::mem::take(&mut self.ctx.dirty);
        let mut written = 0;
        for &slot in &dirty {
            let Some(conn) = self.conns.get_mut(slot as usize) else {
                continue;
            };
            if !conn.dirty {
                continue;
            }
            conn.dirty = false;
            if !conn.write_blocked {
                self.flush(slot);
                written += 1;
            }
        }
        dirty.clear();
        // Flushes may have closed connections; none re-marks during the loop.
        debug_assert!(self.ctx.dirty.is_empty());
        self.ctx.dirty = dirty;
        written
    }

    fn flush(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        match write_out(
            conn,
            &mut self.ctx.counters,
            &mut self.ctx.latency,
            self.ctx.now_ms,
            self.ctx.config.conflate_on_block,
        ) {
            Ok(Flushed::Drained) if conn.phase == Phase::Closing => self.close(slot),
            Ok(_) => {
                if conn.read_paused && conn.reply_bytes() <= self.ctx.config.outbound_budget / 2 {
                    conn.read_paused = false;
                    conn.read_pending = true;
                    self.ctx.read_retry.push(slot);
                }
            }
            Err(()) => self.close(slot),
        }
    }

    fn send_control_backlog(&mut self) {
        let ctx = &mut self.ctx;
        let mut sent = false;
        while let Some(msg) = ctx.control_backlog.pop_front() {
            match ctx.to_ingest.push(msg) {
                Ok(()) => sent = true,
                Err(rtrb::PushError::Full(msg)) => {
                    ctx.control_backlog.push_front(msg);
                    break;
                }
            }
        }
        if sent {
            ctx.ingest_bell.ring();
        }
    }

    fn housekeeping(&mut self) {
        let now = self.ctx.now_ms;
        let cfg = Arc::clone(&self.ctx.config);
        let ping_ms = cfg.ping_interval.as_millis() as u64;
        let idle_ms = cfg.idle_timeout.as_millis() as u64;
        let slow_ms = cfg.slow_consumer_timeout.as_millis() as u64;
        let mut to_close: Vec<u32> = Vec::new();
        for (slot, conn) in self.conns.iter_mut() {
            let slot = slot as u32;
            match conn.phase {
                Phase::Handshake => {
                    if now.saturating_sub(conn.last_rx_ms) >= HANDSHAKE_TIMEOUT_MS {
                        to_close.push(slot);
                    }
                }
                Phase::Closing => {
                    // While shutting down, the drain deadline (4 s) applies.
                    if !self.ctx.shutting_down
                        && now.saturating_sub(conn.last_ping_ms) >= CLOSING_TIMEOUT_MS
                    {
                        to_close.push(slot);
                    }
                }
                Phase::Open => {
                    if conn.stalled_since_ms != 0
                        && now.saturating_sub(conn.stalled_since_ms) >= slow_ms
                    {
                        self.ctx.counters.slow_consumer_closes += 1;
                        let reason = format!(
                            "slow consumer: socket took no data for {}s while updates waited",
                            slow_ms / 1000
                        );
                        self.ctx.cut(conn, slot, &reason);
                        // Try the close frame once more even though it blocked.
                        conn.write_blocked = false;
                    } else if now.saturating_sub(conn.last_rx_ms) >= idle_ms {
                        self.ctx.counters.idle_closes += 1;
                        let reason =
                            format!("idle timeout: nothing received for {}s", idle_ms / 1000);
                        conn.out.push_control(Frame::control(frame::close(
                            CloseCode::GoingAway,
                            &reason,
                        )));
                        self.ctx.enter_closing(conn);
                        mark_dirty(&mut self.ctx.dirty, conn, slot);
                    } else if now.saturating_sub(conn.last_ping_ms) >= ping_ms {
                        conn.last_ping_ms = now;
                        conn.out.push_control(Rc::clone(&self.ctx.ping));
                        mark_dirty(&mut self.ctx.dirty, conn, slot);
                    }
                }
            }
        }
        for slot in to_close {
            self.close(slot);
        }
        self.flush_dirty();
    }

    fn begin_shutdown(&mut self) {
        self.ctx.shutting_down = true;
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let mut to_close = Vec::new();
        let bye = Frame::control(frame::close(CloseCode::GoingAway, "server shutting down"));
        for (slot, conn) in self.conns.iter_mut() {
            match conn.phase {
                Phase::Open => {
                    conn.out.push_control(Rc::clone(&bye));
                    self.ctx.enter_closing(conn);
                    mark_dirty(&mut self.ctx.dirty, conn, slot as u32);
                }
                Phase::Handshake => to_close.push(slot as u32),
                Phase::Closing => {}
            }
        }
        for slot in to_close {
            self.close(slot);
        }
        self.flush_dirty();
    }

    /// Closes the socket now and forgets the connection.
    fn close(&mut self, slot: u32) {
        let Some(mut conn) = self.conns.try_remove(slot as usize) else {
            return;
        };
        self.ctx.unsubscribe_all(&mut conn);
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Writes what the connection's queue holds, records deliveries and latency,
/// and tracks stalls. `Err` means the peer is gone: close it.
fn write_out(
    conn: &mut Conn,
    counters: &mut WorkerCounters,
    latency: &mut Histogram<u64>,
    now_ms: u64,
    conflate_on_block: bool,
) -> Result<Flushed, ()> {
    let now_ns = clock::now_ns();
    counters.flushes += 1;
    let result = conn.out.flush(&mut conn.stream, |f| {
        if f.channel != ChannelId::NONE {
            counters.deliveries += f.count();
            f.for_each_ingest_ns(|t| {
                let ns = now_ns.saturating_sub(t).max(100);
                let _ = latency.record(ns.min(60_000_000_000));
            });
        }
    });
    match result {
        Ok((Flushed::Drained, n)) => {
            counters.bytes_out += n as u64;
            conn.stalled_since_ms = 0;
            if conn.out.capacity() > QUEUE_KEEP_FRAMES {
                conn.out.shrink_if_idle(QUEUE_KEEP_FRAMES);
            }
            Ok(Flushed::Drained)
        }
        Ok((Flushed::Blocked, n)) => {
            counters.bytes_out += n as u64;
            conn.write_blocked = true;
            if conflate_on_block {
                // The client is not keeping up: from now on it gets the
                // newest value of each channel, not a backlog.
                conn.out.start_conflating();
            }
            if n > 0 || conn.stalled_since_ms == 0 {
                conn.stalled_since_ms = now_ms.max(1);
            }
            Ok(Flushed::Blocked)
        }
        Err(_) => Err(()),
    }
}

fn mark_dirty(dirty: &mut Vec<u32>, conn: &mut Conn, slot: u32) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(slot);
    }
}

fn index_entry(index: &mut Vec<Vec<u32>>, id: ChannelId) -> &mut Vec<u32> {
    if index.len() <= id.index() {
        index.resize_with(id.index() + 1, Vec::new);
    }
    &mut index[id.index()]
}

impl Ctx {
    /// Parses input bytes and returns the bytes consumed. Events land in
    /// `self.events`.
    fn input(&mut self, conn: &mut Conn, slot: u32, data: &mut [u8]) -> usize {
        let mut used = 0;
        if conn.phase == Phase::Handshake {
            match http::parse(data) {
                None => return 0,
                Some(Request::Upgrade { accept, head_len }) => {
                    conn.out
                        .push_control(Frame::control(http::switching_protocols(&accept)));
                    conn.phase = Phase::Open;
                    conn.last_ping_ms = self.now_ms;
                    used = head_len;
                    mark_dirty(&mut self.dirty, conn, slot);
                }
                Some(Request::Respond(resp)) => {
                    let head_only = http::is_head(data);
                    let bytes = self.response(resp, head_only);
                    conn.out.push_control(Frame::control(bytes));
                    self.enter_closing(conn);
                    mark_dirty(&mut self.dirty, conn, slot);
                    return data.len();
                }
            }
        }
        let Ctx { events, config, .. } = self;
        let result = conn::read_frames(
            &mut data[used..],
            config.max_frame_size,
            &mut conn.message,
            &mut conn.message_opcode,
            |e| {
                events.push(match e {
                    WsEvent::Text(t) => OwnedEvent::Text(t.to_vec()),
                    WsEvent::Binary => OwnedEvent::Binary,
                    WsEvent::Ping(p) => OwnedEvent::Ping(Bytes::copy_from_slice(p)),
                    WsEvent::Pong => OwnedEvent::Pong,
                    WsEvent::Close(c) => OwnedEvent::Close(c),
                })
            },
        );
        let _ = events;
        match result {
            Ok(n) => used + n,
            Err(v) => {
                self.violation(conn, slot, v);
                data.len()
            }
        }
    }

    fn violation(&mut self, conn: &mut Conn, slot: u32, v: Violation) {
        self.counters.protocol_closes += 1;
        // Events parsed before the violation still count; the close follows them.
        let events = std::mem::take(&mut self.events);
        for ev in events {
            if let OwnedEvent::Text(t) = ev {
                self.client_message(conn, &t);
            }
        }
        conn.out
            .push_control(Frame::control(frame::close(v.code, v.reason)));
        self.enter_closing(conn);
        mark_dirty(&mut self.dirty, conn, slot);
    }

    fn response(&mut self, resp: Response, head_only: bool) -> Bytes {
        self.counters.http_requests += 1;
        let text = "text/plain; charset=utf-8";
        match resp {
            Response::Health => http::respond("200 OK", text, b"ok\n", head_only),
            Response::Metrics => {
                // Publish this worker's latest counts so the page is current.
                self.counters.publish(&self.metrics.workers[self.id]);
                self.metrics.merge_latency(self.id, &mut self.latency);
                let body = self.metrics.render();
                http::respond(
                    "200 OK",
                    "text/plain; version=0.0.4",
                    body.as_bytes(),
                    head_only,
                )
            }
            Response::Index => http::respond(
                "200 OK",
                "text/html; charset=utf-8",
                &self.index_html,
                head_only,
            ),
            Response::NotFound => http::respond("404 Not Found", text, b"not found\n", head_only),
            Response::MethodNotAllowed => {
                http::respond("405 Method Not Allowed", text, b"use GET\n", head_only)
            }
            Response::UpgradeRequired(why) => {
                self.counters.http_rejects += 1;
                let body = format!("{why}\n");
                let mut r =
                    http::respond("400 Bad Request", text, body.as_bytes(), head_only).to_vec();
                // Tell clients which protocol /ws speaks (RFC 6455 4.2.2).
                let at = r
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .expect("status line")
                    + 2;
                r.splice(at..at, b"Sec-WebSocket-Version: 13\r\n".iter().copied());
                Bytes::from(r)
            }
            Response::BadRequest(why) => {
                self.counters.http_rejects += 1;
                http::respond(
                    "400 Bad Request",
                    text,
                    format!("{why}\n").as_bytes(),
                    head_only,
                )
            }
            Response::HeadTooLarge => {
                self.counters.http_rejects += 1;
                http::respond(
                    "431 Request Header Fields Too Large",
                    text,
                    b"request head too large\n",
                    head_only,
                )
            }
        }
    }

    fn client_message(&mut self, conn: &mut Conn, text: &[u8]) {
        let max = self.config.max_channels_per_connection;
        match conn::parse_client_message(text, max) {
            Ok(ClientOp::Subscribe(names)) => {
                let new: Vec<Box<str>> = names
                    .iter()
                    .filter(|n| !conn.subs.contains_key(*n))
                    .cloned()
                    .collect();
                if conn.subs.len() + new.len() > max {
                    self.counters.client_errors += 1;
                    let msg = format!(
                        "subscribing to {} more channels would pass the limit of {max} per connection ({} now)",
                        new.len(),
                        conn.subs.len()
                    );
                    conn.reply(Frame::control(conn::error_frame("too_many_channels", &msg)));
                    return;
                }
                for n in new {
                    conn.subs.insert(n, Sub::Pending);
                }
                // The ack waits for the ingest thread's reply: "subscribed"
                // means live, and every later update of these channels follows.
                conn.subscribes_sent += 1;
                self.control_backlog.push_back(ToIngest::Subscribe {
                    worker: self.id,
                    conn: conn.key,
                    names,
                });
            }
            Ok(ClientOp::Unsubscribe(names)) => {
                let mut ended = Vec::new();
                for n in &names {
                    if let Some(Sub::Active(id)) = conn.subs.remove(n) {
                        self.remove_subscriber(id, conn.key.slot);
                        conn.out.forget_channel(id);
                        ended.push(id);
                    }
                }
                // A pending one is released when its reply finds it gone.
                self.release(ended);
                conn.reply(Frame::control(conn::ack_frame("unsubscribed", &names)));
            }
            Err(e) => {
                self.counters.client_errors += 1;
                conn.reply(Frame::control(conn::error_frame(e.code, &e.message)));
            }
        }
    }

    fn remove_subscriber(&mut self, id: ChannelId, slot: u32) {
        let list = &mut self.index[id.index()];
        if let Some(pos) = list.iter().position(|&s| s == slot) {
            list.swap_remove(pos);
            self.counters.subscriptions -= 1;
        }
        if list.is_empty() && list.capacity() > 64 {
            *list = Vec::new();
        }
    }

    fn unsubscribe_all(&mut self, conn: &mut Conn) {
        let mut ended = Vec::new();
        for (_, sub) in conn.subs.drain() {
            if let Sub::Active(id) = sub {
                self.remove_subscriber(id, conn.key.slot);
                ended.push(id);
            }
        }
        conn.subs = Default::default();
        self.release(ended);
    }

    /// Gives the ingest thread back the references these ids held.
    fn release(&mut self, channels: Vec<ChannelId>) {
        if !channels.is_empty() {
            self.control_backlog
                .push_back(ToIngest::Release { channels });
        }
    }

    /// Closes with 1008 for a policy breach: what is queued is dropped (but a
    /// half-written frame, which must finish), and the close frame follows.
    fn cut(&mut self, conn: &mut Conn, slot: u32, reason: &str) {
        conn.out.truncate_to_partial();
        conn.out
            .push_control(Frame::control(frame::close(CloseCode::Policy, reason)));
        self.enter_closing(conn);
        mark_dirty(&mut self.dirty, conn, slot);
    }

    /// Stops deliveries and marks the connection to close once its queue is
    /// written (or after a grace period).
    fn enter_closing(&mut self, conn: &mut Conn) {
        self.unsubscribe_all(conn);
        conn.phase = Phase::Closing;
        conn.last_ping_ms = self.now_ms;
    }
}

//! A worker: one thread, one mio `Poll`, a shard of the connections.
//!
//! Each turn ([`Worker::run`], the turn policy) it accepts ([`accept`]),
//! reads client input ([`input`]), drains its ingest ring and fans updates
//! out to the channel's subscribers as `Rc` bumps into their queues
//! ([`fanout`]), answers requests ([`requests`]), then writes each
//! connection that has something due once ([`output`]); timers and shutdown
//! live in [`timers`]. Clients on the HTTP transports (SSE, long-poll) are
//! subscribers like the rest; [`stream`] frames their queue at write time.
//! No allocation and no lock per delivered message.
//!
//! The worker's state is split by owner: the connections ([`conn`], each
//! with its [`subscriptions`] and outbound queue, [`conflate`]), the
//! subscriber index, the dirty list, the ingest link ([`link`]), the
//! per-turn [`coalesce`]r and the local stats; each part keeps its own
//! invariants.

pub mod accept;
pub mod batch;
pub mod coalesce;
pub mod conflate;
pub mod conn;
pub mod fanout;
pub mod guard;
pub mod input;
pub mod link;
pub mod output;
pub mod refresh;
pub mod requests;
pub mod send_batch;
pub mod stream;
pub mod subscriptions;
pub mod timers;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::{Events, Poll, Token};
use rtrb::{Consumer, Producer};
use slab::Slab;

use crate::admin::AdminLink;
use crate::clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::pacing::{BatchHold, Pacer, SchedStat};
use crate::protocol::frame;
use crate::protocol::http::Pages;
use crate::ring::{Doorbell, RingBytes, ToIngest, ToWorker};

use accept::{AcceptState, Acceptor};
use coalesce::Coalescer;
use conflate::{Entry, EntryRef, Merges};
use conn::Conn;
use fanout::SubscriberIndex;
use input::OwnedEvent;
use link::IngestLink;
use output::{DirtyList, LocalStats};

const LISTENER: Token = Token(usize::MAX - 1);
/// The token a worker's waker must use.
pub const WAKER_TOKEN: Token = Token(usize::MAX - 2);
/// The ingest loop's Poll, when this worker drives it.
const INGEST_POLL: Token = Token(usize::MAX - 3);
/// Timer resolution for heartbeats, timeouts and accept retries.
const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// How often the worker's latency histogram is merged into the shared one.
const LATENCY_MERGE_MS: u64 = 1000;
/// How long shutdown waits for clients to take their last frames.
const DRAIN_MS: u64 = 4_000;

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
    /// Metrics pages are rendered off the worker, by the admin thread.
    pub admin: AdminLink,
    /// Shared metrics.
    pub metrics: Arc<Metrics>,
    /// Set to stop.
    pub shutdown: Arc<AtomicBool>,
    /// Configuration.
    pub config: Arc<Config>,
    /// Open connections across all workers (for `max_connections`).
    pub open_connections: Arc<AtomicUsize>,
    /// Connections per client address, shared by the workers.
    pub ips: Arc<crate::limits::IpTable>,
    /// The page served at `/`.
    pub index_html: Bytes,
    /// Readiness and the drain window.
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// The ingest loop, when this (only) worker drives it.
    pub ingest: Option<Box<crate::ingest::Ingest>>,
}

/// Whether the worker is serving or draining for shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Serving,
    /// Clients got 1001; the loop ends when all are gone or at the deadline.
    Draining {
        deadline_ms: u64,
    },
}

/// A worker event loop.
pub struct Worker {
    id: usize,
    poll: Poll,
    acceptor: Acceptor,
    link: IngestLink,
    admin: AdminLink,
    conns: Slab<Conn>,
    index: SubscriberIndex,
    dirty: DirtyList,
    coalescer: Coalescer,
    /// Merged entries of the fan-out under way (reused, never shrunk).
    merges: Merges,
    /// Updates taken off the ring during the write pass under way.
    fresh: refresh::Fresh,
    stats: LocalStats,
    metrics: Arc<Metrics>,
    config: Arc<Config>,
    pages: Pages,
    ping: EntryRef,
    /// Client events of the last read, copied out of the read buffer.
    events: Vec<OwnedEvent>,
    /// Connections whose reads were cut short for fairness or resumed.
    read_retry: Vec<u32>,
    /// Connections found dead while fanning out, closed after it.
    dead: Vec<u32>,
    /// Consumers of never-conflating channels a budget behind, cut after it
    /// (with the class of the channel that overflowed).
    slow: Vec<(u32, u16)>,
    /// One socket read's worth, shared by all connections.
    scratch: Box<[u8]>,
    bell: Arc<Doorbell>,
    shutdown: Arc<AtomicBool>,
    state: RunState,
    open_connections: Arc<AtomicUsize>,
    ips: Arc<crate::limits::IpTable>,
    /// By channel index: its class never conflates (notifications): a
    /// consumer a budget behind is closed instead, and resumes.
    keep_all: Vec<bool>,
    /// By channel index: its class (per-class counters; read only when a
    /// subscription starts or a consumer is cut, never per delivery).
    class_of: Vec<u16>,
    next_generation: u32,
    now_ms: u64,
    epoch: Instant,
    lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// While draining: (close at ms, slot, generation), latest first.
    drain_plan: Option<Vec<(u64, u32, u32)>>,
    /// The write pass's batched sends (None: one syscall per write).
    sends: Option<send_batch::SendBatch>,
}

impl Worker {
    /// Builds a worker.
    ///
    /// # Errors
    /// Registering the listener failed.
    pub fn new(p: WorkerParts) -> io::Result<Self> {
        let acceptor = Acceptor::new(p.listener, &p.poll, LISTENER)?;
        let mut link = IngestLink::new(
            p.id,
            p.from_ingest,
            p.to_ingest,
            p.ingest_bell,
            p.ring_bytes,
        );
        if let Some(ingest) = p.ingest {
            link.drive(ingest, p.poll.registry(), INGEST_POLL)?;
        }
        let sends = if p.config.batch_sends {
            send_batch::SendBatch::new()
                .inspect_err(|e| {
                    if p.id == 0 {
                        eprintln!(
                            "tickwire: io_uring refused ({e}): writing with one syscall per write"
                        );
                    }
                })
                .ok()
        } else {
            None
        };
        Ok(Worker {
            sends,
            id: p.id,
            poll: p.poll,
            acceptor,
            link,
            admin: p.admin,
            conns: Slab::with_capacity(1024),
            index: SubscriberIndex::default(),
            dirty: DirtyList::default(),
            // Small budgets (tests, slow links) must not see one batch
            // pass the budget and conflate a client that keeps up.
            coalescer: Coalescer::new(
                (p.config.outbound_budget / 8).min(coalesce::MAX_BATCH_BYTES),
            ),
            merges: Merges::new((p.config.outbound_budget / 8).min(coalesce::MAX_BATCH_BYTES)),
            fresh: refresh::Fresh::default(),
            stats: LocalStats::default(),
            metrics: p.metrics,
            pages: Pages {
                index: p.index_html,
            },
            config: p.config,
            ping: Entry::control(frame::build(frame::OPCODE_PING, b"")),
            events: Vec::new(),
            read_retry: Vec::new(),
            dead: Vec::new(),
            slow: Vec::new(),
            scratch: vec![0; input::READ_SCRATCH].into_boxed_slice(),
            bell: p.bell,
            shutdown: p.shutdown,
            state: RunState::Serving,
            open_connections: p.open_connections,
            ips: p.ips,
            keep_all: Vec::new(),
            class_of: Vec::new(),
            next_generation: 0,
            now_ms: 0,
            epoch: clock::epoch(),
            lifecycle: p.lifecycle,
            drain_plan: None,
        })
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn clock_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Runs until shutdown completes (clients sent 1001 and flushed, or the
    /// drain deadline passed).
    ///
    /// The turn policy: poll (without blocking while anything is known to
    /// be waiting: reads cut short, a listener with more in its backlog,
    /// requests for the ingest thread); handle socket events; drain the
    /// ring and write what is due, unless pacing or a batch hold holds this
    /// pass back; hand requests to ingest; then timers, once per
    /// housekeeping tick (100 ms).
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_housekeeping = 0u64;
        let mut next_merge = 0u64;
        // Opened here: thread-self is the worker's own thread.
        let sched = SchedStat::open();
        let mut pacer = Pacer::new(
            self.config.workers,
            self.config.pace_when_contended && sched.is_some(),
        );
        let mut batch = BatchHold::new(self.config.hold_batches);
        loop {
            self.stats.counters.loop_turns += 1;
            let now_ns = self.now_ns();
            if pacer.sample_due(now_ns)
                && let Some((cpu, wait)) = sched.as_ref().and_then(SchedStat::read)
            {
                pacer.sample(now_ns, cpu, wait);
                if pacer.contended() {
                    self.stats.counters.contended_windows += 1;
                }
            }
            let hold = self.hold_ns(&pacer, &batch, now_ns);
            let busy = !self.read_retry.is_empty()
                || self.acceptor.state == AcceptState::Again
                || self.link.has_backlog()
                || self.link.ingest_due()
                || self.admin.has_replies();
            let timeout = if busy {
                Duration::ZERO
            } else if hold > 0 {
                // Not announced as asleep: the ingest thread need not ring,
                // the pass starts when the hold ends. epoll counts whole
                // milliseconds (mio rounds up), so a hold ends at the next
                // event or the next millisecond. Sleeping the exact hold
                // instead was measured no better (perf/DEFAULTS.md).
                Duration::from_nanos(hold)
            } else {
                self.bell.prepare_sleep();
                if self.link.ring_is_empty() && !self.admin.has_replies() && self.dirty.is_empty() {
                    let wait = next_housekeeping.saturating_sub(self.clock_ms()).max(1);
                    Duration::from_millis(wait)
                } else {
                    Duration::ZERO
                }
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                eprintln!("tickwire: worker {} poll failed: {e}", self.id);
                break;
            }
            self.bell.awake();
            self.now_ms = self.clock_ms();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER_TOKEN => {}
                    INGEST_POLL => self.link.wake_ingest(),
                    Token(slot) => {
                        let slot = slot as u32;
                        if event.is_writable()
                            && let Some(c) = self.conns.get_mut(slot as usize)
                        {
                            c.write_blocked = false;
                            self.dirty.mark(c, slot);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(slot);
                        }
                    }
                }
            }
            if self.acceptor.state == AcceptState::Again {
                self.accept();
            }
            for slot in std::mem::take(&mut self.read_retry) {
                if self
                    .conns
                    .get(slot as usize)
                    .is_some_and(|c| c.read_pending)
                {
                    self.read(slot);
                }
            }
            self.serve_admin_replies();
            if self.state == RunState::Serving {
                self.run_ingest(false);
            }
            let due = hold == 0 || self.hold_ns(&pacer, &batch, self.now_ns()) == 0;
            if due {
                let updates = self.drain_ring();
                let start_ns = self.now_ns();
                let pass = self.write_pass(self.config.refresh_passes);
                self.stats.counters.pass_refresh_updates += pass.updates;
                if pass.written > 0 {
                    let end_ns = self.now_ns();
                    let held = pacer.pass_done(end_ns);
                    if held > 0 {
                        self.stats.counters.paced_passes += 1;
                        self.stats.counters.paced_wait_ns += held;
                    }
                    let held = batch.pass_done(updates + pass.updates, start_ns, end_ns);
                    if held > 0 {
                        self.stats.counters.batch_held_passes += 1;
                        self.stats.counters.batch_hold_ns += held;
                    }
                }
            }
            self.link.send_backlog();
            if self.now_ms >= next_housekeeping {
                next_housekeeping = self.now_ms + HOUSEKEEPING.as_millis() as u64;
                // The ingest loop's timers (accept retry, feed sweeps).
                self.link.wake_ingest();
                self.housekeeping();
                if self.now_ms >= next_merge {
                    next_merge = self.now_ms + LATENCY_MERGE_MS;
                    self.metrics.merge_latency(self.id, &mut self.stats.latency);
                }
            }
            self.publish_stats();
            if self.shutdown.load(Ordering::Relaxed) {
                let deadline = match self.state {
                    RunState::Draining { deadline_ms } => deadline_ms,
                    RunState::Serving => {
                        // Updates already in the ring (a paced turn may not
                        // have drained it) go out before the 1001.
                        self.link.stop_ingest();
                        self.drain_ring();
                        self.begin_shutdown();
                        let deadline_ms = self.now_ms + DRAIN_MS;
                        self.state = RunState::Draining { deadline_ms };
                        deadline_ms
                    }
                };
                if self.conns.is_empty() || self.now_ms >= deadline {
                    break;
                }
            }
        }
        self.metrics.merge_latency(self.id, &mut self.stats.latency);
        self.conns.clear();
        self.publish_stats();
    }

    /// A turn of the ingest loop, when this worker drives it: when its poll
    /// announced input, or (`refresh`, during a write pass) whether or not.
    fn run_ingest(&mut self, refresh: bool) {
        let running = if refresh {
            self.link.refresh_ingest()
        } else {
            self.link.run_ingest()
        };
        if !running {
            eprintln!("tickwire: worker {} stopped its ingest loop", self.id);
        }
    }

    /// How long the next write pass is held back: the longer of the
    /// contention pacer's and the batch hold's waits; none while draining.
    fn hold_ns(&self, pacer: &Pacer, batch: &BatchHold, now_ns: u64) -> u64 {
        match self.state {
            RunState::Draining { .. } => 0,
            RunState::Serving => pacer.wait_ns(now_ns).max(batch.wait_ns(now_ns)),
        }
    }

    fn publish_stats(&mut self) {
        self.stats.counters.connections = self.conns.len() as u64;
        self.stats.counters.subscriptions = self.index.len() as u64;
        self.stats.counters.publish(&self.metrics.workers[self.id]);
    }

    /// Cross-part invariant: a slot is in the index of channel c exactly
    /// when that connection holds an active subscription to c.
    /// O(connections + subscriptions): checked while the worker is small, so
    /// debug builds stay usable with thousands of clients.
    #[cfg(debug_assertions)]
    fn check_invariants(&self) {
        if self.index.len() > 512 || self.conns.len() > 512 {
            return;
        }
        self.index.check_invariants();
        let mut active = 0;
        for (slot, conn) in self.conns.iter() {
            for id in conn.subs.active() {
                debug_assert!(
                    self.index.contains(id, slot as u32),
                    "active subscription missing from the index"
                );
                active += 1;
            }
        }
        debug_assert_eq!(active, self.index.len(), "index holds a stale slot");
    }

    #[cfg(not(debug_assertions))]
    #[inline(always)]
    fn check_invariants(&self) {}
}

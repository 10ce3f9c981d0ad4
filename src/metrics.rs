//! Engine metrics: single-writer counters that each thread publishes once per
//! loop turn, and per-worker latency histograms merged once a second; rendered
//! in the Prometheus text format on `GET /metrics`.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam::utils::CachePadded;
use hdrhistogram::Histogram;

use crate::ingest::Reject;

/// Latency histogram bounds: 100 ns to 60 s at 3 significant figures.
const LATENCY_NS_MIN: u64 = 100;
const LATENCY_NS_MAX: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds with fixed bounds (never resizes).
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(LATENCY_NS_MIN, LATENCY_NS_MAX, 3).expect("static bounds")
}

/// Metric names, declared once (README, "HTTP"; tests read them from here).
pub mod names {
    /// `tickwire_connections`.
    pub const CONNECTIONS: &str = "tickwire_connections";
    /// `tickwire_subscriptions`.
    pub const SUBSCRIPTIONS: &str = "tickwire_subscriptions";
    /// `tickwire_connections_accepted_total`.
    pub const CONNECTIONS_ACCEPTED_TOTAL: &str = "tickwire_connections_accepted_total";
    /// `tickwire_accept_errors_total`.
    pub const ACCEPT_ERRORS_TOTAL: &str = "tickwire_accept_errors_total";
    /// `tickwire_tls_handshake_failures_total`.
    pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "tickwire_tls_handshake_failures_total";
    /// `tickwire_deliveries_total`.
    pub const DELIVERIES_TOTAL: &str = "tickwire_deliveries_total";
    /// `tickwire_bytes_out_total`.
    pub const BYTES_OUT_TOTAL: &str = "tickwire_bytes_out_total";
    /// `tickwire_socket_flushes_total`.
    pub const SOCKET_FLUSHES_TOTAL: &str = "tickwire_socket_flushes_total";
    /// `tickwire_conflated_total`.
    pub const CONFLATED_TOTAL: &str = "tickwire_conflated_total";
    /// `tickwire_slow_consumer_closes_total`.
    pub const SLOW_CONSUMER_CLOSES_TOTAL: &str = "tickwire_slow_consumer_closes_total";
    /// `tickwire_idle_closes_total`.
    pub const IDLE_CLOSES_TOTAL: &str = "tickwire_idle_closes_total";
    /// `tickwire_protocol_closes_total`.
    pub const PROTOCOL_CLOSES_TOTAL: &str = "tickwire_protocol_closes_total";
    /// `tickwire_client_errors_total`.
    pub const CLIENT_ERRORS_TOTAL: &str = "tickwire_client_errors_total";
    /// `tickwire_http_requests_total`.
    pub const HTTP_REQUESTS_TOTAL: &str = "tickwire_http_requests_total";
    /// `tickwire_http_rejects_total`.
    pub const HTTP_REJECTS_TOTAL: &str = "tickwire_http_rejects_total";
    /// `tickwire_ingest_connections`.
    pub const INGEST_CONNECTIONS: &str = "tickwire_ingest_connections";
    /// `tickwire_ingest_messages_total`.
    pub const INGEST_MESSAGES_TOTAL: &str = "tickwire_ingest_messages_total";
    /// `tickwire_ingest_bytes_total`.
    pub const INGEST_BYTES_TOTAL: &str = "tickwire_ingest_bytes_total";
    /// `tickwire_channels`.
    pub const CHANNELS: &str = "tickwire_channels";
    /// `tickwire_ingest_ring_full_waits_total`.
    pub const INGEST_RING_FULL_WAITS_TOTAL: &str = "tickwire_ingest_ring_full_waits_total";
    /// `tickwire_ingest_loop_turns_total`.
    pub const INGEST_LOOP_TURNS_TOTAL: &str = "tickwire_ingest_loop_turns_total";
    /// `tickwire_worker_loop_turns_total`.
    pub const WORKER_LOOP_TURNS_TOTAL: &str = "tickwire_worker_loop_turns_total";
    /// `tickwire_worker_paced_passes_total`.
    pub const WORKER_PACED_PASSES_TOTAL: &str = "tickwire_worker_paced_passes_total";
    /// `tickwire_worker_paced_wait_seconds_total`.
    pub const WORKER_PACED_WAIT_SECONDS_TOTAL: &str = "tickwire_worker_paced_wait_seconds_total";
    /// `tickwire_worker_batch_held_passes_total`.
    pub const WORKER_BATCH_HELD_PASSES_TOTAL: &str = "tickwire_worker_batch_held_passes_total";
    /// `tickwire_worker_batch_hold_seconds_total`.
    pub const WORKER_BATCH_HOLD_SECONDS_TOTAL: &str = "tickwire_worker_batch_hold_seconds_total";
    /// `tickwire_worker_pass_refresh_updates_total`.
    pub const WORKER_PASS_REFRESH_UPDATES_TOTAL: &str =
        "tickwire_worker_pass_refresh_updates_total";
    /// `tickwire_worker_merged_updates_total`.
    pub const WORKER_MERGED_UPDATES_TOTAL: &str = "tickwire_worker_merged_updates_total";
    /// `tickwire_worker_connections`.
    pub const WORKER_CONNECTIONS: &str = "tickwire_worker_connections";
    /// `tickwire_worker_contended_windows_total{worker}`.
    pub const WORKER_CONTENDED_WINDOWS_TOTAL: &str = "tickwire_worker_contended_windows_total";
    /// `tickwire_ingest_rejects_total{reason}`.
    pub const INGEST_REJECTS_TOTAL: &str = "tickwire_ingest_rejects_total";
    /// `tickwire_replayed_total`.
    pub const REPLAYED_TOTAL: &str = "tickwire_replayed_total";
    /// `tickwire_resyncs_total`.
    pub const RESYNCS_TOTAL: &str = "tickwire_resyncs_total";
    /// `tickwire_http_published_total`.
    pub const HTTP_PUBLISHED_TOTAL: &str = "tickwire_http_published_total";
    /// `tickwire_http_publish_repeats_total{reason}`.
    pub const HTTP_PUBLISH_REPEATS_TOTAL: &str = "tickwire_http_publish_repeats_total";
    /// `tickwire_class_slow_consumer_closes_total{class}`.
    pub const CLASS_SLOW_CONSUMER_CLOSES_TOTAL: &str = "tickwire_class_slow_consumer_closes_total";
    /// `tickwire_class_replayed_total{class}`.
    pub const CLASS_REPLAYED_TOTAL: &str = "tickwire_class_replayed_total";
    /// `tickwire_class_channels{class}`.
    pub const CLASS_CHANNELS: &str = "tickwire_class_channels";
    /// `tickwire_history_bytes`.
    pub const HISTORY_BYTES: &str = "tickwire_history_bytes";
    /// `tickwire_auth_failures_total{reason}`.
    pub const AUTH_FAILURES_TOTAL: &str = "tickwire_auth_failures_total";
    /// `tickwire_limit_rejects_total{reason}`.
    pub const LIMIT_REJECTS_TOTAL: &str = "tickwire_limit_rejects_total";
    /// `tickwire_delivery_latency_seconds{quantile}`.
    pub const DELIVERY_LATENCY_SECONDS: &str = "tickwire_delivery_latency_seconds";
}

/// Counters one worker publishes.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Open connections (WebSocket and HTTP).
    pub connections: AtomicU64,
    /// Active channel subscriptions.
    pub subscriptions: AtomicU64,
    /// Update frames fully written to sockets.
    pub deliveries: AtomicU64,
    /// Bytes written to sockets.
    pub bytes_out: AtomicU64,
    /// Gathered socket writes (one per connection flush): deliveries divided
    /// by this is the batching factor.
    pub flushes: AtomicU64,
    /// Updates replaced by a newer one before being written.
    pub conflated: AtomicU64,
    /// Connections closed for blocking past `slow_consumer_timeout`.
    pub slow_consumer_closes: AtomicU64,
    /// Connections closed for silence past `idle_timeout`.
    pub idle_closes: AtomicU64,
    /// Connections closed for protocol violations (1002, 1007, 1009).
    pub protocol_closes: AtomicU64,
    /// Bad client messages answered with an error.
    pub client_errors: AtomicU64,
    /// Plain HTTP requests served.
    pub http_requests: AtomicU64,
    /// HTTP requests refused as malformed.
    pub http_rejects: AtomicU64,
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Accepts that failed (out of file descriptors); retried.
    pub accept_errors: AtomicU64,
    /// TLS connections that ended before their handshake completed.
    pub tls_handshake_failures: AtomicU64,
    /// Updates replayed to resuming subscribers.
    pub replayed: AtomicU64,
    /// Resumes answered with a resync.
    pub resyncs: AtomicU64,
    /// Event loop turns.
    pub loop_turns: AtomicU64,
    /// Write passes that waited for a contended core's share (pacing).
    pub paced_passes: AtomicU64,
    /// Nanoseconds those passes waited in all.
    pub paced_wait_ns: AtomicU64,
    /// Write passes held back after a pass that carried a batch.
    pub batch_held_passes: AtomicU64,
    /// Nanoseconds those passes were held back in all.
    pub batch_hold_ns: AtomicU64,
    /// Updates taken off the ring while a write pass was under way.
    pub pass_refresh_updates: AtomicU64,
    /// Deliveries merged into the unwritten entry of their channel at the
    /// end of a connection's queue instead of queued as entries of their own.
    pub merged: AtomicU64,
    /// 20 ms windows in which the worker's thread waited for a core (whether
    /// or not pacing applies).
    pub contended_windows: AtomicU64,
    /// Budget cuts of consumers of never-conflating channels, by class.
    pub class_slow_consumer_closes: Box<[AtomicU64]>,
    /// Updates replayed to resuming subscribers, by class.
    pub class_replayed: Box<[AtomicU64]>,
}

/// The worker's private copy, published with [`WorkerCounters::publish`].
#[derive(Debug, Default, Clone)]
pub struct WorkerCounters {
    /// See [`WorkerStats`].
    pub connections: u64,
    /// See [`WorkerStats`].
    pub subscriptions: u64,
    /// See [`WorkerStats`].
    pub deliveries: u64,
    /// See [`WorkerStats`].
    pub bytes_out: u64,
    /// See [`WorkerStats`].
    pub flushes: u64,
    /// See [`WorkerStats`].
    pub conflated: u64,
    /// See [`WorkerStats`].
    pub slow_consumer_closes: u64,
    /// See [`WorkerStats`].
    pub idle_closes: u64,
    /// See [`WorkerStats`].
    pub protocol_closes: u64,
    /// See [`WorkerStats`].
    pub client_errors: u64,
    /// See [`WorkerStats`].
    pub http_requests: u64,
    /// See [`WorkerStats`].
    pub http_rejects: u64,
    /// See [`WorkerStats`].
    pub accepted: u64,
    /// See [`WorkerStats`].
    pub accept_errors: u64,
    /// See [`WorkerStats`].
    pub tls_handshake_failures: u64,
    /// See [`WorkerStats`].
    pub replayed: u64,
    /// See [`WorkerStats`].
    pub resyncs: u64,
    /// See [`WorkerStats`].
    pub loop_turns: u64,
    /// See [`WorkerStats`].
    pub paced_passes: u64,
    /// See [`WorkerStats`].
    pub paced_wait_ns: u64,
    /// See [`WorkerStats`].
    pub batch_held_passes: u64,
    /// See [`WorkerStats`].
    pub batch_hold_ns: u64,
    /// See [`WorkerStats`].
    pub pass_refresh_updates: u64,
    /// See [`WorkerStats`].
    pub merged: u64,
    /// See [`WorkerStats`].
    pub contended_windows: u64,
    /// See [`WorkerStats`] (grown on first use).
    pub class_slow_consumer_closes: Vec<u64>,
    /// See [`WorkerStats`] (grown on first use).
    pub class_replayed: Vec<u64>,
}

impl WorkerCounters {
    /// One budget cut in `class` (at a cut, never per delivery).
    pub fn add_class_slow_close(&mut self, class: u16) {
        add_at(&mut self.class_slow_consumer_closes, class, 1);
    }

    /// `n` updates replayed in `class` (once per resumed channel).
    pub fn add_class_replayed(&mut self, class: u16, n: u64) {
        add_at(&mut self.class_replayed, class, n);
    }

    /// Publishes the counters. Each has one writer, so plain stores suffice
    /// (no read-modify-write on the hot path).
    pub fn publish(&self, s: &WorkerStats) {
        let r = Ordering::Relaxed;
        s.connections.store(self.connections, r);
        s.subscriptions.store(self.subscriptions, r);
        s.deliveries.store(self.deliveries, r);
        s.bytes_out.store(self.bytes_out, r);
        s.flushes.store(self.flushes, r);
        s.conflated.store(self.conflated, r);
        s.slow_consumer_closes.store(self.slow_consumer_closes, r);
        s.idle_closes.store(self.idle_closes, r);
        s.protocol_closes.store(self.protocol_closes, r);
        s.client_errors.store(self.client_errors, r);
        s.http_requests.store(self.http_requests, r);
        s.http_rejects.store(self.http_rejects, r);
        s.accepted.store(self.accepted, r);
        s.accept_errors.store(self.accept_errors, r);
        s.tls_handshake_failures
            .store(self.tls_handshake_failures, r);
        s.replayed.store(self.replayed, r);
        s.resyncs.store(self.resyncs, r);
        s.loop_turns.store(self.loop_turns, r);
        s.paced_passes.store(self.paced_passes, r);
        s.paced_wait_ns.store(self.paced_wait_ns, r);
        s.batch_held_passes.store(self.batch_held_passes, r);
        s.batch_hold_ns.store(self.batch_hold_ns, r);
        s.pass_refresh_updates.store(self.pass_refresh_updates, r);
        s.merged.store(self.merged, r);
        s.contended_windows.store(self.contended_windows, r);
        for (a, v) in s
            .class_slow_consumer_closes
            .iter()
            .zip(&self.class_slow_consumer_closes)
        {
            a.store(*v, r);
        }
        for (a, v) in s.class_replayed.iter().zip(&self.class_replayed) {
            a.store(*v, r);
        }
    }
}

fn add_at(v: &mut Vec<u64>, k: u16, n: u64) {
    let k = usize::from(k);
    if v.len() <= k {
        v.resize(k + 1, 0);
    }
    v[k] += n;
}

/// Counters the ingest thread publishes.
#[derive(Debug, Default)]
pub struct IngestStats {
    /// Open feed connections.
    pub feed_connections: AtomicU64,
    /// Accepted messages.
    pub messages: AtomicU64,
    /// Bytes of accepted and rejected lines.
    pub bytes: AtomicU64,
    /// Rejected lines, by [`Reject`] in `Reject::ALL` order.
    pub rejects: [AtomicU64; 6],
    /// Channels known.
    pub channels: AtomicU64,
    /// History bytes kept over all channels.
    pub history_bytes: AtomicU64,
    /// Messages published through `POST /api/publish`.
    pub published: AtomicU64,
    /// `POST /api/publish` messages that repeated an idempotency key.
    pub publish_repeats: AtomicU64,
    /// Channels per class, in class order.
    pub class_channels: Box<[AtomicU64]>,
    /// Times a worker ring was full and ingest waited (backpressure).
    pub ring_full_waits: AtomicU64,
    /// Ingest loop turns.
    pub loop_turns: AtomicU64,
}

/// All metrics of one engine.
#[derive(Debug)]
pub struct Metrics {
    /// Per worker.
    pub workers: Box<[CachePadded<WorkerStats>]>,
    /// The ingest thread.
    pub ingest: CachePadded<IngestStats>,
    /// Refused tokens and limit hits (any thread).
    pub refusals: CachePadded<crate::limits::Refusals>,
    /// Channel class names, in class order (the default class last).
    classes: Vec<String>,
    latency: Box<[Mutex<Histogram<u64>>]>,
}

impl Metrics {
    /// Metrics for `workers` workers.
    pub fn new(workers: usize) -> Self {
        Self::with_classes(workers, vec!["default".into()])
    }

    /// Metrics for `workers` workers and these channel classes.
    pub fn with_classes(workers: usize, classes: Vec<String>) -> Self {
        let ingest = IngestStats {
            class_channels: classes.iter().map(|_| AtomicU64::new(0)).collect(),
            ..IngestStats::default()
        };
        let per_class = || classes.iter().map(|_| AtomicU64::new(0)).collect();
        let worker_stats = (0..workers)
            .map(|_| {
                CachePadded::new(WorkerStats {
                    class_slow_consumer_closes: per_class(),
                    class_replayed: per_class(),
                    ..WorkerStats::default()
                })
            })
            .collect();
        Metrics {
            classes,
            workers: worker_stats,
            ingest: CachePadded::new(ingest),
            refusals: CachePadded::new(crate::limits::Refusals::default()),
            latency: (0..workers)
                .map(|_| Mutex::new(latency_histogram()))
                .collect(),
        }
    }

    /// Channel class names, in class order (the default class last).
    pub fn class_names(&self) -> &[String] {
        &self.classes
    }

    /// Adds a worker's recent latencies to its cumulative histogram (once a
    /// second, off the hot path) and resets `recent`.
    pub fn merge_latency(&self, worker: usize, recent: &mut Histogram<u64>) {
        if recent.is_empty() {
            return;
        }
        if let Ok(mut h) = self.latency[worker].lock() {
            // Same bounds on both sides, so the add cannot fail.
            let _ = h.add(&*recent);
        }
        recent.reset();
    }

    /// Sum of one worker counter over all workers.
    pub fn total(&self, f: impl Fn(&WorkerStats) -> &AtomicU64) -> u64 {
        self.workers
            .iter()
            .map(|w| f(w).load(Ordering::Relaxed))
            .sum()
    }

    /// All workers' latencies merged.
    pub fn latency(&self) -> Histogram<u64> {
        let mut all = latency_histogram();
        for h in self.latency.iter() {
            if let Ok(h) = h.lock() {
                let _ = all.add(&*h);
            }
        }
        all
    }

    /// The dashboard's JSON (`/api/stats`): counters since start; the
    /// latency percentiles (µs) are the caller's.
    pub fn stats_json(&self, uptime_s: f64, demo: bool, latency_us: (f64, f64)) -> String {
        format!(
            concat!(
                "{{\"uptime_s\":{:.1},\"workers\":{},\"connections\":{},\"subscriptions\":{},",
                "\"channels\":{},\"deliveries\":{},\"conflated\":{},\"ingest_messages\":{},",
                "\"latency_us\":{{\"p50\":{:.1},\"p99\":{:.1}}},\"demo\":{}}}"
            ),
            uptime_s,
            self.workers.len(),
            self.total(|w| &w.connections),
            self.total(|w| &w.subscriptions),
            self.ingest.channels.load(Ordering::Relaxed),
            self.total(|w| &w.deliveries),
            self.total(|w| &w.conflated),
            self.ingest.messages.load(Ordering::Relaxed),
            latency_us.0,
            latency_us.1,
            demo,
        )
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        let gauge = |o: &mut String, name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        gauge(
            &mut o,
            names::CONNECTIONS,
            "Open client connections.",
            "gauge",
            self.total(|w| &w.connections),
        );
        gauge(
            &mut o,
            names::SUBSCRIPTIONS,
            "Active channel subscriptions.",
            "gauge",
            self.total(|w| &w.subscriptions),
        );
        gauge(
            &mut o,
            names::CONNECTIONS_ACCEPTED_TOTAL,
            "Connections accepted.",
            "counter",
            self.total(|w| &w.accepted),
        );
        gauge(
            &mut o,
            names::ACCEPT_ERRORS_TOTAL,
            "Accepts that failed (out of file descriptors) and were retried.",
            "counter",
            self.total(|w| &w.accept_errors),
        );
        gauge(
            &mut o,
            names::TLS_HANDSHAKE_FAILURES_TOTAL,
            "TLS connections that ended before their handshake completed (bad or no TLS, reset).",
            "counter",
            self.total(|w| &w.tls_handshake_failures),
        );
        gauge(
            &mut o,
            names::DELIVERIES_TOTAL,
            "Update frames written to client sockets.",
            "counter",
            self.total(|w| &w.deliveries),
        );
        gauge(
            &mut o,
            names::BYTES_OUT_TOTAL,
            "Bytes written to client sockets.",
            "counter",
            self.total(|w| &w.bytes_out),
        );
        gauge(
            &mut o,
            names::SOCKET_FLUSHES_TOTAL,
            "Connection flushes (gathered writes); deliveries per flush is the batching factor.",
            "counter",
            self.total(|w| &w.flushes),
        );
        gauge(
            &mut o,
            names::CONFLATED_TOTAL,
            "Updates replaced by a newer value before being written (slow consumers).",
            "counter",
            self.total(|w| &w.conflated),
        );
        gauge(
            &mut o,
            names::SLOW_CONSUMER_CLOSES_TOTAL,
            "Connections closed for blocking past slow_consumer_timeout.",
            "counter",
            self.total(|w| &w.slow_consumer_closes),
        );
        gauge(
            &mut o,
            names::IDLE_CLOSES_TOTAL,
            "Connections closed for silence past idle_timeout.",
            "counter",
            self.total(|w| &w.idle_closes),
        );
        gauge(
            &mut o,
            names::PROTOCOL_CLOSES_TOTAL,
            "Connections closed for WebSocket protocol violations.",
            "counter",
            self.total(|w| &w.protocol_closes),
        );
        gauge(
            &mut o,
            names::CLIENT_ERRORS_TOTAL,
            "Bad client messages answered with an error.",
            "counter",
            self.total(|w| &w.client_errors),
        );
        gauge(
            &mut o,
            names::HTTP_REQUESTS_TOTAL,
            "Plain HTTP requests served.",
            "counter",
            self.total(|w| &w.http_requests),
        );
        gauge(
            &mut o,
            names::HTTP_REJECTS_TOTAL,
            "Malformed HTTP requests refused.",
            "counter",
            self.total(|w| &w.http_rejects),
        );
        gauge(
            &mut o,
            names::REPLAYED_TOTAL,
            "Updates replayed from history to resuming subscribers.",
            "counter",
            self.total(|w| &w.replayed),
        );
        gauge(
            &mut o,
            names::RESYNCS_TOTAL,
            "Resumes that could not be served from history (epoch changed, too old): resync sent.",
            "counter",
            self.total(|w| &w.resyncs),
        );
        let i = &self.ingest;
        let r = Ordering::Relaxed;
        gauge(
            &mut o,
            names::HTTP_PUBLISHED_TOTAL,
            "Messages published through POST /api/publish (not idempotent repeats, which publish nothing).",
            "counter",
            i.published.load(r),
        );
        let name = names::HTTP_PUBLISH_REPEATS_TOTAL;
        let _ = writeln!(
            o,
            "# HELP {name} POST /api/publish messages answered with an earlier seq and not published, by reason.\n# TYPE {name} counter\n{name}{{reason=\"idempotency_key\"}} {}",
            i.publish_repeats.load(r)
        );
        gauge(
            &mut o,
            names::HISTORY_BYTES,
            "Bytes of channel history kept (capped by history_memory_max).",
            "gauge",
            i.history_bytes.load(r),
        );
        gauge(
            &mut o,
            names::INGEST_CONNECTIONS,
            "Open feed connections.",
            "gauge",
            i.feed_connections.load(r),
        );
        gauge(
            &mut o,
            names::INGEST_MESSAGES_TOTAL,
            "Ingest messages accepted.",
            "counter",
            i.messages.load(r),
        );
        gauge(
            &mut o,
            names::INGEST_BYTES_TOTAL,
            "Ingest bytes received in lines.",
            "counter",
            i.bytes.load(r),
        );
        gauge(
            &mut o,
            names::CHANNELS,
            "Channels known to the engine.",
            "gauge",
            i.channels.load(r),
        );
        gauge(
            &mut o,
            names::INGEST_RING_FULL_WAITS_TOTAL,
            "Times ingest waited for a full worker ring.",
            "counter",
            i.ring_full_waits.load(r),
        );
        gauge(
            &mut o,
            names::INGEST_LOOP_TURNS_TOTAL,
            "Ingest event loop turns.",
            "counter",
            i.loop_turns.load(r),
        );
        let name = names::INGEST_REJECTS_TOTAL;
        let _ = writeln!(
            o,
            "# HELP {name} Ingest lines rejected, by reason.\n# TYPE {name} counter"
        );
        for reason in Reject::ALL {
            let _ = writeln!(
                o,
                "{name}{{reason=\"{}\"}} {}",
                reason.label(),
                i.rejects[reason.index()].load(r)
            );
        }
        let name = names::CLASS_CHANNELS;
        let _ = writeln!(
            o,
            "# HELP {name} Channels known, by channel class.\n# TYPE {name} gauge"
        );
        for (k, class) in self.classes.iter().enumerate() {
            let n = i.class_channels.get(k).map_or(0, |a| a.load(r));
            let _ = writeln!(o, "{name}{{class=\"{class}\"}} {n}");
        }
        for (name, help, f) in [
            (
                names::CLASS_SLOW_CONSUMER_CLOSES_TOTAL,
                "Consumers of never-conflating channels closed a budget behind (1008), by channel class.",
                (|w: &WorkerStats| &w.class_slow_consumer_closes)
                    as fn(&WorkerStats) -> &[AtomicU64],
            ),
            (
                names::CLASS_REPLAYED_TOTAL,
                "Updates replayed from history to resuming subscribers, by channel class.",
                |w: &WorkerStats| &w.class_replayed,
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
            for (k, class) in self.classes.iter().enumerate() {
                let n: u64 = self
                    .workers
                    .iter()
                    .map(|w| f(w).get(k).map_or(0, |a| a.load(r)))
                    .sum();
                let _ = writeln!(o, "{name}{{class=\"{class}\"}} {n}");
            }
        }
        let name = names::AUTH_FAILURES_TOTAL;
        let _ = writeln!(
            o,
            "# HELP {name} Tokens refused (upgrade, first message, refresh, feed AUTH), by reason.\n# TYPE {name} counter"
        );
        for e in crate::auth::AuthError::ALL {
            let _ = writeln!(
                o,
                "{name}{{reason=\"{}\"}} {}",
                e.label(),
                self.refusals.auth_count(&e)
            );
        }
        for f in crate::limits::FeedAuth::ALL {
            let _ = writeln!(
                o,
                "{name}{{reason=\"{}\"}} {}",
                f.label(),
                self.refusals.feed_auth_count(f)
            );
        }
        let name = names::LIMIT_REJECTS_TOTAL;
        let _ = writeln!(
            o,
            "# HELP {name} Connections, messages, frames and lines refused by a limit, by limit.\n# TYPE {name} counter"
        );
        for l in crate::limits::Limit::ALL {
            let _ = writeln!(
                o,
                "{name}{{reason=\"{}\"}} {}",
                l.label(),
                self.refusals.limit_count(l)
            );
        }
        let per_worker = |o: &mut String,
                          name: &str,
                          help: &str,
                          kind: &str,
                          v: &dyn Fn(&WorkerStats) -> String| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (k, w) in self.workers.iter().enumerate() {
                let _ = writeln!(o, "{name}{{worker=\"{k}\"}} {}", v(w));
            }
        };
        per_worker(
            &mut o,
            names::WORKER_LOOP_TURNS_TOTAL,
            "Event loop turns per worker.",
            "counter",
            &|w| w.loop_turns.load(r).to_string(),
        );
        per_worker(
            &mut o,
            names::WORKER_PACED_PASSES_TOTAL,
            "Write passes a worker held back while its core was contended.",
            "counter",
            &|w| w.paced_passes.load(r).to_string(),
        );
        per_worker(
            &mut o,
            names::WORKER_PACED_WAIT_SECONDS_TOTAL,
            "Time those passes were held back.",
            "counter",
            &|w| format!("{:.6}", w.paced_wait_ns.load(r) as f64 / 1e9),
        );
        per_worker(
            &mut o,
            names::WORKER_BATCH_HELD_PASSES_TOTAL,
            "Write passes a worker held back after a pass that carried a batch.",
            "counter",
            &|w| w.batch_held_passes.load(r).to_string(),
        );
        per_worker(
            &mut o,
            names::WORKER_BATCH_HOLD_SECONDS_TOTAL,
            "Time those passes were held back.",
            "counter",
            &|w| format!("{:.6}", w.batch_hold_ns.load(r) as f64 / 1e9),
        );
        per_worker(
            &mut o,
            names::WORKER_PASS_REFRESH_UPDATES_TOTAL,
            "Updates a worker took off its ring while a write pass was under way (for the connections the pass had not written yet).",
            "counter",
            &|w| w.pass_refresh_updates.load(r).to_string(),
        );
        per_worker(
            &mut o,
            names::WORKER_MERGED_UPDATES_TOTAL,
            "Deliveries a worker merged into their channel's entry still unwritten at the end of a connection's queue (one buffer per write instead of one per turn).",
            "counter",
            &|w| w.merged.load(r).to_string(),
        );
        per_worker(
            &mut o,
            names::WORKER_CONNECTIONS,
            "Open connections per worker.",
            "gauge",
            &|w| w.connections.load(r).to_string(),
        );
        per_worker(
            &mut o,
            names::WORKER_CONTENDED_WINDOWS_TOTAL,
            "20 ms windows in which the worker waited for a core (counted whether or not pacing applies).",
            "counter",
            &|w| w.contended_windows.load(r).to_string(),
        );
        let h = self.latency();
        let name = names::DELIVERY_LATENCY_SECONDS;
        let _ = writeln!(
            o,
            "# HELP {name} Ingest read to socket write, per delivered update, sampled from one socket write in 16 (merged each second).\n# TYPE {name} summary"
        );
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            let v = if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            };
            let _ = writeln!(o, "{name}{{quantile=\"{q}\"}} {:.9}", v as f64 / 1e9);
        }
        let _ = writeln!(o, "{name}_sum {:.9}", h.mean() * h.len() as f64 / 1e9);
        let _ = writeln!(o, "{name}_count {}", h.len());
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_totals_and_quantiles() {
        let m = Metrics::new(2);
        let mut c = WorkerCounters {
            deliveries: 5,
            ..Default::default()
        };
        c.publish(&m.workers[0]);
        c.deliveries = 7;
        c.publish(&m.workers[1]);
        m.ingest.rejects[1].store(3, Ordering::Relaxed);
        let mut recent = latency_histogram();
        for v in [1_000u64, 2_000, 3_000, 1_000_000] {
            recent.record(v).unwrap();
        }
        m.merge_latency(1, &mut recent);
        assert!(recent.is_empty());
        let text = m.render();
        assert!(text.contains("tickwire_deliveries_total 12\n"), "{text}");
        assert!(text.contains("tickwire_ingest_rejects_total{reason=\"not_object\"} 3\n"));
        assert!(text.contains("tickwire_delivery_latency_seconds_count 4\n"));
        let max_line = text.lines().find(|l| l.contains("quantile=\"1\"")).unwrap();
        let v: f64 = max_line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((v - 0.001).abs() < 0.00001, "{max_line}");
    }
}

//! The admin thread: renders the pages that read the whole engine's state
//! (`/metrics` merges every worker's latency histogram and walks every
//! counter), so that a scrape never stalls a worker's delivery. A worker
//! hands it the request and gets the finished response back on its own
//! queue, with a ring of its doorbell.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam::channel::{Receiver, Sender, bounded};

use crate::metrics::Metrics;
use crate::protocol::http;
use crate::ring::{ConnKey, Doorbell};

/// Requests waiting for the admin thread; past this a scrape gets 503
/// (a flood of scrapes must not grow memory).
const REQUESTS_MAX: usize = 256;
/// How often the thread looks at the shutdown flag while idle.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// The pages the admin thread renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `/metrics`, Prometheus text.
    Metrics,
    /// `/api/stats`, the dashboard's JSON.
    Stats,
}

/// One page to render for a worker's connection.
#[derive(Debug)]
struct Request {
    worker: usize,
    conn: ConnKey,
    page: Page,
    head_only: bool,
}

/// A worker's end: send requests, take finished pages.
#[derive(Debug)]
pub struct AdminLink {
    requests: Sender<Request>,
    replies: Receiver<(ConnKey, Bytes)>,
}

impl AdminLink {
    /// Asks for `page` for `conn`; false if the admin thread is saturated
    /// or gone (the caller answers 503 itself).
    pub fn request(&self, worker: usize, conn: ConnKey, page: Page, head_only: bool) -> bool {
        self.requests
            .try_send(Request {
                worker,
                conn,
                page,
                head_only,
            })
            .is_ok()
    }

    /// A finished page, if any.
    pub fn reply(&self) -> Option<(ConnKey, Bytes)> {
        self.replies.try_recv().ok()
    }

    /// Whether finished pages wait.
    pub fn has_replies(&self) -> bool {
        !self.replies.is_empty()
    }
}

/// The admin thread's state.
pub struct Admin {
    requests: Receiver<Request>,
    replies: Vec<Sender<(ConnKey, Bytes)>>,
    bells: Vec<Arc<Doorbell>>,
    metrics: Arc<Metrics>,
    shutdown: Arc<AtomicBool>,
    started: Instant,
    demo: bool,
    /// The merged latency histogram at the start of the stats window, so
    /// the dashboard's percentiles are recent, not since start.
    window: Option<(Instant, hdrhistogram::Histogram<u64>)>,
}

/// How long the dashboard's latency percentiles look back, at least.
const STATS_WINDOW: Duration = Duration::from_secs(10);

/// The admin thread and one link per worker.
pub fn new(
    metrics: Arc<Metrics>,
    bells: Vec<Arc<Doorbell>>,
    shutdown: Arc<AtomicBool>,
    demo: bool,
) -> (Admin, Vec<AdminLink>) {
    let (req_tx, req_rx) = bounded(REQUESTS_MAX);
    let mut replies = Vec::with_capacity(bells.len());
    let mut links = Vec::with_capacity(bells.len());
    for _ in &bells {
        let (tx, rx) = bounded(REQUESTS_MAX);
        replies.push(tx);
        links.push(AdminLink {
            requests: req_tx.clone(),
            replies: rx,
        });
    }
    let admin = Admin {
        requests: req_rx,
        replies,
        bells,
        metrics,
        shutdown,
        started: Instant::now(),
        demo,
        window: None,
    };
    (admin, links)
}

impl Admin {
    /// Serves requests until shutdown.
    pub fn run(mut self) {
        while !self.shutdown.load(Ordering::Relaxed) {
            if let Ok(req) = self.requests.recv_timeout(IDLE_POLL) {
                self.serve(req);
            }
        }
    }

    /// Renders one page (each scrape sees current counters) and hands it to
    /// the worker that asked.
    fn serve(&mut self, req: Request) {
        let page = match req.page {
            Page::Metrics => http::respond(
                "200 OK",
                "text/plain; version=0.0.4",
                self.metrics.render().as_bytes(),
                req.head_only,
            ),
            Page::Stats => http::respond(
                "200 OK",
                "application/json",
                self.stats().as_bytes(),
                req.head_only,
            ),
        };
        if self.replies[req.worker].try_send((req.conn, page)).is_ok() {
            self.bells[req.worker].ring();
        }
    }
}

impl Admin {
    /// `/api/stats`: counters since start, and latency percentiles over
    /// the last 10 to 20 seconds.
    fn stats(&mut self) -> String {
        let now = Instant::now();
        let all = self.metrics.latency();
        let recent = match &self.window {
            Some((_, start)) if all.len() > start.len() => {
                let mut d = all.clone();
                // `start` is an earlier state of the same cumulative
                // histogram, so every count in it is also in `all`.
                d.subtract(start).ok().map(|_| d)
            }
            _ => None,
        };
        if self
            .window
            .as_ref()
            .is_none_or(|(t, _)| now.duration_since(*t) >= STATS_WINDOW)
        {
            self.window = Some((now, all.clone()));
        }
        let h = recent.as_ref().unwrap_or(&all);
        let q = |q: f64| {
            if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1000.0
            }
        };
        self.metrics.stats_json(
            self.started.elapsed().as_secs_f64(),
            self.demo,
            (q(0.5), q(0.99)),
        )
    }
}

/// How long one admin-port client may take to send its request.
const ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves `/metrics`, `/healthz` and `/readyz` on the admin address
/// (`--admin-listen`), one short request at a time, off every worker: the
/// port is for operators and scrapers, not the public.
pub fn serve_admin_port(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    lifecycle: Arc<crate::lifecycle::Lifecycle>,
    shutdown: Arc<AtomicBool>,
) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    while !shutdown.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => answer(stream, &metrics, &lifecycle),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => std::thread::sleep(IDLE_POLL),
        }
    }
}

fn answer(
    mut stream: std::net::TcpStream,
    metrics: &Metrics,
    lifecycle: &crate::lifecycle::Lifecycle,
) {
    let _ = stream.set_nonblocking(false);
    let deadline = Instant::now() + ADMIN_REQUEST_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let request = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(r) = http::parse(&buf) {
            break r;
        }
    };
    let head_only = http::is_head(&buf);
    let page = match request {
        http::Request::Respond(http::Response::Metrics) => http::respond(
            "200 OK",
            "text/plain; version=0.0.4",
            metrics.render().as_bytes(),
            head_only,
        ),
        http::Request::Respond(http::Response::Health) => {
            http::respond("200 OK", "text/plain; charset=utf-8", b"ok\n", head_only)
        }
        http::Request::Respond(http::Response::Ready) if lifecycle.is_ready() => {
            http::respond("200 OK", "text/plain; charset=utf-8", b"ready\n", head_only)
        }
        http::Request::Respond(http::Response::Ready) => http::respond(
            "503 Service Unavailable",
            "text/plain; charset=utf-8",
            b"not ready: starting or draining\n",
            head_only,
        ),
        _ => http::respond(
            "404 Not Found",
            "text/plain; charset=utf-8",
            b"the admin port serves /metrics, /healthz and /readyz\n",
            head_only,
        ),
    };
    let _ = stream.set_write_timeout(Some(ADMIN_REQUEST_TIMEOUT));
    let _ = stream.write_all(&page);
}

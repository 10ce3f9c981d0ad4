//! Starting and stopping an engine: binds the listeners, builds the rings
//! and doorbells, and spawns the ingest thread, the pinned workers and the
//! demo feed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::{Poll, Waker};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::ingest::{self, Ingest, IngestParts};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::ring::{CONTROL_RING_CAPACITY, Doorbell, RingBytes, WORKER_RING_CAPACITY};
use crate::worker::{self, Worker, WorkerParts};

/// Listen backlog: a reconnect storm of thousands of clients must not overflow it.
const BACKLOG: i32 = 4096;

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another process already serves the listen address (it would share
    /// the port through SO_REUSEPORT and take part of the connections).
    #[error("cannot listen on {addr}: another process already serves it")]
    InUse {
        /// The address.
        addr: SocketAddr,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// Creating a poll, waker or thread failed.
    #[error("cannot start the engine: {0}")]
    Io(#[from] std::io::Error),
}

/// A running engine.
#[derive(Debug)]
pub struct Engine {
    listen: SocketAddr,
    ingest: SocketAddr,
    admin: Option<SocketAddr>,
    workers: usize,
    shutdown: Arc<AtomicBool>,
    bells: Vec<Arc<Doorbell>>,
    threads: Vec<JoinHandle<()>>,
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
    open_connections: Arc<AtomicUsize>,
}

/// Binds `addr` without SO_REUSEPORT and without listening, and returns the
/// port it got: fails with [`StartError::InUse`] when any socket already
/// listens there, including another engine's SO_REUSEPORT listeners, which a
/// plain SO_REUSEPORT bind would silently join.
fn claim(addr: SocketAddr) -> Result<SocketAddr, StartError> {
    let make = || -> std::io::Result<SocketAddr> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.local_addr()?
            .as_socket()
            .ok_or_else(|| std::io::Error::other("not an IP address"))
    };
    make().map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            StartError::InUse { addr }
        } else {
            StartError::Bind { addr, source }
        }
    })
}

fn bind(addr: SocketAddr, reuse_port: bool) -> Result<std::net::TcpListener, StartError> {
    let make = || -> std::io::Result<std::net::TcpListener> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        if reuse_port {
            s.set_reuse_port(true)?;
        }
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        s.listen(BACKLOG)?;
        Ok(s.into())
    };
    make().map_err(|source| StartError::Bind { addr, source })
}

impl Engine {
    /// Binds and starts everything.
    ///
    /// # Errors
    /// A listener could not be bound, or the OS refused a poll or thread.
    pub fn start(config: Config) -> Result<Engine, StartError> {
        let config = Arc::new(config);
        crate::clock::now_ns(); // fix the epoch before any thread reads it
        let n = config.workers;
        // One SO_REUSEPORT listener per worker: the kernel spreads accepts
        // across workers with no handoff queue and no shared accept lock.
        // The claim ends before the listeners bind; a process that takes
        // the port in between makes the first bind below fail instead.
        let claimed = claim(config.listen)?;
        let first = bind(claimed, true)?;
        let listen = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..n {
            listeners.push(bind(listen, true)?);
        }
        let ingest_listener = bind(config.ingest, false)?;
        let ingest_addr = ingest_listener.local_addr()?;
        let admin_listener = match config.admin_listen {
            Some(addr) => Some(bind(addr, false)?),
            None => None,
        };
        let admin_addr = match &admin_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };

        let mut class_names: Vec<String> = config.classes.iter().map(|c| c.name.clone()).collect();
        class_names.push("default".into());
        let metrics = Arc::new(Metrics::with_classes(n, class_names));
        let shutdown = Arc::new(AtomicBool::new(false));
        let open_connections = Arc::new(AtomicUsize::new(0));
        let ips = Arc::new(crate::limits::IpTable::new(
            config.max_connections_per_ip,
            config.new_connections_per_ip_per_second,
        ));
        let lifecycle = Arc::new(Lifecycle::default());
        let ingest_poll = Poll::new()?;
        let ingest_bell = Doorbell::new(Waker::new(ingest_poll.registry(), ingest::WAKER_TOKEN)?);
        let index_html = Bytes::from(crate::demo::dashboard_html(ingest_addr));

        let mut polls = Vec::with_capacity(n);
        let mut worker_bells = Vec::with_capacity(n);
        for _ in 0..n {
            let poll = Poll::new()?;
            worker_bells.push(Doorbell::new(Waker::new(
                poll.registry(),
                worker::WAKER_TOKEN,
            )?));
            polls.push(poll);
        }
        let (admin, admin_links) = crate::admin::new(
            Arc::clone(&metrics),
            worker_bells.clone(),
            Arc::clone(&shutdown),
            config.demo,
        );
        let mut to_workers = Vec::with_capacity(n);
        let mut from_workers = Vec::with_capacity(n);
        let mut ring_bytes = Vec::with_capacity(n);
        let mut workers = Vec::with_capacity(n);
        for (id, ((listener, poll), admin)) in listeners
            .into_iter()
            .zip(polls)
            .zip(admin_links)
            .enumerate()
        {
            let bell = Arc::clone(&worker_bells[id]);
            let (tx, rx) = rtrb::RingBuffer::new(WORKER_RING_CAPACITY);
            let (ctx, crx) = rtrb::RingBuffer::new(CONTROL_RING_CAPACITY);
            to_workers.push(tx);
            from_workers.push(crx);
            let consumed = RingBytes::new();
            ring_bytes.push(Arc::clone(&consumed));
            workers.push(WorkerParts {
                ring_bytes: consumed,
                id,
                poll,
                listener,
                from_ingest: rx,
                to_ingest: ctx,
                ingest_bell: Arc::clone(&ingest_bell),
                bell,
                admin,
                metrics: Arc::clone(&metrics),
                shutdown: Arc::clone(&shutdown),
                config: Arc::clone(&config),
                open_connections: Arc::clone(&open_connections),
                ips: Arc::clone(&ips),
                index_html: index_html.clone(),
                lifecycle: Arc::clone(&lifecycle),
                ingest: None,
            });
        }
        // One worker: it drives the ingest loop itself, so a tick is read,
        // sequenced and written by one thread with no hand-off (perf/DEFAULTS.md).
        let ingest_on_worker = n == 1 && config.ingest_on_worker;
        let ingest = Ingest::new(IngestParts {
            on_worker: ingest_on_worker,
            poll: ingest_poll,
            listener: ingest_listener,
            to_workers,
            worker_bells: worker_bells.clone(),
            ring_bytes,
            from_workers,
            bell: Arc::clone(&ingest_bell),
            metrics: Arc::clone(&metrics),
            shutdown: Arc::clone(&shutdown),
            max_line: config.max_line_size,
            max_channels: config.max_channels,
            token: config.ingest_token.clone(),
            max_feeds: config.max_feed_connections,
            auth_timeout: config.handshake_timeout,
            idempotency_window_ns: config.idempotency_window.as_nanos() as u64,
            classes: config
                .classes
                .iter()
                .map(|c| crate::ingest::history::ClassRule {
                    pattern: c.pattern.as_str().into(),
                    size: c.history_size,
                    ttl_ns: c.history_ttl.as_nanos() as u64,
                    conflate: c.conflate,
                })
                .collect(),
            history: crate::ingest::history::HistoryLimits {
                size: config.history_size,
                ttl_ns: config.history_ttl.as_nanos() as u64,
                memory_max: config.history_memory_max,
            },
            tls: if config.ingest_tls {
                config.tls.clone()
            } else {
                None
            },
        })?;

        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let cores = if config.pin_workers.pins(n, cores.len(), !ingest_on_worker) {
            cores
        } else {
            Vec::new()
        };
        let mut threads = Vec::with_capacity(n + 3);
        if ingest_on_worker {
            workers[0].ingest = Some(Box::new(ingest));
        } else {
            threads.push(
                std::thread::Builder::new()
                    .name("tickwire-ingest".into())
                    .spawn(move || ingest.run())?,
            );
        }
        threads.push(
            std::thread::Builder::new()
                .name("tickwire-admin".into())
                .spawn(move || admin.run())?,
        );
        if let Some(l) = admin_listener {
            let (m, lc, stop) = (
                Arc::clone(&metrics),
                Arc::clone(&lifecycle),
                Arc::clone(&shutdown),
            );
            threads.push(
                std::thread::Builder::new()
                    .name("tickwire-admin-port".into())
                    .spawn(move || crate::admin::serve_admin_port(l, m, lc, stop))?,
            );
        }
        // Workers hold `Rc`s, so each is built on its own thread; startup
        // waits for every one to report.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        for (id, parts) in workers.into_iter().enumerate() {
            let core = (!cores.is_empty()).then(|| cores[id % cores.len()]);
            let ready = ready_tx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("tickwire-worker-{id}"))
                    .spawn(move || {
                        if let Some(core) = core {
                            core_affinity::set_for_current(core);
                        }
                        match Worker::new(parts) {
                            Ok(worker) => {
                                let _ = ready.send(Ok(()));
                                worker.run()
                            }
                            Err(e) => {
                                let _ = ready.send(Err(e));
                            }
                        }
                    })?,
            );
        }
        drop(ready_tx);
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    shutdown.store(true, Ordering::SeqCst);
                    return Err(StartError::Io(e));
                }
                Err(_) => {
                    shutdown.store(true, Ordering::SeqCst);
                    return Err(StartError::Io(std::io::Error::other(
                        "a worker died while starting",
                    )));
                }
            }
        }
        if config.demo {
            let stop = Arc::clone(&shutdown);
            let rate = config.demo_rate;
            threads.push(
                std::thread::Builder::new()
                    .name("tickwire-demo".into())
                    .spawn(move || crate::demo::run_feed(ingest_addr, rate, stop))?,
            );
        }
        lifecycle.set_ready();
        let mut bells = worker_bells;
        bells.push(ingest_bell);
        Ok(Engine {
            listen,
            ingest: ingest_addr,
            admin: admin_addr,
            workers: n,
            shutdown,
            bells,
            threads,
            metrics,
            lifecycle,
            open_connections,
        })
    }

    /// The WebSocket/HTTP address actually bound.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The admin address actually bound, when `--admin-listen` is given.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The ingest address actually bound.
    pub fn ingest_addr(&self) -> SocketAddr {
        self.ingest
    }

    /// Worker count.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The engine's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Starts a graceful drain: `/readyz` turns 503 at once and the workers
    /// close their clients with 1012 spread evenly over `window`.
    pub fn begin_drain(&self, window: Duration) {
        self.lifecycle.begin_drain(window.as_millis() as u64);
    }

    /// Connections open across all workers.
    pub fn open_connections(&self) -> usize {
        self.open_connections.load(Ordering::Relaxed)
    }

    /// A handle that can ask the engine to stop from another thread.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            shutdown: Arc::clone(&self.shutdown),
            bells: self.bells.clone(),
        }
    }

    /// Stops accepting, sends close 1001 to every client, flushes, and joins
    /// every thread; returns whether all finished within `timeout`.
    pub fn shutdown(self, timeout: Duration) -> bool {
        self.stopper().stop();
        let deadline = Instant::now() + timeout;
        for t in self.threads {
            while !t.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if !t.is_finished() {
                return false;
            }
            let _ = t.join();
        }
        true
    }

    /// Blocks until every thread ends (after a [`Stopper::stop`]).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Asks an engine to stop.
#[derive(Debug, Clone)]
pub struct Stopper {
    shutdown: Arc<AtomicBool>,
    bells: Vec<Arc<Doorbell>>,
}

impl Stopper {
    /// Sets the shutdown flag and wakes every loop.
    pub fn stop(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        for b in &self.bells {
            b.wake();
        }
    }
}

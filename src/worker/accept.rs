//! Accepting connections on the worker's own SO_REUSEPORT listener.
//!
//! The listener is edge-triggered: connections that wait in the backlog are
//! not reported again. So a turn that stopped at its batch cap accepts again
//! next turn, and an accept that failed for want of file descriptors
//! (EMFILE, ENFILE) is retried at every housekeeping tick until it succeeds.

use std::io;
use std::sync::atomic::Ordering;

use mio::net::TcpListener;
use mio::{Interest, Poll, Token};

use crate::ring::ConnKey;
use crate::transport::{TlsStream, Transport};
use crate::worker::Worker;
use crate::worker::conn::Conn;

/// Connections accepted per listener event per turn.
const ACCEPTS_PER_TURN: usize = 256;

/// What the listener needs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptState {
    /// Waiting for the listener's next readiness event.
    Idle,
    /// A full batch was taken: more may wait, accept again next turn.
    Again,
    /// Accepting failed (out of descriptors): retry at housekeeping.
    Backoff,
}

/// The listener and its state.
#[derive(Debug)]
pub struct Acceptor {
    listener: Option<TcpListener>,
    /// What to do next.
    pub state: AcceptState,
}

impl Acceptor {
    /// Registers `listener` with `poll` under `token`.
    ///
    /// # Errors
    /// Registration failed.
    pub fn new(listener: std::net::TcpListener, poll: &Poll, token: Token) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, token, Interest::READABLE)?;
        Ok(Acceptor {
            listener: Some(listener),
            state: AcceptState::Idle,
        })
    }

    /// Stops accepting (shutdown).
    pub fn close(&mut self, poll: &Poll) {
        if let Some(mut l) = self.listener.take() {
            let _ = poll.registry().deregister(&mut l);
        }
        self.state = AcceptState::Idle;
    }
}

impl Worker {
    /// Accepts up to a batch of connections.
    pub(crate) fn accept(&mut self) {
        let was = self.acceptor.state;
        self.acceptor.state = AcceptState::Idle;
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(listener) = self.acceptor.listener.as_mut() else {
                return;
            };
            let (stream, _) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE/ENFILE: the connections stay in the backlog.
                    if was != AcceptState::Backoff {
                        eprintln!(
                            "tickwire: worker {} accept failed: {e} (retrying every {} ms)",
                            self.id,
                            super::HOUSEKEEPING.as_millis()
                        );
                    }
                    self.stats.counters.accept_errors += 1;
                    self.acceptor.state = AcceptState::Backoff;
                    return;
                }
            };
            self.admit(stream);
        }
        self.acceptor.state = AcceptState::Again;
    }

    fn admit(&mut self, stream: mio::net::TcpStream) {
        if self.open_connections.fetch_add(1, Ordering::Relaxed) >= self.config.max_connections {
            self.open_connections.fetch_sub(1, Ordering::Relaxed);
            self.metrics
                .refusals
                .limit(crate::limits::Limit::Connections);
            return;
        }
        let _ = stream.set_nodelay(true);
        if self.config.socket_send_buffer > 0 {
            // A capped kernel buffer keeps a slow reader's backlog in our
            // conflating queue instead of megabytes of stale kernel data.
            let _ = socket2::SockRef::from(&stream)
                .set_send_buffer_size(self.config.socket_send_buffer);
        }
        if self.config.socket_notsent_lowat > 0 {
            // Writes block once this much waits unsent in the kernel, so a
            // lagging client's updates conflate in our queue instead.
            let _ = socket2::SockRef::from(&stream)
                .set_tcp_notsent_lowat(self.config.socket_notsent_lowat as u32);
        }
        let mut transport = match &self.config.tls {
            None => Transport::Plain(stream),
            // Each accept takes the configuration current now: a reload
            // applies to new handshakes, never to open connections.
            Some(tls) => match TlsStream::new(tls.load_full(), stream) {
                Ok(t) => Transport::Tls(Box::new(t)),
                Err(_) => {
                    self.open_connections.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
            },
        };
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if self
            .poll
            .registry()
            .register(
                &mut transport,
                Token(slot),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            self.open_connections.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        self.next_generation = self.next_generation.wrapping_add(1);
        let key = ConnKey {
            slot: slot as u32,
            generation: self.next_generation,
        };
        entry.insert(Conn::new(transport, key, self.now_ms));
        self.stats.counters.accepted += 1;
    }
}

//! One client connection on a worker: its transport, where it is in its
//! life, its outbound queue, its WebSocket input state and its
//! subscriptions. The worker's parts act on it; it holds no logic of the
//! event loop itself.

use crate::auth::ConnAuth;
use crate::limits::MessageBucket;
use crate::protocol::ws::Reassembly;
use crate::ring::ConnKey;
use crate::transport::Transport;
use crate::worker::conflate::{EntryRef, OutQueue};
use crate::worker::subscriptions::Subscriptions;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the HTTP request head.
    Handshake {
        /// When the connection was accepted (ms): the deadline counts from
        /// here, not from the last byte, so trickling bytes cannot hold it.
        since_ms: u64,
    },
    /// WebSocket open.
    Open,
    /// A publish request went to the ingest thread; its answer comes back
    /// on the ring. Input that arrives meanwhile (pipelined requests) waits
    /// unparsed, so answers keep the order of the requests.
    Publishing {
        /// When the request went out (ms).
        since_ms: u64,
    },
    /// An HTTP response is being rendered off the worker (the metrics
    /// page); it closes like `Closing` once it is queued.
    Responding {
        /// When the request arrived (ms).
        since_ms: u64,
    },
    /// A final response or close frame is queued: write it, then end the
    /// stream. Input is read and dropped.
    Closing {
        /// When it started closing (ms on the worker clock).
        since_ms: u64,
    },
    /// Everything is written and our side shut down; reading (and dropping)
    /// until the peer closes too, so unread input cannot turn the close into
    /// a reset that discards the last frames.
    Lingering {
        /// When the write side was shut (ms).
        since_ms: u64,
    },
}

impl Phase {
    /// Closing or lingering: no more requests are served.
    pub fn is_ending(self) -> bool {
        matches!(
            self,
            Phase::Responding { .. } | Phase::Closing { .. } | Phase::Lingering { .. }
        )
    }
}

/// What a connection serves, beyond where it is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// HTTP requests, then WebSocket subscriptions.
    Standard,
    /// The conformance echo endpoint: messages are echoed, not requests.
    Echo,
    /// An SSE or long-poll stream: the guard holds how its frames are
    /// written. Kept here so that a write need not load the guard (an
    /// allocation of its own, a cache miss per client per pass) to learn
    /// that a WebSocket client has none.
    Stream,
    /// A WebSocket client that asked for batched messages (`?batch=1`):
    /// the guard holds its staging buffer (see [`crate::worker::batch`]).
    Batched,
}

/// Input that did not make a whole request head or frame yet, and a
/// fragmented message: allocated only while it holds something.
#[derive(Debug, Default)]
pub struct PartialInput {
    /// Unparsed bytes (a partial frame or request head).
    pub bytes: Vec<u8>,
    /// A fragmented message being reassembled.
    pub message: Reassembly,
}

impl PartialInput {
    /// Whether it holds nothing (then the connection frees it).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.message.opcode == 0 && self.message.message.is_empty()
    }
}

/// Access state of an upgraded connection: the address it counts against,
/// its message allowance, and (attached apart) who it is and the HTTP
/// stream of an SSE or long-poll client. Boxed: only connections under some
/// limit or authentication, or on an HTTP stream, carry one.
#[derive(Debug, Default)]
pub struct Guard {
    /// The client address admitted to the per-address table (released at
    /// close).
    pub ip: Option<std::net::IpAddr>,
    /// Messages per second.
    pub bucket: MessageBucket,
    /// Authentication and the HTTP stream. Most clients have neither (the
    /// default: per-address limit and message rate, no authentication,
    /// WebSocket), so they are boxed apart: the guard is then 56 bytes, one
    /// 64-byte malloc chunk instead of 96 (the idle-connection budget).
    attached: Option<Box<Attached>>,
}

/// What some guards carry: authentication, and how an HTTP stream or a
/// batched WebSocket client is written.
#[derive(Debug, Default)]
struct Attached {
    auth: ConnAuth,
    /// How its frames are written, when not as they are. Set and taken
    /// through [`Conn`], whose `endpoint` says which it is.
    framer: Framer,
}

/// The state a connection's writes need beyond its queue: at most one of an
/// HTTP stream and batched messages. Boxed apart: an authenticated WebSocket
/// client would otherwise carry their bytes.
#[derive(Debug, Default)]
enum Framer {
    /// Frames go out as they are.
    #[default]
    None,
    /// On `/sse` or `/poll`: how its frames are written for HTTP.
    Http(Box<crate::worker::stream::HttpStream>),
    /// With `?batch=1`: the staging buffer of its batched messages.
    Batched(Box<crate::worker::batch::WsBatch>),
}

/// How a connection's queue reaches its transport.
pub enum Framing<'a> {
    /// Its frames as they are (WebSocket, echo, HTTP answers).
    Frames,
    /// Framed for an HTTP stream.
    Http(&'a mut crate::worker::stream::HttpStream),
    /// Batched WebSocket messages.
    Batched(&'a mut crate::worker::batch::WsBatch),
}

/// The authentication state of a connection with no guard, or a guard with
/// nothing attached.
const AUTH_OFF: ConnAuth = ConnAuth::Off;

impl Guard {
    /// Authentication state (`Off` when none is attached).
    pub fn auth(&self) -> &ConnAuth {
        self.attached.as_ref().map_or(&AUTH_OFF, |a| &a.auth)
    }

    /// The authentication state to update; `None` when it is `Off`
    /// (nothing attached).
    pub fn auth_mut(&mut self) -> Option<&mut ConnAuth> {
        self.attached.as_mut().map(|a| &mut a.auth)
    }

    /// Sets the authentication state; `Off` on a guard with nothing
    /// attached allocates nothing.
    pub fn set_auth(&mut self, auth: ConnAuth) {
        if auth == ConnAuth::Off && self.attached.is_none() {
            return;
        }
        self.attached.get_or_insert_with(Box::default).auth = auth;
    }

    fn stream(&self) -> Option<&crate::worker::stream::HttpStream> {
        match &self.attached.as_ref()?.framer {
            Framer::Http(s) => Some(s),
            _ => None,
        }
    }
}

/// One connection. Kept small: an idle connection costs its socket, this
/// struct and its slab slot; buffers are allocated only while they hold
/// something.
#[derive(Debug)]
pub struct Conn {
    /// The client's byte stream.
    pub transport: Transport,
    /// Slab slot and generation.
    pub key: ConnKey,
    /// Life phase.
    pub phase: Phase,
    /// Outbound frames.
    pub out: OutQueue,
    /// Partial input, if any.
    pub input: Option<Box<PartialInput>>,
    /// Channels and reply order.
    pub subs: Subscriptions<EntryRef>,
    /// Last time anything arrived (ms on the worker's clock).
    pub last_rx_ms: u64,
    /// Last ping sent (ms).
    pub last_ping_ms: u64,
    /// Since when the socket has taken no bytes while frames wait (ms;
    /// non-zero so the option costs no tag).
    pub stalled_since_ms: Option<std::num::NonZeroU64>,
    /// The refresh round of the write pass under way whose updates this
    /// connection already has (0: none; see [`crate::worker::refresh`]).
    pub pulled: u16,
    /// In the worker's dirty list this turn.
    pub dirty: bool,
    /// The socket returned WouldBlock: wait for a writable event.
    pub write_blocked: bool,
    /// Reading was cut short for fairness: read again next turn.
    pub read_pending: bool,
    /// Input is not read while too many replies wait unread by the client;
    /// a flush that drains them resumes it.
    pub read_paused: bool,
    /// What it serves: one byte, read on every write.
    pub endpoint: Endpoint,
    /// An HTTP request was answered here: waiting for the next one on a
    /// keep-alive connection is not a handshake that timed out.
    pub answered: bool,
    /// Limits, authentication and the HTTP stream, from the upgrade on.
    pub guard: Option<Box<Guard>>,
}

impl Conn {
    /// A new connection in the handshake phase.
    pub fn new(transport: Transport, key: ConnKey, now_ms: u64) -> Self {
        Conn {
            transport,
            key,
            phase: Phase::Handshake { since_ms: now_ms },
            out: OutQueue::default(),
            input: None,
            subs: Subscriptions::default(),
            last_rx_ms: now_ms,
            last_ping_ms: now_ms,
            stalled_since_ms: None,
            pulled: 0,
            dirty: false,
            write_blocked: false,
            read_pending: false,
            read_paused: false,
            endpoint: Endpoint::Standard,
            answered: false,
            guard: None,
        }
    }

    /// Queues a reply made on the worker, behind the answers to subscribe
    /// requests still in flight (so replies keep the order of the requests).
    pub fn reply(&mut self, frame: EntryRef) {
        if self.subs.must_hold() {
            let n = frame.bytes.len();
            self.subs.hold(frame, n);
        } else {
            self.out.push_control(frame);
        }
    }

    /// The SSE or long-poll stream, if the client is on one.
    #[inline]
    pub fn stream(&self) -> Option<&crate::worker::stream::HttpStream> {
        if self.endpoint != Endpoint::Stream {
            return None;
        }
        self.guard.as_ref()?.stream()
    }

    /// How the queue is written, the queue and the transport: what
    /// `write_out` needs, split borrows.
    #[inline]
    pub fn write_parts(&mut self) -> (Framing<'_>, &mut OutQueue, &mut Transport) {
        debug_assert_eq!(
            self.endpoint == Endpoint::Stream,
            self.guard.as_ref().is_some_and(|g| g.stream().is_some()),
            "the endpoint mirrors the guard's stream"
        );
        let framing = match self.endpoint {
            Endpoint::Standard | Endpoint::Echo => Framing::Frames,
            Endpoint::Stream | Endpoint::Batched => {
                let a = self
                    .guard
                    .as_deref_mut()
                    .and_then(|g| g.attached.as_deref_mut())
                    .expect("the endpoint mirrors the guard");
                match &mut a.framer {
                    Framer::Http(s) => Framing::Http(s),
                    Framer::Batched(b) => Framing::Batched(b),
                    Framer::None => unreachable!("the endpoint mirrors the guard"),
                }
            }
        };
        (framing, &mut self.out, &mut self.transport)
    }

    /// Writes this WebSocket client's messages batched (`?batch=1`), after
    /// `head` (the 101 response).
    pub fn set_batched(&mut self, head: &[u8]) {
        let guard = self.guard.get_or_insert_with(Box::default);
        guard.attached.get_or_insert_with(Box::default).framer =
            Framer::Batched(Box::new(crate::worker::batch::WsBatch::new(head)));
        self.endpoint = Endpoint::Batched;
    }

    /// Puts the client on an HTTP stream (SSE or long-poll).
    pub fn set_stream(&mut self, s: crate::worker::stream::HttpStream) {
        let guard = self.guard.get_or_insert_with(Box::default);
        guard.attached.get_or_insert_with(Box::default).framer = Framer::Http(Box::new(s));
        self.endpoint = Endpoint::Stream;
    }

    /// Takes the client off its HTTP stream.
    pub fn take_stream(&mut self) -> Option<Box<crate::worker::stream::HttpStream>> {
        if self.endpoint == Endpoint::Stream {
            self.endpoint = Endpoint::Standard;
        }
        let a = self.guard.as_mut()?.attached.as_mut()?;
        match std::mem::take(&mut a.framer) {
            Framer::Http(s) => Some(s),
            other => {
                a.framer = other;
                None
            }
        }
    }

    /// Authentication state (`Off` without a guard).
    pub fn auth(&self) -> &ConnAuth {
        self.guard.as_ref().map_or(&AUTH_OFF, |g| g.auth())
    }

    /// A subscribe answer went out: queue the local replies that waited for it.
    pub fn release_held(&mut self) {
        let out = &mut self.out;
        self.subs.answered(|f| out.push_control(f));
    }

    /// Reply bytes waiting for the client: queued and held.
    pub fn reply_bytes(&self) -> usize {
        self.out.control_bytes() + self.subs.held_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> (Conn, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (ours, _) = l.accept().unwrap();
        let tcp = mio::net::TcpStream::from_std(ours);
        let key = ConnKey {
            slot: 0,
            generation: 1,
        };
        (Conn::new(Transport::Plain(tcp), key, 0), peer)
    }

    #[test]
    fn a_connection_is_written_one_way_and_the_endpoint_says_which() {
        let (mut c, _peer) = conn();
        assert!(matches!(c.write_parts().0, Framing::Frames));
        let s = crate::worker::stream::HttpStream::new(
            crate::protocol::http::StreamKind::Sse,
            &["AAPL".into()],
            &[],
            0,
            false,
        );
        c.set_stream(s);
        assert_eq!(c.endpoint, Endpoint::Stream);
        assert!(c.stream().is_some());
        assert!(matches!(c.write_parts().0, Framing::Http(_)));
        assert!(c.take_stream().is_some());
        assert_eq!(c.endpoint, Endpoint::Standard);
        assert!(c.stream().is_none() && c.take_stream().is_none());
        assert!(matches!(c.write_parts().0, Framing::Frames));
        // Batched: not a stream, and taking a stream leaves the batch.
        c.set_batched(b"HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert_eq!(c.endpoint, Endpoint::Batched);
        assert!(c.stream().is_none() && c.take_stream().is_none());
        assert!(matches!(c.write_parts().0, Framing::Batched(_)));
    }

    #[test]
    fn an_idle_connection_state_stays_small() {
        // Part of the 512-bytes-per-idle-connection budget (README, S5).
        let size = std::mem::size_of::<Conn>();
        eprintln!("Conn is {size} bytes");
        assert!(size <= 200, "Conn grew to {size} bytes");
        // Most upgraded clients carry a guard (per-address limit, message
        // allowance): its malloc chunk counts as much as the struct. At 56
        // bytes or less it takes a 64-byte chunk (glibc: size + 8, rounded
        // up to 16); at 80 it took 96.
        let guard = std::mem::size_of::<Guard>();
        eprintln!("Guard is {guard} bytes");
        assert!(guard <= 56, "Guard grew to {guard} bytes");
        // An authenticated or streaming client's extra: one framer at a time.
        let attached = std::mem::size_of::<Attached>();
        eprintln!("Attached is {attached} bytes");
        assert!(attached <= 32, "Attached grew to {attached} bytes");
    }
}

//! Client input: reads a connection's socket, parses the HTTP request head
//! or WebSocket frames (sans-io parsers in [`crate::protocol`]), and acts on
//! the events: requests, pings, close.

use std::io::{self, Read};

use bytes::Bytes;

use crate::limits::Limit;
use crate::protocol::client;
use crate::protocol::client::ErrorCode;
use crate::protocol::frame::{self, CloseCode};
use crate::protocol::http::{self, Request};
use crate::protocol::ws::{self, Violation, WsEvent};
use crate::worker::Worker;
use crate::worker::conflate::Entry;
use crate::worker::conn::{Conn, Endpoint, PartialInput, Phase};
use crate::worker::guard;
use crate::worker::timers;

/// Read buffer shared by all connections of a worker: one socket read's worth.
pub const READ_SCRATCH: usize = 64 * 1024;
/// Reads per connection per turn before others get a go (fairness).
const READS_PER_TURN: usize = 8;
/// Replies (acks, errors, pongs) waiting unread, in multiples of the outbound
/// budget: past 1x the client's input is no longer read until they drain;
/// past this, reached within one read, the client is cut (1008): it sends
/// requests faster than it reads the answers.
const CONTROL_BUDGETS_MAX: usize = 4;

/// A client event copied out of the read buffer.
#[derive(Debug)]
pub enum OwnedEvent {
    /// A complete text message.
    Text(Vec<u8>),
    /// A complete binary message (its payload is kept only on the
    /// conformance echo endpoint; empty, unallocated, elsewhere).
    Binary(Vec<u8>),
    /// A ping with its payload.
    Ping(Bytes),
    /// A pong.
    Pong,
    /// A close frame with its code (1005: none).
    Close(u16),
    /// An HTTP stream (SSE, long-poll) opened: subscribe it.
    Subscribe(Vec<Box<str>>, Vec<Option<crate::ingest::history::Position>>),
}

impl Worker {
    /// Reads a connection until its socket is drained or its fairness share
    /// is used, acting on what it sent.
    pub(crate) fn read(&mut self, slot: u32) {
        let budget = self.config.outbound_budget;
        if self
            .conns
            .get(slot as usize)
            .is_some_and(|c| matches!(c.phase, Phase::Handshake { .. }) && c.input.is_some())
        {
            // Requests pipelined behind an answered one (long-poll).
            self.pump_http(slot);
        }
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.conns.get_mut(slot as usize) else {
                return;
            };
            conn.read_pending = false;
            let ending = conn.phase.is_ending();
            if conn.phase == Phase::Open
                && conn
                    .stream()
                    .is_some_and(|s| s.kind == http::StreamKind::Poll)
                && conn
                    .input
                    .as_ref()
                    .is_some_and(|p| p.bytes.len() > http::MAX_REQUEST_HEAD)
            {
                // A pipelined request waits for the poll's answer.
                conn.read_paused = true;
                return;
            }
            if matches!(conn.phase, Phase::Publishing { .. })
                && conn.input.as_ref().is_some_and(|p| {
                    p.bytes.len() > http::MAX_REQUEST_HEAD + self.config.max_publish_body
                })
            {
                // Pipelined requests wait for the answer in flight: leave
                // the rest in the socket until it comes.
                conn.read_paused = true;
                return;
            }
            if !ending && conn.reply_bytes() > budget {
                // Its replies are not being read: leave its requests in the
                // socket (TCP backpressure) until the flush resumes reading.
                conn.read_paused = true;
                return;
            }
            let n = match conn.transport.read(&mut self.scratch) {
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
            conn.last_rx_ms = self.now_ms;
            if ending {
                // Dropped: only our last frames matter now.
                continue;
            }
            match conn.input.take() {
                None => {
                    let used = self.input(slot, n, None);
                    if used < n {
                        let conn = &mut self.conns[slot as usize];
                        let p = conn.input.get_or_insert_with(Box::default);
                        p.bytes.extend_from_slice(&self.scratch[used..n]);
                    }
                }
                Some(mut p) => {
                    p.bytes.extend_from_slice(&self.scratch[..n]);
                    let used = self.input(slot, 0, Some(&mut *p));
                    p.bytes.drain(..used);
                    if p.bytes.capacity() > READ_SCRATCH && p.bytes.len() < READ_SCRATCH {
                        p.bytes.shrink_to(READ_SCRATCH);
                    }
                    // Partial input is rare; an idle connection holds no buffer.
                    if !p.is_empty() {
                        self.conns[slot as usize].input = Some(p);
                    }
                }
            }
            self.apply_events(slot);
            self.pump_http(slot);
        }
        if let Some(conn) = self.conns.get_mut(slot as usize) {
            conn.read_pending = true;
            self.read_retry.push(slot);
        }
    }

    /// HTTP keep-alive: parses the requests already buffered after one was
    /// answered (pipelining), until one is incomplete or waits for an
    /// answer.
    pub(crate) fn pump_http(&mut self, slot: u32) {
        loop {
            let Some(conn) = self.conns.get_mut(slot as usize) else {
                return;
            };
            if !matches!(conn.phase, Phase::Handshake { .. }) {
                return;
            }
            let Some(mut p) = conn.input.take() else {
                return;
            };
            let used = self.input(slot, 0, Some(&mut *p));
            p.bytes.drain(..used);
            if let Some(conn) = self.conns.get_mut(slot as usize)
                && !p.is_empty()
            {
                conn.input = Some(p);
            }
            self.apply_events(slot);
            if used == 0 {
                return;
            }
        }
    }

    /// Parses input bytes (the first `n` of the scratch buffer, or the
    /// connection's partial input) and returns the bytes consumed. Events
    /// land in `self.events`.
    fn input(&mut self, slot: u32, n: usize, partial: Option<&mut PartialInput>) -> usize {
        let Worker {
            conns,
            scratch,
            events,
            config,
            dirty,
            stats,
            pages,
            admin,
            now_ms,
            index,
            link,
            id,
            lifecycle,
            ips,
            metrics,
            ..
        } = self;
        let conn = &mut conns[slot as usize];
        let (data, message): (&mut [u8], _) = match partial {
            None => (&mut scratch[..n], None),
            Some(p) => (&mut p.bytes[..], Some(&mut p.message)),
        };
        let mut used = 0;
        if matches!(conn.phase, Phase::Publishing { .. }) {
            // Pipelined input waits for the answer in flight.
            return 0;
        }
        if conn.phase == Phase::Open
            && let Some(s) = conn.stream()
        {
            return match s.kind {
                // An event stream only sends; a client has nothing to say.
                http::StreamKind::Sse => data.len(),
                // The next request waits for this poll's answer.
                http::StreamKind::Poll => 0,
            };
        }
        if matches!(conn.phase, Phase::Handshake { .. }) {
            let parsed = match http::parse(data) {
                // New clients during a drain would only be cut again.
                Some(Request::Upgrade { .. } | Request::Stream(_)) if lifecycle.is_draining() => {
                    Some(Request::Respond(http::Response::Unavailable(
                        "server draining: reconnect later",
                    )))
                }
                // The admin port serves it instead.
                Some(Request::Respond(http::Response::Metrics))
                    if config.admin_listen.is_some() =>
                {
                    Some(Request::Respond(http::Response::NotFound))
                }
                Some(Request::Respond(http::Response::Ready)) if !lifecycle.is_ready() => {
                    Some(Request::Respond(http::Response::Unavailable(
                        "not ready: starting or draining",
                    )))
                }
                p => p,
            };
            match parsed {
                None => return 0,
                Some(Request::Publish(h)) => {
                    let (status, why, close) =
                        if guard::operator_allowed(conn, h.bearer.as_deref(), &h.forwarded, config)
                        {
                            ("", "", false)
                        } else if config.api_key.is_some() {
                            ("401 Unauthorized", "bad or missing API key", true)
                        } else {
                            (
                                "403 Forbidden",
                                "publishing from another host needs an API key (api_key_file)",
                                true,
                            )
                        };
                    let (status, why) = if close {
                        (status, why)
                    } else if h.body_len > config.max_publish_body {
                        ("413 Payload Too Large", "body over max_publish_body")
                    } else {
                        ("", "")
                    };
                    if !status.is_empty() {
                        stats.counters.http_requests += 1;
                        stats.counters.http_rejects += 1;
                        let body = crate::protocol::publish::refusal_body(
                            &crate::protocol::publish::Refusal {
                                error: why.into(),
                                index: 0,
                            },
                        );
                        let bytes =
                            http::respond_keep_alive(status, "application/json", &body, true);
                        answer_and_close(conn, bytes, index, link, *now_ms, dirty, slot);
                        return data.len();
                    }
                    let end = h.head_len + h.body_len;
                    if data.len() < end {
                        // The body is still coming.
                        return 0;
                    }
                    stats.counters.http_requests += 1;
                    match crate::protocol::publish::parse_body(
                        &data[h.head_len..end],
                        config.publish_batch_max,
                    ) {
                        Err(r) => {
                            stats.counters.http_rejects += 1;
                            let body = crate::protocol::publish::refusal_body(&r);
                            let bytes = http::respond_keep_alive(
                                "400 Bad Request",
                                "application/json",
                                &body,
                                h.close,
                            );
                            conn.out.push_control(Entry::control(bytes));
                            if h.close {
                                timers::enter_closing(conn, index, link, *now_ms);
                            } else {
                                conn.phase = Phase::Handshake { since_ms: *now_ms };
                                conn.answered = true;
                            }
                            dirty.mark(conn, slot);
                        }
                        Ok(items) => {
                            link.publish(conn.key, items, h.close);
                            conn.phase = Phase::Publishing { since_ms: *now_ms };
                        }
                    }
                    return end;
                }
                Some(Request::Channels(q)) => {
                    stats.counters.http_requests += 1;
                    let allowed =
                        guard::operator_allowed(conn, q.bearer.as_deref(), &q.forwarded, config);
                    if !allowed {
                        stats.counters.http_rejects += 1;
                        let resp = if config.api_key.is_some() {
                            http::Response::Unauthorized("bad or missing API key")
                        } else {
                            http::Response::Forbidden("loopback only without an API key")
                        };
                        let bytes = http::render(resp, q.head_only, pages);
                        answer_and_close(conn, bytes, index, link, *now_ms, dirty, slot);
                        return data.len();
                    }
                    timers::enter_closing(conn, index, link, *now_ms);
                    conn.phase = Phase::Responding { since_ms: *now_ms };
                    link.channels(conn.key, q.cursor, q.limit, q.head_only);
                    return data.len();
                }
                Some(Request::History(q)) => {
                    stats.counters.http_requests += 1;
                    let refused = guard::check_history(&q, config, &metrics.refusals);
                    if let Some(resp) = refused {
                        let bytes = http::render(resp, q.head_only, pages);
                        answer_and_close(conn, bytes, index, link, *now_ms, dirty, slot);
                        return data.len();
                    }
                    // The ingest thread owns the history: it renders the page.
                    timers::enter_closing(conn, index, link, *now_ms);
                    conn.phase = Phase::Responding { since_ms: *now_ms };
                    link.history(conn.key, q);
                    return data.len();
                }
                Some(Request::Stream(q)) => {
                    stats.counters.http_requests += 1;
                    let checked = guard::check_upgrade(
                        conn,
                        &q.meta,
                        config,
                        ips,
                        &metrics.refusals,
                        *now_ms,
                    )
                    .and_then(|g| {
                        conn.guard = g;
                        if matches!(conn.auth(), crate::auth::ConnAuth::Waiting { .. }) {
                            // A stream cannot send `{"op":"auth"}` later.
                            metrics.refusals.auth(&crate::auth::AuthError::Missing);
                            return Err(http::Response::Unauthorized(
                                "missing token: pass ?token= or Authorization: Bearer",
                            ));
                        }
                        if q.channels.len() > config.max_channels_per_connection {
                            metrics.refusals.limit(Limit::SubscriptionsPerConnection);
                            return Err(http::Response::BadRequest(
                                "more channels than max_channels_per_connection",
                            ));
                        }
                        Ok(())
                    });
                    if let Err(resp) = checked {
                        stats.counters.http_rejects += 1;
                        let bytes = http::render(resp, false, pages);
                        answer_and_close(conn, bytes, index, link, *now_ms, dirty, slot);
                        return data.len();
                    }
                    let since = q
                        .channels
                        .iter()
                        .map(|c| q.since.iter().find(|e| e.ch == *c).map(|e| e.pos.clone()))
                        .collect();
                    let max_ms = config.poll_timeout.as_millis() as u64;
                    let wait_ms = q
                        .timeout_s
                        .map_or(max_ms, |t| t.saturating_mul(1000).min(max_ms));
                    conn.set_stream(crate::worker::stream::HttpStream::new(
                        q.kind,
                        &q.channels,
                        &q.since,
                        now_ms.saturating_add(wait_ms),
                        q.close,
                    ));
                    conn.phase = Phase::Open;
                    conn.last_ping_ms = *now_ms;
                    events.push(OwnedEvent::Subscribe(q.channels, since));
                    dirty.mark(conn, slot);
                    return match q.kind {
                        http::StreamKind::Sse => data.len(),
                        http::StreamKind::Poll => q.head_len,
                    };
                }
                Some(Request::Echo { accept, head_len }) if config.conformance_echo => {
                    conn.out
                        .push_control(Entry::control(http::switching_protocols(&accept)));
                    conn.phase = Phase::Open;
                    conn.endpoint = Endpoint::Echo;
                    conn.last_ping_ms = *now_ms;
                    used = head_len;
                    dirty.mark(conn, slot);
                }
                Some(Request::Echo { .. }) => {
                    stats.counters.http_requests += 1;
                    stats.counters.http_rejects += 1;
                    let bytes = http::render(http::Response::NotFound, false, pages);
                    answer_and_close(conn, bytes, index, link, *now_ms, dirty, slot);
                    return data.len();
                }
                Some(Request::Upgrade {
                    accept,
                    head_len,
                    meta,
                }) => {
                    match guard::check_upgrade(conn, &meta, config, ips, &metrics.refusals, *now_ms)
                    {
                        Ok(g) => conn.guard = g,
                        Err(resp) => {
                            stats.counters.http_requests += 1;
                            let bytes = http::render(resp, false, pages);
                            answer_and_close(conn, bytes, index, link, *now_ms, dirty, slot);
                            return data.len();
                        }
                    }
                    let head = http::switching_protocols(&accept);
                    if meta.batch {
                        // The 101 is staged ahead of the batched messages.
                        conn.set_batched(&head);
                    } else {
                        conn.out.push_control(Entry::control(head));
                    }
                    conn.phase = Phase::Open;
                    conn.last_ping_ms = *now_ms;
                    used = head_len;
                    dirty.mark(conn, slot);
                }
                Some(Request::Respond(resp)) => {
                    stats.counters.http_requests += 1;
                    if http::is_reject(resp) {
                        stats.counters.http_rejects += 1;
                    }
                    let head_only = http::is_head(data);
                    let page = match resp {
                        http::Response::Metrics => Some(crate::admin::Page::Metrics),
                        http::Response::Stats => Some(crate::admin::Page::Stats),
                        _ => None,
                    };
                    if let Some(page) = page
                        && admin.request(*id, conn.key, page, head_only)
                    {
                        // The admin thread renders it; queued when it comes back.
                        timers::enter_closing(conn, index, link, *now_ms);
                        conn.phase = Phase::Responding { since_ms: *now_ms };
                        return data.len();
                    }
                    let bytes = http::render(resp, head_only, pages);
                    answer_and_close(conn, bytes, index, link, *now_ms, dirty, slot);
                    return data.len();
                }
            }
        }
        let mut spare = ws::Reassembly::default();
        let message = match message {
            Some(m) => m,
            None => &mut spare,
        };
        let echo = conn.endpoint == Endpoint::Echo;
        let result = ws::read_frames(
            &mut data[used..],
            config.max_frame_size,
            &mut message.message,
            &mut message.opcode,
            |e| {
                events.push(match e {
                    WsEvent::Text(t) => OwnedEvent::Text(t.to_vec()),
                    WsEvent::Binary(b) if echo => OwnedEvent::Binary(b.to_vec()),
                    WsEvent::Binary(_) => OwnedEvent::Binary(Vec::new()),
                    WsEvent::Ping(p) => OwnedEvent::Ping(Bytes::copy_from_slice(p)),
                    WsEvent::Pong => OwnedEvent::Pong,
                    WsEvent::Close(c) => OwnedEvent::Close(c),
                })
            },
        );
        let consumed = match result {
            Ok(k) => used + k,
            Err(v) => {
                let len = data.len();
                if spare.opcode != 0 || !spare.message.is_empty() {
                    self.keep_reassembly(slot, spare);
                }
                self.violation(slot, v);
                return len;
            }
        };
        if spare.opcode != 0 || !spare.message.is_empty() {
            // A fragmented message began in a read that had no partial input.
            self.keep_reassembly(slot, spare);
        }
        consumed
    }

    fn keep_reassembly(&mut self, slot: u32, message: ws::Reassembly) {
        let conn = &mut self.conns[slot as usize];
        let p = conn.input.get_or_insert_with(Box::default);
        p.message = message;
    }

    fn violation(&mut self, slot: u32, v: Violation) {
        self.stats.counters.protocol_closes += 1;
        if v.code == CloseCode::TooBig {
            self.metrics.refusals.limit(Limit::FrameTooLarge);
        }
        // Events parsed before the violation still count (requests, echoes,
        // pongs); the close follows them.
        self.apply_events(slot);
        if self
            .conns
            .get(slot as usize)
            .is_none_or(|c| c.phase != Phase::Open)
        {
            return;
        }
        let Worker {
            conns,
            index,
            link,
            dirty,
            now_ms,
            ..
        } = self;
        let conn = &mut conns[slot as usize];
        timers::send_close(conn, index, link, *now_ms, v.code, v.reason);
        dirty.mark(conn, slot);
    }

    /// Acts on the client events the last read produced.
    fn apply_events(&mut self, slot: u32) {
        let events = std::mem::take(&mut self.events);
        let control_max = CONTROL_BUDGETS_MAX * self.config.outbound_budget;
        for ev in &events {
            let Some(conn) = self.conns.get_mut(slot as usize) else {
                break;
            };
            if conn.phase != Phase::Open {
                break;
            }
            if conn.reply_bytes() > control_max {
                self.stats.counters.protocol_closes += 1;
                timers::cut(
                    conn,
                    &mut self.index,
                    &mut self.link,
                    self.now_ms,
                    "too many requests: the client does not read the replies",
                );
                self.dirty.mark(conn, slot);
                break;
            }
            match ev {
                OwnedEvent::Subscribe(names, since) => {
                    self.subscribe(slot, names.clone(), since.clone());
                }
                // The conformance endpoint: the same read and write path as
                // /ws, answering each message with itself.
                OwnedEvent::Text(text) if conn.endpoint == Endpoint::Echo => {
                    conn.out
                        .push_control(Entry::control(frame::build(frame::OPCODE_TEXT, text)));
                }
                OwnedEvent::Binary(data) if conn.endpoint == Endpoint::Echo => {
                    conn.out
                        .push_control(Entry::control(frame::build(frame::OPCODE_BINARY, data)));
                }
                OwnedEvent::Text(text) => self.client_message(slot, text),
                OwnedEvent::Binary(_) => {
                    self.stats.counters.client_errors += 1;
                    let f = client::error_frame(
                        ErrorCode::Unsupported,
                        "binary messages are not supported: send JSON text",
                    );
                    conn.reply(Entry::control(f));
                }
                OwnedEvent::Ping(payload) => {
                    conn.out
                        .push_pong(Entry::control(frame::build(frame::OPCODE_PONG, payload)));
                }
                OwnedEvent::Pong => {}
                OwnedEvent::Close(code) => {
                    // Echo the peer's code (RFC 6455 5.5.1; read_frames let
                    // only valid ones through); 1000 when it sent none.
                    let code = if *code == 1005 {
                        CloseCode::Normal as u16
                    } else {
                        *code
                    };
                    conn.out.push_control(Entry::control(frame::build(
                        frame::OPCODE_CLOSE,
                        &code.to_be_bytes(),
                    )));
                    timers::enter_closing(conn, &mut self.index, &mut self.link, self.now_ms);
                }
            }
            if let Some(conn) = self.conns.get_mut(slot as usize) {
                self.dirty.mark(conn, slot);
            }
        }
        let mut events = events;
        events.clear();
        self.events = events;
    }
}

/// Queues a final HTTP response; the connection ends once it is written.
fn answer_and_close(
    conn: &mut Conn,
    bytes: Bytes,
    index: &mut crate::worker::fanout::SubscriberIndex,
    link: &mut crate::worker::link::IngestLink,
    now_ms: u64,
    dirty: &mut crate::worker::output::DirtyList,
    slot: u32,
) {
    conn.out.push_control(Entry::control(bytes));
    timers::enter_closing(conn, index, link, now_ms);
    dirty.mark(conn, slot);
}

/// Whether a connection that is only reading to drop input should be
/// closed: it has lingered past `grace_ms`.
pub fn lingered_out(conn: &Conn, now_ms: u64, grace_ms: u64) -> bool {
    matches!(conn.phase, Phase::Lingering { since_ms } if now_ms.saturating_sub(since_ms) >= grace_ms)
}

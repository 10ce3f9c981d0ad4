//! The HTTP transports for networks that block WebSocket: Server-Sent
//! Events (`/sse`) and long-polling (`/poll`).
//!
//! A stream connection is an ordinary subscriber: it has subscriptions, an
//! outbound queue that conflates per class, heartbeats and the slow-consumer
//! clock, exactly as a WebSocket client. Only the last step differs: at
//! write time its queue's frames (built once per update, as for WebSocket)
//! are framed for HTTP here, the payload copied out of the shared frame:
//! - SSE: each message becomes an event named after its `type`; an update
//!   carries `id:`, the resume token of every channel of the stream as the
//!   client has it after that event (so `Last-Event-ID` resumes exactly).
//!   The events go through a small staging buffer; while the socket does not
//!   take it, the queue behind it conflates as for WebSocket.
//! - Long-poll: the messages are collected into one JSON answer with the
//!   next resume token; the connection then drops its subscriptions (the
//!   server keeps no session: any node can answer the next poll) and reads
//!   the next request (keep-alive).

use crate::protocol::frame::{self, OPCODE_CLOSE, OPCODE_PING, OPCODE_TEXT};
use crate::protocol::http::{self, StreamKind};
use crate::protocol::resume;
use crate::worker::Worker;
use crate::worker::conflate::{Entry, OutQueue};
use crate::worker::conn::{Conn, Phase};
use crate::worker::output::{Reframe, Reframer, Stage, consume_staged};
use crate::worker::subscriptions::Subscriptions;
use crate::worker::timers;

/// SSE bytes staged ahead of the socket at most (plus one entry): past
/// this the queue keeps the frames, where they can conflate. Small, because
/// a blocked stream holds it (a blocked WebSocket holds only shared frames)
/// and the kernel's send buffer is in front of it anyway.
const SSE_STAGE_MAX: usize = 8 * 1024;

/// Staging capacity an SSE stream keeps once drained. Ordinary turns fit
/// in it (no allocation); a larger burst's buffer is given back, so ten
/// thousand streams that each once took a burst do not each hold its peak.
const SSE_STAGE_KEEP: usize = 2 * SSE_STAGE_MAX;

/// The SSE response head; the stream ends when the connection does.
pub const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nX-Accel-Buffering: no\r\nConnection: close\r\n\r\nretry: 1000\n\n";

/// One channel of a stream: what the client has of it.
#[derive(Debug)]
struct Pos {
    ch: Box<str>,
    /// The last seq the client got; `None` until it has one in `epoch`
    /// (the channel is then left out of the resume token: a resume starts
    /// it from the snapshot).
    seq: Option<u64>,
    epoch: Box<str>,
}

/// A connection's SSE or long-poll state (boxed on the connection).
#[derive(Debug)]
pub struct HttpStream {
    /// SSE or long-poll.
    pub kind: StreamKind,
    positions: Vec<Pos>,
    /// SSE: event bytes not yet taken by the socket (from `written` on).
    /// Long-poll: the messages collected so far, comma-separated JSON.
    buf: Vec<u8>,
    written: usize,
    /// Long-poll: messages in `buf`.
    messages: usize,
    /// Long-poll: answer by then (ms on the worker clock).
    pub deadline_ms: u64,
    /// Long-poll: the client asked to close after the answer.
    pub close: bool,
    /// The engine ended the stream (a close frame was framed).
    pub ended: bool,
}

impl HttpStream {
    /// A stream of `channels`, resuming from `since` where it names them.
    pub fn new(
        kind: StreamKind,
        channels: &[Box<str>],
        since: &[resume::Entry],
        deadline_ms: u64,
        close: bool,
    ) -> Self {
        let positions = channels
            .iter()
            .map(|ch| {
                let from = since.iter().find(|e| e.ch == *ch);
                Pos {
                    ch: ch.clone(),
                    seq: from.map(|e| e.pos.seq),
                    epoch: from.map_or_else(|| "".into(), |e| e.pos.epoch.clone()),
                }
            })
            .collect();
        let buf = match kind {
            StreamKind::Sse => SSE_HEAD.to_vec(),
            StreamKind::Poll => Vec::new(),
        };
        HttpStream {
            kind,
            positions,
            buf,
            written: 0,
            messages: 0,
            deadline_ms,
            close,
            ended: false,
        }
    }

    /// Long-poll: messages collected.
    pub fn messages(&self) -> usize {
        self.messages
    }

    /// Long-poll: bytes collected.
    pub fn collected_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Long-poll: the answer body, `{"messages":[...],"next":"TOKEN"}`.
    pub fn poll_body(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.buf.len() + 64);
        body.extend_from_slice(b"{\"messages\":[");
        body.extend_from_slice(&self.buf);
        body.extend_from_slice(b"],\"next\":\"");
        self.write_token(&mut body);
        body.extend_from_slice(b"\"}");
        body
    }

    fn write_token(&self, out: &mut Vec<u8>) {
        resume::write(
            out,
            self.positions
                .iter()
                .filter_map(|p| Some((&*p.ch, p.seq?, &*p.epoch))),
        );
    }

    fn pos_mut(&mut self, ch: &[u8]) -> Option<&mut Pos> {
        self.positions.iter_mut().find(|p| p.ch.as_bytes() == ch)
    }

    /// Frames one server frame for HTTP.
    fn frame_one(&mut self, opcode: u8, payload: &[u8]) {
        match opcode {
            OPCODE_TEXT => self.message(payload),
            OPCODE_PING if self.kind == StreamKind::Sse => {
                self.buf.extend_from_slice(b": ping\n\n");
            }
            OPCODE_CLOSE => {
                self.ended = true;
                if self.kind == StreamKind::Sse {
                    self.close_event(payload);
                }
            }
            _ => {}
        }
    }

    fn message(&mut self, payload: &[u8]) {
        if let Some((ch, seq)) = frame::update_channel_seq(payload) {
            if let Some(p) = self.pos_mut(ch) {
                p.seq = Some(seq);
            }
            match self.kind {
                StreamKind::Sse => {
                    self.buf.extend_from_slice(b"event: update\nid: ");
                    let mut token = std::mem::take(&mut self.buf);
                    self.write_token(&mut token);
                    self.buf = token;
                    self.buf.extend_from_slice(b"\ndata: ");
                    self.buf.extend_from_slice(payload);
                    self.buf.extend_from_slice(b"\n\n");
                }
                StreamKind::Poll => self.collect(payload),
            }
            return;
        }
        // Replies are rare: parse them whole.
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return;
        };
        let kind = v.get("type").and_then(|t| t.as_str()).unwrap_or("");
        match kind {
            "subscribed" => {
                if let Some(map) = v.get("positions").and_then(|p| p.as_object()) {
                    for (ch, at) in map {
                        let epoch = at.get("epoch").and_then(|e| e.as_str()).unwrap_or("");
                        let seq = at.get("seq").and_then(serde_json::Value::as_u64);
                        if let Some(p) = self.pos_mut(ch.as_bytes())
                            && *p.epoch != *epoch
                        {
                            // A new stream for this client: its snapshot
                            // follows, if the channel has a value yet.
                            p.epoch = epoch.into();
                            p.seq = (seq == Some(0)).then_some(0);
                        }
                    }
                }
            }
            "resync" => {
                let ch = v.get("ch").and_then(|c| c.as_str()).unwrap_or("");
                let epoch = v.get("epoch").and_then(|e| e.as_str()).unwrap_or("");
                // The ack already moved the channel to its epoch.
                if let Some(p) = self.pos_mut(ch.as_bytes())
                    && *p.epoch != *epoch
                {
                    p.epoch = epoch.into();
                    p.seq = None;
                }
            }
            // Answers to requests a stream cannot send.
            "pong" | "authenticated" => return,
            _ => {}
        }
        match self.kind {
            StreamKind::Sse => {
                self.buf.extend_from_slice(b"event: ");
                self.buf.extend_from_slice(kind.as_bytes());
                self.buf.extend_from_slice(b"\ndata: ");
                self.buf.extend_from_slice(payload);
                self.buf.extend_from_slice(b"\n\n");
            }
            // The poll's answer carries the positions in `next`.
            StreamKind::Poll if kind == "subscribed" => {}
            StreamKind::Poll => self.collect(payload),
        }
    }

    fn collect(&mut self, payload: &[u8]) {
        if self.messages > 0 {
            self.buf.push(b',');
        }
        self.buf.extend_from_slice(payload);
        self.messages += 1;
    }

    fn close_event(&mut self, payload: &[u8]) {
        let code = payload
            .get(..2)
            .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
        let reason = payload
            .get(2..)
            .and_then(|r| std::str::from_utf8(r).ok())
            .unwrap_or("");
        let data = serde_json::json!({"type": "close", "code": code, "reason": reason});
        self.buf.extend_from_slice(b"event: close\ndata: ");
        self.buf.extend_from_slice(data.to_string().as_bytes());
        self.buf.extend_from_slice(b"\n\n");
    }
}

/// Whether a waiting long-poll should be answered now: the subscribe
/// reply is in (with the replay or snapshots it brought), and something was
/// collected, or the engine ended the stream, or the wait is over, or the
/// answer has grown to the budget.
pub fn poll_due(conn: &Conn, now_ms: u64, budget: usize) -> bool {
    let Some(s) = conn.stream() else {
        return false;
    };
    if s.kind != StreamKind::Poll {
        return false;
    }
    let waited_out = now_ms >= s.deadline_ms || s.ended || conn.phase != Phase::Open;
    waited_out || (!conn.subs.must_hold() && (s.messages > 0 || s.buf.len() >= budget))
}

impl Worker {
    /// Answers a long-poll with what it collected and the next resume
    /// token, drops its subscriptions (no session stays on the server) and
    /// reads the next request on the connection (keep-alive).
    pub(crate) fn answer_poll(&mut self, slot: u32) {
        let Worker {
            conns,
            index,
            link,
            ips,
            now_ms,
            read_retry,
            ..
        } = self;
        let conn = &mut conns[slot as usize];
        let Some(s) = conn.take_stream() else {
            return;
        };
        // A subscribe still in flight would answer into the next request:
        // close instead of reusing the connection.
        let close = s.close || s.ended || conn.subs.must_hold() || conn.phase != Phase::Open;
        let body = s.poll_body();
        let response = http::respond_keep_alive("200 OK", "application/json", &body, close);
        timers::unsubscribe_all(conn, index, link);
        conn.subs = Subscriptions::default();
        conn.out.clear();
        conn.out.push_control(Entry::control(response));
        if let Some(ip) = conn.guard.take().and_then(|g| g.ip) {
            // The next request is admitted (and counted) again.
            ips.release(ip, *now_ms);
        }
        if close {
            if conn.phase == Phase::Open {
                timers::enter_closing(conn, index, link, *now_ms);
            }
        } else {
            conn.phase = Phase::Handshake { since_ms: *now_ms };
            conn.answered = true;
            conn.read_paused = false;
            conn.read_pending = true;
            read_retry.push(slot);
        }
        self.flush(slot);
    }
}

impl Stage for HttpStream {
    /// SSE: the staged bytes not yet written.
    fn staged(&self) -> &[u8] {
        &self.buf[self.written..]
    }

    fn consume(&mut self, n: usize) {
        consume_staged(&mut self.buf, &mut self.written, n, SSE_STAGE_KEEP);
    }

    fn frame_from(
        &mut self,
        out: &mut OutQueue,
        sent: impl FnMut(&Entry),
    ) -> std::io::Result<bool> {
        out.flush(&mut Reframe(self), sent)?;
        // A long-poll's framer took everything; its answer is written once
        // it is due.
        debug_assert!(self.kind != StreamKind::Poll || out.is_empty());
        Ok(self.kind == StreamKind::Poll)
    }
}

/// How a stream frames the queue's frames: SSE stops taking at 8 KiB
/// staged, so a blocked stream holds at most that plus one event (the
/// queue sees a full transport and keeps the rest, where it conflates);
/// long-poll takes everything (its answer is bounded by the budget: the
/// worker answers once it passes it).
impl Reframer for HttpStream {
    fn full(&self) -> bool {
        self.kind == StreamKind::Sse && self.buf.len() >= SSE_STAGE_MAX
    }

    fn frame(&mut self, opcode: u8, payload: &[u8], _whole: &[u8]) {
        self.frame_one(opcode, payload);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::history::Position;
    use crate::protocol::client;
    use std::io::{IoSlice, Write};

    fn since(ch: &str, seq: u64, epoch: &str) -> resume::Entry {
        resume::Entry {
            ch: ch.into(),
            pos: Position {
                seq,
                epoch: epoch.into(),
            },
        }
    }

    fn text(s: &HttpStream) -> String {
        String::from_utf8(s.staged().to_vec()).unwrap()
    }

    #[test]
    fn sse_events_carry_the_position_of_every_channel() {
        let chans: Vec<Box<str>> = vec!["A".into(), "B".into()];
        let mut s = HttpStream::new(StreamKind::Sse, &chans, &[since("A", 4, "e1")], 0, false);
        s.consume(s.staged().len());
        let mut w = Reframe(&mut s);
        let ack = client::subscribed_frame(&chans, &[("A", 4, "e1"), ("B", 9, "e2")]);
        w.write_all(&ack).unwrap();
        w.write_all(&frame::update(b"A", 5, b"{}")).unwrap();
        w.write_all(&frame::update(b"B", 9, b"{\"x\":1}")).unwrap();
        let t = text(&s);
        assert!(t.starts_with("event: subscribed\ndata: {"), "{t}");
        // B has no position until its snapshot: left out of the first id.
        assert!(t.contains("event: update\nid: A~5~e1\ndata: {\"type\":\"update\",\"ch\":\"A\",\"seq\":5,\"data\":{}}\n\n"), "{t}");
        assert!(t.contains("id: A~5~e1,B~9~e2\n"), "{t}");
    }

    #[test]
    fn a_resync_resets_the_channel_and_a_close_ends_the_stream() {
        let chans: Vec<Box<str>> = vec!["A".into()];
        let mut s = HttpStream::new(StreamKind::Sse, &chans, &[since("A", 4, "old")], 0, false);
        s.consume(s.staged().len());
        let mut w = Reframe(&mut s);
        w.write_all(&client::resync_frame("A", "new", "epoch changed"))
            .unwrap();
        w.write_all(&frame::build(OPCODE_PING, b"")).unwrap();
        w.write_all(&frame::update(b"A", 2, b"{}")).unwrap();
        w.write_all(&frame::close(
            frame::CloseCode::ServiceRestart,
            "restarting",
        ))
        .unwrap();
        let t = text(&s);
        assert!(t.contains("event: resync\n"), "{t}");
        assert!(t.contains(": ping\n\n"), "{t}");
        assert!(t.contains("id: A~2~new\n"), "{t}");
        assert!(t.contains("event: close\ndata: {"), "{t}");
        assert!(t.contains("1012"), "{t}");
        assert!(s.ended);
    }

    #[test]
    fn sse_staging_stops_taking_entries_when_full() {
        let chans: Vec<Box<str>> = vec!["A".into()];
        let mut s = HttpStream::new(StreamKind::Sse, &chans, &[], 0, false);
        let big = vec![b'1'; SSE_STAGE_MAX * 5 / 8];
        let f = frame::update(b"A", 1, &big);
        let slices = [IoSlice::new(&f), IoSlice::new(&f), IoSlice::new(&f)];
        let taken = Reframe(&mut s).write_vectored(&slices).unwrap();
        assert_eq!(taken, 2 * f.len(), "whole frames only, up to the cap");
        assert_eq!(Reframe(&mut s).write_vectored(&slices).unwrap(), 0);
        s.consume(s.staged().len());
        assert!(s.staged().is_empty());
        // A coalesced entry (frames back to back) is taken frame by frame.
        let packed = [f.clone(), f.clone(), f.clone()].concat();
        let taken = Reframe(&mut s).write(&packed).unwrap();
        assert_eq!(taken, 2 * f.len(), "stops at a frame boundary");
        s.consume(s.staged().len());
        assert_eq!(Reframe(&mut s).write(&packed[taken..]).unwrap(), f.len());
    }

    #[test]
    fn a_poll_collects_messages_and_answers_with_the_next_token() {
        let chans: Vec<Box<str>> = vec!["A".into(), "B".into()];
        let mut s = HttpStream::new(StreamKind::Poll, &chans, &[since("A", 1, "e")], 0, false);
        let mut w = Reframe(&mut s);
        let ack = client::subscribed_frame(&chans, &[("A", 1, "e"), ("B", 3, "e")]);
        w.write_all(&ack).unwrap();
        w.write_all(&frame::build(OPCODE_PING, b"")).unwrap();
        assert_eq!(s.messages(), 0, "acks and pings are not messages");
        let mut w = Reframe(&mut s);
        w.write_all(&frame::update(b"A", 2, b"1")).unwrap();
        w.write_all(&frame::update(b"B", 3, b"2")).unwrap();
        let body: serde_json::Value = serde_json::from_slice(&s.poll_body()).unwrap();
        assert_eq!(body["messages"].as_array().unwrap().len(), 2);
        assert_eq!(body["messages"][1]["seq"], 3);
        assert_eq!(body["next"], "A~2~e,B~3~e");
    }

    #[test]
    fn a_drained_stream_gives_back_a_burst_s_buffer() {
        let mut s = HttpStream::new(StreamKind::Sse, &["A".into()], &[], 0, false);
        let mut w = Reframe(&mut s);
        // One entry is always taken whole, however large.
        let big = vec![b'1'; 5 * SSE_STAGE_MAX];
        w.write_all(&frame::update(b"A", 1, &big)).unwrap();
        assert_eq!(
            w.write(&frame::update(b"A", 2, b"2")).unwrap(),
            0,
            "stage full"
        );
        let n = s.staged().len();
        s.consume(n - 1);
        assert!(s.buf.capacity() > SSE_STAGE_KEEP, "kept while bytes wait");
        s.consume(1);
        assert!(s.staged().is_empty());
        assert!(s.buf.capacity() <= SSE_STAGE_KEEP, "{}", s.buf.capacity());
    }
}

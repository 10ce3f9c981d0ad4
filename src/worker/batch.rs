//! Batched WebSocket writes (`/ws?batch=1`): the text messages a write pass
//! finds queued for a client go out as one WebSocket text message, one
//! server message per line (`\n` between them).
//!
//! A browser pays per WebSocket message, beside the handler: Chromium hands
//! each one from its network process to the page's thread as tasks of its
//! own (perf/DASHBOARD.md). A page at thousands of updates per second spends
//! its main thread there. A batched client gets as many messages as the
//! engine makes writes to it, however many updates each write carries.
//!
//! The queue is unchanged: its frames are built once per update and
//! conflate as for any client. Only the last step differs, as for the HTTP
//! streams ([`crate::worker::stream`]): at write time each text frame's
//! payload is copied into a small staging buffer behind one header, and
//! other frames (ping, pong, close) are copied whole between messages.
//! While the socket does not take the staging buffer, the queue behind it
//! conflates.
//!
//! A raw `\n` byte in valid JSON can only be whitespace between tokens
//! (inside strings it is escaped, and UTF-8 never has the byte inside a
//! character), so a payload's `\n` bytes (a pretty-printed publish body)
//! become spaces: the same JSON, and lines stay messages.

use crate::protocol::frame::{self, OPCODE_TEXT};
use crate::worker::conflate::{Entry, OutQueue};
use crate::worker::output::{Reframe, Reframer, Stage, consume_staged};

/// Bytes staged ahead of the socket at most (plus one frame): past this the
/// queue keeps the frames, where they can conflate.
const STAGE_MAX: usize = 8 * 1024;

/// Staging capacity kept once drained (see `stream::SSE_STAGE_KEEP`).
const STAGE_KEEP: usize = 2 * STAGE_MAX;

/// Room reserved for a message's header, the longest a header can be.
const HEADER_MAX: usize = 10;

/// A batched client's staging buffer (boxed on the connection).
#[derive(Debug, Default)]
pub struct WsBatch {
    /// Frames not yet taken by the socket, from `written` on.
    buf: Vec<u8>,
    written: usize,
    /// Where the open message's header room starts: its payload is being
    /// collected behind it.
    open: Option<usize>,
}

impl WsBatch {
    /// A staging buffer that starts with `head` (raw bytes: the 101).
    pub fn new(head: &[u8]) -> Self {
        WsBatch {
            buf: head.to_vec(),
            written: 0,
            open: None,
        }
    }

    /// Adds one text message's payload to the open message.
    fn push_text(&mut self, payload: &[u8]) {
        let from = match self.open {
            Some(_) => {
                self.buf.push(b'\n');
                self.buf.len()
            }
            None => {
                self.open = Some(self.buf.len());
                self.buf.resize(self.buf.len() + HEADER_MAX, 0);
                self.buf.len()
            }
        };
        self.buf.extend_from_slice(payload);
        if payload.contains(&b'\n') {
            for b in &mut self.buf[from..] {
                if *b == b'\n' {
                    *b = b' ';
                }
            }
        }
    }

    /// Adds a frame that is not batched (ping, pong, close), whole.
    fn push_frame(&mut self, whole: &[u8]) {
        self.seal();
        self.buf.extend_from_slice(whole);
    }

    /// Ends the open message: its header goes in front of the payload,
    /// and the unused header room is removed.
    pub fn seal(&mut self) {
        let Some(start) = self.open.take() else {
            return;
        };
        let len = self.buf.len() - start - HEADER_MAX;
        let mut head = [0u8; HEADER_MAX];
        let mut w = &mut head[..];
        frame::put_header(&mut w, OPCODE_TEXT, len);
        let head_len = HEADER_MAX - w.len();
        let pad = HEADER_MAX - head_len;
        self.buf[start + pad..start + HEADER_MAX].copy_from_slice(&head[..head_len]);
        if start == self.written {
            // Nothing staged before it (the usual case): skip the room.
            self.written += pad;
        } else {
            self.buf.drain(start..start + pad);
        }
    }
}

impl Stage for WsBatch {
    fn staged(&self) -> &[u8] {
        debug_assert!(self.open.is_none(), "sealed before it is written");
        &self.buf[self.written..]
    }

    fn consume(&mut self, n: usize) {
        consume_staged(&mut self.buf, &mut self.written, n, STAGE_KEEP);
    }

    fn frame_from(
        &mut self,
        out: &mut OutQueue,
        sent: impl FnMut(&Entry),
    ) -> std::io::Result<bool> {
        out.flush(&mut Reframe(self), sent)?;
        self.seal();
        Ok(false)
    }
}

/// How a batched client frames the queue's frames: text messages become
/// lines of the open message, other frames are copied whole, until 8 KiB
/// are staged, so a blocked client holds at most that plus one frame (the
/// queue keeps the rest, where it conflates). The caller seals the message
/// before writing the staged bytes.
impl Reframer for WsBatch {
    fn full(&self) -> bool {
        self.buf.len() - self.written >= STAGE_MAX
    }

    fn frame(&mut self, opcode: u8, payload: &[u8], whole: &[u8]) {
        if opcode == OPCODE_TEXT {
            self.push_text(payload);
        } else {
            self.push_frame(whole);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{OPCODE_CLOSE, OPCODE_PING};
    use std::io::{IoSlice, Write};

    /// The staged bytes as (opcode, payload) frames; every frame must be
    /// whole and minimal (as a browser checks).
    fn frames(b: &WsBatch) -> Vec<(u8, String)> {
        let bytes = b.staged();
        let mut out = Vec::new();
        let mut at = 0;
        for (op, p) in frame::server_frames(bytes) {
            let head = p.as_ptr() as usize - bytes.as_ptr() as usize - at;
            assert_eq!(head, frame::header_len(p.len()), "minimal header");
            assert_eq!(bytes[at] & 0x80, 0x80, "FIN");
            at += head + p.len();
            out.push((op, String::from_utf8_lossy(p).into_owned()));
        }
        assert_eq!(at, bytes.len(), "whole frames only");
        out
    }

    fn take(b: &mut WsBatch, entries: &[&[u8]]) -> usize {
        let slices: Vec<IoSlice<'_>> = entries.iter().map(|e| IoSlice::new(e)).collect();
        let n = Reframe(b).write_vectored(&slices).unwrap();
        b.seal();
        n
    }

    #[test]
    fn text_messages_become_lines_of_one_message_between_control_frames() {
        let mut b = WsBatch::default();
        let u1 = frame::update(b"A", 1, b"{\"p\":1}");
        let u2 = frame::update(b"B", 7, b"2");
        let ping = frame::build(OPCODE_PING, b"");
        let u3 = frame::update(b"A", 2, b"3");
        let packed = [u2.clone(), u3.clone()].concat();
        let total = u1.len() + ping.len() + packed.len();
        assert_eq!(take(&mut b, &[&u1, &ping, &packed]), total);
        let f = frames(&b);
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].0, OPCODE_TEXT);
        assert_eq!(
            f[0].1,
            "{\"type\":\"update\",\"ch\":\"A\",\"seq\":1,\"data\":{\"p\":1}}"
        );
        assert_eq!(f[1], (OPCODE_PING, String::new()));
        let lines: Vec<serde_json::Value> = f[2]
            .1
            .split('\n')
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(
            (lines[0]["ch"].as_str(), lines[0]["seq"].as_u64()),
            (Some("B"), Some(7))
        );
        assert_eq!(
            (lines[1]["ch"].as_str(), lines[1]["seq"].as_u64()),
            (Some("A"), Some(2))
        );
    }

    #[test]
    fn headers_are_minimal_at_every_length_boundary() {
        for len in [0usize, 100, 125, 126, 200, 65_535, 65_536, 70_000] {
            let mut b = WsBatch::default();
            let u = frame::text(&vec![b'x'; len]);
            take(&mut b, &[&u]);
            let f = frames(&b);
            assert_eq!(f.len(), 1);
            assert_eq!(f[0].1.len(), len);
        }
        // Two messages in one: within 125 bytes, and across it.
        for len in [60usize, 100] {
            let mut b = WsBatch::default();
            let u = frame::text(&vec![b'y'; len]);
            take(&mut b, &[&u, &u]);
            assert_eq!(
                frames(&b),
                vec![(OPCODE_TEXT, format!("{0}\n{0}", "y".repeat(len)))]
            );
        }
    }

    #[test]
    fn a_message_sealed_behind_unwritten_bytes_is_still_whole() {
        let mut b = WsBatch::default();
        take(&mut b, &[&frame::text(b"first")]);
        // Part of it was written; the next message is staged behind the rest.
        b.consume(2);
        take(&mut b, &[&frame::text(b"second"), &frame::text(b"third")]);
        let rest = b.staged().to_vec();
        assert_eq!(&rest[..5], b"first");
        let tail = WsBatch::new(&rest[5..]);
        assert_eq!(
            frames(&tail),
            vec![(OPCODE_TEXT, "second\nthird".to_string())]
        );
    }

    #[test]
    fn raw_newlines_in_a_payload_become_spaces() {
        let mut b = WsBatch::default();
        let pretty = frame::update(b"A", 1, b"{\n  \"p\": 1\n}");
        take(&mut b, &[&pretty, &frame::text(b"{}")]);
        let f = frames(&b);
        let lines: Vec<&str> = f[0].1.split('\n').collect();
        assert_eq!(lines.len(), 2, "{:?}", f[0].1);
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["data"]["p"], 1);
    }

    #[test]
    fn staging_stops_at_a_frame_boundary_when_full_and_drains() {
        let mut b = WsBatch::default();
        let u = frame::update(b"A", 1, &vec![b'1'; STAGE_MAX * 5 / 8]);
        let packed = [u.clone(), u.clone(), u.clone()].concat();
        assert_eq!(
            take(&mut b, &[&packed]),
            2 * u.len(),
            "whole frames up to the cap"
        );
        assert_eq!(take(&mut b, &[&packed]), 0, "full");
        let n = b.staged().len();
        b.consume(n);
        assert!(b.staged().is_empty());
        assert!(b.buf.capacity() <= STAGE_KEEP);
        assert_eq!(take(&mut b, &[&packed[2 * u.len()..]]), u.len());
        let close = frame::close(frame::CloseCode::ServiceRestart, "bye");
        take(&mut b, &[&close]);
        let f = frames(&b);
        assert_eq!(f.len(), 2);
        assert_eq!(f[1].0, OPCODE_CLOSE);
    }
}

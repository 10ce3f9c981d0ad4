//! An update as it travels from the sequencer to the workers: its channel,
//! sequence number, ingest time and its WebSocket frame, built once.
//!
//! The frame is the payload (the JSON update object) behind a 2-10 byte
//! header, so the payload is always at hand as a slice of the same buffer:
//! another wire format (an SSE event, a long-poll body) is framed from it
//! once per update, never once per subscriber, and the WebSocket path keeps
//! one contiguous buffer per update (one iovec; see perf/MICROBENCH.md for
//! the measured cost of a separate header iovec).

use bytes::Bytes;

use crate::channel::ChannelId;

/// One sequenced value of a channel.
#[derive(Debug, Clone)]
pub struct Update {
    /// Its channel.
    pub channel: ChannelId,
    /// Its sequence number in the channel (from 1).
    pub seq: u64,
    /// When it was ingested (ns on the engine clock).
    pub ingest_ns: u64,
    /// The complete WebSocket text frame.
    pub frame: Bytes,
}

impl Update {
    /// The JSON update object, `{"type":"update","ch":...,"seq":...,"data":...}`,
    /// without the WebSocket header: a refcount bump, no copy.
    ///
    /// # Examples
    /// ```
    /// use tickwire::{channel::ChannelId, update::Update, protocol::frame};
    /// let u = Update { channel: ChannelId(0), seq: 7, ingest_ns: 0,
    ///                  frame: frame::update(b"A", 7, br#"{"ch":"A"}"#) };
    /// assert_eq!(&u.payload()[..], br#"{"type":"update","ch":"A","seq":7,"data":{"ch":"A"}}"#);
    /// ```
    pub fn payload(&self) -> Bytes {
        self.frame
            .slice(crate::protocol::frame::server_header_len(&self.frame)..)
    }
}

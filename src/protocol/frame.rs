//! WebSocket framing (RFC 6455): server frames built once into `Bytes`, and a
//! sans-io parser for the masked frames clients send.
//!
//! Server frames are never masked, so one serialized update is valid for every
//! subscriber on every worker: the ingest thread builds it once and workers only
//! bump a reference count per delivery.

use bytes::{BufMut, Bytes, BytesMut};

/// Text data frame.
pub const OPCODE_TEXT: u8 = 0x1;
/// Binary data frame.
pub const OPCODE_BINARY: u8 = 0x2;
/// Continuation of a fragmented message.
pub const OPCODE_CONTINUATION: u8 = 0x0;
/// Close control frame.
pub const OPCODE_CLOSE: u8 = 0x8;
/// Ping control frame.
pub const OPCODE_PING: u8 = 0x9;
/// Pong control frame.
pub const OPCODE_PONG: u8 = 0xA;

/// Close codes the engine sends (RFC 6455 section 7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// 1000: the purpose of the connection has been fulfilled.
    Normal = 1000,
    /// 1001: the server is going away (shutdown) or the peer went idle.
    GoingAway = 1001,
    /// 1002: the peer violated the protocol.
    Protocol = 1002,
    /// 1003: a data type the endpoint cannot accept.
    Unsupported = 1003,
    /// 1007: a text message that is not valid UTF-8.
    InvalidPayload = 1007,
    /// 1008: a policy violation (used for slow consumers).
    Policy = 1008,
    /// 1009: a message too big to process.
    TooBig = 1009,
    /// 1011: an unexpected condition on the server.
    Internal = 1011,
    /// 1012: the server is restarting; reconnect later (drain).
    ServiceRestart = 1012,
}

/// Longest header a server frame needs: 2 bytes + 8 bytes of extended length.
pub const MAX_SERVER_HEADER_LEN: usize = 10;

/// Length of the header of an unmasked frame carrying `payload_len` bytes.
#[inline]
pub fn header_len(payload_len: usize) -> usize {
    match payload_len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// Length of the header of a complete unmasked server frame, read from its
/// second byte (0 for a buffer too short to hold a header).
#[inline]
pub fn server_header_len(frame: &[u8]) -> usize {
    match frame.get(1).map(|b| b & 0x7F) {
        None => 0,
        Some(0..=125) => 2,
        Some(126) => 4,
        Some(_) => 10,
    }
}

/// Writes an unmasked, final frame header for `opcode` and `payload_len`.
#[inline]
pub fn put_header<B: BufMut>(out: &mut B, opcode: u8, payload_len: usize) {
    debug_assert!(opcode & 0xF0 == 0);
    out.put_u8(0x80 | opcode);
    match payload_len {
        0..=125 => out.put_u8(payload_len as u8),
        126..=65535 => {
            out.put_u8(126);
            out.put_u16(payload_len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(payload_len as u64);
        }
    }
}

/// Builds a complete unmasked frame around `payload`.
///
/// # Examples
/// ```
/// let f = tickwire::protocol::frame::build(tickwire::protocol::frame::OPCODE_TEXT, b"hi");
/// assert_eq!(&f[..], &[0x81, 2, b'h', b'i']);
/// ```
pub fn build(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    put_header(&mut out, opcode, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// Builds a text frame.
pub fn text(payload: &[u8]) -> Bytes {
    build(OPCODE_TEXT, payload)
}

/// Builds a close frame with `code` and a reason (cut to the 123 bytes a control
/// frame allows, on a character boundary).
pub fn close(code: CloseCode, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = Vec::with_capacity(2 + end);
    payload.extend_from_slice(&(code as u16).to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    build(OPCODE_CLOSE, &payload)
}

const UPDATE_PREFIX: &[u8] = br#"{"type":"update","ch":""#;
const UPDATE_SEQ: &[u8] = br#"","seq":"#;
const UPDATE_DATA: &[u8] = br#","data":"#;

/// Builds the update frame `{"type":"update","ch":CH,"seq":SEQ,"data":DATA}` in
/// one allocation of exactly the right size. `channel` must already be valid
/// (its alphabet needs no JSON escaping) and `data` a JSON object.
///
/// # Examples
/// ```
/// let f = tickwire::protocol::frame::update(b"AAPL", 7, br#"{"ch":"AAPL"}"#);
/// assert_eq!(&f[2..], br#"{"type":"update","ch":"AAPL","seq":7,"data":{"ch":"AAPL"}}"#);
/// ```
pub fn update(channel: &[u8], seq: u64, data: &[u8]) -> Bytes {
    let mut digits = itoa::Buffer::new();
    let seq = digits.format(seq).as_bytes();
    let payload_len = UPDATE_PREFIX.len()
        + channel.len()
        + UPDATE_SEQ.len()
        + seq.len()
        + UPDATE_DATA.len()
        + data.len()
        + 1;
    let mut out = BytesMut::with_capacity(header_len(payload_len) + payload_len);
    put_header(&mut out, OPCODE_TEXT, payload_len);
    out.put_slice(UPDATE_PREFIX);
    out.put_slice(channel);
    out.put_slice(UPDATE_SEQ);
    out.put_slice(seq);
    out.put_slice(UPDATE_DATA);
    out.put_slice(data);
    out.put_u8(b'}');
    debug_assert_eq!(out.len(), out.capacity());
    out.freeze()
}

/// The server frames packed back to back in `bytes` (a queue entry), as
/// (opcode, payload); stops at a truncated frame. Server frames are
/// unmasked and final, so the payload is a plain slice.
pub fn server_frames(bytes: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let b0 = *rest.first()?;
        let b1 = *rest.get(1)?;
        let (head, len) = match b1 & 0x7F {
            n @ 0..=125 => (2usize, n as usize),
            126 => (
                4,
                u16::from_be_bytes(rest.get(2..4)?.try_into().ok()?) as usize,
            ),
            _ => (
                10,
                usize::try_from(u64::from_be_bytes(rest.get(2..10)?.try_into().ok()?)).ok()?,
            ),
        };
        let payload = rest.get(head..head.checked_add(len)?)?;
        rest = &rest[head + len..];
        Some((b0 & 0x0F, payload))
    })
}

/// The channel and seq of an update payload built by [`update`]; `None`
/// for any other message.
pub fn update_channel_seq(payload: &[u8]) -> Option<(&[u8], u64)> {
    let rest = payload.strip_prefix(UPDATE_PREFIX)?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let (ch, rest) = rest.split_at(end);
    let rest = rest.strip_prefix(UPDATE_SEQ)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let seq = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    Some((ch, seq))
}

/// One frame parsed from client bytes; its payload is already unmasked.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientFrame<'a> {
    /// FIN bit: last fragment of a message.
    pub fin: bool,
    /// The frame's opcode.
    pub opcode: u8,
    /// The unmasked payload.
    pub payload: &'a [u8],
}

/// Why a client frame was refused; each maps to the close code to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Reserved bits set without a negotiated extension.
    ReservedBits,
    /// Client frames must be masked (RFC 6455 5.1).
    Unmasked,
    /// An opcode RFC 6455 reserves.
    BadOpcode,
    /// A control frame that is fragmented or carries over 125 bytes.
    BadControl,
    /// A 64-bit length with its most significant bit set (RFC 6455 5.2).
    BadLength,
    /// A payload over the configured limit.
    TooBig,
}

impl FrameError {
    /// The close code RFC 6455 prescribes for this error.
    pub fn close_code(self) -> CloseCode {
        match self {
            FrameError::TooBig => CloseCode::TooBig,
            _ => CloseCode::Protocol,
        }
    }

    /// Short human text for the close reason.
    pub fn reason(self) -> &'static str {
        match self {
            FrameError::ReservedBits => "reserved bits set",
            FrameError::Unmasked => "client frames must be masked",
            FrameError::BadOpcode => "reserved opcode",
            FrameError::BadControl => "invalid control frame",
            FrameError::BadLength => "invalid payload length",
            FrameError::TooBig => "frame too big",
        }
    }
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// Parses one client frame from the front of `buf`, unmasking its payload in
/// place. Returns `Ok(None)` when more bytes are needed, or the frame and the
/// number of bytes it took.
///
/// # Errors
/// A [`FrameError`] when the bytes break RFC 6455 or the frame exceeds
/// `max_payload`; the caller closes with [`FrameError::close_code`].
pub fn parse_client(
    buf: &mut [u8],
    max_payload: usize,
) -> Result<Option<(ClientFrame<'_>, usize)>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    match opcode {
        OPCODE_CONTINUATION | OPCODE_TEXT | OPCODE_BINARY => {}
        OPCODE_CLOSE | OPCODE_PING | OPCODE_PONG => {
            if !fin || (b1 & 0x7F) > 125 {
                return Err(FrameError::BadControl);
            }
        }
        _ => return Err(FrameError::BadOpcode),
    }
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let (len, mut pos) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(n);
            if len >> 63 != 0 {
                return Err(FrameError::BadLength);
            }
            (len, 10)
        }
        n => (n as u64, 2),
    };
    if len > max_payload as u64 {
        return Err(FrameError::TooBig);
    }
    let len = len as usize;
    if buf.len() < pos + 4 + len {
        return Ok(None);
    }
    let mask = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
    pos += 4;
    let payload = &mut buf[pos..pos + len];
    unmask(payload, mask);
    Ok(Some((
        ClientFrame {
            fin,
            opcode,
            payload: &buf[pos..pos + len],
        },
        pos + len,
    )))
}

/// XORs `payload` with the 4-byte mask, a word at a time where it can.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let word = (word as u64) | ((word as u64) << 32);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut v = [0u8; 8];
        v.copy_from_slice(chunk);
        let x = u64::from_ne_bytes(v) ^ word;
        chunk.copy_from_slice(&x.to_ne_bytes());
    }
    let rest = chunks.into_remainder();
    for (i, b) in rest.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn packed_server_frames_split_back_into_payloads() {
        let mut packed = Vec::new();
        packed.extend_from_slice(&update(b"AAPL", 7, b"{}"));
        let big = vec![b'x'; 300];
        packed.extend_from_slice(&update(b"B.1", 123456, &big));
        packed.extend_from_slice(&close(CloseCode::GoingAway, "bye"));
        let frames: Vec<_> = server_frames(&packed).collect();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].0, OPCODE_TEXT);
        assert_eq!(update_channel_seq(frames[0].1), Some((&b"AAPL"[..], 7)));
        assert_eq!(update_channel_seq(frames[1].1), Some((&b"B.1"[..], 123456)));
        assert_eq!(frames[2].0, OPCODE_CLOSE);
        assert_eq!(update_channel_seq(br#"{"type":"pong"}"#), None);
        // A truncated frame ends the walk instead of reading past the end.
        assert_eq!(server_frames(&packed[..packed.len() - 1]).count(), 2);
    }

    use super::*;

    fn masked(opcode: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            0..=125 => out.push(0x80 | payload.len() as u8),
            126..=65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn header_lengths_match_rfc_boundaries() {
        for (len, hdr) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let f = build(OPCODE_TEXT, &vec![b'x'; len]);
            assert_eq!(f.len(), hdr + len, "len {len}");
            assert_eq!(header_len(len), hdr);
            assert_eq!(server_header_len(&f), hdr);
        }
        let f = build(OPCODE_TEXT, &vec![b'x'; 300]);
        assert_eq!(&f[..4], &[0x81, 126, 1, 44]);
    }

    #[test]
    fn update_frame_is_exact_json() {
        let f = update(b"BTC-USD", 123456789, br#"{"ch":"BTC-USD","p":1.5}"#);
        let payload = &f[2..];
        assert_eq!(f[0], 0x81);
        assert_eq!(f[1] as usize, payload.len());
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
        assert_eq!(v["type"], "update");
        assert_eq!(v["ch"], "BTC-USD");
        assert_eq!(v["seq"], 123456789);
        assert_eq!(v["data"]["p"], 1.5);
        // Large payloads take the 16-bit length form.
        let big = format!(r#"{{"ch":"A","x":"{}"}}"#, "y".repeat(1000));
        let f = update(b"A", u64::MAX, big.as_bytes());
        assert_eq!(f[1], 126);
        let n = u16::from_be_bytes([f[2], f[3]]) as usize;
        assert_eq!(n, f.len() - 4);
    }

    #[test]
    fn close_frame_truncates_on_char_boundary() {
        let f = close(CloseCode::Policy, &"é".repeat(100));
        assert!(f.len() - 2 <= 125);
        assert_eq!(u16::from_be_bytes([f[2], f[3]]), 1008);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }

    #[test]
    fn parses_masked_frames_split_at_every_byte() {
        for len in [0usize, 5, 125, 126, 1000, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let wire = masked(OPCODE_TEXT, true, &payload, [1, 2, 3, 0xF0]);
            let step = if len > 1000 { 997 } else { 1 };
            let mut cut = 0;
            while cut < wire.len() {
                let mut part = wire[..cut].to_vec();
                assert_eq!(
                    parse_client(&mut part, 1 << 20),
                    Ok(None),
                    "len {len} cut {cut}"
                );
                cut += step;
            }
            let mut all = wire.clone();
            let (frame, used) = parse_client(&mut all, 1 << 20).unwrap().unwrap();
            assert_eq!(used, wire.len());
            assert!(frame.fin);
            assert_eq!(frame.payload, &payload[..]);
        }
    }

    #[test]
    fn rejects_protocol_violations() {
        let mut unmasked = vec![0x81, 0x01, b'a'];
        assert_eq!(parse_client(&mut unmasked, 100), Err(FrameError::Unmasked));
        let mut rsv = masked(OPCODE_TEXT, true, b"a", [0; 4]);
        rsv[0] |= 0x40;
        assert_eq!(parse_client(&mut rsv, 100), Err(FrameError::ReservedBits));
        let mut op = masked(0x3, true, b"a", [0; 4]);
        assert_eq!(parse_client(&mut op, 100), Err(FrameError::BadOpcode));
        let mut frag_ping = masked(OPCODE_PING, false, b"a", [0; 4]);
        assert_eq!(
            parse_client(&mut frag_ping, 100),
            Err(FrameError::BadControl)
        );
        let mut big_ping = masked(OPCODE_PING, true, &[0; 126], [0; 4]);
        assert_eq!(
            parse_client(&mut big_ping, 1000),
            Err(FrameError::BadControl)
        );
        let mut big = masked(OPCODE_TEXT, true, &[0; 200], [0; 4]);
        assert_eq!(parse_client(&mut big, 100), Err(FrameError::TooBig));
        assert_eq!(FrameError::TooBig.close_code(), CloseCode::TooBig);
        // The size check happens on the header alone, before the payload arrives.
        let mut huge_header = vec![0x81, 0x80 | 127, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(parse_client(&mut huge_header, 100), Err(FrameError::TooBig));
        // A length with the top bit set is malformed, not a control-frame error.
        let mut top_bit = vec![0x81, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(parse_client(&mut top_bit, 100), Err(FrameError::BadLength));
        assert_eq!(FrameError::BadLength.close_code(), CloseCode::Protocol);
        assert_eq!(FrameError::BadLength.reason(), "invalid payload length");
    }
}

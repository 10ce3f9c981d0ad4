//! Minimal client-side WebSocket (RFC 6455) codec: the HTTP upgrade request,
//! a streaming parser for (unmasked) server frames with 16/64-bit lengths,
//! fragmentation and control frames, and an encoder for masked client frames.
//!
//! No extensions are negotiated, so RSV bits must be zero.

use anyhow::{Result, bail};

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Refuse absurd frames instead of allocating whatever a broken peer claims.
const MAX_MESSAGE: usize = 64 << 20;

/// A complete message or control frame delivered by [`FrameParser`].
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Text or binary data message (already reassembled if fragmented).
    Message(&'a [u8]),
    Ping(&'a [u8]),
    Pong,
    Close(&'a [u8]),
}

/// Streaming frame parser. The caller owns the byte buffer; `parse` consumes
/// whole frames from the front and reports how many bytes it used, so a frame
/// split across reads simply stays in the caller's buffer.
#[derive(Default)]
pub struct FrameParser {
    /// Payload of a fragmented message collected so far.
    fragments: Vec<u8>,
    in_fragmented: bool,
}

impl FrameParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses as many complete frames from `buf` as possible, calling `on`
    /// for each event. Returns the number of bytes consumed.
    pub fn parse(&mut self, buf: &[u8], mut on: impl FnMut(Event<'_>)) -> Result<usize> {
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            if rest.len() < 2 {
                return Ok(pos);
            }
            let b0 = rest[0];
            let b1 = rest[1];
            let fin = b0 & 0x80 != 0;
            if b0 & 0x70 != 0 {
                bail!("websocket frame with RSV bits set");
            }
            let opcode = b0 & 0x0F;
            let masked = b1 & 0x80 != 0;
            let (len, mut hdr) = match b1 & 0x7F {
                126 => {
                    if rest.len() < 4 {
                        return Ok(pos);
                    }
                    (u16::from_be_bytes([rest[2], rest[3]]) as u64, 4)
                }
                127 => {
                    if rest.len() < 10 {
                        return Ok(pos);
                    }
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&rest[2..10]);
                    (u64::from_be_bytes(b), 10)
                }
                n => (n as u64, 2),
            };
            if len > MAX_MESSAGE as u64 {
                bail!("websocket frame too large ({len} bytes)");
            }
            let len = len as usize;
            let mask = if masked {
                if rest.len() < hdr + 4 {
                    return Ok(pos);
                }
                let m = [rest[hdr], rest[hdr + 1], rest[hdr + 2], rest[hdr + 3]];
                hdr += 4;
                Some(m)
            } else {
                None
            };
            if rest.len() < hdr + len {
                return Ok(pos);
            }
            // Servers never mask; tolerate it anyway by unmasking into a copy.
            let unmasked;
            let payload: &[u8] = match mask {
                None => &rest[hdr..hdr + len],
                Some(m) => {
                    unmasked = rest[hdr..hdr + len]
                        .iter()
                        .enumerate()
                        .map(|(i, b)| b ^ m[i & 3])
                        .collect::<Vec<u8>>();
                    &unmasked
                }
            };
            pos += hdr + len;
            match opcode {
                OP_TEXT | OP_BINARY => {
                    if self.in_fragmented {
                        bail!("new data frame inside a fragmented message");
                    }
                    if fin {
                        on(Event::Message(payload));
                    } else {
                        self.in_fragmented = true;
                        self.fragments.clear();
                        self.fragments.extend_from_slice(payload);
                    }
                }
                OP_CONT => {
                    if !self.in_fragmented {
                        bail!("continuation frame without a message");
                    }
                    if self.fragments.len() + payload.len() > MAX_MESSAGE {
                        bail!("fragmented message too large");
                    }
                    self.fragments.extend_from_slice(payload);
                    if fin {
                        self.in_fragmented = false;
                        on(Event::Message(&self.fragments));
                    }
                }
                OP_PING | OP_PONG | OP_CLOSE => {
                    if !fin || len > 125 {
                        bail!("invalid control frame");
                    }
                    on(match opcode {
                        OP_PING => Event::Ping(payload),
                        OP_PONG => Event::Pong,
                        _ => Event::Close(payload),
                    });
                }
                other => bail!("unknown websocket opcode {other:#x}"),
            }
        }
    }
}

/// Appends one masked client frame (FIN set) to `out`.
pub fn encode_client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// The HTTP/1.1 upgrade request. `key` is the base64 Sec-WebSocket-Key.
pub fn upgrade_request(host: &str, path: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// Looks for the end of the HTTP response head. Returns `Ok(Some(len))` with
/// the head length once complete and a 101 status, `Ok(None)` if more bytes
/// are needed, or an error for a non-101 answer.
pub fn parse_upgrade_response(buf: &[u8]) -> Result<Option<usize>> {
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        if buf.len() > 16 * 1024 {
            bail!("HTTP response head too long");
        }
        return Ok(None);
    };
    let head = &buf[..end];
    let status_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = status_line.split(|&b| b == b' ');
    let _version = parts.next();
    if parts.next() != Some(b"101".as_slice()) {
        bail!(
            "upgrade refused: {}",
            String::from_utf8_lossy(status_line).trim()
        );
    }
    Ok(Some(end + 4))
}

/// Parsed `ws://` or `wss://` `host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// `host:port` as written (used for the Host header and for resolving).
    pub authority: String,
    /// The host alone (the name a TLS certificate must match).
    pub host: String,
    pub path: String,
    /// `wss://`: WebSocket over TLS.
    pub tls: bool,
}

pub fn parse_url(url: &str) -> Result<WsUrl> {
    let (rest, tls) = if let Some(r) = url.strip_prefix("ws://") {
        (r, false)
    } else if let Some(r) = url.strip_prefix("wss://") {
        (r, true)
    } else {
        bail!("only ws:// and wss:// URLs are supported, got {url:?}");
    };
    let (auth, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if auth.is_empty() {
        bail!("URL {url:?} has no host");
    }
    let (host, authority) = match auth.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), auth.to_string()),
        // The scheme's default port.
        _ => (
            auth.to_string(),
            format!("{auth}:{}", if tls { 443 } else { 80 }),
        ),
    };
    Ok(WsUrl {
        authority,
        host,
        path: path.to_string(),
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![if fin { 0x80 } else { 0 } | opcode];
        let n = payload.len();
        if n < 126 {
            v.push(n as u8);
        } else if n <= 65535 {
            v.push(126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            v.push(127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
        v.extend_from_slice(payload);
        v
    }

    #[derive(Debug, PartialEq)]
    enum Owned {
        Msg(Vec<u8>),
        Ping(Vec<u8>),
        Pong,
        Close(Vec<u8>),
    }

    /// Feeds `stream` in two pieces split at `split`, mimicking a caller
    /// that keeps unconsumed bytes in its buffer.
    fn feed_split(stream: &[u8], split: usize) -> Vec<Owned> {
        let mut p = FrameParser::new();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for chunk in [&stream[..split], &stream[split..]] {
            buf.extend_from_slice(chunk);
            let used = p
                .parse(&buf, |e| {
                    out.push(match e {
                        Event::Message(m) => Owned::Msg(m.to_vec()),
                        Event::Ping(m) => Owned::Ping(m.to_vec()),
                        Event::Pong => Owned::Pong,
                        Event::Close(m) => Owned::Close(m.to_vec()),
                    })
                })
                .unwrap();
            buf.drain(..used);
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn parses_every_split_point() {
        let big16 = vec![b'x'; 300];
        let big64 = vec![b'y'; 70_000];
        let mut s = Vec::new();
        s.extend(server_frame(true, OP_TEXT, b"hello"));
        s.extend(server_frame(true, OP_PING, b"pp"));
        s.extend(server_frame(true, OP_TEXT, &big16));
        s.extend(server_frame(false, OP_TEXT, b"frag1-"));
        s.extend(server_frame(true, OP_PONG, b""));
        s.extend(server_frame(false, OP_CONT, b"frag2-"));
        s.extend(server_frame(true, OP_CONT, b"frag3"));
        s.extend(server_frame(true, OP_BINARY, &big64));
        s.extend(server_frame(true, OP_CLOSE, &[0x03, 0xE8]));
        let expected = vec![
            Owned::Msg(b"hello".to_vec()),
            Owned::Ping(b"pp".to_vec()),
            Owned::Msg(big16.clone()),
            Owned::Pong,
            Owned::Msg(b"frag1-frag2-frag3".to_vec()),
            Owned::Msg(big64.clone()),
            Owned::Close(vec![0x03, 0xE8]),
        ];
        // Every split point in the small frames; a stride through the 64 KiB one.
        let small_end = s.len() - big64.len() - 20;
        let mut splits: Vec<usize> = (0..=small_end).collect();
        splits.extend((small_end..=s.len()).step_by(997));
        splits.push(s.len());
        for split in splits {
            assert_eq!(feed_split(&s, split), expected, "split at {split}");
        }
    }

    #[test]
    fn byte_at_a_time() {
        let s = [
            server_frame(true, OP_TEXT, &[b'a'; 200]),
            server_frame(true, OP_TEXT, b"b"),
        ]
        .concat();
        let mut p = FrameParser::new();
        let mut buf = Vec::new();
        let mut n = 0;
        for &b in &s {
            buf.push(b);
            let used = p.parse(&buf, |_| n += 1).unwrap();
            buf.drain(..used);
        }
        assert_eq!(n, 2);
    }

    #[test]
    fn rejects_bad_frames() {
        let mut p = FrameParser::new();
        assert!(p.parse(&[0xC1, 0x00], |_| {}).is_err()); // RSV1
        let mut p = FrameParser::new();
        assert!(p.parse(&[0x80, 0x00], |_| {}).is_err()); // stray continuation
        let mut p = FrameParser::new();
        assert!(p.parse(&[0x09, 0x00], |_| {}).is_err()); // fragmented ping
    }

    #[test]
    fn client_frames_are_masked() {
        let mask = [1, 2, 3, 4];
        for n in [0usize, 5, 125, 126, 65535, 65536] {
            let payload = vec![b'z'; n];
            let mut out = Vec::new();
            encode_client_frame(&mut out, OP_TEXT, &payload, mask);
            assert_eq!(out[0], 0x81);
            assert!(out[1] & 0x80 != 0);
            // Our own parser accepts masked frames, so round-trip through it.
            let mut got = None;
            FrameParser::new()
                .parse(&out, |e| {
                    if let Event::Message(m) = e {
                        got = Some(m.to_vec())
                    }
                })
                .unwrap();
            assert_eq!(got.unwrap(), payload);
        }
    }

    #[test]
    fn upgrade_and_url() {
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00";
        assert_eq!(parse_upgrade_response(ok).unwrap(), Some(ok.len() - 2));
        assert_eq!(parse_upgrade_response(b"HTTP/1.1 101 Sw").unwrap(), None);
        assert!(parse_upgrade_response(b"HTTP/1.1 404 Not Found\r\n\r\n").is_err());
        let u = parse_url("ws://127.0.0.1:9000/ws").unwrap();
        assert_eq!(u.authority, "127.0.0.1:9000");
        assert_eq!(u.path, "/ws");
        assert_eq!(parse_url("ws://localhost").unwrap().path, "/");
        assert_eq!(
            parse_url("ws://localhost").unwrap().authority,
            "localhost:80"
        );
        assert!(parse_url("http://x").is_err());
        let u = parse_url("wss://127.0.0.1:9443/ws").unwrap();
        assert!(u.tls);
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.authority, "127.0.0.1:9443");
        assert!(!parse_url("ws://x:1").unwrap().tls);
        assert_eq!(parse_url("wss://x").unwrap().authority, "x:443");
        assert_eq!(parse_url("wss://[::1]:9/").unwrap().host, "[::1]");
    }
}

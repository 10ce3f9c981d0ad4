//! Streaming parser for the server side of the NATS client protocol
//! (INFO, MSG, PING, PONG, +OK, -ERR) as carried inside WebSocket messages.
//!
//! nats-server may split one protocol message across WebSocket frames or pack
//! several into one, so the parser treats its input as a plain byte stream.

use anyhow::{Result, bail};

#[derive(Debug, PartialEq, Eq)]
pub enum NatsEvent<'a> {
    Info(&'a [u8]),
    Msg {
        subject: &'a [u8],
        sid: u64,
        payload: &'a [u8],
    },
    Ping,
    Pong,
    Ok,
    Err(&'a [u8]),
}

/// Longest control line we accept before declaring the stream broken.
const MAX_LINE: usize = 64 * 1024;

#[derive(Default)]
pub struct NatsParser {
    /// Unconsumed tail of the stream (a partial protocol message).
    buf: Vec<u8>,
}

impl NatsParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next chunk of the stream, calling `on` for each complete
    /// protocol message.
    pub fn feed(&mut self, data: &[u8], mut on: impl FnMut(NatsEvent<'_>)) -> Result<()> {
        if self.buf.is_empty() {
            // Fast path: parse straight from the caller's slice.
            let used = parse_stream(data, &mut on)?;
            self.buf.extend_from_slice(&data[used..]);
        } else {
            self.buf.extend_from_slice(data);
            let buf = std::mem::take(&mut self.buf);
            let used = parse_stream(&buf, &mut on)?;
            self.buf = buf;
            self.buf.drain(..used);
        }
        if self.buf.len() > MAX_LINE && memchr::memmem::find(&self.buf, b"\r\n").is_none() {
            bail!("NATS control line too long");
        }
        Ok(())
    }
}

fn parse_stream(buf: &[u8], on: &mut impl FnMut(NatsEvent<'_>)) -> Result<usize> {
    let mut pos = 0;
    while let Some(nl) = memchr::memmem::find(&buf[pos..], b"\r\n") {
        let line = &buf[pos..pos + nl];
        let after_line = pos + nl + 2;
        let (verb, args) = match memchr::memchr2(b' ', b'\t', line) {
            Some(i) => (&line[..i], trim(&line[i + 1..])),
            None => (line, &line[line.len()..]),
        };
        if verb.eq_ignore_ascii_case(b"MSG") {
            // Fixed array instead of a Vec: this runs once per message.
            let mut fields: [&[u8]; 5] = [&[]; 5];
            let mut nf = 0;
            for f in args
                .split(|&b| b == b' ' || b == b'\t')
                .filter(|f| !f.is_empty())
            {
                if nf == fields.len() {
                    break;
                }
                fields[nf] = f;
                nf += 1;
            }
            if nf != 3 && nf != 4 {
                bail!("malformed MSG line: {}", String::from_utf8_lossy(line));
            }
            let sid = parse_u64(fields[1])?;
            let len = parse_u64(fields[nf - 1])? as usize;
            if buf.len() < after_line + len + 2 {
                return Ok(pos); // payload not complete yet
            }
            let payload = &buf[after_line..after_line + len];
            if &buf[after_line + len..after_line + len + 2] != b"\r\n" {
                bail!("MSG payload not followed by CRLF");
            }
            on(NatsEvent::Msg {
                subject: fields[0],
                sid,
                payload,
            });
            pos = after_line + len + 2;
            continue;
        }
        if verb.eq_ignore_ascii_case(b"PING") {
            on(NatsEvent::Ping);
        } else if verb.eq_ignore_ascii_case(b"PONG") {
            on(NatsEvent::Pong);
        } else if verb.eq_ignore_ascii_case(b"+OK") {
            on(NatsEvent::Ok);
        } else if verb.eq_ignore_ascii_case(b"-ERR") {
            on(NatsEvent::Err(args));
        } else if verb.eq_ignore_ascii_case(b"INFO") {
            on(NatsEvent::Info(args));
        } else if !line.is_empty() {
            bail!("unknown NATS operation: {}", String::from_utf8_lossy(line));
        }
        pos = after_line;
    }
    Ok(pos)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &s[start..end.max(start)]
}

fn parse_u64(s: &[u8]) -> Result<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        bail!("bad number in NATS message: {}", String::from_utf8_lossy(s));
    }
    Ok(s.iter().fold(0u64, |a, &b| a * 10 + (b - b'0') as u64))
}

/// The client's greeting once INFO arrives: CONNECT plus one SUB per channel
/// (sid = position in `channels` + 1).
pub fn connect_and_subscribe(channels: &[String]) -> Vec<u8> {
    let mut out = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false}\r\n".to_vec();
    for (i, ch) in channels.iter().enumerate() {
        out.extend_from_slice(format!("SUB {ch} {}\r\n", i + 1).as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Owned {
        Info,
        Msg(String, u64, Vec<u8>),
        Ping,
        Pong,
        Ok,
        Err(String),
    }

    fn collect(chunks: &[&[u8]]) -> Vec<Owned> {
        let mut p = NatsParser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, |e| {
                out.push(match e {
                    NatsEvent::Info(_) => Owned::Info,
                    NatsEvent::Msg {
                        subject,
                        sid,
                        payload,
                    } => Owned::Msg(
                        String::from_utf8(subject.to_vec()).unwrap(),
                        sid,
                        payload.to_vec(),
                    ),
                    NatsEvent::Ping => Owned::Ping,
                    NatsEvent::Pong => Owned::Pong,
                    NatsEvent::Ok => Owned::Ok,
                    NatsEvent::Err(e) => Owned::Err(String::from_utf8(e.to_vec()).unwrap()),
                })
            })
            .unwrap();
        }
        assert!(p.buf.is_empty(), "leftover {:?}", p.buf);
        out
    }

    const STREAM: &[u8] = b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\n\
+OK\r\n\
MSG S0001 1 5\r\nhello\r\n\
PING\r\n\
MSG S0002 2 reply.to 8\r\na\r\nb\r\nc!\r\n\
MSG S0003 3 0\r\n\r\n\
-ERR 'Unknown Subject'\r\n\
PONG\r\n";

    fn expected() -> Vec<Owned> {
        vec![
            Owned::Info,
            Owned::Ok,
            Owned::Msg("S0001".into(), 1, b"hello".to_vec()),
            Owned::Ping,
            Owned::Msg("S0002".into(), 2, b"a\r\nb\r\nc!".to_vec()),
            Owned::Msg("S0003".into(), 3, b"".to_vec()),
            Owned::Err("'Unknown Subject'".into()),
            Owned::Pong,
        ]
    }

    #[test]
    fn batched_in_one_chunk() {
        assert_eq!(collect(&[STREAM]), expected());
    }

    #[test]
    fn split_at_every_byte_boundary() {
        for i in 0..=STREAM.len() {
            assert_eq!(
                collect(&[&STREAM[..i], &STREAM[i..]]),
                expected(),
                "split {i}"
            );
        }
        for i in 0..=STREAM.len() {
            for j in i..=STREAM.len() {
                assert_eq!(
                    collect(&[&STREAM[..i], &STREAM[i..j], &STREAM[j..]]),
                    expected(),
                    "split {i},{j}"
                );
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let chunks: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(collect(&chunks), expected());
    }

    #[test]
    fn rejects_garbage() {
        let mut p = NatsParser::new();
        assert!(p.feed(b"MSG a b c d e f\r\n", |_| {}).is_err());
        let mut p = NatsParser::new();
        assert!(p.feed(b"MSG a 1 3\r\nabcXY", |_| {}).is_err());
        let mut p = NatsParser::new();
        assert!(p.feed(b"BOGUS\r\n", |_| {}).is_err());
    }

    #[test]
    fn greeting() {
        let g = connect_and_subscribe(&["A".into(), "B".into()]);
        let s = String::from_utf8(g).unwrap();
        assert!(s.starts_with("CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false}\r\n"));
        assert!(s.ends_with("SUB A 1\r\nSUB B 2\r\n"));
    }
}

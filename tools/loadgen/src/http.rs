//! The engine's HTTP transports, client side: the `GET /sse` and `GET /poll`
//! requests and streaming parsers for their answers. Like the WebSocket
//! parser, each consumes whole units (an SSE event, a poll answer) from the
//! front of the caller's buffer and reports how many bytes it used, so a
//! unit split across reads stays in the caller's buffer. Nothing is copied:
//! the callbacks get slices of that buffer.

use anyhow::{Result, bail};
use memchr::memmem;

/// Refuse absurd answers instead of buffering whatever a broken peer sends.
const MAX_UNIT: usize = 64 << 20;

/// Appends `GET <path>?channels=A,B[&since=TOKEN]` (a keep-alive request)
/// to `out`; `channels` is the comma-separated list.
pub fn stream_request(
    out: &mut Vec<u8>,
    host: &str,
    path: &str,
    channels: &[u8],
    since: Option<&[u8]>,
) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b"?channels=");
    // Channel names are [A-Za-z0-9._:-] (checked at start): safe in a query.
    out.extend_from_slice(channels);
    if let Some(t) = since {
        out.extend_from_slice(b"&since=");
        percent_encode(out, t);
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        }
    }
}

/// A complete response head: its length, status and `Content-Length`.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub len: usize,
    pub status: u16,
    pub content_length: Option<usize>,
}

/// Parses a response head at the start of `buf`; `Ok(None)` until complete.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>> {
    let Some(end) = memmem::find(buf, b"\r\n\r\n") else {
        if buf.len() > 16 * 1024 {
            bail!("HTTP response head too long");
        }
        return Ok(None);
    };
    let head = &buf[..end];
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(|&b| b == b' ')
        .nth(1)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok());
    let Some(status) = status.filter(|_| status_line.starts_with(b"HTTP/1.")) else {
        bail!(
            "not an HTTP response: {}",
            String::from_utf8_lossy(status_line)
        );
    };
    let mut content_length = None;
    for l in lines {
        let Some(colon) = memchr::memchr(b':', l) else {
            continue;
        };
        if l[..colon].eq_ignore_ascii_case(b"content-length") {
            let v = std::str::from_utf8(&l[colon + 1..]).unwrap_or("").trim();
            match v.parse::<usize>() {
                Ok(n) if n <= MAX_UNIT => content_length = Some(n),
                _ => bail!("bad Content-Length {v:?}"),
            }
        }
    }
    Ok(Some(Head {
        len: end + 4,
        status,
        content_length,
    }))
}

/// One Server-Sent Event.
#[derive(Debug, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// `event:` (empty if absent, i.e. `message`).
    pub name: &'a [u8],
    /// `data:`; the engine's data is always one line (JSON), so a second
    /// `data:` line is not joined but ends the event's data at the first.
    pub data: &'a [u8],
}

/// Parses whole events (ended by a blank line) from the body of an SSE
/// response; comments (`: ping`) and events without data (`retry:`) are
/// skipped. Returns the bytes consumed. Lines end in `\n` (the engine's
/// framing; `\r\n` is tolerated).
pub fn parse_sse(buf: &[u8], mut on: impl FnMut(SseEvent<'_>)) -> Result<usize> {
    let mut pos = 0;
    while let Some(end) = memmem::find(&buf[pos..], b"\n\n")
        .map(|e| (e, 2))
        .or_else(|| memmem::find(&buf[pos..], b"\r\n\r\n").map(|e| (e, 4)))
    {
        let (len, sep) = end;
        let block = &buf[pos..pos + len];
        pos += len + sep;
        let mut name: &[u8] = b"";
        let mut data: Option<&[u8]> = None;
        for line in block.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.first() == Some(&b':') {
                continue;
            }
            let (field, value) = match memchr::memchr(b':', line) {
                Some(c) => {
                    let v = &line[c + 1..];
                    (&line[..c], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &b""[..]),
            };
            match field {
                b"event" => name = value,
                b"data" if data.is_none() => data = Some(value),
                _ => {}
            }
        }
        if let Some(data) = data {
            on(SseEvent { name, data });
        }
    }
    if buf.len() - pos > MAX_UNIT {
        bail!("SSE event too large");
    }
    Ok(pos)
}

/// What a long-poll answer yields, in order: its messages, then its token.
#[derive(Debug, PartialEq, Eq)]
pub enum PollItem<'a> {
    /// One object of `"messages"`, as its raw JSON.
    Message(&'a [u8]),
    /// The `"next"` token, as sent (resume tokens have no JSON escapes).
    Next(&'a [u8]),
}

/// Parses whole long-poll answers (head and `Content-Length` body) from
/// `buf`, calling `on` for each message and then the answer's token. A
/// status other than 200 is an error. Returns the bytes consumed.
pub fn parse_poll(buf: &[u8], mut on: impl FnMut(PollItem<'_>)) -> Result<usize> {
    let mut pos = 0;
    loop {
        let Some(head) = parse_head(&buf[pos..])? else {
            return Ok(pos);
        };
        if head.status != 200 {
            let line = buf[pos..].split(|&b| b == b'\r').next().unwrap_or_default();
            bail!("poll answered {}", String::from_utf8_lossy(line).trim());
        }
        let Some(cl) = head.content_length else {
            bail!("poll answer without Content-Length");
        };
        if buf.len() - pos < head.len + cl {
            return Ok(pos);
        }
        let body = &buf[pos + head.len..pos + head.len + cl];
        pos += head.len + cl;
        split_poll_body(body, &mut on)?;
    }
}

/// `{"messages":[{...},{...}],"next":"TOKEN"}` → the objects, then the token.
fn split_poll_body(body: &[u8], on: &mut impl FnMut(PollItem<'_>)) -> Result<()> {
    const PREFIX: &[u8] = b"{\"messages\":[";
    if !body.starts_with(PREFIX) {
        bail!(
            "unexpected poll body: {}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
    }
    let mut i = PREFIX.len();
    loop {
        match body.get(i) {
            Some(b']') => {
                i += 1;
                break;
            }
            Some(b',') => i += 1,
            Some(b'{') => {
                let end = object_end(body, i)?;
                on(PollItem::Message(&body[i..end]));
                i = end;
            }
            _ => bail!("malformed poll body at byte {i}"),
        }
    }
    let rest = &body[i..];
    let Some(at) = memmem::find(rest, b"\"next\":\"") else {
        bail!("poll body without \"next\"");
    };
    let tok = &rest[at + 8..];
    let Some(q) = memchr::memchr(b'"', tok) else {
        bail!("poll body: unterminated \"next\"");
    };
    on(PollItem::Next(&tok[..q]));
    Ok(())
}

/// Index just past the JSON object starting at `start` (a `{`).
fn object_end(s: &[u8], start: usize) -> Result<usize> {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut i = start;
    while i < s.len() {
        let b = s[i];
        if in_str {
            match b {
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_str = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(i + 1);
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    bail!("poll body: unterminated message object")
}

#[cfg(test)]
mod tests {
    use super::*;

    const U1: &str =
        r#"{"type":"update","ch":"A","seq":7,"data":{"ch":"A","n":1,"t":5,"s":"x}\"{"}}"#;
    const U2: &str = r#"{"type":"update","ch":"B","seq":8,"data":{"t":6,"a":[1,{"b":2}]}}"#;

    fn sse_stream() -> Vec<u8> {
        format!(
            "retry: 1000\n\n\
             event: subscribed\ndata: {{\"type\":\"subscribed\",\"channels\":[\"A\",\"B\"]}}\n\n\
             event: update\nid: A~7~e1\ndata: {U1}\n\n\
             : ping\n\n\
             event: update\nid: A~7~e1,B~8~e1\ndata: {U2}\n\n\
             event: close\ndata: {{\"type\":\"close\",\"code\":1001,\"reason\":\"bye\"}}\n\n"
        )
        .into_bytes()
    }

    fn sse_expected() -> Vec<(String, String)> {
        vec![
            (
                "subscribed".into(),
                r#"{"type":"subscribed","channels":["A","B"]}"#.into(),
            ),
            ("update".into(), U1.into()),
            ("update".into(), U2.into()),
            (
                "close".into(),
                r#"{"type":"close","code":1001,"reason":"bye"}"#.into(),
            ),
        ]
    }

    /// Feeds `stream` in two reads split at `split`, keeping unconsumed
    /// bytes in a buffer as the worker does.
    fn sse_split(stream: &[u8], split: usize) -> Vec<(String, String)> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for chunk in [&stream[..split], &stream[split..]] {
            buf.extend_from_slice(chunk);
            let used = parse_sse(&buf, |e| {
                out.push((
                    String::from_utf8(e.name.to_vec()).unwrap(),
                    String::from_utf8(e.data.to_vec()).unwrap(),
                ))
            })
            .unwrap();
            buf.drain(..used);
        }
        assert!(
            buf.is_empty(),
            "left over: {:?}",
            String::from_utf8_lossy(&buf)
        );
        out
    }

    #[test]
    fn sse_every_split_point() {
        let s = sse_stream();
        for split in 0..=s.len() {
            assert_eq!(sse_split(&s, split), sse_expected(), "split at {split}");
        }
        // Byte at a time.
        let mut buf = Vec::new();
        let mut n = 0;
        for &b in &s {
            buf.push(b);
            let used = parse_sse(&buf, |_| n += 1).unwrap();
            buf.drain(..used);
        }
        assert_eq!(n, 4);
    }

    fn answer(messages: &[&str], next: &str) -> Vec<u8> {
        let body = format!(
            "{{\"messages\":[{}],\"next\":\"{next}\"}}",
            messages.join(",")
        );
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn poll_split(stream: &[u8], split: usize) -> Vec<(Vec<String>, String)> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut msgs = Vec::new();
        for chunk in [&stream[..split], &stream[split..]] {
            buf.extend_from_slice(chunk);
            let used = parse_poll(&buf, |it| match it {
                PollItem::Message(m) => msgs.push(String::from_utf8(m.to_vec()).unwrap()),
                PollItem::Next(t) => out.push((
                    std::mem::take(&mut msgs),
                    String::from_utf8(t.to_vec()).unwrap(),
                )),
            })
            .unwrap();
            buf.drain(..used);
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn poll_every_split_point() {
        let s = [
            answer(&[U1, U2], "A~7~e1,B~8~e1"),
            answer(&[], "A~7~e1,B~8~e1"),
            answer(&[U2], "B~9~e2"),
        ]
        .concat();
        let expected = vec![
            (
                vec![U1.to_string(), U2.to_string()],
                "A~7~e1,B~8~e1".to_string(),
            ),
            (vec![], "A~7~e1,B~8~e1".to_string()),
            (vec![U2.to_string()], "B~9~e2".to_string()),
        ];
        for split in 0..=s.len() {
            assert_eq!(poll_split(&s, split), expected, "split at {split}");
        }
    }

    #[test]
    fn poll_errors_and_requests() {
        let bad = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
        assert!(parse_poll(bad, |_| {}).is_err());
        let mut r = Vec::new();
        stream_request(&mut r, "h:1", "/poll", b"A,B", Some(b"A~7~e,B~8~e"));
        assert_eq!(
            r,
            b"GET /poll?channels=A,B&since=A~7~e%2CB~8~e HTTP/1.1\r\nHost: h:1\r\n\r\n"
        );
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\nretry")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.content_length), (200, None));
    }
}

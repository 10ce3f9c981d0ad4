//! Client messages on a WebSocket connection (sans-io): the JSON requests
//! (`subscribe`, `unsubscribe`), the replies to them, and the error codes a
//! client can be sent. Protocol-neutral: SSE and long-polling requests will
//! parse into the same [`ClientOp`].

use bytes::Bytes;
use serde::Deserialize;

use crate::channel;
use crate::ingest::history::Position;
use crate::protocol::frame;

/// Error codes sent to clients in `{"type":"error","code":...}`: the one list
/// of them (README, "Client protocol").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not valid JSON, or not an object.
    BadJson,
    /// Missing `op` or `channels`, or of the wrong type.
    BadRequest,
    /// An `op` the engine does not know.
    UnknownOp,
    /// A channel name outside the alphabet or length.
    BadChannel,
    /// Over `max_channels_per_connection`; the request is not applied.
    TooManyChannels,
    /// A binary message.
    Unsupported,
    /// The engine's channel table is full.
    ChannelLimit,
    /// The token does not allow these channels; the rest of the request is
    /// applied.
    Forbidden,
    /// Over `client_messages_per_second`; the message is dropped.
    RateLimited,
}

impl ErrorCode {
    /// Every code, for docs and tests.
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::BadJson,
        ErrorCode::BadRequest,
        ErrorCode::UnknownOp,
        ErrorCode::BadChannel,
        ErrorCode::TooManyChannels,
        ErrorCode::Unsupported,
        ErrorCode::ChannelLimit,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
    ];

    /// The code as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::BadChannel => "bad_channel",
            ErrorCode::TooManyChannels => "too_many_channels",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::ChannelLimit => "channel_limit",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Acknowledgement kinds: `{"type":"subscribed"|"unsubscribed",...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// The subscriptions are live.
    Subscribed,
    /// Nothing more arrives for these channels.
    Unsubscribed,
}

impl Ack {
    fn as_str(self) -> &'static str {
        match self {
            Ack::Subscribed => "subscribed",
            Ack::Unsubscribed => "unsubscribed",
        }
    }
}

/// A client request.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientOp {
    /// Subscribe to these channels (valid, deduplicated, in order), each
    /// from the position given in `since` (aligned with the names; empty
    /// when none is given).
    Subscribe(Vec<Box<str>>, Vec<Option<Position>>),
    /// Unsubscribe from these channels.
    Unsubscribe(Vec<Box<str>>),
    /// Authenticate, or refresh the token.
    Auth(String),
    /// An application-level ping (`{"op":"ping"}`): answered with
    /// `{"type":"pong"}`. Browsers cannot see WebSocket pings, so this is
    /// how a page learns the server still answers.
    Ping,
}

/// A bad client message: answered with an error frame, connection kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human text.
    pub message: String,
}

impl ClientError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ClientError {
            code,
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
struct RawOp {
    op: Option<serde_json::Value>,
    channels: Option<serde_json::Value>,
    token: Option<serde_json::Value>,
    since: Option<serde_json::Value>,
}

/// Parses a client text message.
///
/// # Errors
/// `bad_json`, `bad_request`, `unknown_op`, `bad_channel` or `too_many_channels`.
pub fn parse_client_message(text: &[u8], max_channels: usize) -> Result<ClientOp, ClientError> {
    // serde's derived structs also accept a JSON array in field order; the
    // protocol speaks objects only.
    if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ClientError::new(
            ErrorCode::BadJson,
            "message is not a JSON object",
        ));
    }
    let raw: RawOp = serde_json::from_slice(text).map_err(|e| {
        ClientError::new(
            ErrorCode::BadJson,
            format!("message is not a JSON object: {e}"),
        )
    })?;
    let op = match raw.op {
        Some(serde_json::Value::String(op)) => op,
        Some(_) => {
            return Err(ClientError::new(
                ErrorCode::BadRequest,
                "\"op\" must be a string",
            ));
        }
        None => return Err(ClientError::new(ErrorCode::BadRequest, "missing \"op\"")),
    };
    if op == "auth" {
        return match raw.token {
            Some(serde_json::Value::String(t)) => Ok(ClientOp::Auth(t)),
            _ => Err(ClientError::new(
                ErrorCode::BadRequest,
                "\"token\" must be a string",
            )),
        };
    }
    if op == "ping" {
        return Ok(ClientOp::Ping);
    }
    if op != "subscribe" && op != "unsubscribe" {
        return Err(ClientError::new(
            ErrorCode::UnknownOp,
            format!(
                "unknown op {:?}: use subscribe, unsubscribe, auth or ping",
                truncate(&op, 64)
            ),
        ));
    }
    let Some(serde_json::Value::Array(list)) = raw.channels else {
        return Err(ClientError::new(
            ErrorCode::BadRequest,
            "\"channels\" must be an array of channel names",
        ));
    };
    if list.len() > max_channels {
        return Err(ClientError::new(
            ErrorCode::TooManyChannels,
            format!(
                "{} channels in one request; the limit per connection is {max_channels}",
                list.len()
            ),
        ));
    }
    let mut names: Vec<Box<str>> = Vec::with_capacity(list.len());
    for v in list {
        let serde_json::Value::String(name) = v else {
            return Err(ClientError::new(
                ErrorCode::BadChannel,
                "channel names must be strings",
            ));
        };
        if !channel::is_valid(name.as_bytes()) {
            return Err(ClientError::new(
                ErrorCode::BadChannel,
                format!(
                    "invalid channel {:?}: need 1 to 128 bytes of A-Za-z0-9._:-",
                    truncate(&name, 64)
                ),
            ));
        }
        if !names.iter().any(|n| **n == *name) {
            names.push(name.into_boxed_str());
        }
    }
    Ok(if op == "subscribe" {
        let since = match raw.since {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Object(map)) => {
                let mut since = Vec::with_capacity(names.len());
                for n in &names {
                    since.push(match map.get(&**n) {
                        None => None,
                        Some(p) => Some(position(n, p)?),
                    });
                }
                since
            }
            Some(_) => {
                return Err(ClientError::new(
                    ErrorCode::BadRequest,
                    "\"since\" must be an object: {\"CH\":{\"seq\":N,\"epoch\":\"...\"}}",
                ));
            }
        };
        ClientOp::Subscribe(names, since)
    } else {
        ClientOp::Unsubscribe(names)
    })
}

/// One channel's `{"seq":N,"epoch":"..."}` in `since`.
fn position(name: &str, v: &serde_json::Value) -> Result<Position, ClientError> {
    let seq = v.get("seq").and_then(serde_json::Value::as_u64);
    let epoch = v.get("epoch").and_then(serde_json::Value::as_str);
    match (seq, epoch) {
        (Some(seq), Some(epoch)) if epoch.len() <= 64 => Ok(Position {
            seq,
            epoch: epoch.into(),
        }),
        _ => Err(ClientError::new(
            ErrorCode::BadRequest,
            format!(
                "since.{}: need {{\"seq\":<number>,\"epoch\":\"<string>\"}} as the engine sent them",
                truncate(name, 64)
            ),
        )),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// `{"type":"subscribed","channels":[...]}` (or `unsubscribed`) as a frame.
pub fn ack_frame(kind: Ack, names: &[Box<str>]) -> Bytes {
    frame::text(ack_json(kind, names).as_bytes())
}

fn ack_json(kind: Ack, names: &[Box<str>]) -> String {
    let kind = kind.as_str();
    let mut s = String::with_capacity(40 + names.iter().map(|n| n.len() + 3).sum::<usize>());
    s.push_str("{\"type\":\"");
    s.push_str(kind);
    s.push_str("\",\"channels\":[");
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        // Valid names need no escaping.
        s.push('"');
        s.push_str(n);
        s.push('"');
    }
    s.push_str("]}");
    s
}

/// `{"type":"unsubscribed","channels":[...],"reason":"forbidden"}`: the
/// server ended these subscriptions (a refreshed token no longer allows
/// them).
pub fn ended_frame(names: &[Box<str>], reason: &str) -> Bytes {
    let body = serde_json::json!({"type": "unsubscribed", "channels": names, "reason": reason});
    frame::text(body.to_string().as_bytes())
}

/// `{"type":"authenticated","sub":...,"exp":...}`: the token was accepted.
pub fn authenticated_frame(sub: &str, exp: u64) -> Bytes {
    let body = serde_json::json!({"type": "authenticated", "sub": sub, "exp": exp});
    frame::text(body.to_string().as_bytes())
}

/// `{"type":"token_expiring","exp":...}`: send `{"op":"auth"}` with a new
/// token before `exp`.
pub fn token_expiring_frame(exp: u64) -> Bytes {
    frame::text(format!("{{\"type\":\"token_expiring\",\"exp\":{exp}}}").as_bytes())
}

/// `{"type":"subscribed","channels":[...],"positions":{"CH":{"seq":N,"epoch":"..."}}}`:
/// the ack of a subscribe, with where each live channel's stream is (the
/// last seq its snapshot or replay covers). `positions` is left out when
/// empty.
pub fn subscribed_frame(names: &[Box<str>], positions: &[(&str, u64, &str)]) -> Bytes {
    let mut s = ack_json(Ack::Subscribed, names);
    if !positions.is_empty() {
        // Names and epochs need no escaping (channel alphabet, hex).
        s.pop();
        s.push_str(",\"positions\":{");
        for (i, (ch, seq, epoch)) in positions.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push('"');
            s.push_str(ch);
            s.push_str("\":{\"seq\":");
            s.push_str(itoa::Buffer::new().format(*seq));
            s.push_str(",\"epoch\":\"");
            s.push_str(epoch);
            s.push_str("\"}");
        }
        s.push_str("}}");
    }
    frame::text(s.as_bytes())
}

/// `{"type":"resync","ch":...,"epoch":...,"reason":...}`: the client's
/// position cannot be resumed; the snapshot follows.
pub fn resync_frame(ch: &str, epoch: &str, reason: &str) -> Bytes {
    let body = serde_json::json!({"type": "resync", "ch": ch, "epoch": epoch, "reason": reason});
    frame::text(body.to_string().as_bytes())
}

/// `{"type":"error","code":"forbidden","message":...,"channels":[...]}`:
/// the token does not allow these channels (named, so a client can drop
/// them without reading the message).
pub fn forbidden_frame(channels: &[Box<str>]) -> Bytes {
    let message = format!("not allowed by the token: {}", channels.join(","));
    let body = serde_json::json!({"type": "error", "code": ErrorCode::Forbidden.as_str(),
        "message": message, "channels": channels});
    frame::text(body.to_string().as_bytes())
}

/// `{"type":"pong"}`: the answer to `{"op":"ping"}`.
pub fn pong_frame() -> Bytes {
    frame::text(b"{\"type\":\"pong\"}")
}

/// `{"type":"error","code":...,"message":...}` as a frame.
pub fn error_frame(code: ErrorCode, message: &str) -> Bytes {
    let body = serde_json::json!({"type": "error", "code": code.as_str(), "message": message});
    frame::text(body.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_and_their_errors() {
        let ok =
            parse_client_message(br#"{"op":"subscribe","channels":["A","B","A"]}"#, 10).unwrap();
        assert_eq!(
            ok,
            ClientOp::Subscribe(vec!["A".into(), "B".into()], Vec::new())
        );
        let resume = parse_client_message(
            br#"{"op":"subscribe","channels":["A","B"],"since":{"B":{"seq":4,"epoch":"e1"},"Z":{}}}"#,
            10,
        )
        .unwrap();
        assert_eq!(
            resume,
            ClientOp::Subscribe(
                vec!["A".into(), "B".into()],
                vec![
                    None,
                    Some(Position {
                        seq: 4,
                        epoch: "e1".into()
                    })
                ]
            )
        );
        let code = |m: &str, max| {
            parse_client_message(m.as_bytes(), max)
                .unwrap_err()
                .code
                .as_str()
        };
        assert_eq!(code("not json", 10), "bad_json");
        assert_eq!(code("[1]", 10), "bad_json");
        // serde would read an array in field order; objects only.
        assert_eq!(code(r#"["subscribe",["A"]]"#, 10), "bad_json");
        assert_eq!(code(r#"  "subscribe""#, 10), "bad_json");
        assert!(parse_client_message(br#" {"op":"subscribe","channels":[]}"#, 10).is_ok());
        assert_eq!(code(r#"{"channels":[]}"#, 10), "bad_request");
        assert_eq!(code(r#"{"op":"dance","channels":[]}"#, 10), "unknown_op");
        assert_eq!(code(r#"{"op":"subscribe"}"#, 10), "bad_request");
        assert_eq!(
            parse_client_message(br#"{"op":"auth","token":"a.b.c"}"#, 10),
            Ok(ClientOp::Auth("a.b.c".into()))
        );
        assert_eq!(code(r#"{"op":"auth","token":5}"#, 10), "bad_request");
        assert_eq!(code(r#"{"op":"auth"}"#, 10), "bad_request");
        assert_eq!(
            code(r#"{"op":"subscribe","channels":["A"],"since":[]}"#, 10),
            "bad_request"
        );
        assert_eq!(
            code(
                r#"{"op":"subscribe","channels":["A"],"since":{"A":{"seq":-1,"epoch":"e"}}}"#,
                10
            ),
            "bad_request"
        );
        assert_eq!(
            code(r#"{"op":"subscribe","channels":["a b"]}"#, 10),
            "bad_channel"
        );
        assert_eq!(
            code(r#"{"op":"subscribe","channels":[1]}"#, 10),
            "bad_channel"
        );
        assert_eq!(
            code(r#"{"op":"subscribe","channels":["A","B"]}"#, 1),
            "too_many_channels"
        );
    }

    #[test]
    fn replies_are_valid_json() {
        let f = ack_frame(Ack::Subscribed, &["A".into(), "B.c".into()]);
        let v: serde_json::Value = serde_json::from_slice(&f[2..]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"subscribed","channels":["A","B.c"]})
        );
        let f = subscribed_frame(&["A".into(), "B".into()], &[("A", 41, "ab-1")]);
        assert!(f[2..].starts_with(br#"{"type":"subscribed""#));
        let v: serde_json::Value = serde_json::from_slice(&f[2..]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"subscribed","channels":["A","B"],
                "positions":{"A":{"seq":41,"epoch":"ab-1"}}})
        );
        let f = error_frame(ErrorCode::BadJson, "quote \" and \n newline");
        let v: serde_json::Value = serde_json::from_slice(&f[2..]).unwrap();
        assert_eq!(v["message"], "quote \" and \n newline");
    }
}

#[cfg(test)]
mod robustness {
    use super::*;
    use crate::protocol::ws::{WsEvent, read_frames};
    use crate::rng::Rng;

    /// Random and mutated client bytes never panic the parsers, and whatever
    /// is consumed stays within the input. Seeded; replay a failure with the
    /// printed seed via TICKWIRE_FUZZ_SEED.
    #[test]
    fn random_client_bytes_never_panic() {
        let seed: u64 = std::env::var("TICKWIRE_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(42);
        let mut rng = Rng::new(seed);
        let valid_sub = br#"{"op":"subscribe","channels":["AAPL","MSFT"]}"#;
        let rounds = if cfg!(miri) { 100 } else { 50_000 };
        for round in 0..rounds {
            let len = rng.below(300) as usize;
            let mut buf: Vec<u8> = if rng.below(2) == 0 {
                (0..len).map(|_| rng.next_u64() as u8).collect()
            } else {
                // A valid masked frame with a few bytes flipped.
                let mut f = vec![0x81, 0x80 | valid_sub.len() as u8, 1, 2, 3, 4];
                f.extend(
                    valid_sub
                        .iter()
                        .enumerate()
                        .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]),
                );
                for _ in 0..rng.below(4) {
                    let at = rng.below(f.len() as u64) as usize;
                    f[at] = rng.next_u64() as u8;
                }
                f.truncate(len.max(2));
                f
            };
            let total = buf.len();
            let mut message = Vec::new();
            let mut opcode = 0;
            let r = read_frames(&mut buf, 1024, &mut message, &mut opcode, |e| {
                if let WsEvent::Text(t) = e {
                    let _ = parse_client_message(t, 10);
                }
            });
            if let Ok(used) = r {
                assert!(used <= total, "seed {seed} round {round}");
            }
            let _ = crate::protocol::http::parse(&buf);
            let _ = parse_client_message(&buf, 10);
        }
    }
}

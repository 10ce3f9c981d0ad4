//! HTTP on the listen port (sans-io): the WebSocket upgrade handshake, the
//! routes of the plain endpoints (`/healthz`, `/metrics`, `/`) and their
//! responses. Requests are parsed with httparse; anything malformed gets a
//! 400 and a closed connection.

use bytes::Bytes;

/// Longest request head accepted; longer gets 431.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Most headers in a request head; more gets 431. Browsers send about 15.
pub const MAX_HEADERS: usize = 64;

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A valid WebSocket upgrade on `/ws`, with the `Sec-WebSocket-Accept` value.
    Upgrade {
        /// Response header value.
        accept: String,
        /// Bytes of the request head (the rest are frames).
        head_len: usize,
        /// What the worker checks before answering 101.
        meta: UpgradeMeta,
    },
    /// A valid WebSocket upgrade on `/echo`, the conformance endpoint: the
    /// worker serves it only when it is enabled (else 404).
    Echo {
        /// Response header value.
        accept: String,
        /// Bytes of the request head.
        head_len: usize,
    },
    /// `GET /api/history`: a channel's stored updates (the ingest thread
    /// answers).
    History(HistoryQuery),
    /// `GET /api/channels`: a page of the channel table (the ingest thread
    /// answers).
    Channels(ChannelsQuery),
    /// `POST /api/publish` with its body length: the worker waits for the
    /// body, then checks and publishes it.
    Publish(PublishHead),
    /// `GET /sse` or `GET /poll`: updates over plain HTTP (the worker
    /// checks access and subscribes).
    Stream(StreamQuery),
    /// A plain request: respond with this and close.
    Respond(Response),
}

/// Which HTTP transport a [`StreamQuery`] asks for.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum StreamKind {
    /// Server-Sent Events: one long response, an event per message.
    Sse,
    /// Long-polling: one JSON answer per request, held until something new.
    Poll,
}

/// `GET /sse?channels=A,B&since=TOKEN` or `GET /poll?channels=A,B&since=TOKEN&timeout=S`.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct StreamQuery {
    /// SSE or long-poll.
    pub kind: StreamKind,
    /// Bytes of the request head.
    pub head_len: usize,
    /// The channels (valid names, deduplicated, in order).
    pub channels: Vec<Box<str>>,
    /// Where to resume (`Last-Event-ID`, else `since`).
    pub since: Vec<crate::protocol::resume::Entry>,
    /// Token, origin and proxy addresses, as on an upgrade.
    pub meta: UpgradeMeta,
    /// Long-poll: hold at most this many seconds (capped by `poll_timeout`).
    pub timeout_s: Option<u64>,
    /// The client asked to close after this request.
    pub close: bool,
}

/// The head of a `POST /api/publish`.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct PublishHead {
    /// Bytes of the request head.
    pub head_len: usize,
    /// Bytes of the body that follow it.
    pub body_len: usize,
    /// `Authorization: Bearer` (the API key).
    pub bearer: Option<String>,
    /// The client asked to close after this request (`Connection: close`,
    /// or HTTP/1.0 without keep-alive).
    pub close: bool,
    /// The addresses a proxy recorded (see [`UpgradeMeta::forwarded`]).
    pub forwarded: Vec<std::net::IpAddr>,
}

/// `GET /api/history?ch=AAPL&since=41&epoch=...&limit=100`.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct HistoryQuery {
    /// The channel (valid name).
    pub ch: String,
    /// Updates after this seq (0: all kept).
    pub since: u64,
    /// The epoch `since` belongs to, if the client has one.
    pub epoch: Option<String>,
    /// At most this many updates (1 to 1000; default 100).
    pub limit: usize,
    /// `Authorization: Bearer`, else `?token=`.
    pub token: Option<String>,
    /// A HEAD request.
    pub head_only: bool,
}

/// `GET /api/channels?cursor=N&limit=M`.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct ChannelsQuery {
    /// Where the page starts (the `next` of the page before; 0 first).
    pub cursor: usize,
    /// Channels per page (1 to 1000; default 100).
    pub limit: usize,
    /// `Authorization: Bearer` (the API key).
    pub bearer: Option<String>,
    /// A HEAD request.
    pub head_only: bool,
    /// The addresses a proxy recorded (see [`UpgradeMeta::forwarded`]).
    pub forwarded: Vec<std::net::IpAddr>,
}

/// Most updates one history page holds.
pub const HISTORY_LIMIT_MAX: usize = 1000;

/// The parts of an upgrade request the access checks read.
#[derive(Debug, PartialEq, Eq, Default, Clone)]
pub struct UpgradeMeta {
    /// `Authorization: Bearer <token>`, else the `token` query parameter.
    pub token: Option<String>,
    /// The `Origin` header (browsers send it).
    pub origin: Option<String>,
    /// The addresses a proxy recorded, nearest last (`Forwarded: for=`,
    /// else `X-Forwarded-For`); trusted only when the peer is a trusted
    /// proxy.
    pub forwarded: Vec<std::net::IpAddr>,
    /// `?batch=1` on `/ws`: several server messages per WebSocket message
    /// (see [`crate::worker::batch`]).
    pub batch: bool,
}

/// Plain responses.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Response {
    /// 200 on /healthz.
    Health,
    /// 200 with the metrics text.
    Metrics,
    /// /readyz: the worker answers 200 serving or 503 starting/draining.
    Ready,
    /// 503 with a one-line reason (the engine is draining, a limit).
    Unavailable(&'static str),
    /// 401 with a one-line reason (the token).
    Unauthorized(&'static str),
    /// 403 with a one-line reason (the origin).
    Forbidden(&'static str),
    /// 429 with a one-line reason and `Retry-After: 1`.
    TooManyRequests(&'static str),
    /// 411: a body without `Content-Length`.
    LengthRequired,
    /// 413: a body over the limit.
    PayloadTooLarge,
    /// 200 with the quote page.
    Index,
    /// 200 with the client library, `/tickwire.js`.
    Script,
    /// 200 with the JSON stats the dashboard draws (the admin thread
    /// renders it, like the metrics).
    Stats,
    /// 404.
    NotFound,
    /// 405 for methods other than GET/HEAD.
    MethodNotAllowed,
    /// 426 for a request to /ws that is not a WebSocket upgrade (with a reason).
    UpgradeRequired(&'static str),
    /// 400 with `Sec-WebSocket-Version: 13` for an upgrade of another version
    /// (RFC 6455 4.4).
    BadVersion,
    /// 400 for a malformed request.
    BadRequest(&'static str),
    /// 431 for a head over the limit.
    HeadTooLarge,
}

/// Parses the request head in `buf`. `Ok(None)`: incomplete, read more.
pub fn parse(buf: &[u8]) -> Option<Request> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        // A head that arrived whole in one read is held to the same limit.
        Ok(httparse::Status::Complete(n)) if n > MAX_REQUEST_HEAD => {
            return Some(Request::Respond(Response::HeadTooLarge));
        }
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_REQUEST_HEAD {
                return Some(Request::Respond(Response::HeadTooLarge));
            }
            return None;
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Some(Request::Respond(Response::HeadTooLarge));
        }
        Err(_) => {
            return Some(Request::Respond(Response::BadRequest(
                "malformed HTTP request",
            )));
        }
    };
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path == "/api/publish" {
        if method != "POST" {
            return Some(Request::Respond(Response::MethodNotAllowed));
        }
        return Some(publish_head(&req, head_len));
    }
    if method != "GET" && method != "HEAD" {
        return Some(Request::Respond(Response::MethodNotAllowed));
    }
    let resp = match path {
        // RFC 6455 4.1: the handshake is a GET.
        "/ws" if method == "HEAD" => {
            Response::BadRequest("the WebSocket handshake is a GET request")
        }
        "/ws" => return Some(upgrade(req.headers, query, head_len)),
        "/echo" if method == "GET" => {
            return Some(match upgrade(req.headers, query, head_len) {
                Request::Upgrade {
                    accept, head_len, ..
                } => Request::Echo { accept, head_len },
                other => other,
            });
        }
        "/api/channels" => {
            let bad = |why| Some(Request::Respond(Response::BadRequest(why)));
            let cursor = match query_param(query, "cursor").map(|s| s.parse::<usize>()) {
                None => 0,
                Some(Ok(n)) => n,
                Some(Err(_)) => return bad("cursor must be a number"),
            };
            let limit = match query_param(query, "limit").map(|s| s.parse::<usize>()) {
                None => 100,
                Some(Ok(n)) if (1..=HISTORY_LIMIT_MAX).contains(&n) => n,
                Some(_) => return bad("limit must be 1 to 1000"),
            };
            return Some(Request::Channels(ChannelsQuery {
                cursor,
                limit,
                bearer: bearer_token(req.headers),
                head_only: method == "HEAD",
                forwarded: forwarded_addrs(req.headers),
            }));
        }
        "/api/history" => {
            return Some(history_query(req.headers, query, method == "HEAD"));
        }
        "/sse" | "/poll" if method == "HEAD" => Response::BadRequest("a stream is a GET request"),
        "/sse" => return Some(stream_query(&req, query, head_len, StreamKind::Sse)),
        "/poll" => return Some(stream_query(&req, query, head_len, StreamKind::Poll)),
        "/tickwire.js" => Response::Script,
        "/api/stats" => Response::Stats,
        "/healthz" => Response::Health,
        "/metrics" => Response::Metrics,
        "/readyz" => Response::Ready,
        "/" | "/index.html" => Response::Index,
        _ => Response::NotFound,
    };
    Some(Request::Respond(resp))
}

fn header<'a>(headers: &'a [httparse::Header<'_>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The value of query parameter `name`, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    let raw = query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?;
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Client addresses from `Forwarded` (RFC 7239) and `X-Forwarded-For`, in
/// header order (the client first, the nearest proxy's peer last), the
/// `Forwarded` entries before the `X-Forwarded-For` ones. Both are read: a
/// proxy writes one and may pass the other through from the client as it
/// came, and the engine cannot know which, so a client-written header can
/// add entries but never remove the proxy's. An entry that does not parse
/// (`unknown`, an obfuscated name) stands as [`UNKNOWN_HOP`], which is
/// neither loopback nor anyone's trusted proxy.
fn forwarded_addrs(headers: &[httparse::Header<'_>]) -> Vec<std::net::IpAddr> {
    let mut out = Vec::new();
    let parse = |s: &str| -> std::net::IpAddr {
        let s = s.trim().trim_matches('"');
        let ip = if let Some(rest) = s.strip_prefix('[') {
            rest.split(']').next().and_then(|v| v.parse().ok())
        } else if let Ok(ip) = s.parse() {
            Some(ip)
        } else {
            // v4 with a port.
            s.rsplit_once(':').and_then(|(h, _)| h.parse().ok())
        };
        ip.unwrap_or(UNKNOWN_HOP)
    };
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Forwarded"))
    {
        let Ok(v) = std::str::from_utf8(h.value) else {
            out.push(UNKNOWN_HOP);
            continue;
        };
        for element in v.split(',') {
            let Some(for_) = element.split(';').find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then_some(v)
            }) else {
                continue;
            };
            out.push(parse(for_));
        }
    }
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("X-Forwarded-For"))
    {
        let Ok(v) = std::str::from_utf8(h.value) else {
            out.push(UNKNOWN_HOP);
            continue;
        };
        for part in v.split(',') {
            out.push(parse(part));
        }
    }
    out
}

/// A forwarded entry that names no address: `::`, never loopback.
pub const UNKNOWN_HOP: std::net::IpAddr = std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

fn bearer_token(headers: &[httparse::Header<'_>]) -> Option<String> {
    header(headers, "Authorization")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_string())
        })
}

/// Whether the client asked to close after this request.
fn wants_close(req: &httparse::Request<'_, '_>) -> bool {
    let connection = header(req.headers, "Connection");
    match req.version {
        Some(0) => !connection.is_some_and(|v| has_token(v, "keep-alive")),
        _ => connection.is_some_and(|v| has_token(v, "close")),
    }
}

fn stream_query(
    req: &httparse::Request<'_, '_>,
    query: &str,
    head_len: usize,
    kind: StreamKind,
) -> Request {
    let bad = |why| Request::Respond(Response::BadRequest(why));
    let headers = &*req.headers;
    let Some(list) = query_param(query, "channels") else {
        return bad("missing channels: ?channels=A,B");
    };
    let mut channels: Vec<Box<str>> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !crate::channel::is_valid(name.as_bytes()) {
            return bad("invalid channel: need 1 to 128 bytes of A-Za-z0-9._:-");
        }
        if channels.len() > crate::protocol::resume::TOKEN_ENTRIES_MAX {
            return bad("too many channels");
        }
        if !channels.iter().any(|c| **c == *name) {
            channels.push(name.into());
        }
    }
    if channels.is_empty() {
        return bad("missing channels: ?channels=A,B");
    }
    // EventSource sends the last id it saw when it reconnects by itself:
    // newer than the `since` of the URL it was opened with.
    let last_event_id = match kind {
        StreamKind::Sse => header(headers, "Last-Event-ID")
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_string),
        StreamKind::Poll => None,
    };
    let since = match last_event_id.or_else(|| query_param(query, "since")) {
        None => Vec::new(),
        Some(t) => match crate::protocol::resume::parse(&t) {
            Ok(s) => s,
            Err(_) => return bad("bad resume token: need NAME~SEQ~EPOCH entries joined by commas"),
        },
    };
    let timeout_s = match query_param(query, "timeout").map(|s| s.parse::<u64>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return bad("timeout must be a number of seconds"),
    };
    Request::Stream(StreamQuery {
        kind,
        head_len,
        channels,
        since,
        meta: UpgradeMeta {
            token: bearer_token(headers).or_else(|| query_param(query, "token")),
            origin: header(headers, "Origin")
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(|v| v.trim().to_string()),
            forwarded: forwarded_addrs(headers),
            batch: false,
        },
        timeout_s,
        close: wants_close(req),
    })
}

fn publish_head(req: &httparse::Request<'_, '_>, head_len: usize) -> Request {
    let headers = &*req.headers;
    if header(headers, "Transfer-Encoding").is_some() {
        return Request::Respond(Response::LengthRequired);
    }
    let Some(len) = header(headers, "Content-Length") else {
        return Request::Respond(Response::LengthRequired);
    };
    let Some(body_len) = std::str::from_utf8(len)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
    else {
        return Request::Respond(Response::BadRequest("invalid Content-Length"));
    };
    let close = wants_close(req);
    let bearer = bearer_token(headers);
    Request::Publish(PublishHead {
        head_len,
        body_len,
        bearer,
        close,
        forwarded: forwarded_addrs(headers),
    })
}

/// A response that keeps the connection open (HTTP/1.1 keep-alive).
pub fn respond_keep_alive(status: &str, content_type: &str, body: &[u8], close: bool) -> Bytes {
    let conn = if close { "close" } else { "keep-alive" };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: {conn}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    Bytes::from(out)
}

fn history_query(headers: &[httparse::Header<'_>], query: &str, head_only: bool) -> Request {
    let bad = |why| Request::Respond(Response::BadRequest(why));
    let Some(ch) = query_param(query, "ch") else {
        return bad("missing ch: /api/history?ch=NAME&since=SEQ&limit=N");
    };
    if !crate::channel::is_valid(ch.as_bytes()) {
        return bad("invalid ch: need 1 to 128 bytes of A-Za-z0-9._:-");
    }
    let since = match query_param(query, "since").map(|s| s.parse::<u64>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return bad("since must be a sequence number"),
    };
    let limit = match query_param(query, "limit").map(|s| s.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=HISTORY_LIMIT_MAX).contains(&n) => n,
        Some(_) => return bad("limit must be 1 to 1000"),
    };
    let token = bearer_token(headers).or_else(|| query_param(query, "token"));
    Request::History(HistoryQuery {
        ch,
        since,
        epoch: query_param(query, "epoch"),
        limit,
        token,
        head_only,
    })
}

fn upgrade(headers: &[httparse::Header<'_>], query: &str, head_len: usize) -> Request {
    let bad = |why| Request::Respond(Response::UpgradeRequired(why));
    match header(headers, "Upgrade") {
        Some(v) if has_token(v, "websocket") => {}
        _ => return bad("this endpoint speaks WebSocket: send Upgrade: websocket"),
    }
    match header(headers, "Connection") {
        Some(v) if has_token(v, "upgrade") => {}
        _ => return bad("missing Connection: Upgrade"),
    }
    if header(headers, "Sec-WebSocket-Version") != Some(b"13") {
        return Request::Respond(Response::BadVersion);
    }
    let Some(key) = header(headers, "Sec-WebSocket-Key") else {
        return Request::Respond(Response::BadRequest("missing Sec-WebSocket-Key"));
    };
    let key = key.trim_ascii();
    if key.len() != 24 {
        return Request::Respond(Response::BadRequest("invalid Sec-WebSocket-Key"));
    }
    let batch = match query_param(query, "batch").as_deref() {
        None | Some("0") => false,
        Some("1") => true,
        Some(_) => return Request::Respond(Response::BadRequest("batch must be 0 or 1")),
    };
    let bearer = bearer_token(headers);
    let meta = UpgradeMeta {
        batch,
        token: bearer.or_else(|| query_param(query, "token")),
        origin: header(headers, "Origin")
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(|v| v.trim().to_string()),
        forwarded: forwarded_addrs(headers),
    };
    Request::Upgrade {
        accept: tungstenite::handshake::derive_accept_key(key),
        head_len,
        meta,
    }
}

/// The 101 response completing the handshake.
pub fn switching_protocols(accept: &str) -> Bytes {
    Bytes::from(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    ))
}

/// A complete response with `Connection: close`.
pub fn respond(status: &str, content_type: &str, body: &[u8], head_only: bool) -> Bytes {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    Bytes::from(out)
}

/// Bodies of the pages the engine serves; the rest of the responses are
/// fixed text.
#[derive(Debug, Clone)]
pub struct Pages {
    /// The page at `/`.
    pub index: Bytes,
}

/// The client library, served at `/tickwire.js` (the dashboard imports it).
pub const TICKWIRE_JS: &str = include_str!("../../clients/js/tickwire.js");

const TEXT: &str = "text/plain; charset=utf-8";

/// The complete response for a plain request (not `/metrics`, which the
/// admin thread renders).
pub fn render(resp: Response, head_only: bool, pages: &Pages) -> Bytes {
    match resp {
        Response::Health => respond("200 OK", TEXT, b"ok\n", head_only),
        Response::Metrics => respond(
            "503 Service Unavailable",
            TEXT,
            b"metrics unavailable\n",
            head_only,
        ),
        Response::Ready => respond("200 OK", TEXT, b"ready\n", head_only),
        Response::Unavailable(why) => respond(
            "503 Service Unavailable",
            TEXT,
            format!("{why}\n").as_bytes(),
            head_only,
        ),
        Response::Unauthorized(why) => respond(
            "401 Unauthorized",
            TEXT,
            format!("{why}\n").as_bytes(),
            head_only,
        ),
        Response::Forbidden(why) => respond(
            "403 Forbidden",
            TEXT,
            format!("{why}\n").as_bytes(),
            head_only,
        ),
        Response::TooManyRequests(why) => {
            let r = respond(
                "429 Too Many Requests",
                TEXT,
                format!("{why}\n").as_bytes(),
                head_only,
            );
            with_header(r, "Retry-After: 1\r\n")
        }
        Response::LengthRequired => respond(
            "411 Length Required",
            TEXT,
            b"send the body with Content-Length\n",
            head_only,
        ),
        Response::PayloadTooLarge => respond(
            "413 Payload Too Large",
            TEXT,
            b"request body too large (max_publish_body)\n",
            head_only,
        ),
        Response::Index => respond(
            "200 OK",
            "text/html; charset=utf-8",
            &pages.index,
            head_only,
        ),
        Response::Script => respond(
            "200 OK",
            "text/javascript; charset=utf-8",
            TICKWIRE_JS.as_bytes(),
            head_only,
        ),
        Response::Stats => respond(
            "503 Service Unavailable",
            TEXT,
            b"stats unavailable\n",
            head_only,
        ),
        Response::NotFound => respond("404 Not Found", TEXT, b"not found\n", head_only),
        Response::MethodNotAllowed => {
            respond("405 Method Not Allowed", TEXT, b"use GET\n", head_only)
        }
        Response::UpgradeRequired(why) => with_version_header(respond(
            "426 Upgrade Required",
            TEXT,
            format!("{why}\n").as_bytes(),
            head_only,
        )),
        Response::BadVersion => with_version_header(respond(
            "400 Bad Request",
            TEXT,
            b"Sec-WebSocket-Version must be 13\n",
            head_only,
        )),
        Response::BadRequest(why) => respond(
            "400 Bad Request",
            TEXT,
            format!("{why}\n").as_bytes(),
            head_only,
        ),
        Response::HeadTooLarge => respond(
            "431 Request Header Fields Too Large",
            TEXT,
            b"request head too large\n",
            head_only,
        ),
    }
}

/// Whether a response refuses the request (counted as an HTTP reject).
pub fn is_reject(resp: Response) -> bool {
    matches!(
        resp,
        Response::UpgradeRequired(_)
            | Response::BadVersion
            | Response::BadRequest(_)
            | Response::HeadTooLarge
    )
}

/// Adds `Upgrade: websocket` and `Sec-WebSocket-Version: 13` after the status
/// line: tells clients which protocol `/ws` speaks (RFC 6455 4.2.2, RFC 9110
/// 15.5.22).
fn with_version_header(r: Bytes) -> Bytes {
    with_header(r, "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n")
}

/// Inserts header lines (each ending in CRLF) after the status line.
fn with_header(r: Bytes, lines: &str) -> Bytes {
    let at = r
        .windows(2)
        .position(|w| w == b"\r\n")
        .expect("a status line")
        + 2;
    let mut out = Vec::with_capacity(r.len() + lines.len());
    out.extend_from_slice(&r[..at]);
    out.extend_from_slice(lines.as_bytes());
    out.extend_from_slice(&r[at..]);
    Bytes::from(out)
}

/// Whether the head is a HEAD request (no body in the answer).
pub fn is_head(buf: &[u8]) -> bool {
    buf.starts_with(b"HEAD ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

    #[test]
    fn upgrade_accept_key_matches_rfc_example() {
        match parse(UPGRADE) {
            Some(Request::Upgrade {
                accept, head_len, ..
            }) => {
                assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
                assert_eq!(head_len, UPGRADE.len());
            }
            other => panic!("{other:?}"),
        }
        for cut in 0..UPGRADE.len() {
            assert_eq!(parse(&UPGRADE[..cut]), None, "cut {cut}");
        }
    }

    #[test]
    fn routes_and_refusals() {
        let r = |s: &str| parse(s.as_bytes());
        assert_eq!(
            r("GET /healthz HTTP/1.1\r\n\r\n"),
            Some(Request::Respond(Response::Health))
        );
        assert_eq!(
            r("GET /metrics?x=1 HTTP/1.1\r\n\r\n"),
            Some(Request::Respond(Response::Metrics))
        );
        assert_eq!(
            r("GET /nope HTTP/1.1\r\n\r\n"),
            Some(Request::Respond(Response::NotFound))
        );
        assert_eq!(
            r("POST /ws HTTP/1.1\r\n\r\n"),
            Some(Request::Respond(Response::MethodNotAllowed))
        );
        assert!(matches!(
            r("GET /ws HTTP/1.1\r\n\r\n"),
            Some(Request::Respond(Response::UpgradeRequired(_)))
        ));
        assert_eq!(
            r(
                "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 8\r\n\r\n"
            ),
            Some(Request::Respond(Response::BadVersion))
        );
        let upgrade = std::str::from_utf8(UPGRADE).unwrap();
        assert!(matches!(r(upgrade), Some(Request::Upgrade { .. })));
        assert_eq!(
            r(&upgrade.replacen("GET", "HEAD", 1)),
            Some(Request::Respond(Response::BadRequest(
                "the WebSocket handshake is a GET request"
            )))
        );
        assert!(matches!(
            r("\x01\x02 garbage\r\n\r\n"),
            Some(Request::Respond(Response::BadRequest(_)))
        ));
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_REQUEST_HEAD));
        assert_eq!(r(&long), Some(Request::Respond(Response::HeadTooLarge)));
        // Complete in one read, still over the limit.
        let whole = format!("{long}\r\n");
        assert_eq!(r(&whole), Some(Request::Respond(Response::HeadTooLarge)));
        let at_limit = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST_HEAD - 23)
        );
        assert_eq!(at_limit.len(), MAX_REQUEST_HEAD);
        assert_eq!(r(&at_limit), Some(Request::Respond(Response::Index)));
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(r(&many), Some(Request::Respond(Response::HeadTooLarge)));
    }

    #[test]
    fn upgrade_meta_token_origin_and_forwarded() {
        let with = |target: &str, extra: &str| {
            let req = format!(
                "GET {target} HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
            );
            match parse(req.as_bytes()) {
                Some(Request::Upgrade { meta, .. }) => meta,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(with("/ws", "").token, None);
        assert_eq!(
            with("/ws?x=1&token=a.b%2Dc&y", "").token.as_deref(),
            Some("a.b-c")
        );
        assert_eq!(with("/ws?token=%zz", "").token.as_deref(), Some("%zz"));
        assert_eq!(with("/ws?token=%4", "").token.as_deref(), Some("%4"));
        // The header wins over the query.
        let m = with(
            "/ws?token=q",
            "Authorization: bearer  h.t.x \r\nOrigin: https://a.b\r\n",
        );
        assert_eq!(m.token.as_deref(), Some("h.t.x"));
        assert_eq!(m.origin.as_deref(), Some("https://a.b"));
        assert_eq!(with("/ws", "Authorization: Basic abc\r\n").token, None);
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let m = with(
            "/ws",
            "X-Forwarded-For: 1.2.3.4, 10.0.0.1\r\nX-Forwarded-For: ::1\r\n",
        );
        assert_eq!(m.forwarded, vec![ip("1.2.3.4"), ip("10.0.0.1"), ip("::1")]);
        let m = with(
            "/ws",
            "Forwarded: for=192.0.2.60;proto=http, for=\"[2001:db8::1]:4711\", for=1.1.1.1:80\r\nX-Forwarded-For: 9.9.9.9\r\n",
        );
        // Both headers count (a proxy writes one and may pass the client's
        // other one through): Forwarded's entries first.
        assert_eq!(
            m.forwarded,
            vec![
                ip("192.0.2.60"),
                ip("2001:db8::1"),
                ip("1.1.1.1"),
                ip("9.9.9.9")
            ]
        );
        // An entry that is not an address stands as the unknown hop.
        let m = with("/ws", "X-Forwarded-For: 1.1.1.1, unknown, 2.2.2.2\r\n");
        assert_eq!(m.forwarded, vec![ip("1.1.1.1"), UNKNOWN_HOP, ip("2.2.2.2")]);
        let m = with("/ws", "Forwarded: for=_hidden\r\n");
        assert_eq!(m.forwarded, vec![UNKNOWN_HOP]);
        assert!(!UNKNOWN_HOP.is_loopback());
    }

    #[test]
    fn a_plain_get_of_ws_is_426_and_a_bad_version_400_both_naming_version_13() {
        let pages = Pages {
            index: Bytes::from_static(b"<html></html>"),
        };
        let plain = match parse(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n") {
            Some(Request::Respond(resp)) => render(resp, false, &pages),
            other => panic!("{other:?}"),
        };
        let text = std::str::from_utf8(&plain).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{text}");
        assert!(text.contains("\r\nUpgrade: websocket\r\n"), "{text}");
        let bad = render(Response::BadVersion, false, &pages);
        let text = std::str::from_utf8(&bad).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{text}");
        let head = render(Response::Index, true, &pages);
        assert!(head.ends_with(b"\r\n\r\n"), "HEAD gets no body");
        assert!(is_reject(Response::BadVersion) && !is_reject(Response::Health));
    }
}

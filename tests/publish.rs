//! The HTTP publish API against the real engine: single messages and
//! batches delivered in order to WebSocket subscribers, all-or-nothing
//! refusals naming the first bad item, idempotency keys, keep-alive and
//! pipelining on one connection, and the API key.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{Client, Server};
use serde_json::{Value, json};

/// One keep-alive HTTP connection.
struct Http {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Http {
    fn connect(addr: SocketAddr) -> Http {
        let w = TcpStream::connect(addr).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        Http { w, r }
    }

    fn request(body: &str, extra: &str) -> String {
        format!(
            "POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
    }

    fn send(&mut self, raw: &str) {
        self.w.write_all(raw.as_bytes()).unwrap();
    }

    /// The next response: (status, headers, body).
    fn response(&mut self) -> (u16, String, String) {
        let mut status = String::new();
        self.r.read_line(&mut status).unwrap();
        let code = status.split(' ').nth(1).unwrap_or("0").parse().unwrap();
        let mut head = String::new();
        let mut len = 0;
        loop {
            let mut line = String::new();
            self.r.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            head.push_str(&line);
        }
        let mut body = vec![0; len];
        self.r.read_exact(&mut body).unwrap();
        (code, head, String::from_utf8(body).unwrap())
    }

    fn publish(&mut self, body: &str) -> (u16, Value) {
        self.send(&Http::request(body, ""));
        let (code, _, body) = self.response();
        (code, serde_json::from_str(&body).unwrap())
    }
}

#[test]
fn publish_messages_and_batches_reach_subscribers_in_order() {
    let srv = Server::start(&[]);
    let mut c = Client::connect(srv.listen);
    c.subscribe(&["user:1", "user:2"]);
    let mut h = Http::connect(srv.listen);
    let (code, v) = h.publish(r#"{"ch":"user:1","data":{"m":"hello", "n": 1}}"#);
    assert_eq!(code, 200);
    assert_eq!(v, json!({"results":[{"ch":"user:1","seq":1}]}));
    let u = c.recv();
    assert_eq!(u["type"], "update");
    assert_eq!(
        (u["ch"].as_str(), u["seq"].as_u64()),
        (Some("user:1"), Some(1))
    );
    assert_eq!(u["data"], json!({"m":"hello","n":1}));
    // A batch, answered and delivered in order, on the same connection.
    let (code, v) = h
        .publish(r#"[{"ch":"user:2","data":1},{"ch":"user:1","data":2},{"ch":"user:2","data":3}]"#);
    assert_eq!(code, 200);
    assert_eq!(
        v,
        json!({"results":[{"ch":"user:2","seq":1},{"ch":"user:1","seq":2},{"ch":"user:2","seq":2}]})
    );
    // In order per channel (across channels a turn may group them).
    let mut got: Vec<(String, u64, i64)> = (0..3)
        .map(|_| {
            let u = c.recv();
            (
                u["ch"].as_str().unwrap().to_string(),
                u["seq"].as_u64().unwrap(),
                u["data"].as_i64().unwrap(),
            )
        })
        .collect();
    // A stable sort by channel keeps each channel's arrival order.
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("user:1".into(), 2, 2),
            ("user:2".into(), 1, 1),
            ("user:2".into(), 2, 3)
        ]
    );
    // The ingest thread publishes its counters after its turn, which may
    // end after the subscriber already has the updates.
    let published = srv.wait_metric(
        "tickwire_http_published_total",
        |v| v >= 4.0,
        std::time::Duration::from_secs(5),
    );
    assert_eq!(published, 4.0);
}

#[test]
fn publish_refuses_bad_batches_whole_and_goes_on() {
    let srv = Server::start(&["--max-publish-body", "4KiB", "--publish-batch-max", "3"]);
    let mut c = Client::connect(srv.listen);
    c.subscribe(&["n"]);
    let mut h = Http::connect(srv.listen);
    for (body, index, what) in [
        ("{not json", 0, "malformed JSON"),
        (
            r#"[{"ch":"n","data":1},{"ch":"bad name","data":2}]"#,
            1,
            "invalid ch",
        ),
        (
            r#"[{"ch":"n","data":1},{"ch":"n"}]"#,
            1,
            "missing field data",
        ),
        (
            r#"[{"ch":"n","data":1},{"data":1}]"#,
            1,
            "missing string field ch",
        ),
        (
            r#"[{"ch":"n","data":1},{"ch":"n","data":1},{"ch":"n","data":1},{"ch":"n","data":1}]"#,
            3,
            "limit is 3",
        ),
        ("[]", 0, "empty batch"),
    ] {
        let (code, v) = h.publish(body);
        assert_eq!(code, 400, "{body}: {v}");
        assert_eq!(v["index"], index, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(what), "{body}: {v}");
    }
    // Nothing of a refused batch was published: the next is seq 1.
    let (code, v) = h.publish(r#"{"ch":"n","data":"ok"}"#);
    assert_eq!((code, &v["results"][0]["seq"]), (200, &json!(1)), "{v}");
    assert_eq!(c.recv()["data"], "ok");
    // Too large: 413, and the connection closes.
    let big = format!(r#"{{"ch":"n","data":"{}"}}"#, "x".repeat(5000));
    let (code, v) = h.publish(&big);
    assert_eq!((code, v["index"].as_u64()), (413, Some(0)), "{v}");
    // No length: 411. Not a POST: 405.
    let (code, _) = common::http_request(
        srv.listen,
        "POST /api/publish HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(code, 411);
    let (code, _) = common::http_request(srv.listen, "GET /api/publish HTTP/1.1\r\n\r\n");
    assert_eq!(code, 405);
}

#[test]
fn publish_idempotency_keys_never_duplicate() {
    let srv = Server::start(&[]);
    let mut c = Client::connect(srv.listen);
    c.subscribe(&["inbox"]);
    let mut h = Http::connect(srv.listen);
    let body = r#"{"ch":"inbox","data":{"id":1},"idempotency_key":"msg-1"}"#;
    let (_, first) = h.publish(body);
    let (_, again) = h.publish(body);
    assert_eq!(first, again, "a retry answers the first seq");
    let (_, other) = h.publish(r#"{"ch":"inbox","data":{"id":2},"idempotency_key":"msg-2"}"#);
    assert_eq!(other["results"][0]["seq"], 2);
    assert_eq!(c.recv()["seq"], 1);
    assert_eq!(c.recv()["seq"], 2, "the retry was not delivered");
    // The retry published nothing: counted apart from what was published.
    let repeats = "tickwire_http_publish_repeats_total";
    srv.wait_metric(repeats, |v| v >= 1.0, Duration::from_secs(5));
    assert_eq!(srv.metric_label(repeats, "reason=\"idempotency_key\""), 1.0);
    assert_eq!(srv.metric("tickwire_http_published_total"), 2.0);
}

#[test]
fn publish_keep_alive_and_pipelining_answer_in_order() {
    let srv = Server::start(&[]);
    let mut h = Http::connect(srv.listen);
    // Three requests in one write; the answers come in order.
    let mut raw = String::new();
    for i in 1..=3 {
        raw.push_str(&Http::request(&format!(r#"{{"ch":"p","data":{i}}}"#), ""));
    }
    h.send(&raw);
    for i in 1..=3 {
        let (code, head, body) = h.response();
        assert_eq!(code, 200);
        assert!(head.contains("Connection: keep-alive"), "{head}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["results"][0]["seq"], i);
    }
    // The same connection later; then one that asks to close.
    let (code, v) = h.publish(r#"{"ch":"p","data":4}"#);
    assert_eq!((code, &v["results"][0]["seq"]), (200, &json!(4)));
    h.send(&Http::request(
        r#"{"ch":"p","data":5}"#,
        "Connection: close\r\n",
    ));
    let (code, head, _) = h.response();
    assert_eq!(code, 200);
    assert!(head.contains("Connection: close"), "{head}");
    let mut rest = Vec::new();
    let _ = h.r.read_to_end(&mut rest);
    assert!(rest.is_empty(), "closed after the answer");
    // Several publishers at once.
    let addr = srv.listen;
    let threads: Vec<_> = (0..8)
        .map(|k| {
            std::thread::spawn(move || {
                let mut h = Http::connect(addr);
                for i in 0..50 {
                    let (code, _) = h.publish(&format!(r#"{{"ch":"m{k}","data":{i}}}"#));
                    assert_eq!(code, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let published = srv.wait_metric(
        "tickwire_http_published_total",
        |v| v >= 405.0,
        std::time::Duration::from_secs(5),
    );
    assert_eq!(published, 405.0);
}

#[test]
fn without_an_api_key_a_client_forwarded_by_a_trusted_proxy_is_not_loopback() {
    // A reverse proxy on this host: every request comes from 127.0.0.1,
    // and the proxy names the real client.
    let srv = Server::start(&["--trusted-proxies", "127.0.0.1"]);
    let body = r#"{"ch":"a","data":1}"#;
    let publish = |extra: &str| {
        let mut h = Http::connect(srv.listen);
        h.send(&Http::request(body, extra));
        let (code, _, text) = h.response();
        (code, text)
    };
    let channels = |extra: &str| {
        common::http_request(
            srv.listen,
            &format!("GET /api/channels HTTP/1.1\r\n{extra}\r\n"),
        )
    };
    for remote in [
        "X-Forwarded-For: 203.0.113.7\r\n",
        "Forwarded: for=203.0.113.7\r\n",
        // A forged entry left of the real one changes nothing.
        "X-Forwarded-For: 127.0.0.1, 203.0.113.7\r\n",
        // The proxy writes X-Forwarded-For and passes the client's own
        // Forwarded through: the forged loopback entry does not admit it.
        "Forwarded: for=127.0.0.1\r\nX-Forwarded-For: 203.0.113.7\r\n",
        // The other way round.
        "X-Forwarded-For: 127.0.0.1\r\nForwarded: for=203.0.113.7\r\n",
        // An entry that names no address is not loopback.
        "Forwarded: for=unknown\r\n",
        "X-Forwarded-For: _obfuscated\r\n",
    ] {
        let (code, text) = publish(remote);
        assert_eq!(code, 403, "{remote}: {text}");
        assert!(text.contains("api_key_file"), "{text}");
        let (code, text) = channels(remote);
        assert_eq!(code, 403, "{remote}: {text}");
    }
    // Loopback clients through the proxy, and the proxy itself, may.
    for local in ["X-Forwarded-For: 127.0.0.1\r\n", ""] {
        let (code, text) = publish(local);
        assert_eq!(code, 200, "{local}: {text}");
        let (code, text) = channels(local);
        assert_eq!(code, 200, "{local}: {text}");
    }
    // Only the two allowed publishes were sequenced.
    let (_, text) = channels("");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["channels"][0]["seq"], 2, "{v}");
}

#[test]
fn publish_needs_the_api_key_when_one_is_set() {
    let dir = std::env::temp_dir().join(format!("tickwire-apikey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("key");
    std::fs::write(&key, "k-123\n").unwrap();
    let srv = Server::start(&["--api-key-file", key.to_str().unwrap()]);
    let body = r#"{"ch":"a","data":1}"#;
    let mut h = Http::connect(srv.listen);
    h.send(&Http::request(body, ""));
    assert_eq!(h.response().0, 401);
    let mut h = Http::connect(srv.listen);
    h.send(&Http::request(body, "Authorization: Bearer nope\r\n"));
    assert_eq!(h.response().0, 401);
    let mut h = Http::connect(srv.listen);
    h.send(&Http::request(body, "Authorization: Bearer k-123\r\n"));
    assert_eq!(h.response().0, 200);
    // The channel list takes the same key.
    let (code, _) = common::http_request(srv.listen, "GET /api/channels HTTP/1.1\r\n\r\n");
    assert_eq!(code, 401);
    let (code, body) = common::http_request(
        srv.listen,
        "GET /api/channels HTTP/1.1\r\nAuthorization: Bearer k-123\r\n\r\n",
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""name":"a""#), "{body}");
    std::fs::remove_dir_all(dir).ok();
}

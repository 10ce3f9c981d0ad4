//! Batched WebSocket messages (`/ws?batch=1`) against the real engine and a
//! real WebSocket client: every update once and in order, as lines of fewer
//! messages than updates; pings and pongs stay frames of their own; a
//! pretty-printed publish body stays one line; a bad `batch` value is 400.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{Feed, Server};
use serde_json::{Value, json};
use tungstenite::Message;

/// A batched client: `tungstenite` on `/ws?batch=1`.
fn batched(srv: &Server) -> common::Ws {
    let (ws, resp) = tungstenite::connect(format!("ws://{}/ws?batch=1", srv.listen)).expect("ws");
    assert_eq!(resp.status().as_u16(), 101);
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    ws
}

/// The server messages of one WebSocket message: a line each.
fn lines(text: &str) -> Vec<Value> {
    text.split('\n')
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("line {l:?}: {e}")))
        .collect()
}

#[test]
fn a_batched_client_gets_every_update_once_in_order_in_fewer_messages() {
    // Never conflated: a reader that falls behind is cut, not skipped.
    let (dir, cfg) = common::notify_class_config("batched");
    let srv = Server::start(&["--workers", "1", "--config", cfg.to_str().unwrap()]);
    let mut ws = batched(&srv);
    let chans = ["user.1", "user.2", "user.3"];
    ws.send(Message::text(
        json!({"op": "subscribe", "channels": chans}).to_string(),
    ))
    .unwrap();
    // Plain clients beside it: the same updates, one per message.
    let plain = common::spawn_readers(srv.listen, 2, &chans, Duration::from_secs(30));
    let mut feed = Feed::connect(srv.ingest);
    let first = ws.read().unwrap();
    let ack = lines(first.to_text().unwrap());
    assert_eq!(ack[0]["type"], "subscribed", "{ack:?}");

    // Read on a thread of its own while the feed goes on.
    const N: u64 = 2000;
    let reader = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        let (mut messages, mut updates, mut most, mut lasts) = (0usize, 0usize, 0usize, 0);
        while lasts < 3 {
            assert!(
                Instant::now() < deadline,
                "{updates} updates in {messages} messages"
            );
            let Message::Text(t) = ws.read().unwrap() else {
                continue;
            };
            messages += 1;
            let got = lines(&t);
            most = most.max(got.len());
            for v in got {
                assert_eq!(v["type"], "update", "{v}");
                updates += 1;
                let ch = v["ch"].as_str().unwrap().to_string();
                seqs.entry(ch).or_default().push(v["seq"].as_u64().unwrap());
                if v["data"]["last"] == true {
                    lasts += 1;
                }
            }
        }
        (seqs, messages, updates, most)
    });
    // Bursts, so that a write carries several updates.
    for i in 1..=N {
        for ch in chans {
            let last = if i == N { ",\"last\":true" } else { "" };
            feed.send(&format!(r#"{{"ch":"{ch}","i":{i}{last}}}"#));
        }
        if i % 20 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let (seqs, messages, updates, most) = reader.join().unwrap();
    for ch in chans {
        let got = &seqs[ch];
        assert_eq!(
            got,
            &(1..=N).collect::<Vec<_>>(),
            "{ch}: every seq once, in order"
        );
    }
    assert!(
        messages < updates && most > 1,
        "batched: {updates} updates in {messages} messages (at most {most} in one)"
    );
    let lasts = chans.iter().map(|c| (c.to_string(), N)).collect();
    assert_eq!(common::join_readers(plain, &lasts), 0);
    assert_eq!(srv.metric("tickwire_conflated_total"), 0.0);
    assert_eq!(srv.metric("tickwire_slow_consumer_closes_total"), 0.0);
    std::fs::remove_dir_all(dir).ok();
    println!("{updates} updates in {messages} batched messages, at most {most} in one");
}

#[test]
fn pings_stay_frames_and_a_pretty_printed_publish_is_one_line() {
    let srv = Server::start(&["--workers", "1"]);
    let mut ws = batched(&srv);
    ws.send(Message::text(
        json!({"op": "subscribe", "channels": ["P1"]}).to_string(),
    ))
    .unwrap();
    assert_eq!(
        lines(ws.read().unwrap().to_text().unwrap())[0]["type"],
        "subscribed"
    );
    // The client's ping is answered with a pong frame, not a line.
    ws.send(Message::Ping(b"hi".to_vec().into())).unwrap();
    let pong = loop {
        match ws.read().unwrap() {
            Message::Pong(p) => break p,
            Message::Text(t) => panic!("a line before the pong: {t}"),
            _ => {}
        }
    };
    assert_eq!(&pong[..], b"hi");
    // A body with raw newlines between tokens (valid JSON).
    let body = "{\"ch\":\"P1\",\"data\":{\n  \"x\": 1,\n  \"s\": \"a\\nb\"\n}}";
    let req = format!(
        "POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let (status, answer) = common::http_request(srv.listen, &req);
    assert_eq!(status, 200, "{answer}");
    let m = ws.read().unwrap();
    let got = lines(m.to_text().unwrap());
    assert_eq!(got.len(), 1, "one line: {m:?}");
    assert_eq!(got[0]["data"]["x"], 1);
    assert_eq!(got[0]["data"]["s"], "a\nb", "escaped newlines are data");
}

#[test]
fn a_bad_batch_value_is_400_and_the_engine_goes_on() {
    let srv = Server::start(&["--workers", "1"]);
    let req = "GET /ws?batch=yes HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: close\r\n\r\n";
    let (status, body) = common::http_request(srv.listen, req);
    assert_eq!(status, 400);
    assert!(body.contains("batch must be 0 or 1"), "{body}");
    // `batch=0` is the ordinary protocol.
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/ws?batch=0", srv.listen)).expect("ws");
    ws.send(Message::text(
        json!({"op": "subscribe", "channels": ["Z"]}).to_string(),
    ))
    .unwrap();
    let ack: Value = serde_json::from_str(ws.read().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(ack["type"], "subscribed");
}

//! loadgen's `--protocol sse` and `--protocol poll` against mock servers
//! speaking tickwire's HTTP transports: events split across writes, an SSE
//! close event, and a poll loop that must carry each answer's token into
//! the next request.

mod common;

use common::{loadgen, update};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Reads one request head; returns its first line.
fn request_line(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut first = String::new();
    if r.read_line(&mut first).ok()? == 0 {
        return None;
    }
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).ok()? == 0 {
            return None;
        }
        if l == "\r\n" {
            return Some(first.trim_end().to_string());
        }
    }
}

#[test]
fn sse_counts_events_and_stops_at_the_close_event() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let s = s.unwrap();
            let seen = seen2.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                seen.lock().unwrap().push(request_line(&mut r).unwrap());
                let mut w = s;
                std::thread::sleep(Duration::from_millis(300));
                let mut out =
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\nretry: 1000\n\n"
                        .to_vec();
                out.extend_from_slice(
                    b"event: subscribed\ndata: {\"type\":\"subscribed\",\"channels\":[\"A\"]}\n\n",
                );
                // 1..=5 then 7 (a gap of one), with a heartbeat between.
                for seq in [1, 2, 3, 4, 5, 7] {
                    out.extend_from_slice(
                        format!("event: update\nid: A~{seq}~e\ndata: ").as_bytes(),
                    );
                    out.extend_from_slice(&update("A", seq, 0));
                    out.extend_from_slice(b"\n\n: ping\n\n");
                }
                // Dribbled, so events split across reads.
                for chunk in out.chunks(7) {
                    if w.write_all(chunk).is_err() {
                        return;
                    }
                    w.flush().unwrap();
                }
                std::thread::sleep(Duration::from_millis(200));
                let _ = w.write_all(b"event: close\ndata: {\"type\":\"close\",\"code\":1012,\"reason\":\"restart\"}\n\n");
                std::thread::sleep(Duration::from_millis(2000));
            });
        }
    });
    let url = format!("ws://127.0.0.1:{port}/ignored");
    let (v, out) = loadgen(&[
        "--url",
        &url,
        "--protocol",
        "sse",
        "--connections",
        "2",
        "--channels",
        "A",
        "--duration",
        "2",
        "--warmup",
        "0",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["deliveries"], 12, "{v}");
    assert_eq!(v["gaps"], 2);
    assert_eq!(v["duplicates"], 0);
    assert_eq!(v["disconnects"], 2, "the close event ends each stream");
    assert!(
        v["first_error"].as_str().unwrap_or("").contains("1012"),
        "{v}"
    );
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().all(|l| l == "GET /sse?channels=A HTTP/1.1"),
        "{seen:?}"
    );
}

#[test]
fn poll_sends_each_answer_s_token_with_the_next_poll() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        let s = l.incoming().next().unwrap().unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        std::thread::sleep(Duration::from_millis(300));
        let mut seq = 0u64;
        while let Some(line) = request_line(&mut r) {
            seen2.lock().unwrap().push(line);
            // Answers of 0, 1, 2, 3 messages, then empty ones (timeouts).
            let n = seen2.lock().unwrap().len() as u64 - 1;
            let n = if n <= 3 { n } else { 0 };
            let msgs: Vec<String> = (0..n)
                .map(|_| {
                    seq += 1;
                    String::from_utf8(update("A", seq, 0)).unwrap()
                })
                .collect();
            let body = format!(
                "{{\"messages\":[{}],\"next\":\"A~{seq}~e\"}}",
                msgs.join(",")
            );
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if w.write_all(resp.as_bytes()).is_err() {
                return;
            }
            if n == 0 && seq > 0 {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (v, out) = loadgen(&[
        "--url",
        &url,
        "--protocol",
        "poll",
        "--connections",
        "1",
        "--channels",
        "A,B",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["deliveries"], 6, "{v}");
    assert_eq!(
        (v["gaps"].as_u64(), v["duplicates"].as_u64()),
        (Some(0), Some(0))
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0], "GET /poll?channels=A,B HTTP/1.1");
    assert_eq!(seen[1], "GET /poll?channels=A,B&since=A~0~e HTTP/1.1");
    assert_eq!(seen[2], "GET /poll?channels=A,B&since=A~1~e HTTP/1.1");
    assert_eq!(seen[4], "GET /poll?channels=A,B&since=A~6~e HTTP/1.1");
}

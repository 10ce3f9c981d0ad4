//! End-to-end checks of the feedsim binary against in-test mock targets: a
//! tickwire-style NDJSON ingest that answers one error line, a NATS server
//! that expects INFO/CONNECT/PUB and sends a PING and an -ERR, and a
//! WebSocket endpoint that checks the masked text frames.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::mpsc;

fn feedsim(args: &[&str]) -> (serde_json::Value, std::process::Output) {
    let out = Command::new(env!("CARGO_BIN_EXE_feedsim"))
        .args(args)
        .output()
        .expect("run feedsim");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
    (v, out)
}

#[test]
fn ingest_lines_are_paced_counted_and_errors_reported() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut w = s.try_clone().unwrap();
        let mut lines = Vec::new();
        for line in BufReader::new(s).lines() {
            let line = line.unwrap();
            if lines.len() == 2 {
                w.write_all(b"{\"error\":\"mock says no\",\"line\":3}\n")
                    .unwrap();
            }
            lines.push(line);
        }
        tx.send(lines).unwrap();
    });
    let (v, out) = feedsim(&[
        "--ingest",
        &addr,
        "--universe",
        "5",
        "--rate",
        "2000",
        "--count",
        "600",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["sent"], 600);
    assert_eq!(v["errors"], 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("mock says no"));
    // 600 ticks at 2000/s are due over 0.3 s.
    let d = v["duration_s"].as_f64().unwrap();
    assert!((0.28..1.5).contains(&d), "{d}");
    let lines = rx.recv().unwrap();
    assert_eq!(lines.len(), 600);
    let mut last_n: HashMap<String, u64> = HashMap::new();
    let mut last_t = 0;
    for line in &lines {
        let t: serde_json::Value = serde_json::from_str(line).unwrap();
        let ch = t["ch"].as_str().unwrap().to_string();
        assert!(ch.len() == 5 && ch.starts_with('S'), "{ch}");
        let n = t["n"].as_u64().unwrap();
        let prev = last_n.insert(ch, n).unwrap_or(0);
        assert_eq!(n, prev + 1);
        // Scheduled times: exactly 500 µs apart, never decreasing.
        let tt = t["t"].as_u64().unwrap();
        if last_t != 0 {
            assert_eq!(tt - last_t, 500_000);
        }
        last_t = tt;
        assert!(t["ask"].as_f64().unwrap() > t["bid"].as_f64().unwrap());
    }
    // Zipf: S0000 is the most popular channel.
    let most = last_n.iter().max_by_key(|(_, n)| **n).unwrap().0;
    assert_eq!(most, "S0000");
}

#[test]
fn nats_target_speaks_the_client_protocol() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"INFO {\"server_id\":\"mock\"}\r\n").unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("CONNECT {"), "{line}");
        s.write_all(b"PING\r\n-ERR 'mock error'\r\n").unwrap();
        let mut pubs = 0;
        let mut pong = false;
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if line == "PONG\r\n" {
                pong = true;
                continue;
            }
            let parts: Vec<&str> = line.trim_end().split(' ').collect();
            assert_eq!(parts[0], "PUB", "{line}");
            let len: usize = parts[2].parse().unwrap();
            let mut payload = vec![0u8; len + 2];
            r.read_exact(&mut payload).unwrap();
            let t: serde_json::Value = serde_json::from_slice(&payload[..len]).unwrap();
            assert_eq!(t["ch"], parts[1]);
            assert_eq!(&payload[len..], b"\r\n");
            pubs += 1;
        }
        tx.send((pubs, pong)).unwrap();
    });
    let (v, out) = feedsim(&[
        "--nats",
        &addr,
        "--channels",
        "AAPL,MSFT",
        "--rate",
        "1000",
        "--duration",
        "0.5",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (pubs, pong) = rx.recv().unwrap();
    assert_eq!(pubs, v["sent"].as_u64().unwrap());
    assert!((490..=510).contains(&pubs), "{pubs}");
    assert!(pong);
    assert_eq!(v["errors"], 1);
}

#[test]
fn bad_arguments_are_rejected() {
    let (_, out) = feedsim(&["--universe", "5"]);
    assert_eq!(out.status.code(), Some(2));
    let (_, out) = feedsim(&["--stdout", "--channels", "bad name", "--count", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let (_, out) = feedsim(&["--stdout", "--count", "1", "--spin-us=-5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--spin-us"));
    let (_, out) = feedsim(&[
        "--stdout",
        "--universe",
        "3",
        "--count",
        "4",
        "--rate",
        "max",
    ]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);
}

#[test]
fn ws_target_sends_masked_text_frames() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        assert!(head.starts_with(b"GET /feed HTTP/1.1\r\n"));
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
            .unwrap();
        let mut ticks = Vec::new();
        let mut h = [0u8; 2];
        while s.read_exact(&mut h).is_ok() {
            assert_eq!(h[0], 0x81, "FIN + text");
            assert!(h[1] & 0x80 != 0, "masked");
            let len = (h[1] & 0x7F) as usize;
            assert!(len < 126);
            let mut m = [0u8; 4];
            s.read_exact(&mut m).unwrap();
            let mut p = vec![0u8; len];
            s.read_exact(&mut p).unwrap();
            for (i, b) in p.iter_mut().enumerate() {
                *b ^= m[i & 3];
            }
            let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
            ticks.push(v);
        }
        tx.send(ticks).unwrap();
    });
    let url = format!("ws://127.0.0.1:{port}/feed");
    let (v, out) = feedsim(&[
        "--ws",
        &url,
        "--universe",
        "3",
        "--count",
        "50",
        "--rate",
        "5000",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["sent"], 50);
    let ticks = rx.recv().unwrap();
    assert_eq!(ticks.len(), 50);
    assert!(ticks.iter().all(|t| t["n"].as_u64().unwrap() >= 1));
}

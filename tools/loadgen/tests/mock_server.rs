//! End-to-end checks of the loadgen binary against tiny in-test mock servers:
//! a tickwire-protocol WebSocket server with scripted sequences (gaps,
//! duplicates, reordering, fragmentation, pings, error frames) and a NATS
//! over WebSocket server that splits protocol messages across frames.

mod common;

use common::{accept_upgrade, frame, loadgen, now_ns, read_client_frame, update};
use std::io::Write;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[test]
fn tickwire_protocol_counts_sequences_and_handles_frames() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let pongs = Arc::new(AtomicU64::new(0));
    let pongs2 = pongs.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let mut s = s.unwrap();
            let pongs = pongs2.clone();
            std::thread::spawn(move || {
                let head = accept_upgrade(&mut s);
                assert!(head.starts_with("GET /ws HTTP/1.1\r\n"), "{head}");
                assert!(head.contains("Sec-WebSocket-Version: 13"));
                let (op, sub) = read_client_frame(&mut s).unwrap();
                assert_eq!(op, 1);
                let sub: serde_json::Value = serde_json::from_slice(&sub).unwrap();
                assert_eq!(sub["op"], "subscribe");
                assert_eq!(sub["channels"], serde_json::json!(["A", "B"]));
                // Let warmup (0 s) end before sending, so all samples count.
                std::thread::sleep(Duration::from_millis(300));
                let mut out = Vec::new();
                out.extend(frame(
                    true,
                    1,
                    br#"{"type":"subscribed","channels":["A","B"]}"#,
                ));
                out.extend(frame(true, 9, b"hi"));
                // A: 1..=5, 7 (gap 1), 7 (dup), 6 (out of order), 8 with a 16-bit length.
                for seq in [1, 2, 3, 4, 5, 7, 7, 6] {
                    out.extend(frame(true, 1, &update("A", seq, 0)));
                }
                out.extend(frame(true, 1, &update("A", 8, 300)));
                // B: 10 (first), 11 fragmented in three frames, 12 with a 64-bit length.
                out.extend(frame(true, 1, &update("B", 10, 0)));
                let u = update("B", 11, 0);
                out.extend(frame(false, 1, &u[..10]));
                out.extend(frame(false, 0, &u[10..20]));
                out.extend(frame(true, 0, &u[20..]));
                out.extend(frame(true, 1, &update("B", 12, 70_000)));
                out.extend(frame(
                    true,
                    1,
                    br#"{"type":"error","code":"bad_channel","message":"nope"}"#,
                ));
                // Dribble the bytes out to exercise partial reads.
                for chunk in out.chunks(97) {
                    s.write_all(chunk).unwrap();
                    s.flush().unwrap();
                }
                // The client must answer the ping with the same payload.
                while let Ok((op, p)) = read_client_frame(&mut s) {
                    if op == 0xA {
                        assert_eq!(p, b"hi");
                        pongs.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (v, out) = loadgen(&[
        "--url",
        &url,
        "--connections",
        "3",
        "--channels",
        "A,B",
        "--duration",
        "1.5",
        "--warmup",
        "0",
        "--threads",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["connections"], 3);
    assert_eq!(v["connected"], 3);
    assert_eq!(v["deliveries"], 3 * 12);
    assert_eq!(v["gaps"], 3);
    assert_eq!(v["duplicates"], 3);
    assert_eq!(v["out_of_order"], 3);
    assert_eq!(v["server_errors"], 3);
    assert_eq!(v["disconnects"], 0);
    assert_eq!(v["latency_us"]["count"], 3 * 12);
    assert!(v["latency_us"]["p50"].as_f64().unwrap() > 0.0);
    assert!(v["loadgen_cpu_s"].is_number());
    // Pongs are sent right away; give the server threads a moment to count them.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(pongs.load(Ordering::Relaxed), 3);
}

#[test]
fn slow_clients_are_reported_separately() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let mut s = s.unwrap();
            std::thread::spawn(move || {
                accept_upgrade(&mut s);
                let _ = read_client_frame(&mut s);
                // Every other seq: slow clients see jumps of 1 each time.
                let mut out = Vec::new();
                for seq in (1..=400).step_by(2) {
                    out.extend(frame(true, 1, &update("A", seq, 0)));
                }
                let _ = s.write_all(&out);
                while read_client_frame(&mut s).is_ok() {}
            });
        }
    });
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (v, out) = loadgen(&[
        "--url",
        &url,
        "--connections",
        "4",
        "--channel",
        "A",
        "--pattern",
        "one",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--slow-fraction",
        "0.5",
        "--slow-rate",
        "50",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["slow"]["clients"], 2);
    // Fast clients read all 200 updates: 199 gaps of one each.
    assert_eq!(v["gaps"], 2 * 199);
    // Slow clients are capped near 50/s (small burst allowance).
    let slow_deliv = v["slow"]["deliveries"].as_u64().unwrap();
    assert!((10..=160).contains(&slow_deliv), "{slow_deliv}");
    assert_eq!(v["slow"]["skipped"].as_u64().unwrap(), slow_deliv - 2);
    assert_eq!(v["deliveries"].as_u64().unwrap(), 2 * 200 + slow_deliv);
}

#[test]
fn nats_protocol_over_websocket() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let mut s = s.unwrap();
            std::thread::spawn(move || {
                let head = accept_upgrade(&mut s);
                assert!(head.starts_with("GET / HTTP/1.1\r\n"), "{head}");
                s.write_all(&frame(true, 2, b"INFO {\"server_id\":\"mock\"}\r\n"))
                    .unwrap();
                let (_, hello) = read_client_frame(&mut s).unwrap();
                let hello = String::from_utf8(hello).unwrap();
                assert!(hello.starts_with("CONNECT {"), "{hello}");
                assert!(hello.contains("SUB S0000 1\r\n"), "{hello}");
                // n = 1, 2, 4 (gap), then PING; payloads split across frames.
                let mut stream = Vec::new();
                for n in [1u64, 2, 4] {
                    let p = format!(r#"{{"ch":"S0000","n":{n},"t":{}}}"#, now_ns());
                    stream.extend(format!("MSG S0000 1 {}\r\n{p}\r\n", p.len()).bytes());
                }
                stream.extend(b"PING\r\n");
                for chunk in stream.chunks(7) {
                    s.write_all(&frame(true, 2, chunk)).unwrap();
                }
                let mut got_pong = false;
                while let Ok((_, p)) = read_client_frame(&mut s) {
                    if p == b"PONG\r\n" {
                        got_pong = true;
                    }
                }
                assert!(got_pong);
            });
        }
    });
    let url = format!("ws://127.0.0.1:{port}");
    let (v, out) = loadgen(&[
        "--url",
        &url,
        "--protocol",
        "nats",
        "--connections",
        "2",
        "--channels",
        "S0000",
        // Long enough for both connections' exchanges on a loaded CI machine
        // (once seen to miss one connection's messages with 1 s).
        "--duration",
        "3",
        "--warmup",
        "0",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["protocol"], "nats");
    assert_eq!(v["deliveries"], 6);
    assert_eq!(v["gaps"], 2);
    assert_eq!(v["latency_us"]["count"], 6);
}

#[test]
fn unreachable_server_fails_clearly() {
    // Bind then drop to get a port with (almost certainly) no listener.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (_, out) = loadgen(&[
        "--url",
        &url,
        "--connections",
        "2",
        "--channels",
        "A",
        "--duration",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not connect"), "{err}");
}

#[test]
fn processes_merge_results() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let mut s = s.unwrap();
            std::thread::spawn(move || {
                accept_upgrade(&mut s);
                let _ = read_client_frame(&mut s);
                std::thread::sleep(Duration::from_millis(200));
                let mut out = Vec::new();
                for seq in 1..=50 {
                    out.extend(frame(true, 1, &update("A", seq, 0)));
                }
                let _ = s.write_all(&out);
                while read_client_frame(&mut s).is_ok() {}
            });
        }
    });
    let url = format!("ws://127.0.0.1:{port}/ws");
    let dir = std::env::temp_dir().join(format!("loadgen-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hgrm = dir.join("fast.hgrm");
    let (v, out) = loadgen(&[
        "--url",
        &url,
        "--connections",
        "5",
        "--channels",
        "A",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--processes",
        "2",
        "--json",
        "--hgrm",
        hgrm.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["processes"], 2);
    assert_eq!(v["connections"], 5);
    assert_eq!(v["connected"], 5);
    assert_eq!(v["deliveries"], 250);
    assert_eq!(v["latency_us"]["count"], 250);
    assert!(v.get("hist_v2").is_none());
    let text = std::fs::read_to_string(&hgrm).unwrap();
    assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
    assert!(text.contains("Total count    =          250]"));
    let _ = std::fs::remove_dir_all(&dir);
}

//! Graceful drain on SIGTERM: /readyz turns 503 at once, clients get 1012
//! spread over the drain window, then the process exits 0; a second signal
//! stops at once.

mod common;

use std::time::{Duration, Instant};

use common::{RawWs, Server};

const SIGTERM: i32 = 15;

#[test]
fn sigterm_drains_with_1012_spread_over_the_window_then_exits_0() {
    let mut server = Server::start(&["--drain-timeout", "3s"]);
    assert_eq!(server.http_get("/readyz").0, 200);
    let n = 8;
    let clients: Vec<RawWs> = (0..n).map(|_| RawWs::connect(server.listen)).collect();
    let t0 = Instant::now();
    server.signal(SIGTERM);
    // Readiness drops at once (the signal reaches the process
    // asynchronously, so poll), and the port still answers during the drain.
    loop {
        let (status, body) = server.http_get("/readyz");
        if status == 503 {
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            t0.elapsed() < Duration::from_millis(1000),
            "/readyz still 200 after {:?}",
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(server.http_get("/healthz").0, 200);
    let handles: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                c.s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
                let (code, reason) = c.read_close();
                (code, reason, t0.elapsed())
            })
        })
        .collect();
    let mut times = Vec::new();
    for h in handles {
        let (code, reason, at) = h.join().unwrap();
        assert_eq!(code, 1012, "{reason}");
        times.push(at);
    }
    times.sort();
    let (first, last) = (times[0], times[n - 1]);
    assert!(last < Duration::from_millis(3500), "{times:?}");
    assert!(
        last - first >= Duration::from_millis(1200),
        "not spread: {times:?}"
    );
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("exits after the drain");
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_second_sigterm_stops_at_once_with_1001() {
    let mut server = Server::start(&["--drain-timeout", "30s"]);
    let mut clients: Vec<RawWs> = (0..4).map(|_| RawWs::connect(server.listen)).collect();
    server.signal(SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    server.signal(SIGTERM);
    for c in &mut clients {
        c.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (code, _) = c.read_close();
        assert_eq!(code, 1001);
    }
    let status = server
        .wait_exit(Duration::from_secs(6))
        .expect("exits at the second signal");
    assert!(status.success(), "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(6));
}

#[test]
fn upgrades_during_a_drain_get_503() {
    let server = Server::start(&["--drain-timeout", "5s"]);
    let _held = RawWs::connect(server.listen);
    server.signal(SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    let (status, body) = common::http_request(
        server.listen,
        "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
}

#[test]
fn sighup_during_a_drain_does_not_end_it() {
    const SIGHUP: i32 = 1;
    let mut server = Server::start(&["--drain-timeout", "3s"]);
    let clients: Vec<RawWs> = (0..6).map(|_| RawWs::connect(server.listen)).collect();
    let t0 = Instant::now();
    server.signal(SIGTERM);
    while server.http_get("/readyz").0 != 503 {
        assert!(t0.elapsed() < Duration::from_secs(1), "not draining");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Well before most 1012s are due: a reload request, not a stop.
    std::thread::sleep(Duration::from_millis(300));
    server.signal(SIGHUP);
    let handles: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                c.s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
                c.read_close()
            })
        })
        .collect();
    for h in handles {
        let (code, reason) = h.join().unwrap();
        assert_eq!(code, 1012, "the drain went on after SIGHUP: {reason}");
    }
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("exits after the drain");
    assert!(status.success(), "{status:?}");
}

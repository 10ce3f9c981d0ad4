//! The conformance echo endpoint: off by default, and when on it answers
//! each message with itself over the same read and write path as /ws,
//! including the messages that came before a protocol violation.

mod common;

use std::time::Duration;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::{RawWs, Server, http_request};
use tungstenite::Message;

/// A raw client on /echo (the shared helper upgrades on /ws).
fn raw_echo(addr: SocketAddr) -> RawWs {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed during handshake");
        buf.extend_from_slice(&chunk[..n]);
    };
    assert!(
        buf.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    RawWs {
        s,
        buf: buf[end..].to_vec(),
    }
}

/// A masked client frame of under 126 bytes.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [1u8, 2, 3, 4];
    let mut out = vec![first, 0x80 | payload.len() as u8];
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

#[test]
fn echo_is_off_by_default() {
    let s = Server::start(&[]);
    let req = "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let (status, _) = http_request(s.listen, req);
    assert_eq!(status, 404);
}

#[test]
fn echo_answers_text_binary_and_fragments() {
    let s = Server::start(&["--conformance-echo"]);
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/echo", s.listen)).expect("connect");
    if let tungstenite::stream::MaybeTlsStream::Plain(t) = ws.get_ref() {
        t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    ws.send(Message::text("héllo")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("héllo"));
    let big: Vec<u8> = (0..60_000u32).map(|i| i as u8).collect();
    ws.send(Message::binary(big.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(big));
    // A subscribe request is just text here: echoed, not served.
    let sub = r#"{"op":"subscribe","channels":["AAPL"]}"#;
    ws.send(Message::text(sub)).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text(sub));

    // Fragments are reassembled before the echo.
    let mut raw = raw_echo(s.listen);
    raw.send_frame(0x01, b"frag", true);
    raw.send_frame(0x80, b"ment", true);
    assert_eq!(raw.read_frame(), Some((0x01, b"fragment".to_vec())));
}

/// A message followed in the same read by a frame with reserved bits set:
/// the message is still answered, then the connection fails with 1002.
#[test]
fn messages_before_a_violation_are_answered() {
    let s = Server::start(&["--conformance-echo"]);
    let mut raw = raw_echo(s.listen);
    let mut both = masked(0x81, b"first");
    both.extend(masked(0x81 | 0x30, b"bad"));
    raw.s.write_all(&both).unwrap();
    assert_eq!(raw.read_frame(), Some((0x01, b"first".to_vec())));
    let (code, _) = raw.read_close();
    assert_eq!(code, 1002);
}

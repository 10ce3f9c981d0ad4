//! Helpers shared by the loadgen end-to-end tests: server-side WebSocket
//! framing over any byte stream (plain TCP or TLS) and running the binary.

#![allow(dead_code)] // each test crate uses a different subset

use std::io::{Read, Write};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// Unmasked server frame.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![if fin { 0x80 } else { 0 } | opcode];
    let n = payload.len();
    if n < 126 {
        v.push(n as u8);
    } else if n <= 65535 {
        v.push(126);
        v.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        v.push(127);
        v.extend_from_slice(&(n as u64).to_be_bytes());
    }
    v.extend_from_slice(payload);
    v
}

/// Reads one (masked) client frame: (opcode, payload).
pub fn read_client_frame(s: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h)?;
    assert!(h[1] & 0x80 != 0, "client frames must be masked");
    let mut len = (h[1] & 0x7F) as u64;
    if len == 126 {
        let mut b = [0u8; 2];
        s.read_exact(&mut b)?;
        len = u16::from_be_bytes(b) as u64;
    } else if len == 127 {
        let mut b = [0u8; 8];
        s.read_exact(&mut b)?;
        len = u64::from_be_bytes(b);
    }
    let mut mask = [0u8; 4];
    s.read_exact(&mut mask)?;
    let mut p = vec![0u8; len as usize];
    s.read_exact(&mut p)?;
    for (i, b) in p.iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Ok((h[0] & 0x0F, p))
}

pub fn accept_upgrade<S: Read + Write>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    s.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: x\r\n\r\n",
    )
    .unwrap();
    String::from_utf8(head).unwrap()
}

pub fn update(ch: &str, seq: u64, pad: usize) -> Vec<u8> {
    format!(
        r#"{{"type":"update","ch":"{ch}","seq":{seq},"data":{{"ch":"{ch}","n":{seq},"t":{},"pad":"{}"}}}}"#,
        now_ns(),
        "x".repeat(pad)
    )
    .into_bytes()
}

pub fn loadgen(args: &[&str]) -> (serde_json::Value, std::process::Output) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .expect("run loadgen");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null);
    (v, out)
}

//! The HTTP request head on the listen port: upgrade or plain response.
//! Never panics; an upgrade's head length is within the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickwire::protocol::http::{Request, parse};

fuzz_target!(|data: &[u8]| {
    if let Some(Request::Upgrade { accept, head_len }) = parse(data) {
        assert!(head_len <= data.len());
        assert_eq!(
            accept.len(),
            28,
            "Sec-WebSocket-Accept is base64 of 20 bytes"
        );
    }
});

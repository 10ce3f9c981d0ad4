//! Client bytes after the handshake: frame parsing, unmasking, reassembly.
//! Never panics; consumes no more than it was given; a text event is UTF-8.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickwire::protocol::ws::{WsEvent, read_frames};

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    let mut message = Vec::new();
    let mut opcode = 0u8;
    let limit = 4096;
    let result = read_frames(&mut buf, limit, &mut message, &mut opcode, |ev| {
        if let WsEvent::Text(t) = ev {
            assert!(t.len() <= limit, "message over the limit was emitted");
            assert!(std::str::from_utf8(t).is_ok(), "non-UTF-8 text was emitted");
        }
    });
    if let Ok(used) = result {
        assert!(used <= data.len());
    }
    assert!(message.len() <= limit, "reassembly grew past the limit");
});

//! The HTTP request head on the listen port: upgrade, publish, history,
//! SSE/long-poll streams (their resume tokens round-trip) or plain response.
//! Never panics; head lengths are within the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickwire::protocol::http::{Request, parse};
use tickwire::protocol::resume;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Some(Request::Upgrade {
            accept, head_len, ..
        }) => {
            assert!(head_len <= data.len());
            assert_eq!(
                accept.len(),
                28,
                "Sec-WebSocket-Accept is base64 of 20 bytes"
            );
        }
        Some(Request::Publish(h)) => {
            assert!(h.head_len <= data.len());
            // The body, whatever it holds, is checked without panicking.
            let end = (h.head_len + h.body_len).min(data.len());
            let _ = tickwire::protocol::publish::parse_body(&data[h.head_len..end], 1000);
        }
        Some(Request::History(q)) => assert!(q.limit >= 1 && q.limit <= 1000),
        Some(Request::Stream(q)) => {
            assert!(q.head_len <= data.len());
            assert!(!q.channels.is_empty());
            for c in &q.channels {
                assert!(tickwire::channel::is_valid(c.as_bytes()), "{c:?}");
            }
            // An accepted resume token writes back to one that parses the same.
            let mut t = Vec::new();
            resume::write(
                &mut t,
                q.since.iter().map(|e| (&*e.ch, e.pos.seq, &*e.pos.epoch)),
            );
            let again = resume::parse(std::str::from_utf8(&t).unwrap()).unwrap();
            assert_eq!(again, q.since);
        }
        _ => {}
    }
});

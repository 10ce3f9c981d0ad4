//! Feed lines: validation, sequencing, frame building.
//! Never panics; a rejected line changes nothing; an accepted one is sent as
//! `{"type":"update","ch":..,"seq":..,"data":<the line, byte for byte>}`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickwire::ingest::{LineParser, Sequencer, accept_line};

fuzz_target!(|data: &[u8]| {
    let mut parser = LineParser::default();
    let mut seq = Sequencer::new(4);
    // Twice: the second acceptance of a good line must get seq 2.
    for round in 1..=2u64 {
        let before = seq.channel_count();
        match accept_line(&mut parser, &mut seq, data, 0) {
            Ok(Some(s)) => {
                assert_eq!(s.seq, round);
                let line = data.strip_suffix(b"\r").unwrap_or(data);
                let frame = &s.frame[..];
                // Server text frame: FIN+text, then a 1-, 3- or 9-byte length.
                assert_eq!(frame[0], 0x81);
                let start = match frame[1] {
                    126 => 4,
                    127 => 10,
                    _ => 2,
                };
                let payload = &frame[start..];
                assert!(payload.ends_with(b"}"));
                let data_at = payload.len() - 1 - line.len();
                assert_eq!(&payload[data_at..payload.len() - 1], line);
                let v: serde_json::Value =
                    serde_json::from_slice(payload).expect("update frame is JSON");
                assert_eq!(v["seq"], round);
            }
            Ok(None) => assert_eq!(seq.channel_count(), before),
            Err(_) => assert_eq!(seq.channel_count(), before, "a reject created a channel"),
        }
    }
});

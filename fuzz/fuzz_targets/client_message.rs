//! Client text messages: subscribe (with `since`), unsubscribe, auth and ping.
//! Never panics; what it accepts is within the documented limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tickwire::channel;
use tickwire::protocol::client::{ClientOp, parse_client_message};

fuzz_target!(|data: &[u8]| {
    let max = 8;
    match parse_client_message(data, max) {
        Ok(ClientOp::Subscribe(names, since)) => {
            check(&names, max);
            assert!(since.is_empty() || since.len() == names.len());
        }
        Ok(ClientOp::Unsubscribe(names)) => check(&names, max),
        Ok(ClientOp::Auth(_) | ClientOp::Ping) => {}
        Err(e) => assert!(!e.message.is_empty()),
    }
});

fn check(names: &[Box<str>], max: usize) {
    assert!(names.len() <= max);
    for n in names {
        assert!(
            channel::is_valid(n.as_bytes()),
            "accepted bad channel {n:?}"
        );
    }
}

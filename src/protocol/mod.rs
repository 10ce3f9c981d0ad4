//! The wire protocols, sans-io: they take bytes and return bytes or
//! events, and never touch a socket or a clock, so each is testable and
//! fuzzable alone.
//!
//! - [`frame`]: WebSocket framing (server frames built once, client frames parsed).
//! - [`http`]: the HTTP request head, the upgrade handshake, plain responses.
//! - [`ws`]: a WebSocket connection's input after the handshake: message
//!   reassembly, control frames, close codes.
//! - [`client`]: the JSON client messages, replies and error codes.
//! - [`publish`]: the HTTP publish API's bodies and answers.
//! - [`resume`]: the resume token of the HTTP transports (SSE, long-poll).

pub mod client;
pub mod frame;
pub mod http;
pub mod publish;
pub mod resume;
pub mod ws;

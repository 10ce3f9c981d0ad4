//! tickwire: a low-latency WebSocket fanout engine.
//!
//! An ingest thread reads ticks from feed handlers (newline-delimited JSON),
//! sequences them per channel, builds each update frame once and hands it to
//! every worker through a lock-free SPSC ring. Pinned worker threads, each on
//! its own mio event loop with its own shard of connections, write the same
//! bytes to every subscriber, batching writes per connection and conflating
//! per channel for consumers that cannot keep up.
//!
//! ```text
//!  feed handlers ──TCP NDJSON──▶ ingest thread (mio Poll, simd-json, seq + last value,
//!                                      │          frame built once as bytes::Bytes)
//!                         ┌────────────┼────────────┐  one SPSC ring per worker
//!                         ▼            ▼            ▼  (updates + subscribe replies, in order)
//!                    worker 0      worker 1  …  worker N-1   (pinned, own mio Poll,
//!                    conns 0..     conns ..      conns ..     SO_REUSEPORT listener)
//!                         │ one write per connection per loop turn; conflation when behind
//!                         ▼
//!                  WebSocket clients (/ws), HTTP /metrics /healthz /
//! ```
#![deny(unsafe_op_in_unsafe_fn, missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod admin;
pub mod auth;
pub mod channel;
pub mod clock;
pub mod config;
pub mod demo;
pub mod ingest;
pub mod lifecycle;
pub mod limits;
pub mod metrics;
pub mod pacing;
pub mod protocol;
pub mod ring;
pub mod rng;
pub mod server;
pub mod tls;
pub mod transport;
pub mod update;
pub mod worker;

pub use config::Config;
pub use server::{Engine, StartError, Stopper};

//! The benchmark toolkit against the real engine: feedsim feeds, loadgen
//! reads, and every tick sent must be counted exactly once per subscriber.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Server;
use serde_json::Value;

/// Builds the tool binaries of this workspace (a no-op when fresh) and
/// returns the directory holding them.
fn tool_dir() -> PathBuf {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-q", "-p", "loadgen", "-p", "feedsim"]);
    // Same profile as this test, so the binaries land next to tickwire's.
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("cargo build of the tools");
    assert!(status.success());
    PathBuf::from(env!("CARGO_BIN_EXE_tickwire"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn loadgen_counts_every_tick_feedsim_sent_exactly_once() {
    let bin = tool_dir();
    let srv = Server::start(&[]);
    let clients = 50u64;
    let loadgen = Command::new(bin.join("loadgen"))
        .args(["--url", &format!("ws://{}/ws", srv.listen)])
        .args(["--connections", &clients.to_string(), "--channels", "A,B,C"])
        .args(["--duration", "5", "--warmup", "0", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn loadgen");
    // Every client subscribed to all three channels before the feed starts.
    let subs = srv.wait_metric(
        "tickwire_subscriptions",
        |v| v >= (3 * clients) as f64,
        Duration::from_secs(20),
    );
    assert_eq!(subs, (3 * clients) as f64);
    let sent = 3000u64;
    let feed = Command::new(bin.join("feedsim"))
        .args(["--ingest", &srv.ingest.to_string(), "--channels", "A,B,C"])
        .args(["--rate", "3000", "--count", &sent.to_string(), "--json"])
        .stderr(Stdio::null())
        .output()
        .expect("run feedsim");
    assert!(feed.status.success());
    let feed: Value = serde_json::from_slice(&feed.stdout).expect("feedsim json");
    assert_eq!(feed["sent"], sent);
    assert_eq!(feed["errors"], 0);
    let out = loadgen.wait_with_output().expect("loadgen");
    assert!(out.status.success());
    let r: Value = serde_json::from_slice(&out.stdout).expect("loadgen json");
    assert_eq!(r["connected"], clients);
    assert_eq!(r["deliveries"], clients * sent, "{r}");
    for k in ["gaps", "duplicates", "out_of_order", "disconnects"] {
        assert_eq!(r[k], 0, "{k}: {r}");
    }
    assert!(r["latency_us"]["count"].as_u64().unwrap() > 0);
    assert_eq!(srv.metric("tickwire_ingest_messages_total"), sent as f64);
}

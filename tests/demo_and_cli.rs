//! The README's run command in miniature (`--demo`: built-in feed and quote
//! page), the latency histogram it fills, and `--help` against the README's
//! configuration table.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Client, Server};

#[test]
fn demo_feed_streams_realistic_quotes_and_fills_the_latency_histogram() {
    let srv = Server::start(&["--demo", "--demo-rate", "2000"]);
    let (status, page) = srv.http_get("/");
    assert_eq!(status, 200);
    assert!(
        page.to_ascii_lowercase().contains("<!doctype html"),
        "{page}"
    );
    assert!(page.contains("AAPL"), "the page lists the demo symbols");
    let mut c = Client::connect(srv.listen);
    let ack = c.subscribe(&["AAPL", "MSFT", "NVDA"]);
    assert_eq!(ack["type"], "subscribed");
    let mut last: HashMap<String, u64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut updates = 0;
    let mut gaps = 0u64;
    while updates < 200 {
        assert!(
            Instant::now() < deadline,
            "only {updates} demo updates in 10 s"
        );
        let v = c.recv();
        assert_eq!(v["type"], "update", "{v}");
        let ch = v["ch"].as_str().unwrap().to_string();
        let seq = v["seq"].as_u64().unwrap();
        let d = &v["data"];
        assert_eq!(d["ch"], v["ch"]);
        let (bid, ask) = (d["bid"].as_f64().unwrap(), d["ask"].as_f64().unwrap());
        assert!(bid > 0.0 && ask > bid, "quote {d}");
        assert!(d["bid_size"].as_u64().unwrap() > 0 && d["ask_size"].as_u64().unwrap() > 0);
        if let Some(&prev) = last.get(&ch) {
            assert!(seq > prev, "{ch}: seq {seq} after {prev}");
            gaps += seq - prev - 1;
        }
        last.insert(ch, seq);
        updates += 1;
    }
    assert_eq!(last.len(), 3, "all three symbols tick: {last:?}");
    // A client that reads keeps up; on a loaded machine its socket may block
    // for a moment, and then (only then) updates are conflated.
    if gaps > 0 {
        assert!(
            srv.metric("tickwire_conflated_total") > 0.0,
            "{gaps} updates skipped without conflation"
        );
    }
    // Workers merge their histograms into the shared one once a second (the
    // one serving /metrics merges its own on the spot).
    let deadline = Instant::now() + Duration::from_secs(5);
    let (p50, max) = loop {
        let p50 = srv.metric_label("tickwire_delivery_latency_seconds", "quantile=\"0.5\"");
        let max = srv.metric_label("tickwire_delivery_latency_seconds", "quantile=\"1\"");
        if p50 > 0.0 || Instant::now() > deadline {
            break (p50, max);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(p50 > 0.0 && p50 < 1.0, "p50 {p50} s");
    assert!(max >= p50, "max {max} below p50 {p50}");
    assert!(srv.metric("tickwire_deliveries_total") >= 200.0);
}

#[test]
fn help_documents_every_option_of_the_readme_with_its_default() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    // Rows of the configuration table: | `--flag` / `key` | `default` | meaning |
    let rows: Vec<(&str, &str)> = readme
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("| `--")?;
            let (flag, rest) = l.split_once('`')?;
            let default = rest.split('|').nth(1)?.trim();
            Some((flag, default))
        })
        .collect();
    assert!(rows.len() >= 19, "README table has {} rows", rows.len());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tickwire"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, default) in rows {
        let at = help
            .find(&format!("--{flag} "))
            .or_else(|| help.find(&format!("--{flag}\n")))
            .unwrap_or_else(|| panic!("--help lacks --{flag}"));
        // Its description runs to the next option.
        let text = &help[at..];
        let end = text[2..].find("\n      --").map_or(text.len(), |e| e + 2);
        let text = &text[..end];
        let default = default.trim_matches('`');
        if flag == "demo" {
            continue; // a switch: off unless given
        }
        let shown = text.contains(&format!("[default: {default}]"))
            || (default.starts_with("off") && !text.contains("[default:"));
        assert!(
            shown,
            "--{flag}: README default {default:?}, help says {text:?}"
        );
    }
}

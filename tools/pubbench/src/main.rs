//! pubbench: load for tickwire's HTTP publish API. N keep-alive connections
//! each keep D requests in flight (pipelining) or send at a fixed rate; a
//! WebSocket subscriber on the same channels measures publish-to-delivery
//! latency from a send timestamp in each message. Prints one JSON line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;

/// Load for POST /api/publish, with publish-to-delivery latency.
#[derive(Debug, Parser)]
struct Args {
    /// The engine's listen address (HOST:PORT).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    /// Keep-alive publisher connections (one thread each).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Requests in flight per connection (pipelining depth).
    #[arg(long, default_value_t = 16)]
    depth: usize,
    /// Publishes per second per connection; 0: as fast as answers come.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 5)]
    duration: u64,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn request(ch: &str) -> String {
    let body = format!(r#"{{"ch":"{ch}","data":{{"t":{}}}}}"#, now_ns());
    format!(
        "POST /api/publish HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Reads one response; returns its status.
fn response(r: &mut BufReader<TcpStream>) -> Result<u16> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line.split(' ').nth(1).unwrap_or("0").parse()?;
    let mut len = 0;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse()?;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(status)
}

fn publisher(args: &Args, k: usize, stop: &AtomicBool, done: &AtomicU64) -> Result<()> {
    let ch = format!("pb{k}");
    let mut w = TcpStream::connect(&args.addr).context("connect")?;
    w.set_nodelay(true)?;
    let mut r = BufReader::new(w.try_clone()?);
    let depth = if args.rate > 0 { 1 } else { args.depth.max(1) };
    let gap = (args.rate > 0).then(|| Duration::from_nanos(1_000_000_000 / args.rate));
    let start = Instant::now();
    let mut sent = 0u64;
    for _ in 0..depth {
        w.write_all(request(&ch).as_bytes())?;
        sent += 1;
    }
    let mut answered = 0u64;
    while answered < sent {
        let status = response(&mut r)?;
        if status != 200 {
            bail!("publish answered {status}");
        }
        answered += 1;
        done.fetch_add(1, Ordering::Relaxed);
        if stop.load(Ordering::Relaxed) {
            continue;
        }
        if let Some(gap) = gap {
            let due = start + gap * sent as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        w.write_all(request(&ch).as_bytes())?;
        sent += 1;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Arc::new(Args::parse());
    let (mut ws, _) = tungstenite::connect(format!("ws://{}/ws", args.addr)).context("ws")?;
    let names: Vec<String> = (0..args.connections).map(|k| format!("pb{k}")).collect();
    let sub = serde_json::json!({"op":"subscribe","channels":names}).to_string();
    ws.send(tungstenite::Message::text(sub))?;
    let _ack = ws.read()?;
    if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
    }
    let started_ns = now_ns();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..args.connections)
        .map(|k| {
            let (args, stop, done) = (Arc::clone(&args), Arc::clone(&stop), Arc::clone(&done));
            std::thread::spawn(move || publisher(&args, k, &stop, &done))
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(args.duration);
    let mut delivered = 0u64;
    while Instant::now() < end || !threads.iter().all(|t| t.is_finished()) {
        if Instant::now() >= end {
            stop.store(true, Ordering::Relaxed);
        }
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => {
                let v: serde_json::Value = serde_json::from_str(&t)?;
                // Older stamps are snapshots of an earlier run's last value.
                if let Some(sent) = v["data"]["t"].as_u64().filter(|t| *t >= started_ns) {
                    let us = now_ns().saturating_sub(sent) / 1000;
                    hist.record(us.max(1)).ok();
                    delivered += 1;
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => bail!("ws: {e}"),
        }
        if Instant::now() > end + Duration::from_secs(10) {
            bail!("publishers did not finish");
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    for t in threads {
        t.join().expect("publisher thread")?;
    }
    // What is still in flight to the subscriber.
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        if let Ok(tungstenite::Message::Text(t)) = ws.read() {
            let v: serde_json::Value = serde_json::from_str(&t)?;
            if let Some(sent) = v["data"]["t"].as_u64().filter(|t| *t >= started_ns) {
                hist.record((now_ns().saturating_sub(sent) / 1000).max(1))
                    .ok();
                delivered += 1;
            }
        }
    }
    let published = done.load(Ordering::Relaxed);
    let out = serde_json::json!({
        "connections": args.connections,
        "depth": if args.rate > 0 { 1 } else { args.depth },
        "rate_per_connection": args.rate,
        "published": published,
        "publishes_per_s": (published as f64 / elapsed).round(),
        "delivered": delivered,
        "delivery_p50_us": hist.value_at_quantile(0.5),
        "delivery_p99_us": hist.value_at_quantile(0.99),
        "delivery_max_us": hist.max(),
    });
    println!("{out}");
    Ok(())
}

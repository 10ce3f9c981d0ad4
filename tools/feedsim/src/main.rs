//! feedsim: market-data feed-handler simulator. Owns the CLI, the paced
//! publishing loop (coordinated-omission-safe schedule), progress and the
//! run summary.
//!
//! # Usage
//!
//! ```text
//! feedsim --ingest 127.0.0.1:9001 --universe 1000 --rate 50000 --duration 30
//! feedsim --ingest 127.0.0.1:9001 --channels AAPL,MSFT --rate max --count 1000000 --json
//! feedsim --ingest 127.0.0.1:9001 --rate 10000 --burst-every 10 --burst-factor 10 --burst-len 1
//! feedsim --nats 127.0.0.1:4222 --universe 100 --rate 20000 --duration 10
//! feedsim --stdout --universe 5 --count 3
//! ```
//!
//! Channels are `--channels A,B,C` or `--universe M` names `S0000..S{M-1}`
//! (format `S{:04}`, as `loadgen --pattern zipf` expects); each tick picks
//! its channel with Zipf(`--zipf-s`) popularity (first channel most popular).
//! Each tick is one line:
//! `{"ch":"S0001","n":7,"t":<ns>,"bid":101.25,"ask":101.27,"bid_size":300,"ask_size":500}`
//! where `n` counts per channel from 1 and `t` is the tick's *scheduled*
//! send time in realtime (CLOCK_REALTIME) nanoseconds: tick i is due at
//! i/R from the start, so a stalled target shows up as latency downstream
//! instead of silently slowing the feed. Between due ticks it sleeps (a
//! spinning feed would take a core from the server and clients it measures);
//! `--spin-us` busy-waits the last stretch for precise send times. Due ticks
//! are written in batches,
//! one write per connection per batch. Bursts (`--burst-every E`) run at
//! `--burst-factor`× for `--burst-len` s at E, 2E, ... `--connections C`
//! opens C feed connections; channel k goes to connection k mod C.

mod quote;
mod sched;
mod sink;
mod zipf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use sink::{ErrorCount, Sink, Target};
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Parser, Debug)]
#[command(
    name = "feedsim",
    about = "Market-data feed simulator for tickwire ingest, NATS or WebSocket"
)]
struct Cli {
    /// tickwire ingest address (TCP, newline-delimited JSON).
    #[arg(long, value_name = "HOST:PORT")]
    ingest: Option<String>,
    /// nats-server client address (publishes with PUB).
    #[arg(long, value_name = "HOST:PORT")]
    nats: Option<String>,
    /// Publish each tick as a WebSocket text frame to this URL.
    #[arg(long, value_name = "URL")]
    ws: Option<String>,
    /// Print ticks to stdout (NDJSON) instead of sending them.
    #[arg(long)]
    stdout: bool,
    /// Fixed channel list (comma separated).
    #[arg(long, value_delimiter = ',')]
    channels: Vec<String>,
    /// Channel universe size M: names S0000..S{M-1}.
    #[arg(long, default_value_t = 100)]
    universe: usize,
    /// Zipf exponent for channel popularity (0 = uniform).
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    /// Total ticks per second, or "max" for as fast as the target accepts.
    #[arg(long, default_value = "1000")]
    rate: String,
    /// Seconds between bursts (first burst at this time).
    #[arg(long)]
    burst_every: Option<f64>,
    /// Rate multiplier during a burst.
    #[arg(long, default_value_t = 10.0)]
    burst_factor: f64,
    /// Burst length in seconds.
    #[arg(long, default_value_t = 1.0)]
    burst_len: f64,
    /// Run for this many seconds (default 10 unless --count is given).
    #[arg(long)]
    duration: Option<f64>,
    /// Stop after this many ticks.
    #[arg(long)]
    count: Option<u64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Feed connections; channel k is published on connection k mod C.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Print one JSON object on stdout at the end.
    #[arg(long)]
    json: bool,
    /// Busy-wait this many µs before each due tick instead of sleeping up to
    /// it: send times within a few µs, at the cost of CPU (a core at a few
    /// thousand ticks/s). 0 sleeps; the timer then wakes up to ~0.1 ms late.
    #[arg(long, default_value_t = 0.0, value_name = "US")]
    spin_us: f64,
}

/// Set by SIGINT/SIGTERM: finish early but still print the summary.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn install_stop_handler() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_stop_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
    }
}

fn stop_requested() -> bool {
    STOP.load(std::sync::atomic::Ordering::Relaxed)
}

fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[derive(serde::Serialize)]
struct Summary {
    target: String,
    sent: u64,
    per_sec: f64,
    errors: u64,
    duration_s: f64,
    late_max_us: f64,
    connections: usize,
    channels: usize,
    rate: String,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("feedsim: error: {e:#}");
        std::process::exit(2);
    }
}

fn run(cli: Cli) -> Result<()> {
    install_stop_handler();
    let targets = [
        cli.ingest.clone().map(Target::Ingest),
        cli.nats.clone().map(Target::Nats),
        cli.ws.clone().map(Target::Ws),
        cli.stdout.then_some(Target::Stdout),
    ];
    let mut targets = targets.into_iter().flatten();
    let Some(target) = targets.next() else {
        bail!("give one of --ingest, --nats, --ws or --stdout");
    };
    if targets.next().is_some() {
        bail!("give only one of --ingest, --nats, --ws or --stdout");
    }
    if cli.stdout && cli.json {
        bail!("--json and --stdout both write to stdout");
    }
    if !(0.0..=1e6).contains(&cli.spin_us) {
        bail!("--spin-us must be between 0 and 1000000");
    }
    let rate: Option<f64> = match cli.rate.as_str() {
        "max" => None,
        r => {
            let v: f64 = r.parse().with_context(|| format!("--rate {r:?}"))?;
            if !v.is_finite() || v <= 0.0 {
                bail!("--rate must be positive or \"max\"");
            }
            Some(v)
        }
    };
    let names: Vec<String> = if cli.channels.is_empty() {
        if cli.universe == 0 {
            bail!("--universe must be at least 1");
        }
        (0..cli.universe).map(zipf::channel_name).collect()
    } else {
        cli.channels.clone()
    };
    if let Some(c) = names.iter().find(|c| {
        c.is_empty()
            || c.len() > 128
            || !c
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    }) {
        bail!("invalid channel name {c:?}");
    }
    let duration = match (cli.duration, cli.count) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(10.0),
    };
    let conns = cli.connections.max(1);
    let errors = Arc::new(ErrorCount::default());
    let mut sinks = (0..conns)
        .map(|_| Sink::open(&target, errors.clone()))
        .collect::<Result<Vec<_>>>()?;

    let mut rng = zipf::Rng::new(cli.seed);
    let zipf = zipf::Zipf::new(names.len(), cli.zipf_s);
    let mut quotes = quote::QuoteGen::new(names.clone(), &mut rng);
    let bursts = cli.burst_every.map(|every_s| sched::Bursts {
        every_s,
        factor: cli.burst_factor,
        len_s: cli.burst_len,
    });
    let mut schedule = rate.map(|r| sched::Schedule::new(r, bursts));

    let start = Instant::now();
    let start_rt = realtime_ns();
    let mut sent = 0u64;
    let mut late_max_ns = 0u64;
    let mut tick_buf = Vec::with_capacity(256);
    let mut progress = Progress::new(!cli.stdout);
    // Upper bound on one batch, so a long stall does not build a huge buffer.
    const MAX_BATCH: usize = 4096;

    loop {
        if cli.count.is_some_and(|c| sent >= c) || stop_requested() {
            break;
        }
        let elapsed = start.elapsed();
        let now_s = elapsed.as_secs_f64();
        let mut batch = 0usize;
        match schedule.as_mut() {
            Some(s) => {
                if duration.is_some_and(|d| s.peek() >= d) {
                    break;
                }
                let first_due = s.peek();
                while s.peek() <= now_s
                    && batch < MAX_BATCH
                    && cli.count.is_none_or(|c| sent < c)
                    && duration.is_none_or(|d| s.peek() < d)
                {
                    let due_ns = (s.peek() * 1e9).round() as u64;
                    let idx = zipf.sample(&mut rng);
                    tick_buf.clear();
                    quotes.tick(idx, start_rt + due_ns, &mut rng, &mut tick_buf);
                    sinks[idx % conns].push(&quotes.symbols[idx].name, &tick_buf);
                    s.advance();
                    sent += 1;
                    batch += 1;
                }
                if batch > 0 {
                    late_max_ns = late_max_ns.max(((now_s - first_due).max(0.0) * 1e9) as u64);
                } else {
                    // Nothing due: sleep (a spinning feed would take a core
                    // from the server and clients it measures), optionally
                    // spinning the last stretch.
                    let wait = s.peek() - start.elapsed().as_secs_f64();
                    let spin = cli.spin_us * 1e-6;
                    if wait > spin {
                        std::thread::sleep(Duration::from_secs_f64(wait - spin));
                    } else {
                        std::hint::spin_loop();
                    }
                }
            }
            None => {
                if duration.is_some_and(|d| now_s >= d) {
                    break;
                }
                // --rate max: a batch at a time, stamped with the build time.
                let t = realtime_ns();
                let n = cli.count.map_or(256, |c| (c - sent).min(256));
                for _ in 0..n {
                    let idx = zipf.sample(&mut rng);
                    tick_buf.clear();
                    quotes.tick(idx, t, &mut rng, &mut tick_buf);
                    sinks[idx % conns].push(&quotes.symbols[idx].name, &tick_buf);
                }
                sent += n;
                batch = n as usize;
            }
        }
        if batch > 0 {
            for s in &mut sinks {
                s.flush().context("write to target")?;
            }
        }
        progress.tick(sent, errors.errors.load(Relaxed));
    }
    for s in &mut sinks {
        s.flush().context("write to target")?;
    }
    let dur = start.elapsed().as_secs_f64();
    progress.finish();
    // Give the server a moment to report errors for the last lines.
    if !stop_requested() {
        std::thread::sleep(Duration::from_millis(200));
    }
    let summary = Summary {
        target: target.to_string(),
        sent,
        per_sec: (sent as f64 / dur * 10.0).round() / 10.0,
        errors: errors.errors.load(Relaxed),
        duration_s: (dur * 1000.0).round() / 1000.0,
        late_max_us: (late_max_ns as f64 / 100.0).round() / 10.0,
        connections: conns,
        channels: names.len(),
        rate: cli.rate.clone(),
    };
    if cli.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        eprintln!(
            "feedsim: sent {} ticks in {:.3} s ({:.0}/s) to {}, {} errors, max {:.1} us behind schedule",
            summary.sent,
            summary.duration_s,
            summary.per_sec,
            summary.target,
            summary.errors,
            summary.late_max_us
        );
    }
    Ok(())
}

struct Progress {
    enabled: bool,
    tty: bool,
    started: Instant,
    last: Instant,
    last_sent: u64,
    printed: bool,
}

impl Progress {
    fn new(enabled: bool) -> Self {
        Self {
            enabled,
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last: Instant::now(),
            last_sent: 0,
            printed: false,
        }
    }

    fn tick(&mut self, sent: u64, errors: u64) {
        let dt = self.last.elapsed().as_secs_f64();
        if !self.enabled || dt < 1.0 {
            return;
        }
        let line = format!(
            "[{:>4.0}s] sent {}  rate {:.0}/s  errors {}",
            self.started.elapsed().as_secs_f64(),
            sent,
            (sent - self.last_sent) as f64 / dt,
            errors
        );
        self.last = Instant::now();
        self.last_sent = sent;
        if self.tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
        self.printed = true;
    }

    fn finish(&self) {
        if self.tty && self.printed {
            eprintln!();
        }
    }
}

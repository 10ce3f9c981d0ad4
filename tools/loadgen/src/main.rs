//! loadgen: WebSocket subscriber load generator for tickwire (and for the
//! baseline and Node `ws` peers, or nats-server's websocket listener).
//! Owns the CLI, process/thread orchestration, progress and result output.
//!
//! # Usage
//!
//! ```text
//! loadgen --url ws://127.0.0.1:9000/ws --connections 1000 --channels AAPL,MSFT --duration 10 --json
//! loadgen --url ws://127.0.0.1:9000/ws --connections 5000 --pattern zipf --universe 1000 --per-client 20
//! loadgen --url ws://127.0.0.1:9000/ws --connections 100 --pattern one --channel S0000 \
//!         --slow-fraction 0.1 --slow-rate 50 --hgrm fast.hgrm --hgrm-slow slow.hgrm
//! loadgen --url ws://127.0.0.1:8080 --protocol nats --connections 100 --channels S0000
//! loadgen --url ws://127.0.0.1:9000 --protocol sse --connections 1000 --channels AAPL   # or poll
//! loadgen ... --connections 40000 --processes 3 --source-ips 127.0.0.1,127.0.0.2
//! loadgen --url wss://127.0.0.1:9443/ws --tls-ca cert.pem --connections 1000 --channels AAPL
//! ```
//!
//! Every update must carry `"t"` (intended send time, realtime ns; feedsim
//! sets it); latency = receive realtime − t, excluding the first `--warmup`
//! seconds after ramp-up. Sequences are checked per (connection, channel):
//! `seq` for tickwire, the tick's `n` for NATS. `--pattern zipf` subscribes
//! each client to `--per-client` distinct channels named `S0000..S{M-1}`
//! (format `S{:04}`, the same names `feedsim --universe M` publishes).
//! Slow clients (`--slow-fraction`) read at `--slow-rate` msgs/s or pause for
//! `--slow-pause` s; their seq jumps count as `slow.skipped`, not gaps.
//! `--json` prints one JSON object (see README.md for the schema).

mod http;
mod nats;
mod scan;
mod stats;
mod stream;
mod worker;
mod ws;
mod zipf;

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use stats::{Counters, LatencySummary, Report, SlowReport};
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::{IpAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use worker::{Config, ConnSpec, Control, Protocol, Shared, SlowMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Pattern {
    /// Every client subscribes to all of --channels.
    Fixed,
    /// Every client subscribes to one channel (--channel or the first of --channels).
    One,
    /// Each client draws --per-client channels from S0000..S{universe-1} by Zipf popularity.
    Zipf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProtocolArg {
    Tickwire,
    Nats,
    /// tickwire's Server-Sent Events transport (`GET /sse` on the URL's host).
    Sse,
    /// tickwire's long-polling transport (`GET /poll` on the URL's host).
    Poll,
}

#[derive(Parser, Debug, Clone)]
#[command(
    name = "loadgen",
    about = "WebSocket fanout load generator (tickwire protocol, its SSE and long-poll transports, or NATS over WebSocket)"
)]
struct Cli {
    /// Server URL, e.g. ws://127.0.0.1:9000/ws (NATS: ws://HOST:PORT);
    /// wss:// for WebSocket over TLS (needs --tls-ca).
    #[arg(long)]
    url: String,
    /// PEM file of the certificates to trust for a wss:// URL.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Number of client connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Channel list for --pattern fixed/one (comma separated).
    #[arg(long, value_delimiter = ',')]
    channels: Vec<String>,
    /// Single channel for --pattern one.
    #[arg(long)]
    channel: Option<String>,
    /// Subscription pattern [default: fixed, or zipf if --channels/--channel are absent].
    #[arg(long, value_enum)]
    pattern: Option<Pattern>,
    /// Zipf universe size M (channels S0000..S{M-1}).
    #[arg(long, default_value_t = 1000)]
    universe: usize,
    /// Distinct channels per client for --pattern zipf.
    #[arg(long, default_value_t = 10)]
    per_client: usize,
    /// Zipf exponent.
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    /// Seed for subscription choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Measured run length in seconds after ramp-up (includes warmup).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds at the start of the run excluded from latency.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Worker threads (each with its own Poll) [default: cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Split connections over this many child processes.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Bind client sockets to these source addresses round-robin.
    #[arg(long, value_delimiter = ',')]
    source_ips: Vec<IpAddr>,
    /// New connections per second during ramp-up (whole run).
    #[arg(long, default_value_t = 5000.0)]
    connect_rate: f64,
    /// Fraction of clients that are slow consumers.
    #[arg(long, default_value_t = 0.0)]
    slow_fraction: f64,
    /// Slow clients read at most this many messages per second.
    #[arg(long)]
    slow_rate: Option<f64>,
    /// Slow clients stop reading for this many seconds after warmup.
    #[arg(long)]
    slow_pause: Option<f64>,
    /// SO_RCVBUF of slow clients' sockets in bytes (0 = kernel default, which
    /// on loopback lets megabytes pile up before the server notices).
    #[arg(long, default_value_t = 65536)]
    slow_rcvbuf: usize,
    /// What the clients speak: tickwire or NATS over WebSocket, or tickwire's
    /// SSE or long-poll transport (these request /sse or /poll on the URL's
    /// host and ignore its path).
    #[arg(long, value_enum, default_value = "tickwire")]
    protocol: ProtocolArg,
    /// Print exactly one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Write the fast clients' latency distribution (.hgrm, microseconds).
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// Write the slow clients' latency distribution (.hgrm, microseconds).
    #[arg(long)]
    hgrm_slow: Option<PathBuf>,
    /// Seconds allowed for TCP connect + TLS handshake + upgrade per connection.
    #[arg(long, default_value_t = 10.0)]
    handshake_timeout: f64,
    /// Internal: global index of this process's first connection.
    #[arg(long, default_value_t = 0, hide = true)]
    conn_offset: usize,
    /// Internal: run as a child of --processes (machine-readable progress).
    #[arg(long, hide = true)]
    child: bool,
}

fn main() {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("loadgen: error: {e:#}");
            std::process::exit(2);
        }
    }
}

fn real_main(mut cli: Cli) -> Result<i32> {
    validate(&cli)?;
    if cli.source_ips.is_empty() && !cli.child {
        cli.source_ips = auto_source_ips(&cli)?;
        if !cli.source_ips.is_empty() {
            eprintln!(
                "loadgen: spreading {} connections over {} loopback source addresses ({}..{})",
                cli.connections,
                cli.source_ips.len(),
                cli.source_ips[0],
                cli.source_ips[cli.source_ips.len() - 1]
            );
        }
    }
    raise_nofile();
    install_stop_handler();
    let wall = Instant::now();
    let (mut report, fast, slow) = if cli.processes > 1 {
        run_parent(&cli)?
    } else {
        run_local(&cli)?
    };
    let elapsed = wall.elapsed().as_secs_f64();
    let cpu = cpu_seconds();
    report.loadgen_cpu_s = round3(cpu);
    report.loadgen_cpu_percent = round1(cpu / elapsed.max(1e-9) * 100.0);

    if cli.child {
        report.hist_v2 = Some(stats::hist_to_b64(&fast)?);
        report.slow_hist_v2 = Some(stats::hist_to_b64(&slow)?);
    }
    if let Some(p) = &cli.hgrm {
        std::fs::write(p, stats::hgrm(&fast)).with_context(|| format!("write {}", p.display()))?;
    }
    if let Some(p) = &cli.hgrm_slow {
        std::fs::write(p, stats::hgrm(&slow)).with_context(|| format!("write {}", p.display()))?;
    }
    if cli.json || cli.child {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    if report.connected == 0 && !cli.child {
        eprintln!(
            "loadgen: could not connect to {} at all ({} attempts failed){}",
            cli.url,
            report.connect_failures,
            report
                .first_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        return Ok(1);
    }
    Ok(0)
}

/// Connections per source address before we spread over more of them.
/// Linux hands out ephemeral ports of one parity first; past half the range
/// (about 14,000 with the default 32768-60999) every connect() scans and
/// slows to a crawl.
const CONNS_PER_SOURCE_IP: usize = 10_000;

/// For loopback targets, 127.0.0.0/8 needs no setup: use 127.0.0.1,
/// 127.0.0.2, ... so each source address stays well inside its port range.
fn auto_source_ips(cli: &Cli) -> Result<Vec<IpAddr>> {
    if cli.connections <= CONNS_PER_SOURCE_IP {
        return Ok(Vec::new());
    }
    let url = ws::parse_url(&cli.url)?;
    let loopback_v4 = url
        .authority
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| a.ip().is_loopback() && a.is_ipv4());
    if !loopback_v4 {
        return Ok(Vec::new());
    }
    let n = cli.connections.div_ceil(CONNS_PER_SOURCE_IP).min(250);
    Ok((1..=n)
        .map(|i| IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, i as u8)))
        .collect())
}

fn validate(cli: &Cli) -> Result<()> {
    if cli.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if !(0.0..=1.0).contains(&cli.slow_fraction) {
        bail!("--slow-fraction must be within 0..1");
    }
    if cli.slow_fraction > 0.0 && cli.slow_rate.is_none() && cli.slow_pause.is_none() {
        bail!("--slow-fraction needs --slow-rate or --slow-pause");
    }
    if cli.slow_rate.is_some() && cli.slow_pause.is_some() {
        bail!("use either --slow-rate or --slow-pause, not both");
    }
    if cli.slow_rate.is_some_and(|r| r <= 0.0) {
        bail!("--slow-rate must be positive");
    }
    if cli.connect_rate <= 0.0 || cli.duration <= 0.0 || cli.warmup < 0.0 {
        bail!("--connect-rate and --duration must be positive, --warmup non-negative");
    }
    if cli.processes == 0 {
        bail!("--processes must be at least 1");
    }
    let url = ws::parse_url(&cli.url)?;
    if url.tls && cli.tls_ca.is_none() {
        bail!("a wss:// URL needs --tls-ca FILE (PEM) to verify the server");
    }
    if !url.tls && cli.tls_ca.is_some() {
        bail!("--tls-ca is for wss:// URLs only");
    }
    if pattern(cli) == Pattern::Zipf && cli.universe == 0 {
        bail!("--universe must be at least 1");
    }
    if pattern(cli) != Pattern::Zipf && cli.channels.is_empty() && cli.channel.is_none() {
        bail!("give --channels, --channel or --pattern zipf");
    }
    let bad = |c: &String| {
        c.is_empty()
            || c.len() > 128
            || !c
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    };
    if let Some(c) = cli
        .channels
        .iter()
        .chain(cli.channel.iter())
        .find(|c| bad(c))
    {
        bail!("invalid channel name {c:?} (1..128 bytes of A-Za-z0-9._:-)");
    }
    Ok(())
}

fn pattern(cli: &Cli) -> Pattern {
    cli.pattern
        .unwrap_or(if cli.channels.is_empty() && cli.channel.is_none() {
            Pattern::Zipf
        } else {
            Pattern::Fixed
        })
}

/// Channels for the client with global index `g`.
fn channels_for(cli: &Cli, g: usize, zipf: Option<&zipf::Zipf>) -> Vec<String> {
    match pattern(cli) {
        Pattern::Fixed => {
            if cli.channels.is_empty() {
                cli.channel.iter().cloned().collect()
            } else {
                cli.channels.clone()
            }
        }
        Pattern::One => vec![
            cli.channel
                .clone()
                .unwrap_or_else(|| cli.channels[0].clone()),
        ],
        Pattern::Zipf => {
            let z = zipf.expect("zipf sampler");
            let mut rng = zipf::Rng::new(cli.seed ^ (g as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z.sample_distinct(&mut rng, cli.per_client)
                .into_iter()
                .map(zipf::channel_name)
                .collect()
        }
    }
}

/// Slow clients are spread evenly over the global index space.
fn is_slow(fraction: f64, g: usize) -> bool {
    fraction > 0.0 && ((g + 1) as f64 * fraction).floor() > (g as f64 * fraction).floor()
}

fn run_local(cli: &Cli) -> Result<(Report, Histogram<u64>, Histogram<u64>)> {
    let url = ws::parse_url(&cli.url)?;
    let addr = url
        .authority
        .to_socket_addrs()
        .with_context(|| format!("resolve {}", url.authority))?
        .next()
        .with_context(|| format!("no address for {}", url.authority))?;
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, cli.connections);
    let slow_mode = match (cli.slow_rate, cli.slow_pause) {
        (Some(r), _) => Some(SlowMode::Rate(r)),
        (_, Some(p)) => Some(SlowMode::Pause(p)),
        _ => None,
    };
    let protocol = match cli.protocol {
        ProtocolArg::Tickwire => Protocol::Tickwire,
        ProtocolArg::Nats => Protocol::Nats,
        ProtocolArg::Sse => Protocol::Sse,
        ProtocolArg::Poll => Protocol::Poll,
    };
    let cfg = Arc::new(Config {
        addr,
        host: url.authority.clone(),
        path: url.path.clone(),
        protocol,
        connect_rate: cli.connect_rate / threads as f64,
        slow_mode,
        slow_rcvbuf: cli.slow_rcvbuf,
        handshake_timeout: Duration::from_secs_f64(cli.handshake_timeout),
        tls: match &cli.tls_ca {
            Some(ca) if url.tls => Some(stream::TlsClient::new(ca, &url.host)?),
            _ => None,
        },
    });
    let zipf = (pattern(cli) == Pattern::Zipf).then(|| zipf::Zipf::new(cli.universe, cli.zipf_s));
    let mut per_thread: Vec<Vec<ConnSpec>> = (0..threads).map(|_| Vec::new()).collect();
    let mut slow_clients = 0u64;
    for i in 0..cli.connections {
        let g = cli.conn_offset + i;
        let slow = slow_mode.is_some() && is_slow(cli.slow_fraction, g);
        slow_clients += slow as u64;
        per_thread[i % threads].push(ConnSpec {
            channels: channels_for(cli, g, zipf.as_ref()),
            slow,
            source_ip: (!cli.source_ips.is_empty())
                .then(|| cli.source_ips[g % cli.source_ips.len()]),
        });
    }
    drop(zipf);

    let ctl = Arc::new(Control {
        stop: AtomicBool::new(false),
        warmup_end_ns: AtomicU64::new(u64::MAX),
    });
    let shared: Vec<Arc<Shared>> = (0..threads).map(|_| Arc::new(Shared::default())).collect();
    let mut handles = Vec::new();
    for (t, specs) in per_thread.into_iter().enumerate() {
        let (cfg, ctl, sh) = (cfg.clone(), ctl.clone(), shared[t].clone());
        let seed =
            cli.seed ^ ((cli.conn_offset + t) as u64).wrapping_mul(0xA24B_AED4_963E_E407) ^ 0x5eed;
        handles.push(
            std::thread::Builder::new()
                .name(format!("loadgen-w{t}"))
                .spawn(move || worker::run(&cfg, specs, &ctl, &sh, seed))?,
        );
    }

    let sum = || {
        shared.iter().fold(Counters::default(), |mut a, s| {
            let c = s.counters();
            a.connected += c.connected;
            a.connect_failures += c.connect_failures;
            a.disconnects += c.disconnects;
            a.deliveries += c.deliveries;
            a.gaps += c.gaps;
            a.duplicates += c.duplicates;
            a.out_of_order += c.out_of_order;
            a.server_errors += c.server_errors;
            a.slow_deliveries += c.slow_deliveries;
            a.slow_skipped += c.slow_skipped;
            a.slow_duplicates += c.slow_duplicates;
            a.slow_out_of_order += c.slow_out_of_order;
            a
        })
    };
    let p99_so_far = || {
        let mut h = stats::new_hist();
        for s in &shared {
            let _ = h.add(&*s.hist.lock().unwrap());
        }
        LatencySummary::from_hist(&h).p99
    };

    let start = Instant::now();
    let mut progress = Progress::new(cli.child);
    // Ramp-up: until every connection has succeeded or failed.
    let ramp_limit = Duration::from_secs_f64(
        cli.connections as f64 / cli.connect_rate + cli.handshake_timeout + 2.0,
    );
    loop {
        let c = sum();
        if c.connected + c.connect_failures >= cli.connections as u64
            || start.elapsed() > ramp_limit
            || shared.iter().all(|s| s.done.load(Relaxed))
            || stop_requested()
        {
            break;
        }
        progress.tick(&c, cli.connections, p99_so_far);
        std::thread::sleep(Duration::from_millis(20));
    }
    let ramp_s = start.elapsed().as_secs_f64();

    let c0 = sum();
    let run_start = Instant::now();
    let mut run_for = Duration::from_secs_f64(cli.duration);
    if c0.connected == 0 {
        run_for = Duration::ZERO; // nothing to measure
    }
    ctl.warmup_end_ns.store(
        worker::now_realtime_ns() + (cli.warmup * 1e9) as u64,
        Relaxed,
    );
    while run_start.elapsed() < run_for && !stop_requested() {
        progress.tick(&sum(), cli.connections, p99_so_far);
        std::thread::sleep(
            Duration::from_millis(20).min(run_for.saturating_sub(run_start.elapsed())),
        );
    }
    let run_s = run_start.elapsed().as_secs_f64();
    ctl.stop.store(true, Relaxed);
    for h in handles {
        let _ = h.join();
    }
    progress.finish();

    let c = sum();
    let mut fast = stats::new_hist();
    let mut slow = stats::new_hist();
    let mut first_error = None;
    for s in &shared {
        fast.add(&*s.hist.lock().unwrap()).ok();
        slow.add(&*s.slow_hist.lock().unwrap()).ok();
        if first_error.is_none() {
            first_error = s.first_error.lock().unwrap().clone();
        }
    }
    let report = Report {
        protocol: format!("{:?}", cli.protocol).to_lowercase(),
        url: cli.url.clone(),
        connections: cli.connections as u64,
        connected: c.connected,
        connect_failures: c.connect_failures,
        disconnects: c.disconnects,
        deliveries: c.deliveries,
        deliveries_per_sec: if run_s > 0.0 {
            round1((c.deliveries - c0.deliveries) as f64 / run_s)
        } else {
            0.0
        },
        gaps: c.gaps,
        duplicates: c.duplicates,
        out_of_order: c.out_of_order,
        server_errors: c.server_errors,
        latency_us: LatencySummary::from_hist(&fast),
        slow: SlowReport {
            clients: slow_clients,
            mode: match slow_mode {
                Some(SlowMode::Rate(r)) => format!("rate {r}/s"),
                Some(SlowMode::Pause(p)) => format!("pause {p}s"),
                None => "none".into(),
            },
            deliveries: c.slow_deliveries,
            skipped: c.slow_skipped,
            duplicates: c.slow_duplicates,
            out_of_order: c.slow_out_of_order,
            latency_us: LatencySummary::from_hist(&slow),
        },
        duration_s: round3(run_s),
        warmup_s: cli.warmup,
        ramp_s: round3(ramp_s),
        threads: threads as u64,
        processes: 1,
        first_error,
        ..Default::default()
    };
    Ok((report, fast, slow))
}

/// Latest machine-readable progress from one child process.
#[derive(Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct ChildProgress {
    connected: u64,
    deliveries: u64,
    gaps: u64,
    disconnects: u64,
    p99_us: f64,
    cpu_s: f64,
}

fn run_parent(cli: &Cli) -> Result<(Report, Histogram<u64>, Histogram<u64>)> {
    let exe = std::env::current_exe().context("locate own executable")?;
    let p = cli.processes.min(cli.connections);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let child_threads = cli.threads.unwrap_or((cores / p).max(1));
    let args = child_args();
    let progress_state: Arc<Mutex<Vec<ChildProgress>>> =
        Arc::new(Mutex::new(vec![ChildProgress::default(); p]));
    let mut children = Vec::new();
    let mut offset = cli.conn_offset;
    for k in 0..p {
        let n = cli.connections / p + usize::from(k < cli.connections % p);
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .arg(format!("--connections={n}"))
            .arg(format!("--conn-offset={offset}"))
            .arg(format!("--threads={child_threads}"))
            .arg(format!("--connect-rate={}", cli.connect_rate / p as f64))
            .args((!cli.source_ips.is_empty()).then(|| {
                let ips: Vec<String> = cli.source_ips.iter().map(|ip| ip.to_string()).collect();
                format!("--source-ips={}", ips.join(","))
            }))
            .arg("--child")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        offset += n;
        let mut child = cmd.spawn().context("spawn child loadgen")?;
        let stderr = child.stderr.take().expect("piped stderr");
        let st = progress_state.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(j) = line.strip_prefix("@progress ") {
                    if let Ok(cp) = serde_json::from_str::<ChildProgress>(j) {
                        st.lock().unwrap()[k] = cp;
                    }
                } else {
                    eprintln!("[child {k}] {line}");
                }
            }
        });
        children.push((child, reader));
    }
    // Children exit on their own after ramp + duration; show combined progress meanwhile.
    let mut progress = Progress::new(false);
    let pids: Vec<i32> = children.iter().map(|(c, _)| c.id() as i32).collect();
    let mut forwarded = false;
    let waiter = std::thread::spawn(move || {
        children
            .into_iter()
            .map(|(child, reader)| {
                let out = child.wait_with_output();
                let _ = reader.join();
                out
            })
            .collect::<Vec<_>>()
    });
    while !waiter.is_finished() {
        if stop_requested() && !forwarded {
            // Children stop early too and still report.
            forwarded = true;
            for &pid in &pids {
                // SAFETY: signalling our own, not yet reaped, child processes.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let v = progress_state.lock().unwrap().clone();
        let c = Counters {
            connected: v.iter().map(|c| c.connected).sum(),
            deliveries: v.iter().map(|c| c.deliveries).sum(),
            gaps: v.iter().map(|c| c.gaps).sum(),
            disconnects: v.iter().map(|c| c.disconnects).sum(),
            ..Default::default()
        };
        // Children's p99s cannot be merged exactly here; the worst one is shown.
        let p99 = v.iter().map(|c| c.p99_us).fold(0.0, f64::max);
        let cpu: f64 = v.iter().map(|c| c.cpu_s).sum();
        progress.tick_with_cpu(&c, cli.connections, || p99, Some(cpu));
        std::thread::sleep(Duration::from_millis(50));
    }
    progress.finish();
    let outs = waiter
        .join()
        .map_err(|_| anyhow::anyhow!("child waiter panicked"))?;
    let mut reports = Vec::new();
    for (k, out) in outs.into_iter().enumerate() {
        let out = out.context("wait for child")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().rev().find(|l| l.starts_with('{'));
        match line.map(serde_json::from_str::<Report>) {
            Some(Ok(r)) => reports.push(r),
            _ => bail!("child {k} produced no report (exit status {})", out.status),
        }
    }
    let (mut report, fast, slow) = stats::merge_reports(&reports)?;
    report.connections = cli.connections as u64;
    report.processes = p as u64;
    Ok((report, fast, slow))
}

/// Own arguments minus the ones each child gets individually.
fn child_args() -> Vec<String> {
    const DROP: &[&str] = &[
        "--processes",
        "--connections",
        "--conn-offset",
        "--threads",
        "--connect-rate",
        "--source-ips",
        "--hgrm",
        "--hgrm-slow",
    ];
    let mut out = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let name = a.split('=').next().unwrap_or("");
        if DROP.contains(&name) {
            if !a.contains('=') {
                it.next();
            }
            continue;
        }
        if a == "--json" || a == "--child" {
            continue;
        }
        out.push(a);
    }
    out
}

/// Once-a-second status line on stderr.
struct Progress {
    machine: bool,
    tty: bool,
    started: Instant,
    last: Instant,
    last_deliv: u64,
    last_cpu: f64,
    printed: bool,
}

impl Progress {
    fn new(machine: bool) -> Self {
        Self {
            machine,
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            last: Instant::now(),
            last_deliv: 0,
            last_cpu: cpu_seconds(),
            printed: false,
        }
    }

    fn tick(&mut self, c: &Counters, want: usize, p99: impl FnOnce() -> f64) {
        self.tick_with_cpu(c, want, p99, None)
    }

    fn tick_with_cpu(
        &mut self,
        c: &Counters,
        want: usize,
        p99: impl FnOnce() -> f64,
        extra_cpu: Option<f64>,
    ) {
        let dt = self.last.elapsed().as_secs_f64();
        if dt < 1.0 {
            return;
        }
        let cpu_now = cpu_seconds() + extra_cpu.unwrap_or(0.0);
        let rate = (c.deliveries - self.last_deliv.min(c.deliveries)) as f64 / dt;
        let cpu_pct = (cpu_now - self.last_cpu) / dt * 100.0;
        self.last = Instant::now();
        self.last_deliv = c.deliveries;
        self.last_cpu = cpu_now;
        let p99 = p99();
        if self.machine {
            let cp = ChildProgress {
                connected: c.connected,
                deliveries: c.deliveries,
                gaps: c.gaps,
                disconnects: c.disconnects,
                p99_us: p99,
                cpu_s: cpu_seconds(),
            };
            eprintln!(
                "@progress {}",
                serde_json::to_string(&cp).unwrap_or_default()
            );
            return;
        }
        let line = format!(
            "[{:>4.0}s] connected {}/{}  deliveries/s {:.0}  p99 {:.1}us  gaps {}  disconnects {}  cpu {:.0}%",
            self.started.elapsed().as_secs_f64(),
            c.connected,
            want,
            rate,
            p99,
            c.gaps,
            c.disconnects,
            cpu_pct
        );
        let mut e = std::io::stderr().lock();
        if self.tty {
            let _ = write!(e, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(e, "{line}");
        }
        let _ = e.flush();
        self.printed = true;
    }

    fn finish(&mut self) {
        if self.tty && self.printed && !self.machine {
            eprintln!();
        }
    }
}

fn print_table(r: &Report) {
    let l = &r.latency_us;
    println!("loadgen results ({} {})", r.protocol, r.url);
    println!(
        "  connections       {:>12} requested, {} connected",
        r.connections, r.connected
    );
    println!("  connect failures  {:>12}", r.connect_failures);
    println!("  disconnects       {:>12}", r.disconnects);
    println!(
        "  duration          {:>12.3} s (+{:.3} s ramp, first {} s warmup)",
        r.duration_s, r.ramp_s, r.warmup_s
    );
    println!("  deliveries        {:>12}", r.deliveries);
    println!("  deliveries/s      {:>12.0}", r.deliveries_per_sec);
    println!("  gaps              {:>12}", r.gaps);
    println!("  duplicates        {:>12}", r.duplicates);
    println!("  out of order      {:>12}", r.out_of_order);
    println!("  server errors     {:>12}", r.server_errors);
    println!(
        "  latency us        p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  mean {:.1}  (n={})",
        l.p50, l.p90, l.p99, l.p999, l.max, l.mean, l.count
    );
    if r.slow.clients > 0 {
        let s = &r.slow;
        println!(
            "  slow clients      {:>12} ({}): deliveries {}, skipped {}, duplicates {}, out of order {}",
            s.clients, s.mode, s.deliveries, s.skipped, s.duplicates, s.out_of_order
        );
        let l = &s.latency_us;
        println!(
            "  slow latency us   p50 {:.1}  p99 {:.1}  max {:.1}  (n={})",
            l.p50, l.p99, l.max, l.count
        );
    }
    println!(
        "  loadgen cpu       {:>12.3} s ({:.1}% of one core), {} threads x {} processes",
        r.loadgen_cpu_s, r.loadgen_cpu_percent, r.threads, r.processes
    );
    if let Some(e) = &r.first_error {
        println!("  first error       {e}");
    }
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

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// User + system CPU of this process and its waited-for children.
fn cpu_seconds() -> f64 {
    let get = |who| {
        // SAFETY: getrusage fills the zeroed struct we own.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(who, &mut ru) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    };
    get(libc::RUSAGE_SELF) + get(libc::RUSAGE_CHILDREN)
}

/// Tens of thousands of sockets need more than the usual 1024 descriptors.
fn raise_nofile() {
    // SAFETY: plain get/setrlimit on a struct we own.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_spread() {
        let n = (0..1000).filter(|&g| is_slow(0.1, g)).count();
        assert_eq!(n, 100);
        assert_eq!((0..10).filter(|&g| is_slow(1.0, g)).count(), 10);
        assert_eq!((0..10).filter(|&g| is_slow(0.0, g)).count(), 0);
    }

    #[test]
    fn loopback_source_spreading() {
        let cli = |n: &str, url: &str| {
            Cli::parse_from([
                "loadgen",
                "--url",
                url,
                "--channels",
                "A",
                "--connections",
                n,
            ])
        };
        assert!(
            auto_source_ips(&cli("10000", "ws://127.0.0.1:1/ws"))
                .unwrap()
                .is_empty()
        );
        let ips = auto_source_ips(&cli("25000", "ws://127.0.0.1:1/ws")).unwrap();
        assert_eq!(ips.len(), 3);
        assert_eq!(ips[2].to_string(), "127.0.0.3");
        assert!(
            auto_source_ips(&cli("25000", "ws://[::1]:1/ws"))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn cli_patterns() {
        let cli = Cli::parse_from(["loadgen", "--url", "ws://x:1/ws", "--channels", "A,B"]);
        assert_eq!(pattern(&cli), Pattern::Fixed);
        assert_eq!(channels_for(&cli, 0, None), vec!["A", "B"]);
        let cli = Cli::parse_from([
            "loadgen",
            "--url",
            "ws://x:1/ws",
            "--channels",
            "A,B",
            "--pattern",
            "one",
        ]);
        assert_eq!(channels_for(&cli, 3, None), vec!["A"]);
        let cli = Cli::parse_from([
            "loadgen",
            "--url",
            "ws://x:1/ws",
            "--pattern",
            "zipf",
            "--universe",
            "20",
            "--per-client",
            "3",
        ]);
        let z = zipf::Zipf::new(20, 1.0);
        let a = channels_for(&cli, 5, Some(&z));
        assert_eq!(a.len(), 3);
        assert!(a.iter().all(|c| c.starts_with('S') && c.len() == 5));
        assert_eq!(a, channels_for(&cli, 5, Some(&z)));
        assert!(validate(&cli).is_ok());
        let cli = Cli::parse_from(["loadgen", "--url", "ws://x:1/ws", "--channels", "bad name"]);
        assert!(validate(&cli).is_err());
        let tls = |args: &[&str]| {
            let mut v = vec!["loadgen", "--channels", "A"];
            v.extend_from_slice(args);
            validate(&Cli::parse_from(v))
        };
        assert!(tls(&["--url", "wss://x:1/ws"]).is_err());
        assert!(tls(&["--url", "ws://x:1/ws", "--tls-ca", "ca.pem"]).is_err());
        assert!(tls(&["--url", "wss://x:1/ws", "--tls-ca", "ca.pem"]).is_ok());
    }
}

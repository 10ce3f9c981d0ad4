//! Configuration: command-line flags, each also a key of an optional TOML file
//! (`--config FILE`). Flags win over the file; the file wins over defaults.
//! Unknown keys are an error that names the key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// Default WebSocket/HTTP address: loopback, so a first run exposes nothing.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default ingest (feed handler) address.
pub const DEFAULT_INGEST: &str = "127.0.0.1:9100";
/// Server ping period: well under common proxy idle cut-offs (60 s).
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(15);
/// Silence after which a client is closed: three missed pings.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(45);
/// How long a connection may accept no bytes while data waits for it.
pub const DEFAULT_SLOW_CONSUMER_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes queued per connection before it conflates: ~2,500 quotes of 100 bytes.
pub const DEFAULT_OUTBOUND_BUDGET: usize = 256 * 1024;
/// Kernel send buffer per client socket (SO_SNDBUF; Linux doubles it). Data
/// in the kernel cannot be conflated, so this is capped (autotuning grows it to
/// 4 MiB); 64 KiB measured too small here: a fast client on a loaded 2-core
/// machine then fell behind by more than buffer + budget and got conflated.
pub const DEFAULT_SOCKET_SEND_BUFFER: usize = 256 * 1024;
/// Unsent bytes the kernel may hold per client socket (TCP_NOTSENT_LOWAT)
/// before writes would block. Bytes in the kernel cannot be conflated, so a
/// lagging client is kept at most this far behind by the kernel; our queue
/// conflates the rest. Does not limit a client that keeps up: its data leaves
/// the unsent queue at once.
pub const DEFAULT_SOCKET_NOTSENT_LOWAT: usize = 16 * 1024;
/// Largest client message (after reassembly), bytes.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 64 * 1024;
/// Longest ingest line, bytes.
pub const DEFAULT_MAX_LINE_SIZE: usize = 64 * 1024;
/// Channels one connection may subscribe to.
pub const DEFAULT_MAX_CHANNELS_PER_CONNECTION: usize = 1000;
/// Channels the engine tracks; each keeps its last value, so this bounds memory.
pub const DEFAULT_MAX_CHANNELS: usize = 1_000_000;
/// Connections the engine accepts in all, across workers.
pub const DEFAULT_MAX_CONNECTIONS: usize = 200_000;
/// How long a client may take over its HTTP request or WebSocket upgrade,
/// and then over its first-message `{"op":"auth"}`; and a feed over its
/// `AUTH` line.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SIGTERM drain spreads its 1012 closes over.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a long-poll waits for something new: under the 30 s many
/// proxies and load balancers allow an idle response.
pub const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_secs(25);
/// Clock skew allowed on token `exp` and `nbf`.
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(30);
/// How long before `exp` a client is asked for a new token.
pub const DEFAULT_TOKEN_REFRESH_LEAD: Duration = Duration::from_secs(30);
/// WebSocket connections one client address may hold.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1000;
/// New WebSocket connections one client address may open per second
/// (a token bucket holding one second's worth).
pub const DEFAULT_NEW_CONNECTIONS_PER_IP_PER_SECOND: u32 = 200;
/// Client messages per connection per second (a token bucket holding two
/// seconds' worth); a dashboard sends a few.
pub const DEFAULT_CLIENT_MESSAGES_PER_SECOND: u32 = 200;
/// Feed connections the ingest port accepts at once.
pub const DEFAULT_MAX_FEED_CONNECTIONS: usize = 64;
/// Environment variable holding the HS256 secret (never a flag: `ps` shows
/// command lines).
pub const JWT_SECRET_ENV: &str = "TICKWIRE_JWT_SECRET";
/// Demo feed rate, updates per second over all symbols.
pub const DEFAULT_DEMO_RATE: u32 = 3000;

/// The engine's validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// WebSocket (`/ws`) and HTTP address.
    pub listen: SocketAddr,
    /// Ingest address.
    pub ingest: SocketAddr,
    /// Worker threads (event loops).
    pub workers: usize,
    /// Whether workers are pinned to cores.
    pub pin_workers: Pinning,
    /// Run the built-in synthetic feed.
    pub demo: bool,
    /// Demo feed rate, updates/s.
    pub demo_rate: u32,
    /// Server ping period.
    pub ping_interval: Duration,
    /// Close clients silent this long.
    pub idle_timeout: Duration,
    /// Close connections that accept no bytes this long while data waits.
    pub slow_consumer_timeout: Duration,
    /// SIGTERM closes clients with 1012 spread over this window.
    pub drain_timeout: Duration,
    /// Deadline for an HTTP request or upgrade, for the first-message
    /// `{"op":"auth"}` after a token-less upgrade, and for a feed's `AUTH`
    /// line.
    pub handshake_timeout: Duration,
    /// A long-poll with nothing new answers after this long.
    pub poll_timeout: Duration,
    /// Per-connection outbound bytes before conflation.
    pub outbound_budget: usize,
    /// Conflate as soon as a client's socket would block (else only past
    /// the budget).
    pub conflate_on_block: bool,
    /// Space write passes while the workers' cores are contended.
    pub pace_when_contended: bool,
    /// After a turn that took a batch of updates off the ring, hold the next
    /// write pass back by a fifth of the last one.
    pub hold_batches: bool,
    /// During a write pass, take updates that arrived meanwhile to the
    /// connections the pass has not written yet.
    pub refresh_passes: bool,
    /// A write pass hands its plain-socket writes to the kernel in batches
    /// through io_uring (one syscall per batch, not per write).
    pub batch_sends: bool,
    /// With one worker, that worker drives the ingest loop (no ingest thread).
    pub ingest_on_worker: bool,
    /// SO_SNDBUF per client socket; 0 leaves the kernel's autotuning.
    pub socket_send_buffer: usize,
    /// TCP_NOTSENT_LOWAT per client socket; 0 leaves the kernel's default.
    pub socket_notsent_lowat: usize,
    /// Largest client message, bytes.
    pub max_frame_size: usize,
    /// Longest ingest line, bytes.
    pub max_line_size: usize,
    /// Channels per connection.
    pub max_channels_per_connection: usize,
    /// Channels in the engine.
    pub max_channels: usize,
    /// Connections in the engine.
    pub max_connections: usize,
    /// Serve the WebSocket echo endpoint `/echo` (protocol conformance runs).
    pub conformance_echo: bool,
    /// The certificate and key files when the listen port speaks TLS.
    pub tls_files: Option<crate::tls::TlsFiles>,
    /// The TLS configuration new connections use; SIGHUP swaps it.
    pub tls: Option<crate::tls::SharedConfig>,
    /// Verifies client tokens; `None`: authentication is off.
    pub auth: Option<std::sync::Arc<crate::auth::Verifier>>,
    /// Skew allowed on `exp` and `nbf`.
    pub jwt_leeway: Duration,
    /// `token_expiring` is sent this long before `exp`.
    pub token_refresh_lead: Duration,
    /// The shared token a feed's `AUTH` line must carry; `None`: feeds are
    /// not authenticated.
    pub ingest_token: Option<std::sync::Arc<[u8]>>,
    /// Feeds speak TLS with the listen port's certificate.
    pub ingest_tls: bool,
    /// Updates of history kept per channel for resuming subscribers.
    pub history_size: usize,
    /// Oldest history kept.
    pub history_ttl: Duration,
    /// History bytes over all channels.
    pub history_memory_max: usize,
    /// Largest `POST /api/publish` body.
    pub max_publish_body: usize,
    /// Messages in one publish batch.
    pub publish_batch_max: usize,
    /// How long a publish idempotency key is remembered.
    pub idempotency_window: Duration,
    /// The API key publishers present as `Authorization: Bearer`; `None`:
    /// only loopback peers may publish.
    pub api_key: Option<std::sync::Arc<[u8]>>,
    /// Channel classes from the file's `[[classes]]`, first match wins; the
    /// rest are the default class (conflating, `history_size`/`history_ttl`).
    pub classes: Vec<ChannelClass>,
    /// Where `/metrics` is served instead of the listen port.
    pub admin_listen: Option<SocketAddr>,
    /// WebSocket connections per client address; 0: no limit.
    pub max_connections_per_ip: usize,
    /// New WebSocket connections per client address per second; 0: no limit.
    pub new_connections_per_ip_per_second: u32,
    /// Client messages per connection per second; 0: no limit.
    pub client_messages_per_second: u32,
    /// `Origin` values allowed at upgrade; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Feed connections at once.
    pub max_feed_connections: usize,
    /// Peers whose `Forwarded`/`X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<crate::limits::Cidr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            ingest: DEFAULT_INGEST.parse().expect("valid default"),
            workers: default_workers(),
            pin_workers: Pinning::Auto,
            demo: false,
            demo_rate: DEFAULT_DEMO_RATE,
            ping_interval: DEFAULT_PING_INTERVAL,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            slow_consumer_timeout: DEFAULT_SLOW_CONSUMER_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            poll_timeout: DEFAULT_POLL_TIMEOUT,
            outbound_budget: DEFAULT_OUTBOUND_BUDGET,
            conflate_on_block: true,
            pace_when_contended: true,
            hold_batches: true,
            refresh_passes: true,
            batch_sends: true,
            ingest_on_worker: true,
            socket_send_buffer: DEFAULT_SOCKET_SEND_BUFFER,
            socket_notsent_lowat: DEFAULT_SOCKET_NOTSENT_LOWAT,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_line_size: DEFAULT_MAX_LINE_SIZE,
            max_channels_per_connection: DEFAULT_MAX_CHANNELS_PER_CONNECTION,
            max_channels: DEFAULT_MAX_CHANNELS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            conformance_echo: false,
            tls_files: None,
            tls: None,
            auth: None,
            jwt_leeway: DEFAULT_JWT_LEEWAY,
            token_refresh_lead: DEFAULT_TOKEN_REFRESH_LEAD,
            ingest_token: None,
            ingest_tls: false,
            history_size: 16,
            history_ttl: Duration::from_secs(60),
            history_memory_max: 256 << 20,
            classes: Vec::new(),
            max_publish_body: 1 << 20,
            publish_batch_max: 1000,
            idempotency_window: Duration::from_secs(300),
            api_key: None,
            admin_listen: None,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            new_connections_per_ip_per_second: DEFAULT_NEW_CONNECTIONS_PER_IP_PER_SECOND,
            client_messages_per_second: DEFAULT_CLIENT_MESSAGES_PER_SECOND,
            allowed_origins: Vec::new(),
            max_feed_connections: DEFAULT_MAX_FEED_CONNECTIONS,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Workers by default: the cores available to this process minus one, at
/// least one. The spare core runs the ingest thread, the kernel's network
/// work and the rest of the box, so a worker is not preempted by them in
/// the middle of a write pass; on 2 cores shared with the clients one worker
/// had a lower p99 and CPU per delivery than two (README, "Defaults").
pub fn default_workers() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.saturating_sub(1).max(1)
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a bad value.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong (names the key).
        message: String,
    },
    /// A value out of range.
    #[error("invalid {key}: {message}")]
    Invalid {
        /// The key.
        key: &'static str,
        /// Why.
        message: String,
    },
}

/// tickwire: low-latency WebSocket fanout engine.
///
/// Every option is also a key of the TOML file given by --config (with
/// underscores: ping_interval = "15s"); flags win over the file.
#[derive(Debug, Default, Parser)]
#[command(name = "tickwire", version, about, long_about = None)]
// The field docs are the --help text: plain text, not rustdoc markup.
#[allow(rustdoc::invalid_html_tags, rustdoc::bare_urls)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// WebSocket (/ws) and HTTP (/metrics, /healthz) address [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Ingest address: TCP, newline-delimited JSON with a "ch" field [default: 127.0.0.1:9100]
    #[arg(long, value_name = "ADDR")]
    pub ingest: Option<SocketAddr>,
    /// Worker event loops; one core is left to the ingest thread and the rest of the machine [default: cores available minus one, at least 1]
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Pin worker i to core i mod cores: auto (only when there are more cores than workers and ingest has its own thread), true or false [default: auto]
    #[arg(long, value_name = "auto|true|false", value_parser = parse_pinning)]
    pub pin_workers: Option<Pinning>,
    /// Conflate a client's updates as soon as its socket would block (true: freshest data for lagging clients) or only once outbound_budget is queued (false: in-order backlog up to the budget) [default: true]
    #[arg(long, value_name = "BOOL")]
    pub conflate_on_block: Option<bool>,
    /// While other threads wait for the workers' cores, space each worker's write passes so that together they take about one core's worth (bigger batches, fewer syscalls); false writes as soon as updates arrive [default: true]
    #[arg(long, value_name = "BOOL")]
    pub pace_when_contended: Option<bool>,
    /// Once updates arrive faster than a write pass goes out (a turn took 8 or more updates off the ring), hold the next pass back by a fifth of the last one so each write carries a bigger batch; false writes as soon as updates arrive [default: true]
    #[arg(long, value_name = "BOOL")]
    pub hold_batches: Option<bool>,
    /// During a write pass, look for fresh updates once a millisecond and give them to the connections the pass has not written yet (a tick that arrives mid-pass waits for part of a pass, not a whole one); false: a pass writes only what was due when it started [default: true]
    #[arg(long, value_name = "BOOL")]
    pub refresh_passes: Option<bool>,
    /// Hand a write pass's writes to plain sockets to the kernel up to 64 at a time through io_uring, one syscall per batch instead of one per write (with the same non-blocking result for each); false, or a kernel that refuses io_uring, writes with one send/writev per connection [default: true]
    #[arg(long, value_name = "BOOL")]
    pub batch_sends: Option<bool>,
    /// With one worker, run the ingest loop on that worker's thread: a tick is read, sequenced and written by one thread with no hand-off; false gives ingest its own thread [default: true]
    #[arg(long, value_name = "BOOL")]
    pub ingest_on_worker: Option<bool>,
    /// Run the built-in synthetic feed (about 50 symbols) and serve a quote page at /
    #[arg(long)]
    pub demo: bool,
    /// Demo feed rate, updates per second [default: 3000]
    #[arg(long, value_name = "N")]
    pub demo_rate: Option<u32>,
    /// Server ping period, e.g. 15s or 500ms [default: 15s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub ping_interval: Option<Duration>,
    /// Close a client that sent nothing (not even a pong) for this long [default: 45s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Close a connection whose socket took no bytes for this long while updates waited [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub slow_consumer_timeout: Option<Duration>,
    /// On SIGTERM, close clients with 1012 spread evenly over this long, then exit; 0 stops at once with 1001 [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drain_timeout: Option<Duration>,
    /// Close a connection whose HTTP request or upgrade takes longer than this, or that upgraded without a token and sent no {"op":"auth"} within it (1008); feeds get as long for their AUTH line [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub handshake_timeout: Option<Duration>,
    /// A long-poll (GET /poll) with nothing new answers after this long with an empty list [default: 25s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub poll_timeout: Option<Duration>,
    /// Outbound bytes queued per connection before updates are conflated, e.g. 256KiB [default: 256KiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub outbound_budget: Option<usize>,
    /// Kernel send buffer per client socket (SO_SNDBUF), 0 for the kernel's autotuning [default: 256KiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub socket_send_buffer: Option<usize>,
    /// Unsent bytes the kernel may hold per client socket (TCP_NOTSENT_LOWAT) before updates conflate, 0 for the kernel default [default: 16KiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub socket_notsent_lowat: Option<usize>,
    /// Largest client message; bigger frames get close 1009 [default: 64KiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub max_frame_size: Option<usize>,
    /// Longest ingest line; longer lines are rejected [default: 64KiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub max_line_size: Option<usize>,
    /// Channels one connection may subscribe to [default: 1000]
    #[arg(long, value_name = "N")]
    pub max_channels_per_connection: Option<usize>,
    /// Channels the engine keeps (each holds its last value) [default: 1000000]
    #[arg(long, value_name = "N")]
    pub max_channels: Option<usize>,
    /// Connections the engine accepts in all [default: 200000]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Serve a WebSocket echo endpoint at /echo on the same read and write path as /ws, for protocol conformance suites (Autobahn); off by default
    #[arg(long)]
    pub conformance_echo: bool,
    /// PEM certificate chain: the listen port then speaks only TLS (wss://, https://); needs --tls-key; SIGHUP reloads both files
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key matching --tls-cert
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Require a JWT from every client, HS256 with the secret in this file (or in the environment variable TICKWIRE_JWT_SECRET; never on the command line) [default: off]
    #[arg(long, value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// Require a JWT from every client, RS256 or ES256, verified with this PEM public key [default: off]
    #[arg(long, value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,
    /// Require a JWT from every client, verified with the key of this JWKS document that its "kid" names [default: off]
    #[arg(long, value_name = "FILE")]
    pub jwt_jwks_file: Option<PathBuf>,
    /// Tokens must carry this "aud" [default: not checked]
    #[arg(long, value_name = "AUD")]
    pub jwt_audience: Option<String>,
    /// Tokens must carry this "iss" [default: not checked]
    #[arg(long, value_name = "ISS")]
    pub jwt_issuer: Option<String>,
    /// Clock skew allowed on a token's exp and nbf [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub jwt_leeway: Option<Duration>,
    /// Send {"type":"token_expiring"} this long before a token expires (exp + jwt_leeway) [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub token_refresh_lead: Option<Duration>,
    /// Feeds connect with TLS too, with the --tls-cert certificate (for feeds that come over a network); needs --tls-cert and --tls-key
    #[arg(long)]
    pub ingest_tls: bool,
    /// Updates each channel keeps for clients that resume with "since" (the last value is kept apart, always) [default: 16]
    #[arg(long, value_name = "N")]
    pub history_size: Option<usize>,
    /// History older than this is not replayed (0 for no age limit) [default: 1m]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub history_ttl: Option<Duration>,
    /// History bytes over all channels; past it the oldest entries of the largest histories go first [default: 256MiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub history_memory_max: Option<usize>,
    /// Largest POST /api/publish body; larger gets 413 [default: 1MiB]
    #[arg(long, value_name = "BYTES", value_parser = parse_size)]
    pub max_publish_body: Option<usize>,
    /// Messages in one POST /api/publish batch [default: 1000]
    #[arg(long, value_name = "N")]
    pub publish_batch_max: Option<usize>,
    /// A publish repeating an idempotency_key within this window publishes nothing and answers the first seq [default: 5m]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idempotency_window: Option<Duration>,
    /// Publishers must send "Authorization: Bearer <key>" with the key in this file; without it only loopback peers may publish [default: off]
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// A feed's first line must be "AUTH <token>" with the token in this file [default: off]
    #[arg(long, value_name = "FILE")]
    pub ingest_token_file: Option<PathBuf>,
    /// Serve /metrics, /healthz and /readyz on this address instead of the listen port [default: the listen port]
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// WebSocket connections one client address may hold; more get 503; 0 for no limit [default: 1000]
    #[arg(long, value_name = "N")]
    pub max_connections_per_ip: Option<usize>,
    /// New WebSocket connections one client address may open per second; more get 429; 0 for no limit [default: 200]
    #[arg(long, value_name = "N")]
    pub new_connections_per_ip_per_second: Option<u32>,
    /// Messages a client may send per second (bursts of two seconds' worth); more get a rate_limited error, a second of them close 1008; 0 for no limit [default: 200]
    #[arg(long, value_name = "N")]
    pub client_messages_per_second: Option<u32>,
    /// Origins allowed to open WebSockets, comma-separated (https://app.example.com); others get 403 [default: any]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// Feed connections the ingest port holds at once; more get an error line and are closed [default: 64]
    #[arg(long, value_name = "N")]
    pub max_feed_connections: Option<usize>,
    /// Proxies whose Forwarded or X-Forwarded-For header names the client (per-address limits, loopback-only publish), comma-separated addresses or CIDRs (10.0.0.0/8) [default: none]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<String>>,
}

/// The TOML file: the same keys as the flags, with underscores.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    ingest: Option<SocketAddr>,
    workers: Option<usize>,
    pin_workers: Option<PinningValue>,
    conflate_on_block: Option<bool>,
    pace_when_contended: Option<bool>,
    hold_batches: Option<bool>,
    refresh_passes: Option<bool>,
    batch_sends: Option<bool>,
    ingest_on_worker: Option<bool>,
    demo: Option<bool>,
    demo_rate: Option<u32>,
    ping_interval: Option<DurationValue>,
    idle_timeout: Option<DurationValue>,
    slow_consumer_timeout: Option<DurationValue>,
    drain_timeout: Option<DurationValue>,
    handshake_timeout: Option<DurationValue>,
    poll_timeout: Option<DurationValue>,
    outbound_budget: Option<SizeValue>,
    socket_send_buffer: Option<SizeValue>,
    socket_notsent_lowat: Option<SizeValue>,
    max_frame_size: Option<SizeValue>,
    max_line_size: Option<SizeValue>,
    max_channels_per_connection: Option<usize>,
    max_channels: Option<usize>,
    max_connections: Option<usize>,
    conformance_echo: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    jwt_secret_file: Option<PathBuf>,
    jwt_public_key: Option<PathBuf>,
    jwt_jwks_file: Option<PathBuf>,
    jwt_audience: Option<String>,
    jwt_issuer: Option<String>,
    jwt_leeway: Option<DurationValue>,
    token_refresh_lead: Option<DurationValue>,
    ingest_token_file: Option<PathBuf>,
    ingest_tls: Option<bool>,
    history_size: Option<usize>,
    history_ttl: Option<DurationValue>,
    history_memory_max: Option<SizeValue>,
    classes: Option<Vec<ClassValue>>,
    max_publish_body: Option<SizeValue>,
    publish_batch_max: Option<usize>,
    idempotency_window: Option<DurationValue>,
    api_key_file: Option<PathBuf>,
    admin_listen: Option<SocketAddr>,
    max_connections_per_ip: Option<usize>,
    new_connections_per_ip_per_second: Option<u32>,
    client_messages_per_second: Option<u32>,
    allowed_origins: Option<Vec<String>>,
    max_feed_connections: Option<usize>,
    trusted_proxies: Option<Vec<String>>,
}

/// A channel class: which channels (an exact name or a trailing-`*`
/// prefix), whether their updates conflate, and their history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelClass {
    /// Its name (metrics labels).
    pub name: String,
    /// Exact name, or prefix when it ends in `*`.
    pub pattern: String,
    /// Conflate for slow consumers (market data); false: never, a client
    /// that falls a budget behind is closed and resumes from history.
    pub conflate: bool,
    /// Updates of history per channel.
    pub history_size: usize,
    /// Oldest history replayed.
    pub history_ttl: Duration,
}

impl ChannelClass {
    /// Whether `channel` belongs to this class.
    pub fn matches(&self, channel: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => channel.starts_with(prefix),
            None => channel == self.pattern,
        }
    }
}

/// Notification classes keep more history than market data: a missed
/// notification matters for minutes, a missed quote only until the next.
pub const NOTIFICATION_HISTORY_SIZE: usize = 256;
/// See [`NOTIFICATION_HISTORY_SIZE`].
pub const NOTIFICATION_HISTORY_TTL: Duration = Duration::from_secs(300);

/// `[[classes]]` in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassValue {
    name: String,
    pattern: String,
    conflate: Option<bool>,
    history_size: Option<usize>,
    history_ttl: Option<DurationValue>,
}

/// A duration: seconds as a number, or a string like "15s" or "500ms".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Seconds(f64),
    Text(String),
}

/// A size: bytes as a number, or a string like "256KiB".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

fn duration_of(key: &'static str, v: DurationValue) -> Result<Duration, ConfigError> {
    match v {
        DurationValue::Seconds(s) if let Ok(d) = Duration::try_from_secs_f64(s) => Ok(d),
        DurationValue::Seconds(s) => Err(ConfigError::Invalid {
            key,
            message: format!("{s} is not a duration"),
        }),
        DurationValue::Text(t) => {
            parse_duration(&t).map_err(|message| ConfigError::Invalid { key, message })
        }
    }
}

/// Worker pinning in a file: `true`, `false` or `"auto"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PinningValue {
    Bool(bool),
    Text(String),
}

fn pinning_of(key: &'static str, v: PinningValue) -> Result<Pinning, ConfigError> {
    match v {
        PinningValue::Bool(true) => Ok(Pinning::On),
        PinningValue::Bool(false) => Ok(Pinning::Off),
        PinningValue::Text(t) => {
            parse_pinning(&t).map_err(|message| ConfigError::Invalid { key, message })
        }
    }
}

/// Whether worker threads are pinned to cores.
///
/// Pinning keeps a worker's connections, caches and interrupts on one core,
/// which pays when the workers have cores to themselves. When every core
/// runs a worker, the ingest thread and everything else on the machine must
/// share those cores, and a pinned worker cannot move off a core another
/// thread has taken: measured on 2 cores shared with a load generator, two
/// pinned workers had about 1.6× the p99 of two unpinned ones and fell
/// behind at 6,400 ticks/s to 1,000 clients where unpinned ones kept up.
/// The same holds for one worker that drives ingest itself: the whole
/// engine is then one thread, and pinned it had about twice the p99 of
/// unpinned at 8,000 ticks/s (perf/DEFAULTS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinning {
    /// Pin only when there are more cores than workers and ingest has a
    /// thread of its own.
    Auto,
    /// Always pin worker i to core i mod cores.
    On,
    /// Never pin; the scheduler places the workers.
    Off,
}

impl Pinning {
    /// Whether `workers` workers on a machine with `cores` cores get pinned;
    /// `ingest_thread`: the ingest loop runs on a thread of its own (not
    /// inside the only worker, see `ingest_on_worker`).
    ///
    /// # Examples
    /// ```
    /// use tickwire::config::Pinning;
    /// assert!(Pinning::Auto.pins(4, 8, true));
    /// assert!(!Pinning::Auto.pins(2, 2, true));
    /// // One worker driving ingest is the whole engine: the scheduler places it.
    /// assert!(!Pinning::Auto.pins(1, 2, false));
    /// assert!(Pinning::On.pins(2, 2, true));
    /// ```
    pub fn pins(self, workers: usize, cores: usize, ingest_thread: bool) -> bool {
        match self {
            Pinning::Auto => ingest_thread && cores > workers,
            Pinning::On => true,
            Pinning::Off => false,
        }
    }
}

/// Parses `auto`, `true`/`on`/`yes` or `false`/`off`/`no`.
pub fn parse_pinning(s: &str) -> Result<Pinning, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(Pinning::Auto),
        "true" | "on" | "yes" => Ok(Pinning::On),
        "false" | "off" | "no" => Ok(Pinning::Off),
        _ => Err(format!("{s:?} is not auto, true or false")),
    }
}

fn size_of(key: &'static str, v: SizeValue) -> Result<usize, ConfigError> {
    match v {
        SizeValue::Bytes(b) => Ok(b as usize),
        SizeValue::Text(t) => {
            parse_size(&t).map_err(|message| ConfigError::Invalid { key, message })
        }
    }
}

/// The longest heartbeat or timeout accepted.
const MAX_TIMER: Duration = Duration::from_secs(7 * 24 * 3600);

/// Parses "15s", "500ms", "1m" (humantime syntax) or plain seconds ("2.5").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.trim().parse::<f64>() {
        // Rejects negative, NaN and out-of-range values instead of panicking.
        return Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{s:?} is not a duration in range; try 15s or 500ms"));
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}); try 15s or 500ms"))
}

/// Parses "65536", "64KiB", "64k", "1MiB", "1m" into bytes.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size; try 65536 or 64KiB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?}; use B, KiB, MiB or GiB"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

impl Config {
    /// Builds the configuration from flags and the file they name.
    ///
    /// # Errors
    /// An unreadable or invalid file, an unknown key, or a value out of range.
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Self::parse_file(&text).map_err(|message| ConfigError::Parse {
                    path: path.clone(),
                    message,
                })?
            }
            None => FileConfig::default(),
        };
        let mut c = Config::default();
        macro_rules! set {
            ($key:ident) => {
                if let Some(v) = cli.$key.or(file.$key) {
                    c.$key = v;
                }
            };
            ($key:ident, $conv:ident) => {
                if let Some(v) = cli.$key {
                    c.$key = v;
                } else if let Some(v) = file.$key {
                    c.$key = $conv(stringify!($key), v)?;
                }
            };
        }
        set!(listen);
        set!(ingest);
        set!(workers);
        set!(pin_workers, pinning_of);
        set!(conflate_on_block);
        set!(pace_when_contended);
        set!(hold_batches);
        set!(refresh_passes);
        set!(batch_sends);
        set!(ingest_on_worker);
        set!(demo_rate);
        set!(max_channels_per_connection);
        set!(max_channels);
        set!(max_connections);
        set!(ping_interval, duration_of);
        set!(idle_timeout, duration_of);
        set!(slow_consumer_timeout, duration_of);
        set!(drain_timeout, duration_of);
        set!(handshake_timeout, duration_of);
        set!(poll_timeout, duration_of);
        set!(outbound_budget, size_of);
        set!(max_frame_size, size_of);
        set!(socket_send_buffer, size_of);
        set!(socket_notsent_lowat, size_of);
        set!(max_line_size, size_of);
        c.demo = cli.demo || file.demo.unwrap_or(false);
        c.conformance_echo = cli.conformance_echo || file.conformance_echo.unwrap_or(false);
        match (cli.tls_cert.or(file.tls_cert), cli.tls_key.or(file.tls_key)) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                let loaded = crate::tls::load(&cert, &key).map_err(|e| ConfigError::Invalid {
                    key: "tls_cert",
                    message: e.0,
                })?;
                c.tls = Some(std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(loaded)));
                c.tls_files = Some(crate::tls::TlsFiles { cert, key });
            }
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    key: "tls_key",
                    message: "is missing: tls_cert needs its private key".into(),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "tls_cert",
                    message: "is missing: tls_key needs its certificate".into(),
                });
            }
        }
        set!(jwt_leeway, duration_of);
        set!(token_refresh_lead, duration_of);
        set!(max_connections_per_ip);
        set!(new_connections_per_ip_per_second);
        set!(client_messages_per_second);
        set!(max_feed_connections);
        set!(history_size);
        set!(history_ttl, duration_of);
        set!(history_memory_max, size_of);
        set!(max_publish_body, size_of);
        set!(publish_batch_max);
        set!(idempotency_window, duration_of);
        if let Some(path) = cli.api_key_file.or(file.api_key_file) {
            let invalid = |message: String| ConfigError::Invalid {
                key: "api_key_file",
                message,
            };
            let text = crate::auth::read_key_file(&path).map_err(|e| invalid(e.to_string()))?;
            let key = text.trim_ascii();
            if key.is_empty() || key.iter().any(|b| b.is_ascii_whitespace()) {
                return Err(invalid(format!(
                    "{}: the key must be one word, not empty",
                    path.display()
                )));
            }
            c.api_key = Some(key.into());
        }
        for (i, v) in file.classes.unwrap_or_default().into_iter().enumerate() {
            let invalid = |message: String| ConfigError::Invalid {
                key: "classes",
                message: format!("entry {} ({:?}): {message}", i + 1, v.name),
            };
            let body = v.pattern.strip_suffix('*').unwrap_or(&v.pattern);
            if v.name.is_empty()
                || !v
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(invalid("name must be letters, digits, _ or -".into()));
            }
            if !body.is_empty() && !crate::channel::is_valid(body.as_bytes()) {
                return Err(invalid(format!(
                    "pattern {:?} is not a channel name or a prefix ending in *",
                    v.pattern
                )));
            }
            let conflate = v.conflate.unwrap_or(true);
            let (size, ttl) = if conflate {
                (c.history_size, c.history_ttl)
            } else {
                (NOTIFICATION_HISTORY_SIZE, NOTIFICATION_HISTORY_TTL)
            };
            let history_ttl = match v.history_ttl {
                Some(t) => duration_of("classes.history_ttl", t)?,
                None => ttl,
            };
            c.classes.push(ChannelClass {
                name: v.name,
                pattern: v.pattern,
                conflate,
                history_size: v.history_size.unwrap_or(size),
                history_ttl,
            });
        }
        set!(allowed_origins);
        c.admin_listen = cli.admin_listen.or(file.admin_listen);
        c.ingest_tls = cli.ingest_tls || file.ingest_tls.unwrap_or(false);
        if c.ingest_tls && c.tls.is_none() {
            return Err(ConfigError::Invalid {
                key: "ingest_tls",
                message: "needs tls_cert and tls_key: the ingest port uses their certificate"
                    .into(),
            });
        }
        if let Some(list) = cli.trusted_proxies.or(file.trusted_proxies) {
            for p in list.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
                let cidr = p.parse().map_err(|message| ConfigError::Invalid {
                    key: "trusted_proxies",
                    message,
                })?;
                c.trusted_proxies.push(cidr);
            }
        }
        for o in &c.allowed_origins {
            if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                return Err(ConfigError::Invalid {
                    key: "allowed_origins",
                    message: format!(
                        "{o:?} is not an origin: scheme and host, like https://app.example.com"
                    ),
                });
            }
        }
        c.auth = Self::load_verifier(
            cli.jwt_secret_file.or(file.jwt_secret_file),
            cli.jwt_public_key.or(file.jwt_public_key),
            cli.jwt_jwks_file.or(file.jwt_jwks_file),
            cli.jwt_audience.or(file.jwt_audience),
            cli.jwt_issuer.or(file.jwt_issuer),
            c.jwt_leeway,
        )?;
        if let Some(path) = cli.ingest_token_file.or(file.ingest_token_file) {
            let invalid = |message: String| ConfigError::Invalid {
                key: "ingest_token_file",
                message,
            };
            let text = crate::auth::read_key_file(&path).map_err(|e| invalid(e.to_string()))?;
            let token = text.trim_ascii();
            if token.is_empty() || token.iter().any(|b| b.is_ascii_whitespace()) {
                return Err(invalid(format!(
                    "{}: the token must be one word, not empty",
                    path.display()
                )));
            }
            c.ingest_token = Some(token.into());
        }
        c.validate()?;
        Ok(c)
    }

    /// The token verifier from at most one key source; the secret may come
    /// from the environment.
    fn load_verifier(
        secret_file: Option<PathBuf>,
        public_key: Option<PathBuf>,
        jwks: Option<PathBuf>,
        audience: Option<String>,
        issuer: Option<String>,
        leeway: Duration,
    ) -> Result<Option<std::sync::Arc<crate::auth::Verifier>>, ConfigError> {
        use crate::auth::{KeySource, Verifier, read_key_file};
        let env_secret = std::env::var_os(JWT_SECRET_ENV).filter(|v| !v.is_empty());
        let given = [
            secret_file.is_some(),
            public_key.is_some(),
            jwks.is_some(),
            env_secret.is_some() && secret_file.is_none(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(ConfigError::Invalid {
                key: "jwt_secret_file",
                message: format!(
                    "give one of jwt_secret_file, {JWT_SECRET_ENV}, jwt_public_key, jwt_jwks_file"
                ),
            });
        }
        let invalid = |key, e: crate::auth::KeyError| ConfigError::Invalid {
            key,
            message: e.to_string(),
        };
        let (key, origin, source) = if let Some(p) = secret_file {
            let text = read_key_file(&p).map_err(|e| invalid("jwt_secret_file", e))?;
            let secret = text.trim_ascii_end().to_vec();
            (
                "jwt_secret_file",
                p.display().to_string(),
                KeySource::Secret(secret),
            )
        } else if let Some(p) = public_key {
            let pem = read_key_file(&p).map_err(|e| invalid("jwt_public_key", e))?;
            (
                "jwt_public_key",
                p.display().to_string(),
                KeySource::PublicKeyPem(pem),
            )
        } else if let Some(p) = jwks {
            let doc = read_key_file(&p).map_err(|e| invalid("jwt_jwks_file", e))?;
            (
                "jwt_jwks_file",
                p.display().to_string(),
                KeySource::Jwks(doc),
            )
        } else if let Some(v) = env_secret {
            use std::os::unix::ffi::OsStrExt;
            let secret = v.as_bytes().trim_ascii_end().to_vec();
            (
                "jwt_secret_file",
                JWT_SECRET_ENV.to_string(),
                KeySource::Secret(secret),
            )
        } else {
            if audience.is_some() || issuer.is_some() {
                return Err(ConfigError::Invalid {
                    key: "jwt_audience",
                    message: "needs a key: jwt_secret_file, jwt_public_key or jwt_jwks_file".into(),
                });
            }
            return Ok(None);
        };
        let v = Verifier::new(&source, &origin, audience, issuer, leeway.as_secs())
            .map_err(|e| invalid(key, e))?;
        Ok(Some(std::sync::Arc::new(v)))
    }

    fn parse_file(text: &str) -> Result<FileConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Checks ranges.
    ///
    /// # Errors
    /// Names the first key out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_string(),
            })
        };
        if self.workers == 0 || self.workers > 1024 {
            return bad("workers", "must be 1 to 1024");
        }
        // Timers are kept in u64 milliseconds: a week is far past any use.
        for (key, d) in [
            ("ping_interval", self.ping_interval),
            ("idle_timeout", self.idle_timeout),
            ("slow_consumer_timeout", self.slow_consumer_timeout),
            ("drain_timeout", self.drain_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("poll_timeout", self.poll_timeout),
            ("jwt_leeway", self.jwt_leeway),
            ("token_refresh_lead", self.token_refresh_lead),
            ("history_ttl", self.history_ttl),
            ("idempotency_window", self.idempotency_window),
        ] {
            if d > MAX_TIMER {
                return bad(key, "must be at most 7 days");
            }
        }
        if self.ping_interval.is_zero() {
            return bad("ping_interval", "must be above zero");
        }
        if self.idle_timeout <= self.ping_interval {
            return bad("idle_timeout", "must be longer than ping_interval");
        }
        if self.slow_consumer_timeout.is_zero() {
            return bad("slow_consumer_timeout", "must be above zero");
        }
        if self.handshake_timeout.is_zero() {
            return bad("handshake_timeout", "must be above zero");
        }
        if self.max_frame_size < 128 || self.max_frame_size > 64 << 20 {
            return bad("max_frame_size", "must be 128 B to 64 MiB");
        }
        if self.max_line_size < 64 || self.max_line_size > 64 << 20 {
            return bad("max_line_size", "must be 64 B to 64 MiB");
        }
        if self.socket_notsent_lowat > u32::MAX as usize {
            return bad("socket_notsent_lowat", "must be below 4 GiB");
        }
        if self.max_channels_per_connection == 0 {
            return bad("max_channels_per_connection", "must be at least 1");
        }
        if self.max_channels == 0 || self.max_channels >= u32::MAX as usize {
            return bad("max_channels", "must be 1 to 4294967294");
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if self.history_size > 1 << 20 {
            return bad("history_size", "must be at most 1048576");
        }
        if self.classes.len() > 1000 {
            return bad("classes", "at most 1000 classes");
        }
        for c in &self.classes {
            if c.history_size > 1 << 20 || c.history_ttl > MAX_TIMER {
                return bad(
                    "classes",
                    "history_size must be at most 1048576 and history_ttl at most 7 days",
                );
            }
        }
        if self.max_publish_body < 64 || self.max_publish_body > 64 << 20 {
            return bad("max_publish_body", "must be 64 B to 64 MiB");
        }
        if self.publish_batch_max == 0 || self.publish_batch_max > 100_000 {
            return bad("publish_batch_max", "must be 1 to 100000");
        }
        if self.max_feed_connections == 0 {
            return bad("max_feed_connections", "must be at least 1");
        }
        if self.demo && self.demo_rate == 0 {
            return bad("demo_rate", "must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_keys_flags_win_and_unknown_keys_named() {
        let dir = std::env::temp_dir().join(format!("tickwire-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.toml");
        std::fs::write(
            &path,
            "workers = 3\nping_interval = \"2s\"\nidle_timeout = 7\noutbound_budget = \"1MiB\"\n",
        )
        .unwrap();
        let cli = Cli {
            config: Some(path.clone()),
            workers: Some(5),
            ..Cli::default()
        };
        let c = Config::load(cli).unwrap();
        assert_eq!(c.workers, 5);
        assert_eq!(c.ping_interval, Duration::from_secs(2));
        assert_eq!(c.idle_timeout, Duration::from_secs(7));
        assert_eq!(c.outbound_budget, 1 << 20);

        std::fs::write(&path, "workerz = 3\n").unwrap();
        let err = Config::load(Cli {
            config: Some(path.clone()),
            ..Cli::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("workerz"), "{err}");

        std::fs::write(&path, "idle_timeout = \"1s\"\nping_interval = \"2s\"\n").unwrap();
        let err = Config::load(Cli {
            config: Some(path),
            ..Cli::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("idle_timeout"), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("2 MiB"), Ok(2 << 20));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        // Out of Duration's range or negative: an error, not a panic.
        assert!(parse_duration("1e300").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("NaN").is_err());
    }

    #[test]
    fn pinning_parses_from_flags_and_files() {
        assert_eq!(parse_pinning("auto"), Ok(Pinning::Auto));
        assert_eq!(parse_pinning("TRUE"), Ok(Pinning::On));
        assert_eq!(parse_pinning("off"), Ok(Pinning::Off));
        assert!(parse_pinning("sometimes").is_err());
        let file = |text: &str| Config::parse_file(text).map(|f| f.pin_workers);
        assert!(matches!(
            file("pin_workers = true"),
            Ok(Some(PinningValue::Bool(true)))
        ));
        let v = file("pin_workers = \"auto\"").unwrap().unwrap();
        assert_eq!(pinning_of("pin_workers", v).unwrap(), Pinning::Auto);
        let v = file("pin_workers = \"maybe\"").unwrap().unwrap();
        let err = pinning_of("pin_workers", v).unwrap_err().to_string();
        assert!(
            err.contains("pin_workers") && err.contains("maybe"),
            "{err}"
        );
        // Auto pins only when every worker can have a core of its own and
        // one is left for the ingest thread and the rest.
        assert!(!Pinning::Auto.pins(2, 2, true));
        assert!(Pinning::Auto.pins(2, 3, true));
        assert!(Pinning::Auto.pins(1, 2, true));
        // A single worker that drives ingest is never pinned by auto, but
        // is when asked.
        assert!(!Pinning::Auto.pins(1, 2, false));
        assert!(!Pinning::Auto.pins(1, 64, false));
        assert!(Pinning::On.pins(1, 2, false));
        assert!(!Pinning::Off.pins(1, 64, true));
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }
}

//! The built-in demo: a synthetic feed handler that writes realistic quotes
//! (random-walk mid prices, bid/ask, sizes) for about 50 symbols to the
//! engine's own ingest port, like any external feed would, and the quote page
//! served at `/`.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::rng::Rng;

/// Symbols of the demo feed.
pub const SYMBOLS: [&str; 50] = [
    "AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "BRK.B", "JPM", "V", "UNH", "XOM",
    "JNJ", "WMT", "MA", "PG", "AVGO", "HD", "CVX", "MRK", "ABBV", "LLY", "PEP", "KO", "COST",
    "ADBE", "CRM", "NFLX", "AMD", "INTC", "CSCO", "ORCL", "TMO", "ACN", "MCD", "NKE", "DIS", "WFC",
    "BAC", "QCOM", "TXN", "IBM", "CAT", "GS", "MS", "BA", "GE", "UBER", "SHOP", "PYPL",
];

/// Ticks are written in batches this often.
const BATCH_PERIOD: Duration = Duration::from_millis(5);

struct Quote {
    mid: f64,
    spread_bps: f64,
}

/// Runs the demo feed until `shutdown`, writing `rate` ticks per second to
/// `ingest`; reconnects if the connection drops.
pub fn run_feed(ingest: SocketAddr, rate: u32, shutdown: Arc<AtomicBool>) {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut rng = Rng::new(seed);
    let mut quotes: Vec<Quote> = SYMBOLS
        .iter()
        .map(|_| Quote {
            mid: 20.0 + rng.unit() * 480.0,
            spread_bps: 1.0 + rng.unit() * 4.0,
        })
        .collect();
    // Popularity: a few names trade far more than the rest (Zipf-like).
    let weights: Vec<f64> = (1..=SYMBOLS.len()).map(|k| 1.0 / k as f64).collect();
    let total: f64 = weights.iter().sum();
    let cumulative: Vec<f64> = weights
        .iter()
        .scan(0.0, |acc, w| {
            *acc += w / total;
            Some(*acc)
        })
        .collect();
    let mut line = Vec::with_capacity(256);
    let mut batch = Vec::with_capacity(64 * 1024);
    while !shutdown.load(Ordering::Relaxed) {
        let Ok(mut stream) = TcpStream::connect(ingest) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let start = Instant::now();
        let mut sent: u64 = 0;
        while !shutdown.load(Ordering::Relaxed) {
            let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
            batch.clear();
            while sent < due {
                let u = rng.unit();
                let i = cumulative
                    .iter()
                    .position(|&c| u < c)
                    .unwrap_or(SYMBOLS.len() - 1);
                let q = &mut quotes[i];
                // Geometric random walk, about 1 bp per tick.
                q.mid *= 1.0 + (rng.unit() - 0.5) * 0.0002;
                let half = q.mid * q.spread_bps / 20_000.0;
                // Whole cents, and at least one cent apart: rounding a spread
                // of under a cent must not print a locked market.
                let bid = ((q.mid - half) * 100.0).floor().max(1.0) as u64;
                let ask = (((q.mid + half) * 100.0).ceil() as u64).max(bid + 1);
                let t = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                line.clear();
                let _ = writeln!(
                    line,
                    "{{\"ch\":\"{}\",\"bid\":{}.{:02},\"ask\":{}.{:02},\"bid_size\":{},\"ask_size\":{},\"t\":{}}}",
                    SYMBOLS[i],
                    bid / 100,
                    bid % 100,
                    ask / 100,
                    ask % 100,
                    100 * (1 + rng.below(50)),
                    100 * (1 + rng.below(50)),
                    t
                );
                batch.extend_from_slice(&line);
                sent += 1;
            }
            if !batch.is_empty() && stream.write_all(&batch).is_err() {
                break;
            }
            std::thread::sleep(BATCH_PERIOD);
        }
    }
}

/// The quote page served at `/`: subscribes to the symbols in its box (the
/// demo's by default) and shows each one's latest quote, seq and update count.
pub fn index_html(symbols: &[&str]) -> String {
    INDEX_HTML.replace("__SYMBOLS__", &symbols.join(","))
}

const INDEX_HTML: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tickwire</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:2em;background:#0e1116;color:#d8dee9}
h1{font-size:18px;margin:0 0 .5em}
input{width:60%;background:#1b2029;color:#d8dee9;border:1px solid #333;padding:4px}
table{border-collapse:collapse;margin-top:1em;min-width:640px}
td,th{padding:2px 12px;text-align:right;font-variant-numeric:tabular-nums}
th{color:#8892a6;font-weight:normal;border-bottom:1px solid #333}
td:first-child,th:first-child{text-align:left}
.up{color:#5fd38d}.down{color:#ff6b6b}#status{color:#8892a6}
</style></head><body>
<h1>tickwire live quotes</h1>
<form id="f"><input id="syms" value="__SYMBOLS__"> <button>subscribe</button></form>
<div id="status">connecting…</div>
<table><thead><tr><th>symbol</th><th>bid</th><th>ask</th><th>bid size</th><th>ask size</th><th>seq</th><th>updates</th></tr></thead><tbody id="rows"></tbody></table>
<script>
const rows = {}, tbody = document.getElementById('rows'), status = document.getElementById('status');
let ws, total = 0;
const fmt = (v) => typeof v === 'number' ? v.toFixed(2) : v;
function subscribe() {
  const chans = document.getElementById('syms').value.split(',').map(s => s.trim()).filter(Boolean);
  if (ws && ws.readyState === 1 && chans.length) ws.send(JSON.stringify({op: 'subscribe', channels: chans}));
}
function row(ch) {
  if (rows[ch]) return rows[ch];
  const tr = document.createElement('tr');
  tr.innerHTML = '<td>' + ch + '</td><td></td><td></td><td></td><td></td><td></td><td>0</td>';
  tbody.appendChild(tr);
  return rows[ch] = {tr, n: 0, bid: 0};
}
function connect() {
  ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
  ws.onopen = () => { status.textContent = 'connected'; subscribe(); };
  ws.onclose = () => { status.textContent = 'disconnected, retrying…'; setTimeout(connect, 1000); };
  ws.onmessage = (e) => {
    const m = JSON.parse(e.data);
    if (m.type === 'error') { status.textContent = 'error: ' + m.message; return; }
    if (m.type !== 'update') return;
    const r = row(m.ch), d = m.data, c = r.tr.children;
    r.n++; total++;
    if (d.bid !== undefined) { c[1].className = d.bid >= r.bid ? 'up' : 'down'; r.bid = d.bid; c[1].textContent = fmt(d.bid); }
    if (d.ask !== undefined) c[2].textContent = fmt(d.ask);
    if (d.bid_size !== undefined) c[3].textContent = d.bid_size;
    if (d.ask_size !== undefined) c[4].textContent = d.ask_size;
    c[5].textContent = m.seq; c[6].textContent = r.n;
    status.textContent = 'connected, ' + total + ' updates';
  };
}
document.getElementById('f').onsubmit = (e) => { e.preventDefault(); subscribe(); };
connect();
</script></body></html>
"#;

/// The page at `/` when no demo feed runs: what the engine is and how to
/// feed it and subscribe, with the addresses it actually listens on.
pub fn feed_help_html(listen: SocketAddr, ingest: SocketAddr) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tickwire</title>
<style>body{{font:15px/1.5 system-ui,sans-serif;max-width:46em;margin:2em auto;padding:0 1em}}code,pre{{background:#f3f3f3;padding:.1em .3em}}</style>
</head><body>
<h1>tickwire is running</h1>
<p>No feed is publishing to this page. Feed handlers send newline-delimited JSON to the ingest port
<code>{ingest}</code>, one object per line with a string field <code>ch</code>:</p>
<pre>printf '{{"ch":"AAPL","bid":189.5,"ask":189.6}}\n' | nc {ingest_host} {ingest_port}</pre>
<p>Clients subscribe over WebSocket at <code>ws://{listen}/ws</code> with
<code>{{"op":"subscribe","channels":["AAPL"]}}</code>.
Start the engine with <code>--demo</code> for a built-in synthetic feed and a live quote board here.
Metrics: <a href="/metrics">/metrics</a>.</p>
</body></html>
"#,
        ingest_host = ingest.ip(),
        ingest_port = ingest.port(),
    )
}

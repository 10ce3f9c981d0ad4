//! The built-in demo: a synthetic feed handler that writes realistic quotes
//! (random-walk mid prices, bid/ask, sizes) for about 50 symbols to the
//! engine's own ingest port, like any external feed would, and the
//! dashboard served at `/`.

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

/// A believable starting mid price for each of [`SYMBOLS`] (US dollars,
/// the order of the list; round figures of the names' recent ranges).
const START_PRICES: [f64; 50] = [
    228.0, 425.0, 135.0, 198.0, 172.0, 590.0, 255.0, 468.0, 242.0, 305.0, 520.0, 118.0, 158.0,
    82.0, 525.0, 168.0, 235.0, 395.0, 158.0, 112.0, 178.0, 860.0, 172.0, 70.0, 915.0, 450.0, 335.0,
    890.0, 138.0, 21.5, 59.0, 182.0, 540.0, 378.0, 295.0, 76.0, 112.0, 72.0, 44.0, 158.0, 198.0,
    235.0, 375.0, 585.0, 122.0, 178.0, 188.0, 72.0, 112.0, 78.0,
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
    let mut quotes: Vec<Quote> = START_PRICES
        .iter()
        .map(|&p| Quote {
            // Within half a percent of the reference, so each run differs.
            mid: p * (1.0 + (rng.unit() - 0.5) * 0.01),
            spread_bps: 1.0 + rng.unit() * 4.0,
        })
        .collect();
    // Popularity: the first names trade more than the last, but gently
    // (1/sqrt(rank): the busiest about 7 times the quietest), so every row
    // of the board moves several times a second at the default rate.
    let weights: Vec<f64> = (1..=SYMBOLS.len())
        .map(|k| 1.0 / (k as f64).sqrt())
        .collect();
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
                    lot_size(&mut rng, q.mid),
                    lot_size(&mut rng, q.mid),
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

/// A displayed size: round lots of 100, fewer for dear names (a $900
/// stock shows a few hundred shares, a $20 one a few thousand).
fn lot_size(rng: &mut Rng, mid: f64) -> u64 {
    let lots = (4000.0 / mid.max(1.0)).clamp(1.0, 60.0) as u64;
    100 * (1 + rng.below(lots.max(1) * 2))
}

/// The dashboard served at `/` (`src/web/index.html`, embedded): a live
/// quote board on tickwire.js, the server panel, and, while the engine has
/// no channels, how to feed it, with the address its ingest port is on.
pub fn dashboard_html(ingest: SocketAddr) -> String {
    DASHBOARD_HTML
        .replace("__INGEST_HOST__", &ingest.ip().to_string())
        .replace("__INGEST_PORT__", &ingest.port().to_string())
        .replace("__INGEST__", &ingest.to_string())
}

const DASHBOARD_HTML: &str = include_str!("web/index.html");

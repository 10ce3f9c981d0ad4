//! Quote generation and tick formatting: a per-symbol random-walk mid price
//! in integer cents (so prices print exactly), a small spread, lot-sized
//! bid/ask sizes, a per-channel counter `n` and the intended send time `t`.

use crate::zipf::Rng;

pub struct Symbol {
    pub name: String,
    /// Next `n` to emit (per-channel counter starting at 1).
    next_n: u64,
    mid_c: i64,
}

pub struct QuoteGen {
    pub symbols: Vec<Symbol>,
}

impl QuoteGen {
    pub fn new(names: Vec<String>, rng: &mut Rng) -> Self {
        let symbols = names
            .into_iter()
            .map(|name| Symbol {
                name,
                next_n: 1,
                // Start anywhere between $10 and $500.
                mid_c: 1_000 + (rng.next_u64() % 49_000) as i64,
            })
            .collect();
        QuoteGen { symbols }
    }

    /// Appends one tick for symbol `idx` (no trailing newline) to `out`.
    pub fn tick(&mut self, idx: usize, t_ns: u64, rng: &mut Rng, out: &mut Vec<u8>) {
        let r = rng.next_u64();
        let s = &mut self.symbols[idx];
        // Random walk of -3..=+3 cents, floored at $1.00.
        s.mid_c = (s.mid_c + (r % 7) as i64 - 3).max(100);
        let spread = 1 + ((r >> 8) % 4) as i64;
        let bid = s.mid_c - spread / 2;
        let ask = bid + spread;
        let bid_size = 100 * (1 + (r >> 16) % 20);
        let ask_size = 100 * (1 + (r >> 24) % 20);
        let n = s.next_n;
        s.next_n += 1;
        format_tick(out, &s.name, n, t_ns, bid, ask, bid_size, ask_size);
    }
}

/// `{"ch":..,"n":..,"t":..,"bid":..,"ask":..,"bid_size":..,"ask_size":..}`
#[allow(clippy::too_many_arguments)]
pub fn format_tick(
    out: &mut Vec<u8>,
    ch: &str,
    n: u64,
    t_ns: u64,
    bid_c: i64,
    ask_c: i64,
    bid_size: u64,
    ask_size: u64,
) {
    let mut ib = itoa::Buffer::new();
    out.extend_from_slice(b"{\"ch\":\"");
    out.extend_from_slice(ch.as_bytes());
    out.extend_from_slice(b"\",\"n\":");
    out.extend_from_slice(ib.format(n).as_bytes());
    out.extend_from_slice(b",\"t\":");
    out.extend_from_slice(ib.format(t_ns).as_bytes());
    out.extend_from_slice(b",\"bid\":");
    cents(out, bid_c);
    out.extend_from_slice(b",\"ask\":");
    cents(out, ask_c);
    out.extend_from_slice(b",\"bid_size\":");
    out.extend_from_slice(ib.format(bid_size).as_bytes());
    out.extend_from_slice(b",\"ask_size\":");
    out.extend_from_slice(ib.format(ask_size).as_bytes());
    out.push(b'}');
}

fn cents(out: &mut Vec<u8>, c: i64) {
    let mut ib = itoa::Buffer::new();
    out.extend_from_slice(ib.format(c / 100).as_bytes());
    out.push(b'.');
    let frac = (c % 100) as u8;
    out.push(b'0' + frac / 10);
    out.push(b'0' + frac % 10);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_exact_tick() {
        let mut out = Vec::new();
        format_tick(
            &mut out,
            "S0001",
            7,
            1_700_000_000_000_000_123,
            10125,
            10127,
            300,
            500,
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"ch":"S0001","n":7,"t":1700000000000000123,"bid":101.25,"ask":101.27,"bid_size":300,"ask_size":500}"#
        );
        out.clear();
        format_tick(&mut out, "X", 1, 0, 105, 200, 100, 100);
        assert!(
            std::str::from_utf8(&out)
                .unwrap()
                .contains(r#""bid":1.05,"ask":2.00"#)
        );
    }

    #[test]
    fn ticks_are_valid_json_with_counters() {
        let mut rng = Rng::new(3);
        let mut g = QuoteGen::new(vec!["A".into(), "B".into()], &mut rng);
        let mut last_n = [0u64; 2];
        for i in 0..1000 {
            let idx = i % 2;
            let mut out = Vec::new();
            g.tick(idx, 42 + i as u64, &mut rng, &mut out);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["ch"], ["A", "B"][idx]);
            assert_eq!(v["n"].as_u64().unwrap(), last_n[idx] + 1);
            last_n[idx] += 1;
            assert_eq!(v["t"].as_u64().unwrap(), 42 + i as u64);
            let (bid, ask) = (v["bid"].as_f64().unwrap(), v["ask"].as_f64().unwrap());
            assert!(bid >= 0.99 && ask > bid, "{bid} {ask}");
            assert!(v["bid_size"].as_u64().unwrap().is_multiple_of(100));
            assert!(v["ask_size"].is_u64());
        }
    }
}

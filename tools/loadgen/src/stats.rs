//! Measurement bookkeeping: per-(connection, channel) sequence checking,
//! latency histograms with warmup exclusion, the result report (JSON schema,
//! merging of child-process reports) and `.hgrm` percentile output.

use anyhow::{Context, Result};
use base64::Engine;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Histogram values are nanoseconds; 1 µs .. 60 s at 3 significant figures.
pub const HIST_LOW_NS: u64 = 1_000;
pub const HIST_HIGH_NS: u64 = 60_000_000_000;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(HIST_LOW_NS, HIST_HIGH_NS, 3).expect("valid histogram bounds")
}

/// Records `now - t` unless the sample falls inside the warmup window.
/// Returns whether it was recorded.
#[inline]
pub fn record_latency(h: &mut Histogram<u64>, now_ns: u64, t_ns: u64, warmup_end_ns: u64) -> bool {
    if now_ns < warmup_end_ns {
        return false;
    }
    // A clock step backwards yields t > now; count it as the lowest bucket.
    h.saturating_record(now_ns.saturating_sub(t_ns));
    true
}

/// Outcome of one sequence number on a (connection, channel) stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqOutcome {
    /// First update seen on this stream (snapshot or first live update).
    First,
    InOrder,
    /// `n` sequence numbers were skipped.
    Gap(u64),
    Duplicate,
    OutOfOrder,
}

/// Updates `last` (0 = nothing seen yet; sequences start at 1) with `seq`.
#[inline]
pub fn observe_seq(last: &mut u64, seq: u64) -> SeqOutcome {
    let prev = *last;
    if prev == 0 {
        *last = seq;
        SeqOutcome::First
    } else if seq == prev + 1 {
        *last = seq;
        SeqOutcome::InOrder
    } else if seq > prev {
        *last = seq;
        SeqOutcome::Gap(seq - prev - 1)
    } else if seq == prev {
        SeqOutcome::Duplicate
    } else {
        SeqOutcome::OutOfOrder
    }
}

/// Plain counters kept by each worker (and summed across workers/processes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub connected: u64,
    pub connect_failures: u64,
    pub disconnects: u64,
    pub deliveries: u64,
    pub gaps: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub server_errors: u64,
    pub slow_deliveries: u64,
    pub slow_skipped: u64,
    pub slow_duplicates: u64,
    pub slow_out_of_order: u64,
}

impl Counters {
    /// Applies a sequence outcome to the fast or slow tallies.
    #[inline]
    pub fn apply(&mut self, o: SeqOutcome, slow: bool) {
        match (o, slow) {
            (SeqOutcome::Gap(n), false) => self.gaps += n,
            (SeqOutcome::Gap(n), true) => self.slow_skipped += n,
            (SeqOutcome::Duplicate, false) => self.duplicates += 1,
            (SeqOutcome::Duplicate, true) => self.slow_duplicates += 1,
            (SeqOutcome::OutOfOrder, false) => self.out_of_order += 1,
            (SeqOutcome::OutOfOrder, true) => self.slow_out_of_order += 1,
            _ => {}
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl LatencySummary {
    pub fn from_hist(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
            mean: (h.mean() / 1000.0 * 1000.0).round() / 1000.0,
            count: h.len(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SlowReport {
    /// Number of connections emulating slow consumers.
    pub clients: u64,
    pub mode: String,
    pub deliveries: u64,
    /// Sum of sequence jumps (updates conflated away by the server).
    pub skipped: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub latency_us: LatencySummary,
}

/// The `--json` result. Fields marked "child" exist only in the reports
/// child processes hand to their parent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub protocol: String,
    pub url: String,
    pub connections: u64,
    pub connected: u64,
    pub connect_failures: u64,
    pub disconnects: u64,
    /// Updates received by all clients (fast and slow), whole run.
    pub deliveries: u64,
    /// Deliveries per second over the measured phase (after ramp-up).
    pub deliveries_per_sec: f64,
    /// Fast clients only.
    pub gaps: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// `{"type":"error"}` frames / NATS `-ERR` received.
    pub server_errors: u64,
    /// Fast clients only, excluding warmup.
    pub latency_us: LatencySummary,
    pub slow: SlowReport,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub ramp_s: f64,
    pub threads: u64,
    pub processes: u64,
    pub loadgen_cpu_s: f64,
    pub loadgen_cpu_percent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// child: V2-serialized, base64 histogram of fast-client latency (ns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hist_v2: Option<String>,
    /// child: same for slow clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_hist_v2: Option<String>,
}

pub fn hist_to_b64(h: &Histogram<u64>) -> Result<String> {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| anyhow::anyhow!("histogram serialization: {e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

pub fn hist_from_b64(s: &str) -> Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .context("histogram base64")?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("histogram deserialization: {e:?}"))
}

/// Writes the HdrHistogram percentile distribution (`.hgrm`) with values in
/// microseconds, byte-compatible with HdrHistogram's
/// `outputPercentileDistribution(out, 5, 1000.0)`.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let scale = 1000.0;
    let mut s = String::new();
    let _ = write!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / scale;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    s,
                    "{value:>12.3} {q:>2.12} {total:>10} {:>14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(s, "{value:>12.3} {q:>2.12} {total:>10}");
            }
        }
    }
    let (mean, stdev, max) = if h.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (h.mean() / scale, h.stdev() / scale, h.max() as f64 / scale)
    };
    let _ = writeln!(
        s,
        "#[Mean    = {mean:>12.3}, StdDeviation   = {stdev:>12.3}]"
    );
    let _ = writeln!(
        s,
        "#[Max     = {max:>12.3}, Total count    = {:>12}]",
        h.len()
    );
    let sub_buckets = 2u64.pow((h.sigfig() as f64 * 10f64.log2()).ceil() as u32 + 1);
    let _ = writeln!(
        s,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        sub_buckets
    );
    s
}

/// Merges child reports into one (counters summed, histograms merged).
pub fn merge_reports(parts: &[Report]) -> Result<(Report, Histogram<u64>, Histogram<u64>)> {
    let mut fast = new_hist();
    let mut slow = new_hist();
    let mut out = Report::default();
    for p in parts {
        if let Some(b) = &p.hist_v2 {
            fast.add(hist_from_b64(b)?).context("merge histogram")?;
        }
        if let Some(b) = &p.slow_hist_v2 {
            slow.add(hist_from_b64(b)?).context("merge histogram")?;
        }
        out.protocol.clone_from(&p.protocol);
        out.url.clone_from(&p.url);
        out.connections += p.connections;
        out.connected += p.connected;
        out.connect_failures += p.connect_failures;
        out.disconnects += p.disconnects;
        out.deliveries += p.deliveries;
        // Children run concurrently, so their rates add up.
        out.deliveries_per_sec += p.deliveries_per_sec;
        out.gaps += p.gaps;
        out.duplicates += p.duplicates;
        out.out_of_order += p.out_of_order;
        out.server_errors += p.server_errors;
        out.slow.clients += p.slow.clients;
        out.slow.mode.clone_from(&p.slow.mode);
        out.slow.deliveries += p.slow.deliveries;
        out.slow.skipped += p.slow.skipped;
        out.slow.duplicates += p.slow.duplicates;
        out.slow.out_of_order += p.slow.out_of_order;
        out.duration_s = out.duration_s.max(p.duration_s);
        out.ramp_s = out.ramp_s.max(p.ramp_s);
        out.warmup_s = p.warmup_s;
        out.threads += p.threads;
        out.processes += 1;
        if out.first_error.is_none() {
            out.first_error.clone_from(&p.first_error);
        }
    }
    out.latency_us = LatencySummary::from_hist(&fast);
    out.slow.latency_us = LatencySummary::from_hist(&slow);
    Ok((out, fast, slow))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_samples() {
        let mut h = new_hist();
        // 1..=1000 µs, one sample each.
        for i in 1..=1000u64 {
            assert!(record_latency(&mut h, 10_000_000 + i * 1000, 10_000_000, 0));
        }
        let s = LatencySummary::from_hist(&h);
        assert_eq!(s.count, 1000);
        assert!((s.p50 - 500.0).abs() <= 1.0, "{s:?}");
        assert!((s.p90 - 900.0).abs() <= 1.0, "{s:?}");
        assert!((s.p99 - 990.0).abs() <= 1.0, "{s:?}");
        assert!((s.p999 - 999.0).abs() <= 1.0, "{s:?}");
        assert!((s.max - 1000.0).abs() <= 1.0, "{s:?}");
        assert!((s.mean - 500.5).abs() <= 1.0, "{s:?}");
    }

    #[test]
    fn warmup_excluded_and_clock_skew_clamped() {
        let mut h = new_hist();
        let warm_end = 5_000_000_000;
        assert!(!record_latency(&mut h, 4_999_999_999, 1, warm_end));
        assert!(record_latency(&mut h, warm_end, warm_end - 2_000, warm_end));
        assert!(record_latency(&mut h, warm_end, warm_end + 10, warm_end));
        assert_eq!(h.len(), 2);
        assert!(h.max() < 2_100);
    }

    #[test]
    fn sequence_outcomes() {
        let mut last = 0;
        let mut c = Counters::default();
        let seqs = [5, 6, 7, 10, 10, 9, 11, 15];
        let outs: Vec<SeqOutcome> = seqs
            .iter()
            .map(|&s| {
                let o = observe_seq(&mut last, s);
                c.apply(o, false);
                o
            })
            .collect();
        assert_eq!(
            outs,
            vec![
                SeqOutcome::First,
                SeqOutcome::InOrder,
                SeqOutcome::InOrder,
                SeqOutcome::Gap(2),
                SeqOutcome::Duplicate,
                SeqOutcome::OutOfOrder,
                SeqOutcome::InOrder,
                SeqOutcome::Gap(3),
            ]
        );
        assert_eq!((c.gaps, c.duplicates, c.out_of_order), (5, 1, 1));
        let mut s = Counters::default();
        s.apply(SeqOutcome::Gap(7), true);
        s.apply(SeqOutcome::Duplicate, true);
        assert_eq!((s.gaps, s.slow_skipped, s.slow_duplicates), (0, 7, 1));
    }

    #[test]
    fn hgrm_format() {
        let mut h = new_hist();
        for i in 1..=100u64 {
            h.record(i * 1000).unwrap();
        }
        let out = hgrm(&h);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[1], "");
        // Values print as the top of their bucket (1 µs lands in [0.512, 1.024) µs).
        assert_eq!(
            lines[2],
            "       1.023 0.000000000000          1           1.00"
        );
        // Body rows: 4 columns, except the last one (percentile 1.0) with 3.
        let body: Vec<&str> = lines[2..]
            .iter()
            .copied()
            .take_while(|l| !l.starts_with('#'))
            .collect();
        for l in &body[..body.len() - 1] {
            assert_eq!(l.split_whitespace().count(), 4, "{l}");
        }
        let last = body.last().unwrap();
        let top = format!("{:>12.3}", h.highest_equivalent(100_000) as f64 / 1000.0);
        assert_eq!(*last, format!("{top} 1.000000000000        100"));
        let tail = &lines[lines.len() - 3..];
        assert_eq!(
            tail[0],
            "#[Mean    =       50.493, StdDeviation   =       28.879]"
        );
        assert_eq!(
            tail[1],
            format!("#[Max     = {top}, Total count    =          100]")
        );
        assert!(tail[2].starts_with("#[Buckets = "));
    }

    #[test]
    fn v2_roundtrip_and_merge() {
        let mut a = new_hist();
        let mut b = new_hist();
        a.record(5_000).unwrap();
        b.record(7_000_000).unwrap();
        let ra = Report {
            connections: 2,
            connected: 2,
            deliveries: 10,
            hist_v2: Some(hist_to_b64(&a).unwrap()),
            ..Default::default()
        };
        let rb = Report {
            connections: 3,
            connected: 1,
            deliveries: 5,
            gaps: 4,
            hist_v2: Some(hist_to_b64(&b).unwrap()),
            ..Default::default()
        };
        let json = serde_json::to_string(&rb).unwrap();
        let rb: Report = serde_json::from_str(&json).unwrap();
        let (m, fast, _) = merge_reports(&[ra, rb]).unwrap();
        assert_eq!(
            (m.connections, m.connected, m.deliveries, m.gaps),
            (5, 3, 15, 4)
        );
        assert_eq!(fast.len(), 2);
        assert_eq!(m.latency_us.count, 2);
        assert!((m.latency_us.max - 7000.0).abs() < 10.0);
    }
}

//! Tick schedule: the intended send time of every tick, fixed in advance so
//! that a stalled target shows up as latency (no coordinated omission).
//! Steady rate R gives tick i at i/R; burst windows [k·every, k·every+len)
//! for k ≥ 1 run at R·factor.

#[derive(Debug, Clone, Copy)]
pub struct Bursts {
    pub every_s: f64,
    pub factor: f64,
    pub len_s: f64,
}

pub struct Schedule {
    rate: f64,
    bursts: Option<Bursts>,
    i: u64,
    /// Due time of tick `i`, seconds from start.
    due: f64,
    /// Current constant-rate segment: tick `seg_i` is due at `seg_t` and
    /// later ones every 1/`seg_rate` until `seg_end`. Computing from the
    /// anchor (not by accumulating intervals) keeps the schedule exact.
    seg_t: f64,
    seg_i: u64,
    seg_rate: f64,
    seg_end: f64,
}

impl Schedule {
    pub fn new(rate: f64, bursts: Option<Bursts>) -> Self {
        assert!(rate > 0.0);
        let mut s = Schedule {
            rate,
            bursts: bursts.filter(|b| b.every_s > 0.0 && b.len_s > 0.0 && b.factor > 0.0),
            i: 0,
            due: 0.0,
            seg_t: 0.0,
            seg_i: 0,
            seg_rate: rate,
            seg_end: f64::INFINITY,
        };
        s.seg_rate = s.rate_at(0.0);
        s.seg_end = s.next_boundary(0.0);
        s
    }

    pub fn rate_at(&self, t: f64) -> f64 {
        match self.bursts {
            Some(b) if t >= b.every_s && t % b.every_s < b.len_s => self.rate * b.factor,
            _ => self.rate,
        }
    }

    /// First rate change strictly after `t`.
    fn next_boundary(&self, t: f64) -> f64 {
        let Some(b) = self.bursts else {
            return f64::INFINITY;
        };
        if b.len_s >= b.every_s {
            // Bursts back to back: one change, at the first burst.
            return if t < b.every_s {
                b.every_s
            } else {
                f64::INFINITY
            };
        }
        let k = (t / b.every_s).floor();
        let burst_end = k * b.every_s + b.len_s;
        if k >= 1.0 && burst_end > t {
            burst_end
        } else {
            (k + 1.0) * b.every_s
        }
    }

    /// Due time (seconds from start) of the next tick.
    pub fn peek(&self) -> f64 {
        self.due
    }

    pub fn advance(&mut self) {
        self.i += 1;
        let cand = self.seg_t + (self.i - self.seg_i) as f64 / self.seg_rate;
        if cand >= self.seg_end {
            // A new segment starts exactly at the rate change.
            self.seg_t = self.seg_end;
            self.seg_i = self.i;
            self.seg_rate = self.rate_at(self.seg_t);
            self.seg_end = self.next_boundary(self.seg_t);
            self.due = self.seg_t;
        } else {
            self.due = cand;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_rate_is_i_over_r() {
        let mut s = Schedule::new(1000.0, None);
        for i in 0..10_000u64 {
            assert!((s.peek() - i as f64 / 1000.0).abs() < 1e-12);
            s.advance();
        }
        // A million ticks in, still exact to the nanosecond.
        let mut s = Schedule::new(3.0, None);
        for _ in 0..1_000_000 {
            s.advance();
        }
        assert!((s.peek() - 1_000_000.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn bursts_multiply_rate_in_window() {
        let b = Bursts {
            every_s: 10.0,
            factor: 10.0,
            len_s: 1.0,
        };
        let mut s = Schedule::new(100.0, Some(b));
        assert_eq!(s.rate_at(0.5), 100.0);
        assert_eq!(s.rate_at(10.5), 1000.0);
        assert_eq!(s.rate_at(11.5), 100.0);
        assert_eq!(s.rate_at(20.0), 1000.0);
        // Count ticks due in [0, 21): 21 s at 100/s, except 2 s at 1000/s.
        let mut n = 0;
        while s.peek() < 21.0 {
            n += 1;
            s.advance();
        }
        let expected = 19 * 100 + 2 * 1000;
        assert!((n as i64 - expected).abs() <= 4, "{n} vs {expected}");
        // Ticks stay monotonic across segment changes.
        let mut s = Schedule::new(100.0, Some(b));
        let mut prev = -1.0;
        while s.peek() < 35.0 {
            assert!(s.peek() > prev);
            prev = s.peek();
            s.advance();
        }
    }
}

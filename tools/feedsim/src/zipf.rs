//! Deterministic PRNG (SplitMix64) and a Zipf sampler over ranks 0..M, used
//! to pick the channel of each tick. Channel rank r is named `S{r:04}`
//! (S0000 is the most popular), the same names `loadgen --pattern zipf`
//! subscribes to; keep the two copies in step.

pub fn channel_name(rank: usize) -> String {
    format!("S{rank:04}")
}

/// SplitMix64: tiny, fast and stable across versions, so a given `--seed`
/// always produces the same subscriptions.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Zipf(s) over ranks 0..n: P(r) ∝ 1 / (r + 1)^s, sampled by binary search
/// on the precomputed CDF.
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        assert!(n > 0, "Zipf over an empty universe");
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for r in 0..n {
            acc += 1.0 / ((r + 1) as f64).powf(s);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.next_f64();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(channel_name(0), "S0000");
        assert_eq!(channel_name(42), "S0042");
        assert_eq!(channel_name(12345), "S12345");
    }

    #[test]
    fn zipf_distribution_sanity() {
        let z = Zipf::new(100, 1.0);
        let mut rng = Rng::new(7);
        let mut counts = [0u32; 100];
        let n = 200_000;
        for _ in 0..n {
            counts[z.sample(&mut rng)] += 1;
        }
        // H(100) ≈ 5.187: P(rank 0) ≈ 0.193, P(rank 1) ≈ 0.096.
        let p0 = counts[0] as f64 / n as f64;
        let p1 = counts[1] as f64 / n as f64;
        assert!((p0 - 0.193).abs() < 0.01, "{p0}");
        assert!((p1 - 0.096).abs() < 0.01, "{p1}");
        assert!(counts[0] > counts[9] && counts[9] > counts[99]);
    }
}

//! Idempotency keys of the HTTP publish API (sans-io): a publish repeated
//! with the same channel and key within the window answers the seq of the
//! first and publishes nothing, so a producer that retries after a timeout
//! never duplicates a notification. Memory is bounded by a key count; the
//! oldest keys go first.

use std::collections::{HashMap, VecDeque};

/// Keys remembered at most.
pub const KEYS_MAX: usize = 100_000;

/// Recent (channel, key) → seq.
#[derive(Debug)]
pub struct Idempotency {
    window_ns: u64,
    seqs: HashMap<(Box<str>, Box<str>), u64>,
    /// (when, channel, key), oldest first.
    order: VecDeque<(u64, Box<str>, Box<str>)>,
}

impl Idempotency {
    /// Keys kept for `window_ns`.
    pub fn new(window_ns: u64) -> Self {
        Idempotency {
            window_ns,
            seqs: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn expire(&mut self, now_ns: u64) {
        while let Some((at, _, _)) = self.order.front() {
            if now_ns.saturating_sub(*at) <= self.window_ns && self.order.len() <= KEYS_MAX {
                break;
            }
            let (_, ch, key) = self.order.pop_front().expect("front");
            self.seqs.remove(&(ch, key));
        }
    }

    /// The seq an earlier publish with this key got, if still in the window.
    pub fn get(&mut self, ch: &str, key: &str, now_ns: u64) -> Option<u64> {
        self.expire(now_ns);
        self.seqs.get(&(ch.into(), key.into())).copied()
    }

    /// Remembers that `key` on `ch` got `seq`.
    pub fn insert(&mut self, ch: &str, key: &str, seq: u64, now_ns: u64) {
        let k: (Box<str>, Box<str>) = (ch.into(), key.into());
        if self.seqs.insert(k.clone(), seq).is_none() {
            self.order.push_back((now_ns, k.0, k.1));
        }
        self.expire(now_ns);
    }

    /// Keys remembered.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_answer_the_first_seq_within_the_window() {
        let mut i = Idempotency::new(1000);
        assert_eq!(i.get("a", "k", 0), None);
        i.insert("a", "k", 7, 0);
        assert_eq!(i.get("a", "k", 500), Some(7));
        assert_eq!(i.get("b", "k", 500), None, "keys are per channel");
        assert_eq!(i.get("a", "k", 1001), None, "past the window");
        assert!(i.is_empty());
        for n in 0..(KEYS_MAX as u64 + 10) {
            i.insert("a", &n.to_string(), n, 1);
        }
        assert_eq!(i.len(), KEYS_MAX, "bounded");
        assert_eq!(i.get("a", "0", 1), None, "the oldest went first");
        assert_eq!(i.get("a", "20", 1), Some(20));
    }
}

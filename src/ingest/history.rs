//! Per-channel history (sans-io): the last updates of each channel, kept as
//! the frames already built (a refcount each, no re-serialization), bounded
//! by count and age per channel and by bytes for the whole engine; the
//! channel's epoch; and what a subscribe that resumes from a position gets
//! (the updates it missed, or a resync).

use std::collections::VecDeque;

use crate::update::Update;

/// Bytes charged per history entry beyond its frame (the `Update` and the
/// queue slot), so many tiny frames cannot pass the cap unseen.
pub const ENTRY_OVERHEAD: usize = 64;

/// How much history the engine keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Updates per channel.
    pub size: usize,
    /// Oldest kept update, ns (0: no age limit).
    pub ttl_ns: u64,
    /// Bytes over all channels.
    pub memory_max: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            size: 16,
            ttl_ns: 60_000_000_000,
            memory_max: 256 << 20,
        }
    }
}

/// A channel class as the sequencer applies it: which channels, their
/// history, and whether their updates conflate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassRule {
    /// Exact name, or prefix when it ends in `*`.
    pub pattern: Box<str>,
    /// Updates kept per channel.
    pub size: usize,
    /// Oldest kept, ns (0: no age limit).
    pub ttl_ns: u64,
    /// Conflates for slow consumers.
    pub conflate: bool,
}

impl ClassRule {
    /// Whether `channel` belongs to it.
    pub fn matches(&self, channel: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => channel.starts_with(prefix),
            None => channel == &*self.pattern,
        }
    }
}

/// Where a client is in a channel's stream: the last seq it has, and the
/// epoch that seq belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Last seq received.
    pub seq: u64,
    /// The stream's epoch, as the engine sent it.
    pub epoch: Box<str>,
}

/// How a new subscription starts.
#[derive(Debug)]
pub enum Start {
    /// No position given: the last value, if any.
    Snapshot(Option<Update>),
    /// Resumed: every update after the client's seq, oldest first (empty
    /// when it is up to date).
    Replay(Vec<Update>),
    /// The position cannot be resumed: say so, then the last value.
    Resync {
        /// Why, in a few words.
        reason: &'static str,
        /// The last value, if any.
        snapshot: Option<Update>,
    },
}

/// One channel's kept updates, oldest first.
#[derive(Debug, Default)]
pub struct History {
    entries: VecDeque<Update>,
    /// What the entries cost (kept, not summed: the memory cap reads it
    /// on every eviction).
    bytes: usize,
}

fn cost(u: &Update) -> usize {
    u.frame.len() + ENTRY_OVERHEAD
}

impl History {
    /// Appends `u`, then drops what is past the count or the age; returns
    /// the bytes added minus the bytes dropped (for the engine's total).
    pub fn push(&mut self, u: Update, size: usize, ttl_ns: u64) -> isize {
        let mut delta = cost(&u) as isize;
        let now = u.ingest_ns;
        self.bytes += cost(&u);
        self.entries.push_back(u);
        while self.entries.len() > size {
            delta -= self.pop_oldest() as isize;
        }
        delta -= self.expire(now, ttl_ns) as isize;
        delta
    }

    /// Drops entries older than `ttl_ns` before `now_ns`; returns the bytes.
    pub fn expire(&mut self, now_ns: u64, ttl_ns: u64) -> usize {
        let mut freed = 0;
        if ttl_ns == 0 {
            return 0;
        }
        while let Some(front) = self.entries.front() {
            if now_ns.saturating_sub(front.ingest_ns) <= ttl_ns {
                break;
            }
            freed += self.pop_oldest();
        }
        freed
    }

    /// Drops the oldest entry; returns its bytes (0 when empty).
    pub fn pop_oldest(&mut self) -> usize {
        let freed = self.entries.pop_front().map_or(0, |u| cost(&u));
        self.bytes -= freed;
        freed
    }

    /// Entries kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The entries' cost summed afresh (invariant checks).
    #[cfg(debug_assertions)]
    pub(crate) fn recount(&self) -> usize {
        self.entries.iter().map(cost).sum()
    }

    /// Up to `limit` kept updates after `since`, oldest first, and whether
    /// some after `since` are no longer kept (a gap before the first).
    pub fn page(&self, since: u64, limit: usize, now_ns: u64, ttl_ns: u64) -> (Vec<&Update>, bool) {
        let fresh = |u: &&Update| ttl_ns == 0 || now_ns.saturating_sub(u.ingest_ns) <= ttl_ns;
        let kept: Vec<&Update> = self
            .entries
            .iter()
            .filter(fresh)
            .filter(|u| u.seq > since)
            .take(limit)
            .collect();
        let gap = kept.first().is_some_and(|u| u.seq > since + 1);
        (kept, gap)
    }

    /// How a subscription resuming at `since` starts, for a channel at
    /// `seq` in `epoch` whose last value is `last`, at `now_ns` (entries
    /// past the age limit do not count).
    pub fn start(
        &self,
        since: &Position,
        epoch: &str,
        seq: u64,
        last: Option<&Update>,
        now_ns: u64,
        ttl_ns: u64,
    ) -> Start {
        let resync = |reason| Start::Resync {
            reason,
            snapshot: last.cloned(),
        };
        // Seq 0 is "nothing received yet": every update of the current
        // stream is new to the client, whatever epoch it saw the channel in
        // (an empty channel may be forgotten and made again between polls).
        if *since.epoch != *epoch && since.seq != 0 {
            return resync("epoch changed: the stream restarted");
        }
        if since.seq > seq {
            return resync("position is ahead of the stream");
        }
        if since.seq == seq {
            return Start::Replay(Vec::new());
        }
        let fresh = |u: &&Update| ttl_ns == 0 || now_ns.saturating_sub(u.ingest_ns) <= ttl_ns;
        match self.entries.iter().find(fresh) {
            // The first kept update must be the one right after the client's.
            Some(oldest) if oldest.seq <= since.seq + 1 => Start::Replay(
                self.entries
                    .iter()
                    .filter(|u| u.seq > since.seq)
                    .cloned()
                    .collect(),
            ),
            _ => resync("position is older than the history"),
        }
    }
}

/// The epoch of one channel stream: the engine's epoch (new at every start)
/// and the channel slot's incarnation (new whenever a slot is reused), so a
/// seq can never be taken for one of another stream.
pub fn epoch_string(engine: u64, incarnation: u64) -> Box<str> {
    format!("{engine:016x}-{incarnation:x}").into_boxed_str()
}

/// A new engine epoch: wall-clock nanoseconds mixed with the process id.
pub fn new_engine_epoch() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = t ^ (u64::from(std::process::id()) << 40);
    // splitmix64: spread the bits.
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelId;

    fn u(seq: u64, ns: u64) -> Update {
        Update {
            channel: ChannelId(0),
            seq,
            ingest_ns: ns,
            frame: crate::protocol::frame::update(b"A", seq, b"{}"),
        }
    }

    fn pos(seq: u64, epoch: &str) -> Position {
        Position {
            seq,
            epoch: epoch.into(),
        }
    }

    fn seqs(s: Start) -> Vec<u64> {
        match s {
            Start::Replay(v) => v.iter().map(|u| u.seq).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn history_bounds_by_count_and_age_and_resumes_exactly() {
        let limits = HistoryLimits {
            size: 4,
            ttl_ns: 1000,
            memory_max: 1 << 20,
        };
        let mut h = History::default();
        let mut bytes = 0isize;
        for seq in 1..=6 {
            bytes += h.push(u(seq, seq * 10), limits.size, limits.ttl_ns);
        }
        assert_eq!(h.len(), 4);
        assert_eq!(bytes as usize, h.bytes());
        let last = u(6, 60);
        let start = |p: Position, now| h.start(&p, "e", 6, Some(&last), now, limits.ttl_ns);
        assert_eq!(seqs(start(pos(3, "e"), 60)), vec![4, 5, 6]);
        assert_eq!(seqs(start(pos(2, "e"), 60)), vec![3, 4, 5, 6]);
        assert!(seqs(start(pos(6, "e"), 60)).is_empty());
        for (p, why) in [
            (pos(1, "e"), "older"),
            (pos(3, "other"), "epoch"),
            (pos(7, "e"), "ahead"),
        ] {
            match start(p, 60) {
                Start::Resync { reason, snapshot } => {
                    assert!(reason.contains(why), "{reason}");
                    assert_eq!(snapshot.map(|s| s.seq), Some(6));
                }
                other => panic!("{other:?}"),
            }
        }
        // Past the age limit, entries do not count: 3..=4 expired at 1045.
        assert!(matches!(start(pos(3, "e"), 1045), Start::Resync { .. }));
        assert_eq!(seqs(start(pos(4, "e"), 1045)), vec![5, 6]);
        // Expiry frees what it drops.
        let freed = h.expire(1055, limits.ttl_ns);
        assert_eq!(h.len(), 1);
        assert_eq!((bytes as usize) - freed, h.bytes());
        assert_ne!(epoch_string(1, 2), epoch_string(1, 3));
        assert_ne!(new_engine_epoch(), 0);
    }
}

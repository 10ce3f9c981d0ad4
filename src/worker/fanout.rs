//! Fan-out: the subscriber index (channel → this worker's subscribers) and
//! the drain of the ingest ring, which hands each update (coalesced per
//! channel per turn) to every subscriber's queue as an `Rc` bump.

use std::collections::HashMap;
use std::rc::Rc;

use slab::Slab;

use crate::channel::ChannelId;
use crate::ring::ToWorker;
use crate::worker::Worker;
use crate::worker::coalesce::Coalescer;
use crate::worker::conflate::{EntryRef, Merges, Pushed};
use crate::worker::conn::Conn;
use crate::worker::output;
use crate::worker::timers;

/// Ring messages handled per turn before sockets are written: bounds how long
/// a burst can delay the first write.
const RING_BATCH: usize = 16 * 1024;

/// This worker's subscribers of each channel. Adding and removing are O(1):
/// each (channel, slot) pair remembers its position in the channel's list,
/// so closing S subscribers of one channel costs O(S), not O(S²).
#[derive(Debug, Default)]
pub struct SubscriberIndex {
    /// Channel index → connection slots, in no particular order.
    lists: Vec<Vec<u32>>,
    /// (channel, slot) → position in `lists[channel]`.
    positions: HashMap<u64, u32>,
}

fn pair(id: ChannelId, slot: u32) -> u64 {
    ((id.0 as u64) << 32) | slot as u64
}

impl SubscriberIndex {
    /// The subscribers of `id` (slots).
    #[inline]
    pub fn subscribers(&self, id: ChannelId) -> &[u32] {
        self.lists.get(id.index()).map_or(&[], Vec::as_slice)
    }

    /// Whether `id` has subscribers on this worker.
    #[inline]
    pub fn has_subscribers(&self, id: ChannelId) -> bool {
        self.lists.get(id.index()).is_some_and(|l| !l.is_empty())
    }

    /// Subscriptions in the index.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }

    /// Whether `slot` is indexed under `id`.
    pub fn contains(&self, id: ChannelId, slot: u32) -> bool {
        self.positions.contains_key(&pair(id, slot))
    }

    /// Adds `slot` as a subscriber of `id`; false if it already was.
    pub fn add(&mut self, id: ChannelId, slot: u32) -> bool {
        if self.lists.len() <= id.index() {
            self.lists.resize_with(id.index() + 1, Vec::new);
        }
        let list = &mut self.lists[id.index()];
        let key = pair(id, slot);
        if self.positions.contains_key(&key) {
            return false;
        }
        self.positions.insert(key, list.len() as u32);
        list.push(slot);
        self.check_channel(id);
        true
    }

    /// Removes `slot` from `id`'s subscribers in O(1); false if absent.
    pub fn remove(&mut self, id: ChannelId, slot: u32) -> bool {
        let Some(pos) = self.positions.remove(&pair(id, slot)) else {
            return false;
        };
        let list = &mut self.lists[id.index()];
        debug_assert_eq!(list[pos as usize], slot);
        list.swap_remove(pos as usize);
        if let Some(&moved) = list.get(pos as usize) {
            // The last subscriber took the removed one's place.
            *self.positions.get_mut(&pair(id, moved)).expect("indexed") = pos;
        }
        if list.is_empty() && list.capacity() > 64 {
            *list = Vec::new();
        }
        self.check_channel(id);
        true
    }

    #[cfg(debug_assertions)]
    fn check_channel(&self, id: ChannelId) {
        let list = &self.lists[id.index()];
        if list.len() > 256 {
            return;
        }
        for (pos, &slot) in list.iter().enumerate() {
            debug_assert_eq!(self.positions.get(&pair(id, slot)), Some(&(pos as u32)));
        }
    }

    #[cfg(not(debug_assertions))]
    #[inline(always)]
    fn check_channel(&self, _: ChannelId) {}

    /// Every position points at its own slot and every listed slot has a
    /// position: the two halves of the index agree.
    #[cfg(debug_assertions)]
    pub fn check_invariants(&self) {
        let listed: usize = self.lists.iter().map(Vec::len).sum();
        debug_assert_eq!(listed, self.positions.len());
        for (&key, &pos) in &self.positions {
            let (ch, slot) = ((key >> 32) as usize, key as u32);
            debug_assert_eq!(self.lists[ch][pos as usize], slot);
        }
    }

    /// No-op in release builds.
    #[cfg(not(debug_assertions))]
    #[inline(always)]
    pub fn check_invariants(&self) {}
}

impl Worker {
    /// Drains the ingest ring: updates go to the coalescer and out to their
    /// subscribers, subscribe replies activate subscriptions in ring order.
    /// Returns the number of updates taken off the ring.
    pub(crate) fn drain_ring(&mut self) -> u64 {
        let mut taken = 0u64;
        let mut updates = 0u64;
        for _ in 0..RING_BATCH {
            let Some(msg) = self.link.pop() else {
                break;
            };
            match msg {
                ToWorker::Update(u) => {
                    taken += u.frame.len() as u64;
                    updates += 1;
                    if !self.index.has_subscribers(u.channel) {
                        continue;
                    }
                    if let Some(full) = self.coalescer.add(u.channel, u.seq, u.ingest_ns, u.frame) {
                        self.fan_out(full);
                    }
                }
                ToWorker::Page(key, page) => self.serve_page(key, page),
                ToWorker::Published {
                    conn,
                    response,
                    close,
                } => self.published(conn, response, close),
                ToWorker::Subscribed(reply) => {
                    // Updates drained before the reply reach the old
                    // subscribers first; the snapshot covers them.
                    self.fan_out_coalesced();
                    self.subscribed(*reply);
                }
            }
        }
        self.link.consumed(taken);
        self.fan_out_coalesced();
        self.close_cut();
        updates
    }

    /// Closes the connections a delivery found dead and cuts the consumers
    /// it found a budget behind on a never-conflating channel.
    pub(crate) fn close_cut(&mut self) {
        for slot in std::mem::take(&mut self.dead) {
            self.close(slot);
        }
        for (slot, class) in std::mem::take(&mut self.slow) {
            self.cut_slow_consumer(slot, class);
        }
    }

    /// A consumer of a class that never conflates fell a budget behind:
    /// closed 1008 so it reconnects and resumes from history, instead of
    /// silently skipping a notification.
    fn cut_slow_consumer(&mut self, slot: u32, class: u16) {
        let budget = self.config.outbound_budget;
        let Worker {
            conns,
            index,
            link,
            dirty,
            stats,
            now_ms,
            ..
        } = self;
        let Some(conn) = conns.get_mut(slot as usize) else {
            return;
        };
        if conn.phase.is_ending() {
            return;
        }
        stats.counters.slow_consumer_closes += 1;
        stats.counters.add_class_slow_close(class);
        let reason = format!(
            "slow consumer: more than {} KiB of updates waited on a channel that never conflates; resume with since",
            budget / 1024
        );
        timers::cut(conn, index, link, *now_ms, &reason);
        conn.write_blocked = false;
        dirty.mark(conn, slot);
    }

    fn fan_out_coalesced(&mut self) {
        if self.coalescer.is_empty() {
            return;
        }
        let mut coalescer = std::mem::replace(&mut self.coalescer, Coalescer::new(0));
        for f in coalescer.drain() {
            self.fan_out(f);
        }
        self.coalescer = coalescer;
    }

    /// Queues an entry (one or more updates of a channel) for every
    /// subscriber of its channel on this worker: an `Rc` bump each, or a
    /// merge into the channel's entry still waiting at the queue's end.
    fn fan_out(&mut self, f: EntryRef) {
        let (mut sink, index, conns) = self.sink();
        let keep = sink.keeps_all(f.channel);
        for &slot in index.subscribers(f.channel) {
            sink.deliver(&mut conns[slot as usize], slot, &f, keep);
        }
        sink.merges.clear();
    }

    /// What delivering to a connection needs, split from the index and the
    /// connections it walks.
    pub(crate) fn sink(&mut self) -> (Sink<'_>, &SubscriberIndex, &mut Slab<Conn>) {
        let Worker {
            index,
            conns,
            stats,
            dirty,
            dead,
            now_ms,
            slow,
            class_of,
            merges,
            config,
            keep_all,
            ..
        } = self;
        let sink = Sink {
            budget: config.outbound_budget,
            on_block: config.conflate_on_block,
            now_ms: *now_ms,
            stats,
            dirty,
            dead,
            slow,
            class_of,
            keep_all,
            merges,
        };
        (sink, index, conns)
    }
}

/// Delivery to one connection's queue, with what a full budget means:
/// write first, then conflate, or for a never-conflating channel cut the
/// consumer (after the drain, through `dead` and `slow`).
pub(crate) struct Sink<'a> {
    budget: usize,
    on_block: bool,
    now_ms: u64,
    stats: &'a mut output::LocalStats,
    dirty: &'a mut output::DirtyList,
    dead: &'a mut Vec<u32>,
    slow: &'a mut Vec<(u32, u16)>,
    class_of: &'a [u16],
    keep_all: &'a [bool],
    pub merges: &'a mut Merges,
}

impl Sink<'_> {
    /// Whether `channel`'s class never conflates.
    #[inline]
    pub fn keeps_all(&self, channel: ChannelId) -> bool {
        self.keep_all.get(channel.index()).copied().unwrap_or(false)
    }

    /// Queues `f` for `conn` (in `slot`) and lists it dirty. `keep`: the
    /// channel never conflates.
    #[inline]
    pub fn deliver(&mut self, conn: &mut Conn, slot: u32, f: &EntryRef, keep: bool) {
        let budget = self.budget;
        // A burst larger than the budget within one turn is not a slow
        // consumer: write first, conflate only if the socket cannot take it.
        if conn.out.queued_bytes() + f.bytes.len() > budget
            && !conn.write_blocked
            && output::write_out(conn, self.stats, self.now_ms, self.on_block).is_err()
        {
            // Closed after the loop; marked so nothing more is written.
            conn.write_blocked = true;
            self.dead.push(slot);
        }
        if keep {
            // Never conflated: a consumer a budget behind is closed
            // (after the drain) and resumes from history.
            if conn.out.queued_bytes() + f.bytes.len() > budget {
                if !conn.phase.is_ending() {
                    let class = self.class_of.get(f.channel.index()).copied().unwrap_or(0);
                    self.slow.push((slot, class));
                }
            } else {
                conn.out.push_replay(Rc::clone(f));
            }
        } else {
            match conn.out.push_merged(f, budget, self.merges) {
                Pushed::Conflated => self.stats.counters.conflated += 1,
                Pushed::Merged => self.stats.counters.merged += 1,
                Pushed::Queued => {}
            }
        }
        self.dirty.mark(conn, slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_remove_and_positions_stay_consistent() {
        let mut ix = SubscriberIndex::default();
        let a = ChannelId(2);
        for slot in 0..10 {
            assert!(ix.add(a, slot));
        }
        assert!(!ix.add(a, 3), "no duplicates");
        assert!(ix.add(ChannelId(0), 3));
        assert!(ix.remove(a, 0));
        assert!(ix.remove(a, 9));
        assert!(!ix.remove(a, 9));
        ix.check_invariants();
        let mut left: Vec<u32> = ix.subscribers(a).to_vec();
        left.sort();
        assert_eq!(left, (1..9).collect::<Vec<_>>());
        assert!(ix.contains(ChannelId(0), 3) && !ix.contains(ChannelId(0), 4));
        assert_eq!(ix.len(), 9);
        assert!(!ix.has_subscribers(ChannelId(7)));
    }

    /// 100,000 subscribers of one channel, removed in an order that is the
    /// worst case for a linear scan (first subscribed, first removed): O(1)
    /// each, so the whole mass close takes a fraction of a second even in a
    /// debug build, where a scan would do 5·10⁹ comparisons.
    #[test]
    fn mass_removal_of_one_channels_subscribers_is_linear() {
        const N: u32 = 100_000;
        let mut ix = SubscriberIndex::default();
        let id = ChannelId(0);
        for slot in 0..N {
            ix.add(id, slot);
        }
        let t = std::time::Instant::now();
        for slot in 0..N {
            assert!(ix.remove(id, slot));
        }
        let took = t.elapsed();
        assert!(ix.is_empty() && ix.subscribers(id).is_empty());
        ix.check_invariants();
        assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    }

    /// Seeded random adds and removes against a model; invariants after
    /// every step. Replay with TICKWIRE_SIM_SEED.
    #[test]
    fn seeded_index_simulation() {
        let seed: u64 = std::env::var("TICKWIRE_SIM_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(11);
        let mut rng = crate::rng::Rng::new(seed);
        let mut ix = SubscriberIndex::default();
        let mut model = std::collections::BTreeSet::new();
        for step in 0..20_000 {
            let id = ChannelId(rng.below(5) as u32);
            let slot = rng.below(50) as u32;
            if rng.below(2) == 0 {
                assert_eq!(
                    ix.add(id, slot),
                    model.insert((id.0, slot)),
                    "seed {seed} step {step}"
                );
            } else {
                assert_eq!(
                    ix.remove(id, slot),
                    model.remove(&(id.0, slot)),
                    "seed {seed} step {step}"
                );
            }
            ix.check_invariants();
        }
        assert_eq!(ix.len(), model.len());
    }
}

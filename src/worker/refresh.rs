//! The pass refresh: updates that arrive while a write pass is under way.
//!
//! A refresh takes them off the ring (at most once per
//! [`crate::worker::output::REFRESH_GAP_NS`]) and keeps them here, per
//! channel and per refresh round, instead of walking every subscriber at
//! once: with thousands of subscribers, a walk per tick costs more than the
//! writes it saves (each visit is a cache miss). Each connection the pass
//! writes afterwards pulls what is fresh on its own channels just before its
//! write (it is in cache then) and keeps the round it pulled up to. When the
//! pass ends, one walk per fresh channel hands each subscriber the rounds it
//! has not pulled: the connections written before a round get it in the
//! next pass, as they would have without a refresh.

use std::rc::Rc;

use crate::channel::ChannelId;
use crate::ring::ToWorker;
use crate::worker::Worker;
use crate::worker::conflate::{Entry, EntryRef};

/// `position` of a channel with nothing fresh this pass.
const NOT_FRESH: u32 = u32::MAX;

/// Ring messages a refresh takes at most.
const REFRESH_BATCH: usize = 16 * 1024;

/// A channel's updates taken this pass.
#[derive(Debug)]
struct FreshChannel {
    id: ChannelId,
    /// Oldest first, with the round each came in.
    entries: Vec<(u16, EntryRef)>,
    /// The entries after a round joined into one, `(after, joined)`: built
    /// on first need, shared by every connection that needs the same ones,
    /// dropped when the channel gets more.
    joined: Vec<(u16, EntryRef)>,
}

impl FreshChannel {
    /// Calls `f` with the entries that came after round `after`: joined
    /// into one when they fit in `max_bytes`, so a connection's write
    /// carries one buffer however many refreshes the pass made.
    fn each_after(&mut self, after: u16, max_bytes: usize, mut f: impl FnMut(&EntryRef)) {
        let start = self.entries.partition_point(|(r, _)| *r <= after);
        let rest = &self.entries[start..];
        if rest.len() <= 1 || rest.iter().map(|(_, e)| e.bytes.len()).sum::<usize>() > max_bytes {
            rest.iter().for_each(|(_, e)| f(e));
            return;
        }
        if let Some((_, j)) = self.joined.iter().find(|(a, _)| *a == after) {
            return f(j);
        }
        let mut j = Rc::clone(&rest[0].1);
        for (_, e) in &rest[1..] {
            j = Entry::merged(&j, e);
        }
        f(&j);
        self.joined.push((after, j));
    }
}

/// Updates taken off the ring during this pass, by channel and round.
#[derive(Debug, Default)]
pub struct Fresh {
    /// Refreshes of this pass that took updates; a connection's
    /// [`crate::worker::conn::Conn::pulled`] counts in these (0: none).
    round: u16,
    /// Entries were added in the round under way.
    open: bool,
    /// Channel index → position in `channels`, or [`NOT_FRESH`].
    position: Vec<u32>,
    /// The fresh channels, in the order they first came this pass.
    channels: Vec<FreshChannel>,
    /// Connections that pulled this pass (their marks are reset at its end).
    pullers: Vec<u32>,
    /// By slot, one bit each: a subscriber of a fresh channel. Lets the
    /// pass skip the connections it need not look at, and pull the only
    /// fresh channel without reading a connection's subscriptions.
    reach: Vec<u64>,
}

impl Fresh {
    /// Whether nothing was taken this pass.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.round == 0
    }

    /// Whether another round fits in a connection's mark.
    fn has_room(&self) -> bool {
        self.round < u16::MAX
    }

    /// Adds an entry of the round under way (`round + 1`); `subscribers`:
    /// its channel's on this worker.
    fn add(&mut self, entry: EntryRef, subscribers: &[u32]) {
        let i = entry.channel.index();
        if self.position.len() <= i {
            self.position.resize(i + 1, NOT_FRESH);
        }
        let round = self.round + 1;
        self.open = true;
        match self.position[i] {
            NOT_FRESH => {
                for &slot in subscribers {
                    let (word, bit) = (slot as usize / 64, slot % 64);
                    if self.reach.len() <= word {
                        self.reach.resize(word + 1, 0);
                    }
                    self.reach[word] |= 1 << bit;
                }
                self.position[i] = self.channels.len() as u32;
                self.channels.push(FreshChannel {
                    id: entry.channel,
                    entries: vec![(round, entry)],
                    joined: Vec::new(),
                });
            }
            at => {
                let c = &mut self.channels[at as usize];
                c.entries.push((round, entry));
                c.joined.clear();
            }
        }
        self.check_invariants();
    }

    /// Ends a refresh; true if it took anything (a new round).
    fn end_round(&mut self) -> bool {
        let took = std::mem::take(&mut self.open);
        if took {
            self.round += 1;
        }
        took
    }

    /// Whether `slot` subscribes to a fresh channel.
    #[inline]
    fn reaches(&self, slot: u32) -> bool {
        self.reach
            .get(slot as usize / 64)
            .is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }

    /// The updates of `channel` taken this pass, if any.
    #[inline]
    fn of(&mut self, channel: ChannelId) -> Option<&mut FreshChannel> {
        match self.position.get(channel.index()) {
            Some(&at) if at != NOT_FRESH => Some(&mut self.channels[at as usize]),
            _ => None,
        }
    }

    /// Ends the pass: forgets every entry.
    fn clear(&mut self) {
        for c in self.channels.drain(..) {
            self.position[c.id.index()] = NOT_FRESH;
        }
        self.round = 0;
        self.open = false;
        self.pullers.clear();
        self.reach.fill(0);
        self.check_invariants();
    }

    /// Each fresh channel is listed under its position; its entries are its
    /// own, in rising rounds and seqs, none from a round not begun.
    #[cfg(debug_assertions)]
    fn check_invariants(&self) {
        if self.channels.len() > 256 {
            return;
        }
        for (k, c) in self.channels.iter().enumerate() {
            debug_assert_eq!(self.position[c.id.index()], k as u32);
            debug_assert!(!c.entries.is_empty());
            for w in c.entries.windows(2) {
                debug_assert!(w[0].0 <= w[1].0 && w[0].1.seq < w[1].1.seq);
            }
            debug_assert!(
                c.entries
                    .iter()
                    .all(|(r, e)| *r <= self.round + 1 && e.channel == c.id)
            );
        }
        let listed = self.position.iter().filter(|&&p| p != NOT_FRESH).count();
        debug_assert_eq!(listed, self.channels.len());
    }

    #[cfg(not(debug_assertions))]
    #[inline(always)]
    fn check_invariants(&self) {}
}

impl Worker {
    /// A refresh during a pass: the ingest loop's input when this worker
    /// drives it, then the ring's updates up to the first message that is
    /// not one (a reply waits for the next drain, which keeps it in ring
    /// order with the updates around it). Returns the updates taken.
    pub(crate) fn refresh(&mut self) -> u64 {
        if self.state != super::RunState::Serving || !self.fresh.has_room() {
            return 0;
        }
        self.run_ingest(true);
        let mut taken = 0u64;
        let mut updates = 0u64;
        for _ in 0..REFRESH_BATCH {
            if !self.link.next_is_update() {
                break;
            }
            let Some(ToWorker::Update(u)) = self.link.pop() else {
                unreachable!("peeked an update");
            };
            taken += u.frame.len() as u64;
            updates += 1;
            if !self.index.has_subscribers(u.channel) {
                continue;
            }
            if let Some(full) = self.coalescer.add(u.channel, u.seq, u.ingest_ns, u.frame) {
                self.fresh.add(full, self.index.subscribers(u.channel));
            }
        }
        self.link.consumed(taken);
        for entry in self.coalescer.drain() {
            let subscribers = self.index.subscribers(entry.channel);
            self.fresh.add(entry, subscribers);
        }
        if self.fresh.end_round() {
            // Merges built for the last round's pulls are not needed again.
            self.merges.clear();
        }
        updates
    }

    /// Before the pass writes `slot`: queues what is fresh on its channels
    /// and keeps the round it has.
    pub(crate) fn pull_fresh(&mut self, slot: u32) {
        if !self.fresh.reaches(slot) {
            return;
        }
        let round = self.fresh.round;
        let mut fresh = std::mem::take(&mut self.fresh);
        {
            let (mut sink, _, conns) = self.sink();
            let max_bytes = sink.merges.max_bytes();
            let conn = &mut conns[slot as usize];
            let have = conn.pulled;
            if let [c] = &mut fresh.channels[..] {
                // The only fresh channel, and `slot` subscribes to it.
                let keep = sink.keeps_all(c.id);
                c.each_after(have, max_bytes, |e| sink.deliver(conn, slot, e, keep));
            } else {
                for i in 0..conn.subs.len() {
                    let Some(id) = conn.subs.active_at(i) else {
                        continue;
                    };
                    let Some(c) = fresh.of(id) else {
                        continue;
                    };
                    let keep = sink.keeps_all(id);
                    c.each_after(have, max_bytes, |e| sink.deliver(conn, slot, e, keep));
                }
            }
            conn.pulled = round;
        }
        fresh.pullers.push(slot);
        self.fresh = fresh;
    }

    /// The pass is over: every subscriber of a fresh channel gets the rounds
    /// it did not pull (listed for the next pass), then the marks are reset.
    pub(crate) fn hand_out_fresh(&mut self) {
        if self.fresh.is_empty() {
            return;
        }
        let mut fresh = std::mem::take(&mut self.fresh);
        for c in &mut fresh.channels {
            let (mut sink, index, conns) = self.sink();
            let max_bytes = sink.merges.max_bytes();
            let keep = sink.keeps_all(c.id);
            for &slot in index.subscribers(c.id) {
                let conn = &mut conns[slot as usize];
                c.each_after(conn.pulled, max_bytes, |e| {
                    sink.deliver(conn, slot, e, keep)
                });
            }
            sink.merges.clear();
        }
        for &slot in &fresh.pullers {
            if let Some(conn) = self.conns.get_mut(slot as usize) {
                conn.pulled = 0;
            }
        }
        fresh.clear();
        self.fresh = fresh;
        self.close_cut();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn upd(ch: u32, seq: u64) -> EntryRef {
        Entry::update(Bytes::from(vec![seq as u8; 4]), ChannelId(ch), seq, seq)
    }

    #[test]
    fn entries_keep_their_round_and_join_once_per_start() {
        let mut f = Fresh::default();
        assert!(f.is_empty());
        assert!(!f.end_round(), "a refresh that took nothing is no round");
        f.add(upd(3, 1), &[5, 70]);
        f.add(upd(0, 1), &[6]);
        assert!(f.end_round());
        f.add(upd(3, 2), &[5, 70]);
        assert!(f.end_round());
        assert!(f.reaches(5) && f.reaches(6) && f.reaches(70));
        assert!(!f.reaches(7) && !f.reaches(69) && !f.reaches(1000));
        assert!(!f.is_empty());
        let c = f.of(ChannelId(3)).unwrap();
        let rounds: Vec<(u16, u64)> = c.entries.iter().map(|(r, e)| (*r, e.seq)).collect();
        assert_eq!(rounds, [(1, 1), (2, 2)]);
        // After round 0: both, joined into one entry, built once.
        let mut got = vec![];
        c.each_after(0, 1024, |e| got.push(Rc::clone(e)));
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].count(), got[0].seq, got[0].bytes.len()), (2, 2, 8));
        assert_eq!(&got[0].bytes[..], &[1, 1, 1, 1, 2, 2, 2, 2]);
        c.each_after(0, 1024, |e| assert!(Rc::ptr_eq(e, &got[0])));
        // After round 1: the second alone, uncopied.
        c.each_after(1, 1024, |e| assert_eq!(e.seq, 2));
        c.each_after(2, 1024, |_| panic!("nothing after the last round"));
        // Too large to join: one by one.
        let mut seqs = vec![];
        c.each_after(0, 7, |e| seqs.push(e.seq));
        assert_eq!(seqs, [1, 2]);
        // A new entry drops the joins made before it.
        f.add(upd(3, 3), &[5, 70]);
        assert!(f.end_round());
        let c = f.of(ChannelId(3)).unwrap();
        c.each_after(0, 1024, |e| assert_eq!((e.count(), e.seq), (3, 3)));
        assert_eq!(f.of(ChannelId(0)).unwrap().entries.len(), 1);
        assert!(f.of(ChannelId(1)).is_none() && f.of(ChannelId(99)).is_none());
        f.clear();
        assert!(f.is_empty() && f.of(ChannelId(3)).is_none());
        assert!(!f.reaches(5) && !f.reaches(70));
    }
}

//! Per-turn coalescing of a channel's updates (sans-io).
//!
//! Coalescing is not conflation: every update coalesced here is delivered,
//! packed with its neighbours of the same channel into one buffer;
//! conflation ([`crate::worker::conflate`]) drops older updates a lagging
//! client has not been sent yet.
//!
//! When a worker drains several updates of one channel in a loop turn, every
//! subscriber would get them as separate queue entries and separate iovecs,
//! and the kernel pays for each segment it copies. The coalescer packs them
//! back to back into one buffer per channel per turn (one copy per update per
//! worker, not per subscriber), so a subscriber gets a turn's updates of a
//! channel as one contiguous write, as a raw coalescing server would.
//! Per-channel order is kept; updates of different channels drained in the
//! same turn may reach a subscriber grouped by channel.

use std::mem;

use bytes::{Bytes, BytesMut};

use crate::channel::ChannelId;
use crate::worker::conflate::{Entry, EntryRef};

/// Largest coalesced buffer: past it the batch is handed out and a new one
/// starts, so one entry never dwarfs a connection's budget.
pub const MAX_BATCH_BYTES: usize = 32 * 1024;

/// `position` of a channel with no open batch this turn.
const NOT_OPEN: u32 = u32::MAX;

/// A channel's updates collected this turn.
#[derive(Debug)]
struct Batch {
    channel: ChannelId,
    /// The only update so far, not copied yet (the common case at low rates).
    single: Option<Bytes>,
    /// Two or more updates, packed.
    packed: BytesMut,
    seq: u64,
    ingest_ns: u64,
    earlier_ingest_ns: Vec<u64>,
    newest_offset: usize,
}

impl Batch {
    fn new(channel: ChannelId, seq: u64, ingest_ns: u64, bytes: Bytes) -> Self {
        Batch {
            channel,
            single: Some(bytes),
            packed: BytesMut::new(),
            seq,
            ingest_ns,
            earlier_ingest_ns: Vec::new(),
            newest_offset: 0,
        }
    }

    fn len(&self) -> usize {
        self.single.as_ref().map_or(self.packed.len(), Bytes::len)
    }

    fn finish(self) -> EntryRef {
        // A single update travels uncopied; its earlier times are empty and
        // its offset 0, which is what `Entry::coalesced` expects for one.
        let Batch {
            channel,
            single,
            packed,
            seq,
            ingest_ns,
            earlier_ingest_ns,
            newest_offset,
        } = self;
        Entry::coalesced(
            single.unwrap_or_else(|| packed.freeze()),
            channel,
            seq,
            ingest_ns,
            earlier_ingest_ns.into_boxed_slice(),
            newest_offset,
        )
    }
}

/// Collects a turn's updates per channel. Allocates per batch (one buffer per
/// channel per turn), never per subscriber.
#[derive(Debug)]
pub struct Coalescer {
    /// Channel index → position in `open`, or [`NOT_OPEN`].
    position: Vec<u32>,
    /// Open batches in the order their channels first appeared this turn.
    open: Vec<Batch>,
    max_batch_bytes: usize,
}

impl Coalescer {
    /// A coalescer whose batches stop growing at `max_batch_bytes` (updates
    /// larger than that are never packed with others).
    pub fn new(max_batch_bytes: usize) -> Self {
        Coalescer {
            position: Vec::new(),
            open: Vec::new(),
            max_batch_bytes,
        }
    }

    /// Adds an update. Returns a finished batch when this channel's batch
    /// reached the size cap; its subscribers should get it before anything
    /// later of the channel.
    pub fn add(
        &mut self,
        channel: ChannelId,
        seq: u64,
        ingest_ns: u64,
        bytes: Bytes,
    ) -> Option<EntryRef> {
        let i = channel.index();
        if self.position.len() <= i {
            self.position.resize(i + 1, NOT_OPEN);
        }
        let at = self.position[i];
        if at == NOT_OPEN {
            self.position[i] = self.open.len() as u32;
            self.open.push(Batch::new(channel, seq, ingest_ns, bytes));
            self.check_invariants();
            return None;
        }
        let b = &mut self.open[at as usize];
        debug_assert!(b.seq < seq, "updates of a channel arrive in seq order");
        if b.len() + bytes.len() > self.max_batch_bytes {
            // Hand out what we have; this update starts the next batch.
            let full = mem::replace(b, Batch::new(channel, seq, ingest_ns, bytes));
            self.check_invariants();
            return Some(full.finish());
        }
        if let Some(first) = b.single.take() {
            b.packed = BytesMut::with_capacity(
                ((first.len() + bytes.len()) * 4).min(self.max_batch_bytes),
            );
            b.packed.extend_from_slice(&first);
        }
        b.earlier_ingest_ns.push(b.ingest_ns);
        b.newest_offset = b.packed.len();
        b.packed.extend_from_slice(&bytes);
        b.seq = seq;
        b.ingest_ns = ingest_ns;
        self.check_invariants();
        None
    }

    /// Each open batch is listed under its channel and nowhere else; a
    /// packed batch's newest update starts inside it, one ingest time per
    /// earlier update.
    #[cfg(debug_assertions)]
    fn check_invariants(&self) {
        // Full checks are O(channels): keep debug builds usable under load.
        if self.open.len() > 256 || self.position.len() > 4096 {
            return;
        }
        for (k, b) in self.open.iter().enumerate() {
            debug_assert_eq!(self.position[b.channel.index()], k as u32);
            match &b.single {
                Some(_) => debug_assert!(b.earlier_ingest_ns.is_empty() && b.newest_offset == 0),
                None => {
                    debug_assert!(!b.earlier_ingest_ns.is_empty());
                    debug_assert!(b.newest_offset > 0 && b.newest_offset < b.packed.len());
                    debug_assert!(b.packed.len() <= self.max_batch_bytes);
                }
            }
        }
        let listed = self.position.iter().filter(|&&p| p != NOT_OPEN).count();
        debug_assert_eq!(listed, self.open.len());
    }

    #[cfg(not(debug_assertions))]
    #[inline(always)]
    fn check_invariants(&self) {}

    /// Whether no batch is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Finishes every open batch, in the order their channels first appeared
    /// this turn.
    pub fn drain(&mut self) -> impl Iterator<Item = EntryRef> + '_ {
        let position = &mut self.position;
        self.open.drain(..).map(move |b| {
            position[b.channel.index()] = NOT_OPEN;
            b.finish()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, len: usize) -> Bytes {
        Bytes::from(vec![seq as u8; len])
    }

    #[test]
    fn one_update_is_handed_out_without_a_copy() {
        let mut c = Coalescer::new(1024);
        let b = frame(1, 10);
        assert!(c.add(ChannelId(3), 1, 100, b.clone()).is_none());
        let out: Vec<_> = c.drain().collect();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].bytes.as_ptr(), b.as_ptr());
        assert_eq!((out[0].count(), out[0].seq, out[0].ingest_ns), (1, 1, 100));
        assert!(c.is_empty());
    }

    #[test]
    fn packs_a_channels_updates_in_order_and_keeps_each_ingest_time() {
        let mut c = Coalescer::new(1024);
        for seq in 1..=3 {
            assert!(c.add(ChannelId(0), seq, seq * 10, frame(seq, 5)).is_none());
            assert!(
                c.add(ChannelId(9), seq, seq * 100, frame(seq + 10, 7))
                    .is_none()
            );
        }
        let out: Vec<_> = c.drain().collect();
        assert_eq!(out.len(), 2);
        let a = &out[0];
        assert_eq!(a.channel, ChannelId(0));
        assert_eq!(&a.bytes[..], &[1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3]);
        assert_eq!((a.count(), a.seq), (3, 3));
        let mut times = vec![];
        a.for_each_ingest_ns(|t| times.push(t));
        assert_eq!(times, [10, 20, 30]);
        // Conflation keeps only the newest update, built once.
        let n = Entry::newest(a);
        assert_eq!(&n.bytes[..], &[3, 3, 3, 3, 3]);
        assert_eq!((n.count(), n.seq, n.ingest_ns), (1, 3, 30));
        assert!(std::rc::Rc::ptr_eq(&n, &Entry::newest(a)));
        assert_eq!(out[1].channel, ChannelId(9));
        assert_eq!(out[1].bytes.len(), 21);
        // The next turn starts afresh.
        assert!(c.add(ChannelId(0), 4, 0, frame(4, 5)).is_none());
        assert_eq!(c.drain().next().unwrap().count(), 1);
    }

    #[test]
    fn hands_out_a_batch_at_the_size_cap() {
        let mut c = Coalescer::new(20);
        assert!(c.add(ChannelId(1), 1, 0, frame(1, 8)).is_none());
        assert!(c.add(ChannelId(1), 2, 0, frame(2, 8)).is_none());
        let full = c.add(ChannelId(1), 3, 0, frame(3, 8)).expect("cap reached");
        assert_eq!((full.count(), full.seq, full.bytes.len()), (2, 2, 16));
        let rest: Vec<_> = c.drain().collect();
        assert_eq!((rest[0].count(), rest[0].seq), (1, 3));
        // An update larger than the cap travels alone.
        let mut c = Coalescer::new(4);
        assert!(c.add(ChannelId(1), 1, 0, frame(1, 8)).is_none());
        assert_eq!(c.add(ChannelId(1), 2, 0, frame(2, 8)).unwrap().seq, 1);
    }
}

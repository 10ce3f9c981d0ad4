//! A connection's outbound queue with per-channel conflation (sans-io).
//!
//! Conflation is not coalescing: [`crate::worker::coalesce`] packs a turn's
//! updates of a channel into one buffer and every one of them is delivered;
//! conflation *replaces* a channel's update still waiting in a lagging
//! client's queue with a newer one, so that client skips values (a jump in
//! `seq`) instead of building a backlog.
//!
//! Frames queue in order while the socket takes them and the queue holds less
//! than the connection's budget. Once the socket would block, or past the
//! budget, the queue conflates until it drains: an update for a channel that
//! already has an update waiting replaces it in place, so a slow consumer gets
//! the newest value of each channel, in the order the channels first became
//! pending, and the queue grows by at most one frame per subscribed channel.
//! The client sees the skipped updates as a jump in `seq`.
//!
//! Merging is neither: before the queue conflates, an update whose channel's
//! entry ends the queue unwritten joins that entry ([`Merges`]), so the next
//! write carries one buffer instead of one per turn; nothing is dropped.

use std::cell::OnceCell;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

use bytes::Bytes;

use crate::channel::ChannelId;

/// A queue entry: one or more WebSocket frames that go out back to back
/// (a control frame, one update, or a turn's updates of one channel). Workers wrap each turn's updates of a
/// channel in one `Rc`, so a delivery is a non-atomic count bump on a
/// core-local line instead of an atomic on a line shared with the other
/// workers.
///
/// One `Entry` may hold several consecutive updates of one channel, packed
/// back to back (see [`crate::worker::coalesce`]): a subscriber then gets them with
/// one iovec instead of one per update.
#[derive(Debug)]
pub struct Entry {
    /// The complete WebSocket frame(s).
    pub bytes: Bytes,
    /// Its channel, or [`ChannelId::NONE`] for control frames.
    pub channel: ChannelId,
    /// Sequence number of the newest update in `bytes` (0 for control frames).
    pub seq: u64,
    /// When the newest update was ingested (ns on the engine clock; 0 for
    /// control frames).
    pub ingest_ns: u64,
    /// Ingest times of the updates before the newest (empty unless coalesced).
    earlier_ingest_ns: Box<[u64]>,
    /// Where the newest update starts in `bytes`.
    newest_offset: usize,
    /// The newest update alone, made on first need (conflation).
    newest: OnceCell<EntryRef>,
}

/// Shared handle to a frame.
pub type EntryRef = Rc<Entry>;

impl Entry {
    /// A control frame (ack, error, ping, close): never conflated.
    pub fn control(bytes: Bytes) -> EntryRef {
        Entry::update(bytes, ChannelId::NONE, 0, 0)
    }

    /// One sequenced update, as it came off the ring.
    pub fn from_update(u: crate::update::Update) -> EntryRef {
        Entry::update(u.frame, u.channel, u.seq, u.ingest_ns)
    }

    /// One update of a channel.
    pub fn update(bytes: Bytes, channel: ChannelId, seq: u64, ingest_ns: u64) -> EntryRef {
        Entry::coalesced(bytes, channel, seq, ingest_ns, Box::default(), 0)
    }

    /// Consecutive updates of one channel packed in `bytes`; the newest
    /// starts at `newest_offset`, and `earlier_ingest_ns` holds the ingest
    /// times of the others, oldest first (empty and 0 for a single update).
    pub fn coalesced(
        bytes: Bytes,
        channel: ChannelId,
        seq: u64,
        ingest_ns: u64,
        earlier_ingest_ns: Box<[u64]>,
        newest_offset: usize,
    ) -> EntryRef {
        debug_assert!(newest_offset == 0 || newest_offset < bytes.len());
        // OutQueue counts the written part of its head in a u32.
        debug_assert!(u32::try_from(bytes.len()).is_ok());
        debug_assert_eq!(earlier_ingest_ns.is_empty(), newest_offset == 0);
        Rc::new(Entry {
            bytes,
            channel,
            seq,
            ingest_ns,
            earlier_ingest_ns,
            newest_offset,
            newest: OnceCell::new(),
        })
    }

    /// Updates in this frame (1 unless coalesced; also 1 for control frames).
    #[inline]
    pub fn count(&self) -> u64 {
        self.earlier_ingest_ns.len() as u64 + 1
    }

    /// Calls `f` with the ingest time of each update in the frame, oldest first.
    #[inline]
    pub fn for_each_ingest_ns(&self, mut f: impl FnMut(u64)) {
        for &t in &self.earlier_ingest_ns {
            f(t);
        }
        f(self.ingest_ns);
    }

    /// `older` followed by `newer` (consecutive updates of one channel) as
    /// one entry: one copy of both, made once per fan-out and shared by
    /// every subscriber whose queue ended with `older`.
    pub fn merged(older: &Entry, newer: &Entry) -> EntryRef {
        debug_assert!(older.channel == newer.channel && older.seq < newer.seq);
        let mut bytes = bytes::BytesMut::with_capacity(older.bytes.len() + newer.bytes.len());
        bytes.extend_from_slice(&older.bytes);
        bytes.extend_from_slice(&newer.bytes);
        let mut earlier =
            Vec::with_capacity(older.count() as usize + newer.earlier_ingest_ns.len());
        older.for_each_ingest_ns(|t| earlier.push(t));
        earlier.extend_from_slice(&newer.earlier_ingest_ns);
        Entry::coalesced(
            bytes.freeze(),
            newer.channel,
            newer.seq,
            newer.ingest_ns,
            earlier.into_boxed_slice(),
            older.bytes.len() + newer.newest_offset,
        )
    }

    /// The newest update alone: what a conflating queue keeps. The same `Rc`
    /// unless coalesced; built once per coalesced frame, not per subscriber.
    /// Copied rather than sliced: a slice would keep the whole packed turn
    /// buffer (up to 32 KiB) alive in every queue that conflates it.
    pub fn newest(this: &EntryRef) -> EntryRef {
        if this.newest_offset == 0 {
            return Rc::clone(this);
        }
        Rc::clone(this.newest.get_or_init(|| {
            Entry::update(
                Bytes::copy_from_slice(&this.bytes[this.newest_offset..]),
                this.channel,
                this.seq,
                this.ingest_ns,
            )
        }))
    }
}

/// Channel ids are dense small integers: hashing them again is wasted work.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    fn write_u32(&mut self, n: u32) {
        // Spread the bits so hashbrown's top-7-bit tags differ.
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Iovecs gathered per `writev`. Linux allows 1024; 64 frames of ~100 bytes
/// already fill a socket buffer's worth per call.
pub const IOV_BATCH: usize = 64;

/// Merged entries built between two [`Merges::clear`]s: past this many,
/// further subscribers get the update as an entry of its own, so a merge is
/// never a copy per subscriber.
const MAX_MERGES: usize = 16;

/// The merged entries one fan-out has built, keyed by the tail each extends
/// and the update appended.
///
/// An update fanned out while a subscriber's queue still ends with an
/// unwritten entry of the same channel (a refresh in the middle of a write
/// pass, a socket that would block) is merged into that entry, so the
/// subscriber's next write carries one buffer instead of one per turn. Most
/// subscribers share their tail (the last fan-out's entry), so the copy is
/// made once per distinct tail, never per subscriber.
#[derive(Debug)]
pub struct Merges {
    /// (tail extended, update appended, merged entry).
    built: Vec<(EntryRef, EntryRef, EntryRef)>,
    max_bytes: usize,
}

impl Merges {
    /// Merged entries grow to at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Merges {
            built: Vec::with_capacity(MAX_MERGES),
            max_bytes,
        }
    }

    /// `tail` followed by `update`, built on first need; `None` when the
    /// result would be too large or this fan-out met too many tails.
    fn get(&mut self, tail: &EntryRef, update: &EntryRef) -> Option<EntryRef> {
        if let Some((.., m)) = self
            .built
            .iter()
            .find(|(t, u, _)| Rc::ptr_eq(t, tail) && Rc::ptr_eq(u, update))
        {
            return Some(Rc::clone(m));
        }
        if self.built.len() == MAX_MERGES || tail.bytes.len() + update.bytes.len() > self.max_bytes
        {
            return None;
        }
        let m = Entry::merged(tail, update);
        self.built
            .push((Rc::clone(tail), Rc::clone(update), Rc::clone(&m)));
        Some(m)
    }

    /// The largest merged entry.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Ends a fan-out: drops the references to tails and merged entries.
    pub fn clear(&mut self) {
        self.built.clear();
    }
}

/// What [`OutQueue::push_update`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Appended to the queue.
    Queued,
    /// Replaced a pending update of the same channel (one update conflated).
    Conflated,
    /// Merged into the unwritten entry of its channel at the queue's end.
    Merged,
}

/// How a flush ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued was written.
    Drained,
    /// The socket would block with frames still queued.
    Blocked,
}

type PendingMap = HashMap<ChannelId, u64, BuildHasherDefault<IdHasher>>;

/// A queue's entries, the first held inline and the rest in a ring buffer.
/// A connection that keeps up holds one entry at a time, and its write then
/// reads nothing outside the connection: the ring buffer is an allocation
/// of its own, a cache miss per connection per pass (perf/DEFAULTS.md).
#[derive(Debug, Default)]
struct Entries {
    first: Option<EntryRef>,
    /// Empty whenever `first` is.
    rest: VecDeque<EntryRef>,
}

impl Entries {
    #[inline]
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    #[inline]
    fn push_back(&mut self, e: EntryRef) {
        if self.first.is_none() {
            debug_assert!(self.rest.is_empty());
            self.first = Some(e);
        } else {
            self.rest.push_back(e);
        }
    }

    #[inline]
    fn pop_front(&mut self) -> Option<EntryRef> {
        let front = self.first.take()?;
        // An empty ring buffer is not read: its length is inline.
        self.first = self.rest.pop_front();
        Some(front)
    }

    #[inline]
    fn front(&self) -> Option<&EntryRef> {
        self.first.as_ref()
    }

    #[inline]
    fn back(&self) -> Option<&EntryRef> {
        self.rest.back().or(self.first.as_ref())
    }

    #[inline]
    fn back_mut(&mut self) -> Option<&mut EntryRef> {
        if self.rest.is_empty() {
            self.first.as_mut()
        } else {
            self.rest.back_mut()
        }
    }

    fn iter(&self) -> impl Iterator<Item = &EntryRef> {
        self.first.iter().chain(self.rest.iter())
    }

    /// Position of the last entry that matches.
    fn rposition(&self, mut matches: impl FnMut(&Entry) -> bool) -> Option<usize> {
        if let Some(i) = self.rest.iter().rposition(|e| matches(e)) {
            return Some(i + 1);
        }
        self.first.as_ref().filter(|e| matches(e)).map(|_| 0)
    }

    fn clear(&mut self) {
        self.first = None;
        self.rest.clear();
    }

    fn truncate(&mut self, len: usize) {
        if len == 0 {
            self.clear();
        } else {
            self.rest.truncate(len - 1);
        }
    }

    /// Entries held without reallocating.
    fn capacity(&self) -> usize {
        1 + self.rest.capacity()
    }

    /// Frees the ring buffer (the queue must be empty).
    fn free(&mut self) {
        debug_assert!(self.is_empty());
        self.rest = VecDeque::new();
    }
}

impl std::ops::Index<usize> for Entries {
    type Output = EntryRef;
    #[inline]
    fn index(&self, i: usize) -> &EntryRef {
        match i {
            0 => self.first.as_ref().expect("index past the queue"),
            _ => &self.rest[i - 1],
        }
    }
}

impl std::ops::IndexMut<usize> for Entries {
    #[inline]
    fn index_mut(&mut self, i: usize) -> &mut EntryRef {
        match i {
            0 => self.first.as_mut().expect("index past the queue"),
            _ => &mut self.rest[i - 1],
        }
    }
}

/// Outbound queue of one connection.
#[derive(Debug, Default)]
pub struct OutQueue {
    queue: Entries,
    /// Bytes of `queue[0]` already written (an entry is far below 4 GiB; a
    /// u32 keeps the connection at its size with the inline first entry).
    head_written: u32,
    /// Unwritten bytes in the queue.
    queued_bytes: usize,
    /// Frames ever removed from the front: `queue[i]` has absolute position
    /// `removed + i`, which keeps `pending` valid as the front moves.
    removed: u64,
    /// While conflating: channel → absolute position of its newest queued update.
    /// Boxed: allocated the first time the queue conflates, so a connection
    /// that keeps up pays 8 bytes for it, not a map.
    pending: Option<Box<PendingMap>>,
    conflating: bool,
    /// Bytes of the control frames queued (replies to the client's own
    /// requests): what the worker bounds by pausing the client's input.
    control_bytes: usize,
    /// Pong frames in the queue (bounded by [`MAX_QUEUED_PONGS`]); a byte
    /// beside `conflating`, so idle connections stay as small as before.
    pongs: u8,
}

/// Pongs a queue holds at most. Every ping is answered while fewer wait
/// (Autobahn 2.10: ten pings, ten pongs, in order); past that the newest
/// replaces the last queued pong, so a ping flood costs at most this many
/// small frames.
pub const MAX_QUEUED_PONGS: u8 = 16;

/// FIN + pong opcode: the first byte of every pong the engine writes.
const PONG: u8 = 0x80 | crate::protocol::frame::OPCODE_PONG;

#[inline]
fn is_pong(f: &Entry) -> bool {
    f.channel == ChannelId::NONE && f.bytes.first() == Some(&PONG)
}

impl OutQueue {
    /// Queues an update, conflating once `budget` bytes are waiting or after
    /// [`OutQueue::start_conflating`].
    #[inline]
    pub fn push_update(&mut self, frame: EntryRef, budget: usize) -> Pushed {
        debug_assert!(frame.channel != ChannelId::NONE);
        if !self.conflating {
            if self.queued_bytes + frame.bytes.len() <= budget {
                self.queued_bytes += frame.bytes.len();
                self.queue.push_back(frame);
                return Pushed::Queued;
            }
            self.conflating = true;
        }
        // Conflating: only the newest value of the channel matters.
        let frame = Entry::newest(&frame);
        let channel = frame.channel;
        let pending = self.pending.get_or_insert_with(Box::default);
        if let Some(&pos) = pending.get(&channel) {
            // A position before `removed` was written already; position
            // `removed` may be half written and must not change under the writer.
            let in_queue = pos > self.removed || (pos == self.removed && self.head_written == 0);
            if in_queue {
                let slot = &mut self.queue[(pos - self.removed) as usize];
                debug_assert_eq!(slot.channel, channel);
                debug_assert!(slot.seq < frame.seq);
                self.queued_bytes = self.queued_bytes - slot.bytes.len() + frame.bytes.len();
                *slot = frame;
                self.check_invariants();
                return Pushed::Conflated;
            }
        }
        let pos = self.removed + self.queue.len() as u64;
        pending.insert(channel, pos);
        self.queued_bytes += frame.bytes.len();
        self.queue.push_back(frame);
        self.check_invariants();
        Pushed::Queued
    }

    /// Like [`OutQueue::push_update`], but an update whose channel's entry
    /// ends the queue unwritten is merged into it (see [`Merges`]).
    #[inline]
    pub fn push_merged(&mut self, update: &EntryRef, budget: usize, merges: &mut Merges) -> Pushed {
        if !self.conflating
            && self.queued_bytes + update.bytes.len() <= budget
            // A half-written front entry must not change under the writer.
            && (self.queue.len() > 1 || self.head_written == 0)
            && let Some(tail) = self.queue.back()
            && tail.channel == update.channel
            && tail.seq < update.seq
            && let Some(m) = merges.get(tail, update)
        {
            self.queued_bytes += update.bytes.len();
            *self.queue.back_mut().expect("has a tail") = m;
            self.check_invariants();
            return Pushed::Merged;
        }
        self.push_update(Rc::clone(update), budget)
    }

    /// Conflates from now on until the queue drains: the socket could not
    /// take more, so the client is behind and only newest values matter.
    pub fn start_conflating(&mut self) {
        self.conflating = true;
    }

    /// Queues updates a resuming subscription missed, in order and as they
    /// are: never conflated (the client asked for exactly these), and
    /// ahead of any live update of the channel, which conflates behind them
    /// as usual.
    pub fn push_replay(&mut self, frame: EntryRef) {
        debug_assert!(frame.channel != ChannelId::NONE);
        self.queued_bytes += frame.bytes.len();
        self.queue.push_back(frame);
        self.check_invariants();
    }

    /// Queues a control frame; these are never conflated or dropped.
    pub fn push_control(&mut self, frame: EntryRef) {
        debug_assert!(frame.channel == ChannelId::NONE);
        self.queued_bytes += frame.bytes.len();
        self.control_bytes += frame.bytes.len();
        self.queue.push_back(frame);
    }

    /// Queues a pong. RFC 6455 5.5.3 lets an endpoint answer only the most
    /// recent ping; this answers every one while fewer than
    /// [`MAX_QUEUED_PONGS`] wait, then lets the newest replace the last
    /// queued pong (never a half-written one), so a ping flood from a client
    /// that does not read costs bounded memory.
    pub fn push_pong(&mut self, frame: EntryRef) {
        debug_assert!(is_pong(&frame));
        if self.pongs >= MAX_QUEUED_PONGS
            && let Some(i) = self.queue.rposition(is_pong)
            && (i > 0 || self.head_written == 0)
        {
            // The last pong is usually the back (a flood): O(1) then.
            let slot = &mut self.queue[i];
            let old = slot.bytes.len();
            self.queued_bytes = self.queued_bytes - old + frame.bytes.len();
            self.control_bytes = self.control_bytes - old + frame.bytes.len();
            *slot = frame;
            self.check_invariants();
            return;
        }
        self.pongs += 1;
        self.push_control(frame);
    }

    /// Bytes of control frames waiting (acks, errors, pongs, pings, close).
    #[inline]
    pub fn control_bytes(&self) -> usize {
        self.control_bytes
    }

    /// Forgets a channel's pending position (after an unsubscribe), so a later
    /// update of it cannot overwrite a frame queued before the unsubscribe.
    pub fn forget_channel(&mut self, channel: ChannelId) {
        if let Some(p) = self.pending.as_mut() {
            p.remove(&channel);
        }
    }

    /// Drops everything queued (the connection is being torn down).
    pub fn clear(&mut self) {
        self.removed += self.queue.len() as u64;
        self.queue.clear();
        self.head_written = 0;
        self.queued_bytes = 0;
        self.control_bytes = 0;
        self.pongs = 0;
        self.reset_conflation();
    }

    /// Drops every queued frame except a partly written front one, which must
    /// be finished or the stream would be corrupt (before a final close frame).
    pub fn truncate_to_partial(&mut self) {
        let keep = usize::from(self.head_written > 0).min(self.queue.len());
        self.queue.truncate(keep);
        self.queued_bytes = self
            .queue
            .front()
            .map_or(0, |f| f.bytes.len() - self.head_written as usize);
        self.control_bytes = self
            .queue
            .front()
            .filter(|f| f.channel == ChannelId::NONE)
            .map_or(0, |f| f.bytes.len());
        self.pongs = u8::from(self.queue.front().is_some_and(|f| is_pong(f)));
        self.reset_conflation();
        self.check_invariants();
    }

    /// Unwritten bytes.
    #[inline]
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Frames waiting, including a partly written one.
    #[inline]
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether the queue is past its budget and conflating.
    pub fn is_conflating(&self) -> bool {
        self.conflating
    }

    /// Frames the queue can hold without reallocating.
    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Writes as much as `out` takes with gathered writes; calls `sent` for
    /// each frame completely written and returns the bytes written.
    ///
    /// # Errors
    /// I/O errors other than `WouldBlock` and `Interrupted` (a dead peer).
    /// `WouldBlock` and a write of 0 bytes are backpressure: [`Flushed::Blocked`].
    pub fn flush<W: Write>(
        &mut self,
        out: &mut W,
        mut sent: impl FnMut(&Entry),
    ) -> io::Result<(Flushed, usize)> {
        let mut total = 0;
        while let Some(head) = self.queue.front() {
            let head = &head.bytes[self.head_written as usize..];
            let (attempt, batch_bytes) = if self.queue.len() == 1 {
                // One entry due (a client that keeps up): plain write(),
                // no iovecs to fill and none for the kernel to import.
                (out.write(head), head.len())
            } else {
                let mut iov = [IoSlice::new(&[]); IOV_BATCH];
                let (n_iov, batch_bytes) = self.gather(&mut iov);
                (out.write_vectored(&iov[..n_iov]), batch_bytes)
            };
            let written = match attempt {
                // The transport contract (crate::transport): taking nothing
                // means its buffer is full (TLS), not that the peer is gone.
                Ok(0) => return Ok((Flushed::Blocked, total)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((Flushed::Blocked, total));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            debug_assert!(written <= batch_bytes);
            total += written;
            self.advance(written, &mut sent);
        }
        self.reset_conflation();
        Ok((Flushed::Drained, total))
    }

    /// What the next write of [`OutQueue::flush`] offers: the rest of the
    /// head entry, then whole entries, at most [`IOV_BATCH`] slices. Returns
    /// the slices filled and their bytes (0, 0 when nothing waits).
    pub fn gather<'a>(&'a self, iov: &mut [IoSlice<'a>; IOV_BATCH]) -> (usize, usize) {
        let Some(head) = self.queue.front() else {
            return (0, 0);
        };
        let head = &head.bytes[self.head_written as usize..];
        iov[0] = IoSlice::new(head);
        let mut n_iov = 1;
        let mut bytes = head.len();
        for f in self.queue.iter().skip(1).take(IOV_BATCH - 1) {
            iov[n_iov] = IoSlice::new(&f.bytes);
            n_iov += 1;
            bytes += f.bytes.len();
        }
        (n_iov, bytes)
    }

    fn advance(&mut self, mut written: usize, sent: &mut impl FnMut(&Entry)) {
        self.queued_bytes -= written;
        while written > 0 {
            let front_left = self.queue[0].bytes.len() - self.head_written as usize;
            if written < front_left {
                // Less than the entry's length, which is under 4 GiB.
                self.head_written += written as u32;
                break;
            }
            written -= front_left;
            let frame = self.queue.pop_front().expect("advance past the queue");
            if frame.channel == ChannelId::NONE {
                self.control_bytes -= frame.bytes.len();
                self.pongs -= u8::from(is_pong(&frame));
            }
            self.head_written = 0;
            self.removed += 1;
            sent(&frame);
        }
        // Zero-length frames never occur: every frame has a header.
        self.check_invariants();
    }

    fn reset_conflation(&mut self) {
        self.conflating = false;
        if let Some(p) = self.pending.as_mut()
            && !p.is_empty()
        {
            p.clear();
        }
    }

    /// Drops spare capacity of an idle queue (keeps idle connections small):
    /// the queue's buffer past `keep_frames`, and with `keep_frames == 0`
    /// also the conflation map.
    pub fn shrink_if_idle(&mut self, keep_frames: usize) {
        if !self.queue.is_empty() {
            return;
        }
        if self.queue.capacity() > keep_frames {
            self.queue.free();
            self.pending = None;
        } else if keep_frames == 0 {
            self.pending = None;
        }
    }

    #[cfg(debug_assertions)]
    fn check_invariants(&self) {
        // Full checks are O(queue): keep debug builds usable under load.
        if self.queue.len() > 512 {
            return;
        }
        let bytes: usize = self.queue.iter().map(|f| f.bytes.len()).sum();
        debug_assert_eq!(bytes - self.head_written as usize, self.queued_bytes);
        let control: usize = self
            .queue
            .iter()
            .filter(|f| f.channel == ChannelId::NONE)
            .map(|f| f.bytes.len())
            .sum();
        debug_assert_eq!(control, self.control_bytes);
        let pongs = self.queue.iter().filter(|f| is_pong(f)).count();
        debug_assert_eq!(pongs, usize::from(self.pongs));
        debug_assert!(self.pongs <= MAX_QUEUED_PONGS);
        debug_assert!(
            self.queue
                .front()
                .is_none_or(|f| (self.head_written as usize) < f.bytes.len())
        );
        {
            for (&ch, &pos) in self.pending.iter().flat_map(|p| p.iter()) {
                if pos >= self.removed {
                    let f = &self.queue[(pos - self.removed) as usize];
                    debug_assert_eq!(f.channel, ch, "pending points at another channel");
                }
            }
        }
    }

    #[cfg(not(debug_assertions))]
    #[inline(always)]
    fn check_invariants(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upd(ch: u32, seq: u64, len: usize) -> EntryRef {
        Entry::update(Bytes::from(vec![b'x'; len]), ChannelId(ch), seq, 0)
    }

    /// A writer that takes at most `room` bytes, then blocks.
    struct Sink {
        room: usize,
        got: Vec<u8>,
    }
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn queues_in_order_under_budget() {
        let mut q = OutQueue::default();
        for s in 1..=5 {
            assert_eq!(q.push_update(upd(0, s, 10), 1000), Pushed::Queued);
        }
        let mut sink = Sink {
            room: 1 << 20,
            got: vec![],
        };
        let mut seqs = vec![];
        let (r, n) = q.flush(&mut sink, |f| seqs.push(f.seq)).unwrap();
        assert_eq!((r, n), (Flushed::Drained, 50));
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
    }

    fn tick(ch: u32, seq: u64, byte: u8) -> EntryRef {
        Entry::update(Bytes::from(vec![byte; 4]), ChannelId(ch), seq, seq * 10)
    }

    #[test]
    fn an_update_joins_its_channels_unwritten_tail_one_copy_for_all() {
        let mut merges = Merges::new(1024);
        let (first, second) = (tick(1, 1, b'a'), tick(1, 2, b'b'));
        let mut queues: Vec<OutQueue> = (0..3).map(|_| OutQueue::default()).collect();
        for q in &mut queues {
            assert_eq!(q.push_merged(&first, 1000, &mut merges), Pushed::Queued);
        }
        for q in &mut queues {
            assert_eq!(q.push_merged(&second, 1000, &mut merges), Pushed::Merged);
            assert_eq!((q.len(), q.queued_bytes()), (1, 8));
        }
        // Built once, shared by every queue with the same tail.
        assert_eq!(merges.built.len(), 1);
        let merged = Rc::clone(&merges.built[0].2);
        assert_eq!(
            Rc::strong_count(&merged),
            5,
            "three queues, the cache, this"
        );
        assert_eq!(&merged.bytes[..], b"aaaabbbb");
        assert_eq!((merged.count(), merged.seq, merged.ingest_ns), (2, 2, 20));
        let mut times = vec![];
        merged.for_each_ingest_ns(|t| times.push(t));
        assert_eq!(times, [10, 20]);
        assert_eq!(&Entry::newest(&merged).bytes[..], b"bbbb");
        // Another channel queues behind; the written bytes keep the order.
        let q = &mut queues[0];
        assert_eq!(
            q.push_merged(&tick(2, 1, b'c'), 1000, &mut merges),
            Pushed::Queued
        );
        let mut out = Sink {
            room: 1 << 20,
            got: vec![],
        };
        let mut counts = vec![];
        q.flush(&mut out, |f| counts.push(f.count())).unwrap();
        assert_eq!(out.got, b"aaaabbbbcccc");
        assert_eq!(counts, [2, 1]);
        merges.clear();
        assert_eq!(Rc::strong_count(&merged), 3);
    }

    #[test]
    fn merging_spares_a_half_written_head_and_stops_at_its_limits() {
        let mut merges = Merges::new(10);
        let mut q = OutQueue::default();
        q.push_merged(&tick(1, 1, b'a'), 1000, &mut merges);
        let mut out = Sink {
            room: 2,
            got: vec![],
        };
        assert_eq!(q.flush(&mut out, |_| {}).unwrap().0, Flushed::Blocked);
        // The head is half written: the next update queues behind it.
        assert_eq!(
            q.push_merged(&tick(1, 2, b'b'), 1000, &mut merges),
            Pushed::Queued
        );
        // 4 + 4 bytes fit in 10; a third 4 would not.
        assert_eq!(
            q.push_merged(&tick(1, 3, b'c'), 1000, &mut merges),
            Pushed::Merged
        );
        assert_eq!(
            q.push_merged(&tick(1, 4, b'd'), 1000, &mut merges),
            Pushed::Queued
        );
        out.room = 100;
        q.flush(&mut out, |_| {}).unwrap();
        assert_eq!(out.got, b"aaaabbbbccccdddd");
        // No more than MAX_MERGES copies between two clears.
        let mut merges = Merges::new(1024);
        let mut merged = 0;
        for i in 0..(MAX_MERGES as u64 + 4) {
            let mut q = OutQueue::default();
            q.push_merged(&tick(1, 1, i as u8), 1000, &mut merges);
            if q.push_merged(&tick(1, 2, b'z'), 1000, &mut merges) == Pushed::Merged {
                merged += 1;
            }
        }
        assert_eq!(merged, MAX_MERGES);
    }

    #[test]
    fn conflates_past_budget_keeping_newest_per_channel() {
        let mut q = OutQueue::default();
        // Budget of 3 frames of 10 bytes.
        for s in 1..=3 {
            q.push_update(upd(s as u32, s, 10), 30);
        }
        // Over budget: channel 7 appends once, then replaces.
        assert_eq!(q.push_update(upd(7, 1, 10), 30), Pushed::Queued);
        assert_eq!(q.push_update(upd(7, 2, 10), 30), Pushed::Conflated);
        assert_eq!(q.push_update(upd(7, 3, 10), 30), Pushed::Conflated);
        assert_eq!(q.push_update(upd(8, 1, 10), 30), Pushed::Queued);
        assert_eq!(q.len(), 5);
        let mut sink = Sink {
            room: 1 << 20,
            got: vec![],
        };
        let mut got = vec![];
        q.flush(&mut sink, |f| got.push((f.channel.0, f.seq)))
            .unwrap();
        assert_eq!(got, [(1, 1), (2, 2), (3, 3), (7, 3), (8, 1)]);
        assert!(!q.is_conflating());
    }

    #[test]
    fn never_replaces_a_half_written_frame() {
        let mut q = OutQueue::default();
        q.push_update(upd(1, 1, 10), 5); // over budget at once: conflating
        let mut sink = Sink {
            room: 4,
            got: vec![],
        };
        assert_eq!(q.flush(&mut sink, |_| {}).unwrap().0, Flushed::Blocked);
        // Front is half written: a newer update must queue behind it.
        assert_eq!(q.push_update(upd(1, 2, 10), 5), Pushed::Queued);
        assert_eq!(q.push_update(upd(1, 3, 10), 5), Pushed::Conflated);
        sink.room = 100;
        let mut got = vec![];
        q.flush(&mut sink, |f| got.push(f.seq)).unwrap();
        assert_eq!(got, [1, 3]);
        assert_eq!(sink.got.len(), 20);
    }

    /// Gathered writes, cut anywhere by a socket with little room, put exactly
    /// the queued bytes on the wire, in order.
    #[test]
    fn partial_writes_keep_the_byte_stream_exact() {
        let mut rng = crate::rng::Rng::new(3);
        let mut q = OutQueue::default();
        let mut expect = Vec::new();
        let mut sink = Sink {
            room: 0,
            got: vec![],
        };
        for seq in 1..=3000u64 {
            let len = if rng.below(10) == 0 {
                1000 + rng.below(3000) as usize
            } else {
                20 + rng.below(200) as usize
            };
            let bytes: Vec<u8> = (0..len).map(|i| (seq as usize * 31 + i) as u8).collect();
            expect.extend_from_slice(&bytes);
            q.push_update(
                Entry::update(Bytes::from(bytes), ChannelId(0), seq, 0),
                usize::MAX / 2,
            );
            if rng.below(4) == 0 {
                sink.room = rng.below(5000) as usize;
                q.flush(&mut sink, |_| {}).unwrap();
            }
        }
        sink.room = usize::MAX;
        assert_eq!(q.flush(&mut sink, |_| {}).unwrap().0, Flushed::Drained);
        assert_eq!(sink.got, expect);
    }

    fn pong(payload: &[u8]) -> EntryRef {
        Entry::control(crate::protocol::frame::build(
            crate::protocol::frame::OPCODE_PONG,
            payload,
        ))
    }

    fn drain(q: &mut OutQueue) -> Vec<u8> {
        let mut all = Sink {
            room: usize::MAX,
            got: Vec::new(),
        };
        q.flush(&mut all, |_| {}).unwrap();
        all.got
    }

    #[test]
    fn every_ping_is_answered_in_order_up_to_the_bound() {
        let mut q = OutQueue::default();
        let mut expect = Vec::new();
        for i in 0..10u8 {
            let f = pong(&[b'p', i]);
            expect.extend_from_slice(&f.bytes);
            q.push_pong(f);
        }
        assert_eq!(q.len(), 10, "ten pings, ten pongs");
        assert_eq!(drain(&mut q), expect);
        assert_eq!(q.control_bytes(), 0);
    }

    #[test]
    fn a_ping_flood_costs_bounded_pongs_and_the_newest_is_answered() {
        let mut q = OutQueue::default();
        for i in 0..1000u32 {
            q.push_pong(pong(&i.to_be_bytes()));
        }
        let max = usize::from(MAX_QUEUED_PONGS);
        assert_eq!(q.len(), max, "a ping flood costs bounded pongs");
        assert_eq!(q.control_bytes(), 6 * max);
        let got = drain(&mut q);
        // The first 15 in order, then the newest in the last slot.
        let last = &got[got.len() - 6..];
        assert_eq!(last, [0x8A, 4, 0, 0, 0x03, 0xE7]);
        assert_eq!(&got[..6], [0x8A, 4, 0, 0, 0, 0]);
        // Past the bound with frames behind the last pong: it is still the
        // one replaced, and the frames around it stay.
        for i in 0..MAX_QUEUED_PONGS {
            q.push_pong(pong(&[i]));
        }
        q.push_update(upd(1, 1, 10), 1 << 20);
        q.push_pong(pong(b"new"));
        q.push_control(Entry::control(Bytes::from_static(b"\x81\x01x")));
        assert_eq!(q.len(), max + 2);
        let got = drain(&mut q);
        let tail = [0x8A, 3, b'n', b'e', b'w']
            .iter()
            .chain(&[b'x'; 10])
            .chain(b"\x81\x01x")
            .copied()
            .collect::<Vec<u8>>();
        assert!(got.ends_with(&tail), "{got:?}");
        assert_eq!(q.control_bytes(), 0);
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn a_half_written_pong_is_never_replaced() {
        let mut q = OutQueue::default();
        q.push_pong(pong(b"abcd"));
        let mut sink = Sink {
            room: 2,
            got: Vec::new(),
        };
        q.flush(&mut sink, |_| {}).unwrap();
        let max = usize::from(MAX_QUEUED_PONGS);
        for _ in 0..max + 5 {
            q.push_pong(pong(b"zz"));
        }
        assert_eq!(q.len(), max);
        sink.room = usize::MAX;
        q.flush(&mut sink, |_| {}).unwrap();
        assert_eq!(&sink.got[..8], [0x8A, 4, b'a', b'b', b'c', b'd', 0x8A, 2]);
        assert_eq!(sink.got.len(), 6 + 4 * (max - 1));
        assert_eq!(q.control_bytes(), 0);
    }

    #[test]
    fn conflated_coalesced_update_does_not_pin_the_turn_buffer() {
        let mut packed = vec![b'o'; 30_000];
        packed.extend_from_slice(b"newest");
        let f = Entry::coalesced(
            Bytes::from(packed),
            ChannelId(1),
            2,
            0,
            vec![0].into_boxed_slice(),
            30_000,
        );
        let newest = Entry::newest(&f);
        assert_eq!(&newest.bytes[..], b"newest");
        // A copy: dropping the packed frame frees its buffer.
        let base = f.bytes.as_ptr() as usize;
        let p = newest.bytes.as_ptr() as usize;
        assert!(p < base || p >= base + f.bytes.len());
    }

    /// A TLS writer whose record buffer is full takes 0 bytes: that is
    /// backpressure (conflate, wait for writable), never a dead peer.
    #[test]
    fn a_transport_that_takes_zero_bytes_is_blocked_not_gone() {
        struct FullTls {
            room: usize,
            got: usize,
        }
        impl Write for FullTls {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let n = buf.len().min(self.room);
                self.room -= n;
                self.got += n;
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut q = OutQueue::default();
        for seq in 1..=4 {
            q.push_update(upd(1, seq, 10), 1 << 20);
        }
        let mut w = FullTls { room: 25, got: 0 };
        let (res, n) = q.flush(&mut w, |_| {}).expect("not an error");
        assert_eq!((res, n), (Flushed::Blocked, 25));
        w.room = usize::MAX;
        assert_eq!(q.flush(&mut w, |_| {}).unwrap(), (Flushed::Drained, 15));
        assert_eq!(w.got, 40);
    }

    #[test]
    fn forgotten_channel_is_not_overwritten() {
        let mut q = OutQueue::default();
        q.push_update(upd(1, 1, 10), 0);
        q.forget_channel(ChannelId(1));
        q.push_control(Entry::control(Bytes::from_static(b"unsub")));
        assert_eq!(q.push_update(upd(1, 2, 10), 0), Pushed::Queued);
        assert_eq!(q.len(), 3);
    }

    /// Seeded simulation: random pushes (single and coalesced updates), random
    /// socket room, random flushes, conflation when a flush would block.
    /// After every step: per channel, delivered seqs strictly increase and the
    /// last delivered is the newest pushed once drained; the queue never holds
    /// more than budget + one frame per channel + control frames; byte
    /// accounting matches. Replay with TICKWIRE_SIM_SEED=<seed>.
    #[test]
    fn seeded_conflation_simulation() {
        let seeds: Vec<u64> = match std::env::var("TICKWIRE_SIM_SEED") {
            Ok(s) => vec![s.parse().expect("TICKWIRE_SIM_SEED must be a u64")],
            Err(_) => (1..=if cfg!(miri) { 2 } else { 64 }).collect(),
        };
        for seed in seeds {
            let r = std::panic::catch_unwind(|| simulate(seed, 5_000));
            if r.is_err() {
                panic!("conflation simulation failed; replay with TICKWIRE_SIM_SEED={seed}");
            }
        }
    }

    /// A client that keeps up holds one entry at a time: its queue never
    /// allocates the ring buffer, and its write reads nothing outside the
    /// connection.
    #[test]
    fn a_queue_that_keeps_up_holds_its_entry_inline() {
        let mut q = OutQueue::default();
        let mut sink = Sink {
            room: usize::MAX,
            got: vec![],
        };
        for seq in 1..=100 {
            assert_eq!(q.push_update(upd(0, seq, 20), 1000), Pushed::Queued);
            let (r, n) = q.flush(&mut sink, |_| {}).unwrap();
            assert_eq!((r, n), (Flushed::Drained, 20));
        }
        assert_eq!(q.queue.rest.capacity(), 0, "the ring buffer was allocated");
        assert_eq!(sink.got.len(), 2000);
        // A second entry goes to the ring buffer, behind the inline one.
        q.push_update(upd(0, 101, 20), 1000);
        q.push_control(Entry::control(Bytes::from_static(b"ctl")));
        assert_eq!((q.len(), q.queue.rest.len()), (2, 1));
    }

    /// The inline first entry and the ring buffer behave as one deque:
    /// seeded operations against `VecDeque`.
    #[test]
    fn entries_match_a_deque() {
        let mut rng = crate::rng::Rng::new(7);
        let mut e = Entries::default();
        let mut model: VecDeque<EntryRef> = VecDeque::new();
        let mut seq = 0;
        for step in 0..20_000 {
            match rng.below(8) {
                0..=2 => {
                    seq += 1;
                    let x = upd(rng.below(3) as u32, seq, 1 + rng.below(4) as usize);
                    e.push_back(Rc::clone(&x));
                    model.push_back(x);
                }
                3..=4 => {
                    let (a, b) = (e.pop_front(), model.pop_front());
                    assert_eq!(a.map(|x| x.seq), b.map(|x| x.seq), "step {step}");
                }
                5 => {
                    if !model.is_empty() {
                        let i = rng.below(model.len() as u64) as usize;
                        seq += 1;
                        let x = upd(9, seq, 1);
                        e[i] = Rc::clone(&x);
                        model[i] = x;
                    }
                    if let (Some(a), Some(b)) = (e.back_mut(), model.back_mut()) {
                        seq += 1;
                        *a = upd(8, seq, 2);
                        *b = Rc::clone(a);
                    }
                }
                6 => {
                    let len = rng.below(model.len() as u64 + 1) as usize;
                    e.truncate(len);
                    model.truncate(len);
                }
                _ => {
                    let ch = ChannelId(rng.below(3) as u32);
                    assert_eq!(
                        e.rposition(|f| f.channel == ch),
                        model.iter().rposition(|f| f.channel == ch),
                        "step {step}"
                    );
                }
            }
            assert_eq!(e.len(), model.len());
            assert_eq!(e.is_empty(), model.is_empty());
            assert!(e.first.is_some() || e.rest.is_empty(), "a hole in front");
            assert_eq!(e.front().map(|x| x.seq), model.front().map(|x| x.seq));
            assert_eq!(e.back().map(|x| x.seq), model.back().map(|x| x.seq));
            let (a, b): (Vec<u64>, Vec<u64>) = (
                e.iter().map(|x| x.seq).collect(),
                model.iter().map(|x| x.seq).collect(),
            );
            assert_eq!(a, b, "step {step}");
        }
    }

    fn simulate(seed: u64, steps: usize) {
        let mut rng = crate::rng::Rng::new(seed);
        let channels = 1 + rng.below(20) as u32;
        let frame_len = 8 + rng.below(40) as usize;
        let budget = rng.below(400) as usize;
        let mut q = OutQueue::default();
        let mut next_seq = vec![1u64; channels as usize];
        let mut last_sent = vec![0u64; channels as usize];
        let mut controls_pending = 0usize;
        let mut sink = Sink {
            room: 0,
            got: vec![],
        };
        for _ in 0..steps {
            match rng.below(10) {
                0..=3 => {
                    let ch = rng.below(channels as u64) as u32;
                    let seq = next_seq[ch as usize];
                    next_seq[ch as usize] += 1;
                    q.push_update(upd(ch, seq, frame_len), budget);
                }
                4..=5 => {
                    // A worker turn's updates of one channel, coalesced.
                    let ch = rng.below(channels as u64) as u32;
                    let mut c = crate::worker::coalesce::Coalescer::new(usize::MAX);
                    for _ in 0..1 + rng.below(5) {
                        let seq = next_seq[ch as usize];
                        next_seq[ch as usize] += 1;
                        let bytes = Bytes::from(vec![b'x'; frame_len]);
                        assert!(c.add(ChannelId(ch), seq, 0, bytes).is_none());
                    }
                    for f in c.drain() {
                        q.push_update(f, budget);
                    }
                }
                6 => {
                    q.push_control(Entry::control(Bytes::from_static(b"ctl")));
                    controls_pending += 1;
                }
                _ => {
                    sink.room = rng.below(3 * frame_len as u64) as usize;
                    let (res, _) = q
                        .flush(&mut sink, |f| {
                            if f.channel == ChannelId::NONE {
                                controls_pending -= 1;
                            } else {
                                let c = f.channel.0 as usize;
                                let oldest = f.seq + 1 - f.count();
                                assert!(oldest > last_sent[c], "channel {c} went backwards");
                                last_sent[c] = f.seq;
                            }
                        })
                        .unwrap();
                    if res == Flushed::Blocked {
                        // What the worker does when the socket would block.
                        q.start_conflating();
                    }
                    if res == Flushed::Drained {
                        for c in 0..channels as usize {
                            assert_eq!(last_sent[c], next_seq[c] - 1, "newest value lost");
                        }
                        assert_eq!(controls_pending, 0);
                    }
                }
            }
            let update_frames = q.len() - controls_pending;
            let bound = budget / frame_len + 1 + channels as usize;
            assert!(
                update_frames <= bound,
                "queue {update_frames} > bound {bound}"
            );
            q.check_invariants();
        }
    }
}

//! The write path: the dirty list (connections with something due this
//! turn), one gathered write per connection per pass, the delivery and
//! latency counts, and what a blocked socket means (conflation, stall
//! clock).

use std::os::fd::AsRawFd;

use hdrhistogram::Histogram;

use crate::channel::ChannelId;
use crate::clock;
use crate::metrics::{self, WorkerCounters};
use crate::transport::Transport;
use crate::worker::Worker;
use crate::worker::conflate::{Flushed, IOV_BATCH, OutQueue};
use crate::worker::conn::{Conn, Endpoint, Framing, Phase};

/// A queue that grew past this many entries is freed when it empties, so a
/// burst does not pin memory on an idle connection.
const QUEUE_KEEP_ENTRIES: usize = 1024;

/// One write in this many (on average) records the ingest-to-write latency
/// of the updates it carries, at a sixteenth of the cost.
pub const LATENCY_SAMPLE_WRITES: u64 = 16;

/// Whether the `n`th write is sampled: a multiplicative hash of the count,
/// not `n % 16`, so that a pass over a fixed dirty-list order does not
/// pick the same connections (the last of every 16) pass after pass.
#[inline]
fn sampled(n: u64) -> bool {
    const SHIFT: u32 = 64 - LATENCY_SAMPLE_WRITES.trailing_zeros();
    n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> SHIFT == 0
}

/// Connections with something to write this turn, each listed once.
#[derive(Debug)]
pub struct DirtyList {
    slots: Vec<u32>,
    /// The list a pass walks is swapped out for this one, so connections
    /// marked during the pass (fresh updates for those already written) are
    /// listed without allocating.
    spare: Vec<u32>,
}

impl Default for DirtyList {
    fn default() -> Self {
        DirtyList {
            slots: Vec::with_capacity(1024),
            spare: Vec::with_capacity(1024),
        }
    }
}

impl DirtyList {
    /// Lists `conn` (in `slot`) unless it is listed already.
    #[inline]
    pub fn mark(&mut self, conn: &mut Conn, slot: u32) {
        if !conn.dirty {
            conn.dirty = true;
            self.slots.push(slot);
        }
    }

    /// Whether nothing is listed.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// The worker's own counters and latency histogram, published once per turn
/// (counters) and merged once a second (latency).
#[derive(Debug)]
pub struct LocalStats {
    /// Counters, published with one relaxed store each.
    pub counters: WorkerCounters,
    /// Ingest-to-write latency of the updates delivered since the last merge.
    pub latency: Histogram<u64>,
}

impl Default for LocalStats {
    fn default() -> Self {
        LocalStats {
            counters: WorkerCounters::default(),
            latency: metrics::latency_histogram(),
        }
    }
}

/// The peer is gone (a write failed): close the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerGone;

/// Writes what the connection's queue holds, records deliveries and latency,
/// and tracks stalls.
///
/// # Errors
/// [`PeerGone`] when the transport failed.
pub fn write_out(
    conn: &mut Conn,
    stats: &mut LocalStats,
    now_ms: u64,
    conflate_on_block: bool,
) -> Result<Flushed, PeerGone> {
    write_out_sent(conn, stats, now_ms, conflate_on_block, None)
}

/// A plain socket whose first write the pass's [`SendBatch`] already made:
/// that write returns the batch's result, any further one is a real write.
///
/// [`SendBatch`]: crate::worker::send_batch::SendBatch
struct Sent<'a> {
    /// The batch's result, and the bytes it offered.
    first: Option<(std::io::Result<usize>, usize)>,
    inner: &'a mut Transport,
}

impl Sent<'_> {
    #[inline]
    fn take(&mut self, offered: usize) -> Option<std::io::Result<usize>> {
        let (r, sent_offered) = self.first.take()?;
        debug_assert_eq!(sent_offered, offered, "the batch sent what flush offers");
        Some(r)
    }
}

impl std::io::Write for Sent<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.take(buf.len()) {
            Some(r) => r,
            None => self.inner.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        match self.take(bufs.iter().map(|b| b.len()).sum()) {
            Some(r) => r,
            None => self.inner.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// [`write_out`], where `first` is the outcome of a first write already made
/// by the pass's send batch (its result and the bytes it offered).
fn write_out_sent(
    conn: &mut Conn,
    stats: &mut LocalStats,
    now_ms: u64,
    conflate_on_block: bool,
    first: Option<(std::io::Result<usize>, usize)>,
) -> Result<Flushed, PeerGone> {
    let LocalStats { counters, latency } = stats;
    counters.flushes += 1;
    // Latency is sampled: one write in LATENCY_SAMPLE_WRITES records the
    // updates it carries (recording every delivery took about 4% of the
    // worker's CPU at 8 M deliveries/s); the clock is read only then.
    let sample = sampled(counters.flushes);
    let now_ns = if sample { clock::now_ns() } else { 0 };
    // TLS ciphertext taken earlier goes first; still pending means blocked.
    if conn.transport.flush_pending().is_err() {
        return Err(PeerGone);
    }
    let sent = |f: &crate::worker::conflate::Entry| {
        if f.channel != ChannelId::NONE {
            counters.deliveries += f.count();
            if sample {
                f.for_each_ingest_ns(|t| {
                    let ns = now_ns.saturating_sub(t).max(100);
                    let _ = latency.record(ns.min(60_000_000_000));
                });
            }
        }
    };
    let result = match (conn.write_parts(), first) {
        ((Framing::Frames, out, transport), None) => out.flush(transport, sent),
        ((Framing::Frames, out, inner), first @ Some(_)) => {
            out.flush(&mut Sent { first, inner }, sent)
        }
        ((Framing::Http(s), out, transport), first) => {
            debug_assert!(first.is_none(), "streams are not in the send batch");
            write_staged(s, out, transport, sent)
        }
        ((Framing::Batched(b), out, transport), first) => {
            debug_assert!(first.is_none(), "batched clients are not in the send batch");
            write_staged(b, out, transport, sent)
        }
    };
    let result = match result {
        Ok((Flushed::Drained, n)) if conn.transport.has_pending() => Ok((Flushed::Blocked, n)),
        r => r,
    };
    match result {
        Ok((Flushed::Drained, n)) => {
            counters.bytes_out += n as u64;
            conn.stalled_since_ms = None;
            if conn.out.capacity() > QUEUE_KEEP_ENTRIES {
                conn.out.shrink_if_idle(QUEUE_KEEP_ENTRIES);
            }
            Ok(Flushed::Drained)
        }
        Ok((Flushed::Blocked, n)) => {
            counters.bytes_out += n as u64;
            conn.write_blocked = true;
            if conflate_on_block {
                // The client is not keeping up: from now on it gets the
                // newest value of each channel, not a backlog.
                conn.out.start_conflating();
            }
            if n > 0 || conn.stalled_since_ms.is_none() {
                conn.stalled_since_ms = std::num::NonZeroU64::new(now_ms.max(1));
            }
            Ok(Flushed::Blocked)
        }
        Err(_) => Err(PeerGone),
    }
}

/// What frames a queue's server frames for another wire format, one whole
/// frame at a time (an HTTP stream, a batched client).
pub trait Reframer {
    /// Takes no more this pass: the queue keeps the rest, where it can
    /// conflate.
    fn full(&self) -> bool;
    /// Takes one frame: its opcode, payload, and whole bytes.
    fn frame(&mut self, opcode: u8, payload: &[u8], whole: &[u8]);
}

/// The writer the outbound queue flushes into for a [`Reframer`]: it takes
/// whole frames (an entry of a turn's coalesced updates may be taken in
/// parts) until the reframer is full, and reports the bytes of the frames
/// taken as written.
pub struct Reframe<'a, R>(pub &'a mut R);

impl<R: Reframer> std::io::Write for Reframe<'_, R> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_vectored(&[std::io::IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, entries: &[std::io::IoSlice<'_>]) -> std::io::Result<usize> {
        let r = &mut *self.0;
        let mut taken = 0;
        for e in entries {
            let bytes: &[u8] = e;
            let mut used = 0;
            for (opcode, payload) in crate::protocol::frame::server_frames(bytes) {
                if r.full() {
                    break;
                }
                // The end of this frame within the entry.
                let end = payload.as_ptr() as usize - bytes.as_ptr() as usize + payload.len();
                r.frame(opcode, payload, &bytes[used..end]);
                used = end;
            }
            taken += used;
            if used < bytes.len() {
                break;
            }
        }
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Bytes framed ahead of the socket, from the queue's entries: an SSE
/// stream's events, a batched client's messages.
pub trait Stage {
    /// The bytes not yet written.
    fn staged(&self) -> &[u8];
    /// `n` of them were written.
    fn consume(&mut self, n: usize);
    /// Frames more of `out` into the stage; `true` when the connection is
    /// done writing for now (a long-poll only collects).
    fn frame_from(
        &mut self,
        out: &mut OutQueue,
        sent: impl FnMut(&crate::worker::conflate::Entry),
    ) -> std::io::Result<bool>;
}

/// `n` more bytes of `buf` from `written` on went out; a drained buffer
/// starts over, and gives back a burst's capacity past `keep` (so ten
/// thousand clients that each once took a burst do not each hold its peak).
pub fn consume_staged(buf: &mut Vec<u8>, written: &mut usize, n: usize, keep: usize) {
    *written += n;
    debug_assert!(*written <= buf.len());
    if *written == buf.len() {
        buf.clear();
        *written = 0;
        if buf.capacity() > keep {
            buf.shrink_to(keep);
        }
    }
}

/// Writes a connection whose queue is framed on the way out (an HTTP
/// stream, see [`crate::worker::stream`]; a batched client, see
/// [`crate::worker::batch`]): its staged bytes first, then more of the
/// queue framed, until the socket takes no more or both are empty.
fn write_staged<S: Stage, W: std::io::Write>(
    stage: &mut S,
    out: &mut OutQueue,
    transport: &mut W,
    mut sent: impl FnMut(&crate::worker::conflate::Entry),
) -> std::io::Result<(Flushed, usize)> {
    use std::io::ErrorKind;
    let mut total = 0;
    loop {
        while !stage.staged().is_empty() {
            match transport.write(stage.staged()) {
                Ok(0) => return Ok((Flushed::Blocked, total)),
                Ok(n) => {
                    stage.consume(n);
                    total += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    return Ok((Flushed::Blocked, total));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if out.is_empty() || stage.frame_from(out, &mut sent)? {
            return Ok((Flushed::Drained, total));
        }
    }
}

/// Whether a connection's writes can go through the send batch: a plain
/// socket (TLS writes go through rustls) serving WebSocket frames as they
/// are (HTTP streams and batched clients frame them on the way out) with
/// something due.
#[inline]
fn batchable(conn: &Conn) -> bool {
    matches!(conn.transport, Transport::Plain(_))
        && !matches!(conn.endpoint, Endpoint::Stream | Endpoint::Batched)
        && !conn.out.is_empty()
}

/// Connections written between two looks at the clock during a pass (at
/// 3-5 µs per write on loopback, 200-300 µs).
pub const REFRESH_EVERY: usize = 64;
/// Least time between two refreshes of a pass. A tick that arrives while a
/// pass is under way reaches the connections the pass has not written yet
/// within about this long, instead of waiting for the whole next pass.
/// Refreshing every 64 writes cost the top steps more than it gave
/// (perf/DEFAULTS.md).
pub const REFRESH_GAP_NS: u64 = 1_000_000;

/// What a write pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    /// Connections written.
    pub written: usize,
    /// Updates taken off the ring while the pass was under way.
    pub updates: u64,
}

impl Worker {
    /// Writes every connection marked dirty; returns how many were written.
    /// Connections marked while the pass runs are written by the next one.
    pub(crate) fn flush_dirty(&mut self) -> usize {
        self.write_pass(false).written
    }

    /// A write pass. With `refresh`, once [`REFRESH_GAP_NS`] has passed
    /// (looked at every [`REFRESH_EVERY`] writes) it takes what arrived
    /// meanwhile off the ring: the connections not yet written get it in
    /// this pass; those already written are listed for the next (see
    /// [`crate::worker::refresh`]).
    pub(crate) fn write_pass(&mut self, refresh: bool) -> Pass {
        let mut list =
            std::mem::replace(&mut self.dirty.slots, std::mem::take(&mut self.dirty.spare));
        let mut pass = Pass::default();
        let mut last_ns = if refresh { clock::now_ns() } else { 0 };
        for &slot in &list {
            let Some(conn) = self.conns.get_mut(slot as usize) else {
                continue;
            };
            if !conn.dirty {
                continue;
            }
            if !conn.write_blocked && !self.fresh.is_empty() {
                // Still listed dirty: what it pulls marks nothing.
                self.pull_fresh(slot);
            }
            let conn = &mut self.conns[slot as usize];
            conn.dirty = false;
            if !conn.write_blocked {
                match self.sends.as_mut() {
                    Some(batch) if batchable(conn) => {
                        let mut iov = [std::io::IoSlice::new(&[]); IOV_BATCH];
                        let (n, _) = conn.out.gather(&mut iov);
                        // SAFETY: the slices are the connection's queued
                        // entries (refcounted buffers) and its socket; both
                        // stay as they are until the batch is submitted,
                        // which happens before anything else can change a
                        // queue (a refresh, the end of the pass): the rest of
                        // the loop touches only connections not yet batched,
                        // each listed once.
                        unsafe {
                            batch.push(conn.transport.tcp().as_raw_fd(), slot, &iov[..n]);
                        }
                        if batch.is_full() {
                            self.submit_sends();
                        }
                    }
                    _ => self.flush(slot),
                }
                pass.written += 1;
                if refresh && pass.written % REFRESH_EVERY == 0 {
                    let now_ns = clock::now_ns();
                    if now_ns.saturating_sub(last_ns) >= REFRESH_GAP_NS {
                        last_ns = now_ns;
                        self.submit_sends();
                        pass.updates += self.refresh();
                    }
                }
            }
        }
        self.submit_sends();
        list.clear();
        self.dirty.spare = list;
        self.hand_out_fresh();
        pass
    }

    /// Submits the pass's batched sends and finishes each connection's
    /// write with its result.
    fn submit_sends(&mut self) {
        let Some(mut batch) = self.sends.take() else {
            return;
        };
        if !batch.is_empty() {
            for (slot, offered, result) in batch.submit() {
                self.flush_sent(slot, Some((result, offered)));
            }
        }
        self.sends = Some(batch);
    }

    pub(crate) fn flush(&mut self, slot: u32) {
        self.flush_sent(slot, None);
    }

    /// [`Worker::flush`], with the first write already made by the send
    /// batch when `first` is given.
    fn flush_sent(&mut self, slot: u32, first: Option<(std::io::Result<usize>, usize)>) {
        let conn = &mut self.conns[slot as usize];
        let result = write_out_sent(
            conn,
            &mut self.stats,
            self.now_ms,
            self.config.conflate_on_block,
            first,
        );
        if result.is_ok()
            && crate::worker::stream::poll_due(conn, self.now_ms, self.config.outbound_budget)
        {
            self.answer_poll(slot);
            return;
        }
        match result {
            Ok(Flushed::Drained) if matches!(conn.phase, Phase::Closing { .. }) => {
                // All written: end our side, and read until the peer ends
                // its, so unread input cannot reset the connection and
                // discard what is still in flight.
                conn.transport.shutdown_write();
                conn.phase = Phase::Lingering {
                    since_ms: self.now_ms,
                };
                conn.out.shrink_if_idle(0);
                conn.read_pending = true;
                self.read_retry.push(slot);
            }
            Ok(_) => {
                if conn.read_paused && conn.reply_bytes() <= self.config.outbound_budget / 2 {
                    conn.read_paused = false;
                    conn.read_pending = true;
                    self.read_retry.push(slot);
                }
            }
            Err(PeerGone) => self.close(slot),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_samples_one_write_in_16_without_a_period() {
        let hits = (0..160_000u64).filter(|&n| sampled(n)).count();
        assert!((9_000..11_000).contains(&hits), "{hits}");
        // A pass over 16 connections in a fixed order: every position is
        // sampled sometimes (n % 16 would always pick the same one).
        let mut per_position = [0u32; 16];
        for n in 0..160_000u64 {
            if sampled(n) {
                per_position[(n % 16) as usize] += 1;
            }
        }
        assert!(per_position.iter().all(|&c| c > 300), "{per_position:?}");
    }
}

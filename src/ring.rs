//! The queues between the ingest thread and the workers: one lock-free SPSC
//! ring (rtrb) each way per worker, and a doorbell that wakes a loop through
//! its `mio::Waker` only when that loop may be asleep.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};

use crossbeam::utils::CachePadded;

use crate::channel::ChannelId;
use crate::update::Update;

/// Slots in each ingest → worker ring. At ~48 bytes a slot this is 3 MiB per
/// worker, about 65 ms of a 1M msg/s feed: enough to ride out a scheduling hiccup.
pub const WORKER_RING_CAPACITY: usize = 1 << 16;
/// Frame bytes a worker's ring may hold: 65,536 slots of 64 KiB lines would
/// be 4 GiB, so the ingest thread also waits while this much is unread.
pub const WORKER_RING_BYTES_MAX: u64 = 32 << 20;
/// Slots in each worker → ingest ring (subscribe requests are rare).
pub const CONTROL_RING_CAPACITY: usize = 4096;

/// Identifies a connection on its worker: slab slot plus a generation, so a
/// late reply for a closed connection never reaches the slot's next tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnKey {
    /// Slab index on the worker.
    pub slot: u32,
    /// Generation of that slot.
    pub generation: u32,
}

/// The ingest thread's answer to one subscribe request.
#[derive(Debug)]
pub struct SubscribeReply {
    /// The connection that asked.
    pub conn: ConnKey,
    /// The requested names, given back so the worker can match its state.
    pub names: Vec<Box<str>>,
    /// Per name: the channel (None if the engine's channel table is full).
    pub channels: Vec<Option<Resolved>>,
}

/// A channel a subscribe request resolved, read in ring order: what the
/// subscription starts with and where the stream is.
#[derive(Debug)]
pub struct Resolved {
    /// The channel id (a reference the worker must give back).
    pub id: ChannelId,
    /// Snapshot, replay or resync.
    pub start: crate::ingest::history::Start,
    /// The channel's seq now: the last one the start covers.
    pub seq: u64,
    /// The stream's epoch.
    pub epoch: Box<str>,
    /// Whether its updates conflate for a slow consumer (else the consumer
    /// is closed past its budget and resumes from history).
    pub conflate: bool,
    /// Its channel class (index in class order), for per-class counters.
    pub class: u16,
}

/// A message from the ingest thread to a worker. Ordered: a reply queued after
/// an update is seen after it, which is what joins snapshots to live streams.
#[derive(Debug)]
pub enum ToWorker {
    /// A new value of a channel, its frame built once.
    Update(Update),
    /// Ids and snapshots for a subscribe request (boxed: rare and large).
    Subscribed(Box<SubscribeReply>),
    /// A finished `/api/history` response for a connection.
    Page(ConnKey, bytes::Bytes),
    /// The answer to a publish; the connection stays open unless `close`.
    Published {
        /// The connection that asked.
        conn: ConnKey,
        /// The complete HTTP response.
        response: bytes::Bytes,
        /// Close after it.
        close: bool,
    },
}

/// A message from a worker to the ingest thread.
#[derive(Debug)]
pub enum ToIngest {
    /// Resolve these names to ids and snapshot them in ring order.
    Subscribe {
        /// Which worker asks.
        worker: usize,
        /// For which connection.
        conn: ConnKey,
        /// Valid channel names, deduplicated.
        names: Vec<Box<str>>,
        /// Per name (or empty): the position to resume from.
        since: Vec<Option<crate::ingest::history::Position>>,
    },
    /// A page of the channel table for `/api/channels`.
    Channels {
        /// Which worker asks.
        worker: usize,
        /// For which connection.
        conn: ConnKey,
        /// First slot of the page.
        cursor: usize,
        /// Channels per page.
        limit: usize,
        /// A HEAD request.
        head_only: bool,
    },
    /// A channel's stored updates for `/api/history`.
    History {
        /// Which worker asks.
        worker: usize,
        /// For which connection.
        conn: ConnKey,
        /// The query.
        query: Box<crate::protocol::http::HistoryQuery>,
    },
    /// Publishes these messages, all or nothing, in order.
    Publish {
        /// Which worker asks.
        worker: usize,
        /// For which connection.
        conn: ConnKey,
        /// The messages, checked.
        items: Vec<crate::protocol::publish::Item>,
        /// Close the connection after the answer.
        close: bool,
    },
    /// Gives back one reference per id: each id a subscribe reply carried is
    /// a reference the worker holds until the subscription ends (or at once,
    /// when it did not activate it). A channel without a value and without
    /// references is forgotten, so made-up names do not fill the table.
    Release {
        /// The ids, one per reference (repeats allowed).
        channels: Vec<ChannelId>,
    },
}

/// Frame bytes a worker has taken off its ring, for the ingest thread's
/// byte bound. The worker stores its running total once per ring drain, not
/// per message.
#[derive(Debug, Default)]
pub struct RingBytes {
    consumed: CachePadded<AtomicU64>,
}

impl RingBytes {
    /// A shared counter at zero.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Worker: the running total of frame bytes popped so far.
    #[inline]
    pub fn set_consumed(&self, total: u64) {
        // Relaxed: a flow-control hint only; the ring itself orders the
        // frames. A stale read makes the producer wait a little longer.
        self.consumed.store(total, Ordering::Relaxed);
    }

    /// Ingest: the worker's running total.
    #[inline]
    pub fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }
}

/// Wakes a sleeping event loop. The consumer announces sleep, re-checks its
/// ring, then blocks in `poll`; the producer pushes, then rings only if the
/// consumer announced sleep, so a busy loop costs the producer no syscall.
#[derive(Debug)]
pub struct Doorbell {
    sleeping: CachePadded<AtomicBool>,
    waker: mio::Waker,
}

impl Doorbell {
    /// A doorbell ringing `waker`.
    pub fn new(waker: mio::Waker) -> Arc<Self> {
        Arc::new(Doorbell {
            sleeping: CachePadded::new(AtomicBool::new(false)),
            waker,
        })
    }

    /// Consumer: announce that the loop is about to block. The caller must
    /// re-check its queues after this and call [`Doorbell::awake`] instead of
    /// blocking if they are not empty.
    #[inline]
    pub fn prepare_sleep(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
        // Store-load barrier: the sleeping flag must be visible before the
        // consumer reads the ring's tail, pairing with the fence in `ring`.
        fence(Ordering::SeqCst);
    }

    /// Consumer: the loop is running again.
    #[inline]
    pub fn awake(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// Producer: call after pushing. Wakes the consumer if it may be asleep.
    #[inline]
    pub fn ring(&self) {
        // Store-load barrier: the pushed slot must be visible before we read
        // the flag, or both sides could miss each other (Dekker).
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            // A failed wake only means the eventfd is saturated: already awake.
            let _ = self.waker.wake();
        }
    }

    /// Wakes the loop unconditionally (shutdown).
    pub fn wake(&self) {
        let _ = self.waker.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The doorbell's sleep protocol against a producer racing it: the
    /// consumer announces sleep, re-checks the ring and blocks for up to 2 s;
    /// the producer pushes and rings. A lost wake-up shows as a poll that
    /// slept while an item waited. Without the fences (or with the re-check
    /// skipped) this fails within a few thousand rounds on a multi-core box.
    #[test]
    fn doorbell_never_loses_a_wake_up_racing_a_producer() {
        let rounds: u64 = if cfg!(miri) { 50 } else { 20_000 };
        let mut poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        let bell = Doorbell::new(waker);
        let (mut tx, mut rx) = rtrb::RingBuffer::<u64>::new(8);
        let producer_bell = Arc::clone(&bell);
        let producer = std::thread::spawn(move || {
            for i in 0..rounds {
                while tx.push(i).is_err() {
                    std::thread::yield_now();
                }
                producer_bell.ring();
                // Let the consumer get back to sleep now and then.
                if i % 64 == 0 {
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        });
        let mut events = mio::Events::with_capacity(4);
        let mut expect = 0;
        let mut slow_wakes = 0;
        while expect < rounds {
            while let Ok(v) = rx.pop() {
                assert_eq!(v, expect);
                expect += 1;
            }
            if expect == rounds {
                break;
            }
            bell.prepare_sleep();
            if !rx.is_empty() {
                bell.awake();
                continue;
            }
            let t = std::time::Instant::now();
            poll.poll(&mut events, Some(Duration::from_secs(2)))
                .unwrap();
            bell.awake();
            if events.is_empty() && t.elapsed() >= Duration::from_secs(2) && !rx.is_empty() {
                slow_wakes += 1;
            }
        }
        producer.join().unwrap();
        assert_eq!(slow_wakes, 0, "lost wake-ups");
    }

    #[test]
    fn doorbell_wakes_a_sleeping_poll_and_not_a_busy_one() {
        let mut poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(0)).unwrap();
        let bell = Doorbell::new(waker);
        let mut events = mio::Events::with_capacity(4);
        // Not sleeping: ring() must not wake.
        bell.ring();
        poll.poll(&mut events, Some(Duration::from_millis(10)))
            .unwrap();
        assert!(events.is_empty());
        // Sleeping: the producer thread's ring() must end the poll.
        bell.prepare_sleep();
        let b2 = Arc::clone(&bell);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            b2.ring();
        });
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        assert!(!events.is_empty());
        t.join().unwrap();
    }
}

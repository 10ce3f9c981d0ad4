//! The worker's link to the ingest thread: its ring of updates and replies
//! (in), its ring of requests (out) with a backlog for when that ring is
//! full, and the byte count that bounds the inbound ring. With one worker
//! the link also holds the ingest loop itself and runs it inside the
//! worker's turn: the rings stay, the thread hand-off goes.

use std::collections::VecDeque;
use std::sync::Arc;

use mio::unix::SourceFd;
use rtrb::{Consumer, Producer};

use crate::channel::ChannelId;
use crate::ingest::Ingest;
use crate::ring::{ConnKey, Doorbell, RingBytes, ToIngest, ToWorker};

/// Both directions between one worker and the ingest thread.
pub struct IngestLink {
    worker: usize,
    from_ingest: Consumer<ToWorker>,
    to_ingest: Producer<ToIngest>,
    /// Requests the ring had no room for, sent first next time.
    backlog: VecDeque<ToIngest>,
    ingest_bell: Arc<Doorbell>,
    ring_bytes: Arc<RingBytes>,
    /// Frame bytes taken off the ring since start.
    consumed: u64,
    /// The ingest loop, when this worker drives it.
    on_worker: Option<OnWorker>,
}

/// The ingest loop driven from the worker's turn.
struct OnWorker {
    ingest: Box<Ingest>,
    events: mio::Events,
    /// A pass is due: its Poll reported ready, requests were sent, work
    /// was left, or a timer is due.
    due: bool,
}

impl IngestLink {
    /// A link for worker `worker`.
    pub fn new(
        worker: usize,
        from_ingest: Consumer<ToWorker>,
        to_ingest: Producer<ToIngest>,
        ingest_bell: Arc<Doorbell>,
        ring_bytes: Arc<RingBytes>,
    ) -> Self {
        IngestLink {
            worker,
            from_ingest,
            to_ingest,
            backlog: VecDeque::new(),
            ingest_bell,
            ring_bytes,
            consumed: 0,
            on_worker: None,
        }
    }

    /// Takes over the ingest loop: its Poll is registered in the worker's
    /// under `token`, and [`IngestLink::run_ingest`] runs its passes.
    ///
    /// # Errors
    /// Registering its Poll failed.
    pub fn drive(
        &mut self,
        ingest: Box<Ingest>,
        registry: &mio::Registry,
        token: mio::Token,
    ) -> std::io::Result<()> {
        let fd = ingest.poll_fd();
        registry.register(&mut SourceFd(&fd), token, mio::Interest::READABLE)?;
        self.on_worker = Some(OnWorker {
            ingest,
            events: mio::Events::with_capacity(256),
            due: true,
        });
        Ok(())
    }

    /// Whether this worker drives the ingest loop and a pass is due.
    #[inline]
    pub fn ingest_due(&self) -> bool {
        self.on_worker.as_ref().is_some_and(|o| o.due)
    }

    /// The ingest loop's Poll reported ready, or a timer is due.
    pub fn wake_ingest(&mut self) {
        if let Some(o) = self.on_worker.as_mut() {
            o.due = true;
        }
    }

    /// Runs one ingest pass if one is due (never blocks). False: its poll
    /// failed, and the loop is gone.
    pub fn run_ingest(&mut self) -> bool {
        let Some(o) = self.on_worker.as_mut() else {
            return true;
        };
        if !o.due {
            return true;
        }
        if !o.ingest.turn(&mut o.events, false) {
            o.ingest.finish();
            self.on_worker = None;
            return false;
        }
        // An accept waiting for descriptors is retried by the housekeeping
        // tick (wake_ingest), not by spinning. A full batch of events may
        // have left more ready in its Poll, which (edge-triggered in ours)
        // would not announce them again.
        let full = o.events.iter().count() >= o.events.capacity();
        o.due = full || o.ingest.has_work();
        true
    }

    /// During a write pass: the ingest loop (when driven here) takes what its
    /// feeds sent meanwhile, whether or not the worker's poll announced it
    /// (one non-blocking poll of the ingest loop's own `Poll`).
    /// Returns false when the loop stopped, as [`IngestLink::run_ingest`].
    pub fn refresh_ingest(&mut self) -> bool {
        if let Some(o) = self.on_worker.as_mut() {
            o.due = true;
        }
        self.run_ingest()
    }

    /// Shutdown: the ingest loop (when driven here) stops with the worker.
    pub fn stop_ingest(&mut self) {
        if let Some(mut o) = self.on_worker.take() {
            o.ingest.finish();
        }
    }

    /// The next update or reply, in ring order.
    #[inline]
    pub fn pop(&mut self) -> Option<ToWorker> {
        self.from_ingest.pop().ok()
    }

    /// Whether the next message on the ring is an update.
    #[inline]
    pub fn next_is_update(&self) -> bool {
        matches!(self.from_ingest.peek(), Ok(ToWorker::Update(_)))
    }

    /// Whether nothing waits on the inbound ring.
    pub fn ring_is_empty(&self) -> bool {
        self.from_ingest.is_empty()
    }

    /// Reports `bytes` more frame bytes taken off the ring (once per drain,
    /// not per message).
    #[inline]
    pub fn consumed(&mut self, bytes: u64) {
        if bytes > 0 {
            self.consumed += bytes;
            self.ring_bytes.set_consumed(self.consumed);
        }
    }

    /// Asks ingest to resolve and snapshot `names` for `conn`.
    pub fn subscribe(
        &mut self,
        conn: ConnKey,
        names: Vec<Box<str>>,
        since: Vec<Option<crate::ingest::history::Position>>,
    ) {
        self.backlog.push_back(ToIngest::Subscribe {
            worker: self.worker,
            conn,
            names,
            since,
        });
    }

    /// Asks ingest to publish `items` for `conn` (answered with
    /// `ToWorker::Published`).
    pub fn publish(
        &mut self,
        conn: ConnKey,
        items: Vec<crate::protocol::publish::Item>,
        close: bool,
    ) {
        self.backlog.push_back(ToIngest::Publish {
            worker: self.worker,
            conn,
            items,
            close,
        });
    }

    /// Asks ingest for an `/api/channels` page for `conn`.
    pub fn channels(&mut self, conn: ConnKey, cursor: usize, limit: usize, head_only: bool) {
        self.backlog.push_back(ToIngest::Channels {
            worker: self.worker,
            conn,
            cursor,
            limit,
            head_only,
        });
    }

    /// Asks ingest for an `/api/history` page for `conn`.
    pub fn history(&mut self, conn: ConnKey, query: crate::protocol::http::HistoryQuery) {
        self.backlog.push_back(ToIngest::History {
            worker: self.worker,
            conn,
            query: Box::new(query),
        });
    }

    /// Gives the ingest thread back the references these ids held.
    pub fn release(&mut self, channels: Vec<ChannelId>) {
        if !channels.is_empty() {
            self.backlog.push_back(ToIngest::Release { channels });
        }
    }

    /// Whether requests wait to be sent.
    pub fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Sends what the request ring takes and rings the ingest thread.
    pub fn send_backlog(&mut self) {
        let mut sent = false;
        while let Some(msg) = self.backlog.pop_front() {
            match self.to_ingest.push(msg) {
                Ok(()) => sent = true,
                Err(rtrb::PushError::Full(msg)) => {
                    self.backlog.push_front(msg);
                    break;
                }
            }
        }
        if sent {
            match self.on_worker.as_mut() {
                Some(o) => o.due = true,
                None => self.ingest_bell.ring(),
            }
        }
    }
}

//! A connection's subscriptions as a protocol-neutral state machine: which
//! channels it asked for (pending: the ingest thread has not answered yet)
//! and which are live (active: in the worker's subscriber index under an id),
//! and the order its replies must keep. A WebSocket connection uses it
//! today; SSE streams and long-polls will use the same.

use std::collections::VecDeque;

use crate::channel::ChannelId;

/// A subscription as the connection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    /// Asked of the ingest thread; the reply brings the id and snapshot.
    Pending,
    /// In the worker's index under this id.
    Active(ChannelId),
}

/// Replies made on the worker while subscribe requests are in flight wait
/// here, so the client gets its answers in the order it asked (`R`: a
/// queued reply of whatever wire format the connection speaks).
#[derive(Debug)]
struct Held<R> {
    /// (subscribe replies that must go first, the reply, its bytes)
    queue: VecDeque<(u64, R, usize)>,
    bytes: usize,
}

/// The subscriptions of one connection. Names are kept sorted (binary
/// search; a connection holds at most `max_channels_per_connection`), which
/// costs an idle subscriber far less memory than a hash map.
#[derive(Debug)]
pub struct Subscriptions<R> {
    by_name: Vec<(Box<str>, Sub)>,
    /// Subscribe requests sent to the ingest thread, and replies seen.
    requests_sent: u64,
    requests_answered: u64,
    /// Allocated only while a reply waits.
    held: Option<Box<Held<R>>>,
}

impl<R> Default for Subscriptions<R> {
    fn default() -> Self {
        Subscriptions {
            by_name: Vec::new(),
            requests_sent: 0,
            requests_answered: 0,
            held: None,
        }
    }
}

impl<R> Subscriptions<R> {
    /// Subscriptions held, pending or active.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The state of `name`'s subscription.
    pub fn get(&self, name: &str) -> Option<Sub> {
        self.find(name).ok().map(|i| self.by_name[i].1)
    }

    /// Whether `name` is subscribed (pending or active).
    pub fn contains(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.by_name.binary_search_by(|(n, _)| (**n).cmp(name))
    }

    /// Sets `name`'s state, adding it if new.
    pub fn set(&mut self, name: &str, sub: Sub) {
        match self.find(name) {
            Ok(i) => self.by_name[i].1 = sub,
            Err(i) => self.by_name.insert(i, (name.into(), sub)),
        }
        self.check_invariants();
    }

    /// Removes `name`, returning what it was.
    pub fn remove(&mut self, name: &str) -> Option<Sub> {
        let i = self.find(name).ok()?;
        let (_, sub) = self.by_name.remove(i);
        if self.by_name.is_empty() {
            self.by_name = Vec::new();
        }
        Some(sub)
    }

    /// Removes every subscription, returning the ids of the active ones.
    pub fn take_active(&mut self) -> Vec<ChannelId> {
        let ids = self
            .by_name
            .iter()
            .filter_map(|(_, s)| match s {
                Sub::Active(id) => Some(*id),
                Sub::Pending => None,
            })
            .collect();
        self.by_name = Vec::new();
        ids
    }

    /// The ids of the active subscriptions.
    pub fn active(&self) -> impl Iterator<Item = ChannelId> + '_ {
        self.by_name.iter().filter_map(|(_, s)| match s {
            Sub::Active(id) => Some(*id),
            Sub::Pending => None,
        })
    }

    /// A subscribe request goes to the ingest thread.
    pub fn request_sent(&mut self) {
        self.requests_sent += 1;
    }

    /// Whether a reply made now must wait for answers still in flight.
    pub fn must_hold(&self) -> bool {
        self.requests_answered != self.requests_sent
    }

    /// Holds a local reply (of `bytes` bytes) behind the subscribe answers
    /// in flight. Call only when [`Subscriptions::must_hold`].
    pub fn hold(&mut self, reply: R, bytes: usize) {
        debug_assert!(self.must_hold());
        let held = self.held.get_or_insert_with(|| {
            Box::new(Held {
                queue: VecDeque::new(),
                bytes: 0,
            })
        });
        held.bytes += bytes;
        held.queue.push_back((self.requests_sent, reply, bytes));
    }

    /// A subscribe answer went out: calls `release` with each held reply
    /// that waited for it, in order.
    pub fn answered(&mut self, mut release: impl FnMut(R)) {
        debug_assert!(self.requests_answered < self.requests_sent);
        self.requests_answered += 1;
        let Some(held) = self.held.as_mut() else {
            return;
        };
        while let Some((after, _, _)) = held.queue.front()
            && *after <= self.requests_answered
        {
            let (_, r, bytes) = held.queue.pop_front().expect("front exists");
            held.bytes -= bytes;
            release(r);
        }
        if held.queue.is_empty() {
            self.held = None;
        }
    }

    /// Bytes of replies held.
    pub fn held_bytes(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.bytes)
    }

    #[cfg(debug_assertions)]
    fn check_invariants(&self) {
        if self.by_name.len() <= 64 {
            debug_assert!(self.by_name.windows(2).all(|w| w[0].0 < w[1].0));
        }
        debug_assert!(self.requests_answered <= self.requests_sent);
    }

    #[cfg(not(debug_assertions))]
    #[inline(always)]
    fn check_invariants(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_then_active_and_removal() {
        let mut s = Subscriptions::<u8>::default();
        for n in ["MSFT", "AAPL", "ZZ", "B"] {
            s.set(n, Sub::Pending);
        }
        s.set("AAPL", Sub::Active(ChannelId(3)));
        assert_eq!(s.get("AAPL"), Some(Sub::Active(ChannelId(3))));
        assert_eq!(s.get("MSFT"), Some(Sub::Pending));
        assert_eq!(s.get("NOPE"), None);
        assert_eq!(s.len(), 4);
        assert_eq!(s.remove("MSFT"), Some(Sub::Pending));
        assert!(!s.contains("MSFT"));
        assert_eq!(s.active().collect::<Vec<_>>(), [ChannelId(3)]);
        assert_eq!(s.take_active(), [ChannelId(3)]);
        assert!(s.is_empty());
    }

    #[test]
    fn local_replies_wait_for_the_subscribe_answers_before_them() {
        let mut s = Subscriptions::<&str>::default();
        assert!(!s.must_hold());
        s.request_sent();
        s.hold("err-after-1", 3);
        s.request_sent();
        s.hold("unsub-after-2", 5);
        assert_eq!(s.held_bytes(), 8);
        let mut out = Vec::new();
        s.answered(|r| out.push(r));
        assert_eq!(out, ["err-after-1"]);
        s.answered(|r| out.push(r));
        assert_eq!(out, ["err-after-1", "unsub-after-2"]);
        assert_eq!(s.held_bytes(), 0);
        assert!(!s.must_hold());
        assert!(s.held.is_none(), "nothing stays allocated");
    }
}

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

/// Names up to this long are kept in place.
const INLINE_NAME: usize = 7;

/// A channel name as a subscription keeps it: up to [`INLINE_NAME`] bytes
/// (most symbols: "AAPL", "EURUSD", "BTC-USD") in the 16 bytes a boxed name
/// takes for its pointer and length, longer ones boxed. An idle client
/// holding a short name then makes no allocation for it (a 32-byte malloc
/// chunk saved; S5).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    Inline { len: u8, bytes: [u8; INLINE_NAME] },
    Boxed(Box<str>),
}

impl Name {
    fn new(name: &str) -> Name {
        if name.len() <= INLINE_NAME {
            let mut bytes = [0; INLINE_NAME];
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            Name::Inline {
                len: name.len() as u8,
                bytes,
            }
        } else {
            Name::Boxed(name.into())
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied whole from a `str`: always UTF-8.
            Name::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Name::Boxed(s) => s,
        }
    }
}

/// Subscribe requests in flight to the ingest thread, and the replies made
/// on the worker meanwhile, which wait here so the client gets its answers
/// in the order it asked (`R`: a queued reply of whatever wire format the
/// connection speaks).
#[derive(Debug)]
struct InFlight<R> {
    /// Requests sent and answered since this was created.
    sent: u64,
    answered: u64,
    /// (answers that must go first, the reply, its bytes)
    held: VecDeque<(u64, R, usize)>,
    held_bytes: usize,
}

/// The subscriptions of one connection. Names are kept sorted (binary
/// search; a connection holds at most `max_channels_per_connection`), which
/// costs an idle subscriber far less memory than a hash map.
#[derive(Debug)]
pub struct Subscriptions<R> {
    by_name: Vec<(Name, Sub)>,
    /// Allocated only while a request is in flight or a reply waits.
    in_flight: Option<Box<InFlight<R>>>,
}

impl<R> Default for Subscriptions<R> {
    fn default() -> Self {
        Subscriptions {
            by_name: Vec::new(),
            in_flight: None,
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
        self.by_name.binary_search_by(|(n, _)| n.as_str().cmp(name))
    }

    /// Sets `name`'s state, adding it if new.
    pub fn set(&mut self, name: &str, sub: Sub) {
        match self.find(name) {
            Ok(i) => self.by_name[i].1 = sub,
            Err(i) => {
                // Most clients hold one channel: room for one, not Vec's
                // first four (72 bytes an idle connection would carry).
                if self.by_name.capacity() == 0 {
                    self.by_name.reserve_exact(1);
                }
                self.by_name.insert(i, (Name::new(name), sub))
            }
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

    /// The id of the `i`th subscription if it is active.
    #[inline]
    pub fn active_at(&self, i: usize) -> Option<ChannelId> {
        match self.by_name.get(i)?.1 {
            Sub::Active(id) => Some(id),
            Sub::Pending => None,
        }
    }

    /// The names (pending or active) that fail `keep`.
    pub fn names_failing(&self, keep: impl Fn(&str) -> bool) -> Vec<Box<str>> {
        self.by_name
            .iter()
            .filter(|(n, _)| !keep(n.as_str()))
            .map(|(n, _)| n.as_str().into())
            .collect()
    }

    /// A subscribe request goes to the ingest thread.
    pub fn request_sent(&mut self) {
        let f = self.in_flight.get_or_insert_with(|| {
            Box::new(InFlight {
                sent: 0,
                answered: 0,
                held: VecDeque::new(),
                held_bytes: 0,
            })
        });
        f.sent += 1;
    }

    /// Whether a reply made now must wait for answers still in flight.
    pub fn must_hold(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Holds a local reply (of `bytes` bytes) behind the subscribe answers
    /// in flight. Call only when [`Subscriptions::must_hold`].
    pub fn hold(&mut self, reply: R, bytes: usize) {
        let f = self.in_flight.as_mut().expect("a request in flight");
        f.held_bytes += bytes;
        f.held.push_back((f.sent, reply, bytes));
    }

    /// A subscribe answer went out: calls `release` with each held reply
    /// that waited for it, in order.
    pub fn answered(&mut self, mut release: impl FnMut(R)) {
        let Some(f) = self.in_flight.as_mut() else {
            debug_assert!(false, "an answer without a request");
            return;
        };
        debug_assert!(f.answered < f.sent);
        f.answered += 1;
        while let Some((after, _, _)) = f.held.front()
            && *after <= f.answered
        {
            let (_, r, bytes) = f.held.pop_front().expect("front exists");
            f.held_bytes -= bytes;
            release(r);
        }
        if f.answered == f.sent {
            debug_assert!(f.held.is_empty(), "nothing waits once all are answered");
            self.in_flight = None;
        }
    }

    /// Bytes of replies held.
    pub fn held_bytes(&self) -> usize {
        self.in_flight.as_ref().map_or(0, |f| f.held_bytes)
    }

    #[cfg(debug_assertions)]
    fn check_invariants(&self) {
        if self.by_name.len() <= 64 {
            debug_assert!(
                self.by_name
                    .windows(2)
                    .all(|w| w[0].0.as_str() < w[1].0.as_str())
            );
        }
        debug_assert!(self.in_flight.as_ref().is_none_or(|f| f.answered < f.sent));
    }

    #[cfg(not(debug_assertions))]
    #[inline(always)]
    fn check_invariants(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_channel_allocates_room_for_one() {
        // Idle-connection memory (S5): one subscription, one entry's room.
        let mut s = Subscriptions::<u8>::default();
        s.set("idle", Sub::Pending);
        assert_eq!(s.by_name.capacity(), 1);
        s.set("idle", Sub::Active(ChannelId(0)));
        assert_eq!(s.by_name.capacity(), 1);
        s.set("more", Sub::Pending);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn short_names_are_kept_in_place_and_long_ones_boxed() {
        assert_eq!(std::mem::size_of::<Name>(), 16, "no bigger than a Box<str>");
        for n in [
            "",
            "T",
            "AAPL",
            "BTC-USD",
            "€uro",
            "EURUSD.x",
            "a much longer channel name",
        ] {
            let name = Name::new(n);
            assert_eq!(name.as_str(), n);
            assert_eq!(
                matches!(name, Name::Inline { .. }),
                n.len() <= INLINE_NAME,
                "{n}"
            );
        }
        // Sorted by the names' text whichever way each is kept.
        let mut s = Subscriptions::<u8>::default();
        for n in [
            "user:42:orders",
            "B",
            "AAPL",
            "user:42",
            "BTC-USD",
            "AAPLX-LONG",
        ] {
            s.set(n, Sub::Pending);
        }
        let names: Vec<&str> = s.by_name.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "AAPL",
                "AAPLX-LONG",
                "B",
                "BTC-USD",
                "user:42",
                "user:42:orders"
            ]
        );
        assert!(s.contains("AAPLX-LONG") && s.contains("B") && !s.contains("AAPLX"));
        let failing = s.names_failing(|n| !n.starts_with("user:"));
        assert_eq!(
            &*failing,
            [Box::from("user:42"), Box::from("user:42:orders")]
        );
    }

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
        assert!(s.in_flight.is_none(), "nothing stays allocated");
    }
}

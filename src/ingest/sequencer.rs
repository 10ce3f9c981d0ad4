//! The sequencer (sans-io): the channel table, each channel's sequence
//! number and last value, and the update frame built once per accepted
//! value. It does not know where a value came from: the TCP feed server
//! feeds it today; an HTTP publish API, client publish and a bus consumer
//! call the same [`Sequencer::accept`].

use std::collections::{BinaryHeap, HashMap};

use crate::channel::{self, ChannelId};
use crate::ingest::history::{self, ClassRule, History, HistoryLimits, Position, Start};
use crate::ingest::line::{LineParser, Reject};
use crate::update::Update;

#[derive(Debug)]
struct ChannelState {
    /// Empty while the slot is free.
    name: Box<str>,
    seq: u64,
    last: Option<Update>,
    /// Ids handed out in subscribe replies and not yet released.
    refs: u32,
    /// The last updates, for resuming subscribers.
    history: History,
    /// Which use of this slot the channel is (part of its epoch).
    incarnation: u64,
    /// Index in the sequencer's classes.
    class: u16,
    /// The size its newest entry in the sequencer's `largest` heap claims
    /// (0: none); never below its history's bytes.
    claimed: usize,
}

/// Channel table and sequencing.
pub struct Sequencer {
    by_name: HashMap<Box<[u8]>, ChannelId>,
    channels: Vec<ChannelState>,
    max_channels: usize,
    /// Channels created by a subscribe that no feed has published yet. They
    /// have a pool of their own (also `max_channels`), so clients asking for
    /// made-up names can never take the table from the feeds.
    unpublished: usize,
    /// Slots of forgotten channels, reused before the table grows.
    free: Vec<ChannelId>,
    limits: HistoryLimits,
    /// The configured classes, then the default one (from `limits`).
    classes: Vec<ClassRule>,
    /// Channels per class.
    class_channels: Vec<u64>,
    /// New at every start: a seq of an earlier run is never resumed.
    engine_epoch: u64,
    /// Channels created so far (each gets the next incarnation).
    created: u64,
    /// History bytes over all channels.
    history_bytes: usize,
    /// The memory cap's order: (claimed history bytes, slot), largest
    /// first. Lazy: a channel that grows pushes its new size, older entries
    /// of it are skipped when they come up, one that shrank is put back at
    /// its real size; rebuilt when stale entries outnumber the channels.
    largest: BinaryHeap<(usize, u32)>,
}

impl std::fmt::Debug for Sequencer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequencer")
            .field("channels", &self.channel_count())
            .finish()
    }
}

impl Sequencer {
    /// A sequencer keeping at most `max_channels` channels with a value (and
    /// as many more that subscribers named before any value).
    pub fn new(max_channels: usize) -> Self {
        Self::with_history(max_channels, HistoryLimits::default())
    }

    /// A sequencer keeping `limits` of history.
    pub fn with_history(max_channels: usize, limits: HistoryLimits) -> Self {
        Self::with_classes(max_channels, limits, Vec::new())
    }

    /// A sequencer with channel classes (first match wins; the rest are a
    /// conflating class with `limits`' history).
    pub fn with_classes(
        max_channels: usize,
        limits: HistoryLimits,
        mut classes: Vec<ClassRule>,
    ) -> Self {
        classes.push(ClassRule {
            pattern: "*".into(),
            size: limits.size,
            ttl_ns: limits.ttl_ns,
            conflate: true,
        });
        let n = classes.len();
        Sequencer {
            classes,
            class_channels: vec![0; n],
            by_name: HashMap::new(),
            channels: Vec::new(),
            max_channels,
            unpublished: 0,
            free: Vec::new(),
            limits,
            engine_epoch: history::new_engine_epoch(),
            created: 0,
            history_bytes: 0,
            largest: BinaryHeap::new(),
        }
    }

    /// History bytes kept over all channels.
    pub fn history_bytes(&self) -> usize {
        self.history_bytes
    }

    /// Channels per class, in class order (the default class last).
    pub fn class_channels(&self) -> &[u64] {
        &self.class_channels
    }

    /// The channel's class, as an index in class order (the default last).
    pub fn class_of(&self, id: ChannelId) -> u16 {
        self.channels[id.index()].class
    }

    /// Whether the channel's updates conflate for slow consumers.
    pub fn conflates(&self, id: ChannelId) -> bool {
        self.classes[self.channels[id.index()].class as usize].conflate
    }

    /// The epoch of a channel's stream.
    pub fn epoch(&self, id: ChannelId) -> Box<str> {
        history::epoch_string(self.engine_epoch, self.channels[id.index()].incarnation)
    }

    /// How a subscription to `id` starts: from `since` when given (the
    /// updates after it, or a resync), else the snapshot; with the
    /// channel's current seq and epoch.
    pub fn start(
        &self,
        id: ChannelId,
        since: Option<&Position>,
        now_ns: u64,
    ) -> (Start, u64, Box<str>) {
        let state = &self.channels[id.index()];
        let epoch = self.epoch(id);
        let start = match since {
            None => Start::Snapshot(state.last.clone()),
            Some(p) => state.history.start(
                p,
                &epoch,
                state.seq,
                state.last.as_ref(),
                now_ns,
                self.classes[state.class as usize].ttl_ns,
            ),
        };
        (start, state.seq, epoch)
    }

    /// The `/api/history` body for `name`: `{"ch","epoch","seq","updates":[...]}`
    /// with up to `limit` stored updates after `since`, plus `"resync"`
    /// with a reason when `since` cannot be continued (another epoch, or
    /// updates after it are no longer kept). None: no such channel.
    pub fn history_json(
        &self,
        name: &str,
        since: u64,
        epoch: Option<&str>,
        limit: usize,
        now_ns: u64,
    ) -> Option<Vec<u8>> {
        let &id = self.by_name.get(name.as_bytes())?;
        let state = &self.channels[id.index()];
        let own = self.epoch(id);
        let ttl = self.classes[state.class as usize].ttl_ns;
        let other_epoch = epoch.is_some_and(|e| e != &*own);
        let from = if other_epoch { 0 } else { since };
        let (updates, gap) = state.history.page(from, limit, now_ns, ttl);
        let resync = if other_epoch {
            Some("epoch changed: the stream restarted")
        } else if since > state.seq {
            Some("position is ahead of the stream")
        } else if gap || (updates.is_empty() && since < state.seq) {
            Some("position is older than the history")
        } else {
            None
        };
        let mut out = Vec::with_capacity(64 + updates.iter().map(|u| u.frame.len()).sum::<usize>());
        out.extend_from_slice(b"{\"ch\":\"");
        out.extend_from_slice(state.name.as_bytes());
        out.extend_from_slice(b"\",\"epoch\":\"");
        out.extend_from_slice(own.as_bytes());
        out.extend_from_slice(b"\",\"seq\":");
        out.extend_from_slice(itoa::Buffer::new().format(state.seq).as_bytes());
        if let Some(r) = resync {
            out.extend_from_slice(b",\"resync\":\"");
            out.extend_from_slice(r.as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b",\"updates\":[");
        for (i, u) in updates.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&u.payload());
        }
        out.extend_from_slice(b"]}");
        Some(out)
    }

    /// An `/api/channels` body: up to `limit` channels from slot `cursor`,
    /// `{"channels":[{"name","class","subscriptions","subscribers","seq","epoch","history"}],"next":N|null}`
    /// (`subscribers` is `subscriptions` under the issue's name; both stay).
    pub fn channels_json(&self, cursor: usize, limit: usize, class_names: &[String]) -> Vec<u8> {
        let mut list = Vec::with_capacity(limit);
        let mut next = None;
        for (slot, c) in self.channels.iter().enumerate().skip(cursor) {
            if c.name.is_empty() {
                continue;
            }
            if list.len() == limit {
                next = Some(slot);
                break;
            }
            list.push(serde_json::json!({
                "name": &*c.name,
                "class": class_names.get(c.class as usize).map_or("default", String::as_str),
                "subscriptions": c.refs,
                "subscribers": c.refs,
                "seq": c.seq,
                "epoch": history::epoch_string(self.engine_epoch, c.incarnation),
                "history": c.history.len(),
            }));
        }
        serde_json::json!({"channels": list, "next": next})
            .to_string()
            .into_bytes()
    }

    /// Notes that `id`'s history may have grown: the cap's order must
    /// know its new size. O(log channels), and only when it passes what the
    /// channel last claimed (a full history that turns over claims rarely).
    fn note_growth(&mut self, id: ChannelId) {
        let state = &mut self.channels[id.index()];
        let bytes = state.history.bytes();
        if bytes <= state.claimed {
            return;
        }
        state.claimed = bytes;
        self.largest.push((bytes, id.0));
        if self.largest.len() > 2 * self.channels.len() + 64 {
            // Amortised O(1): at least `channels` pushes since the last
            // rebuild.
            let mut fresh = Vec::with_capacity(self.channels.len());
            for (slot, c) in self.channels.iter_mut().enumerate() {
                c.claimed = c.history.bytes();
                if c.claimed > 0 {
                    fresh.push((c.claimed, slot as u32));
                }
            }
            self.largest = BinaryHeap::from(fresh);
        }
    }

    /// Keeps the history within its byte cap: the oldest entries of the
    /// largest histories (by bytes) go first, so a firehose of big market
    /// histories cannot wipe the few entries of a notification channel.
    /// O(log channels) per entry evicted, amortised.
    fn enforce_history_cap(&mut self) {
        let max = self.limits.memory_max;
        while self.history_bytes > max {
            let Some((claim, slot)) = self.largest.pop() else {
                break;
            };
            let state = &mut self.channels[slot as usize];
            if claim != state.claimed {
                // Superseded by a newer entry of the same channel.
                continue;
            }
            let bytes = state.history.bytes();
            if bytes == claim {
                let freed = state.history.pop_oldest();
                self.history_bytes -= freed;
            }
            // Back at its real size (it shrank since, or just lost one).
            state.claimed = state.history.bytes();
            if state.claimed > 0 {
                self.largest.push((state.claimed, slot));
            }
        }
    }

    /// Channels known.
    pub fn channel_count(&self) -> usize {
        self.channels.len() - self.free.len()
    }

    /// Sequences `payload` (a JSON value, already validated by the caller)
    /// as the next value of `channel` (a valid name), makes it the channel's
    /// last value and builds its frame.
    ///
    /// # Examples
    /// ```
    /// let mut s = tickwire::ingest::Sequencer::new(10);
    /// let u = s.accept("AAPL", br#"{"ch":"AAPL","bid":1}"#, 0).unwrap();
    /// assert_eq!(u.seq, 1);
    /// assert_eq!(s.accept("AAPL", br#"{"bid":2}"#, 0).unwrap().seq, 2);
    /// ```
    ///
    /// # Errors
    /// [`Reject::ChannelLimit`] when a new channel would pass `max_channels`,
    /// [`Reject::BadChannel`] for an invalid name; nothing changes then.
    pub fn accept(
        &mut self,
        channel: &str,
        payload: &[u8],
        ingest_ns: u64,
    ) -> Result<Update, Reject> {
        if !channel::is_valid(channel.as_bytes()) {
            return Err(Reject::BadChannel);
        }
        let id = match self.by_name.get(channel.as_bytes()) {
            Some(&id) => {
                if self.channels[id.index()].last.is_none() {
                    // First value of a channel a subscriber created: it moves
                    // to the feeds' pool.
                    if self.published() >= self.max_channels {
                        return Err(Reject::ChannelLimit);
                    }
                    self.unpublished -= 1;
                }
                id
            }
            None => {
                if self.published() >= self.max_channels {
                    return Err(Reject::ChannelLimit);
                }
                self.create(channel)
            }
        };
        let state = &mut self.channels[id.index()];
        state.seq += 1;
        let update = Update {
            channel: id,
            seq: state.seq,
            ingest_ns,
            frame: crate::protocol::frame::update(state.name.as_bytes(), state.seq, payload),
        };
        state.last = Some(update.clone());
        let class = &self.classes[state.class as usize];
        let delta = state.history.push(update.clone(), class.size, class.ttl_ns);
        self.history_bytes = (self.history_bytes as isize + delta) as usize;
        self.note_growth(id);
        self.enforce_history_cap();
        self.check_channel(id);
        Ok(update)
    }

    /// Whether values for all of `names` can be accepted now (none would
    /// pass `max_channels`): checked before a batch publishes anything.
    pub fn has_room_for(&self, names: &[&str]) -> bool {
        let mut new: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| {
                self.by_name
                    .get(n.as_bytes())
                    .is_none_or(|id| self.channels[id.index()].last.is_none())
            })
            .collect();
        new.sort_unstable();
        new.dedup();
        self.published() + new.len() <= self.max_channels
    }

    /// Channels with a value.
    fn published(&self) -> usize {
        self.channel_count() - self.unpublished
    }

    fn create(&mut self, name: &str) -> ChannelId {
        self.created += 1;
        let class = self
            .classes
            .iter()
            .position(|c| c.matches(name))
            .unwrap_or(self.classes.len() - 1);
        self.class_channels[class] += 1;
        let state = ChannelState {
            class: class as u16,
            name: name.into(),
            seq: 0,
            last: None,
            refs: 0,
            history: History::default(),
            incarnation: self.created,
            claimed: 0,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.channels[id.index()] = state;
                id
            }
            None => {
                self.channels.push(state);
                ChannelId(self.channels.len() as u32 - 1)
            }
        };
        self.by_name.insert(name.as_bytes().into(), id);
        id
    }

    /// A subscribe reply carries `id`: one more reference to it.
    pub fn grant(&mut self, id: ChannelId) {
        self.channels[id.index()].refs += 1;
        self.check_channel(id);
    }

    /// A worker gave back a reference. A channel that no feed has published
    /// and nobody holds is forgotten and its slot reused: its id is in no
    /// worker's index and in no reply in flight, because every reply that
    /// carried it has been answered with a release.
    pub fn release(&mut self, id: ChannelId) {
        let state = &mut self.channels[id.index()];
        debug_assert!(state.refs > 0, "release without a grant");
        state.refs = state.refs.saturating_sub(1);
        if state.refs == 0 && state.last.is_none() && !state.name.is_empty() {
            self.by_name.remove(state.name.as_bytes());
            state.name = Box::default();
            self.class_channels[state.class as usize] -= 1;
            self.free.push(id);
            self.unpublished -= 1;
        }
        self.check_invariants();
    }

    /// The id of `name`, creating the channel (no value yet) if needed; None
    /// if the subscribers' pool is full. `name` must be valid.
    pub fn resolve(&mut self, name: &str) -> Option<ChannelId> {
        debug_assert!(channel::is_valid(name.as_bytes()));
        let id = match self.by_name.get(name.as_bytes()) {
            Some(&id) => id,
            None if self.unpublished < self.max_channels => {
                let id = self.create(name);
                self.unpublished += 1;
                id
            }
            None => return None,
        };
        self.check_channel(id);
        Some(id)
    }

    /// The channel's last value.
    pub fn snapshot(&self, id: ChannelId) -> Option<Update> {
        self.channels[id.index()].last.clone()
    }

    /// One channel's invariants, cheap enough for every mutation; the whole
    /// table is checked while it is small.
    #[cfg(debug_assertions)]
    fn check_channel(&self, id: ChannelId) {
        let state = &self.channels[id.index()];
        debug_assert!(!state.name.is_empty(), "a live channel has a name");
        debug_assert_eq!(self.by_name.get(state.name.as_bytes()), Some(&id));
        debug_assert_eq!(state.last.as_ref().map_or(0, |u| u.seq), state.seq);
        debug_assert!(state.last.as_ref().is_none_or(|u| u.channel == id));
        self.check_invariants();
    }

    /// Every name maps to a live slot holding it; free slots are nameless
    /// and unmapped; `unpublished` counts the live channels without a value.
    #[cfg(debug_assertions)]
    pub(crate) fn check_invariants(&self) {
        if self.channels.len() > 1024 {
            return;
        }
        debug_assert_eq!(self.by_name.len(), self.channel_count());
        for (name, &id) in &self.by_name {
            debug_assert_eq!(self.channels[id.index()].name.as_bytes(), &name[..]);
        }
        for id in &self.free {
            debug_assert!(self.channels[id.index()].name.is_empty());
        }
        let unpublished = self
            .channels
            .iter()
            .filter(|c| !c.name.is_empty() && c.last.is_none())
            .count();
        debug_assert_eq!(unpublished, self.unpublished);
        let entries: usize = self.channels.iter().map(|c| c.history.len()).sum();
        if entries <= 4096 {
            let kept: usize = self.channels.iter().map(|c| c.history.recount()).sum();
            debug_assert_eq!(kept, self.history_bytes, "history bytes drifted");
        }
        debug_assert!(
            self.channels.iter().all(|c| c.history.bytes() <= c.claimed),
            "a history larger than the cap's order knows"
        );
        debug_assert!(
            self.channels
                .iter()
                .all(|c| c.history.len() <= self.classes[c.class as usize].size),
            "a history past its size"
        );
    }

    #[cfg(not(debug_assertions))]
    #[inline(always)]
    fn check_channel(&self, _: ChannelId) {}

    #[cfg(not(debug_assertions))]
    #[inline(always)]
    pub(crate) fn check_invariants(&self) {}
}

/// One feed line through the parser and the sequencer: blank lines give
/// `Ok(None)`; a valid line becomes the next value of its channel, its bytes
/// (without a trailing `\r`) the update's `data`.
///
/// # Errors
/// The [`Reject`] reason; nothing changes then.
pub fn accept_line(
    parser: &mut LineParser,
    sequencer: &mut Sequencer,
    line: &[u8],
    ingest_ns: u64,
) -> Result<Option<Update>, Reject> {
    let Some(line) = LineParser::trim(line) else {
        return Ok(None);
    };
    let channel = parser.channel_of(line)?;
    sequencer.accept(channel, line, ingest_ns).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// The feed path in one value: a line parser in front of a sequencer.
    struct Lines(LineParser, Sequencer);

    impl Lines {
        fn accept(&mut self, line: &[u8], ns: u64) -> Result<Option<Update>, Reject> {
            accept_line(&mut self.0, &mut self.1, line, ns)
        }
    }

    impl std::ops::Deref for Lines {
        type Target = Sequencer;
        fn deref(&self) -> &Sequencer {
            &self.1
        }
    }

    impl std::ops::DerefMut for Lines {
        fn deref_mut(&mut self) -> &mut Sequencer {
            &mut self.1
        }
    }

    fn lines(max: usize) -> Lines {
        Lines(LineParser::default(), Sequencer::new(max))
    }

    fn payload(frame: &Bytes) -> serde_json::Value {
        let off = crate::protocol::frame::header_len(frame.len() - 2);
        serde_json::from_slice(&frame[off..]).unwrap()
    }

    #[test]
    fn sequences_per_channel_and_keeps_data_verbatim() {
        let mut s = lines(10);
        let line = br#"{"ch":"AAPL", "bid":1.5,"nested":{"ch":"X","a":[1,{"b":2}]}}"#;
        let a1 = s.accept(line, 1).unwrap().unwrap();
        let b1 = s
            .accept(br#"{"x":{"ch":"no"},"ch":"MSFT"}"#, 2)
            .unwrap()
            .unwrap();
        let a2 = s.accept(line, 3).unwrap().unwrap();
        assert_eq!((a1.seq, b1.seq, a2.seq), (1, 1, 2));
        assert_eq!(a1.channel, a2.channel);
        assert_ne!(a1.channel, b1.channel);
        let v = payload(&a2.frame);
        assert_eq!(v["ch"], "AAPL");
        assert_eq!(v["seq"], 2);
        let needle = br#""data":{"ch":"AAPL", "bid":1.5,"nested":{"ch":"X","a":[1,{"b":2}]}}}"#;
        assert!(a2.frame.windows(needle.len()).any(|w| w == needle));
        assert_eq!(payload(&b1.frame)["ch"], "MSFT");
        assert_eq!(s.snapshot(a1.channel).unwrap().seq, 2);
    }

    #[test]
    fn rejects_each_bad_line_with_its_reason() {
        let mut s = lines(1);
        let cases: [(&[u8], Reject); 8] = [
            (b"{not json", Reject::BadJson),
            (b"[1,2]", Reject::NotObject),
            (b"\"ch\"", Reject::NotObject),
            (br#"{"sym":"A"}"#, Reject::MissingChannel),
            (br#"{"ch":5}"#, Reject::MissingChannel),
            (br#"{"ch":"a b"}"#, Reject::BadChannel),
            (br#"{"ch":""}"#, Reject::BadChannel),
            (br#"{"ch":"A"} trailing"#, Reject::BadJson),
        ];
        for (line, want) in cases {
            assert_eq!(
                s.accept(line, 0).unwrap_err(),
                want,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        assert!(s.accept(br#"{"ch":"A"}"#, 0).unwrap().is_some());
        assert_eq!(
            s.accept(br#"{"ch":"B"}"#, 0).unwrap_err(),
            Reject::ChannelLimit
        );
        assert!(s.accept(b"  \r", 0).unwrap().is_none());
        // Nothing rejected consumed a sequence number.
        assert_eq!(s.accept(b"{\"ch\":\"A\"}\r", 0).unwrap().unwrap().seq, 2);
    }

    #[test]
    fn resolve_creates_channels_without_values() {
        let mut s = lines(2);
        let id = s.resolve("NEW").unwrap();
        assert!(s.snapshot(id).is_none());
        assert_eq!(
            s.accept(br#"{"ch":"NEW"}"#, 0).unwrap().unwrap().channel,
            id
        );
        assert!(s.resolve("OTHER").is_some());
        assert!(s.resolve("THIRD").is_some());
        // Two unpublished channels fill the subscribers' pool...
        assert!(s.resolve("FOURTH").is_none());
        assert!(s.resolve("NEW").is_some(), "known channels still resolve");
        // ...but not the feeds': one more published channel fits.
        assert!(s.accept(br#"{"ch":"FEED"}"#, 0).unwrap().is_some());
        assert_eq!(
            s.accept(br#"{"ch":"FEED2"}"#, 0).err(),
            Some(Reject::ChannelLimit)
        );
        // Publishing into a subscriber's channel needs room in the feeds' pool.
        assert_eq!(
            s.accept(br#"{"ch":"OTHER"}"#, 0).err(),
            Some(Reject::ChannelLimit)
        );
        assert!(s.accept(br#"{"ch":"NEW"}"#, 0).unwrap().is_some());
    }

    #[test]
    fn released_channels_without_a_value_are_forgotten_and_their_slots_reused() {
        let mut s = lines(2);
        let a = s.resolve("A").unwrap();
        s.grant(a);
        s.grant(a);
        let b = s.resolve("B").unwrap();
        s.grant(b);
        assert!(s.resolve("C").is_none(), "the subscribers' pool is full");
        s.release(a);
        assert_eq!(s.channel_count(), 2, "A is still held once");
        s.release(a);
        assert_eq!(s.channel_count(), 1, "A is forgotten");
        let c = s.resolve("C").expect("room again");
        assert_eq!(c, a, "the slot is reused");
        assert!(s.snapshot(c).is_none());
        // A published channel keeps its last value whatever the references.
        s.grant(b);
        assert_eq!(s.accept(br#"{"ch":"B","x":1}"#, 0).unwrap().unwrap().seq, 1);
        s.release(b);
        s.release(b);
        assert_eq!(s.snapshot(b).unwrap().seq, 1);
        assert_eq!(s.resolve("B"), Some(b));
        // A name that was forgotten starts again from seq 1 when published.
        s.grant(c);
        s.release(c);
        assert_eq!(
            s.accept(br#"{"ch":"A"}"#, 0).unwrap().unwrap().seq,
            1,
            "A is a new channel"
        );
        assert_eq!(s.channel_count(), 2);
    }

    #[test]
    fn clients_cannot_take_the_channel_table_from_feeds() {
        let mut s = lines(100);
        for i in 0..1000 {
            let _ = s.resolve(&format!("MADE.UP.{i}"));
        }
        for i in 0..100 {
            let line = format!(r#"{{"ch":"REAL{i}"}}"#);
            assert!(s.accept(line.as_bytes(), 0).unwrap().is_some(), "{line}");
        }
        assert_eq!(s.channel_count(), 200);
    }

    #[test]
    fn random_lines_never_panic_and_only_valid_ones_sequence() {
        let mut rng = crate::rng::Rng::new(7);
        let mut s = lines(100);
        let base = br#"{"ch":"AB","p":[1,2,{"q":"x"}],"z":null}"#;
        let mut accepted = 0u64;
        for _ in 0..20_000 {
            let mut line = base.to_vec();
            for _ in 0..rng.below(3) {
                let at = rng.below(line.len() as u64) as usize;
                line[at] = rng.next_u64() as u8;
            }
            if let Ok(Some(seq)) = s.accept(&line, 0) {
                accepted += 1;
                // Whatever was accepted is a valid frame around the exact line.
                let payload = &seq.frame[crate::protocol::frame::header_len(seq.frame.len() - 2)..];
                assert!(payload.windows(line.len()).any(|w| w == &line[..]));
                let v: serde_json::Value =
                    serde_json::from_slice(payload).expect("valid JSON frame");
                assert!(crate::channel::is_valid(
                    v["ch"].as_str().unwrap().as_bytes()
                ));
            }
        }
        assert!(accepted > 0);
    }

    fn history_len(s: &Sequencer, name: &str) -> usize {
        s.channels[s.by_name[name.as_bytes()].index()].history.len()
    }

    #[test]
    fn the_memory_cap_takes_the_oldest_entries_of_the_largest_histories_first() {
        let cap = 64 * 1024;
        let limits = HistoryLimits {
            size: 10_000,
            ttl_ns: 0,
            memory_max: cap,
        };
        let notify = ClassRule {
            pattern: "user.*".into(),
            size: 256,
            ttl_ns: 0,
            conflate: false,
        };
        let mut s = Sequencer::with_classes(10, limits, vec![notify]);
        let big = format!(r#"{{"pad":"{}"}}"#, "m".repeat(1000));
        // A market firehose far past the cap, a notification now and then:
        // every notification arrives while the cap is full.
        for i in 0..4000 {
            let ch = if i % 2 == 0 { "MKT.A" } else { "MKT.B" };
            s.accept(ch, big.as_bytes(), 0).unwrap();
            if i % 100 == 99 {
                s.accept("user.1", br#"{"n":1}"#, 0).unwrap();
            }
        }
        assert_eq!(history_len(&s, "user.1"), 40, "the small history keeps all");
        assert!(s.history_bytes() <= cap, "{}", s.history_bytes());
        let entry = big.len() + 64 + 64;
        assert!(s.history_bytes() + 2 * entry > cap, "the cap is used");
        let (a, b) = (history_len(&s, "MKT.A"), history_len(&s, "MKT.B"));
        assert!(
            a.abs_diff(b) <= 1,
            "the large ones are levelled: {a} vs {b}"
        );
        // The oldest go first: what a market channel keeps is its newest.
        let id = s.by_name[&b"MKT.A"[..]];
        let (kept, _) = s.channels[id.index()].history.page(0, usize::MAX, 0, 0);
        let seqs: Vec<u64> = kept.iter().map(|u| u.seq).collect();
        let top = s.channels[id.index()].seq;
        assert_eq!(seqs, (top - a as u64 + 1..=top).collect::<Vec<_>>());
        // The order's heap stays bounded by the channels, not the updates.
        assert!(s.largest.len() <= 2 * s.channels.len() + 64);
    }

    #[test]
    fn any_source_can_feed_the_sequencer_and_shares_the_channel_seq() {
        let mut s = lines(10);
        assert_eq!(s.accept(br#"{"ch":"A","v":1}"#, 0).unwrap().unwrap().seq, 1);
        // An HTTP publish or a bus consumer calls accept directly.
        let u = s.1.accept("A", br#"{"v":2}"#, 5).unwrap();
        assert_eq!((u.seq, u.ingest_ns), (2, 5));
        assert_eq!(
            &u.payload()[..],
            br#"{"type":"update","ch":"A","seq":2,"data":{"v":2}}"#
        );
        assert_eq!(s.1.accept("a b", b"{}", 0).unwrap_err(), Reject::BadChannel);
        assert_eq!(s.snapshot(u.channel).unwrap().seq, 2);
    }
}

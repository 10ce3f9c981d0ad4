//! Client requests: subscribe (a round trip to the ingest thread, answered
//! when the subscription is live), unsubscribe (answered at once, in request
//! order), and the pages the admin thread rendered for this worker.

use crate::channel::ChannelId;
use crate::ingest::history::Start;
use crate::limits::Limit;
use crate::protocol::client::{self, Ack, ClientOp, ErrorCode};
use crate::ring::{Resolved, SubscribeReply};
use crate::worker::Worker;
use crate::worker::conflate::{Entry, Pushed};
use crate::worker::conn::Phase;
use crate::worker::guard::Admission;
use crate::worker::subscriptions::Sub;

impl Worker {
    /// Acts on one client text message.
    pub(crate) fn client_message(&mut self, slot: u32, text: &[u8]) {
        let max = self.config.max_channels_per_connection;
        let parsed = client::parse_client_message(text, max);
        let is_auth = matches!(parsed, Ok(ClientOp::Auth(_)));
        if let Admission::Stop = self.admit_message(slot, is_auth) {
            return;
        }
        let parsed = match parsed {
            Ok(ClientOp::Auth(token)) => {
                self.authenticate(slot, &token);
                return;
            }
            other => other,
        };
        let Worker {
            conns,
            index,
            link,
            stats,
            metrics,
            ..
        } = self;
        let conn = &mut conns[slot as usize];
        match parsed {
            // Answered above.
            Ok(ClientOp::Auth(_)) => {}
            Ok(ClientOp::Ping) => conn.reply(Entry::control(client::pong_frame())),
            Ok(ClientOp::Subscribe(names, since)) => {
                self.subscribe(slot, names, since);
                return;
            }
            Ok(ClientOp::Unsubscribe(names)) => {
                let mut ended = Vec::new();
                for n in &names {
                    if let Some(Sub::Active(id)) = conn.subs.remove(n) {
                        index.remove(id, slot);
                        conn.out.forget_channel(id);
                        ended.push(id);
                    }
                }
                // A pending one is released when its reply finds it gone.
                link.release(ended);
                conn.reply(Entry::control(client::ack_frame(Ack::Unsubscribed, &names)));
            }
            Err(e) => {
                stats.counters.client_errors += 1;
                if e.code == ErrorCode::TooManyChannels {
                    metrics.refusals.limit(Limit::SubscriptionsPerConnection);
                }
                conn.reply(Entry::control(client::error_frame(e.code, &e.message)));
            }
        }
        self.check_invariants();
    }

    /// Subscribes a connection to `names`, each from its `since` position
    /// (aligned with the names; empty for none): what the token forbids
    /// is refused with an error and the rest applied; the ack waits for the
    /// ingest thread's reply. WebSocket requests and the HTTP transports'
    /// streams come here alike.
    pub(crate) fn subscribe(
        &mut self,
        slot: u32,
        mut names: Vec<Box<str>>,
        mut since: Vec<Option<crate::ingest::history::Position>>,
    ) {
        let max = self.config.max_channels_per_connection;
        let Worker {
            conns,
            link,
            stats,
            metrics,
            ..
        } = self;
        let Some(conn) = conns.get_mut(slot as usize) else {
            return;
        };
        let forbidden: Vec<Box<str>> = names
            .iter()
            .filter(|n| !conn.auth().allows(n))
            .cloned()
            .collect();
        if !forbidden.is_empty() {
            // The rest of the request is applied.
            if !since.is_empty() {
                let auth = conn.auth();
                let mut keep = names.iter().map(|n| auth.allows(n));
                since.retain(|_| keep.next().unwrap_or(false));
            }
            names.retain(|n| conn.auth().allows(n));
            stats.counters.client_errors += 1;
            conn.reply(Entry::control(client::forbidden_frame(&forbidden)));
            if names.is_empty() {
                return;
            }
        }
        let new = names.iter().filter(|n| !conn.subs.contains(n)).count();
        if conn.subs.len() + new > max {
            stats.counters.client_errors += 1;
            metrics.refusals.limit(Limit::SubscriptionsPerConnection);
            let msg = format!(
                "subscribing to {new} more channels would pass the limit of {max} per connection ({} now)",
                conn.subs.len()
            );
            conn.reply(Entry::control(client::error_frame(
                ErrorCode::TooManyChannels,
                &msg,
            )));
            return;
        }
        for n in &names {
            if !conn.subs.contains(n) {
                conn.subs.set(n, Sub::Pending);
            }
        }
        // The ack waits for the ingest thread's reply: "subscribed"
        // means live, and every later update of these channels follows.
        conn.subs.request_sent();
        link.subscribe(conn.key, names, since);
        self.check_invariants();
    }

    /// The ingest thread answered a subscribe request: activate what is
    /// still wanted, ack, and queue the snapshots, in ring order.
    pub(crate) fn subscribed(&mut self, reply: SubscribeReply) {
        let slot = reply.conn.slot;
        let live = self
            .conns
            .get(slot as usize)
            .is_some_and(|c| c.key == reply.conn && c.phase == Phase::Open);
        if !live {
            // Closed or closing meanwhile: every id it carried goes back.
            let ids = reply.channels.iter().flatten().map(|r| r.id).collect();
            self.link.release(ids);
            return;
        }
        let budget = self.config.outbound_budget;
        let Worker {
            conns,
            index,
            link,
            stats,
            dirty,
            keep_all,
            metrics,
            class_of,
            ..
        } = self;
        let conn = &mut conns[slot as usize];
        let mut returned: Vec<ChannelId> = Vec::new();
        let mut refused: Vec<Box<str>> = Vec::new();
        let mut forbidden: Vec<Box<str>> = Vec::new();
        let mut acked: Vec<Box<str>> = Vec::with_capacity(reply.names.len());
        // What follows the ack, channel by channel, in request order.
        let mut starts: Vec<(Box<str>, Resolved)> = Vec::new();
        let mut positions: Vec<(Box<str>, u64, Box<str>)> = Vec::new();
        for (name, resolved) in reply.names.into_iter().zip(reply.channels) {
            match conn.subs.get(&name) {
                Some(Sub::Pending) => {}
                // Already live from an earlier request: ack, no second
                // snapshot; the earlier reply's reference is the one kept.
                // Or unsubscribed while the request was in flight: the
                // client asked for both, so both are acked (the unsubscribe
                // ack is held behind this one), but nothing is activated.
                Some(Sub::Active(_)) | None => {
                    acked.push(name);
                    returned.extend(resolved.map(|r| r.id));
                    continue;
                }
            }
            if !conn.auth().allows(&name) {
                // Permissions changed while the request was in flight.
                conn.subs.remove(&name);
                returned.extend(resolved.map(|r| r.id));
                forbidden.push(name);
                continue;
            }
            let Some(r) = resolved else {
                conn.subs.remove(&name);
                refused.push(name);
                continue;
            };
            conn.subs.set(&name, Sub::Active(r.id));
            index.add(r.id, slot);
            let k = r.id.index();
            if keep_all.len() <= k {
                keep_all.resize(k + 1, false);
            }
            keep_all[k] = !r.conflate;
            if class_of.len() <= k {
                class_of.resize(k + 1, 0);
            }
            class_of[k] = r.class;
            acked.push(name.clone());
            positions.push((name.clone(), r.seq, r.epoch.clone()));
            starts.push((name, r));
        }
        if !refused.is_empty() {
            metrics.refusals.limit(Limit::Channels);
            let msg = format!(
                "the engine's channel limit is reached; not subscribed: {}",
                refused.join(",")
            );
            conn.out.push_control(Entry::control(client::error_frame(
                ErrorCode::ChannelLimit,
                &msg,
            )));
            stats.counters.client_errors += 1;
        }
        if !forbidden.is_empty() {
            conn.out
                .push_control(Entry::control(client::forbidden_frame(&forbidden)));
            stats.counters.client_errors += 1;
        }
        if !acked.is_empty() || (refused.is_empty() && forbidden.is_empty()) {
            let p: Vec<(&str, u64, &str)> = positions
                .iter()
                .map(|(n, seq, e)| (&**n, *seq, &**e))
                .collect();
            conn.out
                .push_control(Entry::control(client::subscribed_frame(&acked, &p)));
        }
        for (name, r) in starts {
            let snapshot = match r.start {
                Start::Snapshot(s) => s,
                Start::Replay(missed) => {
                    stats.counters.replayed += missed.len() as u64;
                    stats
                        .counters
                        .add_class_replayed(r.class, missed.len() as u64);
                    for u in missed {
                        conn.out.push_replay(Entry::from_update(u));
                    }
                    None
                }
                Start::Resync { reason, snapshot } => {
                    stats.counters.resyncs += 1;
                    let f = client::resync_frame(&name, &r.epoch, reason);
                    conn.out.push_control(Entry::control(f));
                    snapshot
                }
            };
            if let Some(s) = snapshot
                && conn.out.push_update(Entry::from_update(s), budget) == Pushed::Conflated
            {
                stats.counters.conflated += 1;
            }
        }
        conn.release_held();
        dirty.mark(conn, slot);
        link.release(returned);
        self.check_invariants();
    }

    /// Queues the pages the admin thread rendered for this worker's
    /// connections (still the same connection: the key's generation).
    pub(crate) fn serve_admin_replies(&mut self) {
        while let Some((key, page)) = self.admin.reply() {
            self.serve_page(key, page);
        }
    }

    /// The ingest thread answered a publish: the answer is queued and the
    /// connection reads its next request (keep-alive), or closes.
    pub(crate) fn published(
        &mut self,
        key: crate::ring::ConnKey,
        response: bytes::Bytes,
        close: bool,
    ) {
        let Worker {
            conns,
            index,
            link,
            dirty,
            now_ms,
            read_retry,
            ..
        } = self;
        let Some(conn) = conns.get_mut(key.slot as usize) else {
            return;
        };
        if conn.key != key || !matches!(conn.phase, Phase::Publishing { .. }) {
            return;
        }
        conn.out.push_control(Entry::control(response));
        if close {
            crate::worker::timers::enter_closing(conn, index, link, *now_ms);
        } else {
            conn.phase = Phase::Handshake { since_ms: *now_ms };
            conn.answered = true;
        }
        dirty.mark(conn, key.slot);
        if conn.read_paused || !close {
            conn.read_paused = false;
            conn.read_pending = true;
            read_retry.push(key.slot);
        }
        self.pump_http(key.slot);
    }

    /// A page rendered off the worker (metrics, history) for a connection
    /// waiting in `Responding`: queued, then the connection closes.
    pub(crate) fn serve_page(&mut self, key: crate::ring::ConnKey, page: bytes::Bytes) {
        let Some(conn) = self.conns.get_mut(key.slot as usize) else {
            return;
        };
        if conn.key != key || !matches!(conn.phase, Phase::Responding { .. }) {
            return;
        }
        conn.out.push_control(Entry::control(page));
        conn.phase = Phase::Closing {
            since_ms: self.now_ms,
        };
        self.dirty.mark(conn, key.slot);
    }
}

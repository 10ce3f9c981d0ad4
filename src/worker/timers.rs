//! Timers and endings: heartbeats, the handshake, idle, slow-consumer and
//! closing deadlines (checked once per housekeeping tick), shutdown, and the
//! ways a connection ends (close frame queued, policy cut, socket closed).

use std::sync::atomic::Ordering;

use crate::protocol::frame::{self, CloseCode};
use crate::worker::Worker;
use crate::worker::accept::AcceptState;
use crate::worker::conflate::Entry;
use crate::worker::conn::{Conn, Phase};
use crate::worker::fanout::SubscriberIndex;
use crate::worker::guard;
use crate::worker::input;
use crate::worker::link::IngestLink;

/// How long a closing connection may take to flush its last frames, and
/// then to close its side after ours.
const CLOSING_TIMEOUT_MS: u64 = 2_000;

/// Ends a connection's subscriptions: out of the index, references back to
/// the ingest thread.
pub fn unsubscribe_all(conn: &mut Conn, index: &mut SubscriberIndex, link: &mut IngestLink) {
    let ended = conn.subs.take_active();
    for &id in &ended {
        index.remove(id, conn.key.slot);
    }
    link.release(ended);
}

/// Stops deliveries and marks the connection to end once its queue is
/// written (or after a grace period).
pub fn enter_closing(
    conn: &mut Conn,
    index: &mut SubscriberIndex,
    link: &mut IngestLink,
    now_ms: u64,
) {
    unsubscribe_all(conn, index, link);
    conn.phase = Phase::Closing { since_ms: now_ms };
    // Input is read and dropped from now on, whatever waits unanswered.
    conn.read_paused = false;
}

/// Queues a close frame behind what is queued and starts closing.
pub fn send_close(
    conn: &mut Conn,
    index: &mut SubscriberIndex,
    link: &mut IngestLink,
    now_ms: u64,
    code: CloseCode,
    reason: &str,
) {
    conn.out
        .push_control(Entry::control(frame::close(code, reason)));
    enter_closing(conn, index, link, now_ms);
}

/// Closes with 1008 for a policy breach: what is queued is dropped (but a
/// half-written frame, which must finish), and the close frame follows.
pub fn cut(
    conn: &mut Conn,
    index: &mut SubscriberIndex,
    link: &mut IngestLink,
    now_ms: u64,
    reason: &str,
) {
    conn.out.truncate_to_partial();
    send_close(conn, index, link, now_ms, CloseCode::Policy, reason);
}

impl Worker {
    /// Heartbeats and deadlines, once per housekeeping tick.
    pub(crate) fn housekeeping(&mut self) {
        if self.acceptor.state == AcceptState::Backoff {
            self.accept();
        }
        self.drain_step();
        let now = self.now_ms;
        let ping_ms = self.config.ping_interval.as_millis() as u64;
        let idle_ms = self.config.idle_timeout.as_millis() as u64;
        let slow_ms = self.config.slow_consumer_timeout.as_millis() as u64;
        let draining = matches!(self.state, super::RunState::Draining { .. });
        let mut to_close: Vec<u32> = Vec::new();
        let unix_s = crate::auth::unix_now();
        let lead_s = self.config.token_refresh_lead.as_secs();
        let leeway_s = self.config.jwt_leeway.as_secs();
        let handshake_ms = self.config.handshake_timeout.as_millis() as u64;
        let Worker {
            conns,
            index,
            link,
            dirty,
            stats,
            ping,
            metrics,
            ..
        } = self;
        for (slot, conn) in conns.iter_mut() {
            let slot = slot as u32;
            match conn.phase {
                Phase::Handshake { since_ms } | Phase::Publishing { since_ms } => {
                    if now.saturating_sub(since_ms) >= handshake_ms {
                        // A keep-alive connection idle after its answers,
                        // or one waiting on a publish, refused nothing.
                        if matches!(conn.phase, Phase::Handshake { .. }) && !conn.answered {
                            metrics
                                .refusals
                                .limit(crate::limits::Limit::HandshakeTimeout);
                        }
                        to_close.push(slot);
                    }
                }
                Phase::Closing { since_ms } | Phase::Responding { since_ms } => {
                    // While shutting down, the drain deadline (4 s) applies.
                    if !draining && now.saturating_sub(since_ms) >= CLOSING_TIMEOUT_MS {
                        to_close.push(slot);
                    }
                }
                Phase::Lingering { .. } => {
                    if input::lingered_out(conn, now, CLOSING_TIMEOUT_MS) {
                        to_close.push(slot);
                    }
                }
                Phase::Open => {
                    if conn.guard.is_some() {
                        let ctx = guard::AuthTimerCtx {
                            now_ms: now,
                            unix_s,
                            lead_s,
                            leeway_s,
                            handshake_ms,
                            index,
                            link,
                            refusals: &metrics.refusals,
                        };
                        if Worker::auth_timers(conn, ctx) {
                            conn.write_blocked = false;
                            dirty.mark(conn, slot);
                            if conn.phase != Phase::Open {
                                continue;
                            }
                        }
                    }
                    if conn
                        .stalled_since_ms
                        .is_some_and(|t| now.saturating_sub(t.get()) >= slow_ms)
                    {
                        stats.counters.slow_consumer_closes += 1;
                        let reason = format!(
                            "slow consumer: socket took no data for {}s while updates waited",
                            slow_ms / 1000
                        );
                        cut(conn, index, link, now, &reason);
                        // Try the close frame once more even though it blocked.
                        conn.write_blocked = false;
                        dirty.mark(conn, slot);
                    } else if let Some(st) = conn.stream() {
                        // An HTTP stream only listens: it is never idle;
                        // a dead peer shows as a write error or a stall.
                        if st.kind == crate::protocol::http::StreamKind::Poll {
                            if now >= st.deadline_ms {
                                dirty.mark(conn, slot);
                            }
                        } else if now.saturating_sub(conn.last_ping_ms) >= ping_ms {
                            conn.last_ping_ms = now;
                            conn.out.push_control(std::rc::Rc::clone(ping));
                            dirty.mark(conn, slot);
                        }
                    } else if now.saturating_sub(conn.last_rx_ms) >= idle_ms {
                        stats.counters.idle_closes += 1;
                        let reason =
                            format!("idle timeout: nothing received for {}s", idle_ms / 1000);
                        send_close(conn, index, link, now, CloseCode::GoingAway, &reason);
                        dirty.mark(conn, slot);
                    } else if now.saturating_sub(conn.last_ping_ms) >= ping_ms {
                        conn.last_ping_ms = now;
                        conn.out.push_control(std::rc::Rc::clone(ping));
                        dirty.mark(conn, slot);
                    }
                    if conn.out.is_empty() && !conn.dirty {
                        // Idle: give back the queue's buffers.
                        conn.out.shrink_if_idle(0);
                    }
                }
            }
        }
        for slot in to_close {
            self.close(slot);
        }
        self.flush_dirty();
    }

    /// While draining, sends 1012 to each client at its planned time. The
    /// plan spreads this worker's clients evenly over the window, so the
    /// whole engine's reconnects are spread too.
    fn drain_step(&mut self) {
        if self.state != super::RunState::Serving {
            return;
        }
        let Some((start, deadline)) = self.lifecycle.drain_window() else {
            return;
        };
        if self.drain_plan.is_none() {
            // End a little early so the last closes flush before exit.
            let end = deadline - ((deadline - start) / 10).min(1000);
            let span = end.saturating_sub(start);
            let open: Vec<(u32, u32)> = self
                .conns
                .iter()
                .filter(|(_, c)| c.phase == Phase::Open)
                .map(|(s, c)| (s as u32, c.key.generation))
                .collect();
            let n = open.len() as u64;
            let mut plan: Vec<(u64, u32, u32)> = open
                .into_iter()
                .enumerate()
                .map(|(i, (s, g))| (start + span * (i as u64 + 1) / n, s, g))
                .collect();
            plan.reverse();
            self.drain_plan = Some(plan);
        }
        let now = self.now_ms;
        let Worker {
            conns,
            index,
            link,
            dirty,
            drain_plan,
            ..
        } = self;
        let plan = drain_plan.as_mut().expect("set above");
        while let Some(&(at, slot, generation)) = plan.last() {
            if at > now {
                break;
            }
            plan.pop();
            if let Some(conn) = conns.get_mut(slot as usize)
                && conn.key.generation == generation
                && conn.phase == Phase::Open
            {
                let reason = "server restarting: reconnect later";
                send_close(conn, index, link, now, CloseCode::ServiceRestart, reason);
                dirty.mark(conn, slot);
            }
        }
    }

    /// Stops accepting and sends 1001 to every open client behind its
    /// queued updates.
    pub(crate) fn begin_shutdown(&mut self) {
        self.acceptor.close(&self.poll);
        let mut to_close = Vec::new();
        let bye = Entry::control(frame::close(CloseCode::GoingAway, "server shutting down"));
        let Worker {
            conns,
            index,
            link,
            dirty,
            now_ms,
            ..
        } = self;
        for (slot, conn) in conns.iter_mut() {
            match conn.phase {
                Phase::Open => {
                    conn.out.push_control(std::rc::Rc::clone(&bye));
                    enter_closing(conn, index, link, *now_ms);
                    dirty.mark(conn, slot as u32);
                }
                Phase::Handshake { .. } | Phase::Publishing { .. } => to_close.push(slot as u32),
                Phase::Closing { .. } | Phase::Lingering { .. } | Phase::Responding { .. } => {}
            }
        }
        for slot in to_close {
            self.close(slot);
        }
        self.flush_dirty();
    }

    /// Closes the socket now and forgets the connection.
    pub(crate) fn close(&mut self, slot: u32) {
        let Some(mut conn) = self.conns.try_remove(slot as usize) else {
            return;
        };
        if conn.transport.tls_handshake_failed() {
            self.stats.counters.tls_handshake_failures += 1;
        }
        if let Some(ip) = conn.guard.as_ref().and_then(|g| g.ip) {
            self.ips.release(ip, self.now_ms);
        }
        unsubscribe_all(&mut conn, &mut self.index, &mut self.link);
        let _ = self.poll.registry().deregister(&mut conn.transport);
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
        self.check_invariants();
    }
}

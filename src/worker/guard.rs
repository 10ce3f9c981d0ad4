//! Access control on a worker: the checks an upgrade passes before its 101
//! (origin, per-address limits, the token), the first-message and refresh
//! `{"op":"auth"}`, the per-connection message rate, and the token timers
//! (`token_expiring`, close at `exp`). Checked per upgrade and per client
//! message, never per delivery.

use crate::auth::{AuthError, ConnAuth, Session};
use crate::config::Config;
use crate::limits::{Allowance, IpTable, Limit, MessageBucket, Refusals, client_ip};
use crate::protocol::client::{self, ErrorCode};
use crate::protocol::http::{Response, UpgradeMeta};
use crate::worker::Worker;
use crate::worker::conflate::Entry;
use crate::worker::conn::{Conn, Guard};
use crate::worker::subscriptions::Sub;
use crate::worker::timers;

/// The reason for 1008 when the first message is not `{"op":"auth"}`.
const AUTH_FIRST: &str =
    "missing token: the first message must be {\"op\":\"auth\",\"token\":\"...\"}";

/// Checks an upgrade request: the guard the connection will carry, or the
/// response that refuses it (counted).
pub fn check_upgrade(
    conn: &Conn,
    meta: &UpgradeMeta,
    config: &Config,
    ips: &IpTable,
    refusals: &Refusals,
    now_ms: u64,
) -> Result<Option<Box<Guard>>, Response> {
    if !config.allowed_origins.is_empty()
        && let Some(origin) = &meta.origin
        && !config.allowed_origins.iter().any(|o| o == origin)
    {
        // Only browsers send Origin; it is what stops another site's page
        // from using a visitor's credentials here.
        refusals.limit(Limit::Origin);
        return Err(Response::Forbidden("origin not allowed"));
    }
    let mut guard = Guard::default();
    if ips.is_active()
        && let Some(peer) = conn.transport.peer_ip()
    {
        let ip = client_ip(peer, &meta.forwarded, &config.trusted_proxies);
        if let Err(l) = ips.admit(ip, now_ms) {
            refusals.limit(l);
            return Err(match l {
                Limit::NewConnectionsPerIp => Response::TooManyRequests(
                    "too many new connections from this address: retry in a second",
                ),
                _ => Response::Unavailable("too many connections from this address"),
            });
        }
        guard.ip = Some(ip);
    }
    if let Some(verifier) = &config.auth {
        guard.set_auth(match meta.token.as_deref() {
            None => ConnAuth::Waiting { since_ms: now_ms },
            Some(token) => match verifier.verify(token, crate::auth::unix_now()) {
                Ok(claims) => ConnAuth::User(Box::new(Session::from_claims(&claims))),
                Err(e) => {
                    refusals.auth(&e);
                    if let Some(ip) = guard.ip {
                        ips.release(ip, now_ms);
                    }
                    return Err(Response::Unauthorized(e.reason()));
                }
            },
        });
    }
    if config.client_messages_per_second > 0 {
        guard.bucket = MessageBucket::new(config.client_messages_per_second, now_ms);
    }
    let needed = guard.ip.is_some()
        || *guard.auth() != ConnAuth::Off
        || config.client_messages_per_second > 0;
    Ok(needed.then(|| Box::new(guard)))
}

/// The producer and operator endpoints (publish, the channel list): the
/// API key when one is configured, else loopback clients only. The client
/// is resolved as for upgrades: behind a proxy listed in `trusted_proxies`
/// (often on the same host, so its own address is loopback) it is the
/// address the proxy forwarded, so a proxy never opens these endpoints to
/// everyone it serves.
pub fn operator_allowed(
    conn: &Conn,
    bearer: Option<&str>,
    forwarded: &[std::net::IpAddr],
    config: &Config,
) -> bool {
    match &config.api_key {
        Some(key) => bearer.is_some_and(|b| crate::auth::constant_time_eq(b.as_bytes(), key)),
        // Fail closed: every forwarded entry must be loopback too, so a
        // header the client wrote itself can only refuse, never admit.
        None => {
            conn.transport
                .peer_ip()
                .is_some_and(|ip| client_ip(ip, forwarded, &config.trusted_proxies).is_loopback())
                && forwarded.iter().all(|ip| ip.to_canonical().is_loopback())
        }
    }
}

/// Checks an `/api/history` request against authentication: the response
/// that refuses it, if any (no token, a bad one, a channel it does not
/// allow).
pub fn check_history(
    q: &crate::protocol::http::HistoryQuery,
    config: &Config,
    refusals: &Refusals,
) -> Option<Response> {
    let verifier = config.auth.as_ref()?;
    let Some(token) = q.token.as_deref() else {
        refusals.auth(&AuthError::Missing);
        return Some(Response::Unauthorized(AuthError::Missing.reason()));
    };
    match verifier.verify(token, crate::auth::unix_now()) {
        Err(e) => {
            refusals.auth(&e);
            Some(Response::Unauthorized(e.reason()))
        }
        Ok(claims) if !Session::from_claims(&claims).channels.allows(&q.ch) => {
            Some(Response::Forbidden("the token does not allow this channel"))
        }
        Ok(_) => None,
    }
}

/// What a client message may do under the connection's guard.
pub enum Admission {
    /// Go on with it.
    Go,
    /// Dropped (an answer or close is queued).
    Stop,
}

impl Worker {
    /// The rate limit and the authentication gate for one client message
    /// (`is_auth`: it is `{"op":"auth"}`).
    pub(crate) fn admit_message(&mut self, slot: u32, is_auth: bool) -> Admission {
        let per_second = self.config.client_messages_per_second;
        let now = self.now_ms;
        let Worker {
            conns,
            index,
            link,
            stats,
            metrics,
            ..
        } = self;
        let conn = &mut conns[slot as usize];
        let Some(guard) = conn.guard.as_mut() else {
            return Admission::Go;
        };
        match guard.bucket.take(per_second, now) {
            Allowance::Allow => {}
            Allowance::Refuse => {
                metrics.refusals.limit(Limit::ClientMessages);
                stats.counters.client_errors += 1;
                let msg = format!(
                    "over {per_second} messages per second: this message was dropped; slow down"
                );
                conn.reply(Entry::control(client::error_frame(
                    ErrorCode::RateLimited,
                    &msg,
                )));
                return Admission::Stop;
            }
            Allowance::Cut => {
                metrics.refusals.limit(Limit::ClientMessagesClose);
                stats.counters.protocol_closes += 1;
                timers::cut(conn, index, link, now, "rate limit exceeded for a second");
                return Admission::Stop;
            }
        }
        if matches!(guard.auth(), ConnAuth::Waiting { .. }) && !is_auth {
            metrics.refusals.auth(&AuthError::Missing);
            timers::cut(conn, index, link, now, AUTH_FIRST);
            return Admission::Stop;
        }
        Admission::Go
    }

    /// `{"op":"auth","token":...}`: the first-message token, or a refresh
    /// (same `sub`; subscriptions the new token does not allow end).
    pub(crate) fn authenticate(&mut self, slot: u32, token: &str) {
        let now = self.now_ms;
        let Worker {
            conns,
            index,
            link,
            metrics,
            config,
            stats,
            ..
        } = self;
        let conn = &mut conns[slot as usize];
        let Some(verifier) = config.auth.as_ref() else {
            stats.counters.client_errors += 1;
            conn.reply(Entry::control(client::error_frame(
                ErrorCode::Unsupported,
                "authentication is not enabled on this server",
            )));
            return;
        };
        let claims = match verifier.verify(token, crate::auth::unix_now()) {
            Ok(c) => c,
            Err(e) => {
                metrics.refusals.auth(&e);
                timers::cut(conn, index, link, now, e.reason());
                return;
            }
        };
        let session = Session::from_claims(&claims);
        let Some(guard) = conn.guard.as_mut() else {
            return;
        };
        if let ConnAuth::User(old) = guard.auth()
            && old.sub != session.sub
        {
            timers::cut(conn, index, link, now, "token for another user");
            return;
        }
        let frame = client::authenticated_frame(&session.sub, session.exp);
        guard.set_auth(ConnAuth::User(Box::new(session)));
        let ended = conn.subs.names_failing(|n| conn.auth().allows(n));
        if !ended.is_empty() {
            let mut ids = Vec::new();
            for n in &ended {
                // A pending one is released when its reply finds it gone.
                if let Some(Sub::Active(id)) = conn.subs.remove(n) {
                    index.remove(id, slot);
                    conn.out.forget_channel(id);
                    ids.push(id);
                }
            }
            link.release(ids);
            conn.reply(Entry::control(client::ended_frame(&ended, "forbidden")));
        }
        conn.reply(Entry::control(frame));
        self.check_invariants();
    }

    /// Token deadlines, at housekeeping: `token_expiring` a lead before
    /// `exp + jwt_leeway`, 1008 at `exp + jwt_leeway`, 1008 for no
    /// `{"op":"auth"}` in time.
    pub(crate) fn auth_timers(conn: &mut Conn, w: AuthTimerCtx<'_>) -> bool {
        let Some(guard) = conn.guard.as_mut() else {
            return false;
        };
        let Some(auth) = guard.auth_mut() else {
            return false;
        };
        match auth {
            ConnAuth::Off => false,
            ConnAuth::Waiting { since_ms } => {
                if w.now_ms.saturating_sub(*since_ms) < w.handshake_ms {
                    return false;
                }
                w.refusals.auth(&AuthError::Missing);
                timers::cut(
                    conn,
                    w.index,
                    w.link,
                    w.now_ms,
                    "authentication timeout: no {\"op\":\"auth\"} message",
                );
                true
            }
            ConnAuth::User(s) => {
                // The leeway verify() allowed: a token accepted within it
                // past `exp` lives until `exp + leeway`, not cut at once.
                let deadline = s.exp.saturating_add(w.leeway_s);
                if w.unix_s >= deadline {
                    timers::cut(conn, w.index, w.link, w.now_ms, "token expired");
                    return true;
                }
                if !s.warned && w.unix_s.saturating_add(w.lead_s) >= deadline {
                    s.warned = true;
                    let f = client::token_expiring_frame(s.exp);
                    conn.reply(Entry::control(f));
                    return true;
                }
                false
            }
        }
    }
}

/// What the worker's token timers need of it.
pub struct AuthTimerCtx<'a> {
    /// Worker clock, ms.
    pub now_ms: u64,
    /// Wall clock, unix s.
    pub unix_s: u64,
    /// `token_refresh_lead`, s.
    pub lead_s: u64,
    /// `jwt_leeway`, s.
    pub leeway_s: u64,
    /// `handshake_timeout`, ms: the window for the first-message token.
    pub handshake_ms: u64,
    /// The subscriber index.
    pub index: &'a mut crate::worker::fanout::SubscriberIndex,
    /// The ingest link.
    pub link: &'a mut crate::worker::link::IngestLink,
    /// Refusal counters.
    pub refusals: &'a Refusals,
}

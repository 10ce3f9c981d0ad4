//! Abuse limits: connections and new connections per client address
//! (shared by the workers, checked once per upgrade), messages per
//! connection (a token bucket the connection owns), and which proxies may
//! name the client address. Every refusal is counted by [`Limit`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a limit refused something: `tickwire_limit_rejects_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `max_connections_per_ip`: 503 at upgrade.
    ConnectionsPerIp,
    /// `new_connections_per_ip_per_second`: 429 at upgrade.
    NewConnectionsPerIp,
    /// `client_messages_per_second`: a `rate_limited` error.
    ClientMessages,
    /// A second of messages over the rate: close 1008.
    ClientMessagesClose,
    /// `allowed_origins`: 403 at upgrade.
    Origin,
    /// `max_feed_connections`: an error line, then closed.
    FeedConnections,
    /// `max_connections`: refused at accept.
    Connections,
    /// `handshake_timeout`: an HTTP request or upgrade not done in time.
    HandshakeTimeout,
    /// `max_frame_size`: close 1009.
    FrameTooLarge,
    /// `max_line_size`: an ingest line refused.
    LineTooLong,
    /// `max_channels_per_connection`: a subscribe refused.
    SubscriptionsPerConnection,
    /// `max_channels`: a channel the engine's table has no room for
    /// (a subscribe or a feed line).
    Channels,
}

impl Limit {
    /// Every limit, in metric order.
    pub const ALL: [Limit; 12] = [
        Limit::ConnectionsPerIp,
        Limit::NewConnectionsPerIp,
        Limit::ClientMessages,
        Limit::ClientMessagesClose,
        Limit::Origin,
        Limit::FeedConnections,
        Limit::Connections,
        Limit::HandshakeTimeout,
        Limit::FrameTooLarge,
        Limit::LineTooLong,
        Limit::SubscriptionsPerConnection,
        Limit::Channels,
    ];

    /// The metric label.
    pub const fn label(self) -> &'static str {
        match self {
            Limit::ConnectionsPerIp => "connections_per_ip",
            Limit::NewConnectionsPerIp => "new_connections_per_ip",
            Limit::ClientMessages => "client_messages",
            Limit::ClientMessagesClose => "client_messages_close",
            Limit::Origin => "origin",
            Limit::FeedConnections => "feed_connections",
            Limit::Connections => "connections",
            Limit::HandshakeTimeout => "handshake_timeout",
            Limit::FrameTooLarge => "frame_too_large",
            Limit::LineTooLong => "line_too_long",
            Limit::SubscriptionsPerConnection => "subscriptions_per_connection",
            Limit::Channels => "channels",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// Why a feed's `AUTH` line was refused: labels of their own in
/// `tickwire_auth_failures_total{reason}`, apart from the JWT reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedAuth {
    /// The first line is not `AUTH <token>`.
    Missing,
    /// `AUTH` with another token.
    BadToken,
    /// No line within `handshake_timeout`.
    Timeout,
}

impl FeedAuth {
    /// Every reason, in metric order.
    pub const ALL: [FeedAuth; 3] = [FeedAuth::Missing, FeedAuth::BadToken, FeedAuth::Timeout];

    /// The metric label.
    pub const fn label(self) -> &'static str {
        match self {
            FeedAuth::Missing => "feed_missing",
            FeedAuth::BadToken => "feed_bad_token",
            FeedAuth::Timeout => "feed_timeout",
        }
    }
}

/// Refusals by limit and by authentication failure, shared by every thread;
/// incremented only when something is refused (never per delivery).
#[derive(Debug, Default)]
pub struct Refusals {
    limits: [AtomicU64; Limit::ALL.len()],
    auth: [AtomicU64; crate::auth::AuthError::ALL.len()],
    feed_auth: [AtomicU64; FeedAuth::ALL.len()],
}

impl Refusals {
    /// Counts a limit hit.
    pub fn limit(&self, l: Limit) {
        self.limits[l.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused token.
    pub fn auth(&self, e: &crate::auth::AuthError) {
        self.auth[e.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused feed `AUTH` line.
    pub fn feed_auth(&self, f: FeedAuth) {
        self.feed_auth[f as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Refused feed `AUTH` lines of reason `f` so far.
    pub fn feed_auth_count(&self, f: FeedAuth) -> u64 {
        self.feed_auth[f as usize].load(Ordering::Relaxed)
    }

    /// Hits of `l` so far.
    pub fn limit_count(&self, l: Limit) -> u64 {
        self.limits[l.index()].load(Ordering::Relaxed)
    }

    /// Refused tokens of reason `e` so far.
    pub fn auth_count(&self, e: &crate::auth::AuthError) -> u64 {
        self.auth[e.index()].load(Ordering::Relaxed)
    }
}

/// An address or a network, `10.0.0.0/8`, `::1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an address or CIDR such as 10.0.0.0/8");
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        if bits > max {
            return Err(bad());
        }
        Ok(Cidr { net, bits })
    }
}

impl Cidr {
    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses count as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy,
/// the nearest address its `Forwarded`/`X-Forwarded-For` names that is not
/// itself a trusted proxy (a client can forge the entries left of it).
pub fn client_ip(peer: IpAddr, forwarded: &[IpAddr], trusted: &[Cidr]) -> IpAddr {
    let trusted_ip = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    let mut ip = canonical(peer);
    if !trusted_ip(ip) {
        return ip;
    }
    for &hop in forwarded.iter().rev() {
        ip = canonical(hop);
        if !trusted_ip(ip) {
            break;
        }
    }
    ip
}

#[derive(Debug, Clone, Copy)]
struct PerIp {
    open: u32,
    /// New-connection tokens, in thousandths.
    tokens_milli: u64,
    refilled_ms: u64,
}

const SHARDS: usize = 16;

/// Connections per client address across the workers. Touched once per
/// upgrade and once per close of an upgraded connection, so a sharded lock
/// costs nothing the delivery path sees.
#[derive(Debug)]
pub struct IpTable {
    shards: Box<[Mutex<HashMap<IpAddr, PerIp>>]>,
    max_open: usize,
    per_second: u32,
}

impl IpTable {
    /// A table enforcing `max_open` connections (0: none) and `per_second`
    /// new ones (0: none) per address.
    pub fn new(max_open: usize, per_second: u32) -> IpTable {
        IpTable {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            max_open,
            per_second,
        }
    }

    fn shard(&self, ip: IpAddr) -> &Mutex<HashMap<IpAddr, PerIp>> {
        let h = match ip {
            IpAddr::V4(v) => u64::from(u32::from(v)),
            IpAddr::V6(v) => {
                let x = u128::from(v);
                (x as u64) ^ ((x >> 64) as u64)
            }
        };
        let h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60;
        &self.shards[h as usize % SHARDS]
    }

    /// Whether the table limits anything (else no entry is kept).
    pub fn is_active(&self) -> bool {
        self.max_open > 0 || self.per_second > 0
    }

    /// Admits a new connection from `ip` at `now_ms`, or says which limit
    /// refuses it. An admitted one must be [`IpTable::release`]d.
    ///
    /// # Errors
    /// The limit that refuses it.
    pub fn admit(&self, ip: IpAddr, now_ms: u64) -> Result<(), Limit> {
        let mut map = self.shard(ip).lock().unwrap_or_else(|e| e.into_inner());
        let full = u64::from(self.per_second) * 1000;
        let e = map.entry(ip).or_insert(PerIp {
            open: 0,
            tokens_milli: full,
            refilled_ms: now_ms,
        });
        if self.max_open > 0 && e.open as usize >= self.max_open {
            return Err(Limit::ConnectionsPerIp);
        }
        if self.per_second > 0 {
            let elapsed = now_ms.saturating_sub(e.refilled_ms);
            e.tokens_milli = (e.tokens_milli + elapsed * u64::from(self.per_second)).min(full);
            e.refilled_ms = now_ms;
            if e.tokens_milli < 1000 {
                return Err(Limit::NewConnectionsPerIp);
            }
            e.tokens_milli -= 1000;
        }
        e.open += 1;
        Ok(())
    }

    /// A connection `admit` let in has closed.
    pub fn release(&self, ip: IpAddr, now_ms: u64) {
        let mut map = self.shard(ip).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get_mut(&ip) {
            e.open = e.open.saturating_sub(1);
            if e.open == 0 {
                let full = u64::from(self.per_second) * 1000;
                let refilled = e.tokens_milli
                    + now_ms.saturating_sub(e.refilled_ms) * u64::from(self.per_second);
                if refilled >= full {
                    // Nothing to remember: the bucket is full again.
                    map.remove(&ip);
                }
            }
        }
        // Entries with no connection and a bucket still refilling are swept
        // by the next admit of their shard once full.
        if map.len() > 1024 {
            let per_second = u64::from(self.per_second);
            let full = per_second * 1000;
            map.retain(|_, e| {
                e.open > 0
                    || e.tokens_milli + now_ms.saturating_sub(e.refilled_ms) * per_second < full
            });
        }
    }

    /// Addresses tracked (tests: entries are freed).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }
}

/// A connection's message allowance: a token bucket of two seconds' worth,
/// and the refusals in the current stretch of abuse.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageBucket {
    tokens_milli: u64,
    refilled_ms: u64,
    /// Messages refused since the last second without a refusal.
    strikes: u32,
    /// How long before `refilled_ms` the last refusal was (saturating;
    /// `u32::MAX`: none for 49 days). An offset, not a time, so the bucket
    /// is 24 bytes and the guard that holds it fits an 80-byte malloc
    /// chunk instead of a 96-byte one.
    refused_before_ms: u32,
}

/// What to do with one client message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    /// Within the rate.
    Allow,
    /// Over it: answer `rate_limited`, drop the message.
    Refuse,
    /// Over it for a second's worth of messages: close 1008.
    Cut,
}

impl MessageBucket {
    /// A full bucket at `now_ms`.
    pub fn new(per_second: u32, now_ms: u64) -> MessageBucket {
        MessageBucket {
            tokens_milli: u64::from(per_second) * 2000,
            refilled_ms: now_ms,
            strikes: 0,
            refused_before_ms: u32::MAX,
        }
    }

    /// Takes one message at `now_ms` under `per_second` (0: no limit).
    pub fn take(&mut self, per_second: u32, now_ms: u64) -> Allowance {
        if per_second == 0 {
            return Allowance::Allow;
        }
        let rate = u64::from(per_second);
        let elapsed = now_ms.saturating_sub(self.refilled_ms);
        self.tokens_milli = (self.tokens_milli + elapsed * rate).min(rate * 2000);
        self.refilled_ms = now_ms;
        let since_refusal = u64::from(self.refused_before_ms).saturating_add(elapsed);
        self.refused_before_ms = u32::try_from(since_refusal).unwrap_or(u32::MAX);
        if self.tokens_milli >= 1000 {
            self.tokens_milli -= 1000;
            if since_refusal >= 1000 {
                self.strikes = 0;
            }
            return Allowance::Allow;
        }
        self.refused_before_ms = 0;
        self.strikes += 1;
        if u64::from(self.strikes) >= rate.max(10) {
            Allowance::Cut
        } else {
            Allowance::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn limits_cidr_and_forwarded_client_address() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.1.2.3")) && !c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.9")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("banana".parse::<Cidr>().is_err());
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));

        let trusted = ["10.0.0.0/8".parse().unwrap()];
        // An untrusted peer's header is ignored.
        assert_eq!(
            client_ip(ip("1.2.3.4"), &[ip("9.9.9.9")], &trusted),
            ip("1.2.3.4")
        );
        // A trusted proxy: the nearest untrusted hop, not a forged leftmost one.
        assert_eq!(
            client_ip(
                ip("10.0.0.1"),
                &[ip("6.6.6.6"), ip("5.5.5.5"), ip("10.0.0.2")],
                &trusted
            ),
            ip("5.5.5.5")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), &[], &trusted), ip("10.0.0.1"));
    }

    #[test]
    fn limits_ip_table_counts_open_and_new_connections() {
        let t = IpTable::new(2, 0);
        let a = ip("1.1.1.1");
        assert_eq!(t.admit(a, 0), Ok(()));
        assert_eq!(t.admit(a, 0), Ok(()));
        assert_eq!(t.admit(a, 0), Err(Limit::ConnectionsPerIp));
        assert_eq!(t.admit(ip("2.2.2.2"), 0), Ok(()));
        t.release(a, 0);
        assert_eq!(t.admit(a, 0), Ok(()));
        t.release(a, 0);
        t.release(a, 0);
        t.release(ip("2.2.2.2"), 0);
        assert_eq!(t.tracked(), 0, "entries are freed when the last closes");

        let r = IpTable::new(0, 5);
        for _ in 0..5 {
            assert_eq!(r.admit(a, 1000), Ok(()));
        }
        assert_eq!(r.admit(a, 1000), Err(Limit::NewConnectionsPerIp));
        // 200 ms refill one token at 5/s.
        assert_eq!(r.admit(a, 1200), Ok(()));
        assert_eq!(r.admit(a, 1200), Err(Limit::NewConnectionsPerIp));
        for _ in 0..6 {
            r.release(a, 1200);
        }
        assert_eq!(r.tracked(), 1, "the empty bucket is remembered");
        r.release(a, 5000);
        assert_eq!(r.tracked(), 0);
    }

    #[test]
    fn limits_message_bucket_refuses_then_cuts() {
        let mut b = MessageBucket::new(10, 0);
        for _ in 0..20 {
            assert_eq!(b.take(10, 0), Allowance::Allow, "two seconds' burst");
        }
        for _ in 0..9 {
            assert_eq!(b.take(10, 0), Allowance::Refuse);
        }
        // 100 ms: one more token.
        assert_eq!(b.take(10, 100), Allowance::Allow);
        assert_eq!(b.take(10, 100), Allowance::Cut, "ten refusals in a stretch");
        let mut quiet = MessageBucket::new(10, 0);
        for _ in 0..25 {
            quiet.take(10, 0);
        }
        // A calm second later the stretch is forgiven.
        assert_eq!(quiet.take(10, 2000), Allowance::Allow);
        assert_eq!(quiet.strikes, 0);
        assert_eq!(MessageBucket::default().take(0, 0), Allowance::Allow);
    }

    /// The stretch of refusals ends with the first message allowed a full
    /// second after the last refusal, counted across allowed messages in
    /// between (the refusal's time is kept as an offset), and not before.
    #[test]
    fn limits_message_bucket_forgives_a_second_after_the_last_refusal() {
        let mut b = MessageBucket::new(10, 5_000);
        for _ in 0..20 {
            b.take(10, 5_000);
        }
        assert_eq!(b.take(10, 5_000), Allowance::Refuse);
        assert_eq!(b.take(10, 5_050), Allowance::Refuse);
        // Allowed 450 and 900 ms after the last refusal: still a stretch.
        assert_eq!(b.take(10, 5_500), Allowance::Allow);
        assert_eq!(b.take(10, 5_950), Allowance::Allow);
        assert_eq!(b.strikes, 2);
        // 1,000 ms after it, across those two refills: forgiven.
        assert_eq!(b.take(10, 6_050), Allowance::Allow);
        assert_eq!(b.strikes, 0);
        // Weeks of silence saturate the offset instead of wrapping it.
        let mut idle = MessageBucket::new(10, 0);
        for _ in 0..21 {
            idle.take(10, 0);
        }
        assert_eq!(idle.strikes, 1);
        let later = 60 * 86_400_000;
        assert_eq!(idle.take(10, later), Allowance::Allow);
        assert_eq!(idle.strikes, 0);
        assert_eq!(idle.refused_before_ms, u32::MAX);
        assert_eq!(std::mem::size_of::<MessageBucket>(), 24);
    }
}

//! Hot-path field extraction from update frames by byte scanning (no JSON
//! parse): `"t":` (send timestamp), `"seq":`, `"n":`, `"ch":"..."` and the
//! frame `"type"`. Assumes the keys appear once at the level we care about,
//! which holds for the engine's envelope and feedsim's ticks.

use memchr::memmem::Finder;
use std::sync::LazyLock;

static F_T: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"t\":"));
static F_SEQ: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"seq\":"));
static F_N: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"n\":"));
static F_CH: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"ch\":"));
static F_TYPE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"type\":"));

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    Update,
    Subscribed,
    Error,
    Other,
    /// No `"type"` key at all.
    Missing,
}

fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\r' | b'\n') {
        i += 1;
    }
    i
}

/// Unsigned integer right after `key` (a finder for `"key":`).
fn uint_after(s: &[u8], f: &Finder<'_>) -> Option<u64> {
    let at = f.find(s)? + f.needle().len();
    let mut i = skip_ws(s, at);
    let start = i;
    let mut v: u64 = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        v = v.checked_mul(10)?.checked_add((s[i] - b'0') as u64)?;
        i += 1;
    }
    (i > start).then_some(v)
}

/// String value (without escapes, which channel names never have).
fn str_after<'a>(s: &'a [u8], f: &Finder<'_>) -> Option<&'a [u8]> {
    let at = f.find(s)? + f.needle().len();
    let i = skip_ws(s, at);
    if s.get(i) != Some(&b'"') {
        return None;
    }
    let rest = &s[i + 1..];
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

/// The tick's intended send time in realtime nanoseconds.
#[inline]
pub fn t_ns(s: &[u8]) -> Option<u64> {
    uint_after(s, &F_T)
}

#[inline]
pub fn seq(s: &[u8]) -> Option<u64> {
    uint_after(s, &F_SEQ)
}

/// feedsim's per-channel counter, the sequence used for NATS.
#[inline]
pub fn n(s: &[u8]) -> Option<u64> {
    uint_after(s, &F_N)
}

#[inline]
pub fn ch(s: &[u8]) -> Option<&[u8]> {
    str_after(s, &F_CH)
}

#[inline]
pub fn frame_type(s: &[u8]) -> FrameType {
    match str_after(s, &F_TYPE) {
        Some(b"update") => FrameType::Update,
        Some(b"subscribed") => FrameType::Subscribed,
        Some(b"error") => FrameType::Error,
        Some(_) => FrameType::Other,
        None => FrameType::Missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPD: &[u8] = br#"{"type":"update","ch":"AAPL","seq":42,"data":{"ch":"AAPL","n":7,"t":1700000000123456789,"bid":101.25,"ask":101.27,"bid_size":300,"ask_size":500}}"#;

    #[test]
    fn scans_update() {
        assert_eq!(frame_type(UPD), FrameType::Update);
        assert_eq!(ch(UPD), Some(&b"AAPL"[..]));
        assert_eq!(seq(UPD), Some(42));
        assert_eq!(n(UPD), Some(7));
        assert_eq!(t_ns(UPD), Some(1_700_000_000_123_456_789));
    }

    #[test]
    fn tolerates_whitespace_and_absence() {
        let s = br#"{ "type" : "subscribed", "channels": ["A"] }"#;
        // `"type" :` has a space before the colon: not our format, reported as missing.
        assert_eq!(frame_type(s), FrameType::Missing);
        let s = br#"{"type": "error", "code":"x"}"#;
        assert_eq!(frame_type(s), FrameType::Error);
        assert_eq!(t_ns(br#"{"t": 15}"#), Some(15));
        assert_eq!(t_ns(br#"{"type":"update"}"#), None);
        assert_eq!(seq(br#"{"seq":"x"}"#), None);
        assert_eq!(seq(br#"{"seq":99999999999999999999999}"#), None);
    }
}

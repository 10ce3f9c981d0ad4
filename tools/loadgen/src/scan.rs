//! Hot-path field extraction from update frames by byte scanning (no JSON
//! parse): `"t":` (send timestamp), `"seq":`, `"n":`, `"ch":"..."` and the
//! frame `"type"`. Assumes the keys appear once at the level we care about,
//! which holds for the engine's envelope and feedsim's ticks.
//!
//! [`update`] reads the envelope tickwire and the baseline write, with
//! feedsim's tick inside, by position: at millions of deliveries a second
//! the load generator's own CPU caps what a step can measure, and four
//! substring searches per message were most of it. Any other layout falls
//! back to the searches, with the same answers.

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
    leading_uint(&s[skip_ws(s, at)..]).map(|(v, _)| v)
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

/// Digits at the start of `s` and what follows them; `None` without digits
/// or past `u64`.
#[inline]
fn leading_uint(s: &[u8]) -> Option<(u64, &[u8])> {
    let n = s
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    if n == 0 {
        return None;
    }
    let (digits, rest) = s.split_at(n);
    // 19 digits always fit in a u64; more may not.
    let v = if n <= 19 {
        fold_digits(digits)
    } else {
        digits.iter().try_fold(0u64, |v, &b| {
            v.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        })?
    };
    Some((v, rest))
}

/// The value of at most 19 ASCII digits, eight at a time: a send time has
/// 19, and one at a time they were a fifth of the reader's CPU.
#[inline]
fn fold_digits(mut d: &[u8]) -> u64 {
    debug_assert!(d.len() <= 19 && d.iter().all(u8::is_ascii_digit));
    let mut v = 0u64;
    while let Some((eight, rest)) = d.split_first_chunk::<8>() {
        v = v * 100_000_000 + eight_digits(*eight);
        d = rest;
    }
    for &b in d {
        v = v * 10 + u64::from(b - b'0');
    }
    v
}

/// Eight ASCII digits (most significant first) as a number, in three
/// multiplications: pairs, then fours, then the eight.
#[inline]
fn eight_digits(b: [u8; 8]) -> u64 {
    let v = u64::from_le_bytes(b) - 0x3030_3030_3030_3030;
    // Each even byte becomes 10 * digit + the next digit.
    let v = v.wrapping_mul(10).wrapping_add(v >> 8);
    const PAIRS: u64 = 0x0000_00FF_0000_00FF;
    let hi = (v & PAIRS).wrapping_mul(100 + (1_000_000 << 32));
    let lo = ((v >> 16) & PAIRS).wrapping_mul(1 + (10_000 << 32));
    hi.wrapping_add(lo) >> 32
}

/// An update's channel, seq and send time (`t`, if the payload has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Update<'a> {
    pub ch: &'a [u8],
    pub seq: u64,
    pub t_ns: Option<u64>,
}

/// The fields of an update frame, or `None` for a frame that is not one (or
/// lacks `ch` or `seq`). Same answers as [`frame_type`], [`ch`], [`seq`] and
/// [`t_ns`] together.
#[inline]
pub fn update(m: &[u8]) -> Option<Update<'_>> {
    update_by_position(m).or_else(|| update_by_search(m))
}

/// The same fields found by searching, whatever the layout.
fn update_by_search(m: &[u8]) -> Option<Update<'_>> {
    match frame_type(m) {
        // Peers that omit "type" still count if the frame carries a seq.
        FrameType::Update | FrameType::Missing => Some(Update {
            seq: seq(m)?,
            ch: ch(m)?,
            t_ns: t_ns(m),
        }),
        _ => None,
    }
}

/// `{"type":"update","ch":"C","seq":N,"data":{"ch":"C","n":N,"t":T...`,
/// read without searching; `None` where the layout differs.
#[inline]
fn update_by_position(m: &[u8]) -> Option<Update<'_>> {
    let rest = m.strip_prefix(b"{\"type\":\"update\",\"ch\":\"")?;
    let end = memchr::memchr(b'"', rest)?;
    let ch = &rest[..end];
    let rest = rest[end..].strip_prefix(b"\",\"seq\":")?;
    let (seq, rest) = leading_uint(rest)?;
    let data = rest.strip_prefix(b",\"data\":")?;
    // The first `"t":` in the frame is the payload's: the envelope has none.
    let t_ns = match tick_t(data) {
        Some(t) => Some(t),
        None => t_ns(data),
    };
    Some(Update { ch, seq, t_ns })
}

/// `t` of feedsim's `{"ch":"C","n":N,"t":T`, by position.
#[inline]
fn tick_t(data: &[u8]) -> Option<u64> {
    let rest = data.strip_prefix(b"{\"ch\":\"")?;
    let end = memchr::memchr(b'"', rest)?;
    let rest = rest[end..].strip_prefix(b"\",\"n\":")?;
    let (_, rest) = leading_uint(rest)?;
    let rest = rest.strip_prefix(b",\"t\":")?;
    leading_uint(rest).map(|(t, _)| t)
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

    /// Every field `update` reads by position, checked against the searches
    /// on frames that match the layout, break it at each byte, or differ.
    #[test]
    fn update_by_position_agrees_with_the_searches() {
        let tick = br#"{"type":"update","ch":"AAPL","seq":42,"data":{"ch":"AAPL","n":7,"t":1700000000123456789,"bid":1.5}}"#;
        let u = update_by_position(tick).expect("the layout is read by position");
        assert_eq!(
            u,
            Update {
                ch: b"AAPL",
                seq: 42,
                t_ns: Some(1_700_000_000_123_456_789)
            }
        );
        let mut frames: Vec<Vec<u8>> = vec![
            tick.to_vec(),
            UPD.to_vec(),
            br#"{"type":"update","ch":"A","seq":1,"data":{"p":1,"t":9}}"#.to_vec(),
            br#"{"type":"update","ch":"A","seq":1,"data":{"p":1}}"#.to_vec(),
            br#"{"type":"update","ch":"A","seq":99999999999999999999999,"data":{}}"#.to_vec(),
            br#"{"ch":"A","seq":3,"data":{"t":4}}"#.to_vec(),
            br#"{"type":"subscribed","channels":["A"]}"#.to_vec(),
            br#"{"type":"error","code":"x"}"#.to_vec(),
            br#"{"type":"update","seq":5,"ch":"B","data":{"n":1,"t":2}}"#.to_vec(),
        ];
        // Every byte of the layout changed, and every prefix of it.
        for i in 0..tick.len() {
            let mut m = tick.to_vec();
            m[i] = b'x';
            frames.push(m);
            let mut m = tick.to_vec();
            m[i] = b' ';
            frames.push(m);
            frames.push(tick[..i].to_vec());
        }
        for m in &frames {
            assert_eq!(
                update(m),
                update_by_search(m),
                "{}",
                String::from_utf8_lossy(m)
            );
        }
    }

    #[test]
    fn digits_eight_at_a_time_match_one_at_a_time() {
        let one_at_a_time = |s: &str| {
            s.bytes().try_fold(0u64, |v, b| {
                v.checked_mul(10)?.checked_add(u64::from(b - b'0'))
            })
        };
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut cases: Vec<String> = vec![
            "0".into(),
            "00000000".into(),
            "99999999".into(),
            "1234567812345678123".into(),
            u64::MAX.to_string(),
            "18446744073709551616".into(),
            "000000000000000000001".into(),
            "99999999999999999999".into(),
        ];
        for len in 1..=20 {
            for _ in 0..200 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let digits: String = (0..len)
                    .map(|i| char::from(b'0' + ((x >> (i % 16 * 4)) % 10) as u8))
                    .collect();
                cases.push(digits);
            }
        }
        for c in &cases {
            let with_tail = format!("{c},\"x\"");
            let got = leading_uint(with_tail.as_bytes());
            assert_eq!(got.map(|(v, _)| v), one_at_a_time(c), "{c}");
            if let Some((_, rest)) = got {
                assert_eq!(rest, b",\"x\"", "{c}");
            }
        }
        assert_eq!(leading_uint(b"x1"), None);
        assert_eq!(leading_uint(b""), None);
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

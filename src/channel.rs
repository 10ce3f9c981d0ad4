//! Channel names and ids. The ingest thread interns each channel name once and
//! hands workers a dense `ChannelId`, so the fanout path indexes a `Vec`
//! instead of hashing strings.

/// Longest channel name accepted, in bytes.
pub const CHANNEL_NAME_MAX: usize = 128;

/// Dense id the ingest thread gives each channel, from 0 in order of first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u32);

impl ChannelId {
    /// Marks frames that belong to no channel (acks, errors, pings, closes):
    /// they are never conflated.
    pub const NONE: ChannelId = ChannelId(u32::MAX);

    /// The id as an index into per-channel tables.
    #[inline]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// Whether `name` is a valid channel name: 1 to 128 bytes of `A-Za-z0-9._:-`.
/// That alphabet never needs escaping in JSON, so names are copied into frames
/// as they are.
///
/// # Examples
/// ```
/// assert!(tickwire::channel::is_valid(b"BTC-USD"));
/// assert!(!tickwire::channel::is_valid(b"a b"));
/// ```
#[inline]
pub fn is_valid(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= CHANNEL_NAME_MAX
        && name
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_alphabet_and_length() {
        assert!(is_valid(b"AAPL"));
        assert!(is_valid(b"md:eq.US_AAPL-1"));
        assert!(is_valid(&[b'a'; 128]));
        assert!(!is_valid(&[b'a'; 129]));
        assert!(!is_valid(b""));
        assert!(!is_valid(b"a\"b"));
        assert!(!is_valid(b"a/b"));
        assert!(!is_valid("é".as_bytes()));
    }
}

//! Feed lines (sans-io): each line of a feed connection is one JSON object
//! with a top-level string field `ch`. The parser validates the line with
//! simd-json and finds the channel; the line itself travels on untouched,
//! byte for byte, as the update's `data`.

use simd_json::{Buffers, Node, Tape};

use crate::channel;

/// Why an ingest line was rejected. The text goes back to the feed; the
/// label is the `reason` of `tickwire_ingest_rejects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Not valid JSON.
    BadJson,
    /// Valid JSON but not an object.
    NotObject,
    /// No string `ch` field.
    MissingChannel,
    /// `ch` outside 1..128 bytes of `A-Za-z0-9._:-`.
    BadChannel,
    /// Longer than `max_line_size`.
    LineTooLong,
    /// The engine already tracks `max_channels` channels.
    ChannelLimit,
}

impl Reject {
    /// Every reason, in metric order.
    pub const ALL: [Reject; 6] = [
        Reject::BadJson,
        Reject::NotObject,
        Reject::MissingChannel,
        Reject::BadChannel,
        Reject::LineTooLong,
        Reject::ChannelLimit,
    ];

    /// Position in [`Reject::ALL`] (the metric slot).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label used in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Reject::BadJson => "bad_json",
            Reject::NotObject => "not_object",
            Reject::MissingChannel => "missing_channel",
            Reject::BadChannel => "bad_channel",
            Reject::LineTooLong => "line_too_long",
            Reject::ChannelLimit => "channel_limit",
        }
    }

    /// The human reason sent back on the feed connection.
    pub fn message(self) -> &'static str {
        match self {
            Reject::BadJson => "malformed JSON",
            Reject::NotObject => "not a JSON object",
            Reject::MissingChannel => "missing string field ch",
            Reject::BadChannel => "invalid ch: need 1 to 128 bytes of A-Za-z0-9._:-",
            Reject::LineTooLong => "line too long",
            Reject::ChannelLimit => "too many channels in the engine",
        }
    }
}

/// Parses feed lines, reusing its buffers from line to line (no allocation
/// per line once warm).
pub struct LineParser {
    scratch: Vec<u8>,
    buffers: Buffers,
    tape: Option<Tape<'static>>,
    name: [u8; channel::CHANNEL_NAME_MAX],
}

impl std::fmt::Debug for LineParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineParser").finish_non_exhaustive()
    }
}

impl Default for LineParser {
    fn default() -> Self {
        LineParser {
            scratch: Vec::with_capacity(4096),
            buffers: Buffers::new(4096),
            tape: Some(Tape::null().reset()),
            name: [0; channel::CHANNEL_NAME_MAX],
        }
    }
}

impl LineParser {
    /// The line without a trailing `\r`, or None for a blank line (ignored,
    /// but counted in line numbers).
    pub fn trim(line: &[u8]) -> Option<&[u8]> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        (!line.iter().all(u8::is_ascii_whitespace)).then_some(line)
    }

    /// Validates a (trimmed, non-blank) line and returns its channel name.
    ///
    /// # Errors
    /// The [`Reject`] reason.
    pub fn channel_of(&mut self, line: &[u8]) -> Result<&str, Reject> {
        // simd-json parses in place and reads past the end: parse a padded
        // copy and keep `line` untouched for the frame (byte for byte).
        self.scratch.clear();
        self.scratch.extend_from_slice(line);
        self.scratch
            .resize(line.len() + simd_json::INPUT_PADDING, 0);
        let mut tape = self.tape.take().expect("tape present").reset();
        let parsed = simd_json::fill_tape_padded(
            &mut self.scratch,
            line.len(),
            &mut self.buffers,
            &mut tape,
        );
        let found = match parsed {
            Err(_) => Err(Reject::BadJson),
            Ok(()) => find_channel(&tape.0).map(|name| {
                // Copied out of the tape's borrow, which ends here.
                self.name[..name.len()].copy_from_slice(name.as_bytes());
                name.len()
            }),
        };
        self.tape = Some(tape.reset());
        let len = found?;
        // Valid names are ASCII.
        std::str::from_utf8(&self.name[..len]).map_err(|_| Reject::BadChannel)
    }
}

/// The top-level string field `ch`, validated.
fn find_channel<'t>(nodes: &'t [Node<'_>]) -> Result<&'t str, Reject> {
    let Some(Node::Object { len, .. }) = nodes.first() else {
        return Err(Reject::NotObject);
    };
    // Walk the top-level keys, skipping nested values whole.
    let mut i = 1;
    for _ in 0..*len {
        let key = match nodes.get(i) {
            Some(Node::String(k)) => *k,
            _ => return Err(Reject::BadJson),
        };
        let value = i + 1;
        if key == "ch" {
            return match nodes.get(value) {
                Some(Node::String(ch)) if channel::is_valid(ch.as_bytes()) => Ok(ch),
                Some(Node::String(_)) => Err(Reject::BadChannel),
                _ => Err(Reject::MissingChannel),
            };
        }
        i = value
            + match nodes.get(value) {
                Some(Node::Object { count, .. } | Node::Array { count, .. }) => count + 1,
                _ => 1,
            };
    }
    Err(Reject::MissingChannel)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_top_level_channel_only() {
        let mut p = LineParser::default();
        assert_eq!(
            p.channel_of(br#"{"x":{"ch":"no"},"a":[{"ch":"no"}],"ch":"MSFT"}"#),
            Ok("MSFT")
        );
        assert_eq!(
            p.channel_of(br#"{"ch":"A"} trailing"#),
            Err(Reject::BadJson)
        );
        assert_eq!(LineParser::trim(b" \r"), None);
        assert_eq!(LineParser::trim(b"{}\r"), Some(&b"{}"[..]));
        for (k, r) in Reject::ALL.iter().enumerate() {
            assert_eq!(r.index(), k);
        }
    }
}

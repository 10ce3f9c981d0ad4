//! The resume token of the HTTP transports (SSE event ids, long-poll
//! `since`/`next`): where each channel of a stream is, as text any client
//! can read and build: `NAME~SEQ~EPOCH` entries joined by commas, e.g.
//! `AAPL~41~0123456789abcdef-2,MSFT~7~0123456789abcdef-5`. Channel names
//! (`A-Za-z0-9._:-`) and epochs (hex and `-`) never hold `~` or `,`, so the
//! token needs no escaping and is the same position a WebSocket client sends
//! in `since`.

use crate::ingest::history::Position;

/// Entries in one token at most (a stream has at most
/// `max_channels_per_connection` channels; this bounds the parse).
pub const TOKEN_ENTRIES_MAX: usize = 10_000;

/// One channel's position in a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The channel.
    pub ch: Box<str>,
    /// Its position.
    pub pos: Position,
}

/// Parses a resume token.
///
/// # Errors
/// A one-line reason naming the first bad entry.
pub fn parse(token: &str) -> Result<Vec<Entry>, String> {
    let token = token.trim();
    if token.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (i, part) in token.split(',').enumerate() {
        if i >= TOKEN_ENTRIES_MAX {
            return Err(format!("resume token has over {TOKEN_ENTRIES_MAX} entries"));
        }
        let mut it = part.split('~');
        let (Some(ch), Some(seq), Some(epoch), None) = (it.next(), it.next(), it.next(), it.next())
        else {
            return Err(format!(
                "resume token entry {i} is not NAME~SEQ~EPOCH: {:?}",
                cut(part)
            ));
        };
        if !crate::channel::is_valid(ch.as_bytes()) {
            return Err(format!(
                "resume token entry {i}: invalid channel {:?}",
                cut(ch)
            ));
        }
        let Ok(seq) = seq.parse::<u64>() else {
            return Err(format!(
                "resume token entry {i}: seq {:?} is not a number",
                cut(seq)
            ));
        };
        let epoch_ok = !epoch.is_empty()
            && epoch.len() <= 64
            && epoch.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        if !epoch_ok {
            return Err(format!(
                "resume token entry {i}: bad epoch {:?}",
                cut(epoch)
            ));
        }
        if out.iter().any(|e: &Entry| *e.ch == *ch) {
            continue;
        }
        out.push(Entry {
            ch: ch.into(),
            pos: Position {
                seq,
                epoch: epoch.into(),
            },
        });
    }
    Ok(out)
}

/// Appends the token of `entries` (channel, seq, epoch) to `out`.
pub fn write<'a>(out: &mut Vec<u8>, entries: impl Iterator<Item = (&'a str, u64, &'a str)>) {
    for (i, (ch, seq, epoch)) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(ch.as_bytes());
        out.push(b'~');
        out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
        out.push(b'~');
        out.extend_from_slice(epoch.as_bytes());
    }
}

fn cut(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips() {
        let mut t = Vec::new();
        write(
            &mut t,
            [("AAPL", 41, "00ff-2"), ("user:7", 0, "00ff-5")].into_iter(),
        );
        let t = String::from_utf8(t).unwrap();
        assert_eq!(t, "AAPL~41~00ff-2,user:7~0~00ff-5");
        let e = parse(&t).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(&*e[1].ch, "user:7");
        assert_eq!(e[0].pos.seq, 41);
        assert_eq!(&*e[1].pos.epoch, "00ff-5");
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn bad_tokens_name_the_entry() {
        assert!(parse("AAPL~x~00").unwrap_err().contains("entry 0"));
        assert!(parse("AAPL~1~00,B~2").unwrap_err().contains("entry 1"));
        assert!(parse("A A~1~00").unwrap_err().contains("invalid channel"));
        assert!(parse("A~1~zz").unwrap_err().contains("bad epoch"));
        assert!(parse("A~1~00~4").is_err());
        // A repeated channel keeps its first position.
        assert_eq!(parse("A~1~00,A~9~00").unwrap().len(), 1);
    }
}

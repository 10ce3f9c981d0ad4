//! The client side of a WebSocket connection after the handshake (sans-io):
//! frame parsing with message reassembly, control frames, and the close codes
//! a violation earns. Knows nothing of subscriptions or sockets.

use crate::protocol::frame::{self, CloseCode, FrameError};

/// Reassembly state of one connection: a fragmented message in progress.
/// Empty (no allocation) between messages.
#[derive(Debug, Default)]
pub struct Reassembly {
    /// Payload of the fragmented message so far.
    pub message: Vec<u8>,
    /// Opcode of that message, 0 if none is in progress.
    pub opcode: u8,
}

#[derive(Debug, PartialEq, Eq)]
/// A complete event from the client's frames.
pub enum WsEvent<'a> {
    /// A complete text message.
    Text(&'a [u8]),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping with its payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// A close frame: code (1005 when absent) and reason.
    Close(u16),
}

/// A protocol failure: close with this code and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    /// Close code.
    pub code: CloseCode,
    /// Close reason.
    pub reason: &'static str,
}

impl From<FrameError> for Violation {
    fn from(e: FrameError) -> Self {
        Violation {
            code: e.close_code(),
            reason: e.reason(),
        }
    }
}

/// Parses frames from `buf`, reassembling fragmented messages in `message`
/// (opcode in `message_opcode`), calling `on_event` for each complete event.
/// Returns the bytes consumed; stops after a close frame.
///
/// # Errors
/// A [`Violation`] to close the connection with.
pub fn read_frames(
    buf: &mut [u8],
    max_message: usize,
    message: &mut Vec<u8>,
    message_opcode: &mut u8,
    mut on_event: impl FnMut(WsEvent<'_>),
) -> Result<usize, Violation> {
    let mut used = 0;
    loop {
        let Some((f, n)) = frame::parse_client(&mut buf[used..], max_message)? else {
            return Ok(used);
        };
        used += n;
        match f.opcode {
            frame::OPCODE_PING => on_event(WsEvent::Ping(f.payload)),
            frame::OPCODE_PONG => on_event(WsEvent::Pong),
            frame::OPCODE_CLOSE => {
                let code = match f.payload.len() {
                    0 => 1005,
                    1 => {
                        return Err(Violation {
                            code: CloseCode::Protocol,
                            reason: "invalid close payload",
                        });
                    }
                    _ => {
                        let code = u16::from_be_bytes([f.payload[0], f.payload[1]]);
                        if !close_code_allowed(code) {
                            return Err(Violation {
                                code: CloseCode::Protocol,
                                reason: "invalid close code",
                            });
                        }
                        code
                    }
                };
                if f.payload.len() > 2 && std::str::from_utf8(&f.payload[2..]).is_err() {
                    return Err(Violation {
                        code: CloseCode::InvalidPayload,
                        reason: "close reason is not UTF-8",
                    });
                }
                on_event(WsEvent::Close(code));
                return Ok(used);
            }
            frame::OPCODE_CONTINUATION => {
                if *message_opcode == 0 {
                    return Err(Violation {
                        code: CloseCode::Protocol,
                        reason: "continuation without a message",
                    });
                }
                if message.len() + f.payload.len() > max_message {
                    return Err(FrameError::TooBig.into());
                }
                message.extend_from_slice(f.payload);
                if f.fin {
                    let op = std::mem::replace(message_opcode, 0);
                    emit_message(op, message, &mut on_event)?;
                    message.clear();
                    if message.capacity() > 4096 {
                        *message = Vec::new();
                    }
                }
            }
            op => {
                if *message_opcode != 0 {
                    return Err(Violation {
                        code: CloseCode::Protocol,
                        reason: "new message inside a fragmented one",
                    });
                }
                if f.fin {
                    emit_message(op, f.payload, &mut on_event)?;
                } else {
                    *message_opcode = op;
                    message.extend_from_slice(f.payload);
                }
            }
        }
    }
}

/// Codes a peer may put in a close frame: RFC 6455 7.4.1 and the IANA
/// registry (1012-1014); 1004-1006 and 1015 are reserved, <1000 and
/// 1016-2999 unassigned.
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fn emit_message(
    op: u8,
    payload: &[u8],
    on_event: &mut impl FnMut(WsEvent<'_>),
) -> Result<(), Violation> {
    if op == frame::OPCODE_TEXT {
        if std::str::from_utf8(payload).is_err() {
            return Err(Violation {
                code: CloseCode::InvalidPayload,
                reason: "text message is not UTF-8",
            });
        }
        on_event(WsEvent::Text(payload));
    } else {
        on_event(WsEvent::Binary(payload));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        assert!(payload.len() < 126);
        out.push(0x80 | payload.len() as u8);
        let mask = [9, 8, 7, 6];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn events(wire: &mut [u8]) -> (Result<usize, Violation>, Vec<String>) {
        let mut msg = Vec::new();
        let mut op = 0;
        let mut got = Vec::new();
        let r = read_frames(wire, 1000, &mut msg, &mut op, |e| {
            got.push(format!("{e:?}"))
        });
        (r, got)
    }

    #[test]
    fn reassembles_fragments_with_control_frames_between() {
        let mut wire = masked(frame::OPCODE_TEXT, false, b"{\"op\":");
        wire.extend(masked(frame::OPCODE_PING, true, b"p"));
        wire.extend(masked(frame::OPCODE_CONTINUATION, true, b"1}"));
        wire.extend(masked(frame::OPCODE_TEXT, true, b"x")[..3].iter());
        let (r, got) = events(&mut wire);
        assert_eq!(r.unwrap(), wire.len() - 3);
        assert_eq!(
            got,
            ["Ping([112])", "Text([123, 34, 111, 112, 34, 58, 49, 125])"]
        );
    }

    #[test]
    fn violations_map_to_close_codes() {
        let mut bad_utf8 = masked(frame::OPCODE_TEXT, true, &[0xff, 0xfe]);
        assert_eq!(
            events(&mut bad_utf8).0.unwrap_err().code,
            CloseCode::InvalidPayload
        );
        let mut stray = masked(frame::OPCODE_CONTINUATION, true, b"x");
        assert_eq!(events(&mut stray).0.unwrap_err().code, CloseCode::Protocol);
        let mut nested = masked(frame::OPCODE_TEXT, false, b"a");
        nested.extend(masked(frame::OPCODE_TEXT, true, b"b"));
        assert_eq!(events(&mut nested).0.unwrap_err().code, CloseCode::Protocol);
        let mut close = masked(frame::OPCODE_CLOSE, true, &1000u16.to_be_bytes());
        close.extend(masked(frame::OPCODE_TEXT, true, b"after"));
        let (r, got) = events(&mut close);
        assert_eq!(r.unwrap(), 8);
        assert_eq!(got, ["Close(1000)"]);
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            let mut close = masked(frame::OPCODE_CLOSE, true, &bad.to_be_bytes());
            let v = events(&mut close).0.unwrap_err();
            assert_eq!(
                v,
                Violation {
                    code: CloseCode::Protocol,
                    reason: "invalid close code"
                }
            );
        }
        for good in [1001u16, 1011, 1012, 3000, 4999] {
            let mut close = masked(frame::OPCODE_CLOSE, true, &good.to_be_bytes());
            assert_eq!(events(&mut close).1, [format!("Close({good})")]);
        }
    }
}

//! WebSocket frames on the wire (RFC 6455, 5): a client frame's header read and checked, a
//! payload unmasked, a server frame encoded. Pure functions; `socket` does the reading.

use std::io;

/// The largest control frame's payload (RFC 6455, 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;

/// The longest header: 2 bytes, an 8-byte length and a 4-byte mask.
pub(super) const MAX_HEADER: usize = 14;

/// A control frame to send; server frames are never masked. Binary frames are made by
/// [`binary`], their payload written in place.
#[derive(Debug, Clone, Copy)]
pub enum Frame<'a> {
    Ping,
    Pong(&'a [u8]),
    Close(u16, &'a str),
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The peer broke the protocol: closed with 1002.
    #[error("WebSocket protocol error: {0}")]
    Protocol(&'static str),
    /// A message past the limit: closed with 1009, refused while its first frame's header is read.
    #[error("message of at least {size} bytes, over the limit of {limit}")]
    TooBig { size: u64, limit: usize },
}

/// The frame types this side reads (RFC 6455, 5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    pub(super) fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// A frame's header, as a client must send it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) fin: bool,
    pub(super) opcode: OpCode,
    pub(super) mask: [u8; 4],
    pub(super) len: u64,
}

/// Reads one frame header from the front of `input`: `None` while it is incomplete, else the
/// header and how many bytes it took. Checks everything a header alone can break.
pub(super) fn parse_header(input: &[u8]) -> Result<Option<(Header, usize)>, ReadError> {
    let [first, second, rest @ ..] = input else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        // No extension is ever negotiated, so no reserved bit may be set.
        return Err(ReadError::Protocol("a reserved bit is set"));
    }
    let opcode = OpCode::from_bits(first & 0x0F).ok_or(ReadError::Protocol("unknown opcode"))?;
    let fin = first & 0x80 != 0;
    if second & 0x80 == 0 {
        return Err(ReadError::Protocol("a client frame is not masked"));
    }
    let (len, extended) = match second & 0x7F {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 2),
            _ => return Ok(None),
        },
        127 => match rest.get(..8) {
            Some(bytes) => {
                let mut be = [0; 8];
                be.copy_from_slice(bytes);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(ReadError::Protocol("frame length's top bit is set"));
                }
                (len, 8)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 0),
    };
    let Some(mask) = rest.get(extended..extended + 4) else {
        return Ok(None);
    };
    if opcode.is_control() && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(ReadError::Protocol(
            "a control frame is fragmented or over 125 bytes",
        ));
    }
    let mut key = [0; 4];
    key.copy_from_slice(mask);
    let header = Header {
        fin,
        opcode,
        mask: key,
        len,
    };
    Ok(Some((header, 2 + extended + 4)))
}

/// Unmasks a frame's whole payload.
pub(super) fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (byte, key) in payload.iter_mut().zip(mask.iter().cycle()) {
        *byte ^= key;
    }
}

impl Frame<'_> {
    /// The frame, header and payload together, for one write.
    pub(super) fn encode(self) -> Vec<u8> {
        let (opcode, payload, close_code): (u8, &[u8], Option<u16>) = match self {
            Frame::Ping => (0x9, &[], None),
            Frame::Pong(payload) => (0xA, payload, None),
            Frame::Close(code, reason) => (0x8, reason.as_bytes(), Some(code)),
        };
        let mut out = start(opcode, payload.len() + close_code.map_or(0, |_| 2));
        if let Some(code) = close_code {
            out.extend_from_slice(&code.to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }
}

/// A binary frame of `len` payload bytes, which `fill` writes after the header: the message is
/// encoded once, into the buffer that is sent.
pub(super) fn binary(len: usize, fill: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = start(0x2, len);
    let header = out.len();
    fill(&mut out);
    debug_assert_eq!(out.len() - header, len, "the payload is `len` bytes");
    out
}

/// A final, unmasked frame's header for `len` payload bytes, with room for the payload.
fn start(opcode: u8, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + len);
    out.push(0x80 | opcode);
    match len {
        0..=125 => out.push(len as u8),
        126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_cut_short_is_incomplete_at_every_length() {
        // A masked binary frame with a 64-bit length: the longest header.
        let mut header = vec![0x82, 0xFF];
        header.extend_from_slice(&70_000u64.to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(header.len(), MAX_HEADER);
        for cut in 0..header.len() {
            assert!(parse_header(&header[..cut]).unwrap().is_none(), "{cut}");
        }
        let (parsed, used) = parse_header(&header).unwrap().unwrap();
        assert_eq!(used, MAX_HEADER);
        assert_eq!(
            parsed,
            Header {
                fin: true,
                opcode: OpCode::Binary,
                mask: [1, 2, 3, 4],
                len: 70_000
            }
        );
    }

    #[test]
    fn server_frames_use_the_shortest_length() {
        for (len, header) in [(125, 2), (126, 4), (65_535, 4), (65_536, 10)] {
            let payload = vec![9; len];
            let frame = binary(len, |out| out.extend_from_slice(&payload));
            assert_eq!(frame.len(), header + len, "{len}");
            assert_eq!(frame[0], 0x82);
            assert_eq!(frame[1] & 0x80, 0, "never masked");
        }
        assert_eq!(Frame::Ping.encode(), [0x89, 0]);
        assert_eq!(Frame::Close(1000, "").encode(), [0x88, 2, 0x03, 0xE8]);
    }
}

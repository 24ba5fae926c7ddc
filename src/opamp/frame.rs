//! WebSocket message framing: a varint header (always 0 today) before each protobuf.

use bytes::{BufMut, Bytes};

/// Strips the header from an incoming WebSocket message.
///
/// A header of 0 is the single byte `0x00` (no continuation bit). A message whose first byte is
/// anything else is a legacy headerless one, accepted whole as opamp-go does: a protobuf never
/// starts with `0x00`, tag 0 being illegal. A non-zero header therefore shows up as a protobuf that
/// does not decode, and is answered as malformed by the caller.
pub fn strip_header(message: Bytes) -> Bytes {
    if message.first() == Some(&0) {
        message.slice(1..)
    } else {
        message
    }
}

/// The header's length in bytes (a varint of 0).
pub const HEADER_LEN: usize = 1;

/// Writes `message` with the header in front; always sent, since some clients (Java) always
/// strip one.
pub fn put_with_header(message: &impl prost::Message, out: &mut impl BufMut) {
    out.put_u8(0);
    message.encode_raw(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_forms() {
        assert_eq!(strip_header(Bytes::from_static(&[0, 10, 1])), &[10, 1][..]);
        assert_eq!(strip_header(Bytes::from_static(&[0])), &[][..]);
        assert_eq!(strip_header(Bytes::from_static(&[10, 1])), &[10, 1][..]);
        assert_eq!(strip_header(Bytes::new()), &[][..]);
        assert_eq!(strip_header(Bytes::from_static(&[0, 0, 1])), &[0, 1][..]);
    }
}

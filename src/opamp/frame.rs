//! WebSocket message framing: a varint header (always 0 today) before each protobuf.

use bytes::{BufMut, Bytes, BytesMut};

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

/// Encodes a message with the header in front; always sent, since some clients (Java) always
/// strip one.
pub fn with_header(message: &impl prost::Message) -> Bytes {
    let mut buf = BytesMut::with_capacity(1 + message.encoded_len());
    buf.put_u8(0);
    message.encode_raw(&mut buf);
    buf.freeze()
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

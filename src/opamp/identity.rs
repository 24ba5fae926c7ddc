//! `instance_uid` on the wire: 16 bytes, or a legacy 26-character ULID string that is echoed back
//! exactly as it came.

use bytes::Bytes;
use uuid::Uuid;

use crate::collector::CollectorId;

/// A collector's id together with the form its client uses on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireUid {
    pub id: CollectorId,
    /// The bytes exactly as received, echoed in every reply.
    pub bytes: Bytes,
}

impl WireUid {
    pub fn parse(bytes: Bytes) -> Result<Self, UidError> {
        let id = match bytes.len() {
            16 => Uuid::from_slice(&bytes).map_err(|_| UidError::Length(16))?,
            26 => {
                let text = std::str::from_utf8(&bytes).map_err(|_| UidError::NotUlid)?;
                let ulid = ulid::Ulid::from_string(text).map_err(|_| UidError::NotUlid)?;
                Uuid::from_u128(ulid.0)
            }
            other => return Err(UidError::Length(other)),
        };
        Ok(Self {
            id: CollectorId(id),
            bytes,
        })
    }

    /// The same uid holding its own copy of the bytes: as parsed, they are a slice of the
    /// message they came in, and would keep all of it for as long as the uid is kept.
    #[must_use]
    pub fn detached(self) -> Self {
        Self {
            bytes: Bytes::copy_from_slice(&self.bytes),
            ..self
        }
    }

    /// Legacy clients hold their id as text; anything we hand them must be text too.
    pub fn is_legacy(&self) -> bool {
        self.bytes.len() == 26
    }

    /// How to write `id` for this client: raw bytes, or ULID text for a legacy client.
    pub fn encode_for_client(&self, id: CollectorId) -> Bytes {
        if self.is_legacy() {
            Bytes::from(ulid::Ulid(id.0.as_u128()).to_string())
        } else {
            Bytes::copy_from_slice(id.0.as_bytes())
        }
    }

    /// `id` as this client will hold it once told (`RequestInstanceUid`, or a duplicate uid).
    #[must_use]
    pub fn reassigned(&self, id: CollectorId) -> WireUid {
        WireUid {
            id,
            bytes: self.encode_for_client(id),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UidError {
    #[error("instance_uid must be 16 bytes (or a 26-character legacy ULID), got {0} bytes")]
    Length(usize),
    #[error("26-byte instance_uid is not a valid ULID string")]
    NotUlid,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_bytes_are_the_uuid() {
        let expected = Uuid::now_v7();
        let uid = WireUid::parse(Bytes::copy_from_slice(expected.as_bytes())).unwrap();
        assert_eq!(uid.id.0, expected);
        assert!(!uid.is_legacy());
    }

    #[test]
    fn legacy_ulid_is_accepted_and_written_back_as_text() {
        let text = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
        let uid = WireUid::parse(Bytes::from_static(text.as_bytes())).unwrap();
        assert_eq!(uid.id.0.as_u128(), ulid::Ulid::from_string(text).unwrap().0);
        assert_eq!(uid.encode_for_client(uid.id), text.as_bytes());
    }

    #[test]
    fn other_lengths_are_refused() {
        for len in [0, 1, 15, 17, 25, 27, 36] {
            assert_eq!(
                WireUid::parse(Bytes::from(vec![b'A'; len])).unwrap_err(),
                UidError::Length(len)
            );
        }
        assert_eq!(
            WireUid::parse(Bytes::from(vec![b'!'; 26])).unwrap_err(),
            UidError::NotUlid
        );
    }
}

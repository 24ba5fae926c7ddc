//! How the record's byte fields look in JSON: hashes as hex, file bodies as base64, so stored
//! records and API answers stay readable and round-trip exactly.

/// A time as operators read it: RFC 3339, UTC.
pub fn rfc3339(at: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Hex text back to bytes; `None` unless every pair is a hex byte.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect()
}

pub mod hex {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::collector::machine::hex(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::unhex(&text).ok_or_else(|| D::Error::custom("not a hex string"))
    }
}

pub mod base64 {
    use std::sync::Arc;

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(bytes: &Arc<[u8]>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<[u8]>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map(Into::into)
            .map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use crate::collector::{ConfigFile, PackageOffer};

    #[test]
    fn bytes_round_trip_through_json() {
        let file = ConfigFile {
            content_type: "text/yaml".into(),
            body: (*b"receivers: {}\n\xff").into(),
        };
        let json = serde_json::to_string(&file).unwrap();
        assert_eq!(serde_json::from_str::<ConfigFile>(&json).unwrap(), file);
        let offer = PackageOffer {
            name: "otelcol".into(),
            version: "1.0".into(),
            download_url: "https://example.test/otelcol".into(),
            content_hash: vec![0, 0xab, 0xff],
            signature: vec![],
            hash: vec![1],
        };
        let json = serde_json::to_value(&offer).unwrap();
        assert_eq!(json["content_hash"], "00abff");
        assert_eq!(serde_json::from_value::<PackageOffer>(json).unwrap(), offer);
    }
}

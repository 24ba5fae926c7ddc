//! How the record's fields look when stored and shown: text made storable, hashes as hex, file
//! bodies as base64, so stored records and API answers stay readable and round-trip exactly.

use std::borrow::Cow;

/// The longest text kept from one of a collector's string fields.
pub const MAX_TEXT: usize = 4096;

/// Text as every database can store it: NUL, which PostgreSQL refuses in text and JSON, becomes
/// U+FFFD; beyond `max` bytes it is cut at a character boundary and ends with "…". (Invalid UTF-8
/// never gets this far: the protobuf decoder refuses it.)
pub fn storable(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max && !text.contains('\0') {
        return Cow::Borrowed(text);
    }
    let mut cut = text.len().min(max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = text[..cut].replace('\0', "\u{fffd}");
    if cut < text.len() {
        out.push('…');
    }
    Cow::Owned(out)
}

/// [`storable`] in place, allocating only when the text must change.
pub fn make_storable(text: &mut String) {
    if let Cow::Owned(fixed) = storable(text, MAX_TEXT) {
        *text = fixed;
    }
}

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
    use super::storable;
    use crate::collector::{ConfigFile, PackageOffer};

    #[test]
    fn text_is_made_storable() {
        assert_eq!(storable("fine", 10), "fine");
        assert_eq!(storable("a\0b", 10), "a\u{fffd}b");
        assert_eq!(storable("abcdef", 3), "abc…");
        assert_eq!(storable("éé", 3), "é…", "cut at a character boundary");
    }

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
            kept: Vec::new(),
            all_hash: Vec::new(),
        };
        let json = serde_json::to_value(&offer).unwrap();
        assert_eq!(json["content_hash"], "00abff");
        assert_eq!(serde_json::from_value::<PackageOffer>(json).unwrap(), offer);
    }
}

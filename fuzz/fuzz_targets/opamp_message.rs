//! One WebSocket message as a collector sends it: frame header, protobuf, `instance_uid`, and the
//! translation into the collector's report (`opampd::opamp::decode_ws_message`).
//!
//! Beyond "no panic": every refusal is a BAD_REQUEST; the uid is written back for the client in a
//! form that names the same collector; every string the report carries into the store is storable
//! (no NUL, cut at `MAX_TEXT`); and each facts part round-trips through JSON, which is how the
//! store keeps it, to an equal value.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use opampd::collector::Report;
use opampd::collector::encoding::MAX_TEXT;
use opampd::opamp::{OpampError, WireUid, decode_ws_message};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    match decode_ws_message(Bytes::copy_from_slice(data)) {
        Ok(decoded) => {
            check_uid(&decoded.sent);
            check_report(&decoded.report);
        }
        Err(OpampError::BadRequest { .. }) => {}
        Err(other) => panic!("a message was refused with {other:?}, not BAD_REQUEST"),
    }
});

fn check_uid(sent: &WireUid) {
    assert!(matches!(sent.bytes.len(), 16 | 26));
    let again = WireUid::parse(sent.encode_for_client(sent.id)).expect("our own uid parses");
    assert_eq!(
        again.id, sent.id,
        "the uid written back names another collector"
    );
    if !sent.is_legacy() {
        assert_eq!(again.bytes, sent.bytes, "a 16-byte uid is echoed exactly");
    }
}

fn check_report(report: &Report) {
    round_trip(&report.description);
    round_trip(&report.health);
    round_trip(&report.effective_config);
    round_trip(&report.remote_config_status);
    round_trip(&report.package_statuses);
    round_trip(&report.available_components);
}

/// Stored as JSON and read back: the same value, and every piece of collector text storable.
fn round_trip<T>(part: &Option<T>)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let Some(part) = part else { return };
    let json = serde_json::to_vec(part).expect("a report part serialises");
    let back: T = serde_json::from_slice(&json).expect("a stored report part reads back");
    assert_eq!(&back, part, "a report part changed through JSON");
    let value: Value = serde_json::from_slice(&json).expect("JSON");
    storable(&value, "");
}

/// Hashes (hex) and file bodies (base64) are kept whole; everything else the collector wrote is
/// cut to `MAX_TEXT` and has no NUL.
fn storable(value: &Value, key: &str) {
    const WHOLE: [&str; 3] = ["hash", "server_provided_all_packages_hash", "body"];
    match value {
        Value::String(s) if !WHOLE.contains(&key) => text(s),
        Value::Array(items) => items.iter().for_each(|v| storable(v, key)),
        Value::Object(map) => {
            for (k, v) in map {
                text(k);
                storable(v, k);
            }
        }
        _ => {}
    }
}

fn text(s: &str) {
    assert!(!s.contains('\0'), "NUL reached the store: {s:?}");
    assert!(
        s.len() <= MAX_TEXT + '…'.len_utf8(),
        "{} bytes of text",
        s.len()
    );
}

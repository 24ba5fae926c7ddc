//! One plain-HTTP request body: `Content-Encoding` undone by the listener's own decompression
//! layer, the body read under the message limit and the byte budget, then decoded as a WebSocket
//! message is (`opampd::opamp::decode_request`).
//!
//! The first byte picks the form: the rest sent as is; the rest gzipped here and sent as gzip,
//! which must decode exactly as the plain bytes do (same report, or the same refusal, the limit
//! applying to the decompressed size); the rest sent as a gzip stream as it stands (a broken or
//! hostile stream is a 400 or a 413, never more than the limit in memory); or an encoding the
//! server does not take (415).

#![no_main]

use std::io::Write as _;
use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use opampd::net::budget::Budget;
use opampd::opamp::{Decoded, decode_request};

/// Small, so that over-limit bodies and gzip bombs are reached quickly.
const LIMIT: usize = 16 * 1024;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime")
});

fuzz_target!(|data: &[u8]| {
    let Some((&form, rest)) = data.split_first() else {
        return;
    };
    // Larger than any body, so the budget never refuses here: its refusals are tested elsewhere.
    let budget = Budget::new(1 << 30, LIMIT);
    match form % 4 {
        0 => {
            let outcome = post(rest.to_vec(), None, &budget);
            assert_refusal(
                &outcome,
                &[StatusCode::BAD_REQUEST, StatusCode::PAYLOAD_TOO_LARGE],
            );
        }
        1 => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(rest).expect("gzip into memory");
            let gzipped = gz.finish().expect("gzip into memory");
            let plain = post(rest.to_vec(), None, &budget);
            let unzipped = post(gzipped, Some("gzip"), &budget);
            match (&plain, &unzipped) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.sent, b.sent);
                    assert_eq!(a.wants_new_uid, b.wants_new_uid);
                    assert_eq!(a.report, b.report);
                }
                (Err(a), Err(b)) => assert_eq!(a, b, "plain and gzipped refused differently"),
                _ => panic!("plain {plain:?} but gzipped {unzipped:?}"),
            }
        }
        2 => {
            let outcome = post(rest.to_vec(), Some("gzip"), &budget);
            assert_refusal(
                &outcome,
                &[StatusCode::BAD_REQUEST, StatusCode::PAYLOAD_TOO_LARGE],
            );
        }
        _ => {
            let outcome = post(rest.to_vec(), Some("compress"), &budget);
            assert_refusal(&outcome, &[StatusCode::UNSUPPORTED_MEDIA_TYPE]);
        }
    }
    assert_eq!(
        budget.available(),
        1 << 30,
        "bytes still held after the request"
    );
});

fn post(
    body: Vec<u8>,
    encoding: Option<&str>,
    budget: &Arc<Budget>,
) -> Result<Decoded, StatusCode> {
    let mut request =
        Request::post("/v1/opamp").header(header::CONTENT_TYPE, "application/x-protobuf");
    if let Some(encoding) = encoding {
        request = request.header(header::CONTENT_ENCODING, encoding);
    }
    let request = request.body(Body::from(body)).expect("a request");
    RUNTIME
        .block_on(decode_request(request, LIMIT, budget))
        .map_err(|response| response.status())
}

fn assert_refusal(outcome: &Result<Decoded, StatusCode>, allowed: &[StatusCode]) {
    if let Err(status) = outcome {
        assert!(allowed.contains(status), "refused with {status}");
    }
}

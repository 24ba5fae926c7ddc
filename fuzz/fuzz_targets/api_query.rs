//! The REST API's query strings, read before any store is asked (`opampd::api::query`): the
//! collectors list (states, selector, text, sort, limit, cursor), a collector's transitions
//! (limit, cursor), `include`, the event stream's filter, and a configuration diff's versions.
//!
//! Beyond "no panic": accepted values are within their bounds, and a list cursor made for any
//! position reads back as that position (URL encoding, base64 and JSON undone exactly).

#![no_main]

use libfuzzer_sys::fuzz_target;
use opampd::api::query::{
    diff_query, event_filter, include_query, list_cursor, list_query, transitions_query,
};
use opampd::selector::Selector;

fuzz_target!(|raw: &str| {
    if let Ok(list) = list_query(Some(raw)) {
        assert!((1..=500).contains(&list.limit));
        assert_eq!(list.query.limit, list.limit + 1);
        let selector = &list.query.selector;
        assert_eq!(
            Selector::parse(&selector.to_string()).as_ref(),
            Ok(selector)
        );
        // Any text as a position in a sort that is not by time: the cursor must bring it back.
        if !list.query.sort.is_time() {
            let value = list.query.text.clone().unwrap_or_default();
            let cursor = list_cursor(&list.sort_text, value.clone(), raw.to_owned());
            let query = serde_urlencoded::to_string([
                ("sort", list.sort_text.as_str()),
                ("cursor", cursor.as_str()),
            ])
            .expect("a query string");
            let again = list_query(Some(&query)).expect("our own cursor is accepted");
            let after = again.query.after.expect("the cursor's position");
            assert_eq!((after.value, after.id), (value, raw.to_owned()));
            assert_eq!(again.sort_text, list.sort_text);
        }
    }
    if let Ok((limit, _before)) = transitions_query(Some(raw)) {
        assert!((1..=500).contains(&limit));
    }
    let _ = include_query(Some(raw));
    let _ = event_filter(Some(raw));
    if let Ok((from, to)) = diff_query(Some(raw)) {
        assert!(from >= 1 && to >= 1);
    }
});

//! Label selectors as operators type them (`opampd::selector::Selector::parse`).
//!
//! Beyond "no panic": an error points inside the text; a selector that parses holds only valid
//! label text, renders to text that parses back to the same selector, survives JSON (rollouts
//! store their selector so), and matches the labels it requires.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use opampd::selector::{Requirement, Selector, valid_label_text};

fuzz_target!(|text: &str| {
    let selector = match Selector::parse(text) {
        Ok(selector) => selector,
        Err(err) => {
            assert!(
                err.position <= text.len(),
                "{err} is past the end of {text:?}"
            );
            return;
        }
    };
    let mut labels = BTreeMap::new();
    for requirement in &selector.0 {
        let (key, values): (&String, Vec<&String>) = match requirement {
            Requirement::Equals(k, v) | Requirement::NotEquals(k, v) => (k, vec![v]),
            Requirement::In(k, vs) | Requirement::NotIn(k, vs) => (k, vs.iter().collect()),
            Requirement::Exists(k) | Requirement::Absent(k) => (k, vec![]),
        };
        assert!(valid_label_text(key), "key {key:?}");
        assert!(
            values.iter().all(|v| valid_label_text(v)),
            "values {values:?}"
        );
        if let Requirement::Equals(k, v) = requirement {
            labels.insert(k.clone(), v.clone());
        }
    }
    let rendered = selector.to_string();
    assert_eq!(
        Selector::parse(&rendered).as_ref(),
        Ok(&selector),
        "{text:?} rendered as {rendered:?}"
    );
    let json = serde_json::to_string(&selector).expect("a selector serialises");
    assert_eq!(
        serde_json::from_str::<Selector>(&json).ok().as_ref(),
        Some(&selector)
    );
    // A selector of equalities alone matches the labels it names (and nothing else is needed).
    let only_equals = selector
        .0
        .iter()
        .all(|r| matches!(r, Requirement::Equals(..)));
    let consistent = labels.len()
        == selector
            .0
            .iter()
            .filter(|r| matches!(r, Requirement::Equals(..)))
            .count();
    if only_equals && consistent {
        assert!(
            selector.matches(&labels),
            "{selector} does not match {labels:?}"
        );
    } else {
        let _ = selector.matches(&labels);
    }
});

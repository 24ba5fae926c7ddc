//! A configuration version's checks: YAML, a mapping at the top, a pipeline, the components it
//! needs, its hash (`opampd::fleet::configuration::prepare`).
//!
//! The input is one file's body, or several separated by NUL. Beyond "no panic": a version that
//! passes has the hash `hash` gives its files, component names `kind/type` of the known kinds in
//! sorted order without repeats, and passes again with the same result.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use opampd::fleet::configuration::{COMPONENT_KINDS, ConfigurationFile, hash, prepare};

fuzz_target!(|text: &str| {
    let files: BTreeMap<String, ConfigurationFile> = text
        .split('\0')
        .enumerate()
        .map(|(i, body)| {
            (
                format!("collector-{i}.yaml"),
                ConfigurationFile {
                    content_type: "text/yaml".into(),
                    body: body.into(),
                },
            )
        })
        .collect();
    let Ok(prepared) = prepare("fuzz", files.clone()) else {
        return;
    };
    assert_eq!(prepared.files, files);
    assert_eq!(prepared.hash, hash(&files));
    assert_eq!(prepared.hash.len(), 64);
    assert!(
        prepared.components.windows(2).all(|w| w[0] < w[1]),
        "{:?} not sorted and unique",
        prepared.components
    );
    for component in &prepared.components {
        let (kind, _) = component.split_once('/').expect("kind/type");
        assert!(COMPONENT_KINDS.contains(&kind), "{component}");
    }
    assert_eq!(prepare("fuzz", files).as_ref(), Ok(&prepared));
});

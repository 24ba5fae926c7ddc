//! The package contract: what a package offer lists (the offered package and every package the
//! collector is to keep, since a collector removes what an offer does not list) and the
//! `all_packages_hash` over them, by the specification's rules. Pure.

use sha2::Digest as _;

use super::{KeptPackage, PackageOffer, PackageStatuses};

/// `offer` completed for a collector whose last package statuses are `reported`: every other
/// package it reports having from a server (it names a version a server offered, and has one
/// itself) is listed as kept, at the version and hash it has, so it does not remove it; and the
/// all-packages hash is computed over the whole list.
pub fn listing(mut offer: PackageOffer, reported: Option<&PackageStatuses>) -> PackageOffer {
    offer.kept = reported
        .map(|statuses| {
            statuses
                .packages
                .iter()
                .filter(|(name, s)| {
                    **name != offer.name
                        && !s.agent_has_version.is_empty()
                        && !s.server_offered_version.is_empty()
                })
                .map(|(name, s)| KeptPackage {
                    name: name.clone(),
                    version: s.agent_has_version.clone(),
                    hash: s.agent_has_hash.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    offer.all_hash = all_packages_hash(
        std::iter::once((offer.name.as_str(), offer.hash.as_slice())).chain(
            offer
                .kept
                .iter()
                .map(|k| (k.name.as_str(), k.hash.as_slice())),
        ),
    );
    offer
}

/// The aggregate hash of all packages (the specification: over all package names and content):
/// SHA-256 over each package, in name order, as its name and its package hash (which covers its
/// content), each preceded by its length as 8 big-endian bytes.
pub fn all_packages_hash<'a>(packages: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let mut sorted: Vec<(&str, &[u8])> = packages.into_iter().collect();
    sorted.sort_unstable();
    let mut digest = sha2::Sha256::new();
    for (name, hash) in sorted {
        for part in [name.as_bytes(), hash] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
    }
    digest.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::collector::{PackageState, PackageStatus};

    fn offer(name: &str, hash: &[u8]) -> PackageOffer {
        PackageOffer {
            name: name.into(),
            version: "2".into(),
            download_url: "https://example.com/p".into(),
            content_hash: vec![0; 32],
            signature: Vec::new(),
            hash: hash.to_vec(),
            kept: Vec::new(),
            all_hash: Vec::new(),
        }
    }

    fn status(has: &str, offered: &str, hash: &[u8]) -> PackageStatus {
        PackageStatus {
            agent_has_version: has.into(),
            agent_has_hash: hash.to_vec(),
            server_offered_version: offered.into(),
            status: PackageState::Installed,
            error_message: String::new(),
        }
    }

    #[test]
    fn an_offer_lists_every_package_the_collector_has_from_a_server() {
        let reported = PackageStatuses {
            packages: BTreeMap::from([
                ("otelcol".into(), status("1", "1", b"old")),
                ("plugin".into(), status("0.3", "0.3", b"pl")),
                ("local".into(), status("5", "", b"lo")),
                ("failed".into(), status("", "1", b"")),
            ]),
            ..PackageStatuses::default()
        };
        let listed = listing(offer("otelcol", b"new"), Some(&reported));
        assert_eq!(
            listed.kept,
            [KeptPackage {
                name: "plugin".into(),
                version: "0.3".into(),
                hash: b"pl".to_vec()
            }],
            "the offered one replaces its old version; one installed locally or never had is not ours"
        );
        assert_eq!(
            listed.all_hash,
            all_packages_hash([("plugin", &b"pl"[..]), ("otelcol", &b"new"[..])])
        );
        assert_eq!(listed.all_packages_hash(), listed.all_hash.as_slice());
        let alone = listing(offer("otelcol", b"new"), None);
        assert!(alone.kept.is_empty());
        assert_ne!(alone.all_hash, listed.all_hash, "another set, another hash");
    }

    #[test]
    fn the_all_packages_hash_is_order_free_length_prefixed_and_covers_names_and_hashes() {
        let a = all_packages_hash([("a", &b"1"[..]), ("b", &b"2"[..])]);
        assert_eq!(a, all_packages_hash([("b", &b"2"[..]), ("a", &b"1"[..])]));
        assert_ne!(a, all_packages_hash([("a", &b"1"[..]), ("b", &b"3"[..])]));
        assert_ne!(a, all_packages_hash([("a", &b"1"[..]), ("c", &b"2"[..])]));
        // The length prefixes keep ("ab", "c") apart from ("a", "bc").
        assert_ne!(
            all_packages_hash([("ab", &b"c"[..])]),
            all_packages_hash([("a", &b"bc"[..])])
        );
        let mut expected = sha2::Sha256::new();
        for part in [&b"a"[..], b"1"] {
            expected.update((part.len() as u64).to_be_bytes());
            expected.update(part);
        }
        assert_eq!(
            all_packages_hash([("a", &b"1"[..])]),
            expected.finalize().to_vec()
        );
    }
}

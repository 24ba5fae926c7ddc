//! Facets: what explains a collector's state without being a state of its own (the seven states
//! stay the law): `drifted`, `stale`, `degraded`, each decided here from the record alone.

use sha2::{Digest as _, Sha256};

use super::machine::Collector;
use super::{ConfigFiles, Health, RemoteConfigState};

/// A set of facets, stored as a small integer (bit per facet) so the store can filter on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Facets(u8);

/// Each facet with its bit and its name in the API, filters and metrics.
const NAMES: [(u8, &str); 3] = [(1, "drifted"), (1 << 1, "stale"), (1 << 2, "degraded")];

impl Facets {
    pub const DRIFTED: Self = Self(1);
    pub const STALE: Self = Self(1 << 1);
    pub const DEGRADED: Self = Self(1 << 2);

    pub fn bits(self) -> u8 {
        self.0
    }

    /// The set stored as `bits`; bits this version does not know are dropped.
    pub fn from_bits(bits: i64) -> Self {
        Self(NAMES.iter().fold(0, |set, (bit, _)| {
            if bits & i64::from(*bit) != 0 {
                set | bit
            } else {
                set
            }
        }))
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    #[must_use]
    pub fn with(self, other: Self, on: bool) -> Self {
        if on {
            Self(self.0 | other.0)
        } else {
            Self(self.0 & !other.0)
        }
    }

    /// Every facet, one at a time, with its name.
    pub fn each() -> impl Iterator<Item = (Self, &'static str)> {
        NAMES.iter().map(|(bit, name)| (Self(*bit), *name))
    }

    pub fn names(self) -> Vec<&'static str> {
        Self::each()
            .filter(|(facet, _)| self.contains(*facet))
            .map(|(_, name)| name)
            .collect()
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::each().find(|(_, n)| *n == name).map(|(f, _)| f)
    }
}

impl std::ops::BitOr for Facets {
    type Output = Self;
    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// What "the configuration we had applied" looked like once running: the remote configuration's
/// hash the collector reported applied, and the digest of the first effective configuration it
/// reported with or after that verdict (`None` until one arrives).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DriftBaseline {
    pub config: Vec<u8>,
    pub effective: Option<[u8; 32]>,
}

/// SHA-256 over each file's name, content type and body, each length-prefixed: the effective
/// configuration's hash as the API shows it.
pub fn config_digest(files: &ConfigFiles) -> [u8; 32] {
    let mut digest = Sha256::new();
    for (name, file) in files {
        for part in [name.as_bytes(), file.content_type.as_bytes(), &file.body] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
    }
    digest.finalize().into()
}

/// The baseline after `report` has been applied to `record`. While the collector reports our
/// configuration applied, the first effective configuration seen is the baseline and stays so;
/// any other verdict (applying a new one, failed, none) withdraws it: drift is judged only
/// against a configuration the collector says it runs.
/// `reported` is the digest of the effective configuration the report carried, if it did.
pub fn follow_drift(
    baseline: Option<DriftBaseline>,
    record: &Collector,
    reported: Option<[u8; 32]>,
) -> Option<DriftBaseline> {
    let status = record.remote_config_status.as_ref()?;
    if status.status != RemoteConfigState::Applied || status.hash.is_empty() {
        return None;
    }
    match baseline {
        Some(b) if b.config == status.hash && b.effective.is_some() => Some(b),
        _ => Some(DriftBaseline {
            config: status.hash.clone(),
            effective: reported,
        }),
    }
}

/// Healthy as a whole, yet some component (at any depth) says it is not.
pub fn degraded(health: Option<&Health>) -> bool {
    fn any_unhealthy(h: &Health) -> bool {
        h.components
            .values()
            .any(|c| !c.healthy || any_unhealthy(c))
    }
    health.is_some_and(|h| h.healthy && any_unhealthy(h))
}

/// The facets of `record`; `stale` is the actor's timer's verdict (heartbeats late), and holds
/// only while the collector is connected.
pub fn of(record: &Collector, stale: bool) -> Facets {
    let drifted = record
        .drift
        .as_deref()
        .and_then(|b| b.effective)
        .is_some_and(|baseline| {
            record
                .effective_config
                .as_ref()
                .is_some_and(|files| config_digest(files) != baseline)
        });
    Facets::default()
        .with(Facets::DRIFTED, drifted)
        .with(Facets::STALE, stale && record.connected)
        .with(Facets::DEGRADED, degraded(record.health.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::{CollectorId, ConfigFile, RemoteConfigStatus, Report};

    fn files(body: &str) -> ConfigFiles {
        litemap::LiteMap::from_iter([(
            "collector.yaml".to_owned(),
            ConfigFile {
                content_type: "text/yaml".to_owned(),
                body: body.as_bytes().into(),
            },
        )])
    }

    fn applied(hash: &[u8]) -> RemoteConfigStatus {
        RemoteConfigStatus {
            hash: hash.to_vec(),
            status: RemoteConfigState::Applied,
            error_message: String::new(),
        }
    }

    /// Applies the parts of `report` the facets read, then follows the baseline.
    fn report(c: &mut Collector, report: &Report) {
        if let Some(s) = &report.remote_config_status {
            c.remote_config_status = Some(s.clone());
        }
        if let Some(f) = &report.effective_config {
            c.effective_config = Some(f.clone());
        }
        let baseline = c.drift.take().map(|b| *b);
        let reported = report.effective_config.as_ref().map(config_digest);
        c.drift = follow_drift(baseline, c, reported).map(Box::new);
    }

    #[test]
    fn drift_is_judged_against_the_first_effective_configuration_after_applied() {
        let mut c = Collector::new(CollectorId(uuid::Uuid::nil()));
        c.connected = true;
        // Running something before any configuration of ours: no claim.
        report(
            &mut c,
            &Report {
                effective_config: Some(files("a")),
                ..Report::default()
            },
        );
        assert!(!of(&c, false).contains(Facets::DRIFTED));
        // Applied, the effective configuration following in a later message.
        report(
            &mut c,
            &Report {
                remote_config_status: Some(applied(b"h1")),
                ..Report::default()
            },
        );
        assert!(!of(&c, false).contains(Facets::DRIFTED));
        report(
            &mut c,
            &Report {
                effective_config: Some(files("b")),
                ..Report::default()
            },
        );
        assert!(
            !of(&c, false).contains(Facets::DRIFTED),
            "b is the baseline"
        );
        // It changes on its own: drifted; and back: not.
        report(
            &mut c,
            &Report {
                effective_config: Some(files("c")),
                ..Report::default()
            },
        );
        assert!(of(&c, false).contains(Facets::DRIFTED));
        report(
            &mut c,
            &Report {
                effective_config: Some(files("b")),
                ..Report::default()
            },
        );
        assert!(!of(&c, false).contains(Facets::DRIFTED));
        // Drifted again, then a new configuration is being applied: the claim is withdrawn.
        report(
            &mut c,
            &Report {
                effective_config: Some(files("c")),
                ..Report::default()
            },
        );
        let applying = RemoteConfigStatus {
            status: RemoteConfigState::Applying,
            ..applied(b"h2")
        };
        report(
            &mut c,
            &Report {
                remote_config_status: Some(applying),
                ..Report::default()
            },
        );
        assert!(!of(&c, false).contains(Facets::DRIFTED));
        // Applied with its effective configuration in the same message: that is the baseline.
        report(
            &mut c,
            &Report {
                remote_config_status: Some(applied(b"h2")),
                effective_config: Some(files("c")),
                ..Report::default()
            },
        );
        assert!(!of(&c, false).contains(Facets::DRIFTED));
    }

    #[test]
    fn degraded_is_healthy_with_an_unhealthy_component_at_any_depth() {
        let component = |healthy| Health {
            healthy,
            ..Health::default()
        };
        let tree = |root, inner| Health {
            healthy: root,
            components: litemap::LiteMap::from_iter([(
                "pipeline:traces".to_owned(),
                Health {
                    healthy: true,
                    components: litemap::LiteMap::from_iter([(
                        "exporter:otlp".to_owned(),
                        component(inner),
                    )]),
                    ..Health::default()
                },
            )]),
            ..Health::default()
        };
        assert!(degraded(Some(&tree(true, false))));
        assert!(!degraded(Some(&tree(true, true))));
        assert!(
            !degraded(Some(&tree(false, false))),
            "unhealthy is Error, not degraded"
        );
        assert!(!degraded(None));
    }

    #[test]
    fn stale_holds_only_while_connected_and_names_round_trip() {
        let mut c = Collector::new(CollectorId(uuid::Uuid::nil()));
        c.connected = true;
        assert_eq!(of(&c, true).names(), ["stale"]);
        c.connected = false;
        assert!(of(&c, true).is_empty());
        for (facet, name) in Facets::each() {
            assert_eq!(Facets::parse(name), Some(facet));
            assert_eq!(Facets::from_bits(i64::from(facet.bits())), facet);
        }
        assert_eq!(
            Facets::from_bits(0xf0),
            Facets::default(),
            "unknown bits dropped"
        );
        // store/cluster.rs clears this bit in SQL when it marks a dead node's collectors.
        assert_eq!(Facets::STALE.bits(), 2);
    }
}

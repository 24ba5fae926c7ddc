//! What a rollout sends, built once from its payload: a configuration offer (with the component
//! types it needs) or a package offer, and how a collector's record stands towards it.

use super::engine::FleetError;
use super::rollout::{Outcome, PackageSpec, Target, has_package, runs};
use crate::collector::encoding::unhex;
use crate::collector::{Capabilities, Collector, ConfigFile, ConfigOffer, Event, PackageOffer};
use crate::store::ConfigurationVersion;

/// The fact parts [`What::plan`] reads besides the record's columns.
pub(super) const PLANNED_FROM: &[&str] = &[
    "remote_config_status",
    "available_components",
    "package_statuses",
];

pub(super) enum What {
    Configuration {
        offer: ConfigOffer,
        required: Vec<String>,
    },
    Package(PackageOffer),
}

impl What {
    pub(super) fn hash(&self) -> &[u8] {
        match self {
            What::Configuration { offer, .. } => &offer.hash,
            What::Package(offer) => &offer.hash,
        }
    }

    pub(super) fn event(&self, rollout: &str) -> Event {
        match self {
            What::Configuration { offer, required } => Event::SendConfiguration {
                offer: offer.clone(),
                required: required.clone(),
                rollout: Some(rollout.to_owned()),
            },
            What::Package(offer) => Event::OfferPackage(offer.clone()),
        }
    }

    /// Where a target stands before its batch: queued, or why it is left out.
    pub(super) fn plan(&self, record: &Collector) -> Target {
        let (outcome, missing) = match self {
            What::Configuration { offer, required } => {
                let missing = record.missing(required);
                let outcome = if runs(record, &offer.hash) {
                    Outcome::Skipped
                } else if !reports_configurations(record) {
                    Outcome::Unsupported
                } else if missing.is_empty() {
                    Outcome::Pending
                } else {
                    Outcome::Incompatible
                };
                (outcome, missing)
            }
            What::Package(offer) => {
                let outcome = if !reports_packages(record) {
                    Outcome::Unsupported
                } else if has_package(record, &spec_of(offer)) {
                    Outcome::Skipped
                } else {
                    Outcome::Pending
                };
                (outcome, Vec::new())
            }
        };
        Target {
            collector: record.id,
            outcome,
            batch: None,
            missing,
            error: String::new(),
            components_unknown: record
                .available_components
                .as_ref()
                .and_then(|a| a.components.as_ref())
                .is_none(),
            previous_hash: record
                .remote_config_status
                .as_ref()
                .filter(|s| s.status == crate::collector::RemoteConfigState::Applied)
                .map(|s| crate::collector::machine::hex(&s.hash)),
            rolled_back: false,
            sent_at: None,
        }
    }

    /// A target's outcome once sent, while a connected collector works on it.
    pub(super) fn in_flight(&self) -> Outcome {
        match self {
            What::Configuration { .. } => Outcome::Configuring,
            What::Package(_) => Outcome::Upgrading,
        }
    }

    /// Whether the collector holds this payload as sent and not yet answered.
    pub(super) fn awaited_by(&self, record: &Collector) -> bool {
        match self {
            What::Configuration { offer, .. } => {
                record.config_sent.as_deref() == Some(offer.hash.as_slice())
            }
            What::Package(offer) => record
                .package_offered
                .as_ref()
                .is_some_and(|p| p.hash == offer.hash),
        }
    }
}

/// Whether a configuration sent to this collector can settle: it must accept one and report the
/// verdict (`ReportsRemoteConfig`); one that never reports would hold its batch for ever.
fn reports_configurations(record: &Collector) -> bool {
    let can = record.capabilities;
    can.has(Capabilities::ACCEPTS_REMOTE_CONFIG) && can.has(Capabilities::REPORTS_REMOTE_CONFIG)
}

/// Whether a package offer to this collector can settle: it must accept packages and report
/// their statuses (`ReportsPackageStatuses`), the only way its verdict comes.
fn reports_packages(record: &Collector) -> bool {
    let can = record.capabilities;
    can.has(Capabilities::ACCEPTS_PACKAGES) && can.has(Capabilities::REPORTS_PACKAGE_STATUSES)
}

pub(super) fn spec_of(offer: &PackageOffer) -> PackageSpec {
    PackageSpec {
        name: offer.name.clone(),
        version: offer.version.clone(),
        download_url: offer.download_url.clone(),
        sha256: crate::collector::machine::hex(&offer.content_hash),
        signature: crate::collector::machine::hex(&offer.signature),
    }
}

/// The package offer for `spec`, its hash over every field (length-prefixed).
pub fn package_offer(spec: &PackageSpec) -> Result<PackageOffer, FleetError> {
    use sha2::Digest as _;
    let content_hash = unhex(&spec.sha256)
        .filter(|h| h.len() == 32)
        .ok_or_else(|| FleetError::Invalid("sha256 must be 64 hex digits".into()))?;
    let signature = unhex(&spec.signature)
        .ok_or_else(|| FleetError::Invalid("signature must be hex".into()))?;
    if spec.name.is_empty() || spec.version.is_empty() || spec.download_url.is_empty() {
        return Err(FleetError::Invalid(
            "a package needs a name, a version and a download_url".into(),
        ));
    }
    let mut digest = sha2::Sha256::new();
    for part in [
        spec.name.as_bytes(),
        spec.version.as_bytes(),
        spec.download_url.as_bytes(),
        &content_hash,
        &signature,
    ] {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part);
    }
    Ok(PackageOffer {
        name: spec.name.clone(),
        version: spec.version.clone(),
        download_url: spec.download_url.clone(),
        content_hash,
        signature,
        hash: digest.finalize().to_vec(),
        kept: Vec::new(),
        all_hash: Vec::new(),
    })
}

pub(super) fn offer_of(version: &ConfigurationVersion) -> ConfigOffer {
    ConfigOffer {
        files: version
            .files
            .iter()
            .map(|(name, file)| {
                let file = ConfigFile {
                    content_type: file.content_type.clone(),
                    body: file.body.as_bytes().into(),
                };
                (name.clone(), file)
            })
            .collect(),
        hash: unhex(&version.hash).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::{CollectorId, RemoteConfigState, RemoteConfigStatus};

    fn configuration() -> What {
        What::Configuration {
            offer: ConfigOffer {
                files: crate::collector::ConfigFiles::new(),
                hash: b"h".to_vec(),
            },
            required: Vec::new(),
        }
    }

    fn collector(capabilities: u64) -> Collector {
        let mut c = Collector::new(CollectorId(uuid::Uuid::nil()));
        c.capabilities = Capabilities(capabilities);
        c
    }

    #[test]
    fn a_collector_that_cannot_report_the_verdict_is_refused_up_front() {
        let both = Capabilities::ACCEPTS_REMOTE_CONFIG | Capabilities::REPORTS_REMOTE_CONFIG;
        let what = configuration();
        assert_eq!(what.plan(&collector(both)).outcome, Outcome::Pending);
        for lacking in [
            Capabilities::ACCEPTS_REMOTE_CONFIG,
            Capabilities::REPORTS_REMOTE_CONFIG,
            0,
        ] {
            assert_eq!(
                what.plan(&collector(lacking)).outcome,
                Outcome::Unsupported,
                "capabilities {lacking:#x}"
            );
        }
        let mut running = collector(0);
        running.remote_config_status = Some(RemoteConfigStatus {
            hash: b"h".to_vec(),
            status: RemoteConfigState::Applied,
            error_message: String::new(),
        });
        assert_eq!(
            what.plan(&running).outcome,
            Outcome::Skipped,
            "runs it already"
        );
    }
}

//! A collector's reported facts, part by part: which parts a report changed, so that only those
//! are written. Each part is compared by value with what the record held before the report.

use super::machine::Collector;
use std::sync::Arc;

use super::connection::ConnectionSettingsStatus;
use super::{
    AvailableComponents, ClientCertificate, ConfigFiles, Description, Health, IssuedCertificate,
    PackageStatuses, RemoteConfigStatus, Report,
};

/// The facts parts to write; `None` means unchanged (a part, once reported, is never removed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FactParts {
    pub description: Option<Description>,
    pub health: Option<Health>,
    pub effective_config: Option<ConfigFiles>,
    pub remote_config_status: Option<RemoteConfigStatus>,
    pub package_statuses: Option<Box<PackageStatuses>>,
    pub available_components: Option<AvailableComponents>,
    pub client_certificate: Option<Arc<ClientCertificate>>,
    pub custom_capabilities: Option<Arc<[String]>>,
    pub connection_settings_status: Option<Box<ConnectionSettingsStatus>>,
    pub issued_certificate: Option<Arc<IssuedCertificate>>,
}

/// A set of facts parts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changed(u16);

const DESCRIPTION: u16 = 1;
const HEALTH: u16 = 1 << 1;
const EFFECTIVE_CONFIG: u16 = 1 << 2;
const REMOTE_CONFIG_STATUS: u16 = 1 << 3;
const PACKAGE_STATUSES: u16 = 1 << 4;
const AVAILABLE_COMPONENTS: u16 = 1 << 5;
const CLIENT_CERTIFICATE: u16 = 1 << 6;
const CUSTOM_CAPABILITIES: u16 = 1 << 7;
const CONNECTION_SETTINGS_STATUS: u16 = 1 << 8;
const ISSUED_CERTIFICATE: u16 = 1 << 9;

impl Changed {
    /// Every part the record has: what a record the store has never had must write.
    pub fn all() -> Self {
        Self(0x3ff)
    }

    pub fn any(self) -> bool {
        self.0 != 0
    }

    fn has(self, part: u16) -> bool {
        self.0 & part != 0
    }

    /// Adds the parts `report` carries that differ from what `record` holds: what applying the
    /// report will change (a report's part replaces the record's). Compared in place, before the
    /// report is applied, so nothing is copied to tell.
    #[must_use]
    pub fn by_report(self, record: &Collector, report: &Report) -> Self {
        fn differs<T: PartialEq>(reported: Option<&T>, held: Option<&T>) -> bool {
            reported.is_some() && reported != held
        }
        let mut changed = self.0;
        for (part, differs) in [
            (
                DESCRIPTION,
                differs(report.description.as_ref(), record.description.as_ref()),
            ),
            (
                HEALTH,
                differs(report.health.as_ref(), record.health.as_ref()),
            ),
            (
                EFFECTIVE_CONFIG,
                differs(
                    report.effective_config.as_ref(),
                    record.effective_config.as_ref(),
                ),
            ),
            (
                REMOTE_CONFIG_STATUS,
                differs(
                    report.remote_config_status.as_ref(),
                    record.remote_config_status.as_ref(),
                ),
            ),
            (
                PACKAGE_STATUSES,
                differs(
                    report.package_statuses.as_ref(),
                    record.package_statuses.as_deref(),
                ),
            ),
            (
                CLIENT_CERTIFICATE,
                differs(
                    report.client_certificate.as_ref(),
                    record.client_certificate.as_ref(),
                ),
            ),
            (
                CUSTOM_CAPABILITIES,
                differs(
                    report.custom_capabilities.as_ref(),
                    record.custom_capabilities.as_ref(),
                ),
            ),
            (
                CONNECTION_SETTINGS_STATUS,
                differs(
                    report.connection_settings_status.as_ref(),
                    record.connection_settings_status.as_deref(),
                ),
            ),
            (
                ISSUED_CERTIFICATE,
                differs(
                    report.issued_certificate.as_ref(),
                    record.issued_certificate.as_ref(),
                ),
            ),
        ] {
            if differs {
                changed |= part;
            }
        }
        Self(changed)
    }

    /// Adds the available components part.
    #[must_use]
    pub fn with_available_components(self) -> Self {
        Self(self.0 | AVAILABLE_COMPONENTS)
    }

    /// The changed parts as they are now in `record`.
    pub fn take(self, record: &Collector) -> FactParts {
        // Only what changed is cloned: a report changes one or two parts of ten.
        FactParts {
            description: self.pick(DESCRIPTION, record.description.as_ref()),
            health: self.pick(HEALTH, record.health.as_ref()),
            effective_config: self.pick(EFFECTIVE_CONFIG, record.effective_config.as_ref()),
            remote_config_status: self
                .pick(REMOTE_CONFIG_STATUS, record.remote_config_status.as_ref()),
            package_statuses: self.pick(PACKAGE_STATUSES, record.package_statuses.as_ref()),
            available_components: self
                .pick(AVAILABLE_COMPONENTS, record.available_components.as_ref()),
            client_certificate: self.pick(CLIENT_CERTIFICATE, record.client_certificate.as_ref()),
            custom_capabilities: self
                .pick(CUSTOM_CAPABILITIES, record.custom_capabilities.as_ref()),
            connection_settings_status: self.pick(
                CONNECTION_SETTINGS_STATUS,
                record.connection_settings_status.as_ref(),
            ),
            issued_certificate: self.pick(ISSUED_CERTIFICATE, record.issued_certificate.as_ref()),
        }
    }

    /// A clone of `part`, if the part `bit` changed.
    fn pick<T: Clone>(self, bit: u16, part: Option<&T>) -> Option<T> {
        part.filter(|_| self.has(bit)).cloned()
    }
}

impl FactParts {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Folds newer parts over these: a newer part replaces an older one.
    pub fn merge(&mut self, newer: FactParts) {
        fn over<T>(old: &mut Option<T>, new: Option<T>) {
            if new.is_some() {
                *old = new;
            }
        }
        over(&mut self.description, newer.description);
        over(&mut self.health, newer.health);
        over(&mut self.effective_config, newer.effective_config);
        over(&mut self.remote_config_status, newer.remote_config_status);
        over(&mut self.package_statuses, newer.package_statuses);
        over(&mut self.available_components, newer.available_components);
        over(&mut self.client_certificate, newer.client_certificate);
        over(&mut self.custom_capabilities, newer.custom_capabilities);
        over(
            &mut self.connection_settings_status,
            newer.connection_settings_status,
        );
        over(&mut self.issued_certificate, newer.issued_certificate);
    }

    /// Puts the parts into a record (a stored record being rebuilt).
    pub fn apply_to(self, c: &mut Collector) {
        c.description = self.description;
        c.health = self.health;
        c.effective_config = self.effective_config;
        c.remote_config_status = self.remote_config_status;
        c.package_statuses = self.package_statuses;
        c.available_components = self.available_components;
        c.client_certificate = self.client_certificate;
        c.custom_capabilities = self.custom_capabilities;
        c.connection_settings_status = self.connection_settings_status;
        c.issued_certificate = self.issued_certificate;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::CollectorId;

    fn unhealthy(error: &str) -> Health {
        Health {
            healthy: false,
            last_error: error.into(),
            ..Health::default()
        }
    }

    #[test]
    fn only_reported_parts_that_differ_are_taken() {
        let mut c = Collector::new(CollectorId(uuid::Uuid::nil()));
        c.health = Some(unhealthy("a"));
        let same = Report {
            health: Some(unhealthy("a")),
            ..Report::default()
        };
        assert!(
            !Changed::default().by_report(&c, &same).any(),
            "same health"
        );
        let other = Report {
            health: Some(unhealthy("b")),
            ..Report::default()
        };
        let changed = Changed::default().by_report(&c, &other);
        c.health.clone_from(&other.health);
        let parts = changed.take(&c);
        assert_eq!(parts.health, Some(unhealthy("b")));
        assert!(parts.description.is_none() && parts.effective_config.is_none());
        assert!(
            !Changed::default().by_report(&c, &Report::default()).any(),
            "a heartbeat changes nothing"
        );
    }

    #[test]
    fn newer_parts_win_and_absent_ones_keep_the_older() {
        let mut older = FactParts {
            health: Some(unhealthy("old")),
            description: Some(Description::default()),
            ..FactParts::default()
        };
        older.merge(FactParts {
            health: Some(unhealthy("new")),
            ..FactParts::default()
        });
        assert_eq!(older.health, Some(unhealthy("new")));
        assert_eq!(older.description, Some(Description::default()));
    }
}

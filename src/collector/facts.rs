//! A collector's reported facts, part by part: which parts a report changed, so that only those
//! are written. Each part is compared by value with what the record held before the report.

use super::machine::Collector;
use super::{
    AvailableComponents, ConfigFiles, Description, Health, PackageStatuses, RemoteConfigStatus,
    Report,
};

/// The facts parts to write; `None` means unchanged (a part, once reported, is never removed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FactParts {
    pub description: Option<Description>,
    pub health: Option<Health>,
    pub effective_config: Option<ConfigFiles>,
    pub remote_config_status: Option<RemoteConfigStatus>,
    pub package_statuses: Option<PackageStatuses>,
    pub available_components: Option<AvailableComponents>,
}

/// A set of facts parts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changed(u8);

const DESCRIPTION: u8 = 1;
const HEALTH: u8 = 1 << 1;
const EFFECTIVE_CONFIG: u8 = 1 << 2;
const REMOTE_CONFIG_STATUS: u8 = 1 << 3;
const PACKAGE_STATUSES: u8 = 1 << 4;
const AVAILABLE_COMPONENTS: u8 = 1 << 5;

impl Changed {
    /// Every part the record has: what a record the store has never had must write.
    pub fn all() -> Self {
        Self(0x3f)
    }

    pub fn any(self) -> bool {
        self.0 != 0
    }

    fn has(self, part: u8) -> bool {
        self.0 & part != 0
    }

    /// Adds the parts that differ between `before` (the parts it copied) and `after`.
    #[must_use]
    pub fn between(self, before: &Facts, after: &Collector) -> Self {
        let mut changed = self.0;
        let mut check = |part: u8, differs: bool| {
            if before.carried.has(part) && differs {
                changed |= part;
            }
        };
        check(DESCRIPTION, before.description != after.description);
        check(HEALTH, before.health != after.health);
        check(
            EFFECTIVE_CONFIG,
            before.effective_config != after.effective_config,
        );
        check(
            REMOTE_CONFIG_STATUS,
            before.remote_config_status != after.remote_config_status,
        );
        check(
            PACKAGE_STATUSES,
            before.package_statuses != after.package_statuses,
        );
        check(
            AVAILABLE_COMPONENTS,
            before.available_components != after.available_components,
        );
        Self(changed)
    }

    /// The changed parts as they are now in `record`.
    pub fn take(self, record: &Collector) -> FactParts {
        let part = |bit: u8| self.has(bit);
        FactParts {
            description: record.description.clone().filter(|_| part(DESCRIPTION)),
            health: record.health.clone().filter(|_| part(HEALTH)),
            effective_config: record
                .effective_config
                .clone()
                .filter(|_| part(EFFECTIVE_CONFIG)),
            remote_config_status: record
                .remote_config_status
                .clone()
                .filter(|_| part(REMOTE_CONFIG_STATUS)),
            package_statuses: record
                .package_statuses
                .clone()
                .filter(|_| part(PACKAGE_STATUSES)),
            available_components: record
                .available_components
                .clone()
                .filter(|_| part(AVAILABLE_COMPONENTS)),
        }
    }
}

/// The facts a report is about to overwrite, copied before it is applied so that what it changed
/// can be told after. Only the parts the report carries are copied (a heartbeat copies nothing);
/// configuration bodies and component sets are shared, not copied.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The parts copied; the others are `None` here and not compared.
    carried: Changed,
    description: Option<Description>,
    health: Option<Health>,
    effective_config: Option<ConfigFiles>,
    remote_config_status: Option<RemoteConfigStatus>,
    package_statuses: Option<PackageStatuses>,
    available_components: Option<AvailableComponents>,
}

impl Facts {
    pub fn before(c: &Collector, report: &Report) -> Self {
        let carried = Changed(
            [
                (DESCRIPTION, report.description.is_some()),
                (HEALTH, report.health.is_some()),
                (EFFECTIVE_CONFIG, report.effective_config.is_some()),
                (REMOTE_CONFIG_STATUS, report.remote_config_status.is_some()),
                (PACKAGE_STATUSES, report.package_statuses.is_some()),
                (AVAILABLE_COMPONENTS, report.available_components.is_some()),
            ]
            .into_iter()
            .filter(|(_, present)| *present)
            .fold(0, |bits, (part, _)| bits | part),
        );
        Self {
            carried,
            ..Self::from(carried.take(c))
        }
    }
}

impl From<FactParts> for Facts {
    fn from(p: FactParts) -> Self {
        Self {
            carried: Changed::default(),
            description: p.description,
            health: p.health,
            effective_config: p.effective_config,
            remote_config_status: p.remote_config_status,
            package_statuses: p.package_statuses,
            available_components: p.available_components,
        }
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
    }

    /// Puts the parts into a record (a stored record being rebuilt).
    pub fn apply_to(self, c: &mut Collector) {
        c.description = self.description;
        c.health = self.health;
        c.effective_config = self.effective_config;
        c.remote_config_status = self.remote_config_status;
        c.package_statuses = self.package_statuses;
        c.available_components = self.available_components;
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
        let report = Report {
            health: Some(unhealthy("a")),
            ..Report::default()
        };
        let before = Facts::before(&c, &report);
        assert!(
            !Changed::default().between(&before, &c).any(),
            "same health"
        );
        c.health = Some(unhealthy("b"));
        let changed = Changed::default().between(&before, &c);
        let parts = changed.take(&c);
        assert_eq!(parts.health, Some(unhealthy("b")));
        assert!(parts.description.is_none() && parts.effective_config.is_none());
        let heartbeat = Facts::before(&c, &Report::default());
        c.health = Some(unhealthy("c"));
        assert!(
            !Changed::default().between(&heartbeat, &c).any(),
            "a heartbeat copies and compares nothing"
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

//! A rollout's plan and progress: which collectors it targets, in which batch, and how each one
//! fared. Pure data and rules; the engine carries them out.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::collector::{Collector, CollectorId, PackageState, RemoteConfigState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutOptions {
    /// Collectors in the first batch.
    pub initial_batch: usize,
    /// Each batch is this many times the one before…
    pub multiplier: usize,
    /// …up to this many.
    pub max_batch: usize,
    /// Failures tolerated before the rollout pauses itself.
    pub max_errors: usize,
    /// Send a collector that failed the configuration back to the last one it applied.
    pub rollback: bool,
    /// How long a collector that was sent the payload has to give its verdict before its target
    /// ends `timed_out` (a failure, counted against `max_errors`). 0 when starting: the server's
    /// default, three heartbeat intervals.
    pub timeout_seconds: u64,
}

impl Default for RolloutOptions {
    fn default() -> Self {
        Self {
            initial_batch: 3,
            multiplier: 5,
            max_batch: 100,
            max_errors: 0,
            rollback: false,
            timeout_seconds: 0,
        }
    }
}

impl RolloutOptions {
    /// The size of batch `n` (from 0): `initial × multiplierⁿ`, capped.
    pub fn batch_size(&self, n: usize) -> usize {
        let mut size = self.initial_batch.max(1);
        for _ in 0..n {
            size = size.saturating_mul(self.multiplier.max(1));
            if size >= self.max_batch {
                break;
            }
        }
        size.min(self.max_batch.max(1))
    }
}

/// How one targeted collector fares.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Queued; its batch has not come.
    Pending,
    /// Sent a configuration; its verdict has not come.
    Configuring,
    /// Offered a package; its verdict has not come.
    Upgrading,
    /// Sent while it was away: it gets the configuration when it reconnects.
    Waiting,
    Applied,
    Failed,
    /// It lacks component types the configuration uses; nothing was sent.
    Incompatible,
    /// It already runs this configuration (or package version).
    Skipped,
    /// It cannot take the payload or cannot report how it went, so nothing was sent: a
    /// configuration needs `AcceptsRemoteConfig` and `ReportsRemoteConfig`, a package
    /// `AcceptsPackages`.
    Unsupported,
    /// Sent, but its verdict did not come within the rollout's `timeout_seconds`: a failure.
    TimedOut,
    /// A newer rollout took it over.
    Replaced,
    /// The rollout was cancelled while this target was still open (queued, sent while it was
    /// away, or awaiting its verdict): nothing of the rollout reaches it afterwards. Documents
    /// stored before this outcome existed say `removed`.
    #[serde(alias = "removed")]
    Cancelled,
}

impl Outcome {
    pub const ALL: [Outcome; 12] = [
        Outcome::Pending,
        Outcome::Configuring,
        Outcome::Upgrading,
        Outcome::Waiting,
        Outcome::Applied,
        Outcome::Failed,
        Outcome::Incompatible,
        Outcome::Skipped,
        Outcome::Unsupported,
        Outcome::TimedOut,
        Outcome::Replaced,
        Outcome::Cancelled,
    ];

    /// An outcome as the API and the store spell it ([`Outcome::as_str`]), read back.
    pub fn parse(text: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Configuring => "configuring",
            Outcome::Upgrading => "upgrading",
            Outcome::Waiting => "waiting",
            Outcome::Applied => "applied",
            Outcome::Failed => "failed",
            Outcome::Incompatible => "incompatible",
            Outcome::Skipped => "skipped",
            Outcome::Unsupported => "unsupported",
            Outcome::TimedOut => "timed_out",
            Outcome::Replaced => "replaced",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// Still the rollout's business: a newer rollout may take it over.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            Outcome::Pending | Outcome::Configuring | Outcome::Upgrading | Outcome::Waiting
        )
    }

    /// Sent, and its verdict awaited from a connected collector.
    pub fn in_flight(self) -> bool {
        matches!(self, Outcome::Configuring | Outcome::Upgrading)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Running,
    /// Paused by an operator, or by itself when failures passed `max_errors` (see `reason`).
    Paused,
    Completed,
    Cancelled,
    /// A plan only: nothing was changed.
    DryRun,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Completed => "completed",
            Status::Cancelled => "cancelled",
            Status::DryRun => "dry_run",
        }
    }

    pub fn is_active(self) -> bool {
        matches!(self, Status::Running | Status::Paused)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Target {
    #[schema(value_type = String)]
    pub collector: CollectorId,
    pub outcome: Outcome,
    /// The batch it was sent in (from 0).
    pub batch: Option<usize>,
    /// Component types it lacks (Incompatible).
    pub missing: Vec<String>,
    /// The collector's error message (Failed).
    pub error: String,
    /// It does not report its components, so it was taken as compatible.
    pub components_unknown: bool,
    /// What it ran before (hash), for a rollback.
    pub previous_hash: Option<String>,
    /// It failed and was sent its previous configuration again.
    pub rolled_back: bool,
    /// When it was sent the payload while connected: its verdict is due `timeout_seconds` later.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub sent_at: Option<SystemTime>,
}

impl Target {
    /// Records the outcome of sending: a payload now in a connected collector's hands starts the
    /// clock of its verdict.
    pub fn sent(&mut self, outcome: Outcome, now: SystemTime) {
        if outcome.in_flight() && !self.outcome.in_flight() {
            self.sent_at = Some(now);
        }
        self.outcome = outcome;
    }
}

/// A package to offer: what an upgrade carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PackageSpec {
    pub name: String,
    pub version: String,
    pub download_url: String,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// The file's signature, hex; empty when unsigned.
    #[serde(default)]
    pub signature: String,
}

/// What a rollout carries to its collectors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Payload {
    /// A configuration version.
    Configuration { configuration: String, version: i64 },
    /// A package (an upgrade).
    Package { package: PackageSpec },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Rollout {
    pub id: String,
    #[serde(flatten)]
    pub payload: Payload,
    /// A configuration's hash (its OpAMP `config_hash`), or the package offer's hash.
    pub hash: String,
    pub selector: String,
    pub options: RolloutOptions,
    pub status: Status,
    /// Why it is paused, cancelled or completed, when there is something to say.
    pub reason: String,
    pub created_at: String,
    pub batches_started: usize,
    /// Failures an operator accepted by resuming; only failures beyond these count again.
    pub failures_accepted: usize,
    pub targets: Vec<Target>,
}

impl Rollout {
    pub fn count(&self, outcome: Outcome) -> usize {
        self.targets.iter().filter(|t| t.outcome == outcome).count()
    }

    pub fn progress(&self) -> BTreeMap<&'static str, usize> {
        Outcome::ALL
            .iter()
            .map(|o| (o.as_str(), self.count(*o)))
            .collect()
    }

    /// Its `timeout_seconds`, or `default` where it has none (documents stored before it existed).
    pub fn timeout(&self, default: Duration) -> Duration {
        match self.options.timeout_seconds {
            0 => default,
            seconds => Duration::from_secs(seconds),
        }
    }
}

/// What a collector's record says about this rollout's payload, once sent.
pub fn verdict(record: &Collector, rollout: &Rollout, hash: &[u8]) -> Option<(Outcome, String)> {
    match &rollout.payload {
        Payload::Configuration { .. } => configuration_verdict(record, hash, &rollout.id),
        Payload::Package { package } => package_verdict(record, package),
    }
}

fn package_verdict(record: &Collector, package: &PackageSpec) -> Option<(Outcome, String)> {
    let statuses = record.package_statuses.as_ref()?;
    let status = statuses.packages.get(&package.name)?;
    match status.status {
        PackageState::Installed if status.agent_has_version == package.version => {
            Some((Outcome::Applied, String::new()))
        }
        PackageState::InstallFailed if status.server_offered_version == package.version => {
            let error = if status.error_message.is_empty() {
                statuses.error_message.clone()
            } else {
                status.error_message.clone()
            };
            Some((Outcome::Failed, error))
        }
        _ => None,
    }
}

/// Whether the collector reports this package installed at this version.
pub fn has_package(record: &Collector, package: &PackageSpec) -> bool {
    matches!(
        package_verdict(record, package),
        Some((Outcome::Applied, _))
    )
}

fn configuration_verdict(
    record: &Collector,
    hash: &[u8],
    rollout: &str,
) -> Option<(Outcome, String)> {
    if let Some(status) = record
        .remote_config_status
        .as_ref()
        .filter(|s| s.hash == hash)
    {
        match status.status {
            RemoteConfigState::Applied => return Some((Outcome::Applied, String::new())),
            RemoteConfigState::Failed => {
                return Some((Outcome::Failed, status.error_message.clone()));
            }
            _ => {}
        }
    }
    if record.config_failed.as_deref() == Some(hash) {
        return Some((
            Outcome::Failed,
            record.config_error.clone().unwrap_or_default(),
        ));
    }
    if record.state == Some(crate::collector::State::Incompatible)
        && record.rollout.as_deref() == Some(rollout)
    {
        return Some((Outcome::Incompatible, String::new()));
    }
    None
}

/// Whether the collector already runs the configuration with this hash.
pub fn runs(record: &Collector, hash: &[u8]) -> bool {
    record
        .remote_config_status
        .as_ref()
        .is_some_and(|s| s.hash == hash && s.status == RemoteConfigState::Applied)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn target(n: u128, outcome: Outcome) -> Target {
        Target {
            collector: CollectorId(uuid::Uuid::from_u128(n)),
            outcome,
            batch: None,
            missing: Vec::new(),
            error: String::new(),
            components_unknown: false,
            previous_hash: None,
            rolled_back: false,
            sent_at: None,
        }
    }

    pub(crate) fn rollout(status: Status, targets: Vec<Target>) -> Rollout {
        Rollout {
            id: "r".into(),
            payload: Payload::Configuration {
                configuration: "c".into(),
                version: 1,
            },
            hash: String::new(),
            selector: String::new(),
            options: RolloutOptions::default(),
            status,
            reason: String::new(),
            created_at: String::new(),
            batches_started: 1,
            failures_accepted: 0,
            targets,
        }
    }

    #[test]
    fn documents_stored_with_removed_targets_still_read() {
        let read: Outcome = serde_json::from_str("\"removed\"").unwrap();
        assert_eq!(read, Outcome::Cancelled);
    }

    #[test]
    fn batches_grow_by_the_multiplier_up_to_the_cap() {
        let options = RolloutOptions::default();
        let sizes: Vec<usize> = (0..5).map(|n| options.batch_size(n)).collect();
        assert_eq!(sizes, [3, 15, 75, 100, 100]);
        let odd = RolloutOptions {
            initial_batch: 2,
            multiplier: 2,
            max_batch: 5,
            ..RolloutOptions::default()
        };
        assert_eq!(
            (0..4).map(|n| odd.batch_size(n)).collect::<Vec<_>>(),
            [2, 4, 5, 5]
        );
        let huge = RolloutOptions {
            initial_batch: usize::MAX,
            multiplier: usize::MAX,
            max_batch: usize::MAX,
            ..RolloutOptions::default()
        };
        assert_eq!(huge.batch_size(60), usize::MAX, "no overflow");
    }
}

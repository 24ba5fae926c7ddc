//! A rollout as it is stored and listed: its own fields and counts per outcome in one row, its
//! targets as rows of their own; and how a document from before targets were rows splits into
//! the two.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::rollout::{Payload, Rollout, RolloutOptions, Status, Target};
use crate::store::{Store, StoreError};

/// A rollout without its targets, with how many targets have each outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RolloutSummary {
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
    /// How many targets have each outcome (every outcome present, zero included).
    #[serde(default)]
    pub progress: BTreeMap<String, usize>,
}

impl RolloutSummary {
    /// Counting its targets.
    pub fn of(rollout: &Rollout) -> Self {
        let progress = rollout
            .progress()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        Self::with_progress(rollout, progress)
    }

    /// With counts per outcome already known.
    pub fn with_progress(rollout: &Rollout, progress: BTreeMap<String, usize>) -> Self {
        Self {
            id: rollout.id.clone(),
            payload: rollout.payload.clone(),
            hash: rollout.hash.clone(),
            selector: rollout.selector.clone(),
            options: rollout.options,
            status: rollout.status,
            reason: rollout.reason.clone(),
            created_at: rollout.created_at.clone(),
            batches_started: rollout.batches_started,
            failures_accepted: rollout.failures_accepted,
            progress,
        }
    }

    /// The whole rollout again, from its row and every one of its targets.
    pub fn with_targets(self, targets: Vec<Target>) -> Rollout {
        Rollout {
            id: self.id,
            payload: self.payload,
            hash: self.hash,
            selector: self.selector,
            options: self.options,
            status: self.status,
            reason: self.reason,
            created_at: self.created_at,
            batches_started: self.batches_started,
            failures_accepted: self.failures_accepted,
            targets,
        }
    }
}

/// A stored document as it was before targets were rows: split into the rollout's own document
/// and its targets. `None` when the document has no targets to split out.
pub fn split_legacy(
    document: &serde_json::Value,
) -> Result<Option<(RolloutSummary, Vec<Target>)>, serde_json::Error> {
    if document.get("targets").is_none() {
        return Ok(None);
    }
    let rollout: Rollout = serde_json::from_value(document.clone())?;
    let summary = RolloutSummary::of(&rollout);
    Ok(Some((summary, rollout.targets)))
}

/// Rows read per statement when the engine loads every rollout.
const PAGE: usize = 1000;

/// Every rollout with every one of its targets, oldest first: what the engine starts from.
pub async fn load_all(store: &dyn Store) -> Result<Vec<Rollout>, StoreError> {
    let mut summaries = Vec::new();
    loop {
        let after = summaries.last().map(|s: &RolloutSummary| s.id.clone());
        let page = store.rollout_summaries(after.as_deref(), PAGE).await?;
        let full = page.len() == PAGE;
        summaries.extend(page);
        if !full {
            break;
        }
    }
    let mut rollouts = Vec::with_capacity(summaries.len());
    for summary in summaries.into_iter().rev() {
        let targets = all_targets(store, &summary.id).await?;
        rollouts.push(summary.with_targets(targets));
    }
    Ok(rollouts)
}

/// Every target of one rollout, by collector id.
pub async fn all_targets(store: &dyn Store, id: &str) -> Result<Vec<Target>, StoreError> {
    let mut targets: Vec<Target> = Vec::new();
    loop {
        let after = targets.last().map(|t| t.collector);
        let page = store.rollout_targets(id, after, PAGE, None).await?;
        let full = page.len() == PAGE;
        targets.extend(page);
        if !full {
            return Ok(targets);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::rollout::Outcome;
    use crate::fleet::rollout::tests::{rollout, target};

    #[test]
    fn a_document_with_its_targets_splits_and_counts_them() {
        let old = rollout(
            Status::Cancelled,
            vec![
                target(1, Outcome::Applied),
                target(2, Outcome::Applied),
                target(3, Outcome::Cancelled),
            ],
        );
        let mut document = serde_json::to_value(&old).unwrap();
        document["targets"][2]["outcome"] = "removed".into();
        let (summary, targets) = split_legacy(&document).unwrap().unwrap();
        assert_eq!(targets, old.targets);
        assert_eq!(summary.progress["applied"], 2);
        assert_eq!(summary.progress["cancelled"], 1);
        assert_eq!(summary.progress["pending"], 0);
        let stored = serde_json::to_value(&summary).unwrap();
        assert_eq!(split_legacy(&stored).unwrap(), None, "split once");
        assert_eq!(summary.with_targets(targets), old);
    }
}

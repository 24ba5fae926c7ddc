//! Orders: what operators and the rollout engine ask of a collector (or of the rollout engine),
//! in the form they travel in to the node that can carry them out, with their answers.

use serde::{Deserialize, Serialize};

use crate::collector::handle::Forgotten;
use crate::collector::{CollectorId, Event};
use crate::fleet::engine::{Control, FleetError, NewRollout};
use crate::fleet::rollout::Rollout;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "order", rename_all = "snake_case")]
pub enum Order {
    Restart {
        collector: CollectorId,
    },
    Forget {
        collector: CollectorId,
    },
    /// A fleet event (queue, configure, offer a package, leave a rollout, restart).
    Apply {
        collector: CollectorId,
        event: Event,
    },
    StartRollout {
        rollout: NewRollout,
    },
    ControlRollout {
        id: String,
        control: Control,
    },
}

/// What became of a restart command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Restarted {
    Sent,
    NotConnected,
    NotAccepted,
    Unknown,
}

/// A rollout command's refusal, as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "refusal", content = "message", rename_all = "snake_case")]
pub enum Refusal {
    NotFound(String),
    Conflict(String),
    Invalid(String),
    Unavailable(String),
}

impl From<FleetError> for Refusal {
    fn from(err: FleetError) -> Self {
        match err {
            FleetError::NotFound(m) => Refusal::NotFound(m),
            FleetError::Conflict(m) => Refusal::Conflict(m),
            FleetError::Invalid(m) => Refusal::Invalid(m),
            other @ (FleetError::Store(_) | FleetError::Stopped | FleetError::Elsewhere(_)) => {
                Refusal::Unavailable(other.to_string())
            }
        }
    }
}

impl From<Refusal> for FleetError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NotFound(m) => FleetError::NotFound(m),
            Refusal::Conflict(m) => FleetError::Conflict(m),
            Refusal::Invalid(m) => FleetError::Invalid(m),
            Refusal::Unavailable(m) => FleetError::Elsewhere(m),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "answer", content = "value", rename_all = "snake_case")]
pub enum Answer {
    Restarted(Restarted),
    Forgotten(Forgotten),
    /// Whether a fleet event reached a resident collector.
    Applied(bool),
    Rollout(Result<Box<Rollout>, Refusal>),
    /// The node could not read the order (a newer or older node's).
    Unreadable(String),
}

//! The seven states and the transition table: the diagram of `docs/states.md`, edge for edge,
//! plus the short list of extensions the product needs.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Connected,
    Disconnected,
    Error,
    Configuring,
    Pending,
    Incompatible,
    Upgrading,
}

impl State {
    pub const ALL: [State; 7] = [
        State::Connected,
        State::Disconnected,
        State::Error,
        State::Configuring,
        State::Pending,
        State::Incompatible,
        State::Upgrading,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Connected => "connected",
            State::Disconnected => "disconnected",
            State::Error => "error",
            State::Configuring => "configuring",
            State::Pending => "pending",
            State::Incompatible => "incompatible",
            State::Upgrading => "upgrading",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        State::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a transition happened: the diagram's labels as short codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// `[*] --> Connected`: the first message from a collector never seen before.
    Initial,
    NetworkInterruption,
    CollectorStopped,
    ServerTermination,
    RuntimeError,
    ConfigError,
    UpdateError,
    NewConfiguration,
    QueuedForRollout,
    UnsupportedComponents,
    PackageUpgradeInitiated,
    ConnectionRestored,
    ErrorResolved,
    ConfigApplied,
    ConfigFailed,
    ConfigSent,
    UpgradeSucceeded,
    UpgradeFailed,
    /// Extension: a rollout no longer wants this Pending collector (cancelled, replaced).
    RemovedFromRollout,
}

impl Reason {
    pub const ALL: [Reason; 19] = [
        Reason::Initial,
        Reason::NetworkInterruption,
        Reason::CollectorStopped,
        Reason::ServerTermination,
        Reason::RuntimeError,
        Reason::ConfigError,
        Reason::UpdateError,
        Reason::NewConfiguration,
        Reason::QueuedForRollout,
        Reason::UnsupportedComponents,
        Reason::PackageUpgradeInitiated,
        Reason::ConnectionRestored,
        Reason::ErrorResolved,
        Reason::ConfigApplied,
        Reason::ConfigFailed,
        Reason::ConfigSent,
        Reason::UpgradeSucceeded,
        Reason::UpgradeFailed,
        Reason::RemovedFromRollout,
    ];

    pub fn parse(text: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Initial => "initial",
            Reason::NetworkInterruption => "network_interruption",
            Reason::CollectorStopped => "collector_stopped",
            Reason::ServerTermination => "server_termination",
            Reason::RuntimeError => "runtime_error",
            Reason::ConfigError => "config_error",
            Reason::UpdateError => "update_error",
            Reason::NewConfiguration => "new_configuration",
            Reason::QueuedForRollout => "queued_for_rollout",
            Reason::UnsupportedComponents => "unsupported_components",
            Reason::PackageUpgradeInitiated => "package_upgrade_initiated",
            Reason::ConnectionRestored => "connection_restored",
            Reason::ErrorResolved => "error_resolved",
            Reason::ConfigApplied => "config_applied",
            Reason::ConfigFailed => "config_failed",
            Reason::ConfigSent => "config_sent",
            Reason::UpgradeSucceeded => "upgrade_succeeded",
            Reason::UpgradeFailed => "upgrade_failed",
            Reason::RemovedFromRollout => "removed_from_rollout",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One edge: from a state (`None` is the diagram's `[*]`), to a state, and the reasons that may
/// label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Edge {
    pub from: Option<State>,
    pub to: State,
    pub reasons: &'static [Reason],
}

/// Losing the connection has three causes, whichever state the collector was in.
const LOST: &[Reason] = &[
    Reason::NetworkInterruption,
    Reason::CollectorStopped,
    Reason::ServerTermination,
];

const fn edge(from: State, to: State, reasons: &'static [Reason]) -> Edge {
    Edge {
        from: Some(from),
        to,
        reasons,
    }
}

use State::{Configuring, Connected, Disconnected, Error, Incompatible, Pending, Upgrading};

/// The diagram: the initial edge and its 25 edges, in its order.
pub const EDGES: [Edge; 26] = [
    Edge {
        from: None,
        to: Connected,
        reasons: &[Reason::Initial],
    },
    edge(Connected, Disconnected, LOST),
    edge(
        Connected,
        Error,
        &[
            Reason::RuntimeError,
            Reason::ConfigError,
            Reason::UpdateError,
        ],
    ),
    edge(Connected, Configuring, &[Reason::NewConfiguration]),
    edge(Connected, Pending, &[Reason::QueuedForRollout]),
    edge(Connected, Incompatible, &[Reason::UnsupportedComponents]),
    edge(Connected, Upgrading, &[Reason::PackageUpgradeInitiated]),
    edge(Disconnected, Connected, &[Reason::ConnectionRestored]),
    edge(Error, Connected, &[Reason::ErrorResolved]),
    edge(Error, Disconnected, LOST),
    edge(Error, Configuring, &[Reason::NewConfiguration]),
    edge(Error, Pending, &[Reason::QueuedForRollout]),
    edge(Error, Incompatible, &[Reason::UnsupportedComponents]),
    edge(Error, Upgrading, &[Reason::PackageUpgradeInitiated]),
    edge(Configuring, Connected, &[Reason::ConfigApplied]),
    edge(Configuring, Disconnected, LOST),
    edge(Configuring, Error, &[Reason::ConfigFailed]),
    edge(Pending, Configuring, &[Reason::ConfigSent]),
    edge(Incompatible, Disconnected, LOST),
    edge(Incompatible, Error, &[Reason::RuntimeError]),
    edge(Incompatible, Configuring, &[Reason::NewConfiguration]),
    edge(Incompatible, Pending, &[Reason::QueuedForRollout]),
    edge(Incompatible, Upgrading, &[Reason::PackageUpgradeInitiated]),
    edge(Upgrading, Connected, &[Reason::UpgradeSucceeded]),
    edge(Upgrading, Disconnected, LOST),
    edge(Upgrading, Error, &[Reason::UpgradeFailed]),
];

/// An edge the diagram lacks but the product needs, with why.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Extension {
    #[serde(flatten)]
    pub edge: Edge,
    pub why: &'static str,
}

/// Kept as short as possible; each is documented in `docs/states.md`.
pub const EXTENSIONS: [Extension; 2] = [
    Extension {
        edge: edge(Pending, Disconnected, LOST),
        why: "A queued collector can lose its connection like any other; without this edge a \
              Disconnected collector would keep showing Pending as if it were still connected.",
    },
    Extension {
        edge: edge(Pending, Connected, &[Reason::RemovedFromRollout]),
        why: "A rollout that is cancelled or replaced must release the collectors it queued but \
              never configured; they go back to Connected (and on, by legal edges, to Error if \
              they are unhealthy).",
    },
];

/// Whether `from -> to` for `reason` is an edge of the diagram or a declared extension.
pub fn is_allowed(from: Option<State>, to: State, reason: Reason) -> bool {
    EDGES
        .iter()
        .chain(EXTENSIONS.iter().map(|e| &e.edge))
        .any(|e| e.from == from && e.to == to && e.reasons.contains(&reason))
}

/// The edge's target when `from` has an edge labelled `reason`, if any: the one lookup `step` uses,
/// so no rule can move a collector along an edge the table does not have.
pub fn target(from: Option<State>, reason: Reason) -> Option<State> {
    EDGES
        .iter()
        .chain(EXTENSIONS.iter().map(|e| &e.edge))
        .find(|e| e.from == from && e.reasons.contains(&reason))
        .map(|e| e.to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_the_diagrams_edges() {
        let from_states: Vec<_> = EDGES.iter().filter(|e| e.from.is_some()).collect();
        assert_eq!(from_states.len(), 25);
        // No edge twice, and no edge to the same state.
        for (i, a) in EDGES.iter().enumerate() {
            assert_ne!(a.from, Some(a.to));
            for b in &EDGES[i + 1..] {
                assert!(!(a.from == b.from && a.to == b.to), "{a:?} twice");
            }
        }
    }

    #[test]
    fn a_reason_leads_to_one_target_from_each_state() {
        for from in State::ALL.map(Some).into_iter().chain([None]) {
            for edge in EDGES.iter().filter(|e| e.from == from) {
                for reason in edge.reasons {
                    assert_eq!(target(from, *reason), Some(edge.to));
                }
            }
        }
    }

    #[test]
    fn extensions_are_not_in_the_diagram() {
        for ext in &EXTENSIONS {
            assert!(
                !EDGES
                    .iter()
                    .any(|e| e.from == ext.edge.from && e.to == ext.edge.to)
            );
        }
    }

    #[test]
    fn states_round_trip_through_their_names() {
        for state in State::ALL {
            assert_eq!(State::parse(state.as_str()), Some(state));
        }
    }
}

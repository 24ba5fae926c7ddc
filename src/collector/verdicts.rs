//! What offers and their verdicts do to a collector: a configuration sent (or refused, or
//! Incompatible), APPLIED and FAILED, package statuses, an offer withdrawn by a cancel or too large
//! to send. Part of the pure `step` in `machine`, which calls these.

use std::time::SystemTime;

use super::delivery::TooLarge;
use super::machine::{Collector, Effect, go, hex, settle_errors};
use super::state::{Reason, State};
use super::{
    Capabilities, ConfigOffer, Outbound, PackageState, PackageStatuses, RemoteConfigState,
    RemoteConfigStatus,
};

pub(super) fn on_config_status(
    c: &mut Collector,
    status: &RemoteConfigStatus,
    now: SystemTime,
    out: &mut Vec<Effect>,
) {
    // Only a verdict on the configuration we sent counts as ours.
    if c.config_sent.as_deref() != Some(status.hash.as_slice()) {
        return;
    }
    let cause = Some(hex(&status.hash));
    match status.status {
        RemoteConfigState::Applied => {
            c.config_sent = None;
            c.config_error = None;
            c.rollout = None;
            c.missing_components.clear();
            go(c, Reason::ConfigApplied, "", cause, now, out);
        }
        RemoteConfigState::Failed => {
            fail_configuration(c, &status.hash, &status.error_message, now, out);
        }
        RemoteConfigState::Applying | RemoteConfigState::Unset | RemoteConfigState::Unknown(_) => {}
    }
}

pub(super) fn on_package_statuses(
    c: &mut Collector,
    statuses: &PackageStatuses,
    now: SystemTime,
    out: &mut Vec<Effect>,
) {
    let Some(offer) = c.package_offered.clone() else {
        return;
    };
    let Some(status) = statuses.packages.get(&offer.name) else {
        return;
    };
    let cause = Some(format!("{} {}", offer.name, offer.version));
    match status.status {
        PackageState::Installed if status.agent_has_version == offer.version => {
            c.package_offered = None;
            c.package_error = None;
            // From Configuring there is no such edge: the upgrade finishes, the state stays.
            go(c, Reason::UpgradeSucceeded, "", cause, now, out);
        }
        PackageState::InstallFailed => {
            let message = if status.error_message.is_empty() {
                statuses.error_message.clone()
            } else {
                status.error_message.clone()
            };
            fail_package(c, message, cause, now, out);
        }
        _ => {}
    }
}

/// Takes back an undelivered offer of a cancelled rollout. What is still in the outbox was never
/// written to the collector; what a collector away may or may not have had before it left is
/// forgotten too (a late verdict on it is then not ours and changes nothing). An offer already
/// delivered to a connected collector stays awaited, so its verdict still moves it out of
/// Configuring or Upgrading. A Pending collector leaves by `removed_from_rollout`.
pub(super) fn withdraw(
    c: &mut Collector,
    rollout: String,
    hash: &[u8],
    now: SystemTime,
    out: &mut Vec<Effect>,
) {
    c.withdrawn = Some(hash.to_vec());
    let config_queued = c
        .outbox
        .remote_config
        .as_ref()
        .is_some_and(|o| o.hash == hash);
    if config_queued {
        c.outbox.remote_config = None;
    }
    // One written into a plain-HTTP reply stays `unacknowledged`: the next report tells whether
    // the collector read it (its verdict is then awaited) or not (it is then released, and never
    // sent again: `delivery::acknowledge`).
    if c.config_sent.as_deref() == Some(hash) && (config_queued || !c.connected) {
        c.config_sent = None;
    }
    let package_queued = c.outbox.package.as_ref().is_some_and(|o| o.hash == hash);
    if package_queued {
        c.outbox.package = None;
    }
    if c.package_offered.as_ref().is_some_and(|p| p.hash == hash)
        && (package_queued || !c.connected)
    {
        c.package_offered = None;
    }
    // Nothing of a cancelled rollout is sent again, not even to a collector that lost it.
    if c.standing.as_ref().is_some_and(|o| o.hash == hash) {
        c.standing = None;
    }
    if c.rollout.as_deref() == Some(rollout.as_str()) {
        c.rollout = None;
        if c.state == Some(State::Pending) {
            go(c, Reason::RemovedFromRollout, "", Some(rollout), now, out);
            settle_errors(c, now, out);
        }
    }
}

/// An offer too large for any message fails as its verdict would: the configuration (or package)
/// is not awaited any more, and the collector goes to Error (from Configuring by `config_failed`,
/// from Upgrading by `upgrade_failed`) with the reason, so its rollout target fails rather than
/// waiting for a verdict that cannot come.
pub(super) fn undeliverable(
    c: &mut Collector,
    offer: &TooLarge,
    limit: usize,
    now: SystemTime,
    out: &mut Vec<Effect>,
) {
    let message = offer.message(limit);
    match offer {
        TooLarge::Configuration { hash, .. } if c.config_sent.as_deref() == Some(hash) => {
            fail_configuration(c, hash, &message, now, out);
        }
        TooLarge::Package { hash, .. }
            if c.package_offered.as_ref().is_some_and(|p| &p.hash == hash) =>
        {
            let cause = c
                .package_offered
                .as_ref()
                .map(|p| format!("{} {}", p.name, p.version));
            fail_package(c, message, cause, now, out);
        }
        _ => {}
    }
}

/// The configuration `hash` failed (its verdict, or it can never be delivered): not awaited any
/// more, never sent again on its own, and the collector goes to Error saying why.
pub(super) fn fail_configuration(
    c: &mut Collector,
    hash: &[u8],
    message: &str,
    now: SystemTime,
    out: &mut Vec<Effect>,
) {
    c.config_sent = None;
    c.config_failed = Some(hash.to_vec());
    c.config_error = Some(message.to_owned());
    c.rollout = None;
    let reason = if c.state == Some(State::Configuring) {
        Reason::ConfigFailed
    } else {
        Reason::ConfigError
    };
    go(c, reason, message, Some(hex(hash)), now, out);
}

/// The offered package failed: not awaited any more, and the collector goes to Error saying why.
pub(super) fn fail_package(
    c: &mut Collector,
    message: String,
    cause: Option<String>,
    now: SystemTime,
    out: &mut Vec<Effect>,
) {
    c.package_offered = None;
    let reason = if c.state == Some(State::Upgrading) {
        Reason::UpgradeFailed
    } else {
        Reason::UpdateError
    };
    go(c, reason, &message, cause, now, out);
    c.package_error = Some(message);
}

/// A collector left Configuring or Upgrading with nothing awaited: its offer was withdrawn before
/// it was written (a cancel). The diagram's only way back to Connected from there is the verdict's
/// edge; its next report says it runs what it ran, so that edge is taken, saying why.
pub(super) fn settle_withdrawn(c: &mut Collector, now: SystemTime, out: &mut Vec<Effect>) {
    match c.state {
        Some(State::Configuring) if c.config_sent.is_none() => go(
            c,
            Reason::ConfigApplied,
            WITHDRAWN_CONFIGURATION,
            None,
            now,
            out,
        ),
        Some(State::Upgrading) if c.package_offered.is_none() => go(
            c,
            Reason::UpgradeSucceeded,
            WITHDRAWN_PACKAGE,
            None,
            now,
            out,
        ),
        _ => {}
    }
}

pub const WITHDRAWN_CONFIGURATION: &str =
    "its configuration was withdrawn before it was sent; it runs the one it had";

pub const WITHDRAWN_PACKAGE: &str =
    "its package offer was withdrawn before it was sent; it runs the version it had";

pub(super) fn mark_incompatible(
    c: &mut Collector,
    missing: Vec<String>,
    cause: Option<String>,
    now: SystemTime,
    out: &mut Vec<Effect>,
) {
    let message = format!("missing components: {}", missing.join(", "));
    c.missing_components = missing;
    go(c, Reason::UnsupportedComponents, &message, cause, now, out);
}

pub(super) fn send_configuration(
    c: &mut Collector,
    offer: ConfigOffer,
    required: &[String],
    rollout: Option<String>,
    now: SystemTime,
    out: &mut Vec<Effect>,
) {
    if !c.capabilities.has(Capabilities::ACCEPTS_REMOTE_CONFIG) && c.state.is_some() {
        out.push(Effect::Refused(
            "collector does not accept remote configuration",
        ));
        return;
    }
    if c.config_failed.as_deref() == Some(offer.hash.as_slice()) {
        out.push(Effect::Refused(
            "collector already failed this configuration",
        ));
        return;
    }
    let missing = c.missing(required);
    if !missing.is_empty() {
        mark_incompatible(c, missing, rollout, now, out);
        return;
    }
    let cause = Some(hex(&offer.hash));
    c.config_sent = Some(offer.hash.clone());
    c.withdrawn = None;
    c.standing = Some(Box::new(offer.clone()));
    c.standing_resent = false;
    c.missing_components.clear();
    if rollout.is_some() {
        c.rollout = rollout;
    }
    c.outbox.merge(Outbound {
        remote_config: Some(Box::new(offer)),
        ..Outbound::default()
    });
    out.push(Effect::Deliver);
    if !c.connected {
        // It goes out, and the state moves, when the collector comes back.
        return;
    }
    let reason = if c.state == Some(State::Pending) {
        Reason::ConfigSent
    } else {
        Reason::NewConfiguration
    };
    go(c, reason, "", cause, now, out);
}

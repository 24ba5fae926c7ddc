//! Sending again what a collector reports it lacks: the standing configuration when it reports
//! another hash (conformance R5) and an awaited package offer when its statuses name another
//! all-packages hash (P6), each at most once per connection until it reports ours
//! (docs/adr/0043-resend-what-the-collector-should-hold.md). The rule for the configuration is
//! `delivery::resends_standing`; these carry it out on the record, within `machine::step`.

use std::time::SystemTime;

use super::machine::{Collector, Effect, go, hex};
use super::{Outbound, Reason};

/// R5: a collector reporting a configuration hash other than the standing one is sent the
/// standing one again (`delivery::resends_standing` says when), along the diagram's
/// `new_configuration` edge.
pub(super) fn standing(c: &mut Collector, now: SystemTime, out: &mut Vec<Effect>) {
    if c.standing_resent
        && c.remote_config_status
            .as_ref()
            .zip(c.standing.as_ref())
            .is_some_and(|(s, o)| s.hash == o.hash)
    {
        c.standing_resent = false;
    }
    if !super::delivery::resends_standing(c) {
        return;
    }
    let Some(offer) = c.standing.clone() else {
        return;
    };
    let cause = Some(hex(&offer.hash));
    c.config_sent = Some(offer.hash.clone());
    c.standing_resent = true;
    c.outbox.merge(Outbound {
        remote_config: Some(offer),
        ..Outbound::default()
    });
    out.push(Effect::Deliver);
    go(
        c,
        Reason::NewConfiguration,
        RESENT_CONFIGURATION,
        cause,
        now,
        out,
    );
}

/// P6: a collector whose package statuses show it does not have the awaited offer (another
/// `server_provided_all_packages_hash`, and not the offered version) is sent it again, once per
/// connection until it shows it received it.
pub(super) fn package(c: &mut Collector, out: &mut Vec<Effect>) {
    let Some(offer) = &c.package_offered else {
        return;
    };
    let received = c
        .package_statuses
        .as_ref()
        .is_some_and(|s| super::delivery::received_package(offer, s));
    if received {
        c.package_resent = false;
        return;
    }
    let queued = c.outbox.package.is_some() || c.unacknowledged.package.is_some();
    if c.package_resent || queued || !c.connected || c.package_statuses.is_none() {
        return;
    }
    c.package_resent = true;
    c.outbox.merge(Outbound {
        package: Some(offer.clone()),
        ..Outbound::default()
    });
    out.push(Effect::Deliver);
}

pub const RESENT_CONFIGURATION: &str =
    "it reported another configuration hash than the one it was sent; sent again";

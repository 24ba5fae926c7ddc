//! Delivery of offers (a configuration, a package, the restart command): what one message may
//! carry, which offers stay in the outbox until the collector shows it received them, and which
//! come back after a write that failed. Pure rules on the record; the actor and the transports
//! carry them out (see docs/adr/0042-offers-leave-the-outbox-once-received.md).

use super::machine::Collector;
use super::{Capabilities, ConfigOffer, Outbound, PackageOffer, PackageStatuses, Transport};

/// What a message carries besides its offers, at most: uid, capabilities, flags, a new uid, the
/// protobuf envelope and the WebSocket header.
const ENVELOPE: usize = 256;
/// Protobuf framing of one file or field: its tag, its length, a map entry's key.
const PER_ENTRY: usize = 32;

/// The offers written into a plain-HTTP reply that its collector has not yet shown it received:
/// only configurations and packages are awaited this way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Unacknowledged {
    pub remote_config: Option<Box<ConfigOffer>>,
    pub package: Option<Box<PackageOffer>>,
}

impl Unacknowledged {
    pub fn is_empty(&self) -> bool {
        self.remote_config.is_none() && self.package.is_none()
    }
}

/// An offer that does not fit in one message under the limit, however it is sent: it can never be
/// delivered, so it is refused, never sent cut or left to block the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TooLarge {
    Configuration { hash: Vec<u8>, size: usize },
    Package { hash: Vec<u8>, size: usize },
}

impl TooLarge {
    pub fn message(&self, limit: usize) -> String {
        let (what, size) = match self {
            TooLarge::Configuration { size, .. } => ("configuration", size),
            TooLarge::Package { size, .. } => ("package offer", size),
        };
        format!(
            "the {what} needs about {size} bytes, more than the {limit}-byte message limit \
             (opamp.max_message_bytes); it was not sent"
        )
    }
}

/// What one message to the collector carries now, taken from its outbox. At most `limit` bytes:
/// when the configuration and the package together do not fit, the package waits for the next
/// message; an offer that alone does not fit is answered in `TooLarge`. Over plain HTTP an offer
/// the collector can acknowledge (it reports that kind of status) stays in the outbox until its
/// report shows it received it ([`acknowledge`]): a reply lost on the way is sent again with the
/// next one, and the same offer twice is harmless (same hash). Over WebSocket it leaves now; a
/// write that fails gives it back ([`restore`]).
pub fn take(c: &mut Collector, transport: Transport, limit: usize) -> (Outbound, Vec<TooLarge>) {
    let can = c.capabilities;
    let mut out = c.outbox.take_sendable(can);
    let mut too_large = Vec::new();
    let mut config = out.remote_config.as_deref().map_or(0, config_size);
    if ENVELOPE + config > limit
        && let Some(offer) = out.remote_config.take()
    {
        too_large.push(TooLarge::Configuration {
            hash: offer.hash,
            size: config,
        });
        config = 0;
    }
    let mut package = out.package.as_deref().map_or(0, package_size);
    if ENVELOPE + package > limit
        && let Some(offer) = out.package.take()
    {
        too_large.push(TooLarge::Package {
            hash: offer.hash,
            size: package,
        });
        package = 0;
    }
    if ENVELOPE + config + package > limit {
        c.outbox.package = out.package.take();
    }
    if transport == Transport::Http {
        // Written into a reply the collector may never read: kept until its report says.
        if can.has(Capabilities::REPORTS_REMOTE_CONFIG) {
            c.unacknowledged
                .remote_config
                .clone_from(&out.remote_config);
        }
        if can.has(Capabilities::REPORTS_PACKAGE_STATUSES) {
            c.unacknowledged.package.clone_from(&out.package);
        }
    }
    (out, too_large)
}

/// Reads a report for the offers written into the previous plain-HTTP reply: those it shows
/// received are done (a remote configuration status naming the offer's hash, applying, applied or
/// failed; package statuses naming the offer's all-packages hash or its version as offered); the
/// others were lost on the way and go back to the outbox, so this reply carries them again.
pub fn acknowledge(c: &mut Collector) {
    // Back in the outbox after an earlier report: this one may show it arrived all the same.
    if let Some(offer) = &c.outbox.remote_config
        && c.remote_config_status
            .as_ref()
            .is_some_and(|s| s.hash == offer.hash)
    {
        c.outbox.remote_config = None;
    }
    if let (Some(offer), Some(statuses)) = (&c.outbox.package, &c.package_statuses)
        && received_package(offer, statuses)
    {
        c.outbox.package = None;
    }
    let written = std::mem::take(&mut c.unacknowledged);
    let mut lost = Outbound::default();
    if let Some(offer) = written.remote_config
        && c.remote_config_status
            .as_ref()
            .is_none_or(|s| s.hash != offer.hash)
    {
        lost.remote_config = Some(offer);
    }
    if let Some(offer) = written.package
        && c.package_statuses
            .as_ref()
            .is_none_or(|s| !received_package(&offer, s))
    {
        lost.package = Some(offer);
    }
    if lost.remote_config.is_none() && lost.package.is_none() {
        return;
    }
    // Lost, and withdrawn by a cancel meanwhile: the collector never had it, so nothing is awaited
    // (it leaves Configuring or Upgrading as for an offer withdrawn unsent); `restore` drops it.
    if let Some(hash) = c.withdrawn.as_deref() {
        if lost.remote_config.as_ref().is_some_and(|o| o.hash == hash)
            && c.config_sent.as_deref() == Some(hash)
        {
            c.config_sent = None;
        }
        if lost.package.as_ref().is_some_and(|p| p.hash == hash)
            && c.package_offered.as_ref().is_some_and(|p| p.hash == hash)
        {
            c.package_offered = None;
        }
    }
    restore(c, lost);
}

/// Whether the standing configuration is sent again (conformance R5): the collector is connected,
/// can take a configuration and report on it, and reports a hash other than the standing one,
/// while nothing is awaited from it and no rollout holds it (Pending, Configuring and Upgrading
/// have their own course). Not while it is APPLYING something (its verdict comes first), not
/// after a FAILED (a failure stands until an operator acts: sending the old configuration would be
/// a silent rollback), not for a status this server does not know, not when the standing one is
/// the one it failed, and at most once per connection until it reports the standing hash: a
/// collector that keeps answering with another hash is not sent it over and over.
pub fn resends_standing(c: &Collector) -> bool {
    use super::{RemoteConfigState, State};
    let Some(standing) = &c.standing else {
        return false;
    };
    let can = c.capabilities;
    let reported_other = match &c.remote_config_status {
        None => true,
        Some(s) => {
            s.hash != standing.hash
                && matches!(
                    s.status,
                    RemoteConfigState::Applied | RemoteConfigState::Unset
                )
        }
    };
    c.connected
        && can.has(Capabilities::ACCEPTS_REMOTE_CONFIG)
        && can.has(Capabilities::REPORTS_REMOTE_CONFIG)
        && c.config_sent.is_none()
        && !c.standing_resent
        && c.config_failed.as_deref() != Some(standing.hash.as_slice())
        && !matches!(
            c.state,
            Some(State::Pending | State::Configuring | State::Upgrading)
        )
        && reported_other
}

/// Whether package statuses show this offer arrived: the collector echoes the offer's
/// all-packages hash (as the specification asks), or names the offered version.
pub fn received_package(offer: &PackageOffer, statuses: &PackageStatuses) -> bool {
    (!statuses.server_provided_all_packages_hash.is_empty()
        && statuses.server_provided_all_packages_hash == offer.all_packages_hash())
        || statuses
            .packages
            .get(&offer.name)
            .is_some_and(|s| s.server_offered_version == offer.version)
}

/// A message that was not written (its connection failed, or its commit was not confirmed): what
/// it carried goes back to the outbox, except an offer no longer awaited (withdrawn by a cancel,
/// answered, or replaced by a newer one), which must not come back.
pub fn restore(c: &mut Collector, mut unsent: Outbound) {
    let withdrawn = |hash: &[u8]| c.withdrawn.as_deref() == Some(hash);
    if unsent
        .remote_config
        .as_ref()
        .is_some_and(|o| c.config_sent.as_deref() != Some(o.hash.as_slice()) || withdrawn(&o.hash))
    {
        unsent.remote_config = None;
    }
    if unsent.package.as_ref().is_some_and(|p| {
        c.package_offered.as_ref().is_none_or(|o| o.hash != p.hash) || withdrawn(&p.hash)
    }) {
        unsent.package = None;
    }
    // What the outbox has now is newer than what comes back.
    unsent.merge(std::mem::take(&mut c.outbox));
    c.outbox = unsent;
}

fn config_size(offer: &ConfigOffer) -> usize {
    offer
        .files
        .iter()
        .map(|(name, file)| PER_ENTRY + name.len() + file.content_type.len() + file.body.len())
        .sum::<usize>()
        + PER_ENTRY
        + offer.hash.len()
}

fn package_size(offer: &PackageOffer) -> usize {
    let kept: usize = offer
        .kept
        .iter()
        .map(|k| PER_ENTRY * 3 + k.name.len() + k.version.len() + k.hash.len())
        .sum();
    PER_ENTRY * 5
        + offer.name.len()
        + offer.version.len()
        + offer.download_url.len()
        + offer.content_hash.len()
        + offer.signature.len()
        + offer.hash.len()
        + offer.all_packages_hash().len()
        + kept
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::collector::machine::{Event, step};
    use crate::collector::{
        CollectorId, ConfigFile, ConfigFiles, RemoteConfigState, RemoteConfigStatus, Report,
    };

    const ALL: u64 = u64::MAX;
    const LIMIT: usize = 64 * 1024;

    fn offer(hash: &[u8], body: usize) -> ConfigOffer {
        let file = ConfigFile {
            content_type: "text/yaml".into(),
            body: vec![b'x'; body].into(),
        };
        ConfigOffer {
            files: ConfigFiles::from_iter([(String::new(), file)]),
            hash: hash.to_vec(),
        }
    }

    fn package(url: usize) -> PackageOffer {
        PackageOffer {
            name: "otelcol".into(),
            version: "2".into(),
            download_url: "u".repeat(url),
            content_hash: vec![0; 32],
            signature: Vec::new(),
            hash: b"p".to_vec(),
            kept: Vec::new(),
            all_hash: Vec::new(),
        }
    }

    fn report(can: u64, status: Option<(&[u8], RemoteConfigState)>) -> Event {
        Event::Report {
            report: Box::new(Report {
                capabilities: Capabilities(can),
                remote_config_status: status.map(|(hash, status)| RemoteConfigStatus {
                    hash: hash.to_vec(),
                    status,
                    error_message: String::new(),
                }),
                ..Report::default()
            }),
            transport: Transport::Http,
        }
    }

    /// A connected collector that was sent `offer`.
    fn sent(can: u64, offer: ConfigOffer) -> Collector {
        let mut c = Collector::new(CollectorId(uuid::Uuid::nil()));
        step(&mut c, report(can, None), UNIX_EPOCH);
        step(
            &mut c,
            Event::SendConfiguration {
                offer,
                required: Vec::new(),
                rollout: Some("r".into()),
            },
            UNIX_EPOCH,
        );
        c
    }

    #[test]
    fn over_http_an_offer_goes_with_every_reply_until_a_report_names_its_hash() {
        let mut c = sent(ALL, offer(b"h1", 10));
        for _ in 0..2 {
            // The reply is lost: the next poll, with no status, gets the offer again.
            let (out, too_large) = take(&mut c, Transport::Http, LIMIT);
            assert!(too_large.is_empty());
            assert_eq!(out.remote_config.map(|o| o.hash), Some(b"h1".to_vec()));
            step(&mut c, report(ALL, None), UNIX_EPOCH);
        }
        step(
            &mut c,
            report(ALL, Some((b"h1", RemoteConfigState::Applying))),
            UNIX_EPOCH,
        );
        let (out, _) = take(&mut c, Transport::Http, LIMIT);
        assert!(out.remote_config.is_none(), "received: not sent again");
        assert!(c.outbox.is_empty() && c.unacknowledged.is_empty());
        assert_eq!(c.config_sent.as_deref(), Some(&b"h1"[..]), "still awaited");
    }

    #[test]
    fn over_http_an_offer_to_a_collector_that_cannot_acknowledge_it_goes_once() {
        let can = ALL & !Capabilities::REPORTS_REMOTE_CONFIG;
        let mut c = sent(can, offer(b"h1", 10));
        let (out, _) = take(&mut c, Transport::Http, LIMIT);
        assert!(out.remote_config.is_some());
        assert!(
            c.unacknowledged.is_empty(),
            "no status would ever acknowledge it"
        );
        step(&mut c, report(can, None), UNIX_EPOCH);
        assert!(c.outbox.is_empty(), "not sent again");
    }

    #[test]
    fn over_websocket_an_offer_leaves_at_once_and_an_unwritten_one_comes_back_while_awaited() {
        let mut c = sent(ALL, offer(b"h1", 10));
        let (out, _) = take(&mut c, Transport::WebSocket, LIMIT);
        assert!(out.remote_config.is_some() && c.outbox.is_empty());
        restore(&mut c, out.offers());
        assert_eq!(
            c.outbox.remote_config.as_ref().map(|o| o.hash.clone()),
            Some(b"h1".to_vec())
        );
        let (out, _) = take(&mut c, Transport::WebSocket, LIMIT);
        // A cancel withdrew it meanwhile: a write that failed must not bring it back.
        step(
            &mut c,
            Event::Withdraw {
                rollout: "r".into(),
                hash: b"h1".to_vec(),
            },
            UNIX_EPOCH,
        );
        step(&mut c, Event::ConnectionLost, UNIX_EPOCH);
        restore(&mut c, out.offers());
        assert!(
            c.outbox.remote_config.is_none(),
            "withdrawn stays withdrawn"
        );
    }

    #[test]
    fn a_cancel_after_a_reply_is_settled_by_the_next_report_whether_it_was_read_or_not() {
        let withdraw = Event::Withdraw {
            rollout: "r".into(),
            hash: b"h1".to_vec(),
        };
        // The reply was lost: the collector never had it, so it is released, and not sent again.
        let mut lost = sent(ALL, offer(b"h1", 10));
        let _ = take(&mut lost, Transport::Http, LIMIT);
        step(&mut lost, withdraw.clone(), UNIX_EPOCH);
        assert_eq!(lost.state, Some(crate::collector::State::Configuring));
        step(&mut lost, report(ALL, None), UNIX_EPOCH);
        assert_eq!(lost.state, Some(crate::collector::State::Connected));
        assert!(lost.config_sent.is_none());
        let (out, _) = take(&mut lost, Transport::Http, LIMIT);
        assert!(out.remote_config.is_none(), "never sent again");
        // It was read: its verdict is awaited, as for any written offer, and nothing is resent.
        let mut read = sent(ALL, offer(b"h1", 10));
        let _ = take(&mut read, Transport::Http, LIMIT);
        step(&mut read, withdraw, UNIX_EPOCH);
        step(
            &mut read,
            report(ALL, Some((b"h1", RemoteConfigState::Applying))),
            UNIX_EPOCH,
        );
        assert_eq!(read.state, Some(crate::collector::State::Configuring));
        assert_eq!(read.config_sent.as_deref(), Some(&b"h1"[..]));
        let (out, _) = take(&mut read, Transport::Http, LIMIT);
        assert!(out.remote_config.is_none());
    }

    #[test]
    fn the_standing_configuration_is_resent_for_another_hash_but_never_in_a_loop() {
        let mut c = sent(ALL, offer(b"h1", 10));
        let _ = take(&mut c, Transport::WebSocket, LIMIT);
        step(
            &mut c,
            report(ALL, Some((b"h1", RemoteConfigState::Applied))),
            UNIX_EPOCH,
        );
        assert!(c.config_sent.is_none() && !resends_standing(&c));
        // Applying or failed something else: its verdict, or its failure, stands.
        for status in [
            RemoteConfigState::Applying,
            RemoteConfigState::Failed,
            RemoteConfigState::Unknown(9),
        ] {
            let mut other = c.clone();
            other.remote_config_status = Some(RemoteConfigStatus {
                hash: b"x".to_vec(),
                status,
                error_message: String::new(),
            });
            assert!(!resends_standing(&other), "{status:?}");
        }
        // It lost ours (runs another): sent again, once.
        step(
            &mut c,
            report(ALL, Some((b"x", RemoteConfigState::Applied))),
            UNIX_EPOCH,
        );
        assert_eq!(c.state, Some(crate::collector::State::Configuring));
        assert_eq!(c.config_sent.as_deref(), Some(&b"h1"[..]));
        assert!(c.standing_resent);
        let (out, _) = take(&mut c, Transport::WebSocket, LIMIT);
        assert_eq!(out.remote_config.map(|o| o.hash), Some(b"h1".to_vec()));
        // It answers with the other hash again: no third time on this connection.
        step(
            &mut c,
            report(ALL, Some((b"x", RemoteConfigState::Applied))),
            UNIX_EPOCH,
        );
        c.config_sent = None;
        assert!(!resends_standing(&c), "not in a loop");
        // Once it reported ours, a later loss is answered again.
        step(
            &mut c,
            report(ALL, Some((b"h1", RemoteConfigState::Applied))),
            UNIX_EPOCH,
        );
        assert!(!c.standing_resent);
        c.remote_config_status = None;
        assert!(resends_standing(&c));
        // A collector that cannot report the outcome is never sent it again.
        c.capabilities = Capabilities(ALL & !Capabilities::REPORTS_REMOTE_CONFIG);
        assert!(!resends_standing(&c));
    }

    #[test]
    fn offers_too_large_together_go_one_per_message_and_one_too_large_alone_is_refused() {
        let limit = 4096;
        let mut c = sent(ALL, offer(b"h1", 2500));
        step(&mut c, Event::OfferPackage(package(2000)), UNIX_EPOCH);
        let (out, too_large) = take(&mut c, Transport::WebSocket, limit);
        assert!(too_large.is_empty());
        assert!(out.remote_config.is_some() && out.package.is_none());
        let (out, _) = take(&mut c, Transport::WebSocket, limit);
        assert!(out.package.is_some(), "the package in the next message");

        let mut big = sent(ALL, offer(b"h2", limit));
        let (out, too_large) = take(&mut big, Transport::Http, limit);
        assert!(out.remote_config.is_none() && big.outbox.is_empty());
        assert!(big.unacknowledged.is_empty());
        assert!(
            matches!(&too_large[..], [TooLarge::Configuration { hash, .. }] if hash == b"h2"),
            "{too_large:?}"
        );
        let effects = step(
            &mut big,
            Event::Undeliverable {
                offer: too_large[0].clone(),
                limit,
            },
            UNIX_EPOCH,
        );
        assert_eq!(
            big.state,
            Some(crate::collector::State::Error),
            "{effects:?}"
        );
        assert_eq!(big.config_failed.as_deref(), Some(&b"h2"[..]));
        assert!(big.config_sent.is_none());
    }
}

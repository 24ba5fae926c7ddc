//! Serving a collector: its messages (what the reply carries, what they change, whether another
//! live connection contests its uid) and the connection it is reached on.

use std::time::SystemTime;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::Actor;
use crate::collector::connection::CustomMessage;
use crate::collector::contest::Verdict;
use crate::collector::custom::Bucket;
use crate::collector::delivery;
use crate::collector::facets;
use crate::collector::handle::{Answer, ConnectionRef, PushTx};
use crate::collector::machine::Event;
use crate::collector::{
    AvailableComponents, CloseReason, CollectorId, Delivery, Outbound, Reassignment, Report,
    Transport,
};

impl Actor {
    pub(super) async fn on_report(
        &mut self,
        connection: ConnectionRef,
        mut report: Box<Report>,
        reassigned_from: Option<CollectorId>,
    ) -> Answer {
        if self.contested_by(&connection) == Verdict::Reassign {
            let to = CollectorId::new_v7();
            warn!(collector_id = %self.id, new_id = %to, "two live collectors share this uid; the newer is given a fresh one");
            self.shared
                .metrics
                .counter(crate::telemetry::metrics::DUPLICATE_UIDS, &[])
                .increment(1);
            self.record.reassigned = Some(Box::new(Reassignment::Kept {
                to,
                at: SystemTime::now(),
            }));
            self.hot = true;
            return Answer::Reassign { to, report };
        }
        if let Some(from) = reassigned_from {
            self.record.reassigned = Some(Box::new(Reassignment::Given {
                from,
                at: SystemTime::now(),
            }));
            self.hot = true;
        }
        let custom = report.custom_message.take();
        self.renew_if_due(&connection, &mut report);
        if self.replaces_a_connection(&connection) {
            // The collector is on a new connection, so the one the record counts is gone: it is
            // lost first, as when its end is seen before this report. Then the history and what
            // is sent again (an unanswered configuration) do not depend on which came first.
            self.record.connected = true;
            self.apply(Event::ConnectionLost);
        }
        let arrived = !self.record.connected;
        let declares = report.custom_capabilities.is_some();
        self.changed = self.changed.by_report(&self.record, &report);
        self.hot |= !report.is_heartbeat() || report.capabilities != self.record.capabilities;
        let asks = self.asks_for(&report);
        let transport = connection.transport;
        self.attach(connection);
        self.replying = true;
        let goodbye = report.disconnect;
        let effective = report.effective_config.as_ref().map(facets::config_digest);
        self.apply(Event::Report { report, transport });
        if arrived {
            self.settle_first_settings();
        }
        let baseline = self.record.drift.take().map(|b| *b);
        let drift = facets::follow_drift(baseline, &self.record, effective);
        if self.record.drift.as_deref() != drift.as_ref() {
            self.hot = true;
        }
        self.record.drift = drift.map(Box::new);
        if goodbye {
            self.detach();
            self.evict_deadline = Some(Instant::now() + self.shared.settings.grace_period);
        } else if transport == Transport::Http {
            self.silent_deadline = Some(Instant::now() + self.liveness().0);
        }
        // A message arrived: whatever was late is not.
        self.refresh_facets(false);
        if let Some(message) = custom {
            self.relay(message);
        }
        let ours = &self.shared.custom.limits.capabilities;
        if (arrived || declares) && !ours.is_empty() {
            // Ours, told on each connection and in answer to the collector's own list.
            self.record.outbox.custom_capabilities = Some(ours.clone());
        }
        self.record.outbox.merge(asks);
        self.replying = false;
        let outbound = self.take_outbox(transport);
        self.save().await;
        Answer::Reply {
            outbound: Box::new(outbound),
            confirm: self.confirmation().await,
        }
    }

    /// On the first arrival after a load, the settings the offers give the collector by the
    /// labels loaded with its record: so its first reply carries them. Later arrivals and label
    /// changes are the distributor's.
    fn settle_first_settings(&mut self) {
        let (Some(source), Some(labels)) = (
            self.shared.settings_source.clone(),
            self.labels_at_load.take(),
        ) else {
            return;
        };
        let settings = source.settings_for(&labels).map(Box::new);
        self.apply(Event::ConnectionSettings { settings });
    }

    /// Renews the certificate the collector connects with, when opampd's CA issued it (it is the
    /// one on the record) and it nears its end: once per certificate, since the renewal becomes
    /// the record's. Only over mutual TLS (the new key travels in the offer) and to a collector
    /// that takes OpAMP connection settings.
    fn renew_if_due(&self, connection: &ConnectionRef, report: &mut Report) {
        let (Some(renewer), Some(presented), Some(current)) = (
            self.shared.renewer.as_ref(),
            connection.client_certificate.as_deref(),
            self.record.issued_certificate.as_deref(),
        ) else {
            return;
        };
        let now = SystemTime::now();
        let accepts = report
            .capabilities
            .has(crate::collector::connection::ACCEPTS_OPAMP_CONNECTION_SETTINGS);
        if report.issued_certificate.is_some()
            || !accepts
            || presented.sha256 != current.identity.sha256
            || !renewer.due(current, now)
        {
            return;
        }
        match renewer.renew(current, now) {
            Ok(new) => {
                info!(collector_id = %self.id, serial = %new.identity.serial, "certificate renewed");
                report.issued_certificate = Some(std::sync::Arc::new(new));
            }
            Err(err) => {
                warn!(collector_id = %self.id, %err, "the certificate could not be renewed");
            }
        }
    }

    /// Publishes a collector's custom message for the event stream, when it is one opampd relays
    /// and within the collector's rate; otherwise it is dropped and counted (OpAMP has no way to
    /// refuse one).
    fn relay(&mut self, message: CustomMessage) {
        let relay = &self.shared.custom;
        let per_minute = relay.limits.per_minute;
        let now = Instant::now();
        let bucket = self
            .rare
            .get_or_insert_with(Box::default)
            .custom_bucket
            .get_or_insert_with(|| Bucket::full(per_minute, now));
        let dropped = if !relay.relays(&message) {
            Some("unsupported_or_too_large")
        } else if bucket.take(per_minute, now).is_err() {
            Some("too_fast")
        } else {
            None
        };
        match dropped {
            Some(reason) => {
                debug!(collector_id = %self.id, reason, capability = %message.capability, "custom message dropped");
                self.shared
                    .metrics
                    .counter(
                        crate::telemetry::metrics::CUSTOM_MESSAGES_DROPPED,
                        &[("reason", reason)],
                    )
                    .increment(1);
            }
            None => relay.publish(self.id, message),
        }
    }

    /// Whether `connection` takes over from a different live WebSocket, or is a second live
    /// collector with the same uid.
    fn contested_by(&mut self, connection: &ConnectionRef) -> Verdict {
        let live_elsewhere = self
            .connection
            .as_ref()
            .is_some_and(|old| old.id != connection.id && old.push.is_some());
        if live_elsewhere && connection.push.is_some() {
            self.rare
                .get_or_insert_with(Box::default)
                .contest
                .claim(Instant::now())
        } else {
            Verdict::Replace
        }
    }

    /// Whether `connection` comes in place of one the record still counts: a new WebSocket
    /// connection in place of another of this actor's (half-open, most likely), or of another
    /// node's (see `held_elsewhere`). Plain-HTTP requests are polls, not replacements (a poll
    /// beside a live WebSocket of the same uid is the duplicate contest's, and records nothing).
    fn replaces_a_connection(&mut self, connection: &ConnectionRef) -> bool {
        let replaced = connection.push.is_some()
            && self
                .connection
                .as_ref()
                .is_some_and(|old| old.id != connection.id && old.push.is_some());
        std::mem::take(&mut self.held_elsewhere) || replaced
    }

    /// What the reply must ask of the collector: its full state after a gap or on first contact
    /// (unless this report is already complete), and its component set when the hash is unknown.
    fn asks_for(&mut self, report: &Report) -> Outbound {
        let continuous = self
            .record
            .sequence_num
            .is_some_and(|last| report.sequence_num == last.wrapping_add(1));
        let mut asks = Outbound {
            report_full_state: !continuous && !report.is_full_state(),
            ..Outbound::default()
        };
        if let Some(available) = &report.available_components {
            let catalog = &self.shared.catalog;
            let resolved = available.components.clone().or_else(|| {
                self.record
                    .available_components
                    .as_ref()
                    .filter(|known| known.hash == available.hash)
                    .and_then(|known| known.components.clone())
                    .or_else(|| catalog.get(&available.hash))
            });
            match &resolved {
                Some(components) if available.components.is_some() => {
                    catalog.insert(&available.hash, components);
                }
                Some(_) => {}
                None => asks.report_available_components = true,
            }
            let now = AvailableComponents {
                hash: available.hash.clone(),
                components: resolved,
            };
            if self.record.available_components.as_ref() != Some(&now) {
                self.changed = self.changed.with_available_components();
                self.record.available_components = Some(now);
            }
        }
        asks
    }

    /// Makes `connection` the collector's current one, closing a different WebSocket it replaces.
    fn attach(&mut self, connection: ConnectionRef) {
        if let Some(old) = self.connection.as_ref()
            && old.id != connection.id
            && let Some(push) = &old.push
        {
            debug!(collector_id = %self.id, old = old.id, new = connection.id, "connection replaced");
            // If the old connection's queue is full it is stuck anyway; its reader will notice.
            let _ = push.try_push(Box::new(Delivery::Close(CloseReason::Replaced)));
        }
        if connection.transport == Transport::WebSocket {
            self.silent_deadline = None;
        }
        self.evict_deadline = None;
        self.connection = Some(connection);
    }

    pub(super) fn detach(&mut self) {
        self.connection = None;
        self.silent_deadline = None;
    }

    /// What one message carries now (see `delivery::take`); an offer too large for any message is
    /// refused as failed.
    fn take_outbox(&mut self, transport: Transport) -> Outbound {
        let limit = self.shared.settings.max_message_bytes;
        let (out, too_large) = delivery::take(&mut self.record, transport, limit);
        for offer in too_large {
            warn!(collector_id = %self.id, limit, ?offer, "an offer larger than the message limit is refused");
            self.apply(Event::Undeliverable { offer, limit });
        }
        out
    }

    /// Pushes whatever waits to a WebSocket connection; HTTP collectors get it on their next poll.
    /// While a report is answered, connection settings stay for the reply.
    pub(super) fn flush_outbox(&mut self) {
        let Some(push) = self.connection.as_ref().and_then(|c| c.push.clone()) else {
            return;
        };
        let held = if self.replying {
            self.record.outbox.connection_settings.take()
        } else {
            None
        };
        self.push_outbox(&push);
        if let Some(held) = held {
            self.record.outbox.connection_settings = Some(held);
        }
    }

    fn push_outbox(&mut self, push: &PushTx) {
        loop {
            let out = self.take_outbox(Transport::WebSocket);
            if out.is_empty() {
                return;
            }
            if let Err(err) = push.try_push(Box::new(Delivery::Send(self.id, Box::new(out)))) {
                if err.is_full() {
                    warn!(collector_id = %self.id, "connection queue full; message kept for later");
                }
                // Kept, not lost: it goes out with the next reply or on the next connection.
                if let Delivery::Send(_, out) = *err.into_inner() {
                    self.record.outbox.merge(*out);
                }
                return;
            }
        }
    }
}

impl Report {
    /// Nothing but "still here": no sub-message, no goodbye. Such a report changes only
    /// `last_seen` and the sequence number, which need not be written every time.
    pub(super) fn is_heartbeat(&self) -> bool {
        self.description.is_none()
            && self.health.is_none()
            && self.effective_config.is_none()
            && self.remote_config_status.is_none()
            && self.package_statuses.is_none()
            && self.available_components.is_none()
            && self.custom_capabilities.is_none()
            && self.connection_settings_status.is_none()
            && self.custom_message.is_none()
            && !self.disconnect
    }

    /// Whether this report is a full state. Clients send the description with every full state and
    /// leave out what they do not have yet (Python's first message has no effective configuration
    /// even though it announces one), so demanding every announced part would only make them send
    /// the same message again.
    fn is_full_state(&self) -> bool {
        self.description.is_some()
    }
}

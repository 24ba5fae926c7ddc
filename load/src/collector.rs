//! One simulated collector as a task: connect (bound to its source address), say who it is,
//! then heartbeat or send status changes as the phase asks, answer what the server sends, and
//! reconnect whenever the connection is lost, the server throttles, or a storm is called.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::agent::{Agent, Behaviour, Outgoing, ReplyProblem, Sent};
use crate::args::Mode;
use crate::net::{Link, LinkError, Target};
use crate::stats::{Counters, ErrorKind, Latency, Outage};

/// What the coordinator tells every collector, through a watch channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    pub phase: Phase,
    /// The latest storm: its number (from 1) and when it was called.
    pub storm: Option<(u32, Instant)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Connecting; connected collectors heartbeat.
    Ramp,
    /// The measured part: heartbeats (hold, storm) or status changes (burst).
    Measure,
    /// Say goodbye and end.
    Stop,
}

/// Settings every collector reads.
#[derive(Debug, Clone)]
pub struct Settings {
    pub target: Target,
    pub source_addrs: Vec<IpAddr>,
    pub mode: Mode,
    pub heartbeat: Duration,
    /// Burst mode: the least time between two status changes (zero: back to back).
    pub change_interval: Duration,
    pub behaviour: Behaviour,
    pub run_tag: String,
    pub close_frame: bool,
    /// Drops and failed reconnections are expected (a server restart): not errors.
    pub expect_restart: bool,
    pub reconnect_jitter: Duration,
    pub reconnect_max: Duration,
    pub reply_timeout: Duration,
}

/// What the collectors share with the coordinator.
pub struct Shared {
    pub settings: Settings,
    pub counters: Counters,
    /// First message → its reply, on each collector's first connection.
    pub connect_latency: Latency,
    /// TCP connect (+ WebSocket upgrade), every connection.
    pub handshake_latency: Latency,
    /// Every reply to one of our messages during the measurement.
    pub reply_latency: Latency,
    /// From the storm's call to the collector's first reply on its new connection.
    pub storm_latency: Latency,
    pub outage: Outage,
    /// Woken whenever a collector connects for the first time or comes back from a storm.
    pub progress: Notify,
}

impl Shared {
    pub fn new(settings: Settings) -> Self {
        Self {
            settings,
            counters: Counters::default(),
            connect_latency: Latency::new(),
            handshake_latency: Latency::new(),
            reply_latency: Latency::new(),
            storm_latency: Latency::new(),
            outage: Outage::default(),
            progress: Notify::new(),
        }
    }
}

/// How a session on one connection ended.
enum End {
    /// The run is over (goodbye already said).
    Stop,
    /// We dropped the connection for a storm: connect again at once.
    Storm,
    /// The server asked us to stay away (None: our own backoff).
    Throttled(Option<Duration>),
    Failed(LinkError),
    /// No reply in time.
    Timeout,
}

/// A collector's life between connections.
struct Life {
    agent: Agent,
    /// Messages waiting to be sent, in order; they survive reconnections.
    outbox: VecDeque<Outgoing>,
    ever_answered: bool,
    /// Cut off by the server; counted in the outage until answered again.
    down: bool,
    ever_dropped: bool,
    /// The storm we are coming back from, with its start.
    storm_pending: Option<Instant>,
    seen_storm: u32,
    /// Failed connection attempts in a row.
    failures: u32,
}

pub async fn run(
    index: usize,
    start_at: Instant,
    shared: Arc<Shared>,
    control: watch::Receiver<Control>,
) {
    let mut control = control;
    tokio::select! {
        () = tokio::time::sleep_until(start_at) => {}
        () = stopped(&mut control) => return,
    }
    let settings = &shared.settings;
    let source = crate::addrs::source_for(&settings.source_addrs, index);
    let mut agent = Agent::new(index, &settings.run_tag, settings.behaviour);
    let mut life = Life {
        outbox: VecDeque::from([agent.full_state()]),
        agent,
        ever_answered: false,
        down: false,
        ever_dropped: false,
        storm_pending: None,
        seen_storm: control.borrow().storm.map_or(0, |(n, _)| n),
        failures: 0,
    };
    loop {
        let Some(link) = connect(&shared, &mut life, source, &mut control).await else {
            return;
        };
        let end = session(&shared, &mut life, link, &mut control).await;
        let wait = match end {
            End::Stop => return,
            End::Storm => Duration::ZERO,
            End::Throttled(after) => {
                shared.counters.error(ErrorKind::Throttled);
                life.failures += 1;
                after.unwrap_or_else(|| backoff(settings, life.failures))
            }
            End::Timeout => {
                shared.counters.error(ErrorKind::Timeout);
                lost(&shared, &mut life);
                jitter(settings.reconnect_jitter)
            }
            End::Failed(error) => {
                let expected = settings.expect_restart
                    && matches!(error.kind(), ErrorKind::Closed | ErrorKind::Io);
                if !expected {
                    shared.counters.error(error.kind());
                }
                lost(&shared, &mut life);
                jitter(settings.reconnect_jitter)
            }
        };
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stopped(&mut control) => return,
            }
        }
    }
}

/// A connection that had been answered is gone: count the drop and the outage.
fn lost(shared: &Shared, life: &mut Life) {
    if life.ever_answered && !life.down {
        Counters::add(&shared.counters.drops);
        if !life.ever_dropped {
            life.ever_dropped = true;
            Counters::add(&shared.counters.collectors_dropped);
        }
        shared.outage.down(Instant::now().into_std());
        life.down = true;
    }
}

/// Connects, retrying with backoff; `None` when the run stops first.
async fn connect(
    shared: &Shared,
    life: &mut Life,
    source: Option<IpAddr>,
    control: &mut watch::Receiver<Control>,
) -> Option<Link> {
    let settings = &shared.settings;
    loop {
        let started = Instant::now();
        let attempt = tokio::select! {
            result = Link::open(&settings.target, source, settings.expect_restart) => result,
            () = stopped(control) => return None,
        };
        match attempt {
            Ok(link) => {
                shared.handshake_latency.record(started.elapsed());
                return Some(link);
            }
            Err(error) => {
                life.failures += 1;
                if life.ever_answered && settings.expect_restart {
                    Counters::add(&shared.counters.reconnect_failures);
                } else {
                    shared.counters.error(error.kind());
                }
                let wait = error
                    .retry_after()
                    .unwrap_or_else(|| backoff(settings, life.failures));
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stopped(control) => return None,
                }
            }
        }
    }
}

/// Talks on one connection until it ends.
#[allow(clippy::too_many_lines)]
async fn session(
    shared: &Shared,
    life: &mut Life,
    mut link: Link,
    control: &mut watch::Receiver<Control>,
) -> End {
    let settings = &shared.settings;
    let counters = &shared.counters;
    let mut in_flight: Option<(Outgoing, Instant)> = None;
    let mut answered = false;
    let mut first_sent: Option<Instant> = None;
    let mut last_sent = Instant::now();
    // Burst mode: when the next status change may go. The first waits a random part of the
    // interval, so paced collectors spread over it instead of sending in step.
    let mut next_change: Option<Instant> = None;
    if life.outbox.is_empty() {
        life.outbox.push_back(life.agent.heartbeat());
    }
    loop {
        let phase = control.borrow().phase;
        let changing = answered && settings.mode == Mode::Burst && phase == Phase::Measure;
        if in_flight.is_none() {
            if life.outbox.is_empty() && changing {
                let due = *next_change
                    .get_or_insert_with(|| Instant::now() + jitter(settings.change_interval));
                if Instant::now() >= due {
                    life.outbox.push_back(life.agent.status_change());
                    next_change = Some(Instant::now() + settings.change_interval);
                }
            }
            if let Some(next) = life.outbox.pop_front() {
                if let Err(error) = link.send(&next.message).await {
                    keep_unanswered(life, next);
                    return End::Failed(error);
                }
                Counters::add(&counters.sent);
                last_sent = Instant::now();
                first_sent.get_or_insert(last_sent);
                in_flight = Some((next, last_sent));
            }
        }
        let reply_deadline = in_flight
            .as_ref()
            .map_or(last_sent, |(_, at)| *at + settings.reply_timeout);
        let heartbeat_due = in_flight.is_none() && life.outbox.is_empty();
        // While changing, the next change takes the heartbeat's place.
        let idle_until = match next_change.filter(|_| changing) {
            Some(due) => due,
            None => last_sent + settings.heartbeat,
        };
        tokio::select! {
            biased;
            changed = control.changed() => {
                let now = *control.borrow_and_update();
                if changed.is_err() || now.phase == Phase::Stop {
                    let last = life.agent.disconnect();
                    link.goodbye(in_flight.is_some(), &last.message, Duration::from_secs(2))
                        .await;
                    return End::Stop;
                }
                if let Some((storm, started)) = now.storm
                    && storm > life.seen_storm
                {
                    life.seen_storm = storm;
                    life.storm_pending = Some(started);
                    if let Some((message, _)) = in_flight.take() {
                        keep_unanswered(life, message);
                    }
                    link.drop_connection(settings.close_frame).await;
                    return End::Storm;
                }
            }
            reply = link.recv() => {
                let reply = match reply {
                    Ok(reply) => reply,
                    Err(error) => {
                        if let Some((message, _)) = in_flight.take() {
                            keep_unanswered(life, message);
                        }
                        // HTTP 503/429: stay away as long as the server asked.
                        if error.kind() == ErrorKind::Throttled {
                            return End::Throttled(error.retry_after());
                        }
                        return End::Failed(error);
                    }
                };
                let now = Instant::now();
                Counters::add(&counters.received);
                if link.take_reopened() {
                    Counters::add(&counters.http_reopens);
                }
                let answered_message = in_flight.take();
                // An UNAVAILABLE answer took nothing: it is not an acknowledgement, and a
                // collector told to come back later is not back.
                let reaction = life.agent.on_reply(&reply);
                let throttled = reaction.throttle.is_some();
                if let Some((message, sent_at)) = answered_message.as_ref().filter(|_| !throttled) {
                    match message.kind {
                        Sent::Heartbeat => Counters::add(&counters.heartbeats_acked),
                        Sent::StatusChange => Counters::add(&counters.changes_acked),
                        _ => {}
                    }
                    if control.borrow().phase == Phase::Measure {
                        shared.reply_latency.record(now - *sent_at);
                    }
                }
                if !answered && !throttled {
                    answered = true;
                    life.failures = 0;
                    if life.ever_answered {
                        Counters::add(&counters.reconnects);
                    } else {
                        life.ever_answered = true;
                        Counters::add(&counters.connected);
                        shared.connect_latency.record(now - first_sent.unwrap_or(now));
                        shared.progress.notify_one();
                    }
                    if life.down {
                        life.down = false;
                        shared.outage.up(now.into_std());
                    }
                    if let Some(started) = life.storm_pending.take() {
                        shared.storm_latency.record(now.saturating_duration_since(started));
                        Counters::add(&counters.storm_back);
                        shared.progress.notify_one();
                    }
                }
                match reaction.problem {
                    Some(ReplyProblem::BadRequest) => counters.error(ErrorKind::BadRequest),
                    Some(ReplyProblem::ServerError | ReplyProblem::BadNewUid) => {
                        counters.error(ErrorKind::ServerError);
                    }
                    None => {}
                }
                if reaction.config_applied {
                    Counters::add(&counters.configs_applied);
                }
                if reaction.config_failed {
                    Counters::add(&counters.configs_failed);
                }
                if reaction.full_state_requested {
                    Counters::add(&counters.full_state_requests);
                }
                if reaction.new_uid {
                    Counters::add(&counters.new_uids);
                }
                if let Some(after) = reaction.throttle {
                    // The message was not taken: send it again on the next connection.
                    if let Some((message, _)) = answered_message {
                        keep_unanswered(life, message);
                    }
                    link.drop_connection(true).await;
                    return End::Throttled(after);
                }
                life.outbox.extend(reaction.messages);
            }
            () = tokio::time::sleep_until(reply_deadline), if in_flight.is_some() => {
                if let Some((message, _)) = in_flight.take() {
                    keep_unanswered(life, message);
                }
                return End::Timeout;
            }
            () = tokio::time::sleep_until(idle_until), if heartbeat_due => {
                if !changing {
                    life.outbox.push_back(life.agent.heartbeat());
                }
            }
        }
    }
}

/// A message that may not have reached the server goes first on the next connection, unless
/// it was a heartbeat (a new one will do) or a status change (the next one will do).
fn keep_unanswered(life: &mut Life, message: Outgoing) {
    if !matches!(
        message.kind,
        Sent::Heartbeat | Sent::StatusChange | Sent::Disconnect
    ) {
        life.outbox.push_front(message);
    }
}

/// Resolves when the run stops (or the coordinator is gone).
async fn stopped(control: &mut watch::Receiver<Control>) {
    let _ = control.wait_for(|c| c.phase == Phase::Stop).await;
}

/// The wait before connection attempt `failures + 1`: 250 ms doubling up to `reconnect_max`,
/// jittered between half and all of it.
fn backoff(settings: &Settings, failures: u32) -> Duration {
    let base = Duration::from_millis(250)
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(settings.reconnect_max);
    base / 2 + jitter(base / 2)
}

/// A random duration from zero to `max`.
fn jitter(max: Duration) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        Duration::ZERO
    } else {
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }
}

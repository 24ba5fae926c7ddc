//! The router: carries each order out where it can be, on this node when it holds the collector
//! (or runs the rollout engine), otherwise on the node that does, through the commands table, and
//! serves the orders other nodes send here.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::notify::Wakers;
use super::orders::{Answer, Order, Refusal, Restarted};
use crate::collector::handle::Forgotten;
use crate::collector::{Capabilities, Collector, CollectorId, Event, Registry};
use crate::config::ClusterConfig;
use crate::fleet::engine::{Control, Fleet, FleetError, NewRollout};
use crate::fleet::rollout::Rollout;
use crate::store::cluster::{ClusterStore, Owner};
use crate::store::{Store, StoreError};

/// The rollout engine's lease.
pub const ROLLOUTS: &str = "rollouts";

/// How often a waiting order looks for its answer even without a notification.
const ANSWER_POLL: Duration = Duration::from_millis(250);
/// How often open commands are looked for even without a notification.
const COMMAND_POLL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The node that must carry it out did not answer in time, or none can now.
    #[error("{0}")]
    Elsewhere(String),
}

/// Where an order for one collector is carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Here,
    On(String),
}

/// A collector's order goes to the node holding its connection when that is another live node;
/// everything else is this node's to do (a collector held nowhere is claimed by whoever acts).
pub fn place(me: &str, resident_here: bool, owner: Option<&Owner>) -> Place {
    match owner {
        Some(o) if !resident_here && o.connected && o.alive && o.node != me => {
            Place::On(o.node.clone())
        }
        _ => Place::Here,
    }
}

/// What the router needs to reach other nodes (absent on a single node).
pub struct Peers {
    pub store: ClusterStore,
    pub wakers: Arc<Wakers>,
    pub settings: ClusterConfig,
}

pub struct Router {
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    peers: Option<Peers>,
    /// The rollout engine, while this node runs it.
    engine: watch::Receiver<Option<Fleet>>,
}

impl Router {
    pub fn new(
        registry: Arc<Registry>,
        store: Arc<dyn Store>,
        peers: Option<Peers>,
        engine: watch::Receiver<Option<Fleet>>,
    ) -> Self {
        Self {
            registry,
            store,
            peers,
            engine,
        }
    }

    /// Other nodes' history notifications, for readers of the history.
    /// This node's transitions as they happen (before they are stored).
    pub fn subscribe(&self) -> crate::collector::bus::Subscription {
        self.registry.subscribe()
    }

    pub fn history_notices(&self) -> Option<watch::Receiver<u64>> {
        self.peers.as_ref().map(|p| p.wakers.history())
    }

    async fn place_of(&self, id: CollectorId) -> Result<Place, RouteError> {
        let Some(peers) = &self.peers else {
            return Ok(Place::Here);
        };
        if self.registry.is_resident(id) {
            return Ok(Place::Here);
        }
        let alive_since = SystemTime::now() - peers.settings.node_timeout;
        let owner = peers.store.owner(id, alive_since).await?;
        Ok(place(peers.store.node(), false, owner.as_ref()))
    }

    /// The freshest record: this node's actor, else (several nodes) the store's.
    pub async fn view(&self, id: CollectorId) -> Option<Collector> {
        if let Some(view) = self.registry.view(id).await {
            return Some(view);
        }
        if self.peers.is_some() {
            return self.store.load(id).await.ok().flatten();
        }
        None
    }

    pub async fn restart(&self, id: CollectorId) -> Result<Restarted, RouteError> {
        match self.place_of(id).await? {
            Place::Here => self.restart_here(id).await,
            Place::On(node) => match self
                .remote(&node, &Order::Restart { collector: id })
                .await?
            {
                Answer::Restarted(r) => Ok(r),
                other => Err(unexpected(&node, &other)),
            },
        }
    }

    pub async fn forget(&self, id: CollectorId) -> Result<Forgotten, RouteError> {
        match self.place_of(id).await? {
            Place::Here => self.forget_here(id).await,
            Place::On(node) => match self.remote(&node, &Order::Forget { collector: id }).await? {
                Answer::Forgotten(f) => Ok(f),
                other => Err(unexpected(&node, &other)),
            },
        }
    }

    /// Applies a fleet event to the collector wherever it is held; `false` when it is resident
    /// nowhere (away: it hears of it when it returns).
    pub async fn apply(&self, id: CollectorId, event: Event) -> Result<bool, RouteError> {
        match self.place_of(id).await? {
            Place::Here => self.apply_here(id, event).await,
            Place::On(node) => {
                let order = Order::Apply {
                    collector: id,
                    event,
                };
                match self.remote(&node, &order).await? {
                    Answer::Applied(applied) => Ok(applied),
                    other => Err(unexpected(&node, &other)),
                }
            }
        }
    }

    pub async fn start_rollout(&self, new: NewRollout) -> Result<Rollout, FleetError> {
        self.rollout_order(Order::StartRollout { rollout: new })
            .await
    }

    pub async fn control_rollout(&self, id: &str, control: Control) -> Result<Rollout, FleetError> {
        let order = Order::ControlRollout {
            id: id.to_owned(),
            control,
        };
        self.rollout_order(order).await
    }

    async fn rollout_order(&self, order: Order) -> Result<Rollout, FleetError> {
        let engine = self.engine.borrow().clone();
        if let Some(fleet) = engine {
            return rollout_here(&fleet, order).await;
        }
        let Some(peers) = &self.peers else {
            return Err(FleetError::Stopped);
        };
        let holder = peers
            .store
            .lease_holder(ROLLOUTS, SystemTime::now())
            .await?;
        let Some(node) = holder.filter(|n| n != peers.store.node()) else {
            return Err(FleetError::Elsewhere(
                "no node runs the rollout engine at this moment; try again".into(),
            ));
        };
        match self.remote(&node, &order).await {
            Ok(Answer::Rollout(result)) => result.map(|r| *r).map_err(FleetError::from),
            Ok(other) => Err(FleetError::Elsewhere(unexpected(&node, &other).to_string())),
            Err(RouteError::Store(e)) => Err(FleetError::Store(e)),
            Err(other) => Err(FleetError::Elsewhere(other.to_string())),
        }
    }

    /// Carries out an order on this node, never sending it on.
    async fn execute(&self, order: Order) -> Answer {
        let result = match order {
            Order::Restart { collector } => {
                self.restart_here(collector).await.map(Answer::Restarted)
            }
            Order::Forget { collector } => self.forget_here(collector).await.map(Answer::Forgotten),
            Order::Apply { collector, event } => {
                self.apply_here(collector, event).await.map(Answer::Applied)
            }
            rollout @ (Order::StartRollout { .. } | Order::ControlRollout { .. }) => {
                let engine = self.engine.borrow().clone();
                let result = match engine {
                    Some(fleet) => rollout_here(&fleet, rollout).await,
                    None => Err(FleetError::Elsewhere(
                        "this node no longer runs the rollout engine; try again".into(),
                    )),
                };
                Ok(Answer::Rollout(result.map(Box::new).map_err(Refusal::from)))
            }
        };
        result.unwrap_or_else(|err| Answer::Unreadable(err.to_string()))
    }

    async fn restart_here(&self, id: CollectorId) -> Result<Restarted, RouteError> {
        let Some(view) = self.registry.view(id).await else {
            return Ok(if self.store.load(id).await?.is_some() {
                Restarted::NotConnected
            } else {
                Restarted::Unknown
            });
        };
        if !view.connected {
            return Ok(Restarted::NotConnected);
        }
        if !view.capabilities.has(Capabilities::ACCEPTS_RESTART_COMMAND) {
            return Ok(Restarted::NotAccepted);
        }
        self.apply_here(id, Event::Restart).await?;
        Ok(Restarted::Sent)
    }

    async fn forget_here(&self, id: CollectorId) -> Result<Forgotten, RouteError> {
        self.registry
            .forget(id)
            .await
            .map_err(|_| RouteError::ShuttingDown)
    }

    async fn apply_here(&self, id: CollectorId, event: Event) -> Result<bool, RouteError> {
        self.registry
            .apply(id, event)
            .await
            .map_err(|_| RouteError::ShuttingDown)
    }

    /// Sends `order` to `node` and waits for its answer, at most `cluster.command_timeout`.
    async fn remote(&self, node: &str, order: &Order) -> Result<Answer, RouteError> {
        let Some(peers) = &self.peers else {
            return Err(RouteError::Elsewhere(format!(
                "node {node} cannot be reached"
            )));
        };
        let body = serde_json::to_value(order)
            .map_err(|e| RouteError::Elsewhere(format!("the order cannot be written: {e}")))?;
        let id = peers.store.send(node, &body, SystemTime::now()).await?;
        let deadline = Instant::now() + peers.settings.command_timeout;
        loop {
            let woken = peers.wakers.answer(id);
            if let Some(answer) = peers.store.answer_of(id).await? {
                peers.wakers.forget_answer(id);
                return read_answer(node, answer);
            }
            tokio::select! {
                _ = woken => {}
                () = tokio::time::sleep(ANSWER_POLL) => {}
                () = tokio::time::sleep_until(deadline.into()) => {
                    peers.wakers.forget_answer(id);
                    if peers.store.expire(id, SystemTime::now()).await? {
                        return Err(RouteError::Elsewhere(format!(
                            "node {node}, which holds it, did not answer within {:?}; \
                             nothing was done, try again",
                            peers.settings.command_timeout
                        )));
                    }
                }
            }
        }
    }

    /// Carries out the orders other nodes send this one, until `shutdown`.
    pub async fn serve(self: Arc<Self>, shutdown: CancellationToken) {
        let Some(peers) = &self.peers else {
            return;
        };
        loop {
            match peers.store.open_commands().await {
                Ok(commands) => {
                    for command in commands {
                        let answer = match serde_json::from_value::<Order>(command.body) {
                            Ok(order) => self.execute(order).await,
                            Err(err) => Answer::Unreadable(err.to_string()),
                        };
                        let answer = serde_json::to_value(&answer).unwrap_or_default();
                        if let Err(err) = peers
                            .store
                            .answer(command.id, &answer, SystemTime::now())
                            .await
                        {
                            warn!(%err, command = command.id, origin = %command.origin,
                                "cannot record a command's answer");
                        }
                    }
                }
                Err(err) => warn!(%err, "cannot read the commands for this node; retrying"),
            }
            tokio::select! {
                () = peers.wakers.commands() => {}
                () = tokio::time::sleep(COMMAND_POLL) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}

async fn rollout_here(fleet: &Fleet, order: Order) -> Result<Rollout, FleetError> {
    match order {
        Order::StartRollout { rollout } => fleet.start_rollout(rollout).await,
        Order::ControlRollout { id, control } => fleet.control(&id, control).await,
        _ => Err(FleetError::Invalid("not a rollout order".into())),
    }
}

fn read_answer(node: &str, answer: serde_json::Value) -> Result<Answer, RouteError> {
    if answer.get("expired").is_some() {
        return Err(RouteError::Elsewhere(format!(
            "node {node} did not answer in time; nothing was done, try again"
        )));
    }
    match serde_json::from_value::<Answer>(answer) {
        Ok(Answer::Unreadable(why)) => Err(RouteError::Elsewhere(format!(
            "node {node} could not carry the order out: {why}"
        ))),
        Ok(answer) => Ok(answer),
        Err(err) => Err(RouteError::Elsewhere(format!(
            "node {node}'s answer cannot be read: {err}"
        ))),
    }
}

fn unexpected(node: &str, answer: &Answer) -> RouteError {
    RouteError::Elsewhere(format!("node {node} answered something else: {answer:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(node: &str, connected: bool, alive: bool) -> Owner {
        Owner {
            node: node.into(),
            connected,
            alive,
        }
    }

    #[test]
    fn orders_go_to_the_live_node_holding_the_connection_and_nowhere_else() {
        assert_eq!(
            place("a", false, Some(&owner("b", true, true))),
            Place::On("b".into())
        );
        // Held here, unknown, not connected anywhere, or held by a dead node: this node acts.
        assert_eq!(place("a", true, Some(&owner("b", true, true))), Place::Here);
        assert_eq!(place("a", false, None), Place::Here);
        assert_eq!(
            place("a", false, Some(&owner("b", false, true))),
            Place::Here
        );
        assert_eq!(
            place("a", false, Some(&owner("b", true, false))),
            Place::Here
        );
        assert_eq!(
            place("a", false, Some(&owner("a", true, true))),
            Place::Here
        );
    }

    #[test]
    fn orders_and_answers_survive_the_trip() {
        let id = CollectorId(uuid::Uuid::from_u128(7));
        let order = Order::Apply {
            collector: id,
            event: Event::RemoveFromRollout {
                rollout: "r1".into(),
            },
        };
        let text = serde_json::to_value(&order).unwrap();
        assert!(matches!(
            serde_json::from_value::<Order>(text).unwrap(),
            Order::Apply { collector, event: Event::RemoveFromRollout { rollout } }
                if collector == id && rollout == "r1"
        ));
        let answer = serde_json::to_value(Answer::Forgotten(Forgotten::Refused(
            crate::collector::State::Connected,
        )))
        .unwrap();
        assert!(matches!(
            read_answer("b", answer).unwrap(),
            Answer::Forgotten(Forgotten::Refused(crate::collector::State::Connected))
        ));
        assert!(read_answer("b", serde_json::json!({"expired": true})).is_err());
    }
}

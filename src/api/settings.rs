//! Connection settings offers through the API: create or replace, list, read and delete them.
//! The answer comes once the offer is committed; collectors are told after, in the background
//! (those away hear of it when they arrive).

use std::collections::BTreeMap;
use std::time::SystemTime;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ApiState;
use super::auth::Caller;
use super::collectors::json_body;
use super::error::{ApiError, ErrorBody};
use super::view::rfc3339;
use crate::collector::connection::{
    self, ConnectionSettings, OpampConnection, OtherConnection, TelemetryConnection,
};
use crate::collector::machine::hex;
use crate::config::Role;
use crate::fleet::settings::{self, SettingsOffer};
use crate::selector::Selector;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSettingsOffer {
    /// 1 to 100 letters, digits or `._-`; an offer of that name is replaced.
    pub name: String,
    /// The collectors it is for (label selector); empty or absent: every collector.
    #[serde(default)]
    pub selector: String,
    pub opamp: Option<OpampConnection>,
    pub own_metrics: Option<TelemetryConnection>,
    pub own_traces: Option<TelemetryConnection>,
    pub own_logs: Option<TelemetryConnection>,
    #[serde(default)]
    pub other_connections: BTreeMap<String, OtherConnection>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SettingsOfferView {
    pub name: String,
    pub selector: String,
    /// The settings as offered, before each collector's capabilities narrow them.
    pub settings: ConnectionSettings,
    /// SHA-256 of these settings, hex: the `hash` a collector that accepts every class is sent.
    pub hash: String,
    pub created_at: String,
    pub updated_at: String,
}

impl SettingsOfferView {
    fn new(offer: &SettingsOffer) -> Self {
        Self {
            name: offer.name.clone(),
            selector: offer.selector.to_string(),
            settings: offer.settings.clone(),
            hash: hex(&connection::hash(&offer.settings)),
            created_at: rfc3339(offer.created_at),
            updated_at: rfc3339(offer.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SettingsOfferList {
    /// By name.
    pub items: Vec<SettingsOfferView>,
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("no connection settings offer named {name:?}"))
}

/// The offer of that name, if any.
async fn find(api: &ApiState, name: &str) -> Result<Option<SettingsOffer>, ApiError> {
    Ok(settings::offers(api.store.as_ref())
        .await?
        .into_iter()
        .find(|o| o.name == name))
}

/// Tells the collectors `selectors` pick, without holding up the answer.
fn distribute(api: &ApiState, selectors: Vec<Selector>) {
    let distributor = api.settings.clone();
    tokio::spawn(async move {
        if let Err(err) = distributor.selected(&selectors).await {
            tracing::warn!(%err, "connection settings not told to every collector now; they hear on arrival");
        }
    });
}

/// Creates an offer, or replaces the one of that name; `201` when new.
#[utoipa::path(post, path = "/api/v1/connection-settings", tag = "connection settings",
    request_body = NewSettingsOffer,
    responses((status = 201, body = SettingsOfferView, description = "A new offer"),
        (status = 200, body = SettingsOfferView, description = "The offer of that name, replaced"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<NewSettingsOffer>, JsonRejection>,
) -> Result<(StatusCode, Json<SettingsOfferView>), ApiError> {
    caller.require(Role::Operator)?;
    let new = json_body(body)?;
    let selector = Selector::parse(&new.selector)
        .map_err(|e| ApiError::BadRequest(format!("selector: {e}")))?;
    let settings = ConnectionSettings {
        opamp: new.opamp,
        own_metrics: new.own_metrics,
        own_traces: new.own_traces,
        own_logs: new.own_logs,
        other_connections: new.other_connections,
    };
    settings::validate(&new.name, &settings).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let previous = find(&api, &new.name).await?;
    let now = SystemTime::now();
    let offer = SettingsOffer {
        name: new.name,
        selector,
        settings,
        created_at: previous.as_ref().map_or(now, |p| p.created_at),
        updated_at: now,
    };
    let document = serde_json::to_value(&offer)
        .map_err(|e| ApiError::BadRequest(format!("the offer cannot be stored: {e}")))?;
    let created = api
        .store
        .save_settings_offer(&offer.name, &document)
        .await?;
    let mut selectors = vec![offer.selector.clone()];
    selectors.extend(previous.map(|p| p.selector));
    distribute(&api, selectors);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(SettingsOfferView::new(&offer))))
}

#[utoipa::path(get, path = "/api/v1/connection-settings", tag = "connection settings",
    responses((status = 200, body = SettingsOfferList)))]
pub async fn list(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<SettingsOfferList>, ApiError> {
    caller.require(Role::Viewer)?;
    let offers = settings::offers(api.store.as_ref()).await?;
    Ok(Json(SettingsOfferList {
        items: offers.iter().map(SettingsOfferView::new).collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/connection-settings/{name}", tag = "connection settings",
    params(("name" = String, Path, description = "The offer's name")),
    responses((status = 200, body = SettingsOfferView), (status = 404, body = ErrorBody)))]
pub async fn one(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<SettingsOfferView>, ApiError> {
    caller.require(Role::Viewer)?;
    let offer = find(&api, &name).await?.ok_or_else(|| not_found(&name))?;
    Ok(Json(SettingsOfferView::new(&offer)))
}

/// Deletes an offer. Collectors keep the settings they applied (OpAMP cannot take settings back);
/// they are no longer offered them, and get what the remaining offers give them.
#[utoipa::path(delete, path = "/api/v1/connection-settings/{name}", tag = "connection settings",
    params(("name" = String, Path, description = "The offer's name")),
    responses((status = 204, description = "Deleted"), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(api): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Role::Operator)?;
    let offer = find(&api, &name).await?.ok_or_else(|| not_found(&name))?;
    if !api.store.delete_settings_offer(&name).await? {
        return Err(not_found(&name));
    }
    distribute(&api, vec![offer.selector]);
    Ok(StatusCode::NO_CONTENT)
}

/// A collector's labels changed: it may be picked by other offers now.
pub fn labels_changed(api: &ApiState, id: crate::collector::CollectorId) {
    let distributor = api.settings.clone();
    tokio::spawn(async move {
        if let Err(err) = distributor.one(id).await {
            tracing::warn!(collector_id = %id, %err, "connection settings not told after a label change; it hears on arrival");
        }
    });
}

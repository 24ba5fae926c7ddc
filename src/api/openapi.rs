//! The OpenAPI 3.1 document, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    auth, collectors, configurations, custom, error, events, over_time, rollouts, settings, view,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "opampd",
        description = "The state of every OpenTelemetry collector connected to opampd: current \
                       status, history and live transitions."
    ),
    paths(
        collectors::list,
        collectors::one,
        collectors::transitions,
        collectors::replace_labels,
        collectors::merge_labels,
        collectors::forget,
        collectors::restart,
        collectors::summary,
        over_time::summary_history,
        collectors::state_machine,
        events::events,
        configurations::create,
        configurations::list,
        configurations::history,
        configurations::version,
        configurations::diff,
        rollouts::create,
        rollouts::list,
        rollouts::one,
        rollouts::targets,
        rollouts::control,
        rollouts::upgrade,
        settings::create,
        settings::list,
        settings::one,
        settings::delete,
        custom::to_one,
        custom::to_selected,
        auth::whoami,
    ),
    components(schemas(
        error::ErrorBody,
        error::ErrorDetail,
        view::CollectorView,
        view::TransitionView,
        view::EventView,
        collectors::CollectorPage,
        collectors::TransitionPage,
        collectors::Summary,
        over_time::SummaryHistory,
        over_time::CountsPoint,
        collectors::StateMachine,
        configurations::NewConfiguration,
        configurations::ConfigurationVersionView,
        configurations::ConfigurationList,
        configurations::ConfigurationHistory,
        configurations::ConfigurationDiff,
        configurations::FileDiff,
        rollouts::NewRolloutBody,
        rollouts::NewUpgradeBody,
        crate::fleet::rollout::Payload,
        crate::fleet::rollout::PackageSpec,
        rollouts::RolloutView,
        rollouts::RolloutList,
        rollouts::TargetPage,
        crate::fleet::summary::RolloutSummary,
        crate::fleet::rollout::Rollout,
        crate::fleet::rollout::Target,
        crate::fleet::rollout::Outcome,
        crate::fleet::rollout::Status,
        crate::fleet::rollout::RolloutOptions,
        settings::NewSettingsOffer,
        settings::SettingsOfferView,
        settings::SettingsOfferList,
        view::ConnectionSettingsView,
        custom::NewCustomMessage,
        custom::CustomMessageSent,
        custom::Skipped,
        custom::CustomMessageView,
        auth::WhoAmI,
    )),
    modifiers(&BearerAuth),
    security(("api_key" = [])),
    tags(
        (name = "collectors", description = "Collectors, their states and histories"),
        (name = "fleet", description = "The fleet as a whole and its live events"),
        (name = "configurations", description = "Configurations and their versions"),
        (name = "rollouts", description = "Configurations carried to the fleet, batch by batch"),
        (name = "connection settings", description = "Where collectors connect and send their own telemetry"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

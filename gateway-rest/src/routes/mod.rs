//! The REST routes, one file per resource. Each handler translates one call to the core.

use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{openapi, server::AppState};

pub(crate) mod cron;
pub(crate) mod events;
pub(crate) mod fallback;
pub(crate) mod keys;
pub(crate) mod openai;
pub(crate) mod sessions;
pub(crate) mod system;

/// Every route with its OpenAPI operation, registered together so neither can drift.
pub(crate) fn api() -> OpenApiRouter<AppState> {
    use utoipa::OpenApi as _;
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(sessions::create_session, sessions::list_sessions))
        .routes(routes!(sessions::get_session, sessions::delete_session))
        .routes(routes!(sessions::send_message, sessions::list_messages))
        .routes(routes!(system::status))
        .routes(routes!(keys::create_key, keys::list_keys))
        .routes(routes!(keys::get_key, keys::update_key, keys::revoke_key))
        .routes(routes!(cron::create_job, cron::list_jobs))
        .routes(routes!(cron::get_job, cron::update_job, cron::delete_job))
        .routes(routes!(cron::run_job))
        .routes(routes!(cron::list_runs))
        .routes(routes!(events::subscribe))
        .routes(routes!(openai::chat_completions))
        .routes(routes!(openai::list_models))
        .routes(routes!(system::healthz))
        .routes(routes!(system::readyz))
        .routes(routes!(openapi::openapi_json))
}

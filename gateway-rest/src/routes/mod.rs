//! The REST routes, one file per resource. Each handler translates one call to the core.

use std::future::Future;

use serde::Serialize;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    core_client::{CoreClient, CoreService},
    envelope::{ApiResult, Enveloped},
    headers::Caller,
    openapi,
    server::AppState,
};

pub(crate) mod content;
pub(crate) mod cron;
pub(crate) mod events;
pub(crate) mod fallback;
pub(crate) mod keys;
pub(crate) mod openai;
pub(crate) mod sampling;
pub(crate) mod sessions;
pub(crate) mod system;
pub(crate) mod tools;
pub(crate) mod usage;

/// Every route with its OpenAPI operation, registered together so neither can drift.
pub(crate) fn api() -> OpenApiRouter<AppState> {
    use utoipa::OpenApi as _;
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(sessions::create_session, sessions::list_sessions))
        .routes(routes!(sessions::get_session, sessions::delete_session))
        .routes(routes!(sessions::send_message, sessions::list_messages))
        .routes(routes!(system::status))
        .routes(routes!(usage::get_usage))
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

impl CoreClient {
    /// The usual handler's answer: `call` the core with `message`, make `data` of its answer,
    /// and envelope that (200) with the headers the core passed on.
    pub(crate) async fn enveloped<Req, Resp, T, F, Fut>(
        &self,
        caller: &Caller,
        message: Req,
        call: F,
        data: impl FnOnce(Resp) -> T,
    ) -> ApiResult<T>
    where
        Req: Clone,
        T: Serialize,
        F: Fn(CoreService, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let reply = self.call(caller, message, call).await?;
        Ok(Enveloped::ok(data(reply.message)).with_headers(reply.headers))
    }
}

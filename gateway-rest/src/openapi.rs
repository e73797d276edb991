//! The OpenAPI document. Paths come from the handlers' `#[utoipa::path]` attributes as the router
//! registers them (see `server::router`), so the document cannot drift from the routes; this file
//! holds what is shared: the envelope and error responses, the bearer scheme, and the headers every
//! exchange carries.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use utoipa::{
    Modify, OpenApi,
    openapi::{
        self, HttpMethod, RefOr,
        header::HeaderBuilder,
        path::{Parameter, ParameterBuilder, ParameterIn},
        schema::{ObjectBuilder, Type},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use crate::{
    envelope::{ErrorEnvelope, ErrorObject},
    headers::SUPPORTED_VERSIONS,
};

/// The name the bearer scheme has in the document; handlers refer to it in `security(...)`.
pub(crate) const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "OpenClaw Gateway REST API",
        description = "The REST edge of OpenClaw Gateway. Every `/api/v1` answer is an envelope: \
            `{\"success\": true, \"data\": ..., \"timestamp\": ...}` or \
            `{\"success\": false, \"error\": {\"code\", \"message\", \"details\"}, \"timestamp\": ...}`. \
            Send `Authorization: Bearer <API key>`; key administration needs the internal token. \
            Every response carries `X-Request-ID` (yours when you sent a usable one) and \
            `OpenClaw-Version: 1.0`, plus the caller's rate-limit state.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    servers((url = "http://localhost:18789", description = "Local development")),
    tags(
        (name = "sessions", description = "Chat sessions with a model"),
        (name = "system", description = "The gateway's status and the edge's liveness"),
        (name = "keys", description = "API key administration (internal token only)"),
        (name = "cron", description = "Scheduled jobs: every/at/cron schedules, systemEvent and agentTurn payloads, run history"),
        (name = "events", description = "System events as server-sent events, resumable with Last-Event-ID"),
        (name = "usage", description = "The usage ledger: model calls, tokens and cost in integer micro-dollars, per day, model or key, as JSON or CSV"),
    ),
    components(
        schemas(ErrorEnvelope, ErrorObject),
        responses(
            responses::InvalidRequest,
            responses::Unauthorized,
            responses::Forbidden,
            responses::NotFound,
            responses::Conflict,
            responses::PayloadTooLarge,
            responses::UnsupportedMediaType,
            responses::RateLimited,
            responses::InternalError,
            responses::UpstreamError,
            responses::Unavailable,
            responses::UpstreamTimeout,
        ),
    ),
    modifiers(&BearerScheme),
)]
pub(crate) struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut openapi::OpenApi) {
        let components = openapi
            .components
            .get_or_insert_with(openapi::Components::new);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`oc_...`), or the internal token for key administration",
                    ))
                    .build(),
            ),
        );
    }
}

/// Documents the headers the `headers::stamp` middleware handles on every route: the optional
/// request headers, and the ones stamped on every response. Applied once the router has added
/// its paths, since the derive's own modifiers run before that.
pub(crate) fn document_common_headers(openapi: &mut openapi::OpenApi) {
    let version_param = ParameterBuilder::new()
        .name("OpenClaw-Version")
        .parameter_in(ParameterIn::Header)
        .required(openapi::Required::False)
        .description(Some(format!(
            "The API version; absent means 1.0. Supported versions: {}",
            SUPPORTED_VERSIONS.join(", ")
        )))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(SUPPORTED_VERSIONS.iter().copied())),
        ))
        .build();
    let request_id_param = ParameterBuilder::new()
        .name("X-Request-ID")
        .parameter_in(ParameterIn::Header)
        .required(openapi::Required::False)
        .description(Some(
            "Your ID for this request, echoed back and used as the idempotency key of a send. \
             Usable IDs are 1-128 printable ASCII characters; any other value (empty, too long) \
             is not refused but replaced by a generated ID, on every route, the probes included",
        ))
        // No length bounds in the schema: no route refuses an unusable ID (a probe must never
        // turn an orchestrator away over a header), so bounds here would promise a refusal.
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build();
    let add_params = |params: &mut Option<Vec<Parameter>>, versioned: bool| {
        let params = params.get_or_insert_with(Vec::new);
        if versioned {
            params.push(version_param.clone());
        }
        params.push(request_id_param.clone());
    };

    for (path, item) in openapi.paths.paths.iter_mut() {
        // The version check runs on the guide's API only (`headers::stamp`).
        let versioned = path.starts_with("/api/");
        for method in [
            HttpMethod::Get,
            HttpMethod::Post,
            HttpMethod::Patch,
            HttpMethod::Put,
            HttpMethod::Delete,
        ] {
            let operation = match method {
                HttpMethod::Get => item.get.as_mut(),
                HttpMethod::Post => item.post.as_mut(),
                HttpMethod::Patch => item.patch.as_mut(),
                HttpMethod::Put => item.put.as_mut(),
                HttpMethod::Delete => item.delete.as_mut(),
                _ => None,
            };
            let Some(operation) = operation else { continue };
            add_params(&mut operation.parameters, versioned);
            if versioned {
                // Any operation can meet an unsupported `OpenClaw-Version`.
                operation
                    .responses
                    .responses
                    .entry("400".to_owned())
                    .or_insert_with(|| {
                        RefOr::Ref(openapi::Ref::from_response_name("InvalidRequest"))
                    });
            }
            for response in operation.responses.responses.values_mut() {
                if let RefOr::T(response) = response {
                    add_response_headers(response);
                }
            }
        }
    }
    if let Some(components) = openapi.components.as_mut() {
        for response in components.responses.values_mut() {
            if let RefOr::T(response) = response {
                add_response_headers(response);
            }
        }
    }
}

fn add_response_headers(response: &mut openapi::Response) {
    let string = || ObjectBuilder::new().schema_type(Type::String).build();
    response.headers.insert(
        "X-Request-ID".to_owned(),
        HeaderBuilder::new()
            .schema(string())
            .description(Some("The request's ID, the client's or a generated UUID"))
            .build(),
    );
    response.headers.insert(
        "OpenClaw-Version".to_owned(),
        HeaderBuilder::new()
            .schema(string())
            .description(Some("The API version that answered: 1.0"))
            .build(),
    );
}

/// The document, serialized once at start-up.
#[derive(Debug, Clone)]
pub(crate) struct OpenApiJson(pub(crate) Arc<str>);

/// This document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "system",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object)),
    security(())
)]
pub(crate) async fn openapi_json(State(OpenApiJson(document)): State<OpenApiJson>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document.to_string(),
    )
        .into_response()
}

/// The error responses, one per code and status, shared by the routes that can give them.
pub(crate) mod responses {
    #![allow(dead_code)] // Types only: they exist to be named in `responses(...)`.

    use utoipa::{IntoResponses, ToResponse};

    use crate::envelope::ErrorEnvelope;

    /// The request is malformed or invalid: see `error.details`.
    #[derive(ToResponse)]
    #[response(example = json!({"success": false, "error": {"code": "INVALID_REQUEST", "message": "Missing required field", "details": "The field 'model' is required"}, "timestamp": "2026-02-14T22:00:00Z"}))]
    pub(crate) struct InvalidRequest(ErrorEnvelope);

    /// The API key is missing, malformed, unknown or revoked.
    #[derive(ToResponse)]
    #[response(example = json!({"success": false, "error": {"code": "UNAUTHORIZED", "message": "Invalid API key", "details": "Please provide a valid API key in Authorization header"}, "timestamp": "2026-02-14T22:00:00Z"}))]
    pub(crate) struct Unauthorized(ErrorEnvelope);

    /// The API key lacks the scope this request needs.
    #[derive(ToResponse)]
    #[response(example = json!({"success": false, "error": {"code": "FORBIDDEN", "message": "Forbidden", "details": "The API key lacks the 'sessions' scope"}, "timestamp": "2026-02-14T22:00:00Z"}))]
    pub(crate) struct Forbidden(ErrorEnvelope);

    /// No such resource for this caller.
    #[derive(ToResponse)]
    #[response(example = json!({"success": false, "error": {"code": "NOT_FOUND", "message": "Session not found", "details": "Check the resource ID"}, "timestamp": "2026-02-14T22:00:00Z"}))]
    pub(crate) struct NotFound(ErrorEnvelope);

    /// The resource changed meanwhile, or another request holds it.
    #[derive(ToResponse)]
    #[response(example = json!({"success": false, "error": {"code": "CONFLICT", "message": "Conflict", "details": "A request with this X-Request-ID is still running"}, "timestamp": "2026-02-14T22:00:00Z"}))]
    pub(crate) struct Conflict(ErrorEnvelope);

    /// The body is larger than the gateway accepts (code INVALID_REQUEST).
    #[derive(ToResponse)]
    #[response(example = json!({"success": false, "error": {"code": "INVALID_REQUEST", "message": "Request body too large", "details": "The request body must be at most 1048576 bytes"}, "timestamp": "2026-02-14T22:00:00Z"}))]
    pub(crate) struct PayloadTooLarge(ErrorEnvelope);

    /// The body is not declared as JSON (code INVALID_REQUEST).
    #[derive(ToResponse)]
    #[response(example = json!({"success": false, "error": {"code": "INVALID_REQUEST", "message": "Unsupported Content-Type 'text/plain'", "details": "Send the body as JSON with Content-Type: application/json"}, "timestamp": "2026-02-14T22:00:00Z"}))]
    pub(crate) struct UnsupportedMediaType(ErrorEnvelope);

    /// A per-key limit is exhausted; retry after `error.retryAfter` seconds.
    #[derive(ToResponse)]
    #[response(
        example = json!({"success": false, "error": {"code": "RATE_LIMIT_EXCEEDED", "message": "Rate limit exceeded", "details": "Try again in 30 seconds", "retryAfter": 30}, "timestamp": "2026-02-14T22:00:00Z"}),
        headers(("Retry-After" = u64, description = "Seconds to wait before retrying"))
    )]
    pub(crate) struct RateLimited(ErrorEnvelope);

    /// The gateway failed; report the X-Request-ID if it persists.
    #[derive(ToResponse)]
    #[response(example = json!({"success": false, "error": {"code": "INTERNAL_ERROR", "message": "Internal server error", "details": "Retry later, and report the X-Request-ID if it persists"}, "timestamp": "2026-02-14T22:00:00Z"}))]
    pub(crate) struct InternalError(ErrorEnvelope);

    /// The model provider failed.
    #[derive(ToResponse)]
    #[response(example = json!({"success": false, "error": {"code": "UPSTREAM_ERROR", "message": "The model provider failed", "details": "Retry later, or choose another model"}, "timestamp": "2026-02-14T22:00:00Z"}))]
    pub(crate) struct UpstreamError(ErrorEnvelope);

    /// A dependency is down, the core is unreachable, or the replica is draining.
    #[derive(ToResponse)]
    #[response(example = json!({"success": false, "error": {"code": "UNAVAILABLE", "message": "The gateway core is unreachable", "details": "Retry shortly; if it persists, check that openclaw-gateway serve is running and OPENCLAW_CORE_URL points at it"}, "timestamp": "2026-02-14T22:00:00Z"}))]
    pub(crate) struct Unavailable(ErrorEnvelope);

    /// The model or the core did not answer in time.
    #[derive(ToResponse)]
    #[response(example = json!({"success": false, "error": {"code": "UPSTREAM_TIMEOUT", "message": "The request timed out", "details": "Retry later, with the same X-Request-ID to avoid a duplicate"}, "timestamp": "2026-02-14T22:00:00Z"}))]
    pub(crate) struct UpstreamTimeout(ErrorEnvelope);

    /// The errors any authenticated call through the core can answer with: the key, its scope,
    /// its limits, and the gateway or core failing or not answering in time. Named in a route's
    /// `responses(...)` in place of the six entries.
    #[derive(IntoResponses)]
    pub(crate) enum CallErrors {
        #[response(status = 401)]
        Unauthorized(#[ref_response] Unauthorized),
        #[response(status = 403)]
        Forbidden(#[ref_response] Forbidden),
        #[response(status = 429)]
        RateLimited(#[ref_response] RateLimited),
        #[response(status = 500)]
        InternalError(#[ref_response] InternalError),
        #[response(status = 503)]
        Unavailable(#[ref_response] Unavailable),
        #[response(status = 504)]
        UpstreamTimeout(#[ref_response] UpstreamTimeout),
    }

    /// The errors of reading a JSON body: malformed or invalid, too large, not declared as JSON.
    #[derive(IntoResponses)]
    pub(crate) enum BodyErrors {
        #[response(status = 400)]
        InvalidRequest(#[ref_response] InvalidRequest),
        #[response(status = 413)]
        PayloadTooLarge(#[ref_response] PayloadTooLarge),
        #[response(status = 415)]
        UnsupportedMediaType(#[ref_response] UnsupportedMediaType),
    }
}

//! The one error type of the edge, and the one place where an error code becomes an HTTP status.
//!
//! Errors reach the edge from two sides: the core answers a failed call with a `tonic::Status`
//! carrying `google.rpc` details (`ErrorInfo`: the code name and the details sentence;
//! `BadRequest`: the field at fault and, where a client acts on it, why; `RetryInfo`: the wait),
//! and the edge itself rejects requests whose JSON shape, headers or route are wrong. Both end
//! as an [`ApiError`], read from the details and never from the sentences. Every body shape
//! renders from it through [`ApiError::render`]: the guide's envelope (its `IntoResponse`) and
//! OpenAI's (`routes::openai`), with the same status and headers.

use std::time::Duration;

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use tonic::Code;
use tonic_types::StatusExt as _;

use crate::{
    envelope::ErrorEnvelope,
    headers,
    proto::{ErrorCode, FieldViolationReason},
};

/// What the edge tells the caller when a request fails.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) code: ErrorCode,
    /// A short summary ("Missing required field").
    pub(crate) message: String,
    /// What to fix ("The field 'model' is required").
    pub(crate) details: String,
    /// Whole seconds; only for `RATE_LIMIT_EXCEEDED`.
    pub(crate) retry_after: Option<u64>,
    /// The request field at fault (`model`, `messages[0].role`), when one is.
    pub(crate) field: Option<String>,
    /// Why [`Self::field`] is at fault, when the contract names the reason (an unknown model).
    pub(crate) field_reason: Option<FieldViolationReason>,
    /// The quota a `QUOTA_EXCEEDED` error is about: its name, value and the usage. Boxed like
    /// the headers: rare, and the error travels in every handler's `Result`.
    pub(crate) breach: Option<Box<Breach>>,
    /// Set where the contract refines a code's status (413, 415, 405 for `INVALID_REQUEST`).
    status_override: Option<StatusCode>,
    /// Headers the core asked to pass on (rate-limit state, `Retry-After`). Boxed: most errors
    /// have none, and the error travels in every handler's `Result`.
    headers: Option<Box<HeaderMap>>,
}

/// The quota or budget a refusal is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Breach {
    Quota(QuotaBreach),
    Budget(BudgetBreach),
}

/// What a `QUOTA_EXCEEDED` error names: the quota (`maxSessions`), its value and the usage the
/// request found; rendered as `error.quota`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub(crate) struct QuotaBreach {
    /// The quota's name as the key administration API spells it.
    #[schema(example = "maxSessions")]
    pub(crate) name: String,
    /// The quota's value for this key.
    #[schema(example = 1000)]
    pub(crate) limit: u64,
    /// What is in use (sessions, bytes, messages, jobs), before the refused request.
    #[schema(example = 1000)]
    pub(crate) used: u64,
}

/// What a `BUDGET_EXCEEDED` error names: whose budget, its limit, the spend and when it
/// resets; rendered as `error.budget` (and `error.resetsAt`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BudgetBreach {
    /// `key` (this API key's budget) or `gateway` (the operators' budget for every key).
    #[schema(example = "key")]
    pub(crate) scope: String,
    /// Micro-dollars (US$0.000001) per period.
    #[schema(example = 5000000)]
    pub(crate) limit_micros: u64,
    /// Settled spend in the period so far, in micro-dollars.
    #[schema(example = 4999000)]
    pub(crate) spent_micros: u64,
    /// Reserved for this key's calls still in flight, in micro-dollars.
    #[schema(example = 0)]
    pub(crate) reserved_micros: u64,
    /// The most the refused call could have cost, in micro-dollars.
    #[schema(example = 2400)]
    pub(crate) cost_micros: u64,
    /// `day`, `week` or `month`.
    #[schema(example = "day")]
    pub(crate) period: String,
    /// When the period ends and the budget is whole again (RFC 3339).
    #[schema(example = "2026-12-08T00:00:00Z")]
    pub(crate) resets_at: String,
}

/// The HTTP status of each code. The proto's `ErrorCode` comment holds the same table.
pub(crate) fn http_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::RateLimitExceeded => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::InternalError | ErrorCode::Unspecified => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Forbidden | ErrorCode::QuotaExceeded => StatusCode::FORBIDDEN,
        ErrorCode::BudgetExceeded => StatusCode::PAYMENT_REQUIRED,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::UpstreamError => StatusCode::BAD_GATEWAY,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
    }
}

/// The name a code has on the wire ("INVALID_REQUEST"); the unspecified code never leaves the edge.
pub(crate) fn code_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Unspecified => ErrorCode::InternalError.as_str_name(),
        other => other.as_str_name(),
    }
}

impl ApiError {
    pub(crate) fn new(
        code: ErrorCode,
        message: impl Into<String>,
        details: impl Into<String>,
    ) -> Self {
        Self {
            code,
            message: message.into(),
            details: details.into(),
            retry_after: None,
            field: None,
            field_reason: None,
            breach: None,
            status_override: None,
            headers: None,
        }
    }

    /// The quota a `QUOTA_EXCEEDED` error names.
    pub(crate) fn quota(&self) -> Option<&QuotaBreach> {
        match self.breach.as_deref() {
            Some(Breach::Quota(quota)) => Some(quota),
            _ => None,
        }
    }

    /// The budget a `BUDGET_EXCEEDED` error names.
    pub(crate) fn budget(&self) -> Option<&BudgetBreach> {
        match self.breach.as_deref() {
            Some(Breach::Budget(budget)) => Some(budget),
            _ => None,
        }
    }

    pub(crate) fn invalid_request(message: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message, details)
    }

    /// A request field is missing or wrong; `field` is its path in the request
    /// (`messages[0].role`).
    pub(crate) fn invalid_field(
        field: impl Into<String>,
        message: impl Into<String>,
        details: impl Into<String>,
    ) -> Self {
        let mut error = Self::invalid_request(message, details);
        error.field = Some(field.into());
        error
    }

    pub(crate) fn internal() -> Self {
        Self::new(
            ErrorCode::InternalError,
            "Internal server error",
            "The gateway could not complete the request; retry later, and report the X-Request-ID if it persists",
        )
    }

    /// The core cannot be reached (down, restarting, or misconfigured address).
    pub(crate) fn core_unreachable() -> Self {
        Self::new(
            ErrorCode::Unavailable,
            "The gateway core is unreachable",
            "Retry shortly; if it persists, check that openclaw-gateway serve is running and OPENCLAW_CORE_URL points at it",
        )
    }

    /// This edge is shutting down.
    pub(crate) fn draining() -> Self {
        Self::new(
            ErrorCode::Unavailable,
            "This gateway replica is shutting down",
            "Retry the request; another replica will answer it",
        )
    }

    /// The core did not answer within the edge's deadline.
    pub(crate) fn core_timeout(timeout: Duration) -> Self {
        Self::new(
            ErrorCode::UpstreamTimeout,
            "The gateway core did not answer in time",
            format!(
                "No answer within {} seconds; retry later, with the same X-Request-ID to avoid a duplicate",
                timeout.as_secs()
            ),
        )
    }

    /// The core answered, but without a part the contract promises.
    pub(crate) fn incomplete_answer(what: &str) -> Self {
        tracing::error!(missing = what, "the core's answer lacks a required field");
        Self::internal()
    }

    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status_override = Some(status);
        self
    }

    pub(crate) fn with_headers(mut self, headers: HeaderMap) -> Self {
        self.headers = (!headers.is_empty()).then(|| Box::new(headers));
        self
    }

    /// `retryAfter`: the wait the caller is told, only where the contract promises one.
    pub(crate) fn rendered_retry_after(&self) -> Option<u64> {
        match self.code {
            ErrorCode::RateLimitExceeded => self.retry_after,
            _ => None,
        }
    }

    /// The one way a failed request becomes a response, whatever the body's shape: `body` is
    /// this error in the caller's API (the guide's envelope, OpenAI's `{"error": ...}`); the
    /// status, the log line and the headers are the same for all.
    pub(crate) fn render<B: Serialize>(mut self, body: impl FnOnce(&ApiError) -> B) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %self, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "request rejected");
        }
        let headers = self.response_headers();
        let mut response = (status, crate::envelope::json_body(&body(&self))).into_response();
        response.headers_mut().extend(headers);
        response
    }

    /// The headers every rendering of this error carries: what the core asked to pass on
    /// (rate-limit state), and `Retry-After` with the wait the body states.
    fn response_headers(&mut self) -> HeaderMap {
        let mut headers = self
            .headers
            .take()
            .map(|headers| *headers)
            .unwrap_or_default();
        if let Some(seconds) = self.rendered_retry_after()
            && !headers.contains_key(header::RETRY_AFTER)
        {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        headers
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status_override
            .unwrap_or_else(|| http_status(self.code))
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} ({})",
            code_name(self.code),
            self.message,
            self.details
        )
    }
}

impl std::error::Error for ApiError {}

/// The guide's envelope.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.render(|error| ErrorEnvelope::from(error))
    }
}

/// A failed core call. The core names the code in `ErrorInfo.reason`; a status without one came
/// from the transport (or from something that is not our core) and is mapped by its gRPC code.
/// The field at fault and its reason come from `BadRequest`, the wait from `RetryInfo`.
impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let forwarded = headers::forwardable(status.metadata().clone());
        let details = status.get_error_details();
        let named = details.error_info().and_then(|info| {
            ErrorCode::from_str_name(&info.reason)
                .filter(|code| *code != ErrorCode::Unspecified)
                .map(|code| (code, info.metadata.get("details").cloned()))
        });
        let mut error = match named {
            Some((code, details_sentence)) => {
                let message = match status.message() {
                    "" => default_message(code).to_owned(),
                    message => message.to_owned(),
                };
                let details_sentence = details_sentence
                    .filter(|sentence| !sentence.is_empty())
                    .or_else(|| first_field_violation(&details))
                    .unwrap_or_else(|| default_details(code).to_owned());
                ApiError::new(code, message, details_sentence)
            }
            None => from_bare_status(&status),
        };
        if let Some(violation) = details
            .bad_request()
            .and_then(|bad| bad.field_violations.first())
            .filter(|violation| !violation.field.is_empty())
        {
            error.field = Some(violation.field.clone());
            // A reason this edge does not know yet is an ordinary field error to it.
            error.field_reason = FieldViolationReason::from_str_name(&violation.reason)
                .filter(|reason| *reason != FieldViolationReason::Unspecified);
        }
        if error.code == ErrorCode::QuotaExceeded {
            error.breach = details.error_info().and_then(|info| {
                Some(Box::new(Breach::Quota(QuotaBreach {
                    name: info.metadata.get("quota")?.clone(),
                    limit: info.metadata.get("limit")?.parse().ok()?,
                    used: info.metadata.get("used")?.parse().ok()?,
                })))
            });
        }
        if error.code == ErrorCode::BudgetExceeded {
            error.breach = details.error_info().and_then(|info| {
                let text = |name: &str| info.metadata.get(name).cloned();
                let number = |name: &str| info.metadata.get(name)?.parse().ok();
                Some(Box::new(Breach::Budget(BudgetBreach {
                    scope: text("scope")?,
                    limit_micros: number("limitMicros")?,
                    spent_micros: number("spentMicros")?,
                    reserved_micros: number("reservedMicros")?,
                    cost_micros: number("costMicros")?,
                    period: text("period")?,
                    resets_at: text("resetsAt")?,
                })))
            });
        }
        if error.code == ErrorCode::RateLimitExceeded {
            error.retry_after = details
                .retry_info()
                .and_then(|info| info.retry_delay)
                .map(whole_seconds_up)
                .or_else(|| retry_after_header(&forwarded));
        }
        error.with_headers(forwarded)
    }
}

/// A status without `ErrorInfo`: never echo its message, which may be a transport internal.
fn from_bare_status(status: &tonic::Status) -> ApiError {
    tracing::warn!(
        grpc_code = ?status.code(),
        grpc_message = status.message(),
        "the core answered without an error code"
    );
    // A status with a source was made on this side of the wire from a transport failure
    // (connection reset, broken stream); the core never got to answer.
    let from_transport = std::error::Error::source(status).is_some();
    let code = match status.code() {
        Code::Unavailable | Code::Cancelled => return ApiError::core_unreachable(),
        Code::Unknown if from_transport => return ApiError::core_unreachable(),
        Code::DeadlineExceeded => ErrorCode::UpstreamTimeout,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            ErrorCode::InvalidRequest
        }
        Code::Unauthenticated => ErrorCode::Unauthorized,
        Code::PermissionDenied => ErrorCode::Forbidden,
        Code::NotFound => ErrorCode::NotFound,
        Code::AlreadyExists | Code::Aborted => ErrorCode::Conflict,
        Code::ResourceExhausted => ErrorCode::RateLimitExceeded,
        Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss | Code::Unimplemented => {
            ErrorCode::InternalError
        }
    };
    ApiError::new(code, default_message(code), default_details(code))
}

fn first_field_violation(details: &tonic_types::ErrorDetails) -> Option<String> {
    details
        .bad_request()
        .and_then(|bad| bad.field_violations.first())
        .map(|violation| violation.description.clone())
        .filter(|description| !description.is_empty())
}

fn retry_after_header(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(|seconds| seconds.max(1))
}

/// `retryAfter` is whole seconds, rounded up so a client that waits that long is admitted.
pub(crate) fn whole_seconds_up(delay: Duration) -> u64 {
    let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
    seconds.max(1)
}

fn default_message(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Unauthorized => "Invalid API key",
        ErrorCode::InvalidRequest => "Invalid request",
        ErrorCode::NotFound => "Resource not found",
        ErrorCode::RateLimitExceeded => "Rate limit exceeded",
        ErrorCode::InternalError | ErrorCode::Unspecified => "Internal server error",
        ErrorCode::Forbidden => "Forbidden",
        ErrorCode::Conflict => "Conflict",
        ErrorCode::QuotaExceeded => "Quota exceeded",
        ErrorCode::BudgetExceeded => "Budget exceeded",
        ErrorCode::UpstreamError => "The model provider failed",
        ErrorCode::Unavailable => "Service unavailable",
        ErrorCode::UpstreamTimeout => "The request timed out",
    }
}

fn default_details(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Unauthorized => "Please provide a valid API key in Authorization header",
        ErrorCode::InvalidRequest => "Check the request against /openapi.json",
        ErrorCode::NotFound => "Check the resource ID",
        ErrorCode::RateLimitExceeded => "Lower the request rate and retry later",
        ErrorCode::InternalError | ErrorCode::Unspecified => {
            "Retry later, and report the X-Request-ID if it persists"
        }
        ErrorCode::Forbidden => "The API key lacks the scope this request needs",
        ErrorCode::Conflict => "The resource changed meanwhile; read it again and retry",
        ErrorCode::QuotaExceeded => {
            "Delete what this API key no longer needs, or ask an administrator for a higher quota"
        }
        ErrorCode::BudgetExceeded => {
            "Wait for the budget period to reset, or ask an administrator for a higher budget"
        }
        ErrorCode::UpstreamError => "Retry later, or choose another model",
        ErrorCode::Unavailable => "Retry shortly",
        ErrorCode::UpstreamTimeout => {
            "Retry later, with the same X-Request-ID to avoid a duplicate"
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::Value;
    use tonic_types::{ErrorDetails, StatusExt as _};

    use super::*;

    const ALL_CODES: [(ErrorCode, u16); 12] = [
        (ErrorCode::Unauthorized, 401),
        (ErrorCode::InvalidRequest, 400),
        (ErrorCode::NotFound, 404),
        (ErrorCode::RateLimitExceeded, 429),
        (ErrorCode::InternalError, 500),
        (ErrorCode::Forbidden, 403),
        (ErrorCode::Conflict, 409),
        (ErrorCode::UpstreamError, 502),
        (ErrorCode::Unavailable, 503),
        (ErrorCode::UpstreamTimeout, 504),
        (ErrorCode::QuotaExceeded, 403),
        (ErrorCode::BudgetExceeded, 402),
    ];

    async fn render(error: ApiError) -> (StatusCode, HeaderMap, Value) {
        crate::envelope::tests::render(error.into_response()).await
    }

    fn status_from_core(
        code: Code,
        reason: &str,
        message: &str,
        details: &str,
        retry: Option<Duration>,
    ) -> tonic::Status {
        let mut error_details = ErrorDetails::with_error_info(
            reason,
            "openclaw.ai",
            HashMap::from([("details".to_owned(), details.to_owned())]),
        );
        if let Some(delay) = retry {
            error_details.set_retry_info(Some(delay));
        }
        tonic::Status::with_error_details(code, message, error_details)
    }

    #[tokio::test]
    async fn every_code_renders_the_envelope_with_its_status() {
        for (code, http) in ALL_CODES {
            let (status, headers, body) = render(ApiError::new(code, "Something", "Fix it")).await;
            assert_eq!(status.as_u16(), http, "{code:?}");
            assert_eq!(
                headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
                Some(&b"application/json"[..])
            );
            assert_eq!(body["success"], false);
            assert_eq!(body["error"]["code"], code.as_str_name());
            assert_eq!(body["error"]["message"], "Something");
            assert_eq!(body["error"]["details"], "Fix it");
            assert!(body["error"].get("retryAfter").is_none());
            let timestamp = body["timestamp"].as_str().expect("timestamp");
            assert!(
                chrono::DateTime::parse_from_rfc3339(timestamp).is_ok(),
                "{timestamp}"
            );
            assert!(
                timestamp.ends_with('Z') && timestamp.len() == 20,
                "{timestamp}"
            );
        }
    }

    #[tokio::test]
    async fn status_override_keeps_the_code() {
        let error = ApiError::invalid_request("Body too large", "At most 1 byte")
            .with_status(StatusCode::PAYLOAD_TOO_LARGE);
        let (status, _, body) = render(error).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"]["code"], "INVALID_REQUEST");
    }

    #[tokio::test]
    async fn rate_limit_carries_retry_after_in_body_and_header() {
        let mut error = ApiError::new(
            ErrorCode::RateLimitExceeded,
            "Rate limit exceeded",
            "Try again in 30 seconds",
        );
        error.retry_after = Some(30);
        let (status, headers, body) = render(error).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["error"]["retryAfter"], 30);
        assert_eq!(
            headers.get(header::RETRY_AFTER).map(|v| v.as_bytes()),
            Some(&b"30"[..])
        );
    }

    #[tokio::test]
    async fn retry_after_is_only_rendered_for_rate_limits() {
        let mut error = ApiError::new(ErrorCode::Unavailable, "Draining", "Retry");
        error.retry_after = Some(5);
        let (_, headers, body) = render(error).await;
        assert!(body["error"].get("retryAfter").is_none());
        assert!(headers.get(header::RETRY_AFTER).is_none());
    }

    #[tokio::test]
    async fn core_status_with_error_info_becomes_its_code() {
        let status = status_from_core(
            Code::InvalidArgument,
            "INVALID_REQUEST",
            "Missing required field",
            "The field 'model' is required",
            None,
        );
        let (http, _, body) = render(ApiError::from(status)).await;
        assert_eq!(http, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "INVALID_REQUEST");
        assert_eq!(body["error"]["message"], "Missing required field");
        assert_eq!(body["error"]["details"], "The field 'model' is required");
    }

    #[tokio::test]
    async fn the_reason_tells_upstream_error_from_unavailable() {
        let upstream = status_from_core(
            Code::Unavailable,
            "UPSTREAM_ERROR",
            "The model provider failed",
            "Retry later",
            None,
        );
        assert_eq!(ApiError::from(upstream).status(), StatusCode::BAD_GATEWAY);
        let draining = status_from_core(
            Code::Unavailable,
            "UNAVAILABLE",
            "Draining",
            "Retry on another replica",
            None,
        );
        assert_eq!(
            ApiError::from(draining).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test]
    async fn core_rate_limit_rounds_retry_delay_up_and_forwards_headers() {
        let mut status = status_from_core(
            Code::ResourceExhausted,
            "RATE_LIMIT_EXCEEDED",
            "Rate limit exceeded",
            "Try again in 30 seconds",
            Some(Duration::from_millis(29_200)),
        );
        status.metadata_mut().insert(
            "x-ratelimit-remaining-requests",
            "0".parse().expect("ascii"),
        );
        status
            .metadata_mut()
            .insert("x-internal-secret", "nope".parse().expect("ascii"));
        let (http, headers, body) = render(ApiError::from(status)).await;
        assert_eq!(http, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["error"]["retryAfter"], 30);
        assert_eq!(body["error"]["details"], "Try again in 30 seconds");
        assert_eq!(
            headers.get(header::RETRY_AFTER).map(|v| v.as_bytes()),
            Some(&b"30"[..])
        );
        assert_eq!(
            headers
                .get("x-ratelimit-remaining-requests")
                .map(|v| v.as_bytes()),
            Some(&b"0"[..])
        );
        assert!(headers.get("x-internal-secret").is_none());
    }

    #[tokio::test]
    async fn every_code_name_from_the_core_maps_back_to_its_status() {
        for (code, http) in ALL_CODES {
            let status = status_from_core(Code::Unknown, code.as_str_name(), "m", "d", None);
            assert_eq!(ApiError::from(status).status().as_u16(), http);
        }
    }

    #[tokio::test]
    async fn bare_unavailable_means_the_core_is_unreachable() {
        let status =
            tonic::Status::unavailable("tcp connect error: Connection refused (os error 111)");
        let (http, _, body) = render(ApiError::from(status)).await;
        assert_eq!(http, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "UNAVAILABLE");
        assert_eq!(body["error"]["message"], "The gateway core is unreachable");
        assert!(
            !body.to_string().contains("os error"),
            "transport internals must not leak: {body}"
        );
    }

    #[tokio::test]
    async fn a_transport_failure_on_our_side_means_the_core_is_unreachable() {
        let status =
            tonic::Status::from_error(Box::new(std::io::Error::other("connection reset by peer")));
        let (http, _, body) = render(ApiError::from(status)).await;
        assert_eq!(http, StatusCode::SERVICE_UNAVAILABLE);
        assert!(!body.to_string().contains("reset"));
    }

    #[tokio::test]
    async fn bare_internal_status_does_not_leak_its_message() {
        let status = tonic::Status::internal("redis: connection reset at 10.0.0.7:6379");
        let (http, _, body) = render(ApiError::from(status)).await;
        assert_eq!(http, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "INTERNAL_ERROR");
        assert!(!body.to_string().contains("redis"));
    }

    #[test]
    fn the_field_and_its_reason_come_from_bad_request() {
        let mut details = ErrorDetails::with_error_info(
            "INVALID_REQUEST",
            "openclaw.ai",
            HashMap::from([("details".to_owned(), "Whatever the core says".to_owned())]),
        );
        details.set_bad_request(vec![tonic_types::FieldViolation {
            field: "payload.model".to_owned(),
            description: "Whatever the core says".to_owned(),
            reason: "UNKNOWN_MODEL".to_owned(),
            localized_message: None,
        }]);
        let status = tonic::Status::with_error_details(Code::InvalidArgument, "Nope", details);
        let error = ApiError::from(status);
        assert_eq!(error.code, ErrorCode::InvalidRequest);
        assert_eq!(error.field.as_deref(), Some("payload.model"));
        assert_eq!(error.field_reason, Some(FieldViolationReason::UnknownModel));
    }

    #[test]
    fn a_status_without_bad_request_names_no_field() {
        let status = status_from_core(
            Code::InvalidArgument,
            "INVALID_REQUEST",
            "Missing required field",
            "The field 'model' is required",
            None,
        );
        let error = ApiError::from(status);
        assert_eq!(error.field, None, "the sentence is not read for a field");
        assert_eq!(error.field_reason, None);
    }

    #[test]
    fn whole_seconds_round_up_to_at_least_one() {
        assert_eq!(whole_seconds_up(Duration::ZERO), 1);
        assert_eq!(whole_seconds_up(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds_up(Duration::from_secs(30)), 30);
        assert_eq!(whole_seconds_up(Duration::from_millis(30_001)), 31);
    }
}

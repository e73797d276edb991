//! The product's errors, defined once. Each [`ErrorCode`] (from `proto/openclaw/v1/errors.proto`)
//! maps to exactly one gRPC status here; the REST edge maps the same code to its HTTP status.
//! A failed call carries the code as `google.rpc.ErrorInfo.reason`, the sentence telling the
//! user what to fix as `ErrorInfo.metadata["details"]`, field problems as `BadRequest` (the
//! field's name, and a [`FieldViolationReason`] where a client acts on it), and the wait
//! before a retry as `RetryInfo`, so gRPC and REST callers learn the same things. Everything a
//! client may act on travels in those details: the sentences are for people, and no reader of
//! a status has to parse them.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

pub use crate::proto::{ErrorCode, FieldViolationReason};
use crate::store::StoreError;

/// The `ErrorInfo.domain` of every error this gateway raises.
pub const ERROR_DOMAIN: &str = "openclaw.ai";

#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    /// Short, stable description ("Missing required field").
    pub message: String,
    /// What to do about it ("The field 'model' is required").
    pub details: String,
    /// The request field at fault, when one is.
    pub field: Option<String>,
    /// Why [`Self::field`] is at fault, when a client may act on the reason (an unknown model).
    pub field_reason: Option<FieldViolationReason>,
    pub retry_after: Option<Duration>,
    /// The quota a `QUOTA_EXCEEDED` error is about (boxed: rare, and the error travels in
    /// every `Result`).
    pub quota: Option<Box<QuotaBreach>>,
    /// The budget a `BUDGET_EXCEEDED` error is about (boxed like [`Self::quota`]).
    pub budget: Option<Box<BudgetBreach>>,
    /// Extra response metadata (rate-limit figures) that travels with the error. Boxed, with
    /// [`Self::quota`], to keep the error small: it travels in every `Result`.
    #[allow(clippy::box_collection)] // one pointer where a `Vec` is three
    pub metadata: Option<Box<Vec<(&'static str, String)>>>,
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Which quota a request would pass, its value and what is in use: what a `QUOTA_EXCEEDED`
/// error carries (as `ErrorInfo.metadata` `quota`, `limit` and `used`), so a client acts on it
/// without reading the sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaBreach {
    /// The quota's name as the key administration API spells it (`maxSessions`).
    pub quota: &'static str,
    pub limit: u64,
    /// The usage the request found, before the request (it would have made it more).
    pub used: u64,
}

/// The budget a model call would pass: what a `BUDGET_EXCEEDED` error carries (as
/// `ErrorInfo.metadata` `limitMicros`, `spentMicros`, `reservedMicros`, `costMicros`, `period`
/// and `resetsAt`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetBreach {
    /// `key` (the caller's key's budget) or `gateway` (the operators' budget for every key).
    pub scope: &'static str,
    pub limit_micros: u64,
    /// Settled spend in the period so far.
    pub spent_micros: u64,
    /// Reserved for calls still in flight.
    pub reserved_micros: u64,
    /// The most the refused call could have cost.
    pub cost_micros: u64,
    /// `day`, `week` or `month`.
    pub period: &'static str,
    pub resets_at: chrono::DateTime<chrono::Utc>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: details.into(),
            field: None,
            field_reason: None,
            retry_after: None,
            quota: None,
            budget: None,
            metadata: None,
        }
    }

    /// A model call would take its caller past a spend budget; nothing was called or charged.
    pub fn budget_exceeded(breach: BudgetBreach) -> Self {
        let whose = if breach.scope == "gateway" {
            "The gateway's spend budget for all keys"
        } else {
            "This API key's spend budget"
        };
        let in_flight = if breach.reserved_micros > 0 {
            format!(
                " (plus {} reserved for calls in flight)",
                crate::spend::dollars(breach.reserved_micros)
            )
        } else {
            String::new()
        };
        let mut err = Self::new(
            ErrorCode::BudgetExceeded,
            "Budget exceeded",
            format!(
                "{whose} is {} per {}; {} is spent{in_flight} and this call could cost up to {}. It resets at {}; wait for the reset, lower maxTokens, or ask an administrator for a higher budget",
                crate::spend::dollars(breach.limit_micros),
                breach.period,
                crate::spend::dollars(breach.spent_micros),
                crate::spend::dollars(breach.cost_micros),
                breach
                    .resets_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ),
        );
        metrics::counter!("openclaw_budget_refusals_total", "scope" => breach.scope).increment(1);
        err.budget = Some(Box::new(breach));
        err
    }

    /// A request would pass one of its key's quotas; nothing was stored. `unit` names what the
    /// figures count ("sessions", "bytes"), `remedy` what the caller can do about it.
    pub fn quota_exceeded(
        quota: &'static str,
        limit: u64,
        used: u64,
        unit: &str,
        remedy: &str,
    ) -> Self {
        let mut err = Self::new(
            ErrorCode::QuotaExceeded,
            "Quota exceeded",
            format!(
                "This API key's quota '{quota}' is {limit} {unit} and {used} {unit} are in use; {remedy}"
            ),
        );
        err.quota = Some(Box::new(QuotaBreach { quota, limit, used }));
        metrics::counter!("openclaw_quota_refusals_total", "quota" => quota).increment(1);
        err
    }

    /// A request field is missing or wrong.
    pub fn invalid_field(
        field: impl Into<String>,
        message: impl Into<String>,
        details: impl Into<String>,
    ) -> Self {
        let mut err = Self::new(ErrorCode::InvalidRequest, message, details);
        err.field = Some(field.into());
        err
    }

    pub fn invalid(message: impl Into<String>, details: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message, details)
    }

    pub fn unauthorized(details: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, "Invalid API key", details)
    }

    pub fn forbidden(details: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, "Permission denied", details)
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            ErrorCode::NotFound,
            format!("{what} not found"),
            format!(
                "No {} with id '{id}' exists for this API key; check the id",
                what.to_lowercase()
            ),
        )
    }

    pub fn unavailable(details: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, "Service unavailable", details)
    }

    pub fn internal() -> Self {
        Self::new(
            ErrorCode::InternalError,
            "Internal server error",
            "Something went wrong on our side; retry later, and report the X-Request-ID if it persists",
        )
    }

    /// Names why the field is at fault, for clients that act on it (`BadRequest`'s
    /// `FieldViolation.reason`); only meaningful with [`Self::invalid_field`].
    pub fn with_field_reason(mut self, reason: FieldViolationReason) -> Self {
        self.field_reason = Some(reason);
        self
    }

    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    pub fn with_metadata(mut self, metadata: Vec<(&'static str, String)>) -> Self {
        self.metadata = (!metadata.is_empty()).then(|| Box::new(metadata));
        self
    }

    /// The one place a code becomes a gRPC status code.
    pub fn grpc_code(code: ErrorCode) -> Code {
        match code {
            ErrorCode::Unauthorized => Code::Unauthenticated,
            ErrorCode::InvalidRequest => Code::InvalidArgument,
            ErrorCode::NotFound => Code::NotFound,
            ErrorCode::RateLimitExceeded | ErrorCode::QuotaExceeded | ErrorCode::BudgetExceeded => {
                Code::ResourceExhausted
            }
            ErrorCode::Forbidden => Code::PermissionDenied,
            ErrorCode::Conflict => Code::Aborted,
            ErrorCode::UpstreamError | ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::UpstreamTimeout => Code::DeadlineExceeded,
            ErrorCode::InternalError | ErrorCode::Unspecified => Code::Internal,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} ({})",
            self.code.as_str_name(),
            self.message,
            self.details
        )
    }
}

impl std::error::Error for ApiError {}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        let mut info = HashMap::new();
        info.insert("details".to_string(), err.details.clone());
        if let Some(breach) = &err.quota {
            info.insert("quota".to_string(), breach.quota.to_owned());
            info.insert("limit".to_string(), breach.limit.to_string());
            info.insert("used".to_string(), breach.used.to_string());
        }
        if let Some(budget) = &err.budget {
            info.insert("scope".to_string(), budget.scope.to_owned());
            info.insert("limitMicros".to_string(), budget.limit_micros.to_string());
            info.insert("spentMicros".to_string(), budget.spent_micros.to_string());
            info.insert(
                "reservedMicros".to_string(),
                budget.reserved_micros.to_string(),
            );
            info.insert("costMicros".to_string(), budget.cost_micros.to_string());
            info.insert("period".to_string(), budget.period.to_owned());
            info.insert(
                "resetsAt".to_string(),
                budget
                    .resets_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
        }
        let mut details = ErrorDetails::new();
        details.set_error_info(err.code.as_str_name(), ERROR_DOMAIN, info);
        if let Some(field) = &err.field {
            details.set_bad_request(vec![FieldViolation {
                field: field.clone(),
                description: err.details.clone(),
                reason: err
                    .field_reason
                    .map(|reason| reason.as_str_name().to_owned())
                    .unwrap_or_default(),
                localized_message: None,
            }]);
        }
        if let Some(wait) = err.retry_after {
            details.set_retry_info(Some(wait));
        }
        let mut status =
            Status::with_error_details(ApiError::grpc_code(err.code), err.message, details);
        if let Some(metadata) = err.metadata {
            crate::metadata::add_metadata(status.metadata_mut(), *metadata);
        }
        status
    }
}

impl From<StoreError> for ApiError {
    /// Store failures never reach a caller verbatim: they are logged here, once,
    /// and become UNAVAILABLE (the store is away) or INTERNAL_ERROR.
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(_) | StoreError::Timeout => {
                metrics::counter!("openclaw_store_errors_total", "op" => "request").increment(1);
                tracing::warn!(error = %err, "state store unavailable");
                ApiError::unavailable(
                    "The gateway's state store is unreachable; retry in a few seconds",
                )
                .with_retry_after(Duration::from_secs(1))
            }
            StoreError::Corrupt(_) => {
                tracing::error!(error = %err, "state store returned data that does not decode");
                ApiError::internal()
            }
            StoreError::Internal(_) => {
                tracing::error!(error = %err, "state store refused an operation of ours");
                ApiError::internal()
            }
            StoreError::NotReplicated(detail) => {
                tracing::warn!(%detail, "a write was not confirmed by enough replicas");
                ApiError::unavailable(detail).with_retry_after(Duration::from_secs(1))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt as _;

    use super::*;

    #[test]
    fn a_field_error_names_its_field_in_bad_request() {
        let status = Status::from(ApiError::invalid_field(
            "schedule.everyMs",
            "Invalid field value",
            "Any wording at all",
        ));
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "INVALID_REQUEST");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(
            info.metadata.get("details").map(String::as_str),
            Some("Any wording at all")
        );
        let violations = &details.bad_request().expect("BadRequest").field_violations;
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "schedule.everyMs");
        assert_eq!(violations[0].description, "Any wording at all");
        assert_eq!(
            violations[0].reason, "",
            "an ordinary invalid value has no reason"
        );
    }

    #[test]
    fn a_field_reason_travels_as_the_violation_reason() {
        let status = Status::from(
            ApiError::invalid_field("payload.model", "Unknown model", "Not here")
                .with_field_reason(FieldViolationReason::UnknownModel),
        );
        let details = status.get_error_details();
        let violation = &details.bad_request().expect("BadRequest").field_violations[0];
        assert_eq!(violation.field, "payload.model");
        assert_eq!(violation.reason, "UNKNOWN_MODEL");
    }

    #[test]
    fn a_quota_error_carries_the_quota_its_value_and_the_usage() {
        let status = Status::from(ApiError::quota_exceeded(
            "maxSessions",
            3,
            3,
            "sessions",
            "delete sessions you no longer need",
        ));
        assert_eq!(status.code(), Code::ResourceExhausted);
        let details = status.get_error_details();
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "QUOTA_EXCEEDED");
        assert_eq!(info.metadata["quota"], "maxSessions");
        assert_eq!(info.metadata["limit"], "3");
        assert_eq!(info.metadata["used"], "3");
        assert!(info.metadata["details"].contains("'maxSessions' is 3 sessions"));
    }

    #[test]
    fn an_error_without_a_field_has_no_bad_request() {
        let status = Status::from(ApiError::not_found("Session", "s1"));
        assert!(status.get_error_details().bad_request().is_none());
    }

    #[test]
    fn a_wait_travels_as_retry_info() {
        let status = Status::from(
            ApiError::new(ErrorCode::RateLimitExceeded, "Rate limit exceeded", "Wait")
                .with_retry_after(Duration::from_millis(2_500)),
        );
        assert_eq!(status.code(), Code::ResourceExhausted);
        let details = status.get_error_details();
        assert_eq!(
            details.retry_info().and_then(|info| info.retry_delay),
            Some(Duration::from_millis(2_500))
        );
    }

    #[test]
    fn a_store_timeout_is_unavailable_and_a_refused_operation_internal() {
        let timeout = ApiError::from(StoreError::Timeout);
        assert_eq!(timeout.code, ErrorCode::Unavailable);
        assert!(timeout.retry_after.is_some());
        let refused = ApiError::from(StoreError::Internal("WRONGTYPE".into()));
        assert_eq!(refused.code, ErrorCode::InternalError);
        assert!(
            !refused.details.contains("WRONGTYPE"),
            "no Redis internals leak"
        );
    }
}

//! The product's errors, defined once. Each [`ErrorCode`] (from `proto/openclaw/v1/errors.proto`)
//! maps to exactly one gRPC status here; the REST edge maps the same code to its HTTP status.
//! A failed call carries the code as `google.rpc.ErrorInfo.reason`, the sentence telling the
//! user what to fix as `ErrorInfo.metadata["details"]`, field problems as `BadRequest`, and
//! the wait before a retry as `RetryInfo`, so gRPC and REST callers learn the same things.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub use crate::proto::ErrorCode;
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
    pub retry_after: Option<Duration>,
    /// Extra response metadata (rate-limit figures) that travels with the error.
    pub metadata: Vec<(&'static str, String)>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: details.into(),
            field: None,
            retry_after: None,
            metadata: Vec::new(),
        }
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

    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    pub fn with_metadata(mut self, metadata: Vec<(&'static str, String)>) -> Self {
        self.metadata = metadata;
        self
    }

    /// The one place a code becomes a gRPC status code.
    pub fn grpc_code(code: ErrorCode) -> Code {
        match code {
            ErrorCode::Unauthorized => Code::Unauthenticated,
            ErrorCode::InvalidRequest => Code::InvalidArgument,
            ErrorCode::NotFound => Code::NotFound,
            ErrorCode::RateLimitExceeded => Code::ResourceExhausted,
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
        let mut details = ErrorDetails::new();
        details.set_error_info(err.code.as_str_name(), ERROR_DOMAIN, info);
        if let Some(field) = &err.field {
            details.add_bad_request_violation(field.clone(), err.details.clone());
        }
        if let Some(wait) = err.retry_after {
            details.set_retry_info(Some(wait));
        }
        let mut status =
            Status::with_error_details(ApiError::grpc_code(err.code), err.message, details);
        crate::gateway::add_metadata(status.metadata_mut(), err.metadata);
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
        }
    }
}

//! The guide's response envelope: `{"success", "data" | "error", "timestamp"}` around every
//! `/api/v1` answer.

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{error::ApiError, timestamp};

/// A successful answer: `data` is the per-endpoint object the guide shows.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SuccessEnvelope<T> {
    /// Always `true`.
    #[schema(example = true)]
    pub(crate) success: bool,
    pub(crate) data: T,
    /// When the gateway answered (RFC 3339, UTC, seconds).
    #[schema(example = "2026-02-14T22:00:00Z")]
    pub(crate) timestamp: String,
}

/// A failed answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ErrorEnvelope {
    /// Always `false`.
    #[schema(example = false)]
    pub(crate) success: bool,
    pub(crate) error: ErrorObject,
    /// When the gateway answered (RFC 3339, UTC, seconds).
    #[schema(example = "2026-02-14T22:00:00Z")]
    pub(crate) timestamp: String,
}

/// What went wrong and what to do about it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ErrorObject {
    /// One of UNAUTHORIZED, INVALID_REQUEST, NOT_FOUND, RATE_LIMIT_EXCEEDED, INTERNAL_ERROR,
    /// FORBIDDEN, CONFLICT, UPSTREAM_ERROR, UNAVAILABLE, UPSTREAM_TIMEOUT, QUOTA_EXCEEDED,
    /// BUDGET_EXCEEDED.
    #[schema(example = "INVALID_REQUEST")]
    pub(crate) code: String,
    #[schema(example = "Missing required field")]
    pub(crate) message: String,
    /// What to fix.
    #[schema(example = "The field 'model' is required")]
    pub(crate) details: String,
    /// Seconds to wait before retrying; only with RATE_LIMIT_EXCEEDED.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = 30, minimum = 1)]
    pub(crate) retry_after: Option<u64>,
    /// The quota a QUOTA_EXCEEDED error is about; only with that code.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(crate) quota: Option<crate::error::QuotaBreach>,
    /// When the spend budget resets (RFC 3339); only with BUDGET_EXCEEDED.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "2026-12-08T00:00:00Z")]
    pub(crate) resets_at: Option<String>,
    /// The budget a BUDGET_EXCEEDED error is about; only with that code.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub(crate) budget: Option<crate::error::BudgetBreach>,
}

impl From<&ApiError> for ErrorEnvelope {
    fn from(error: &ApiError) -> Self {
        Self {
            success: false,
            error: ErrorObject {
                code: crate::error::code_name(error.code).to_owned(),
                message: error.message.clone(),
                details: error.details.clone(),
                retry_after: error.rendered_retry_after(),
                quota: error.quota().cloned(),
                resets_at: error.budget().map(|b| b.resets_at.clone()),
                budget: error.budget().cloned(),
            },
            timestamp: timestamp::now(),
        }
    }
}

/// A handler's successful answer: the data, its status, and the headers the core passed on.
#[derive(Debug)]
pub(crate) struct Enveloped<T> {
    status: StatusCode,
    data: T,
    headers: HeaderMap,
}

impl<T: Serialize> Enveloped<T> {
    pub(crate) fn ok(data: T) -> Self {
        Self {
            status: StatusCode::OK,
            data,
            headers: HeaderMap::new(),
        }
    }

    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub(crate) fn with_headers(mut self, headers: HeaderMap) -> Self {
        self.headers = headers;
        self
    }
}

impl<T: Serialize> IntoResponse for Enveloped<T> {
    fn into_response(self) -> Response {
        let envelope = SuccessEnvelope {
            success: true,
            data: self.data,
            timestamp: timestamp::now(),
        };
        let mut response = (self.status, json_body(&envelope)).into_response();
        response.headers_mut().extend(self.headers);
        response
    }
}

/// Serializes a body with its content type. Our types always serialize; should one ever fail,
/// the caller still gets an envelope rather than an empty 500.
pub(crate) fn json_body<T: Serialize>(value: &T) -> Response {
    // Room for a typical answer up front, rather than growing from nothing.
    let mut bytes = Vec::with_capacity(1024);
    match serde_json::to_writer(&mut bytes, value) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "response body failed to serialize");
            const FALLBACK: &str = r#"{"success":false,"error":{"code":"INTERNAL_ERROR","message":"Internal server error","details":"Retry later, and report the X-Request-ID if it persists"}}"#;
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                FALLBACK,
            )
                .into_response()
        }
    }
}

/// Handlers answer with data or an [`ApiError`]; both become an envelope.
pub(crate) type ApiResult<T> = Result<Enveloped<T>, ApiError>;

#[cfg(test)]
pub(crate) mod tests {
    use axum::body::to_bytes;
    use serde_json::{Value, json};

    use super::*;

    /// A response's status, headers and JSON body, for the edge's unit tests.
    pub(crate) async fn render(response: Response) -> (StatusCode, HeaderMap, Value) {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (
            status,
            headers,
            serde_json::from_slice(&bytes).expect("JSON"),
        )
    }

    #[tokio::test]
    async fn success_wraps_data_with_a_second_precision_utc_timestamp() {
        let (status, headers, body) =
            render(Enveloped::ok(json!({"sessionId": "s-1"})).into_response()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        assert_eq!(body["success"], true);
        assert_eq!(body["data"], json!({"sessionId": "s-1"}));
        let timestamp = body["timestamp"].as_str().expect("timestamp");
        assert_eq!(timestamp.len(), "2026-02-14T22:00:00Z".len());
        assert!(timestamp.ends_with('Z'));
        assert_eq!(body.as_object().map(|o| o.len()), Some(3));
    }

    #[tokio::test]
    async fn success_keeps_its_status_and_forwarded_headers() {
        let mut forwarded = HeaderMap::new();
        forwarded.insert("openclaw-simulated", HeaderValue::from_static("true"));
        let response = Enveloped::ok(json!({}))
            .with_status(StatusCode::CREATED)
            .with_headers(forwarded)
            .into_response();
        let (status, headers, _) = render(response).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(
            headers.get("openclaw-simulated").map(|v| v.as_bytes()),
            Some(&b"true"[..])
        );
    }
}

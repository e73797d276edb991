//! Answers for requests no route takes, in the same envelope as everything else.

use axum::http::{Method, StatusCode, Uri};

use crate::{error::ApiError, proto::ErrorCode};

/// No route has this path.
pub(crate) async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "Route not found",
        format!(
            "No route for {method} {}; see /openapi.json for the routes this API serves",
            uri.path()
        ),
    )
}

/// The path exists but not with this method. 405 is not one of the contract's codes, so it
/// travels as INVALID_REQUEST; the router adds the `Allow` header.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::invalid_request(
        "Method not allowed",
        format!(
            "{method} is not allowed on {}; the Allow header lists the methods it accepts",
            uri.path()
        ),
    )
    .with_status(StatusCode::METHOD_NOT_ALLOWED)
}

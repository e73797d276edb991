//! Response metadata the core attaches to its answers: the caller's remaining quota
//! (`x-ratelimit-*`, also carried by errors), and the marks the edge copies onto its HTTP
//! response (`openclaw-simulated`, `openclaw-idempotent-replay`).

use tonic::Response;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::limits::Admission;

/// Marks an answer written by the offline simulator rather than a real model.
pub(crate) const SIMULATED: &str = "openclaw-simulated";

/// The names of [`Admission::header_values`], in its order, checked once at compile time.
const RATE_LIMIT_HEADERS: [http::HeaderName; 9] = [
    http::HeaderName::from_static("x-ratelimit-limit-requests"),
    http::HeaderName::from_static("x-ratelimit-remaining-requests"),
    http::HeaderName::from_static("x-ratelimit-reset-requests"),
    http::HeaderName::from_static("x-ratelimit-limit-tokens"),
    http::HeaderName::from_static("x-ratelimit-remaining-tokens"),
    http::HeaderName::from_static("x-ratelimit-reset-tokens"),
    http::HeaderName::from_static("x-ratelimit-limit-context"),
    http::HeaderName::from_static("x-ratelimit-remaining-context"),
    http::HeaderName::from_static("x-ratelimit-reset-context"),
];

/// A response carrying the caller's remaining quota as metadata.
pub(crate) fn respond<T>(message: T, admission: &Admission) -> Response<T> {
    let Some(values) = admission.header_values() else {
        return Response::new(message);
    };
    // Built as a header map of known names and room for the marks added later, rather than
    // inserted one by one into a map that grows and checks each name.
    let mut headers = http::HeaderMap::with_capacity(values.len() + 4);
    for ((name, value), known) in values.into_iter().zip(RATE_LIMIT_HEADERS) {
        debug_assert_eq!(name, known.as_str());
        headers.insert(known, http::HeaderValue::from(value));
    }
    Response::from_parts(
        MetadataMap::from_headers(headers),
        message,
        Default::default(),
    )
}

/// Adds `entries` to `metadata`; a value that is not valid metadata is left out.
pub(crate) fn add_metadata(metadata: &mut MetadataMap, entries: Vec<(&'static str, String)>) {
    for (name, value) in entries {
        if let Ok(value) = MetadataValue::try_from(value.as_str()) {
            metadata.insert(name, value);
        }
    }
}

/// Marks the response as answered by the simulator when `simulated`.
pub(crate) fn mark_simulated<T>(mut response: Response<T>, simulated: bool) -> Response<T> {
    if simulated {
        response
            .metadata_mut()
            .insert(SIMULATED, MetadataValue::from_static("true"));
    }
    response
}

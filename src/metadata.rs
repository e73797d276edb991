//! Response metadata the core attaches to its answers: the caller's remaining quota
//! (`x-ratelimit-*`, also carried by errors), and the marks the edge copies onto its HTTP
//! response (`openclaw-simulated`, `openclaw-idempotent-replay`).

use tonic::Response;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::limits::Admission;

/// Marks an answer written by the offline simulator rather than a real model.
pub(crate) const SIMULATED: &str = "openclaw-simulated";

/// A response carrying the caller's remaining quota as metadata.
pub(crate) fn respond<T>(message: T, admission: &Admission) -> Response<T> {
    let mut response = Response::new(message);
    if let Some(values) = admission.header_values() {
        let metadata = response.metadata_mut();
        for (name, value) in values {
            metadata.insert(name, MetadataValue::from(value));
        }
    }
    response
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

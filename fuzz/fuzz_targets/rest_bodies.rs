//! Every JSON request body the edge accepts, read and translated into its core request as the
//! handlers do. The first byte picks the body type. A body is either translated or refused with
//! the envelope's INVALID_REQUEST and a non-empty `details`; nothing panics.
#![no_main]

use gateway_rest::request_bodies::{RequestBody, translate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let kind = RequestBody::ALL[usize::from(pick) % RequestBody::ALL.len()];
    if let Err(rejection) = translate(kind, body) {
        assert_eq!(rejection.code, "INVALID_REQUEST", "{rejection:?}");
        assert!(!rejection.details.is_empty(), "{rejection:?}");
        assert!(!rejection.message.is_empty(), "{rejection:?}");
    }
});

//! The Authorization header as the core reads it: any value that HTTP can carry yields a
//! non-empty secret without surrounding whitespace, or UNAUTHENTICATED; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tonic::metadata::{MetadataMap, MetadataValue};

fuzz_target!(|data: &[u8]| {
    let mut metadata = MetadataMap::new();
    if let Ok(value) = MetadataValue::try_from(data) {
        metadata.insert("authorization", value);
    }
    match openclaw_gateway::auth::bearer(&metadata) {
        Ok(secret) => {
            assert!(!secret.is_empty());
            assert_eq!(secret, secret.trim());
            assert!(data.windows(secret.len()).any(|w| w == secret.as_bytes()));
        }
        Err(error) => {
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
        }
    }
});

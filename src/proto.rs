//! Generated code for the `openclaw.v1` contract in `proto/`.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("openclaw.v1");

/// The messages, when the edge is in the binary: its types (see `build.rs`).
#[cfg(feature = "rest")]
pub use gateway_rest::proto::*;

/// Encoded descriptors of every file in `proto/`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("openclaw_descriptor");

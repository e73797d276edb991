//! Generated gRPC client for the core's `openclaw.v1` contract.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("openclaw.v1");

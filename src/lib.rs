//! OpenClaw Gateway's core: the gRPC service that owns authentication, limits,
//! sessions and state. The REST edge (`gateway-rest`) translates to it.

pub mod auth;
pub mod cli;
pub mod completions;
pub mod config;
pub mod convert;
pub mod error;
pub mod gateway;
mod idempotency;
mod inference;
pub mod keys;
pub mod limits;
pub mod proto;
pub mod providers;
pub mod server;
pub mod sessions;
pub mod shutdown;
pub mod store;
pub mod system;
pub mod telemetry;
pub mod tokenizer;

//! OpenClaw Gateway's core: the gRPC service that owns authentication, limits,
//! sessions and state. The REST edge (`gateway-rest`) translates to it.

pub mod auth;
pub mod cli;
pub mod completions;
pub mod config;
pub mod convert;
pub mod cron;
pub mod dashboard;
pub mod error;
pub mod events;
pub mod gateway;
mod idempotency;
mod inference;
pub mod keys;
pub mod limits;
pub mod observe;
pub mod proto;
pub mod providers;
pub mod server;
pub mod sessions;
pub mod store;
pub mod system;
pub mod tokenizer;

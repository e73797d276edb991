//! OpenClaw Gateway's core: the gRPC service that owns authentication, limits,
//! sessions and state. The REST edge (`gateway-rest`) translates to it.

pub mod auth;
pub mod cli;
mod completions;
mod config;
mod convert;
pub mod cron;
mod dashboard;
mod error;
pub mod events;
mod front_door;
mod idempotency;
mod inference;
mod json_text;
mod keys;
pub mod limits;
mod metadata;
mod observe;
pub mod proto;
mod providers;
mod quotas;
mod server;
mod sessions;
pub mod spend;
pub mod store;
mod streaming;
mod system;
mod tokenizer;
mod usage;

//! `SystemService`: what the gateway is doing and whether its dependencies answer.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::gateway::{Gateway, Scope, respond};
use crate::proto::system_service_server::SystemService;
use crate::proto::{self, DependencyHealth};

pub struct System {
    gateway: Arc<Gateway>,
}

impl System {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        Self { gateway }
    }

    /// The store's health, measured by one round trip.
    pub async fn store_health(&self) -> DependencyHealth {
        let started = Instant::now();
        let outcome = self.gateway.store.ping().await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (status, detail) = match outcome {
            Ok(()) => ("ok", String::new()),
            Err(err) => ("down", err.to_string()),
        };
        DependencyHealth {
            name: self.gateway.store.name().into(),
            kind: "store".into(),
            status: status.into(),
            detail,
            latency_ms,
        }
    }
}

#[tonic::async_trait]
impl SystemService for System {
    async fn get_status(
        &self,
        request: Request<proto::GetStatusRequest>,
    ) -> Result<Response<proto::SystemStatus>, Status> {
        let (principal, admission) = self.gateway.enter(&request, Scope::Named("status")).await?;
        let gateway = &self.gateway;

        let mut dependencies = vec![self.store_health().await];
        for (provider, guard) in gateway.models.guarded_providers() {
            let simulated = provider.simulated();
            let circuit = guard.breaker.state();
            let (status, detail) = if simulated {
                (
                    "simulated",
                    "No credential configured: answered by the built-in offline simulator".into(),
                )
            } else if circuit != crate::providers::CircuitState::Closed {
                (
                    "degraded",
                    format!(
                        "Circuit {} after repeated failures: calls go to fallback models or fail fast",
                        circuit.as_str()
                    ),
                )
            } else {
                ("ok", String::new())
            };
            dependencies.push(DependencyHealth {
                name: provider.name().into(),
                kind: "provider".into(),
                status: status.into(),
                detail,
                latency_ms: 0.0,
            });
        }
        if gateway.limits.is_degraded() {
            dependencies.push(DependencyHealth {
                name: "rate-limiter".into(),
                kind: "limiter".into(),
                status: "degraded".into(),
                detail: format!(
                    "The shared limiter is unreachable; policy '{}' is in force",
                    gateway.limits.policy()
                ),
                latency_ms: 0.0,
            });
        }
        let state = if gateway.is_draining() {
            "draining"
        } else if dependencies
            .iter()
            .any(|d| d.status == "down" || d.status == "degraded")
        {
            "degraded"
        } else {
            "running"
        };

        // The caller's usage is read from the same counters that admitted this very request.
        let quota = gateway.quota(&principal);
        let usage = admission.usage;
        let resources = proto::Resources {
            token_usage: usage.tokens,
            context_usage: usage.context,
            request_usage: usage.requests,
            queue_depth: gateway.queue_depth(),
            token_limit: quota.tokens,
            context_limit: quota.context,
            request_limit: quota.requests,
        };
        let uptime = gateway.uptime();
        Ok(respond(
            proto::SystemStatus {
                gateway: state.into(),
                version: env!("CARGO_PKG_VERSION").into(),
                uptime: Some(prost_types::Duration {
                    seconds: uptime.as_secs() as i64,
                    nanos: 0,
                }),
                resources: Some(resources),
                dependencies,
                simulated: gateway.models.any_simulated(),
                replica: gateway.replica.clone(),
            },
            &admission,
        ))
    }
}

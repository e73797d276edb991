//! `SystemService`: what the gateway is doing and whether its dependencies answer.

use std::sync::Arc;
use std::time::Instant;

use tonic::{Request, Response, Status};

use crate::cron::store::CronStore;
use crate::front_door::{FrontDoor, Scope};
use crate::metadata::respond;
use crate::proto::system_service_server::SystemService;
use crate::proto::{self, DependencyHealth};
use crate::providers::ModelCatalog;
use crate::store::Store;

pub(crate) struct System {
    door: Arc<FrontDoor>,
    store: Arc<dyn Store>,
    /// Where the caller's cron jobs are counted.
    cron: Arc<dyn CronStore>,
    models: Arc<ModelCatalog>,
    replica: String,
    started: Instant,
}

impl System {
    /// Uptime counts from here: the system service is made as the replica starts.
    pub(crate) fn new(
        door: Arc<FrontDoor>,
        store: Arc<dyn Store>,
        cron: Arc<dyn CronStore>,
        models: Arc<ModelCatalog>,
        replica: String,
    ) -> Self {
        Self {
            door,
            store,
            cron,
            models,
            replica,
            started: Instant::now(),
        }
    }

    /// The caller's quotas with what it holds against them. A count the store cannot give now
    /// is left out (the status still answers, with the store shown down).
    async fn quota_usage(&self, principal: &crate::auth::Principal) -> Vec<proto::QuotaUsage> {
        let quotas = self.door.quotas(principal);
        let owner = principal.owner_id();
        let (sessions, jobs) =
            tokio::join!(self.store.session_count(owner), self.cron.job_count(owner));
        let row = |name: &str, limit, used: Option<u64>, unit: &str, per: &str| proto::QuotaUsage {
            name: name.into(),
            limit,
            used,
            unit: unit.into(),
            per: per.into(),
        };
        vec![
            row(
                "maxSessions",
                quotas.max_sessions,
                sessions.ok(),
                "sessions",
                "key",
            ),
            row(
                "maxMessagesPerSession",
                quotas.max_messages_per_session,
                None,
                "messages",
                "session",
            ),
            row(
                "maxSessionBytes",
                quotas.max_session_bytes,
                None,
                "bytes",
                "session",
            ),
            row(
                "maxMessageBytes",
                quotas.max_message_bytes,
                None,
                "bytes",
                "message",
            ),
            row(
                "maxCronJobs",
                quotas.max_cron_jobs,
                jobs.ok(),
                "jobs",
                "key",
            ),
            row(
                "sessionIdleTtlSeconds",
                quotas.session_idle_ttl_seconds,
                None,
                "seconds",
                "session",
            ),
        ]
    }

    /// The store's health, measured by one round trip.
    async fn store_health(&self) -> DependencyHealth {
        let started = Instant::now();
        let outcome = self.store.ping().await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (status, detail) = match outcome {
            Ok(()) => ("ok", String::new()),
            Err(err) => ("down", err.to_string()),
        };
        DependencyHealth {
            name: self.store.name().into(),
            kind: "store".into(),
            status: status.into(),
            detail,
            latency_ms,
        }
    }
}

impl System {
    /// The caller's key's budget and its spend in the current period (one read of the limits
    /// store); none without a budget. A spend the store cannot give now is left out.
    async fn budget_status(
        &self,
        principal: &crate::auth::Principal,
    ) -> Option<proto::BudgetStatus> {
        let crate::auth::Principal::Key(key) = principal else {
            return None;
        };
        let budget = key.budget.as_ref()?;
        self.spend_status(&key.id, budget).await
    }

    /// The gateway-wide budget, for the internal token (operators) only.
    async fn gateway_budget_status(
        &self,
        principal: &crate::auth::Principal,
    ) -> Option<proto::BudgetStatus> {
        if !matches!(principal, crate::auth::Principal::Internal) {
            return None;
        }
        let budget = self.door.spend_settings().gateway_budget.as_ref()?;
        self.spend_status(crate::spend::GATEWAY_BUDGET_KEY, budget)
            .await
    }

    async fn spend_status(
        &self,
        key: &str,
        budget: &crate::spend::KeyBudget,
    ) -> Option<proto::BudgetStatus> {
        let window = budget.at(self.door.spend_settings().clock.now());
        let spent = self.door.limits().period_spend(key, &window).await.ok()?;
        Some(proto::BudgetStatus {
            limit_micros: budget.limit_micros,
            period: budget.period.as_str().into(),
            time_zone: budget.time_zone.clone(),
            spent_micros: spent,
            period_start: Some(crate::convert::timestamp(window.period.start)),
            resets_at: Some(crate::convert::timestamp(window.resets_at)),
            thresholds: budget
                .thresholds_permille
                .iter()
                .map(|p| f64::from(*p) / 1000.0)
                .collect(),
        })
    }

    /// Redis's memory as last sampled, the policy's thresholds, and what the caller stores.
    async fn storage_status(&self, owner: &str) -> proto::StorageStatus {
        let pressure = self.door.pressure();
        let snapshot = pressure.snapshot();
        let settings = pressure.settings();
        proto::StorageStatus {
            used_bytes: snapshot.used_bytes,
            max_bytes: snapshot.max_bytes,
            level: snapshot.level.as_str().into(),
            soft_percent: settings.soft_percent.into(),
            hard_percent: settings.hard_percent.into(),
            fair_share_bytes: snapshot.fair_share_bytes,
            key_stored_bytes: pressure.stored_bytes(owner).await.unwrap_or(0),
            detail: snapshot.detail,
        }
    }
}

#[tonic::async_trait]
impl SystemService for System {
    async fn get_status(
        &self,
        request: Request<proto::GetStatusRequest>,
    ) -> Result<Response<proto::SystemStatus>, Status> {
        let (principal, admission) = self.door.enter(&request, Scope::Named("status")).await?;
        let door = &self.door;

        let mut dependencies = vec![self.store_health().await];
        // Each Redis node, where there are several: one down is visible here (and degrades the
        // status) while the state is still served.
        if let Ok(nodes) = self.store.nodes().await {
            for node in nodes {
                dependencies.push(DependencyHealth {
                    name: format!("redis {}", node.address),
                    kind: format!("store-{}", node.role),
                    status: if node.up { "ok" } else { "down" }.into(),
                    detail: node.detail,
                    latency_ms: 0.0,
                });
            }
        }
        for (provider, guard) in self.models.guarded_providers() {
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
        if door.limits().is_degraded() {
            dependencies.push(DependencyHealth {
                name: "rate-limiter".into(),
                kind: "limiter".into(),
                status: "degraded".into(),
                detail: format!(
                    "The shared limiter is unreachable; policy '{}' is in force",
                    door.limits().policy()
                ),
                latency_ms: 0.0,
            });
        }
        let state = if door.is_draining() {
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
        let quota = door.quota(&principal);
        let usage = admission.usage;
        let resources = proto::Resources {
            token_usage: usage.tokens,
            context_usage: usage.context,
            request_usage: usage.requests,
            queue_depth: door.queue_depth(),
            token_limit: quota.tokens,
            context_limit: quota.context,
            request_limit: quota.requests,
            quotas: self.quota_usage(&principal).await,
        };
        let storage = self.storage_status(principal.owner_id()).await;
        let (budget, gateway_budget) = tokio::join!(
            self.budget_status(&principal),
            self.gateway_budget_status(&principal)
        );
        let uptime = self.started.elapsed();
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
                simulated: self.models.any_simulated(),
                replica: self.replica.clone(),
                storage: Some(storage),
                budget,
                gateway_budget,
            },
            &admission,
        ))
    }
}

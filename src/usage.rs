//! `UsageService`: the usage ledger read back (docs/usage.md). Any valid credential may ask, for
//! what it describes is the caller's own spending: a key holder reads its own key only (naming
//! another key is FORBIDDEN); the internal token reads every key (those in the store, and
//! `internal`, its own calls) or the one it names.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use tonic::{Request, Response, Status};

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::front_door::{FrontDoor, Scope};
use crate::limits::INTERNAL_LEDGER_KEY;
use crate::metadata::respond;
use crate::proto::usage_service_server::UsageService;
use crate::proto::{self};
use crate::spend::UsageRow;
use crate::spend::report::{Figures, Report, ReportRange, summarize};
use crate::store::Store;

/// How many keys' ledgers are read at once for a report on every key.
const KEYS_READ_AT_ONCE: usize = 8;

pub(crate) struct Usage {
    door: Arc<FrontDoor>,
    store: Arc<dyn Store>,
}

impl Usage {
    pub(crate) fn new(door: Arc<FrontDoor>, store: Arc<dyn Store>) -> Self {
        Self { door, store }
    }

    /// The keys whose ledger the caller reads: its own, or (internal token) the one named or
    /// every one.
    async fn keys(&self, principal: &Principal, named: &str) -> ApiResult<Vec<String>> {
        let named = named.trim();
        match principal {
            Principal::Key(key) if named.is_empty() || named == key.id => Ok(vec![key.id.clone()]),
            Principal::Key(_) => Err(ApiError::forbidden(
                "An API key reads its own usage only: leave 'keyId' out, or ask with the internal token",
            )),
            Principal::Internal if named == INTERNAL_LEDGER_KEY => Ok(vec![named.to_owned()]),
            Principal::Internal if !named.is_empty() => match self.store.key_by_id(named).await? {
                Some(key) => Ok(vec![key.id]),
                None => Err(ApiError::not_found("Key", named)),
            },
            Principal::Internal => {
                let mut keys: Vec<String> = self
                    .store
                    .list_keys()
                    .await?
                    .into_iter()
                    .map(|key| key.id)
                    .collect();
                keys.push(INTERNAL_LEDGER_KEY.to_owned());
                Ok(keys)
            }
        }
    }

    /// Every ledger row of `keys` in `days`.
    async fn rows(&self, keys: Vec<String>, days: &[String]) -> ApiResult<Vec<UsageRow>> {
        let limits = self.door.limits();
        let read: Vec<Vec<UsageRow>> = futures::stream::iter(keys)
            .map(|key| async move { limits.ledger(&key, days).await })
            .buffer_unordered(KEYS_READ_AT_ONCE)
            .try_collect()
            .await?;
        Ok(read.into_iter().flatten().collect())
    }
}

fn figures(figures: Figures) -> proto::UsageFigures {
    proto::UsageFigures {
        requests: figures.requests,
        errors: figures.errors,
        prompt_tokens: figures.prompt_tokens,
        completion_tokens: figures.completion_tokens,
        cached_tokens: figures.cached_tokens,
        cost_micros: figures.cost_micros,
    }
}

fn report(report: Report) -> proto::UsageReport {
    proto::UsageReport {
        from: report.range.from.to_string(),
        to: report.range.to.to_string(),
        group_by: report.range.group_by.as_str().to_owned(),
        totals: Some(figures(report.totals)),
        rows: report
            .rows
            .into_iter()
            .map(|row| proto::UsageRow {
                day: row.day,
                model: row.model,
                provider: row.provider,
                key_id: row.key_id,
                figures: Some(figures(row.figures)),
            })
            .collect(),
    }
}

#[tonic::async_trait]
impl UsageService for Usage {
    async fn get_usage(
        &self,
        request: Request<proto::GetUsageRequest>,
    ) -> Result<Response<proto::UsageReport>, Status> {
        let (principal, admission) = self.door.enter(&request, Scope::Any).await?;
        let asked = request.get_ref();
        let today = self.door.spend_settings().clock.now().date_naive();
        let range = ReportRange::parse(&asked.from, &asked.to, &asked.group_by, today)?;
        let keys = self.keys(&principal, &asked.key_id).await?;
        let rows = self.rows(keys, &range.days()).await?;
        Ok(respond(report(summarize(range, &rows)), &admission))
    }
}

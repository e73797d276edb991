//! One conformance suite for both rate-limit backends: each check runs against the
//! in-process `LocalLimits` and against `RedisLimits` on a real `redis-server` that the test
//! starts itself, with a one-second window so entries leave it within the test.
//! A test is named `<backend>::<check>`, so a failure names both.

mod support;

use std::sync::Arc;
use std::time::Duration;

use openclaw_gateway::limits::{Charge, Decision, LimitBackend, LocalLimits, Quota, RedisLimits};
use openclaw_gateway::spend::{BudgetWindow, KeyBudget, PeriodKind, Settled, SpendRecord};
use openclaw_gateway::store::{RedisConfig, SharedConnection};

const WINDOW: Duration = Duration::from_secs(1);
/// Past the window, with room for a slow machine's scheduling.
const PAST_WINDOW: Duration = Duration::from_millis(1_300);

const QUOTA: Quota = Quota {
    requests: 3,
    tokens: 1_000,
    context: 500,
};
const FREE: Charge = Charge {
    tokens: 0,
    context: 0,
    cost_micros: 0,
};

struct Backend {
    limits: Arc<dyn LimitBackend>,
    _redis: Option<support::Process>,
}

async fn local() -> Backend {
    Backend {
        limits: Arc::new(LocalLimits::new(WINDOW)),
        _redis: None,
    }
}

async fn redis() -> Backend {
    let server = support::start_redis();
    let conn = SharedConnection::open(&RedisConfig::standalone(
        support::redis_url(&server),
        std::time::Duration::from_secs(1),
    ))
    .await
    .unwrap();
    Backend {
        limits: Arc::new(RedisLimits::with_window(conn, WINDOW)),
        _redis: Some(server),
    }
}

fn key() -> String {
    format!("key-{}", uuid::Uuid::new_v4().simple())
}

fn reservation() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn admit(backend: &Backend, key: &str, charge: Charge) -> Decision {
    backend
        .limits
        .admit(key, QUOTA, charge, &reservation())
        .await
        .expect("the backend decides")
}

fn admitted(decision: Decision) -> openclaw_gateway::limits::Usage {
    match decision {
        Decision::Admitted(usage) => usage,
        Decision::Denied { usage, retry_ms } => {
            panic!("denied (usage {usage:?}, retry in {retry_ms} ms) where admission was due")
        }
        Decision::OverBudget { spent_micros, .. } => {
            panic!("refused over budget (spent {spent_micros} µ$) where admission was due")
        }
    }
}

/// Requests that reserve no tokens (reads) fill the request limit, leave the window
/// together, and admission carries on afterwards.
async fn zero_cost_entries_leave_the_window(backend: Backend) {
    let key = key();
    for n in 1..=QUOTA.requests {
        assert_eq!(admitted(admit(&backend, &key, FREE).await).requests, n);
    }
    assert!(matches!(
        admit(&backend, &key, FREE).await,
        Decision::Denied { .. }
    ));
    tokio::time::sleep(PAST_WINDOW).await;
    let usage = admitted(admit(&backend, &key, FREE).await);
    assert_eq!((usage.requests, usage.tokens, usage.context), (1, 0, 0));
    let usage = admitted(admit(&backend, &key, FREE).await);
    assert_eq!(usage.requests, 2, "the expired entries are gone for good");
}

/// Tokens reserved by entries that left the window are given back, whatever mix of
/// costly and free entries leaves together.
async fn tokens_come_back_when_entries_leave(backend: Backend) {
    let key = key();
    let charge = Charge {
        tokens: 600,
        context: 300,
        cost_micros: 0,
    };
    admitted(admit(&backend, &key, charge).await);
    admitted(admit(&backend, &key, FREE).await);
    match admit(&backend, &key, charge).await {
        Decision::Denied { usage, retry_ms } => {
            assert_eq!((usage.tokens, usage.context), (600, 300));
            assert!(
                retry_ms <= WINDOW.as_millis() as u64,
                "retry in {retry_ms} ms"
            );
        }
        other => panic!("admitted past the token limit: {other:?}"),
    }
    tokio::time::sleep(PAST_WINDOW).await;
    let usage = admitted(admit(&backend, &key, charge).await);
    assert_eq!((usage.requests, usage.tokens, usage.context), (1, 600, 300));
}

/// Settling replaces a reservation's amounts, also with zero; what leaves the window
/// afterwards gives back what was settled.
async fn settled_amounts_are_what_leaves(backend: Backend) {
    let key = key();
    let id = reservation();
    let charge = Charge {
        tokens: 900,
        context: 400,
        cost_micros: 0,
    };
    admitted(
        backend
            .limits
            .admit(&key, QUOTA, charge, &id)
            .await
            .unwrap(),
    );
    backend.limits.settle(&key, &id, FREE).await.unwrap();
    let usage = admitted(admit(&backend, &key, charge).await);
    assert_eq!((usage.tokens, usage.context), (900, 400));
    tokio::time::sleep(PAST_WINDOW).await;
    let usage = admitted(admit(&backend, &key, FREE).await);
    assert_eq!((usage.requests, usage.tokens, usage.context), (1, 0, 0));
}

// ---------------------------------------------------------------- budgets

/// A daily budget of `limit` micro-dollars in UTC with `thresholds` (permille), in the period
/// `days_ahead` days from today.
fn budget(limit: u64, thresholds: &[u32], days_ahead: i64) -> BudgetWindow {
    KeyBudget {
        limit_micros: limit,
        period: PeriodKind::Day,
        time_zone: "UTC".into(),
        thresholds_permille: thresholds.to_vec(),
    }
    .at(chrono::Utc::now() + chrono::Duration::days(days_ahead))
}

/// A model call that reserves `cost` micro-dollars against the budget (and a few tokens).
fn call(cost: u64) -> Charge {
    Charge {
        tokens: 10,
        context: 5,
        cost_micros: cost,
    }
}

/// A settled call that cost `cost` micro-dollars, counted against `window`.
fn spent(cost: u64, window: &BudgetWindow) -> SpendRecord {
    SpendRecord {
        day: openclaw_gateway::spend::ledger_day(chrono::Utc::now()),
        model: "zai/priced".into(),
        provider: "zai".into(),
        prompt_tokens: 10,
        completion_tokens: 5,
        cached_tokens: 0,
        cost_micros: cost,
        ok: true,
        keep_until: chrono::Utc::now() + chrono::Duration::days(2),
        budget: Some(window.clone()),
    }
}

/// A quota no budget check here comes near.
const ROOMY: Quota = Quota {
    requests: 1_000,
    tokens: 1_000_000,
    context: 1_000_000,
};

async fn admit_budgeted(
    backend: &Backend,
    key: &str,
    cost: u64,
    window: &BudgetWindow,
) -> (String, Decision) {
    let id = reservation();
    let decision = backend
        .limits
        .admit_spending(key, ROOMY, call(cost), &id, Some(window))
        .await
        .expect("the backend decides");
    (id, decision)
}

async fn settle_budgeted(
    backend: &Backend,
    key: &str,
    id: &str,
    cost: u64,
    window: &BudgetWindow,
) -> Settled {
    backend
        .limits
        .settle_spending(key, id, call(0), Some(&spent(cost, window)))
        .await
        .expect("the backend settles")
}

fn over_budget(decision: Decision) -> (u64, u64) {
    match decision {
        Decision::OverBudget {
            spent_micros,
            reserved_micros,
        } => (spent_micros, reserved_micros),
        other => panic!("admitted past the budget: {other:?}"),
    }
}

/// A call is refused when settled spend + the cost reserved by calls in flight + its own most
/// would pass the limit; reaching the limit exactly is allowed. A refusal logs nothing: it
/// takes no request from the rate limit and reserves nothing.
async fn budget_refuses_past_spent_reserved_and_cost(backend: Backend) {
    let key = key();
    let window = budget(1_000, &[], 0);
    let quota = Quota {
        requests: 3,
        ..ROOMY
    };
    let admit = |cost: u64| {
        let (backend, key, window) = (&backend, key.clone(), window.clone());
        async move {
            backend
                .limits
                .admit_spending(&key, quota, call(cost), &reservation(), Some(&window))
                .await
                .expect("the backend decides")
        }
    };
    admitted(admit(400).await);
    assert_eq!(over_budget(admit(601).await), (0, 400));
    assert_eq!(over_budget(admit(1_001).await), (0, 400));
    admitted(admit(400).await);
    // 400 + 400 + 200 = 1000: exactly the limit is within it.
    let usage = admitted(admit(200).await);
    assert_eq!(usage.requests, 3, "the refusals took no request");
    assert_eq!(over_budget(admit(1).await), (0, 1_000));
    // Free calls are admitted while the budget is full (until the rate limit says no).
    assert!(matches!(admit(0).await, Decision::Denied { .. }));
}

/// A call that can cost nothing (a free model) is admitted even when the spend is past the
/// limit (a lowered limit, or a provider that reported more than was reserved).
async fn free_calls_pass_an_overspent_budget(backend: Backend) {
    let key = key();
    let window = budget(100, &[], 0);
    let (id, decision) = admit_budgeted(&backend, &key, 100, &window).await;
    admitted(decision);
    settle_budgeted(&backend, &key, &id, 150, &window).await;
    let (_, decision) = admit_budgeted(&backend, &key, 1, &window).await;
    assert_eq!(over_budget(decision), (150, 0));
    let (_, decision) = admit_budgeted(&backend, &key, 0, &window).await;
    admitted(decision);
}

/// Settling frees the call's reservation and adds its real cost to the period's spend, which
/// accumulates over calls and is what `period_spend` reads.
async fn settling_frees_the_reservation_and_spend_accumulates(backend: Backend) {
    let key = key();
    let window = budget(1_000, &[], 0);
    let (a, decision) = admit_budgeted(&backend, &key, 600, &window).await;
    admitted(decision);
    let (_, decision) = admit_budgeted(&backend, &key, 500, &window).await;
    assert_eq!(over_budget(decision), (0, 600));
    assert_eq!(
        settle_budgeted(&backend, &key, &a, 250, &window)
            .await
            .spent_micros,
        250
    );
    assert_eq!(
        backend.limits.period_spend(&key, &window).await.unwrap(),
        250
    );
    // 250 spent + 0 reserved + 750 = the limit.
    let (b, decision) = admit_budgeted(&backend, &key, 750, &window).await;
    admitted(decision);
    let (_, decision) = admit_budgeted(&backend, &key, 1, &window).await;
    assert_eq!(over_budget(decision), (250, 750));
    assert_eq!(
        settle_budgeted(&backend, &key, &b, 700, &window)
            .await
            .spent_micros,
        950
    );
    let (_, decision) = admit_budgeted(&backend, &key, 50, &window).await;
    admitted(decision);
    assert_eq!(
        backend.limits.period_spend(&key, &window).await.unwrap(),
        950
    );
    // Another key's budget is its own.
    let (_, decision) = admit_budgeted(&backend, &self::key(), 1_000, &window).await;
    admitted(decision);
}

/// Each threshold (and the limit itself, 1000‰) is reported by the one settle that crosses it
/// first in the period, never again, however the spend arrives.
async fn thresholds_are_crossed_once_per_period(backend: Backend) {
    let key = key();
    let window = budget(1_000, &[500, 800], 0);
    let mut crossed = Vec::new();
    for cost in [300, 300, 100, 200, 200, 10, 0] {
        let (id, _) = admit_budgeted(&backend, &key, 0, &window).await;
        let settled = settle_budgeted(&backend, &key, &id, cost, &window).await;
        crossed.push(settled.crossed_permille);
    }
    assert_eq!(
        crossed,
        vec![
            vec![],
            vec![500],
            vec![],
            vec![800],
            vec![1000],
            vec![],
            vec![]
        ]
    );
    // One settle crossing several at once reports each of them.
    let other = self::key();
    let (id, _) = admit_budgeted(&backend, &other, 0, &window).await;
    let settled = settle_budgeted(&backend, &other, &id, 5_000, &window).await;
    assert_eq!(settled.crossed_permille, vec![500, 800, 1000]);
    assert_eq!(settled.spent_micros, 5_000);
}

/// A threshold is crossed at exactly its fraction of the limit, also for the largest budgets
/// (where spend × 1000 passes 2^53).
async fn thresholds_are_exact_for_the_largest_budgets(backend: Backend) {
    let key = key();
    // 999‰ of 9,999,999,999,999 is 9,989,999,999,999.001: a spend of 9,989,999,999,999 is
    // below it, one more micro-dollar is not.
    let window = budget(9_999_999_999_999, &[999], 0);
    let (id, _) = admit_budgeted(&backend, &key, 0, &window).await;
    let settled = settle_budgeted(&backend, &key, &id, 9_989_999_999_999, &window).await;
    assert_eq!(settled.crossed_permille, Vec::<u32>::new(), "crossed early");
    let (id, _) = admit_budgeted(&backend, &key, 0, &window).await;
    let settled = settle_budgeted(&backend, &key, &id, 1, &window).await;
    assert_eq!(settled.crossed_permille, vec![999]);
}

/// The next period starts at zero spend, with its thresholds to cross again, while the last
/// one stays full.
async fn a_new_period_starts_at_zero(backend: Backend) {
    let key = key();
    let today = budget(1_000, &[500], 0);
    let tomorrow = budget(1_000, &[500], 1);
    assert_ne!(today.id, tomorrow.id);
    let (id, decision) = admit_budgeted(&backend, &key, 1_000, &today).await;
    admitted(decision);
    let settled = settle_budgeted(&backend, &key, &id, 1_000, &today).await;
    assert_eq!(settled.crossed_permille, vec![500, 1000]);
    let (_, decision) = admit_budgeted(&backend, &key, 1, &today).await;
    assert_eq!(over_budget(decision), (1_000, 0));
    assert_eq!(
        backend.limits.period_spend(&key, &tomorrow).await.unwrap(),
        0
    );
    let (id, decision) = admit_budgeted(&backend, &key, 1_000, &tomorrow).await;
    admitted(decision);
    let settled = settle_budgeted(&backend, &key, &id, 600, &tomorrow).await;
    assert_eq!(settled.crossed_permille, vec![500]);
    assert_eq!(
        backend.limits.period_spend(&key, &today).await.unwrap(),
        1_000
    );
}

/// A call never settled (its replica died) holds its reservation only while its entry is in
/// the rate-limit window; then the budget has it back.
async fn unsettled_reservations_leave_with_the_window(backend: Backend) {
    let key = key();
    let window = budget(1_000, &[], 0);
    let (_, decision) = admit_budgeted(&backend, &key, 1_000, &window).await;
    admitted(decision);
    let (_, decision) = admit_budgeted(&backend, &key, 1, &window).await;
    assert_eq!(over_budget(decision), (0, 1_000));
    tokio::time::sleep(PAST_WINDOW).await;
    let (id, decision) = admit_budgeted(&backend, &key, 1_000, &window).await;
    admitted(decision);
    // Settling after the window is over still records the spend.
    tokio::time::sleep(PAST_WINDOW).await;
    settle_budgeted(&backend, &key, &id, 400, &window).await;
    let (_, decision) = admit_budgeted(&backend, &key, 600, &window).await;
    admitted(decision);
    let (_, decision) = admit_budgeted(&backend, &key, 1, &window).await;
    assert_eq!(over_budget(decision), (400, 600));
}

macro_rules! conformance {
    ($backend:ident: $($check:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $check() {
                    super::$check(super::$backend().await).await;
                }
            )*
        }
    };
}

conformance!(local: zero_cost_entries_leave_the_window, tokens_come_back_when_entries_leave, settled_amounts_are_what_leaves,
    budget_refuses_past_spent_reserved_and_cost, settling_frees_the_reservation_and_spend_accumulates, free_calls_pass_an_overspent_budget,
    thresholds_are_crossed_once_per_period, thresholds_are_exact_for_the_largest_budgets,
    a_new_period_starts_at_zero, unsettled_reservations_leave_with_the_window);
conformance!(redis: zero_cost_entries_leave_the_window, tokens_come_back_when_entries_leave, settled_amounts_are_what_leaves,
    budget_refuses_past_spent_reserved_and_cost, settling_frees_the_reservation_and_spend_accumulates, free_calls_pass_an_overspent_budget,
    thresholds_are_crossed_once_per_period, thresholds_are_exact_for_the_largest_budgets,
    a_new_period_starts_at_zero, unsettled_reservations_leave_with_the_window);

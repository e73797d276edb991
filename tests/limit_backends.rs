//! One conformance suite for both rate-limit backends: each check runs against the
//! in-process `LocalLimits` and against `RedisLimits` on a real `redis-server` that the test
//! starts itself, with a one-second window so entries leave it within the test.
//! A test is named `<backend>::<check>`, so a failure names both.

mod support;

use std::sync::Arc;
use std::time::Duration;

use openclaw_gateway::limits::{Charge, Decision, LimitBackend, LocalLimits, Quota, RedisLimits};
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

conformance!(local: zero_cost_entries_leave_the_window, tokens_come_back_when_entries_leave, settled_amounts_are_what_leaves);
conformance!(redis: zero_cost_entries_leave_the_window, tokens_come_back_when_entries_leave, settled_amounts_are_what_leaves);

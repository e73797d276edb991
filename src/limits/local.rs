//! The sliding-window log in this process's memory: the limiter of the
//! embedded (single-process) deployment, and the fail-open fallback of a
//! Redis deployment. Same algorithm and answers as the Redis script.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{CapKind, Charge, Decision, LeaseDecision, LimitBackend, Quota, Usage, WINDOW};
use crate::spend::{BudgetWindow, Settled, SpendJournal, SpendRecord, UsageRow};
use crate::store::StoreError;

struct Entry {
    at_ms: u64,
    id: String,
    charge: Charge,
}

/// Sums are kept wider than the figures they add up, so no quota or charge, however large
/// (a key's limit, a provider's reported usage), can overflow them.
#[derive(Default)]
struct Log {
    entries: VecDeque<Entry>,
    tokens: u128,
    context: u128,
    /// The cost the live entries reserve against the key's budget (micro-dollars).
    reserved: u128,
}

impl Log {
    fn evict(&mut self, now_ms: u64, window_ms: u64) {
        while let Some(front) = self.entries.front() {
            if front.at_ms + window_ms > now_ms {
                break;
            }
            self.tokens = self.tokens.saturating_sub(u128::from(front.charge.tokens));
            self.context = self
                .context
                .saturating_sub(u128::from(front.charge.context));
            self.reserved = self
                .reserved
                .saturating_sub(u128::from(front.charge.cost_micros));
            self.entries.pop_front();
        }
    }

    fn usage(&self, now_ms: u64, window_ms: u64) -> Usage {
        Usage {
            requests: self.entries.len() as u64,
            tokens: u64::try_from(self.tokens).unwrap_or(u64::MAX),
            context: u64::try_from(self.context).unwrap_or(u64::MAX),
            reset_ms: self
                .entries
                .front()
                .map_or(0, |e| (e.at_ms + window_ms).saturating_sub(now_ms)),
        }
    }

    fn fits(&self, quota: Quota, charge: Charge, freed: (u64, u128, u128)) -> bool {
        (self.entries.len() as u64 + 1).saturating_sub(freed.0) <= quota.requests
            && (self.tokens + u128::from(charge.tokens)).saturating_sub(freed.1)
                <= u128::from(quota.tokens)
            && (self.context + u128::from(charge.context)).saturating_sub(freed.2)
                <= u128::from(quota.context)
    }

    /// How long until enough of the oldest entries leave the window for `charge` to fit.
    fn wait_ms(&self, quota: Quota, charge: Charge, now_ms: u64, window_ms: u64) -> u64 {
        let mut freed = (0, 0, 0);
        let mut wait = window_ms;
        for entry in &self.entries {
            if self.fits(quota, charge, freed) {
                return wait;
            }
            freed = (
                freed.0 + 1,
                freed.1 + u128::from(entry.charge.tokens),
                freed.2 + u128::from(entry.charge.context),
            );
            wait = (entry.at_ms + window_ms).saturating_sub(now_ms);
        }
        wait
    }
}

pub struct LocalLimits {
    started: Instant,
    window: Duration,
    logs: Mutex<HashMap<String, Log>>,
    failures: Mutex<HashMap<String, (u64, u64)>>,
    /// Open streams' leases per key and cap: lease id → expiry (ms since `started`).
    leases: Mutex<HashMap<(String, CapKind), HashMap<String, u64>>>,
    /// Settled spend per key and budget period, with the thresholds already crossed.
    spend: Mutex<HashMap<(String, String), PeriodSpend>>,
    /// The usage ledger per key and day, when no journal keeps it.
    ledger: Mutex<HashMap<(String, String), LedgerDay>>,
    /// Where spend and the ledger outlive the process (the embedded store), if anywhere.
    journal: Option<Arc<dyn SpendJournal>>,
}

/// A key's spend in one budget period.
#[derive(Debug, Clone, Default)]
struct PeriodSpend {
    spent: u64,
    crossed: Vec<u32>,
    keep_until: Option<chrono::DateTime<chrono::Utc>>,
}

struct LedgerDay {
    rows: Vec<UsageRow>,
    keep_until: chrono::DateTime<chrono::Utc>,
}

impl Default for LocalLimits {
    fn default() -> Self {
        Self::new(WINDOW)
    }
}

impl LocalLimits {
    pub fn new(window: Duration) -> Self {
        Self {
            started: Instant::now(),
            window,
            logs: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            leases: Mutex::new(HashMap::new()),
            spend: Mutex::new(HashMap::new()),
            ledger: Mutex::new(HashMap::new()),
            journal: None,
        }
    }

    /// Keeps spend and the usage ledger in `journal` too, so they outlive the process.
    pub fn with_journal(mut self, journal: Arc<dyn SpendJournal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// The key's spend in a period: from memory, else from the journal (once).
    fn period<'a>(
        &self,
        spend: &'a mut HashMap<(String, String), PeriodSpend>,
        key: &str,
        period: &str,
    ) -> Result<&'a mut PeriodSpend, StoreError> {
        let slot = (key.to_string(), period.to_string());
        if !spend.contains_key(&slot) {
            let loaded = match &self.journal {
                Some(journal) => journal
                    .load_period(key, period)?
                    .map(|(spent, crossed)| PeriodSpend {
                        spent,
                        crossed,
                        keep_until: None,
                    })
                    .unwrap_or_default(),
                None => PeriodSpend::default(),
            };
            let now = chrono::Utc::now();
            spend.retain(|_, p| p.keep_until.is_none_or(|until| until > now));
            spend.insert(slot.clone(), loaded);
        }
        Ok(spend.get_mut(&slot).expect("inserted above"))
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn window_ms(&self) -> u64 {
        self.window.as_millis() as u64
    }

    fn poisoned() -> StoreError {
        StoreError::Unavailable("local limiter lock poisoned".into())
    }
}

#[async_trait]
impl LimitBackend for LocalLimits {
    async fn admit_spending(
        &self,
        key: &str,
        quota: Quota,
        mut charge: Charge,
        reservation: &str,
        budget: Option<&BudgetWindow>,
    ) -> Result<Decision, StoreError> {
        let (now, window) = (self.now_ms(), self.window_ms());
        let mut logs = self.logs.lock().map_err(|_| Self::poisoned())?;
        let log = logs.entry(key.to_string()).or_default();
        log.evict(now, window);
        match budget {
            None => charge.cost_micros = 0,
            // A call that can cost nothing is never refused for the budget.
            Some(_) if charge.cost_micros == 0 => {}
            Some(budget) => {
                let mut spend = self.spend.lock().map_err(|_| Self::poisoned())?;
                let spent = self.period(&mut spend, key, &budget.id)?.spent;
                let reserved = u64::try_from(log.reserved).unwrap_or(u64::MAX);
                if u128::from(spent) + log.reserved + u128::from(charge.cost_micros)
                    > u128::from(budget.limit_micros)
                {
                    return Ok(Decision::OverBudget {
                        spent_micros: spent,
                        reserved_micros: reserved,
                    });
                }
            }
        }
        if !log.fits(quota, charge, (0, 0, 0)) {
            return Ok(Decision::Denied {
                usage: log.usage(now, window),
                retry_ms: log.wait_ms(quota, charge, now, window),
            });
        }
        log.entries.push_back(Entry {
            at_ms: now,
            id: reservation.to_string(),
            charge,
        });
        log.tokens += u128::from(charge.tokens);
        log.context += u128::from(charge.context);
        log.reserved += u128::from(charge.cost_micros);
        Ok(Decision::Admitted(log.usage(now, window)))
    }

    async fn settle_spending(
        &self,
        key: &str,
        reservation: &str,
        used: Charge,
        record: Option<&SpendRecord>,
    ) -> Result<Settled, StoreError> {
        {
            let mut logs = self.logs.lock().map_err(|_| Self::poisoned())?;
            if let Some(log) = logs.get_mut(key)
                && let Some(entry) = log.entries.iter_mut().rev().find(|e| e.id == reservation)
            {
                log.tokens = log.tokens - u128::from(entry.charge.tokens) + u128::from(used.tokens);
                log.context =
                    log.context - u128::from(entry.charge.context) + u128::from(used.context);
                log.reserved -= u128::from(entry.charge.cost_micros);
                entry.charge = Charge {
                    cost_micros: 0,
                    ..used
                };
            }
        }
        let Some(record) = record else {
            return Ok(Settled::default());
        };
        let mut settled = Settled::default();
        if let Some(budget) = &record.budget {
            let mut spend = self.spend.lock().map_err(|_| Self::poisoned())?;
            let period = self.period(&mut spend, key, &budget.id)?;
            period.spent = period.spent.saturating_add(record.cost_micros);
            period.keep_until = Some(budget.keep_until);
            settled.spent_micros = period.spent;
            if period.spent > 0 {
                for p in budget.thresholds_permille.iter().copied().chain([1000]) {
                    if u128::from(period.spent) * 1000
                        >= u128::from(p) * u128::from(budget.limit_micros)
                        && !period.crossed.contains(&p)
                    {
                        period.crossed.push(p);
                        settled.crossed_permille.push(p);
                    }
                }
            }
        }
        match &self.journal {
            Some(journal) => journal.record(key, record, &settled)?,
            None => {
                let mut ledger = self.ledger.lock().map_err(|_| Self::poisoned())?;
                let now = chrono::Utc::now();
                ledger.retain(|_, day| day.keep_until > now);
                let day = ledger
                    .entry((key.to_string(), record.day.clone()))
                    .or_insert_with(|| LedgerDay {
                        rows: Vec::new(),
                        keep_until: record.keep_until,
                    });
                let index = match day
                    .rows
                    .iter()
                    .position(|r| r.model == record.model && r.provider == record.provider)
                {
                    Some(i) => i,
                    None => {
                        day.rows.push(UsageRow {
                            key_id: key.to_string(),
                            day: record.day.clone(),
                            model: record.model.clone(),
                            provider: record.provider.clone(),
                            ..UsageRow::default()
                        });
                        day.rows.len() - 1
                    }
                };
                day.rows[index].add(record);
            }
        }
        Ok(settled)
    }

    async fn period_spend(&self, key: &str, budget: &BudgetWindow) -> Result<u64, StoreError> {
        let mut spend = self.spend.lock().map_err(|_| Self::poisoned())?;
        Ok(self.period(&mut spend, key, &budget.id)?.spent)
    }

    async fn usage(&self, key: &str, days: &[String]) -> Result<Vec<UsageRow>, StoreError> {
        if let Some(journal) = &self.journal {
            return journal.usage(key, days);
        }
        let ledger = self.ledger.lock().map_err(|_| Self::poisoned())?;
        let mut rows = Vec::new();
        for day in days {
            if let Some(found) = ledger.get(&(key.to_string(), day.clone())) {
                let mut found = found.rows.clone();
                found.sort_by(|a, b| a.model.cmp(&b.model).then(a.provider.cmp(&b.provider)));
                rows.extend(found);
            }
        }
        Ok(rows)
    }

    async fn record_auth_failure(&self, client: &str, window: Duration) -> Result<u64, StoreError> {
        let now = self.now_ms();
        let window_ms = window.as_millis() as u64;
        let mut failures = self.failures.lock().map_err(|_| Self::poisoned())?;
        if failures.len() > 100_000 {
            failures.retain(|_, (since, _)| *since + window_ms > now);
        }
        let entry = failures.entry(client.to_string()).or_insert((now, 0));
        if entry.0 + window_ms <= now {
            *entry = (now, 0);
        }
        entry.1 += 1;
        Ok(entry.1)
    }

    async fn acquire_lease(
        &self,
        key: &str,
        kind: CapKind,
        lease: &str,
        cap: u64,
        ttl: Duration,
    ) -> Result<LeaseDecision, StoreError> {
        let now = self.now_ms();
        let mut leases = self.leases.lock().map_err(|_| Self::poisoned())?;
        let held = leases.entry((key.to_string(), kind)).or_default();
        held.retain(|_, expiry| *expiry > now);
        let open = held.len() as u64;
        if open >= cap {
            return Ok(LeaseDecision { taken: false, open });
        }
        held.insert(lease.to_string(), now + ttl.as_millis() as u64);
        Ok(LeaseDecision {
            taken: true,
            open: open + 1,
        })
    }

    async fn renew_lease(
        &self,
        key: &str,
        kind: CapKind,
        lease: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = self.now_ms();
        let mut leases = self.leases.lock().map_err(|_| Self::poisoned())?;
        leases
            .entry((key.to_string(), kind))
            .or_default()
            .insert(lease.to_string(), now + ttl.as_millis() as u64);
        Ok(())
    }

    async fn release_lease(&self, key: &str, kind: CapKind, lease: &str) -> Result<(), StoreError> {
        let mut leases = self.leases.lock().map_err(|_| Self::poisoned())?;
        let slot = (key.to_string(), kind);
        if let Some(held) = leases.get_mut(&slot) {
            held.remove(lease);
            if held.is_empty() {
                leases.remove(&slot);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTA: Quota = Quota {
        requests: 3,
        tokens: 100,
        context: 50,
    };

    #[tokio::test]
    async fn admits_exactly_the_request_limit_within_a_window() {
        let limits = LocalLimits::new(Duration::from_millis(200));
        for i in 0..3 {
            let d = limits
                .admit("k", QUOTA, Charge::default(), &format!("r{i}"))
                .await
                .unwrap();
            assert!(matches!(d, Decision::Admitted(u) if u.requests == i + 1));
        }
        let d = limits
            .admit("k", QUOTA, Charge::default(), "r3")
            .await
            .unwrap();
        let Decision::Denied { retry_ms, .. } = d else {
            panic!("fourth admitted")
        };
        assert!(retry_ms > 0 && retry_ms <= 200);
        // Another key has its own log.
        assert!(matches!(
            limits
                .admit("other", QUOTA, Charge::default(), "x")
                .await
                .unwrap(),
            Decision::Admitted(_)
        ));
        tokio::time::sleep(Duration::from_millis(220)).await;
        assert!(matches!(
            limits.admit("k", QUOTA, Charge::default(), "r4").await.unwrap(),
            Decision::Admitted(u) if u.requests == 1
        ));
    }

    #[tokio::test]
    async fn reservations_are_settled_to_what_was_used() {
        let limits = LocalLimits::default();
        let big = Charge {
            tokens: 80,
            context: 40,
            cost_micros: 0,
        };
        assert!(matches!(
            limits.admit("k", QUOTA, big, "a").await.unwrap(),
            Decision::Admitted(_)
        ));
        assert!(matches!(
            limits.admit("k", QUOTA, big, "b").await.unwrap(),
            Decision::Denied { .. }
        ));
        // The call failed: its reservation frees up entirely.
        limits.settle("k", "a", Charge::default()).await.unwrap();
        let Decision::Admitted(usage) = limits.admit("k", QUOTA, big, "c").await.unwrap() else {
            panic!("settled capacity was not freed")
        };
        assert_eq!((usage.tokens, usage.context), (80, 40));
        // Reporting more than reserved counts in full.
        limits
            .settle(
                "k",
                "c",
                Charge {
                    tokens: 100,
                    context: 50,
                    cost_micros: 0,
                },
            )
            .await
            .unwrap();
        assert!(matches!(
            limits
                .admit(
                    "k",
                    QUOTA,
                    Charge {
                        tokens: 1,
                        context: 0,
                        cost_micros: 0,
                    },
                    "d"
                )
                .await
                .unwrap(),
            Decision::Denied { .. }
        ));
    }

    #[tokio::test]
    async fn leases_hold_at_most_the_cap_until_released_or_expired() {
        let limits = LocalLimits::default();
        let ttl = Duration::from_millis(150);
        for i in 0..2 {
            let d = limits
                .acquire_lease("k", CapKind::Streams, &format!("l{i}"), 2, ttl)
                .await
                .unwrap();
            assert_eq!(
                d,
                LeaseDecision {
                    taken: true,
                    open: i + 1
                }
            );
        }
        let full = limits
            .acquire_lease("k", CapKind::Streams, "l2", 2, ttl)
            .await
            .unwrap();
        assert_eq!(
            full,
            LeaseDecision {
                taken: false,
                open: 2
            }
        );
        // Another cap and another key have their own leases.
        for (key, kind) in [("k", CapKind::Subscriptions), ("other", CapKind::Streams)] {
            let d = limits.acquire_lease(key, kind, "x", 2, ttl).await.unwrap();
            assert!(d.taken, "{key} {kind:?}");
        }
        limits
            .release_lease("k", CapKind::Streams, "l0")
            .await
            .unwrap();
        let after_release = limits
            .acquire_lease("k", CapKind::Streams, "l3", 2, ttl)
            .await
            .unwrap();
        assert_eq!(
            after_release,
            LeaseDecision {
                taken: true,
                open: 2
            }
        );
        // Renewed leases outlive their first expiry; unrenewed ones do not.
        tokio::time::sleep(Duration::from_millis(100)).await;
        limits
            .renew_lease("k", CapKind::Streams, "l3", ttl)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after_expiry = limits
            .acquire_lease("k", CapKind::Streams, "l4", 2, ttl)
            .await
            .unwrap();
        assert_eq!(
            after_expiry,
            LeaseDecision {
                taken: true,
                open: 2
            }
        );
    }
}

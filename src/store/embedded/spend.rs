//! The usage ledger and budget spend of the single-process deployment, in the embedded
//! store's redb file, so both survive a restart. The limiter in memory
//! ([`crate::limits::LocalLimits`]) decides; every settled call is written through here in
//! one transaction.
//!
//! | table | key | value |
//! |---|---|---|
//! | `spend_ledger` | (key id, UTC day, model, provider) | (requests, errors, prompt, completion, cached tokens, cost µ$, keep until unix ms) |
//! | `spend_ledger_by_expiry` | (keep until unix ms, key id, day) | () |
//! | `spend_periods` | (key id, budget period id) | JSON [`StoredPeriod`] |
//! | `spend_periods_by_expiry` | (keep until unix ms, key id, period id) | () |
//!
//! Retention: each write drops up to [`SWEEP_BATCH`] expired days and periods, oldest first,
//! through the expiry indexes; reads ignore an expired row the sweep has not reached yet. A
//! day's expiry is the retention in force when its first call was recorded.

use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{OrUnavailable, decode, encode};
use crate::spend::{Settled, SpendJournal, SpendRecord, UsageRow};
use crate::store::{StoreError, StoreResult};

type LedgerKey = (&'static str, &'static str, &'static str, &'static str);
/// requests, errors, prompt, completion, cached, cost, keep until (unix ms).
type LedgerFigures = (u64, u64, u64, u64, u64, u64, i64);
type ExpiryKey = (i64, &'static str, &'static str);

const LEDGER: TableDefinition<LedgerKey, LedgerFigures> = TableDefinition::new("spend_ledger");
const LEDGER_BY_EXPIRY: TableDefinition<ExpiryKey, ()> =
    TableDefinition::new("spend_ledger_by_expiry");
const PERIODS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("spend_periods");
const PERIODS_BY_EXPIRY: TableDefinition<ExpiryKey, ()> =
    TableDefinition::new("spend_periods_by_expiry");

/// How many expired days (and periods) one write drops, at most.
const SWEEP_BATCH: usize = 32;

/// A key's spend in one budget period.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredPeriod {
    spent_micros: u64,
    /// Thresholds (permille) already crossed in the period, each announced once.
    crossed_permille: Vec<u32>,
    keep_until_ms: i64,
}

/// The spend tables of an embedded store.
pub struct EmbeddedSpend {
    db: Arc<Database>,
}

impl std::fmt::Debug for EmbeddedSpend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedSpend").finish_non_exhaustive()
    }
}

impl EmbeddedSpend {
    /// Opens the spend tables in `db`, creating them.
    pub fn open(db: Arc<Database>) -> StoreResult<Self> {
        let txn = db.begin_write().or_unavailable()?;
        txn.open_table(LEDGER).or_unavailable()?;
        txn.open_table(LEDGER_BY_EXPIRY).or_unavailable()?;
        txn.open_table(PERIODS).or_unavailable()?;
        txn.open_table(PERIODS_BY_EXPIRY).or_unavailable()?;
        txn.commit().or_unavailable()?;
        Ok(Self { db })
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Runs blocking database work without stalling the other tasks of this worker: the journal
/// is called from inside the limiter's (async) settling, and a commit waits for the disk.
fn off_the_workers<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Drops up to [`SWEEP_BATCH`] days and periods whose retention has passed.
fn sweep(txn: &WriteTransaction, now: i64) -> StoreResult<()> {
    let mut days = txn.open_table(LEDGER_BY_EXPIRY).or_unavailable()?;
    let due: Vec<(i64, String, String)> = days
        .range(..(now, "", ""))
        .or_unavailable()?
        .take(SWEEP_BATCH)
        .map(|entry| {
            entry.or_unavailable().map(|(k, _)| {
                let (at, key, day) = k.value();
                (at, key.to_owned(), day.to_owned())
            })
        })
        .collect::<StoreResult<_>>()?;
    if !due.is_empty() {
        let mut ledger = txn.open_table(LEDGER).or_unavailable()?;
        for (at, key, day) in &due {
            days.remove((*at, key.as_str(), day.as_str()))
                .or_unavailable()?;
            let rows: Vec<(String, String)> = ledger
                .range((key.as_str(), day.as_str(), "", "")..)
                .or_unavailable()?
                .map(|entry| {
                    entry.or_unavailable().map(|(k, _)| {
                        let (k, d, model, provider) = k.value();
                        (k == key && d == day).then(|| (model.to_owned(), provider.to_owned()))
                    })
                })
                .take_while(|row| !matches!(row, Ok(None)))
                .filter_map(Result::transpose)
                .collect::<StoreResult<_>>()?;
            for (model, provider) in rows {
                ledger
                    .remove((
                        key.as_str(),
                        day.as_str(),
                        model.as_str(),
                        provider.as_str(),
                    ))
                    .or_unavailable()?;
            }
        }
    }
    let mut periods_by_expiry = txn.open_table(PERIODS_BY_EXPIRY).or_unavailable()?;
    let due: Vec<(i64, String, String)> = periods_by_expiry
        .range(..(now, "", ""))
        .or_unavailable()?
        .take(SWEEP_BATCH)
        .map(|entry| {
            entry.or_unavailable().map(|(k, _)| {
                let (at, key, period) = k.value();
                (at, key.to_owned(), period.to_owned())
            })
        })
        .collect::<StoreResult<_>>()?;
    if !due.is_empty() {
        let mut periods = txn.open_table(PERIODS).or_unavailable()?;
        for (at, key, period) in &due {
            periods_by_expiry
                .remove((*at, key.as_str(), period.as_str()))
                .or_unavailable()?;
            // A period written again since keeps its later expiry.
            let expired = match periods
                .get((key.as_str(), period.as_str()))
                .or_unavailable()?
            {
                Some(raw) => {
                    decode::<StoredPeriod>("budget period", raw.value())?.keep_until_ms <= now
                }
                None => false,
            };
            if expired {
                periods
                    .remove((key.as_str(), period.as_str()))
                    .or_unavailable()?;
            }
        }
    }
    Ok(())
}

fn write_record(
    db: &Database,
    key: &str,
    record: &SpendRecord,
    settled: &Settled,
) -> StoreResult<()> {
    let now = now_ms();
    let keep_until = record.keep_until.timestamp_millis();
    let txn = db.begin_write().or_unavailable()?;
    {
        let mut ledger = txn.open_table(LEDGER).or_unavailable()?;
        let row = (
            key,
            record.day.as_str(),
            record.model.as_str(),
            record.provider.as_str(),
        );
        let before = ledger.get(row).or_unavailable()?.map(|v| v.value());
        let first_of_day = before.is_none()
            && ledger
                .range((key, record.day.as_str(), "", "")..)
                .or_unavailable()?
                .next()
                .transpose()
                .or_unavailable()?
                .is_none_or(|(k, _)| {
                    let (k, d, _, _) = k.value();
                    k != key || d != record.day
                });
        let (n, e, p, c, k, cost, until) = before.unwrap_or((0, 0, 0, 0, 0, 0, keep_until));
        ledger
            .insert(
                row,
                (
                    n + 1,
                    e + u64::from(!record.ok),
                    p.saturating_add(record.prompt_tokens),
                    c.saturating_add(record.completion_tokens),
                    k.saturating_add(record.cached_tokens),
                    cost.saturating_add(record.cost_micros),
                    until,
                ),
            )
            .or_unavailable()?;
        if first_of_day {
            txn.open_table(LEDGER_BY_EXPIRY)
                .or_unavailable()?
                .insert((keep_until, key, record.day.as_str()), ())
                .or_unavailable()?;
        }
    }
    if let Some(budget) = &record.budget {
        let mut periods = txn.open_table(PERIODS).or_unavailable()?;
        let slot = (key, budget.id.as_str());
        let mut stored: StoredPeriod = match periods.get(slot).or_unavailable()? {
            Some(raw) => decode("budget period", raw.value())?,
            None => StoredPeriod::default(),
        };
        let keep = budget.keep_until.timestamp_millis();
        stored.spent_micros = settled.spent_micros;
        for p in &settled.crossed_permille {
            if !stored.crossed_permille.contains(p) {
                stored.crossed_permille.push(*p);
            }
        }
        let index_again = stored.keep_until_ms != keep;
        stored.keep_until_ms = keep;
        periods
            .insert(slot, encode("budget period", &stored)?.as_slice())
            .or_unavailable()?;
        if index_again {
            txn.open_table(PERIODS_BY_EXPIRY)
                .or_unavailable()?
                .insert((keep, key, budget.id.as_str()), ())
                .or_unavailable()?;
        }
    }
    sweep(&txn, now)?;
    txn.commit().or_unavailable()
}

impl SpendJournal for EmbeddedSpend {
    fn record(&self, key: &str, record: &SpendRecord, settled: &Settled) -> Result<(), StoreError> {
        off_the_workers(|| write_record(&self.db, key, record, settled))
    }

    fn load_period(&self, key: &str, period: &str) -> Result<Option<(u64, Vec<u32>)>, StoreError> {
        off_the_workers(|| {
            let txn = self.db.begin_read().or_unavailable()?;
            let periods = txn.open_table(PERIODS).or_unavailable()?;
            let Some(raw) = periods.get((key, period)).or_unavailable()? else {
                return Ok(None);
            };
            let stored: StoredPeriod = decode("budget period", raw.value())?;
            Ok((stored.keep_until_ms > now_ms())
                .then_some((stored.spent_micros, stored.crossed_permille)))
        })
    }

    fn usage(&self, key: &str, days: &[String]) -> Result<Vec<UsageRow>, StoreError> {
        off_the_workers(|| {
            let now = now_ms();
            let txn = self.db.begin_read().or_unavailable()?;
            let ledger = txn.open_table(LEDGER).or_unavailable()?;
            let mut rows = Vec::new();
            for day in days {
                for entry in ledger
                    .range((key, day.as_str(), "", "")..)
                    .or_unavailable()?
                {
                    let (k, v) = entry.or_unavailable()?;
                    let (row_key, row_day, model, provider) = k.value();
                    if row_key != key || row_day != day {
                        break;
                    }
                    let (requests, errors, prompt, completion, cached, cost, until) = v.value();
                    if until <= now {
                        continue;
                    }
                    rows.push(UsageRow {
                        key_id: key.to_owned(),
                        day: day.clone(),
                        model: model.to_owned(),
                        provider: provider.to_owned(),
                        requests,
                        errors,
                        prompt_tokens: prompt,
                        completion_tokens: completion,
                        cached_tokens: cached,
                        cost_micros: cost,
                    });
                }
            }
            Ok(rows)
        })
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, Utc};

    use redb::ReadableTableMetadata;

    use super::*;
    use crate::spend::{KeyBudget, PeriodKind, Prices, SpendSettings};

    fn journal() -> (EmbeddedSpend, crate::store::EmbeddedStore) {
        let store = crate::store::EmbeddedStore::open_temporary().unwrap();
        (EmbeddedSpend::open(store.database()).unwrap(), store)
    }

    fn call(model: &str, prompt: u64, ok: bool) -> SpendRecord {
        let prices = Prices {
            input: 1_000_000,
            output: 2_000_000,
            cached_input: 100_000,
        };
        SpendSettings::default().record(model, "p", &prices, prompt, 10, 0, ok, None)
    }

    #[test]
    fn calls_add_up_per_key_day_and_model() {
        let (journal, _store) = journal();
        let settled = Settled::default();
        journal
            .record("k", &call("a", 100, true), &settled)
            .unwrap();
        journal
            .record("k", &call("a", 50, false), &settled)
            .unwrap();
        journal.record("k", &call("b", 7, true), &settled).unwrap();
        journal
            .record("other", &call("a", 1, true), &settled)
            .unwrap();
        let day = call("a", 0, true).day;
        let rows = journal
            .usage("k", &[day.clone(), "1999-01-01".into()])
            .unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(
            (
                rows[0].model.as_str(),
                rows[0].requests,
                rows[0].errors,
                rows[0].prompt_tokens
            ),
            ("a", 2, 1, 150)
        );
        assert_eq!(rows[0].cost_micros, 120 + 70);
        assert_eq!((rows[1].model.as_str(), rows[1].requests), ("b", 1));
        assert_eq!(journal.usage("other", &[day]).unwrap().len(), 1);
    }

    #[test]
    fn expired_days_are_not_read_and_are_swept_by_later_writes() {
        let (journal, store) = journal();
        let mut old = call("a", 1, true);
        old.day = "2020-01-01".into();
        old.keep_until = Utc::now() - Duration::seconds(1);
        journal.record("k", &old, &Settled::default()).unwrap();
        assert!(
            journal
                .usage("k", &["2020-01-01".into()])
                .unwrap()
                .is_empty()
        );
        journal
            .record("k", &call("a", 1, true), &Settled::default())
            .unwrap();
        let txn = store.database().begin_read().unwrap();
        let ledger = txn.open_table(LEDGER).unwrap();
        assert!(ledger.get(("k", "2020-01-01", "a", "p")).unwrap().is_none());
        assert_eq!(ledger.len().unwrap(), 1);
    }

    #[test]
    fn a_period_keeps_its_spend_and_crossed_thresholds() {
        let (journal, _store) = journal();
        let budget = KeyBudget {
            limit_micros: 1000,
            period: PeriodKind::Day,
            time_zone: "UTC".into(),
            thresholds_permille: vec![500],
        }
        .at(Utc::now());
        let mut record = call("a", 1, true);
        record.budget = Some(budget.clone());
        let crossed = Settled {
            spent_micros: 600,
            crossed_permille: vec![500],
        };
        journal.record("k", &record, &crossed).unwrap();
        let later = Settled {
            spent_micros: 700,
            crossed_permille: vec![],
        };
        journal.record("k", &record, &later).unwrap();
        assert_eq!(
            journal.load_period("k", &budget.id).unwrap(),
            Some((700, vec![500]))
        );
        assert_eq!(
            journal.load_period("k", "day:2020-01-01@UTC").unwrap(),
            None
        );
    }
}

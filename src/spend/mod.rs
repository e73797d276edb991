//! What model calls cost and who pays: prices per model, the usage ledger every call is
//! recorded in, and budgets per key and for the whole gateway (docs/budgets.md, docs/usage.md).
//!
//! # Money is counted in integer micro-dollars
//! A price is configured in US dollars per million tokens and kept as micro-dollars per million
//! tokens (`0.07` → `70_000`), so a price has six decimal places and no floating point is
//! left once the providers file is read. A call's cost is
//! `ceil((uncached_prompt × input + cached_prompt × cached_input + completion × output) / 10⁶)`
//! micro-dollars: each call is rounded up to the next micro-dollar (US$0.000001) once, and
//! every sum after that (per day, per model, per key, per period) adds integers, so the totals
//! of the usage API equal the sum of its rows exactly.
//!
//! # Where the figures live
//! Beside each key's rate-limit log in the limits store (Redis under the key's hash tag, or
//! this process's memory and the embedded store), so admission checks the budget in the same
//! script and round trip as the rate limits, and settling a call records it in the ledger and
//! against the budget in the same script that settles its token reservation
//! (`crate::limits`).

mod period;
pub(crate) mod report;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use period::{Period, PeriodKind};

/// Prices of one model, in micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prices {
    pub input: u64,
    pub output: u64,
    /// Prompt tokens the provider reports as read from its cache.
    pub cached_input: u64,
}

/// The largest price the providers file accepts, in dollars per million tokens: far above any
/// model's, and small enough that no call's cost can overflow.
pub const MAX_PRICE_PER_MTOK: f64 = 1_000_000.0;

impl Prices {
    /// Micro-dollars per million tokens from dollars per million tokens, rounded to the nearest
    /// micro-dollar; `None` for a negative, non-finite or absurd price.
    pub fn micros_per_mtok(dollars: f64) -> Option<u64> {
        (dollars.is_finite() && (0.0..=MAX_PRICE_PER_MTOK).contains(&dollars))
            .then(|| (dollars * 1_000_000.0).round() as u64)
    }

    /// True when calls of the model cost nothing (the simulator, local models, free tiers).
    pub fn is_free(&self) -> bool {
        self.input == 0 && self.output == 0 && self.cached_input == 0
    }

    /// The cost of a call in micro-dollars, rounded up to the next one. `cached` is the part
    /// of `prompt` the provider read from its cache (at most `prompt`).
    pub fn cost_micros(&self, prompt: u64, cached: u64, completion: u64) -> u64 {
        let cached = cached.min(prompt);
        let pico = u128::from(prompt - cached) * u128::from(self.input)
            + u128::from(cached) * u128::from(self.cached_input)
            + u128::from(completion) * u128::from(self.output);
        u64::try_from(pico.div_ceil(1_000_000)).unwrap_or(u64::MAX)
    }
}

/// A key's spend budget: at most `limit_micros` per period, with soft thresholds (fractions of
/// the limit) that publish a `budget.threshold` event once per period each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyBudget {
    pub limit_micros: u64,
    pub period: PeriodKind,
    /// An IANA time zone: where the period's days start.
    pub time_zone: String,
    /// Fractions of the limit in thousandths (`0.8` → 800), ascending, each in 1..=999.
    #[serde(default)]
    pub thresholds_permille: Vec<u32>,
}

/// Most thresholds one budget may have.
pub const MAX_THRESHOLDS: usize = 10;

impl KeyBudget {
    /// The budget a request of `now` counts against: its period and the figures the limits
    /// store checks and settles with.
    pub fn at(&self, now: DateTime<Utc>) -> BudgetWindow {
        let tz = self.time_zone.parse().unwrap_or(chrono_tz::UTC);
        let period = Period::containing(now, self.period, tz);
        BudgetWindow {
            id: period.id(),
            limit_micros: self.limit_micros,
            thresholds_permille: self.thresholds_permille.clone(),
            resets_at: period.end,
            // Kept a day past its end, so a call settled just after the reset still finds it.
            keep_until: period.end + chrono::Duration::days(1),
            period,
        }
    }
}

/// Reads a budget as the key administration API sends it, naming the field at fault.
pub fn parse_budget(budget: &crate::proto::Budget) -> crate::error::ApiResult<KeyBudget> {
    use crate::error::ApiError;
    let invalid = |field: &str, details: String| {
        ApiError::invalid_field(format!("budget.{field}"), "Invalid budget", details)
    };
    let period = PeriodKind::parse(&budget.period).ok_or_else(|| {
        invalid(
            "period",
            format!(
                "The field 'budget.period' must be \"day\", \"week\" or \"month\", not '{}'",
                budget.period.chars().take(40).collect::<String>()
            ),
        )
    })?;
    let time_zone = if budget.time_zone.is_empty() {
        "UTC".to_owned()
    } else {
        budget.time_zone.clone()
    };
    if time_zone.parse::<chrono_tz::Tz>().is_err() {
        return Err(invalid(
            "timeZone",
            format!(
                "The field 'budget.timeZone' must be an IANA time zone such as \"UTC\" or \"Europe/Berlin\", not '{}'",
                time_zone.chars().take(60).collect::<String>()
            ),
        ));
    }
    if budget.limit_micros > MAX_BUDGET_MICROS {
        return Err(invalid(
            "limitMicros",
            format!(
                "The field 'budget.limitMicros' must be from 0 to {MAX_BUDGET_MICROS} micro-dollars ($10,000,000)"
            ),
        ));
    }
    if budget.thresholds.len() > MAX_THRESHOLDS {
        return Err(invalid(
            "thresholds",
            format!("The field 'budget.thresholds' takes at most {MAX_THRESHOLDS} fractions"),
        ));
    }
    let mut thresholds = Vec::with_capacity(budget.thresholds.len());
    for (i, t) in budget.thresholds.iter().enumerate() {
        let permille = (t * 1000.0).round();
        if !t.is_finite() || !(1.0..=999.0).contains(&permille) {
            return Err(invalid(
                &format!("thresholds[{i}]"),
                format!(
                    "Each of 'budget.thresholds' must be a fraction of the limit above 0 and below 1 (0.8 is 80%), to three decimal places; {t} is not"
                ),
            ));
        }
        thresholds.push(permille as u32);
    }
    thresholds.sort_unstable();
    thresholds.dedup();
    Ok(KeyBudget {
        limit_micros: budget.limit_micros,
        period,
        time_zone,
        thresholds_permille: thresholds,
    })
}

/// The largest budget accepted: ten million dollars, in micro-dollars (10^13: Redis's Lua
/// writes integers below 10^14 exactly, and sums stay far below 2^53).
pub const MAX_BUDGET_MICROS: u64 = 10_000_000 * 1_000_000;

/// One period of a budget, as the limits store sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetWindow {
    /// Names the period in the store: kind, start and time zone.
    pub id: String,
    pub limit_micros: u64,
    pub thresholds_permille: Vec<u32>,
    pub resets_at: DateTime<Utc>,
    /// When the store may forget the period's figures.
    pub keep_until: DateTime<Utc>,
    pub period: Period,
}

/// The clock budgets and the ledger read: the system's, shifted by a configured offset so
/// tests can cross a period boundary (`OPENCLAW_SPEND_CLOCK_OFFSET_SECONDS`; zero in
/// production).
#[derive(Debug, Clone, Copy, Default)]
pub struct SpendClock {
    offset_seconds: i64,
}

impl SpendClock {
    pub fn with_offset(offset_seconds: i64) -> Self {
        Self { offset_seconds }
    }

    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::seconds(self.offset_seconds)
    }
}

/// How the gateway reads time, keeps the ledger, and what it may spend in all.
#[derive(Debug, Clone)]
pub struct SpendSettings {
    pub clock: SpendClock,
    /// How long the ledger keeps a day's figures.
    pub ledger_retention: Duration,
    /// The operators' budget for every key's model calls together
    /// (`OPENCLAW_GATEWAY_BUDGET_MICROS`); none by default.
    pub gateway_budget: Option<KeyBudget>,
}

impl Default for SpendSettings {
    fn default() -> Self {
        Self {
            clock: SpendClock::default(),
            ledger_retention: DEFAULT_LEDGER_RETENTION,
            gateway_budget: None,
        }
    }
}

/// The name the gateway-wide budget is kept under in the limits store, as if it were a key's
/// (`oc:rl:{@gateway}:…` in Redis: a hash tag of its own), and the `key_id` of its events, which
/// only the internal token sees. No generated key id starts with `@`.
pub const GATEWAY_BUDGET_KEY: &str = "@gateway";

impl SpendSettings {
    /// The record of a call of `model` (by `provider`) settled now, against the budget period
    /// it was admitted in, if its key has a budget.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        model: &str,
        provider: &str,
        prices: &Prices,
        prompt_tokens: u64,
        completion_tokens: u64,
        cached_tokens: u64,
        ok: bool,
        budget: Option<BudgetWindow>,
    ) -> SpendRecord {
        let now = self.clock.now();
        let day_start = now
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .unwrap_or_default()
            .and_utc();
        SpendRecord {
            day: ledger_day(now),
            model: model.to_owned(),
            provider: provider.to_owned(),
            prompt_tokens,
            completion_tokens,
            cached_tokens,
            cost_micros: prices.cost_micros(prompt_tokens, cached_tokens, completion_tokens),
            ok,
            keep_until: day_start
                + chrono::Duration::from_std(self.ledger_retention)
                    .unwrap_or(chrono::Duration::days(400))
                + chrono::Duration::days(1),
            budget,
        }
    }
}

/// How long the ledger keeps a day's figures unless configured (`OPENCLAW_USAGE_RETENTION_DAYS`).
pub const DEFAULT_LEDGER_RETENTION: Duration = Duration::from_secs(400 * 24 * 3600);

/// A settled model call, as the ledger and the budget record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendRecord {
    /// The UTC day the call was settled on (`2026-12-07`).
    pub day: String,
    /// The model that answered (a fallback's id when one did).
    pub model: String,
    pub provider: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cost_micros: u64,
    /// False for a call that failed (it still counts as a request, at what it used).
    pub ok: bool,
    /// When the store may forget this day's figures (the ledger's retention).
    pub keep_until: DateTime<Utc>,
    /// The key's budget period the cost counts against, if it has a budget.
    pub budget: Option<BudgetWindow>,
}

/// The UTC day of `at`, as the ledger names days.
pub fn ledger_day(at: DateTime<Utc>) -> String {
    use chrono::Datelike as _;
    let (year, month, day) = (at.year(), at.month(), at.day());
    if !(0..=9999).contains(&year) {
        return at.format("%Y-%m-%d").to_string();
    }
    // Every call names its day: written by hand rather than through chrono's formatter.
    let mut text = String::with_capacity(10);
    crate::store::push_digits(&mut text, year as u32, 4);
    text.push('-');
    crate::store::push_digits(&mut text, month, 2);
    text.push('-');
    crate::store::push_digits(&mut text, day, 2);
    text
}

/// What settling a call found: the budget's spend after it, and the thresholds (permille; 1000
/// is the limit itself) it crossed first in this period, which publish events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    pub spent_micros: u64,
    pub crossed_permille: Vec<u32>,
}

/// One row of the usage ledger: a key's calls of one model on one UTC day.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageRow {
    pub key_id: String,
    pub day: String,
    pub model: String,
    pub provider: String,
    pub requests: u64,
    /// Calls that failed (counted in `requests` too).
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cost_micros: u64,
}

impl UsageRow {
    /// Adds a settled call.
    pub fn add(&mut self, record: &SpendRecord) {
        self.requests += 1;
        self.errors += u64::from(!record.ok);
        self.prompt_tokens += record.prompt_tokens;
        self.completion_tokens += record.completion_tokens;
        self.cached_tokens += record.cached_tokens;
        self.cost_micros += record.cost_micros;
    }
}

/// Where a single-process gateway keeps spend and the usage ledger beyond its memory (the
/// embedded store): the limiter in memory decides, and writes every settled call through.
pub trait SpendJournal: Send + Sync {
    /// Records a settled call: its ledger row and, with a budget, the period's spend after it
    /// and the thresholds it crossed (`settled`).
    fn record(
        &self,
        key: &str,
        record: &SpendRecord,
        settled: &Settled,
    ) -> Result<(), crate::store::StoreError>;
    /// The key's settled spend in a period and the thresholds crossed in it, if any is kept.
    fn load_period(
        &self,
        key: &str,
        period: &str,
    ) -> Result<Option<(u64, Vec<u32>)>, crate::store::StoreError>;
    /// The key's ledger rows for each of `days`.
    fn usage(&self, key: &str, days: &[String]) -> Result<Vec<UsageRow>, crate::store::StoreError>;
}

/// The event announcing that `key` crossed a threshold of its budget (`budget.threshold`), or
/// reached the limit itself (`budget.exceeded`, permille 1000).
pub(crate) fn threshold_event(
    key: &str,
    budget: &BudgetWindow,
    permille: u32,
    spent_micros: u64,
) -> crate::events::Event {
    let kind = if permille >= 1000 {
        "budget.exceeded"
    } else {
        "budget.threshold"
    };
    let whose = if key == GATEWAY_BUDGET_KEY {
        "The gateway (every key together)".to_owned()
    } else {
        format!("API key {key}")
    };
    let mut event = crate::events::Event::new(
        kind,
        format!(
            "{whose} has spent {} of its {} {} budget ({}% threshold; period from {} to {})",
            dollars(spent_micros),
            dollars(budget.limit_micros),
            match budget.period.kind {
                PeriodKind::Day => "daily",
                PeriodKind::Week => "weekly",
                PeriodKind::Month => "monthly",
            },
            f64::from(permille) / 10.0,
            budget
                .period
                .start
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            budget
                .resets_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ),
    );
    event.key_id = key.to_owned();
    event
}

/// A dollar figure for people: `$1.234567` trimmed to what matters (`$1.23`, `$0.000042`).
pub fn dollars(micros: u64) -> String {
    let whole = micros / 1_000_000;
    let frac = micros % 1_000_000;
    if frac == 0 {
        return format!("${whole}.00");
    }
    let digits = format!("{frac:06}");
    let trimmed = digits.trim_end_matches('0');
    let shown = if trimmed.len() < 2 {
        &digits[..2]
    } else {
        trimmed
    };
    format!("${whole}.{shown}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_day_is_the_utc_date_as_chrono_writes_it() {
        let start = DateTime::parse_from_rfc3339("0999-12-31T23:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        for step in 0..3000i64 {
            let at = start + chrono::Duration::hours(step * 2_917);
            assert_eq!(ledger_day(at), at.format("%Y-%m-%d").to_string());
        }
    }

    #[test]
    fn prices_are_read_to_the_micro_dollar() {
        assert_eq!(Prices::micros_per_mtok(0.07), Some(70_000));
        assert_eq!(Prices::micros_per_mtok(2.2), Some(2_200_000));
        assert_eq!(Prices::micros_per_mtok(0.0), Some(0));
        assert_eq!(Prices::micros_per_mtok(-1.0), None);
        assert_eq!(Prices::micros_per_mtok(f64::NAN), None);
        assert_eq!(Prices::micros_per_mtok(1e9), None);
    }

    #[test]
    fn a_call_costs_its_tokens_at_their_prices_rounded_up_once() {
        let prices = Prices {
            input: 1_000_000,      // $1 / MTok
            output: 2_000_000,     // $2 / MTok
            cached_input: 100_000, // $0.10 / MTok
        };
        // 1000 × $1/M + 500 × $2/M = $0.001 + $0.001 = 2000 µ$.
        assert_eq!(prices.cost_micros(1000, 0, 500), 2000);
        // One token costs a millionth of a micro-dollar per micro-dollar of price: rounds up.
        assert_eq!(prices.cost_micros(1, 0, 0), 1);
        // Cached prompt tokens at their own price: 1000 uncached + 1000 cached.
        assert_eq!(prices.cost_micros(2000, 1000, 0), 1000 + 100);
        // A cached count above the prompt is taken as the whole prompt.
        assert_eq!(prices.cost_micros(10, 50, 0), 1);
        assert_eq!(Prices::default().cost_micros(1_000_000, 0, 1_000_000), 0);
        // No overflow for absurd counts at the highest price.
        let dear = Prices {
            input: Prices::micros_per_mtok(MAX_PRICE_PER_MTOK).unwrap(),
            output: Prices::micros_per_mtok(MAX_PRICE_PER_MTOK).unwrap(),
            cached_input: 0,
        };
        assert!(dear.cost_micros(u64::from(u32::MAX), 0, u64::from(u32::MAX)) > 0);
    }

    #[test]
    fn dollars_read_well() {
        assert_eq!(dollars(0), "$0.00");
        assert_eq!(dollars(5_000_000), "$5.00");
        assert_eq!(dollars(1_230_000), "$1.23");
        assert_eq!(dollars(42), "$0.000042");
        assert_eq!(dollars(500_000), "$0.50");
    }
}

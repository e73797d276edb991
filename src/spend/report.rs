//! Reading the usage ledger back (docs/usage.md): which days a request covers, and the ledger's
//! rows summed by day, by model or by key. Every figure is an integer, so the totals are the
//! exact sum of the rows.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};

use super::UsageRow;
use crate::error::{ApiError, ApiResult};

/// The most days one report covers (inclusive): the ledger's default retention.
pub const MAX_REPORT_DAYS: i64 = 400;

/// How many days a report covers when `from` is not given, `to` included.
pub const DEFAULT_REPORT_DAYS: i64 = 30;

/// How a report's rows are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// One row per UTC day of the range, days without calls included.
    Day,
    /// One row per model and the provider that served it.
    Model,
    /// One row per key id.
    Key,
}

impl GroupBy {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Day => "day",
            GroupBy::Model => "model",
            GroupBy::Key => "key",
        }
    }

    /// `day` (also for an empty text), `model` or `key`.
    pub fn parse(text: &str) -> ApiResult<Self> {
        match text {
            "" | "day" => Ok(GroupBy::Day),
            "model" => Ok(GroupBy::Model),
            "key" => Ok(GroupBy::Key),
            other => Err(ApiError::invalid_field(
                "groupBy",
                "Invalid groupBy",
                format!(
                    "The parameter 'groupBy' must be \"day\", \"model\" or \"key\", not '{}'",
                    other.chars().take(40).collect::<String>()
                ),
            )),
        }
    }
}

/// The days a report covers, inclusive, and how it groups them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRange {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub group_by: GroupBy,
}

/// A date (`2026-12-07`) or an RFC 3339 date-time (read as its UTC day).
fn parse_day(field: &str, text: &str) -> ApiResult<NaiveDate> {
    let text = text.trim();
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(day);
    }
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc).date_naive());
    }
    Err(ApiError::invalid_field(
        field,
        format!("Invalid '{field}' date"),
        format!(
            "The parameter '{field}' must be an RFC 3339 date (\"2026-12-01\") or date-time (\"2026-12-01T00:00:00Z\", read as its UTC day), not '{}'",
            text.chars().take(40).collect::<String>()
        ),
    ))
}

impl ReportRange {
    /// The range a request asks for, `today` being the spend clock's UTC day: `to` defaults to
    /// today, `from` to the [`DEFAULT_REPORT_DAYS`] days ending with `to`.
    pub fn parse(from: &str, to: &str, group_by: &str, today: NaiveDate) -> ApiResult<Self> {
        let group_by = GroupBy::parse(group_by.trim())?;
        let to = match to.trim() {
            "" => today,
            text => parse_day("to", text)?,
        };
        let from = match from.trim() {
            "" => to - Duration::days(DEFAULT_REPORT_DAYS - 1),
            text => parse_day("from", text)?,
        };
        if from > to {
            return Err(ApiError::invalid_field(
                "from",
                "Invalid date range",
                format!("The parameter 'from' ({from}) must not be after 'to' ({to})"),
            ));
        }
        let days = (to - from).num_days() + 1;
        if days > MAX_REPORT_DAYS {
            return Err(ApiError::invalid_field(
                "from",
                "Date range too long",
                format!(
                    "The range from 'from' ({from}) to 'to' ({to}) covers {days} days; a report covers at most {MAX_REPORT_DAYS}: move 'from' later or ask in several parts"
                ),
            ));
        }
        Ok(Self { from, to, group_by })
    }

    /// Every day of the range, as the ledger names days.
    pub fn days(&self) -> Vec<String> {
        self.from
            .iter_days()
            .take_while(|day| *day <= self.to)
            .map(|day| day.format("%Y-%m-%d").to_string())
            .collect()
    }
}

/// Figures summed over some calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cost_micros: u64,
}

impl Figures {
    fn add(&mut self, row: &UsageRow) {
        self.requests = self.requests.saturating_add(row.requests);
        self.errors = self.errors.saturating_add(row.errors);
        self.prompt_tokens = self.prompt_tokens.saturating_add(row.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_add(row.completion_tokens);
        self.cached_tokens = self.cached_tokens.saturating_add(row.cached_tokens);
        self.cost_micros = self.cost_micros.saturating_add(row.cost_micros);
    }
}

/// One row of a report: what it groups by (the other parts empty), and its figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportRow {
    pub day: String,
    pub model: String,
    pub provider: String,
    pub key_id: String,
    pub figures: Figures,
}

/// A report: its range, totals and rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub range: ReportRange,
    pub totals: Figures,
    pub rows: Vec<ReportRow>,
}

/// Sums the ledger's `rows` (each a key's calls of a model on a day) as `range` groups them.
/// Rows come out ordered by day, by model then provider, or by key id.
pub fn summarize(range: ReportRange, rows: &[UsageRow]) -> Report {
    let mut groups: BTreeMap<(String, String, String, String), Figures> = BTreeMap::new();
    if range.group_by == GroupBy::Day {
        for day in range.days() {
            groups
                .entry((day, String::new(), String::new(), String::new()))
                .or_default();
        }
    }
    let mut totals = Figures::default();
    for row in rows {
        let group = match range.group_by {
            GroupBy::Day => (row.day.clone(), String::new(), String::new(), String::new()),
            GroupBy::Model => (
                String::new(),
                row.model.clone(),
                row.provider.clone(),
                String::new(),
            ),
            GroupBy::Key => (
                String::new(),
                String::new(),
                String::new(),
                row.key_id.clone(),
            ),
        };
        groups.entry(group).or_default().add(row);
        totals.add(row);
    }
    let rows = groups
        .into_iter()
        .map(|((day, model, provider, key_id), figures)| ReportRow {
            day,
            model,
            provider,
            key_id,
            figures,
        })
        .collect();
    Report {
        range,
        totals,
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    fn row(key: &str, on: &str, model: &str, requests: u64, cost: u64) -> UsageRow {
        UsageRow {
            key_id: key.into(),
            day: on.into(),
            model: model.into(),
            provider: "p".into(),
            requests,
            errors: 0,
            prompt_tokens: requests * 10,
            completion_tokens: requests * 3,
            cached_tokens: 0,
            cost_micros: cost,
        }
    }

    #[test]
    fn the_default_range_is_the_thirty_days_ending_today() {
        let range = ReportRange::parse("", "", "", day("2026-12-07")).unwrap();
        assert_eq!(
            (range.from, range.to),
            (day("2026-11-08"), day("2026-12-07"))
        );
        assert_eq!(range.days().len(), 30);
        assert_eq!(range.group_by, GroupBy::Day);
    }

    #[test]
    fn dates_and_date_times_name_utc_days() {
        let range = ReportRange::parse(
            "2026-12-01T23:30:00-02:00",
            "2026-12-05",
            "model",
            day("2026-12-07"),
        )
        .unwrap();
        assert_eq!(
            (range.from, range.to),
            (day("2026-12-02"), day("2026-12-05"))
        );
        assert_eq!(range.group_by, GroupBy::Model);
    }

    #[test]
    fn bad_ranges_name_the_field_at_fault() {
        let today = day("2026-12-07");
        for (from, to, group, field) in [
            ("yesterday", "", "", "from"),
            ("", "2026-13-01", "", "to"),
            ("2026-12-05", "2026-12-01", "", "from"),
            ("2025-01-01", "2026-12-01", "", "from"),
            ("", "", "week", "groupBy"),
        ] {
            let err = ReportRange::parse(from, to, group, today).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{from} {to} {group}");
        }
        // 400 days is the most.
        assert!(ReportRange::parse("2025-11-03", "2026-12-07", "", today).is_ok());
        assert!(ReportRange::parse("2025-11-02", "2026-12-07", "", today).is_err());
    }

    #[test]
    fn totals_are_the_sum_of_the_rows_in_every_grouping() {
        let rows = vec![
            row("k1", "2026-12-01", "a", 2, 5),
            row("k1", "2026-12-03", "b", 1, 7),
            row("k2", "2026-12-03", "a", 4, 11),
        ];
        let range =
            |group| ReportRange::parse("2026-12-01", "2026-12-03", group, day("2026-12-07"));
        let by_day = summarize(range("day").unwrap(), &rows);
        assert_eq!(
            by_day
                .rows
                .iter()
                .map(|r| (r.day.as_str(), r.figures.cost_micros))
                .collect::<Vec<_>>(),
            vec![("2026-12-01", 5), ("2026-12-02", 0), ("2026-12-03", 18)]
        );
        let by_model = summarize(range("model").unwrap(), &rows);
        assert_eq!(
            by_model
                .rows
                .iter()
                .map(|r| (r.model.as_str(), r.figures.requests))
                .collect::<Vec<_>>(),
            vec![("a", 6), ("b", 1)]
        );
        let by_key = summarize(range("key").unwrap(), &rows);
        assert_eq!(
            by_key
                .rows
                .iter()
                .map(|r| (r.key_id.as_str(), r.figures.cost_micros))
                .collect::<Vec<_>>(),
            vec![("k1", 12), ("k2", 11)]
        );
        for report in [by_day, by_model, by_key] {
            let mut sum = Figures::default();
            for r in &report.rows {
                sum.requests += r.figures.requests;
                sum.prompt_tokens += r.figures.prompt_tokens;
                sum.cost_micros += r.figures.cost_micros;
            }
            assert_eq!(
                (sum.requests, sum.prompt_tokens, sum.cost_micros),
                (
                    report.totals.requests,
                    report.totals.prompt_tokens,
                    report.totals.cost_micros
                )
            );
            assert_eq!(report.totals.cost_micros, 23);
        }
    }
}

//! When a job is due: the three schedule kinds of the OpenClaw cron model,
//! validated from the request and turned into due times (Unix milliseconds).
//!
//! Cron expressions are parsed and evaluated by `croner` in the job's IANA
//! zone (`chrono-tz`), which keeps them right across daylight-saving changes:
//! a fixed-time job whose wall-clock time falls in a spring-forward gap runs
//! right after the gap, once; in a fall-back overlap it runs once, at the first
//! pass. Interval patterns (`*/15 * * * *`) follow real time.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};
use crate::proto;

/// The shortest `every` interval: one second.
pub const MIN_EVERY_MS: i64 = 1_000;
/// The longest `every` interval: ten years.
pub const MAX_EVERY_MS: i64 = 10 * 366 * 24 * 3_600_000;
/// Latest accepted time (anchor or `at`): the end of year 9999.
const MAX_TIME_MS: i64 = 253_402_300_799_000;
const MAX_EXPR_CHARS: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Schedule {
    /// Due at `anchor_ms + k * every_ms` for whole `k`.
    #[serde(rename_all = "camelCase")]
    Every { every_ms: i64, anchor_ms: i64 },
    /// Due once.
    #[serde(rename_all = "camelCase")]
    At { at_ms: i64, delete_after_run: bool },
    #[serde(rename_all = "camelCase")]
    Cron { expr: String, tz: String },
}

fn field_error(field: &str, message: &str, details: String) -> ApiError {
    ApiError::invalid_field(format!("schedule.{field}"), message, details)
}

fn missing(field: &str, kind: &str, what: &str) -> ApiError {
    field_error(
        field,
        "Missing required field",
        format!("The field 'schedule.{field}' is required for a '{kind}' schedule ({what})"),
    )
}

/// Parses a 5-field (minute precision) or 6-field (seconds first) expression.
fn parse_expr(expr: &str) -> Result<Cron, String> {
    let fields = expr.split_whitespace().count();
    let alias = expr.trim_start().starts_with('@');
    if !alias && !(5..=6).contains(&fields) {
        return Err(format!(
            "it has {fields} fields; use 5 (minute hour day-of-month month day-of-week) or 6 (seconds first)"
        ));
    }
    // An empty list element (`,5`, `1,,2`) matches nothing, yet the parser takes it, and the
    // search for a match would then run through every minute up to its year limit.
    if let Some((n, field)) = expr
        .split_whitespace()
        .enumerate()
        .find(|(_, f)| f.split(',').any(str::is_empty))
    {
        return Err(format!(
            "field {} ('{}') has an empty list element; separate values with single commas",
            n + 1,
            field.chars().take(32).collect::<String>()
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| e.to_string())
}

fn parse_tz(tz: &str) -> Result<Tz, ()> {
    Tz::from_str(tz).map_err(|_| ())
}

/// Missed due times of a cron job counted one by one, beyond the ones recorded: past this many,
/// a claim says "more than" instead of walking a whole outage (a per-second job down for a day
/// has 86,400).
pub const MAX_COUNTED_MISSES: u64 = 1_000;

/// Parsed cron expressions kept per process, so the scheduler does not parse a job's expression
/// again at every claim and every due time. Cleared whole when full: the jobs in use come back
/// after one parse each.
const PARSED_CACHE_SIZE: usize = 4_096;

type Parsed = std::sync::Arc<(Cron, Tz)>;

fn parsed(expr: &str, tz: &str) -> Option<Parsed> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<(String, String), Parsed>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    let key = (expr.to_owned(), tz.to_owned());
    if let Some(found) = cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
        return Some(found);
    }
    let found: Parsed = std::sync::Arc::new((parse_expr(expr).ok()?, parse_tz(tz).ok()?));
    if let Ok(mut cache) = cache.lock() {
        if cache.len() >= PARSED_CACHE_SIZE {
            cache.clear();
        }
        cache.insert(key, found.clone());
    }
    Some(found)
}

#[cfg(test)]
thread_local! {
    /// Searches for a cron match made by this thread: the work a computation did.
    static SEARCHES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The searches for a cron match this thread has made so far (tests bound work with it).
#[cfg(test)]
pub fn searches() -> u64 {
    SEARCHES.with(std::cell::Cell::get)
}

/// The first match of `cron` in `tz` strictly after (`forward`) or at or before (`!forward`)
/// `t_ms`, in Unix milliseconds. Matches are whole seconds.
fn search(cron: &Cron, tz: Tz, t_ms: i64, forward: bool) -> Option<i64> {
    #[cfg(test)]
    SEARCHES.with(|n| n.set(n.get() + 1));
    // Checked: a time near i64's ends has no due time, rather than an overflow.
    let floor = t_ms.div_euclid(1000).checked_mul(1000)?;
    let start = Utc.timestamp_millis_opt(floor).single()?.with_timezone(&tz);
    let found = if forward {
        // Searching after the whole second at or before `t_ms` finds the first match after it.
        cron.find_next_occurrence(&start, false)
    } else {
        cron.find_previous_occurrence(&start, true)
    };
    Some(found.ok()?.timestamp_millis())
}

impl Schedule {
    /// Validates a requested schedule. `now_ms` anchors an `every` schedule
    /// without one; an `at` time older than `oldest_at_ms` is refused, since it
    /// could never run.
    pub fn from_request(
        request: Option<&proto::Schedule>,
        now_ms: i64,
        oldest_at_ms: i64,
    ) -> ApiResult<Self> {
        let Some(s) = request else {
            return Err(ApiError::invalid_field(
                "schedule",
                "Missing required field",
                "The field 'schedule' is required, e.g. {\"kind\": \"every\", \"everyMs\": 60000}",
            ));
        };
        match s.kind.as_str() {
            "every" => {
                let every_ms = s
                    .every_ms
                    .ok_or_else(|| missing("everyMs", "every", "the interval in milliseconds"))?;
                if !(MIN_EVERY_MS..=MAX_EVERY_MS).contains(&every_ms) {
                    return Err(field_error(
                        "everyMs",
                        "Invalid interval",
                        format!(
                            "The field 'schedule.everyMs' must be from {MIN_EVERY_MS} (one second) to {MAX_EVERY_MS} milliseconds"
                        ),
                    ));
                }
                let anchor_ms = s.anchor_ms.unwrap_or(now_ms);
                if !(0..=MAX_TIME_MS).contains(&anchor_ms) {
                    return Err(field_error(
                        "anchorMs",
                        "Invalid anchor",
                        "The field 'schedule.anchorMs' must be a Unix time in milliseconds from 0 to the year 9999".into(),
                    ));
                }
                Ok(Schedule::Every {
                    every_ms,
                    anchor_ms,
                })
            }
            "at" => {
                let raw = s.at.as_deref().ok_or_else(|| {
                    missing("at", "at", "an RFC 3339 time such as 2026-02-15T00:00:00Z")
                })?;
                let at = DateTime::parse_from_rfc3339(raw.trim()).map_err(|_| {
                    field_error(
                        "at",
                        "Invalid time",
                        format!(
                            "The field 'schedule.at' must be an RFC 3339 time with a zone, such as 2026-02-15T00:00:00Z (got '{}')",
                            raw.chars().take(40).collect::<String>()
                        ),
                    )
                })?;
                let at_ms = at.timestamp_millis();
                if at_ms > MAX_TIME_MS {
                    return Err(field_error(
                        "at",
                        "Invalid time",
                        "The field 'schedule.at' must be before the year 10000".into(),
                    ));
                }
                if at_ms < oldest_at_ms {
                    return Err(field_error(
                        "at",
                        "Time in the past",
                        "The field 'schedule.at' is further in the past than the catch-up window, so the job could never run; give a future time".into(),
                    ));
                }
                Ok(Schedule::At {
                    at_ms,
                    delete_after_run: s.delete_after_run.unwrap_or(false),
                })
            }
            "cron" => {
                let expr = s
                    .expr
                    .as_deref()
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .ok_or_else(|| {
                        missing("expr", "cron", "a cron expression such as '0 9 * * 1-5'")
                    })?;
                if expr.chars().count() > MAX_EXPR_CHARS {
                    return Err(field_error(
                        "expr",
                        "Invalid cron expression",
                        format!(
                            "The field 'schedule.expr' must be at most {MAX_EXPR_CHARS} characters"
                        ),
                    ));
                }
                let tz =
                    s.tz.as_deref()
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .unwrap_or("UTC");
                if parse_tz(tz).is_err() {
                    return Err(field_error(
                        "tz",
                        "Unknown time zone",
                        format!(
                            "The field 'schedule.tz' must be an IANA time zone such as 'UTC' or 'America/New_York' (got '{}')",
                            tz.chars().take(64).collect::<String>()
                        ),
                    ));
                }
                if let Err(reason) = parse_expr(expr) {
                    return Err(field_error(
                        "expr",
                        "Invalid cron expression",
                        format!(
                            "The field 'schedule.expr' is not a valid cron expression: {reason}"
                        ),
                    ));
                }
                let schedule = Schedule::Cron {
                    expr: expr.to_string(),
                    tz: tz.to_string(),
                };
                if schedule.next_after(now_ms).is_none() {
                    return Err(field_error(
                        "expr",
                        "Cron expression never fires",
                        format!("The field 'schedule.expr' ('{expr}') matches no future time"),
                    ));
                }
                Ok(schedule)
            }
            "" => Err(missing("kind", "any", "one of: every, at, cron")),
            other => Err(field_error(
                "kind",
                "Invalid schedule kind",
                format!(
                    "The field 'schedule.kind' is '{}'; use one of: every, at, cron",
                    other.chars().take(40).collect::<String>()
                ),
            )),
        }
    }

    /// The first due time strictly after `t_ms`, if the schedule has one.
    pub fn next_after(&self, t_ms: i64) -> Option<i64> {
        match self {
            Schedule::Every {
                every_ms,
                anchor_ms,
            } => {
                if t_ms < *anchor_ms {
                    return Some(*anchor_ms);
                }
                let k = (t_ms - anchor_ms) / every_ms + 1;
                anchor_ms.checked_add(k.checked_mul(*every_ms)?)
            }
            Schedule::At { at_ms, .. } => (*at_ms > t_ms).then_some(*at_ms),
            Schedule::Cron { expr, tz } => {
                let parsed = parsed(expr, tz)?;
                search(&parsed.0, parsed.1, t_ms, true)
            }
        }
    }

    /// The first due time of a job created or enabled at `now_ms`. A one-shot
    /// time a little in the past (within the catch-up window) is due at once.
    pub fn first_due(&self, now_ms: i64) -> Option<i64> {
        match self {
            Schedule::At { at_ms, .. } => Some(*at_ms),
            _ => self.next_after(now_ms),
        }
    }

    /// The due times in `(after_ms, up_to_ms]`, oldest first, at most `limit`
    /// of the newest ones, and how many older ones were left out (at least; see
    /// [`Schedule::due_times`]).
    pub fn due_between(&self, after_ms: i64, up_to_ms: i64, limit: usize) -> (Vec<i64>, u64) {
        let (dues, dropped, _) = self.due_times(after_ms, up_to_ms, limit);
        (dues, dropped)
    }

    /// [`Schedule::due_between`], and whether the count of older due times is exact (`false`:
    /// at least that many, when a cron job missed more than [`MAX_COUNTED_MISSES`] besides).
    ///
    /// The work is bounded however long the span: an `every` schedule is counted, not walked;
    /// a cron schedule's newest due times are found searching back from `up_to_ms`, and the
    /// older ones counted up to [`MAX_COUNTED_MISSES`].
    pub fn due_times(&self, after_ms: i64, up_to_ms: i64, limit: usize) -> (Vec<i64>, u64, bool) {
        let mut out = std::collections::VecDeque::new();
        let mut dropped = 0u64;
        if let Schedule::Every {
            every_ms,
            anchor_ms,
        } = self
        {
            // Counted, not walked: a long outage of a one-second job is cheap.
            let Some(first) = self.next_after(after_ms) else {
                return (Vec::new(), 0, true);
            };
            if first > up_to_ms {
                return (Vec::new(), 0, true);
            }
            let last_k = (up_to_ms - anchor_ms).div_euclid(*every_ms);
            let first_k = (first - anchor_ms).div_euclid(*every_ms);
            let count = (last_k - first_k + 1).max(0) as u64;
            let keep = count.min(limit as u64);
            dropped = count - keep;
            for k in (last_k - keep as i64 + 1)..=last_k {
                out.push_back(anchor_ms + k * every_ms);
            }
            return (out.into(), dropped, true);
        }
        let Schedule::Cron { expr, tz } = self else {
            // A one-shot time: due once, if in the span.
            let due = self.next_after(after_ms).filter(|next| *next <= up_to_ms);
            return (due.into_iter().collect(), 0, true);
        };
        let Some(parsed) = parsed(expr, tz) else {
            return (Vec::new(), 0, true);
        };
        let (cron, tz) = (&parsed.0, parsed.1);
        // Jump close to `up_to_ms`: the `limit + 1`-th newest due time, searched backwards, is
        // where the walk forward starts; what lies before it is only counted.
        let mut start = after_ms;
        let mut exact = true;
        let mut cursor = up_to_ms;
        for _ in 0..=limit {
            match search(cron, tz, cursor, false) {
                Some(previous) if previous > after_ms => cursor = previous - 1,
                _ => {
                    cursor = after_ms;
                    break;
                }
            }
        }
        if cursor > after_ms {
            // More than `limit` due times in the span: those up to `cursor` are counted only.
            let mut counted = after_ms;
            while let Some(next) = search(cron, tz, counted, true) {
                if next > cursor {
                    break;
                }
                if dropped == MAX_COUNTED_MISSES {
                    exact = false;
                    break;
                }
                dropped += 1;
                counted = next;
            }
            start = cursor;
        }
        let mut walked = start;
        while let Some(next) = search(cron, tz, walked, true) {
            if next > up_to_ms {
                break;
            }
            out.push_back(next);
            if out.len() > limit {
                out.pop_front();
                dropped += 1;
            }
            walked = next;
        }
        (out.into(), dropped, exact)
    }

    /// The API's form of the schedule.
    pub fn to_proto(&self) -> proto::Schedule {
        let mut out = proto::Schedule::default();
        match self {
            Schedule::Every {
                every_ms,
                anchor_ms,
            } => {
                out.kind = "every".into();
                out.every_ms = Some(*every_ms);
                out.anchor_ms = Some(*anchor_ms);
            }
            Schedule::At {
                at_ms,
                delete_after_run,
            } => {
                out.kind = "at".into();
                out.at = Utc
                    .timestamp_millis_opt(*at_ms)
                    .single()
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
                out.delete_after_run = Some(*delete_after_run);
            }
            Schedule::Cron { expr, tz } => {
                out.kind = "cron".into();
                out.expr = Some(expr.clone());
                out.tz = Some(tz.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> i64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_millis()
    }

    fn iso(ms: i64) -> String {
        Utc.timestamp_millis_opt(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    fn cron(expr: &str, tz: &str) -> Schedule {
        let request = proto::Schedule {
            kind: "cron".into(),
            expr: Some(expr.into()),
            tz: Some(tz.into()),
            ..Default::default()
        };
        Schedule::from_request(Some(&request), ms("2026-01-01T00:00:00Z"), 0).unwrap()
    }

    fn next_n(schedule: &Schedule, from: &str, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut t = ms(from);
        for _ in 0..n {
            t = schedule.next_after(t).unwrap();
            out.push(iso(t));
        }
        out
    }

    #[test]
    fn every_is_anchored_and_strictly_after() {
        let s = Schedule::Every {
            every_ms: 1000,
            anchor_ms: 500,
        };
        assert_eq!(s.next_after(0), Some(500));
        assert_eq!(s.next_after(500), Some(1500));
        assert_eq!(s.next_after(1499), Some(1500));
        assert_eq!(
            s.due_between(500, 4500, 100),
            (vec![1500, 2500, 3500, 4500], 0)
        );
        assert_eq!(s.due_between(500, 4500, 2), (vec![3500, 4500], 2));
        assert_eq!(s.due_between(4500, 4500, 10), (vec![], 0));
    }

    #[test]
    fn a_daily_9am_new_york_job_follows_the_wall_clock_across_both_transitions() {
        let s = cron("0 9 * * *", "America/New_York");
        // 2026-03-08: clocks spring forward (EST -5 → EDT -4).
        assert_eq!(
            next_n(&s, "2026-03-06T15:00:00Z", 4),
            [
                "2026-03-07T14:00:00Z",
                "2026-03-08T13:00:00Z",
                "2026-03-09T13:00:00Z",
                "2026-03-10T13:00:00Z"
            ]
        );
        // 2026-11-01: clocks fall back (EDT -4 → EST -5).
        assert_eq!(
            next_n(&s, "2026-10-30T15:00:00Z", 3),
            [
                "2026-10-31T13:00:00Z",
                "2026-11-01T14:00:00Z",
                "2026-11-02T14:00:00Z"
            ]
        );
    }

    #[test]
    fn a_job_in_the_spring_forward_gap_runs_once_right_after_it() {
        // 02:30 does not exist on 2026-03-08 in New York.
        let s = cron("30 2 * * *", "America/New_York");
        let got = next_n(&s, "2026-03-07T00:00:00Z", 3);
        assert_eq!(got[0], "2026-03-07T07:30:00Z");
        assert_eq!(
            got[1], "2026-03-08T07:00:00Z",
            "03:00 EDT, the end of the gap"
        );
        assert_eq!(got[2], "2026-03-09T06:30:00Z");
    }

    #[test]
    fn a_job_in_the_fall_back_overlap_runs_once() {
        // 01:30 happens twice on 2026-11-01 in New York; the job runs at the first.
        let s = cron("30 1 * * *", "America/New_York");
        assert_eq!(
            next_n(&s, "2026-10-31T12:00:00Z", 3),
            [
                "2026-11-01T05:30:00Z",
                "2026-11-02T06:30:00Z",
                "2026-11-03T06:30:00Z"
            ]
        );
    }

    #[test]
    fn an_hourly_job_runs_every_real_hour_across_the_fall_back() {
        let s = cron("0 * * * *", "America/New_York");
        // 05:00Z = 01:00 EDT, 06:00Z = 01:00 EST (the repeated hour), 07:00Z = 02:00 EST.
        assert_eq!(
            next_n(&s, "2026-11-01T04:30:00Z", 3),
            [
                "2026-11-01T05:00:00Z",
                "2026-11-01T06:00:00Z",
                "2026-11-01T07:00:00Z"
            ]
        );
    }

    #[test]
    fn six_fields_mean_seconds_first() {
        let s = cron("*/10 * * * * *", "UTC");
        assert_eq!(
            next_n(&s, "2026-01-01T00:00:05.500Z", 2),
            ["2026-01-01T00:00:10Z", "2026-01-01T00:00:20Z"]
        );
        let (due, dropped) =
            s.due_between(ms("2026-01-01T00:00:00Z"), ms("2026-01-01T00:01:00Z"), 3);
        assert_eq!(due.len(), 3);
        assert_eq!(dropped, 3);
        assert_eq!(iso(*due.last().unwrap()), "2026-01-01T00:01:00Z");
    }

    fn rejected(schedule: proto::Schedule) -> ApiError {
        Schedule::from_request(
            Some(&schedule),
            ms("2026-01-01T00:00:00Z"),
            ms("2025-12-31T23:00:00Z"),
        )
        .expect_err("should be rejected")
    }

    #[test]
    fn bad_schedules_name_the_field() {
        let every = |ms: i64| proto::Schedule {
            kind: "every".into(),
            every_ms: Some(ms),
            ..Default::default()
        };
        assert_eq!(
            rejected(every(999)).field.as_deref(),
            Some("schedule.everyMs")
        );
        let no_interval = proto::Schedule {
            kind: "every".into(),
            ..Default::default()
        };
        assert_eq!(
            rejected(no_interval).field.as_deref(),
            Some("schedule.everyMs")
        );
        let kind = proto::Schedule {
            kind: "hourly".into(),
            ..Default::default()
        };
        assert_eq!(rejected(kind).field.as_deref(), Some("schedule.kind"));
        for expr in ["* * * *", "61 * * * *", "* * * * * * *", "0 0 30 2 *"] {
            let bad = proto::Schedule {
                kind: "cron".into(),
                expr: Some(expr.into()),
                ..Default::default()
            };
            assert_eq!(
                rejected(bad).field.as_deref(),
                Some("schedule.expr"),
                "{expr}"
            );
        }
        let tz = proto::Schedule {
            kind: "cron".into(),
            expr: Some("0 9 * * *".into()),
            tz: Some("Mars/Olympus".into()),
            ..Default::default()
        };
        assert_eq!(rejected(tz).field.as_deref(), Some("schedule.tz"));
        for at in ["tomorrow", "2020-01-01T00:00:00Z", "2026-02-15T00:00:00"] {
            let bad = proto::Schedule {
                kind: "at".into(),
                at: Some(at.into()),
                ..Default::default()
            };
            assert_eq!(rejected(bad).field.as_deref(), Some("schedule.at"), "{at}");
        }
    }

    /// Found by the `cron_schedule` fuzz target: an empty element in a field's list
    /// (`, * * * *`) parsed, and the search for its next match ran for many seconds before
    /// the schedule was refused as one that never fires.
    #[test]
    fn a_field_with_an_empty_list_element_is_refused_at_once() {
        for expr in [", * * * *", "1,,2 * * * *", "* * * * 1,", "0 ,5 * * * *"] {
            let bad = proto::Schedule {
                kind: "cron".into(),
                expr: Some(expr.into()),
                ..Default::default()
            };
            let started = std::time::Instant::now();
            let error = rejected(bad);
            assert!(
                started.elapsed() < std::time::Duration::from_secs(1),
                "{expr:?}"
            );
            assert_eq!(error.field.as_deref(), Some("schedule.expr"), "{expr:?}");
            assert_eq!(error.message, "Invalid cron expression", "{expr:?}");
            assert!(error.details.contains("empty list element"), "{error:?}");
        }
    }
}

//! Budget periods: a calendar day, ISO week (from Monday) or month in a time zone, from local
//! midnight to local midnight, so "day" means the day its holder lives in, DST included.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeriodKind {
    Day,
    Week,
    Month,
}

impl PeriodKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PeriodKind::Day => "day",
            PeriodKind::Week => "week",
            PeriodKind::Month => "month",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "day" => Some(PeriodKind::Day),
            "week" => Some(PeriodKind::Week),
            "month" => Some(PeriodKind::Month),
            _ => None,
        }
    }
}

/// One period: where it starts and ends, as instants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub kind: PeriodKind,
    pub tz: Tz,
    /// The local date the period starts on.
    pub first_day: NaiveDate,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Period {
    /// The period of `kind` in `tz` that `now` falls in.
    pub fn containing(now: DateTime<Utc>, kind: PeriodKind, tz: Tz) -> Self {
        let today = now.with_timezone(&tz).date_naive();
        let first_day = match kind {
            PeriodKind::Day => today,
            PeriodKind::Week => {
                today - Duration::days(i64::from(today.weekday().num_days_from_monday()))
            }
            PeriodKind::Month => today.with_day(1).unwrap_or(today),
        };
        let next = match kind {
            PeriodKind::Day => first_day + Duration::days(1),
            PeriodKind::Week => first_day + Duration::days(7),
            PeriodKind::Month => first_day
                .checked_add_months(chrono::Months::new(1))
                .unwrap_or(first_day + Duration::days(31)),
        };
        Self {
            kind,
            tz,
            first_day,
            start: local_midnight(tz, first_day),
            end: local_midnight(tz, next),
        }
    }

    /// The period's name in the store: `day:2026-12-07@Europe/Berlin`.
    pub fn id(&self) -> String {
        format!(
            "{}:{}@{}",
            self.kind.as_str(),
            self.first_day,
            self.tz.name()
        )
    }
}

/// The first instant of `day` in `tz`: its midnight, or the first instant after a DST gap
/// that swallowed midnight.
fn local_midnight(tz: Tz, day: NaiveDate) -> DateTime<Utc> {
    let mut local = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    for _ in 0..4 {
        if let Some(at) = tz.from_local_datetime(&local).earliest() {
            return at.with_timezone(&Utc);
        }
        local += Duration::minutes(30);
    }
    Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn a_day_runs_from_local_midnight_to_local_midnight() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let p = Period::containing(at("2026-12-07T23:30:00Z"), PeriodKind::Day, berlin);
        // 23:30 UTC is already 00:30 on the 8th in Berlin (UTC+1 in winter).
        assert_eq!(p.first_day.to_string(), "2026-12-08");
        assert_eq!(p.start, at("2026-12-07T23:00:00Z"));
        assert_eq!(p.end, at("2026-12-08T23:00:00Z"));
        assert_eq!(p.id(), "day:2026-12-08@Europe/Berlin");
    }

    #[test]
    fn a_week_starts_on_monday_and_a_month_on_the_first() {
        let utc = chrono_tz::UTC;
        // 2026-12-07 is a Monday; the 13th a Sunday.
        let w = Period::containing(at("2026-12-13T12:00:00Z"), PeriodKind::Week, utc);
        assert_eq!(w.start, at("2026-12-07T00:00:00Z"));
        assert_eq!(w.end, at("2026-12-14T00:00:00Z"));
        let m = Period::containing(at("2026-12-31T23:59:59Z"), PeriodKind::Month, utc);
        assert_eq!(m.start, at("2026-12-01T00:00:00Z"));
        assert_eq!(m.end, at("2027-01-01T00:00:00Z"));
        let feb = Period::containing(at("2028-02-29T10:00:00Z"), PeriodKind::Month, utc);
        assert_eq!(feb.end, at("2028-03-01T00:00:00Z"));
    }

    #[test]
    fn a_day_across_a_dst_change_is_23_or_25_hours() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let spring = Period::containing(at("2026-03-29T12:00:00Z"), PeriodKind::Day, berlin);
        assert_eq!(spring.end - spring.start, Duration::hours(23));
        let autumn = Period::containing(at("2026-10-25T12:00:00Z"), PeriodKind::Day, berlin);
        assert_eq!(autumn.end - autumn.start, Duration::hours(25));
    }

    #[test]
    fn a_midnight_lost_to_dst_starts_the_day_at_its_first_instant() {
        // Santiago moved its clocks from 00:00 to 01:00 on 2026-09-06.
        let santiago: Tz = "America/Santiago".parse().unwrap();
        let p = Period::containing(at("2026-09-06T12:00:00Z"), PeriodKind::Day, santiago);
        assert_eq!(
            p.start.with_timezone(&santiago).to_string(),
            "2026-09-06 01:00:00 -03"
        );
    }
}

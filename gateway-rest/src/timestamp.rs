//! Every time the API shows is RFC 3339, UTC, to the second, with a `Z`: `2026-02-14T22:00:00Z`.

use chrono::{DateTime, SecondsFormat, Utc};

pub(crate) fn now() -> String {
    format(Utc::now())
}

/// A core timestamp as the API shows it; `None` when the core left it unset.
pub(crate) fn from_proto(timestamp: Option<&prost_types::Timestamp>) -> Option<String> {
    let timestamp = timestamp?;
    DateTime::<Utc>::from_timestamp(timestamp.seconds, 0).map(format)
}

/// Written by hand for the years 0–9999 (every answer carries at least one of these), by chrono
/// otherwise.
fn format(time: DateTime<Utc>) -> String {
    use chrono::{Datelike as _, Timelike as _};
    let year = time.year();
    if !(0..=9999).contains(&year) {
        return time.to_rfc3339_opts(SecondsFormat::Secs, true);
    }
    let mut text = String::with_capacity(20);
    let fields = [
        (year as u32, 4, '-'),
        (time.month(), 2, '-'),
        (time.day(), 2, 'T'),
        (time.hour(), 2, ':'),
        (time.minute(), 2, ':'),
        (time.second(), 2, 'Z'),
    ];
    for (value, width, after) in fields {
        for place in (0..width).rev() {
            text.push(char::from(b'0' + (value / 10u32.pow(place) % 10) as u8));
        }
        text.push(after);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_as_chrono_writes_rfc_3339_to_the_second() {
        let start = DateTime::parse_from_rfc3339("0999-12-31T23:59:58.5Z")
            .unwrap()
            .with_timezone(&Utc);
        for step in 0..5000i64 {
            let time = start + chrono::Duration::seconds(step * 7_654_321 + step % 61);
            assert_eq!(
                format(time),
                time.to_rfc3339_opts(SecondsFormat::Secs, true)
            );
        }
    }

    #[test]
    fn proto_timestamps_drop_fractions_and_use_z() {
        let ts = prost_types::Timestamp {
            seconds: 1_771_106_400,
            nanos: 999_000_000,
        };
        assert_eq!(
            from_proto(Some(&ts)).as_deref(),
            Some("2026-02-14T22:00:00Z")
        );
        assert_eq!(from_proto(None), None);
    }
}

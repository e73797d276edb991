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

fn format(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

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

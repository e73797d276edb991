//! A stored message's `createdAt`, read without chrono's general-purpose parser: a history of
//! N messages is N timestamps on every turn, and chrono's parser took a twentieth of a send's
//! instructions (docs/benchmarks/callgrind.md). Written byte for byte as chrono writes it, by
//! hand; read by a strict reader of that form, anything else by chrono itself.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserializer, Serialize, Serializer};

pub fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    match write_utc(at) {
        Some(text) => serializer.serialize_str(&text),
        None => at.serialize(serializer),
    }
}

/// `value` in `width` decimal digits, zero-padded (the lowest `width` digits of a larger one).
pub(crate) fn push_digits(text: &mut String, value: u32, width: u32) {
    for place in (0..width).rev() {
        text.push(char::from(b'0' + (value / 10u32.pow(place) % 10) as u8));
    }
}

/// What chrono writes for a UTC time (RFC 3339, `Z`, the fraction in 0, 3, 6 or 9 digits as
/// it needs), written by hand for the years 0–9999; `None` otherwise (and for a leap second).
fn write_utc(at: &DateTime<Utc>) -> Option<String> {
    use chrono::{Datelike as _, Timelike as _};
    let year = u32::try_from(at.year()).ok().filter(|year| *year <= 9999)?;
    let nanos = at.nanosecond();
    if nanos >= 1_000_000_000 {
        return None;
    }
    let (fraction, digits) = if nanos == 0 {
        (0, 0)
    } else if nanos.is_multiple_of(1_000_000) {
        (nanos / 1_000_000, 3)
    } else if nanos.is_multiple_of(1_000) {
        (nanos / 1_000, 6)
    } else {
        (nanos, 9)
    };
    let mut text = String::with_capacity(30);
    for (value, width, after) in [
        (year, 4, '-'),
        (at.month(), 2, '-'),
        (at.day(), 2, 'T'),
        (at.hour(), 2, ':'),
        (at.minute(), 2, ':'),
    ] {
        push_digits(&mut text, value, width);
        text.push(after);
    }
    push_digits(&mut text, at.second(), 2);
    if digits > 0 {
        text.push('.');
        push_digits(&mut text, fraction, digits);
    }
    text.push('Z');
    Some(text)
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    deserializer.deserialize_str(Visitor)
}

struct Visitor;

impl serde::de::Visitor<'_> for Visitor {
    type Value = DateTime<Utc>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an RFC 3339 date and time")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
        match parse_utc(text.as_bytes()) {
            Some(at) => Ok(at),
            None => text.parse().map_err(E::custom),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z`, the form chrono writes a UTC time in; `None` for anything
/// else (other offsets, leap seconds, lower-case separators), which chrono then reads.
fn parse_utc(text: &[u8]) -> Option<DateTime<Utc>> {
    fn digits(text: &[u8]) -> Option<u32> {
        text.iter().try_fold(0u32, |n, &b| {
            b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
        })
    }
    if text.len() < 20 || text.last() != Some(&b'Z') {
        return None;
    }
    let (date, rest) = text.split_at(10);
    let (time, fraction) = rest.split_at(9);
    if date[4] != b'-' || date[7] != b'-' || time[0] != b'T' || time[3] != b':' || time[6] != b':' {
        return None;
    }
    let fraction = &fraction[..fraction.len() - 1];
    let nanos = match fraction {
        [] => 0,
        [b'.', digits_ @ ..] if (1..=9).contains(&digits_.len()) => {
            digits(digits_)? * 10u32.pow(9 - digits_.len() as u32)
        }
        _ => return None,
    };
    let second = digits(&time[7..9])?;
    if second > 59 {
        return None;
    }
    Some(
        NaiveDate::from_ymd_opt(
            i32::try_from(digits(&date[..4])?).ok()?,
            digits(&date[5..7])?,
            digits(&date[8..10])?,
        )?
        .and_hms_nano_opt(digits(&time[1..3])?, digits(&time[4..6])?, second, nanos)?
        .and_utc(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct At(#[serde(with = "super")] DateTime<Utc>);

    #[test]
    fn reads_what_chrono_writes_and_chrono_reads_the_rest() {
        let times = [
            "2026-12-07T18:10:05Z",
            "2026-12-07T18:10:05.1Z",
            "2026-12-07T18:10:05.120Z",
            "2026-12-07T18:10:05.123456Z",
            "2026-12-07T18:10:05.123456789Z",
            "1999-02-28T00:00:00Z",
            "2024-02-29T23:59:59.999999999Z",
            // chrono's way: other offsets, a space, lower case, a leap second.
            "2026-12-07T19:10:05+01:00",
            "2026-12-07 18:10:05Z",
            "2026-12-07t18:10:05z",
            "2016-12-31T23:59:60Z",
        ];
        for text in times {
            let chrono: DateTime<Utc> = text.parse().expect(text);
            let read: At = serde_json::from_str(&format!("\"{text}\"")).expect(text);
            assert_eq!(read.0, chrono, "{text}");
            // Written exactly as chrono writes it.
            assert_eq!(
                serde_json::to_string(&read).unwrap(),
                serde_json::to_string(&chrono).unwrap()
            );
        }
        for bad in [
            "2026-02-30T00:00:00Z",
            "2026-12-07T24:00:00Z",
            "2026-12-07",
            "",
            "x",
        ] {
            let read: Result<At, _> = serde_json::from_str(&format!("\"{bad}\""));
            assert!(read.is_err(), "{bad}");
        }
    }

    #[test]
    fn every_written_time_reads_back_the_same() {
        let start = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        for step in 0..5000i64 {
            let at = start
                + chrono::Duration::seconds(step * 86_413)
                + chrono::Duration::nanoseconds(match step % 4 {
                    0 => 0,
                    1 => step * 7_000_000 % 1_000_000_000,
                    2 => step * 7_919_000 % 1_000_000_000,
                    _ => step * 7_919_993 % 1_000_000_000,
                });
            let json = serde_json::to_string(&At(at)).unwrap();
            assert_eq!(json, serde_json::to_string(&at).unwrap());
            let read: At = serde_json::from_str(&json).unwrap();
            assert_eq!(read.0, at, "{json}");
            assert!(
                parse_utc(json.trim_matches('"').as_bytes()).is_some(),
                "{json}"
            );
        }
    }
}

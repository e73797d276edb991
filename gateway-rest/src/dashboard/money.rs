//! Money on the dashboard: the core counts integer micro-dollars (US$0.000001); people read and
//! type dollars. No floating point touches an amount.

const MICROS: u64 = 1_000_000;

/// An amount for people: cents always, further digits only where they matter (`$1.25`,
/// `$5.00`, `$0.000042`).
pub(crate) fn dollars(micros: u64) -> String {
    let whole = micros / MICROS;
    let fraction = format!("{:06}", micros % MICROS);
    let digits = fraction.trim_end_matches('0');
    let shown = if digits.len() < 2 {
        &fraction[..2]
    } else {
        digits
    };
    format!("${}.{shown}", thousands(whole))
}

/// A whole number with thousands separators (`12,345`).
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A typed dollar amount (`5`, `5.5`, `$1,250.25`, `0.000001`) in micro-dollars; `None` when it
/// is not one, or finer than a micro-dollar.
pub(crate) fn parse_dollars(typed: &str) -> Option<u64> {
    let typed: String = typed
        .trim()
        .trim_start_matches('$')
        .chars()
        .filter(|c| *c != ',')
        .collect();
    let (whole, fraction) = typed.split_once('.').unwrap_or((&typed, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty())
        || !digits(whole)
        || !digits(fraction)
        || fraction.len() > 6
    {
        return None;
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let fraction: u64 = format!("{fraction:0<6}").parse().ok()?;
    whole.checked_mul(MICROS)?.checked_add(fraction)
}

/// A fraction of a budget (0.8) as the percentage people type (`80`, `12.5`).
pub(crate) fn percent(fraction: f64) -> String {
    let tenths = (fraction * 1000.0).round() as i64;
    if tenths % 10 == 0 {
        (tenths / 10).to_string()
    } else {
        format!("{}.{}", tenths / 10, tenths % 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_show_cents_and_only_the_digits_that_matter() {
        assert_eq!(dollars(0), "$0.00");
        assert_eq!(dollars(1_250_000), "$1.25");
        assert_eq!(dollars(5_000_000), "$5.00");
        assert_eq!(dollars(42), "$0.000042");
        assert_eq!(dollars(100_000), "$0.10");
        assert_eq!(dollars(1_234_567_890_000), "$1,234,567.89");
    }

    #[test]
    fn typed_dollars_become_exact_micro_dollars() {
        assert_eq!(parse_dollars("5"), Some(5_000_000));
        assert_eq!(parse_dollars(" $1,250.25 "), Some(1_250_250_000));
        assert_eq!(parse_dollars("0.000001"), Some(1));
        assert_eq!(parse_dollars(".5"), Some(500_000));
        assert_eq!(parse_dollars("0.0000001"), None);
        assert_eq!(parse_dollars("-1"), None);
        assert_eq!(parse_dollars("five"), None);
        assert_eq!(parse_dollars(""), None);
        assert_eq!(parse_dollars("."), None);
    }

    #[test]
    fn fractions_read_as_percentages() {
        assert_eq!(percent(0.8), "80");
        assert_eq!(percent(0.125), "12.5");
        assert_eq!(percent(0.5), "50");
    }
}

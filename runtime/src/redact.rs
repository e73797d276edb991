//! Credentials out of printed settings: the one rule by which a URL-shaped setting (the Redis
//! URL, the OTLP endpoint, provider base URLs, the edge's core URLs) is shown in logs, error
//! messages and `--print-config`. The user name, the password and every credential-like query
//! parameter's value become `***`; the scheme, host, port and path stay, so an operator can still
//! tell which server a setting names. Input that cannot be split into those parts with certainty
//! is not shown at all: a half-parsed URL could leak the very part that failed to parse.

use std::borrow::Cow;

/// What an unparsable URL is shown as.
pub const UNPARSABLE: &str = "<unparsable URL, redacted>";

const HIDDEN: &str = "***";

/// `url` with its userinfo and credential-like query values replaced by `***`, fit to print.
///
/// A URL without a scheme (`host:port`, as the edge accepts core URLs) is read as starting at
/// its authority. Whitespace, control characters, a malformed scheme, or an `@` after the
/// authority (a password holding an unencoded `/`, `?` or `#`) make it unparsable: the whole
/// value is replaced by [`UNPARSABLE`].
pub fn url(url: &str) -> String {
    redacted(url.trim()).unwrap_or_else(|| UNPARSABLE.to_string())
}

/// Every value of a list of URLs, redacted (the edge's core URLs).
pub fn urls<S: AsRef<str>>(urls: &[S]) -> Vec<String> {
    urls.iter().map(|u| url(u.as_ref())).collect()
}

fn redacted(input: &str) -> Option<String> {
    if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let (scheme, rest) = match input.split_once("://") {
        Some((scheme, rest)) => {
            let mut chars = scheme.chars();
            let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
            if !valid {
                return None;
            }
            (Some(scheme), rest)
        }
        None => (None, input),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    // An `@` past the authority means the userinfo itself held a `/`, `?` or `#`: where the
    // password ends cannot be told, so nothing is shown.
    if after.contains('@') {
        return None;
    }
    let mut out = String::with_capacity(input.len());
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    let host = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, _)) => (user, true),
                None => (userinfo, false),
            };
            if !user.is_empty() {
                out.push_str(HIDDEN);
            }
            if password {
                out.push(':');
                out.push_str(HIDDEN);
            }
            out.push('@');
            host
        }
        None => authority,
    };
    out.push_str(host);
    let (before_fragment, fragment) = match after.split_once('#') {
        Some((before, fragment)) => (before, Some(fragment)),
        None => (after, None),
    };
    let (path, query) = match before_fragment.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (before_fragment, None),
    };
    out.push_str(path);
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<Cow<'_, str>> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if credential_like(name) => Cow::Owned(format!("{name}={HIDDEN}")),
                _ => Cow::Borrowed(pair),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    // A fragment never reaches a server, yet some clients carry tokens there: not shown.
    if fragment.is_some_and(|f| !f.is_empty()) {
        out.push('#');
        out.push_str(HIDDEN);
    }
    Some(out)
}

/// Whether a query parameter's name says its value is a credential: `key`, `api_key`, `token`,
/// `password`, `sig`, …, or any name ending in `key`, `token` or `secret` (case-insensitive,
/// percent-encoding decoded).
fn credential_like(name: &str) -> bool {
    // `%XX` escapes decoded (invalid ones kept as written), for comparing names only.
    let name = percent_encoding::percent_decode_str(name)
        .decode_utf8_lossy()
        .to_ascii_lowercase();
    const NAMES: [&str; 10] = [
        "key",
        "api_key",
        "apikey",
        "api-key",
        "token",
        "access_token",
        "password",
        "secret",
        "sig",
        "signature",
    ];
    NAMES.contains(&name.as_str())
        || ["key", "token", "secret", "password"]
            .iter()
            .any(|suffix| name.ends_with(suffix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_without_credentials_are_shown_as_written() {
        for plain in [
            "redis://localhost:6379/0",
            "https://api.z.ai/api/paas/v4",
            "http://127.0.0.1:50051",
            "127.0.0.1:50051",
            "http://[::1]:4317",
            "unix:///var/run/redis.sock",
            "https://h/v1?model=glm&stream=true",
        ] {
            assert_eq!(url(plain), plain);
        }
    }

    #[test]
    fn userinfo_is_hidden_whatever_its_shape() {
        let cases = [
            ("redis://:hunter2@host:6379", "redis://:***@host:6379"),
            ("redis://admin@host:6379/1", "redis://***@host:6379/1"),
            (
                "redis://admin:hunter2@host:6379",
                "redis://***:***@host:6379",
            ),
            ("rediss://u:p%40ss%2Fw0rd@host", "rediss://***:***@host"),
            ("redis://:hunter2@[::1]:6379", "redis://:***@[::1]:6379"),
            ("redis://u:pa@ss@host:6379", "redis://***:***@host:6379"),
            ("u:hunter2@core:50051", "***:***@core:50051"),
            ("redis://:@host", "redis://:***@host"),
            ("http://@host", "http://@host"),
        ];
        for (given, shown) in cases {
            assert_eq!(url(given), shown, "{given}");
        }
    }

    #[test]
    fn credential_like_query_values_are_hidden_and_the_rest_kept() {
        let cases = [
            ("https://h/v1?api-key=abc", "https://h/v1?api-key=***"),
            (
                "https://h/v1?KEY=abc&model=glm&Access_Token=t",
                "https://h/v1?KEY=***&model=glm&Access_Token=***",
            ),
            (
                "https://h/?sig=s&signature=s&password=p&secret=s&apikey=k&api_key=k&token=t",
                "https://h/?sig=***&signature=***&password=***&secret=***&apikey=***&api_key=***&token=***",
            ),
            (
                "https://h?x-goog-api-key=k&refreshToken=t&client_secret=s&keep=1",
                "https://h?x-goog-api-key=***&refreshToken=***&client_secret=***&keep=1",
            ),
            ("https://h/?api%2Dkey=k", "https://h/?api%2Dkey=***"),
            ("https://h/#access_token=t", "https://h/#***"),
            (
                "redis://:pw@h:6379/0?token=t",
                "redis://:***@h:6379/0?token=***",
            ),
        ];
        for (given, shown) in cases {
            assert_eq!(url(given), shown, "{given}");
        }
    }

    #[test]
    fn unparsable_input_is_not_shown_at_all() {
        for bad in [
            "redis://:pass/word@host:6379",
            "redis://:pass?word@host",
            "redis://:pass word@host",
            "re dis://:secret@host",
            "1redis://:secret@host",
            "://:secret@host",
            "redis://:secret\n@host",
        ] {
            assert_eq!(url(bad), UNPARSABLE, "{bad}");
        }
    }

    #[test]
    fn no_credential_survives_in_any_shown_form() {
        let secret = "S3cr3t";
        for given in [
            format!("redis://:{secret}@h"),
            format!("redis://{secret}@h"),
            format!("redis://u:{secret}@h?x=1"),
            format!("https://h?token={secret}"),
            format!("https://h?my_apikey={secret}"),
            format!("redis://:{secret}/x@h"),
            format!("https://h#{secret}"),
        ] {
            assert!(!url(&given).contains(secret), "{given} -> {}", url(&given));
        }
    }
}

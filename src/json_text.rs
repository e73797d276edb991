//! JSON strings written eight bytes at a time, byte for byte as `serde_json` writes them.
//!
//! `serde_json` looks at every byte of a string through its escape table; a chat request is
//! mostly long runs of text with nothing to escape, so this looks at a word of eight bytes at
//! once and copies whole runs (docs/benchmarks.md item 19: a quarter of the instructions for a
//! session's history).

const LOW: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Whether any byte of `word` may need escaping: below 0x20, `"` or `\`. It may say yes for a
/// byte that needs none (after one that does); the byte loop decides.
#[inline]
fn may_escape(word: u64) -> bool {
    let zero = |x: u64| x.wrapping_sub(LOW) & !x & HIGH;
    let control = word.wrapping_sub(LOW * 0x20) & !word & HIGH;
    let quote = zero(word ^ (LOW * u64::from(b'"')));
    let backslash = zero(word ^ (LOW * u64::from(b'\\')));
    control | quote | backslash != 0
}

/// Appends `text` as a JSON string, quotes included, exactly as `serde_json::to_writer` would.
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        while let Some(chunk) = bytes.get(i..i + 8) {
            let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            if may_escape(word) {
                break;
            }
            i += 8;
        }
        let Some(&byte) = bytes.get(i) else { break };
        i += 1;
        let short: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i - 1]);
        start = i;
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]);
        } else {
            out.extend_from_slice(short);
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn written(text: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, text);
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn every_escape_serde_json_writes() {
        for text in [
            "",
            "plain text longer than one word of eight",
            "\"quoted\" and \\back\\slashed\\",
            "line\nbreak\r\ttab\u{8}\u{c}\u{0}\u{1f}\u{7f}",
            "naïve café — 日本語 🙂 \u{2028}",
            "12345678\"2345678\\",
            "\u{1}\u{2}\u{3}\u{4}\u{5}\u{6}\u{7}\u{8}\u{9}",
        ] {
            assert_eq!(
                written(text),
                serde_json::to_string(text).unwrap(),
                "{text:?}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn writes_what_serde_json_writes(text in "(?s).{0,80}") {
            prop_assert_eq!(written(&text), serde_json::to_string(&text).unwrap());
        }

        #[test]
        fn writes_what_serde_json_writes_around_escapes(
            text in "[a-z \"\\\\\n\t\u{0}-\u{1f}é]{0,64}"
        ) {
            prop_assert_eq!(written(&text), serde_json::to_string(&text).unwrap());
        }
    }
}

//! Event ids as `Last-Event-ID` and `?after=` carry them: an id that parses prints back to a form
//! that parses to the same id, and ids order as the stream does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openclaw_gateway::events::EventId;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (a, b) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(first) = a.trim().parse::<EventId>() else {
        return;
    };
    let printed = first.to_string();
    assert_eq!(
        printed.parse::<EventId>(),
        Ok(first),
        "{a:?} printed as {printed}"
    );
    if let Ok(second) = b.trim().parse::<EventId>() {
        assert_eq!(
            first.cmp(&second),
            (first.ms, first.seq).cmp(&(second.ms, second.seq))
        );
    }
});

//! Cron schedules as a request states them: the input is `kind\nexpr-or-at\ntz\neveryMs\nanchorMs`.
//! A schedule is validated or refused with INVALID_REQUEST; an accepted one answers `next_after`
//! with due times strictly after the time asked, strictly increasing, and `due_between` without
//! panicking or overflowing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openclaw_gateway::cron::schedule::Schedule;
use openclaw_gateway::proto;

const NOW_MS: i64 = 1_771_106_400_000; // 2026-02-14T22:00:00Z

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut fields = text.splitn(5, '\n');
    let kind = fields.next().unwrap_or_default().to_owned();
    let text_field = fields.next().map(str::to_owned);
    let tz = fields.next().map(str::to_owned);
    let every_ms = fields.next().and_then(|f| f.trim().parse::<i64>().ok());
    let anchor_ms = fields.next().and_then(|f| f.trim().parse::<i64>().ok());
    let request = proto::Schedule {
        kind: kind.clone(),
        every_ms,
        anchor_ms,
        at: text_field.clone(),
        delete_after_run: None,
        expr: text_field,
        tz,
    };
    let schedule = match Schedule::from_request(Some(&request), NOW_MS, NOW_MS - 60_000) {
        Ok(schedule) => schedule,
        Err(_) => return,
    };
    // The API form of an accepted schedule is accepted again, as the same schedule.
    let again = Schedule::from_request(Some(&schedule.to_proto()), NOW_MS, i64::MIN);
    assert_eq!(again.as_ref().ok(), Some(&schedule), "{schedule:?}");
    let mut t = NOW_MS;
    for _ in 0..4 {
        let Some(next) = schedule.next_after(t) else {
            break;
        };
        assert!(next > t, "{schedule:?}: next_after({t}) = {next}");
        t = next;
    }
    for probe in [i64::MIN, -1, 0, i64::MAX - 1, i64::MAX] {
        if let Some(next) = schedule.next_after(probe) {
            assert!(next > probe, "{schedule:?}: next_after({probe}) = {next}");
        }
    }
    let (due, _dropped) = schedule.due_between(NOW_MS, NOW_MS + 3_600_000, 16);
    assert!(due.len() <= 16);
    assert!(due.windows(2).all(|w| w[0] < w[1]), "{schedule:?}: {due:?}");
});

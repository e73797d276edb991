//! Invariants that are easy to state, checked on generated inputs (proptest): the edge's JSON
//! translation loses nothing, a schedule's next run always moves forward, and the limiter never
//! admits past a quota nor overflows, whatever the figures.

use std::time::Duration;

use gateway_rest::proto as edge;
use gateway_rest::request_bodies::{CoreRequest, RequestBody, translate};
use openclaw_gateway::cron::schedule::{MAX_EVERY_MS, MIN_EVERY_MS, Schedule};
use openclaw_gateway::events::EventId;
use openclaw_gateway::limits::{Charge, Decision, LimitBackend, LocalLimits, Quota};
use openclaw_gateway::proto;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

/// 2026-02-14T22:00:00Z, the guide's example time.
const NOW_MS: i64 = 1_771_106_400_000;
/// The end of year 9999, the latest time a schedule accepts.
const MAX_TIME_MS: i64 = 253_402_300_799_000;

fn text() -> impl Strategy<Value = String> {
    // Any Unicode, quotes, escapes and control characters included.
    ".{0,24}"
}

fn put(object: &mut Map<String, Value>, name: &str, value: Option<Value>) {
    if let Some(value) = value {
        object.insert(name.to_owned(), value);
    }
}

// ---- REST JSON → proto ------------------------------------------------------------------------

fn chat_message() -> impl Strategy<Value = edge::ChatMessage> {
    (text(), text()).prop_map(|(role, content)| edge::ChatMessage {
        role,
        content,
        ..Default::default()
    })
}

fn options() -> impl Strategy<Value = Option<edge::GenerationOptions>> {
    (
        proptest::option::of(-1.0e6f32..1.0e6),
        proptest::option::of(any::<u32>()),
    )
        .prop_map(|(temperature, max_tokens)| {
            (temperature.is_some() || max_tokens.is_some()).then_some(edge::GenerationOptions {
                temperature,
                max_tokens,
                ..Default::default()
            })
        })
}

fn options_json(object: &mut Map<String, Value>, options: &Option<edge::GenerationOptions>) {
    if let Some(options) = options {
        put(object, "temperature", options.temperature.map(|t| json!(t)));
        put(object, "maxTokens", options.max_tokens.map(|m| json!(m)));
    }
}

fn create_session() -> impl Strategy<Value = edge::CreateSessionRequest> {
    (
        text(),
        proptest::collection::vec(chat_message(), 0..4),
        proptest::option::of(text()),
        options(),
    )
        .prop_map(
            |(model, messages, session_id, options)| edge::CreateSessionRequest {
                model,
                messages,
                context: session_id.map(|session_id| edge::SessionContext {
                    session_id,
                    strategy: String::new(),
                }),
                options,
                expires_at: None,
            },
        )
}

fn create_session_json(request: &edge::CreateSessionRequest) -> Value {
    let mut object = Map::new();
    object.insert("model".into(), json!(request.model));
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    object.insert("messages".into(), json!(messages));
    if let Some(context) = &request.context {
        object.insert("context".into(), json!({"sessionId": context.session_id}));
    }
    options_json(&mut object, &request.options);
    Value::Object(object)
}

fn schedule_request() -> impl Strategy<Value = edge::Schedule> {
    (
        text(),
        proptest::option::of(any::<i64>()),
        proptest::option::of(any::<i64>()),
        proptest::option::of(text()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(text()),
        proptest::option::of(text()),
    )
        .prop_map(
            |(kind, every_ms, anchor_ms, at, delete_after_run, expr, tz)| edge::Schedule {
                kind,
                every_ms,
                anchor_ms,
                at,
                delete_after_run,
                expr,
                tz,
            },
        )
}

fn payload_request() -> impl Strategy<Value = edge::Payload> {
    (
        text(),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(text()),
    )
        .prop_map(|(kind, text, message, model, session_id)| edge::Payload {
            kind,
            text,
            message,
            model,
            session_id,
        })
}

fn schedule_json(s: &edge::Schedule) -> Value {
    let mut object = Map::new();
    object.insert("kind".into(), json!(s.kind));
    put(&mut object, "everyMs", s.every_ms.map(|v| json!(v)));
    put(&mut object, "anchorMs", s.anchor_ms.map(|v| json!(v)));
    put(&mut object, "at", s.at.as_ref().map(|v| json!(v)));
    put(
        &mut object,
        "deleteAfterRun",
        s.delete_after_run.map(|v| json!(v)),
    );
    put(&mut object, "expr", s.expr.as_ref().map(|v| json!(v)));
    put(&mut object, "tz", s.tz.as_ref().map(|v| json!(v)));
    Value::Object(object)
}

fn payload_json(p: &edge::Payload) -> Value {
    let mut object = Map::new();
    object.insert("kind".into(), json!(p.kind));
    put(&mut object, "text", p.text.as_ref().map(|v| json!(v)));
    put(&mut object, "message", p.message.as_ref().map(|v| json!(v)));
    put(&mut object, "model", p.model.as_ref().map(|v| json!(v)));
    put(
        &mut object,
        "sessionId",
        p.session_id.as_ref().map(|v| json!(v)),
    );
    Value::Object(object)
}

fn create_job() -> impl Strategy<Value = edge::CreateJobRequest> {
    (
        text(),
        proptest::option::of(schedule_request()),
        proptest::option::of(payload_request()),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(
            |(name, schedule, payload, enabled)| edge::CreateJobRequest {
                name,
                schedule,
                payload,
                enabled,
            },
        )
}

fn update_job() -> impl Strategy<Value = edge::UpdateJobRequest> {
    (
        proptest::option::of(text()),
        proptest::option::of(schedule_request()),
        proptest::option::of(payload_request()),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(
            |(name, schedule, payload, enabled)| edge::UpdateJobRequest {
                job_id: "id".into(),
                name,
                schedule,
                payload,
                enabled,
            },
        )
}

fn job_json(
    name: Option<&String>,
    schedule: &Option<edge::Schedule>,
    payload: &Option<edge::Payload>,
    enabled: Option<bool>,
) -> Value {
    let mut object = Map::new();
    put(&mut object, "name", name.map(|v| json!(v)));
    put(
        &mut object,
        "schedule",
        schedule.as_ref().map(schedule_json),
    );
    put(&mut object, "payload", payload.as_ref().map(payload_json));
    put(&mut object, "enabled", enabled.map(|v| json!(v)));
    Value::Object(object)
}

fn translated(kind: RequestBody, body: &Value) -> CoreRequest {
    let bytes = serde_json::to_vec(body).expect("JSON");
    translate(kind, &bytes).unwrap_or_else(|rejection| panic!("{body} refused: {rejection:?}"))
}

proptest! {
    #[test]
    fn a_session_request_survives_the_trip_through_json(request in create_session()) {
        let body = create_session_json(&request);
        prop_assert_eq!(
            translated(RequestBody::CreateSession, &body),
            CoreRequest::CreateSession(request)
        );
    }

    #[test]
    fn a_send_survives_the_trip_through_json(
        message in proptest::option::of(chat_message()),
        options in options(),
    ) {
        let mut object = Map::new();
        put(&mut object, "message", message.as_ref().map(|m| json!({"role": m.role, "content": m.content})));
        options_json(&mut object, &options);
        let expected = edge::SendMessageRequest { session_id: "id".into(), message, options };
        prop_assert_eq!(
            translated(RequestBody::SendMessage, &Value::Object(object)),
            CoreRequest::SendMessage(expected)
        );
    }

    #[test]
    fn a_new_job_survives_the_trip_through_json(request in create_job()) {
        let body = job_json(Some(&request.name), &request.schedule, &request.payload, request.enabled);
        prop_assert_eq!(translated(RequestBody::CreateJob, &body), CoreRequest::CreateJob(request));
    }

    #[test]
    fn a_job_update_survives_the_trip_through_json(request in update_job()) {
        let body = job_json(request.name.as_ref(), &request.schedule, &request.payload, request.enabled);
        prop_assert_eq!(translated(RequestBody::UpdateJob, &body), CoreRequest::UpdateJob(request));
    }

    #[test]
    fn any_bytes_are_translated_or_refused_with_a_reason(
        pick in 0..RequestBody::ALL.len(),
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        if let Err(rejection) = translate(RequestBody::ALL[pick], &bytes) {
            prop_assert_eq!(rejection.code, "INVALID_REQUEST");
            prop_assert!(!rejection.details.is_empty());
        }
    }
}

// ---- schedules ----------------------------------------------------------------------------------

fn every_schedule() -> impl Strategy<Value = Schedule> {
    (MIN_EVERY_MS..=MAX_EVERY_MS, 0..=MAX_TIME_MS).prop_map(|(every_ms, anchor_ms)| {
        Schedule::from_request(
            Some(&proto::Schedule {
                kind: "every".into(),
                every_ms: Some(every_ms),
                anchor_ms: Some(anchor_ms),
                ..Default::default()
            }),
            NOW_MS,
            0,
        )
        .expect("a valid every schedule")
    })
}

fn cron_field(range: std::ops::RangeInclusive<u32>) -> impl Strategy<Value = String> {
    let (lo, hi) = (*range.start(), *range.end());
    prop_oneof![
        Just("*".to_owned()),
        (lo..=hi).prop_map(|v| v.to_string()),
        (1..=hi.max(1)).prop_map(|step| format!("*/{step}")),
        (lo..=hi, lo..=hi).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
        (lo..=hi, lo..=hi).prop_map(|(a, b)| format!("{a},{b}")),
    ]
}

fn cron_schedule() -> impl Strategy<Value = Schedule> {
    (
        proptest::option::of(cron_field(0..=59)),
        cron_field(0..=59),
        cron_field(0..=23),
        cron_field(1..=28),
        cron_field(1..=12),
        cron_field(0..=6),
        prop::sample::select(vec![
            "UTC",
            "America/New_York",
            "Europe/London",
            "Australia/Lord_Howe",
            "Asia/Kolkata",
            "Pacific/Chatham",
        ]),
    )
        .prop_map(|(seconds, minute, hour, dom, month, dow, tz)| {
            let five = format!("{minute} {hour} {dom} {month} {dow}");
            let expr = match seconds {
                Some(seconds) => format!("{seconds} {five}"),
                None => five,
            };
            Schedule::from_request(
                Some(&proto::Schedule {
                    kind: "cron".into(),
                    expr: Some(expr.clone()),
                    tz: Some(tz.into()),
                    ..Default::default()
                }),
                NOW_MS,
                0,
            )
            .unwrap_or_else(|e| panic!("{expr} in {tz} refused: {e:?}"))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn an_every_schedule_runs_on_its_grid_strictly_later_each_time(
        schedule in every_schedule(),
        start in -MAX_TIME_MS..=MAX_TIME_MS,
    ) {
        let Schedule::Every { every_ms, anchor_ms } = schedule.clone() else { unreachable!() };
        let mut t = start;
        for _ in 0..5 {
            let Some(next) = schedule.next_after(t) else { break };
            prop_assert!(next > t, "next_after({t}) = {next}");
            prop_assert_eq!((next - anchor_ms).rem_euclid(every_ms), 0);
            if t >= anchor_ms {
                prop_assert!(next - t <= every_ms);
            }
            t = next;
        }
        let (due, _) = schedule.due_between(start, start.saturating_add(10 * every_ms), 8);
        prop_assert!(due.len() <= 8);
        prop_assert!(due.windows(2).all(|w| w[0] < w[1]), "{due:?}");
    }

    #[test]
    fn a_cron_schedule_runs_strictly_later_each_time(
        schedule in cron_schedule(),
        start in 0i64..=4_102_444_800_000, // up to 2100
    ) {
        let mut t = start;
        for _ in 0..5 {
            let Some(next) = schedule.next_after(t) else { break };
            prop_assert!(next > t, "{schedule:?}: next_after({t}) = {next}");
            prop_assert_eq!(next % 1000, 0, "due times are whole seconds");
            t = next;
        }
    }

    #[test]
    fn a_schedule_reads_back_from_its_api_form(schedule in prop_oneof![every_schedule(), cron_schedule()]) {
        let again = Schedule::from_request(Some(&schedule.to_proto()), NOW_MS, i64::MIN);
        prop_assert_eq!(again.ok(), Some(schedule.clone()));
        let json = serde_json::to_string(&schedule).unwrap();
        prop_assert_eq!(serde_json::from_str::<Schedule>(&json).ok(), Some(schedule));
    }

    #[test]
    fn an_event_id_prints_and_parses_back(ms in any::<u64>(), seq in any::<u64>()) {
        let id = EventId { ms, seq };
        prop_assert_eq!(id.to_string().parse::<EventId>(), Ok(id));
    }
}

// ---- rate limits --------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    Admit(Charge),
    Settle { which: usize, used: Charge },
}

fn figure() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..1_000u64,
        any::<u64>(),
        Just(u64::MAX),
        Just(u64::MAX / 2 + 1)
    ]
}

fn charge() -> impl Strategy<Value = Charge> {
    (figure(), figure()).prop_map(|(tokens, context)| Charge {
        tokens,
        context,
        cost_micros: 0,
    })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        charge().prop_map(Step::Admit),
        (any::<usize>(), charge()).prop_map(|(which, used)| Step::Settle { which, used }),
    ]
}

fn quota() -> impl Strategy<Value = Quota> {
    (0..20u64, figure(), figure()).prop_map(|(requests, tokens, context)| Quota {
        requests,
        tokens,
        context,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The window outlasts the test, so every admission counts against the quota.
    #[test]
    fn the_limiter_never_admits_past_a_quota_nor_overflows(
        quota in quota(),
        steps in proptest::collection::vec(step(), 0..40),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let limits = LocalLimits::new(Duration::from_secs(3600));
            let mut admitted: Vec<String> = Vec::new();
            for (i, step) in steps.into_iter().enumerate() {
                match step {
                    Step::Admit(charge) => {
                        let reservation = format!("r{i}");
                        match limits.admit("key", quota, charge, &reservation).await.unwrap() {
                            Decision::Admitted(usage) => {
                                assert!(usage.requests <= quota.requests, "{usage:?} over {quota:?}");
                                assert!(charge.tokens <= quota.tokens, "{charge:?} admitted past {quota:?}");
                                assert!(charge.context <= quota.context, "{charge:?} admitted past {quota:?}");
                                admitted.push(reservation);
                            }
                            Decision::Denied { retry_ms, .. } => {
                                assert!(retry_ms <= 3_600_000, "retry after {retry_ms} ms");
                            }
                            Decision::OverBudget { .. } => {
                                panic!("refused over a budget it was not given")
                            }
                        }
                    }
                    Step::Settle { which, used } => {
                        if !admitted.is_empty() {
                            let reservation = &admitted[which % admitted.len()];
                            limits.settle("key", reservation, used).await.unwrap();
                        }
                    }
                }
                assert!(admitted.len() as u64 <= quota.requests);
            }
        });
    }

    /// Without settles, the reserved figures admitted in a window stay within the quota.
    #[test]
    fn reserved_tokens_admitted_in_a_window_stay_within_the_quota(
        quota in quota(),
        charges in proptest::collection::vec(charge(), 0..40),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            let limits = LocalLimits::new(Duration::from_secs(3600));
            let (mut tokens, mut context) = (0u128, 0u128);
            for (i, charge) in charges.into_iter().enumerate() {
                if let Decision::Admitted(_) = limits.admit("key", quota, charge, &format!("r{i}")).await.unwrap() {
                    tokens += u128::from(charge.tokens);
                    context += u128::from(charge.context);
                }
                assert!(tokens <= u128::from(quota.tokens), "{tokens} tokens admitted past {quota:?}");
                assert!(context <= u128::from(quota.context), "{context} context admitted past {quota:?}");
            }
        });
    }
}

/// Found by the property above: a second charge near `u64::MAX` overflowed the in-memory
/// limiter's sums (a panic in debug builds; in release a wrapped sum that admitted it).
#[tokio::test]
async fn a_huge_charge_is_refused_not_overflowed() {
    let limits = LocalLimits::new(Duration::from_secs(3600));
    let quota = Quota {
        requests: 10,
        tokens: u64::MAX,
        context: u64::MAX,
    };
    let small = Charge {
        tokens: 1,
        context: 1,
        cost_micros: 0,
    };
    let huge = Charge {
        tokens: u64::MAX,
        context: u64::MAX,
        cost_micros: 0,
    };
    let first = limits.admit("key", quota, small, "r0").await.unwrap();
    assert!(matches!(first, Decision::Admitted(_)));
    let second = limits.admit("key", quota, huge, "r1").await.unwrap();
    assert!(matches!(second, Decision::Denied { .. }), "{second:?}");
    // A provider reporting absurd usage settles without overflowing either.
    limits.settle("key", "r0", huge).await.unwrap();
    let third = limits.admit("key", quota, small, "r2").await.unwrap();
    assert!(matches!(third, Decision::Denied { .. }), "{third:?}");
}

/// Found by the `cron_schedule` fuzz target: asking a cron schedule for its next run after a time
/// at the ends of the range overflowed (a panic) instead of answering that there is none.
#[test]
fn a_cron_schedule_at_the_ends_of_time_answers_without_overflow() {
    let schedule = Schedule::from_request(
        Some(&proto::Schedule {
            kind: "cron".into(),
            expr: Some("*/15 * * * * *".into()),
            tz: Some("UTC".into()),
            ..Default::default()
        }),
        NOW_MS,
        0,
    )
    .expect("a valid cron schedule");
    for t in [i64::MIN, i64::MIN + 1, -1, i64::MAX - 1, i64::MAX] {
        if let Some(next) = schedule.next_after(t) {
            assert!(next > t, "next_after({t}) = {next}");
        }
    }
}

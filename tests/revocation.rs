//! Revoking a key takes effect on every replica within the key cache's lifetime
//! (`KEY_CACHE_TTL`, 2 s): new calls are refused by then, and calls the key holds open (event
//! subscriptions, over server-sent events and over gRPC) end by then, saying why.

mod support;

use std::time::{Duration, Instant};

use openclaw_gateway::auth::KEY_CACHE_TTL;
use openclaw_gateway::proto::event_service_client::EventServiceClient;
use openclaw_gateway::proto::key_service_client::KeyServiceClient;
use openclaw_gateway::proto::{Event, RevokeKeyRequest, SubscribeRequest};
use serde_json::{Value, json};
use support::{CoreOptions, FakeUpstream, expect_data};
use tonic_types::StatusExt as _;

/// Time for the last checks' round trips and the streams' last bytes, beyond the bound.
const SLACK: Duration = Duration::from_millis(1500);

fn bearer<T>(message: T, secret: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {secret}").parse().unwrap());
    request
}

/// What one stream received: its events (type, time in Unix ms), and how it ended.
#[derive(Debug, Default)]
struct Heard {
    events: Vec<(String, i64)>,
    /// The final error's code and details, when it ended with one.
    error: Option<(String, String)>,
    /// When the stream ended, if it did.
    ended: Option<Instant>,
}

/// Reads server-sent events until the stream ends or `until`.
async fn read_sse(mut response: reqwest::Response, until: tokio::time::Instant) -> Heard {
    let mut heard = Heard::default();
    let mut buffer = String::new();
    loop {
        match tokio::time::timeout_at(until, response.chunk()).await {
            Ok(Ok(Some(chunk))) => buffer.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Ok(None)) | Ok(Err(_)) => {
                heard.ended = Some(Instant::now());
                break;
            }
            Err(_) => break,
        }
        while let Some(end) = buffer.find("\n\n") {
            let message: String = buffer.drain(..end + 2).collect();
            let field = |name: &str| {
                message.lines().find_map(|l| {
                    l.strip_prefix(&format!("{name}:"))
                        .map(|v| v.trim().to_string())
                })
            };
            let (Some(kind), Some(data)) = (field("event"), field("data")) else {
                continue;
            };
            let data: Value = serde_json::from_str(&data).expect("an event's data is JSON");
            if kind == "error" {
                heard.error = Some((
                    data["code"].as_str().unwrap_or_default().to_string(),
                    data["details"].as_str().unwrap_or_default().to_string(),
                ));
            } else {
                let time = chrono::DateTime::parse_from_rfc3339(data["time"].as_str().unwrap())
                    .unwrap()
                    .timestamp_millis();
                heard.events.push((kind, time));
            }
        }
    }
    heard
}

/// Reads a gRPC subscription until it ends or `until`.
async fn read_grpc(mut stream: tonic::Streaming<Event>, until: tokio::time::Instant) -> Heard {
    let mut heard = Heard::default();
    loop {
        match tokio::time::timeout_at(until, stream.message()).await {
            Ok(Ok(Some(event))) => {
                let time = event
                    .time
                    .map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
                heard.events.push((event.r#type, time));
            }
            Ok(Ok(None)) => {
                heard.ended = Some(Instant::now());
                break;
            }
            Ok(Err(status)) => {
                heard.ended = Some(Instant::now());
                assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
                let info = status
                    .get_error_details()
                    .error_info()
                    .cloned()
                    .expect("the core names the code in ErrorInfo");
                let details = info.metadata.get("details").cloned().unwrap_or_default();
                heard.error = Some((info.reason, details));
                break;
            }
            Err(_) => break,
        }
    }
    heard
}

fn unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

// Multi-threaded: both streams are read on the test's runtime while the test waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_s_open_event_streams_end_on_every_replica_within_the_revocation_bound() {
    let redis = support::start_redis();
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let options = CoreOptions::shared(&redis, &upstream, dir.path());
    let (core_a, core_b) = (support::spawn_core(&options), support::spawn_core(&options));
    let edge_a = support::spawn_edge(&[&core_a]);
    support::wait_until_ready(&edge_a).await;
    let http = reqwest::Client::new();
    let a = format!("http://127.0.0.1:{}", edge_a.port);

    let created = support::post_with_key(
        &http,
        format!("{a}/api/v1/keys"),
        support::INTERNAL_TOKEN,
        &json!({"name": "leaving"}),
    )
    .await;
    let created = expect_data(created, 201).await;
    let (id, key) = (
        created["id"].as_str().unwrap().to_string(),
        created["key"].as_str().unwrap().to_string(),
    );
    // The key's job publishes an event every second, before and after the revocation.
    let job = support::post_with_key(
        &http,
        format!("{a}/api/v1/cron/jobs"),
        &key,
        &json!({"name": "pulse", "schedule": {"kind": "every", "everyMs": 1000},
                "payload": {"kind": "systemEvent", "text": "pulse"}}),
    )
    .await;
    expect_data(job, 201).await;

    // Both streams run through core A and see the key's events.
    let sse = support::get_with_key(&http, format!("{a}/api/v1/events"), &key).await;
    assert_eq!(sse.status(), 200);
    let mut events = EventServiceClient::connect(format!("http://127.0.0.1:{}", core_a.port))
        .await
        .unwrap();
    let grpc = events
        .subscribe(bearer(SubscribeRequest::default(), &key))
        .await
        .expect("the key subscribes over gRPC")
        .into_inner();
    let listening = tokio::time::Instant::now() + Duration::from_millis(2500);
    let (sse_before, grpc_before) = (
        tokio::spawn(async move {
            let mut sse = sse;
            let mut seen = 0;
            while tokio::time::Instant::now() < listening && seen == 0 {
                if let Ok(Ok(Some(chunk))) = tokio::time::timeout_at(listening, sse.chunk()).await {
                    seen += usize::from(String::from_utf8_lossy(&chunk).contains("system.event"));
                }
            }
            (sse, seen)
        }),
        tokio::spawn(async move {
            let mut grpc = grpc;
            let first = tokio::time::timeout_at(listening, grpc.message()).await;
            (grpc, matches!(first, Ok(Ok(Some(_)))))
        }),
    );
    let (sse, sse_seen) = sse_before.await.unwrap();
    let (grpc, grpc_seen) = grpc_before.await.unwrap();
    assert!(sse_seen > 0, "the SSE stream carries the key's events");
    assert!(grpc_seen, "the gRPC stream carries the key's events");

    // An administrator revokes the key through core B.
    let mut keys = KeyServiceClient::connect(format!("http://127.0.0.1:{}", core_b.port))
        .await
        .unwrap();
    keys.revoke_key(bearer(RevokeKeyRequest { id }, support::INTERNAL_TOKEN))
        .await
        .expect("core B revokes the key");
    let (revoked, revoked_ms) = (Instant::now(), unix_ms());

    // Both streams end within the bound, with the reason, and carry nothing published after it.
    let until = tokio::time::Instant::now() + KEY_CACHE_TTL + SLACK + Duration::from_secs(3);
    let (sse, grpc) = tokio::join!(read_sse(sse, until), read_grpc(grpc, until));
    for (name, heard) in [("SSE", &sse), ("gRPC", &grpc)] {
        let ended = heard.ended.unwrap_or_else(|| {
            panic!(
                "the {name} stream was still open {:?} after the revocation: {heard:?}",
                revoked.elapsed()
            )
        });
        assert!(
            ended - revoked <= KEY_CACHE_TTL + SLACK,
            "the {name} stream ended {:?} after the revocation, beyond {KEY_CACHE_TTL:?}: {heard:?}",
            ended - revoked
        );
        let (code, details) = heard.error.clone().unwrap_or_default();
        assert_eq!(
            code, "UNAUTHORIZED",
            "the {name} stream says why: {heard:?}"
        );
        assert!(details.contains("revoked"), "{name}: {details}");
        let bound_ms = revoked_ms + KEY_CACHE_TTL.as_millis() as i64;
        assert!(
            heard.events.iter().all(|(_, time)| *time <= bound_ms),
            "the {name} stream carried an event published after the bound: {heard:?}"
        );
    }

    // And the key is refused on both replicas.
    support::expect_error(
        support::get_with_key(&http, format!("{a}/api/v1/system/status"), &key).await,
        401,
        "UNAUTHORIZED",
    )
    .await;
}

//! Per-key caps on what a key holds open at once: streamed replies (a session's streamed send
//! and a streamed chat completion together) and event subscriptions. The caps hold across
//! replicas on one Redis, capacity returns when a stream closes, a killed replica's leases
//! expire, other keys are unaffected, and the embedded store enforces them too.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::{Value, json};
use support::{
    Behaviour, CoreOptions, FakeUpstream, Process, expect_data, expect_error, redis_url,
    spawn_core, spawn_edge, start_redis,
};

/// Streams started by the fake upstream send their first piece, then stall this long.
const STALL: Duration = Duration::from_secs(120);
/// The cores' lease time to live: short, so a killed core's leases expire within the test.
const LEASE_SECS: u64 = 6;

fn stalling() -> Behaviour {
    Behaviour::StallMidStream {
        after: 1,
        stall: STALL,
    }
}

/// Two cores on one Redis, each behind its own edge, in front of one stalling upstream.
struct Cluster {
    upstream: FakeUpstream,
    _redis: Process,
    cores: Vec<Process>,
    edges: Vec<Process>,
    http: reqwest::Client,
}

impl Cluster {
    async fn start() -> Self {
        let upstream = FakeUpstream::start().await;
        upstream.behave(stalling());
        let redis = start_redis();
        let options = CoreOptions {
            redis_url: Some(redis_url(&redis)),
            upstream: Some(upstream.base_url()),
            data_dir: None,
            env: vec![(
                "OPENCLAW_STREAM_LEASE_SECS".to_string(),
                LEASE_SECS.to_string(),
            )],
        };
        let cores = vec![spawn_core(&options), spawn_core(&options)];
        let edges = cores.iter().map(|core| spawn_edge(&[core])).collect();
        Self {
            upstream,
            _redis: redis,
            cores,
            edges,
            http: reqwest::Client::new(),
        }
    }

    fn edge(&self, i: usize) -> Edge {
        Edge {
            http: self.http.clone(),
            base: format!("http://127.0.0.1:{}", self.edges[i].port),
        }
    }

    /// A key with these limits (created through the first edge), allowed plenty of requests
    /// per minute so that only the caps refuse.
    async fn key(&self, mut limits: Value) -> String {
        limits["requestsPerMinute"] = json!(1000);
        support::create_key(
            &self.http,
            &self.edge(0).base,
            "caps",
            json!({ "limits": limits }),
        )
        .await
    }
}

/// The REST API of one edge.
struct Edge {
    http: reqwest::Client,
    base: String,
}

/// A stream the client holds open; dropping it closes the connection.
struct Open {
    _body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
}

impl Open {
    /// Holds an admitted stream without reading it (an event subscription has nothing to say
    /// until an event happens).
    fn held(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200);
        Self {
            _body: response.bytes_stream().boxed(),
        }
    }

    /// Waits for the first bytes of the stream (the upstream's first piece).
    async fn first_bytes(response: reqwest::Response) -> Self {
        let mut body = response.bytes_stream().boxed();
        let chunk = tokio::time::timeout(Duration::from_secs(20), body.next())
            .await
            .expect("the stream's first bytes within 20 s")
            .expect("the stream has a first piece")
            .expect("the stream reads");
        assert!(!chunk.is_empty());
        Self { _body: body }
    }
}

impl Edge {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A new session of `key` (no model call: it holds only a system message).
    async fn session(&self, key: &str) -> String {
        let response = self
            .http
            .post(self.url("/api/v1/sessions"))
            .bearer_auth(key)
            .json(&json!({"messages": [{"role": "system", "content": "Be brief"}]}))
            .send()
            .await
            .expect("POST /api/v1/sessions");
        expect_data(response, 201).await["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string()
    }

    /// Asks for a streamed reply in a fresh session of `key`.
    async fn send_streamed(&self, key: &str) -> reqwest::Response {
        let id = self.session(key).await;
        self.http
            .post(self.url(&format!("/api/v1/sessions/{id}/messages")))
            .bearer_auth(key)
            .json(&json!({"message": {"role": "user", "content": "hello"}, "stream": true}))
            .send()
            .await
            .expect("POST a streamed message")
    }

    /// Asks for a streamed OpenAI-compatible chat completion.
    async fn complete_streamed(&self, key: &str) -> reqwest::Response {
        self.http
            .post(self.url("/v1/chat/completions"))
            .bearer_auth(key)
            .json(&json!({"model": "zai/glm-4.7-flash", "stream": true,
                          "messages": [{"role": "user", "content": "hello"}]}))
            .send()
            .await
            .expect("POST /v1/chat/completions")
    }

    async fn subscribe(&self, key: &str) -> reqwest::Response {
        self.http
            .get(self.url("/api/v1/events"))
            .bearer_auth(key)
            .send()
            .await
            .expect("GET /api/v1/events")
    }

    /// A streamed reply the client now holds open.
    async fn open_stream(&self, key: &str) -> Open {
        let response = self.send_streamed(key).await;
        assert_eq!(
            response.status(),
            200,
            "a stream within the cap is admitted"
        );
        Open::first_bytes(response).await
    }

    /// An event subscription the client now holds open.
    async fn open_subscription(&self, key: &str) -> Open {
        let response = self.subscribe(key).await;
        assert_eq!(
            response.status(),
            200,
            "a subscription within the cap is admitted"
        );
        Open::held(response)
    }
}

/// Asserts the refusal of a stream over its cap and returns the `error` object.
async fn refused(response: reqwest::Response, field: &str, open: u64, cap: u64) -> Value {
    let error = expect_error(response, 429, "RATE_LIMIT_EXCEEDED").await;
    let details = error["details"].as_str().unwrap();
    assert!(
        details.contains(field),
        "the details name the cap ({field}): {details}"
    );
    assert!(
        details.contains(&format!("already has {open} "))
            && details.contains(&format!("cap is {cap}")),
        "the details give the count and the cap: {details}"
    );
    assert!(
        details.contains("close one") && details.contains("raise"),
        "the details say what to do: {details}"
    );
    assert!(
        error["retryAfter"].as_u64().is_some_and(|s| s >= 1),
        "{error}"
    );
    error
}

/// Retries `attempt` until it answers 200 within `within`; how long that took.
async fn admitted_within<F, Fut>(within: Duration, mut attempt: F) -> (Duration, reqwest::Response)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    let started = Instant::now();
    loop {
        let response = attempt().await;
        if response.status() == 200 {
            return (started.elapsed(), response);
        }
        assert_eq!(response.status(), 429, "only the cap refuses meanwhile");
        assert!(
            started.elapsed() < within,
            "no capacity came back within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn streams_are_capped_per_key_across_replicas_and_capacity_returns_when_one_closes() {
    let cluster = Cluster::start().await;
    let key = cluster.key(json!({"concurrentStreams": 3})).await;
    let (a, b) = (cluster.edge(0), cluster.edge(1));

    // Both kinds of streamed reply, through both replicas, count against one cap.
    let first = a.open_stream(&key).await;
    let _second = b.open_stream(&key).await;
    let completion = a.complete_streamed(&key).await;
    assert_eq!(completion.status(), 200);
    let _third = Open::first_bytes(completion).await;

    for edge in [&a, &b] {
        refused(edge.send_streamed(&key).await, "concurrentStreams", 3, 3).await;
    }
    // The OpenAI-compatible route refuses in OpenAI's shape.
    let over = b.complete_streamed(&key).await;
    assert_eq!(over.status(), 429);
    let body: Value = over.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("concurrentStreams")),
        "{body}"
    );
    // Refused streams never reached the model.
    assert_eq!(cluster.upstream.received().len(), 3);

    // Another key is unaffected.
    let other = cluster.key(json!({"concurrentStreams": 1})).await;
    let _others = b.open_stream(&other).await;
    refused(a.send_streamed(&other).await, "concurrentStreams", 1, 1).await;

    // Closing a stream on one replica frees its place for a stream on the other, at once
    // (well before the lease would expire).
    drop(first);
    let (waited, response) =
        admitted_within(Duration::from_secs(3), || b.send_streamed(&key)).await;
    assert!(
        waited < Duration::from_secs(LEASE_SECS / 2),
        "released, not expired: {waited:?}"
    );
    let _replacement = Open::first_bytes(response).await;
    refused(a.send_streamed(&key).await, "concurrentStreams", 3, 3).await;
}

#[tokio::test]
async fn a_killed_replicas_streams_and_subscriptions_expire_and_capacity_returns() {
    let mut cluster = Cluster::start().await;
    let key = cluster
        .key(json!({"concurrentStreams": 2, "eventSubscriptions": 2}))
        .await;
    let (a, b) = (cluster.edge(0), cluster.edge(1));

    // Everything of the key is held open by the second replica.
    let _streams = [b.open_stream(&key).await, b.open_stream(&key).await];
    let _subscriptions = [
        b.open_subscription(&key).await,
        b.open_subscription(&key).await,
    ];
    refused(a.send_streamed(&key).await, "concurrentStreams", 2, 2).await;
    refused(a.subscribe(&key).await, "eventSubscriptions", 2, 2).await;

    // Leases are renewed while their streams stay open: still full after a whole lease time.
    tokio::time::sleep(Duration::from_secs(LEASE_SECS + 1)).await;
    refused(a.send_streamed(&key).await, "concurrentStreams", 2, 2).await;
    refused(a.subscribe(&key).await, "eventSubscriptions", 2, 2).await;

    // SIGKILL: the replica releases nothing; its leases still count for a while...
    let killed = Instant::now();
    cluster.cores[1].kill();
    refused(a.send_streamed(&key).await, "concurrentStreams", 2, 2).await;
    refused(a.subscribe(&key).await, "eventSubscriptions", 2, 2).await;

    // ...then expire within one lease time (plus the renewal interval), and capacity returns.
    let bound = Duration::from_secs(LEASE_SECS + 3);
    let (_, stream) = admitted_within(bound, || a.send_streamed(&key)).await;
    let _stream = Open::first_bytes(stream).await;
    let (_, subscription) = admitted_within(bound, || a.subscribe(&key)).await;
    let _subscription = Open::held(subscription);
    assert!(
        killed.elapsed() >= Duration::from_secs(LEASE_SECS / 3),
        "capacity came back by expiry, not at once: {:?}",
        killed.elapsed()
    );
    let _second = a.open_stream(&key).await;
    refused(a.send_streamed(&key).await, "concurrentStreams", 2, 2).await;
}

#[tokio::test]
async fn event_subscriptions_are_capped_per_key_across_replicas() {
    let cluster = Cluster::start().await;
    let key = cluster.key(json!({"eventSubscriptions": 2})).await;
    let (a, b) = (cluster.edge(0), cluster.edge(1));

    let first = a.open_subscription(&key).await;
    let _second = b.open_subscription(&key).await;
    for edge in [&a, &b] {
        refused(edge.subscribe(&key).await, "eventSubscriptions", 2, 2).await;
    }
    // The caps are separate: the key may still stream replies.
    let _stream = a.open_stream(&key).await;
    // Another key is unaffected.
    let other = cluster.key(json!({})).await;
    let _others = [
        b.open_subscription(&other).await,
        b.open_subscription(&other).await,
        b.open_subscription(&other).await,
    ];

    drop(first);
    let (waited, response) = admitted_within(Duration::from_secs(3), || b.subscribe(&key)).await;
    assert!(waited < Duration::from_secs(LEASE_SECS / 2), "{waited:?}");
    let _replacement = Open::held(response);
    refused(a.subscribe(&key).await, "eventSubscriptions", 2, 2).await;
}

#[tokio::test]
async fn a_key_without_its_own_caps_gets_the_configured_defaults_and_can_be_given_more() {
    let cluster = Cluster::start().await;
    let internal = support::INTERNAL_TOKEN;
    let a = cluster.edge(0);
    let created = support::post_with_key(
        &cluster.http,
        a.url("/api/v1/keys"),
        internal,
        &json!({"name": "defaults"}),
    )
    .await;
    let created = expect_data(created, 201).await;
    let (key, id) = (
        created["key"].as_str().unwrap().to_string(),
        created["id"].as_str().unwrap().to_string(),
    );
    assert_eq!(created["limits"]["concurrentStreams"], Value::Null);

    // The default event-subscription cap is 10.
    let mut open = Vec::new();
    for _ in 0..10 {
        open.push(a.open_subscription(&key).await);
    }
    refused(a.subscribe(&key).await, "eventSubscriptions", 10, 10).await;

    // Raised through key administration, it applies on every replica within seconds.
    let patched = cluster
        .http
        .patch(a.url(&format!("/api/v1/keys/{id}")))
        .bearer_auth(internal)
        .json(&json!({"limits": {"eventSubscriptions": 11}}))
        .send()
        .await
        .unwrap();
    let patched = expect_data(patched, 200).await;
    assert_eq!(patched["limits"]["eventSubscriptions"], 11);
    let b = cluster.edge(1);
    let (_, response) = admitted_within(Duration::from_secs(5), || b.subscribe(&key)).await;
    open.push(Open::held(response));
    refused(b.subscribe(&key).await, "eventSubscriptions", 11, 11).await;

    // A cap of zero is not a cap.
    let zero = cluster
        .http
        .patch(a.url(&format!("/api/v1/keys/{id}")))
        .bearer_auth(internal)
        .json(&json!({"limits": {"concurrentStreams": 0}}))
        .send()
        .await
        .unwrap();
    let error = expect_error(zero, 400, "INVALID_REQUEST").await;
    assert!(
        error["details"]
            .as_str()
            .unwrap()
            .contains("limits.concurrentStreams")
    );
}

#[tokio::test]
async fn the_embedded_store_enforces_the_caps_too() {
    let upstream = FakeUpstream::start().await;
    upstream.behave(stalling());
    let data_dir = tempfile::tempdir().unwrap();
    let core = spawn_core(&CoreOptions {
        redis_url: None,
        upstream: Some(upstream.base_url()),
        data_dir: Some(data_dir.path().to_path_buf()),
        env: vec![
            ("OPENCLAW_DEFAULT_CONCURRENT_STREAMS".into(), "2".into()),
            ("OPENCLAW_DEFAULT_EVENT_SUBSCRIPTIONS".into(), "1".into()),
        ],
    });
    let edge_process = spawn_edge(&[&core]);
    let http = reqwest::Client::new();
    let edge = Edge {
        http: http.clone(),
        base: format!("http://127.0.0.1:{}", edge_process.port),
    };
    let plenty = json!({"limits": {"requestsPerMinute": 1000}});
    let key = support::create_key(&http, &edge.base, "embedded", plenty.clone()).await;

    let first = edge.open_stream(&key).await;
    let _second = edge.open_stream(&key).await;
    refused(edge.send_streamed(&key).await, "concurrentStreams", 2, 2).await;
    let _subscription = edge.open_subscription(&key).await;
    refused(edge.subscribe(&key).await, "eventSubscriptions", 1, 1).await;

    let other = support::create_key(&http, &edge.base, "other", plenty).await;
    let _others = edge.open_stream(&other).await;

    drop(first);
    let (_, response) = admitted_within(Duration::from_secs(3), || edge.send_streamed(&key)).await;
    let _replacement = Open::first_bytes(response).await;
    refused(edge.send_streamed(&key).await, "concurrentStreams", 2, 2).await;
}

#[tokio::test]
async fn grpc_callers_get_resource_exhausted_with_the_same_details() {
    use openclaw_gateway::proto::SubscribeRequest;
    use openclaw_gateway::proto::event_service_client::EventServiceClient;
    use tonic_types::StatusExt as _;

    let cluster = Cluster::start().await;
    let key = cluster.key(json!({"eventSubscriptions": 1})).await;
    let request = || {
        let mut request = tonic::Request::new(SubscribeRequest::default());
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        request
    };
    let connect =
        |core: &Process| EventServiceClient::connect(format!("http://127.0.0.1:{}", core.port));
    let mut first = connect(&cluster.cores[0]).await.unwrap();
    let mut second = connect(&cluster.cores[1]).await.unwrap();

    let open = first.subscribe(request()).await.expect("within the cap");
    let status = second.subscribe(request()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let details = status.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "RATE_LIMIT_EXCEEDED");
    let sentence = &info.metadata["details"];
    assert!(
        sentence.contains("eventSubscriptions")
            && sentence.contains("already has 1 ")
            && sentence.contains("close one"),
        "{sentence}"
    );
    assert!(details.retry_info().is_some());

    // Dropping the stream ends the call; its place is free at once on the other replica.
    drop(open);
    let started = Instant::now();
    loop {
        match second.subscribe(request()).await {
            Ok(_) => break,
            Err(status) => assert_eq!(status.code(), tonic::Code::ResourceExhausted),
        }
        assert!(started.elapsed() < Duration::from_secs(3), "not released");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

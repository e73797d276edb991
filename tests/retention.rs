//! Retention end to end (docs/retention.md): a session idle past its key's time to live, or
//! past its own `expiresAt`, is gone from get, list, history and send, on Redis and on the
//! embedded store; a send keeps a session alive; a cron run's fresh session is kept for the
//! cron session retention; an expired session's id can be used again.

mod support;

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use support::redis_topologies::RedisCluster;
use support::{
    CoreOptions, FakeUpstream, INTERNAL_TOKEN, Process, expect_data, expect_error, redis_url,
    spawn_core, spawn_edge, start_redis, wait_until_ready,
};

/// Where a gateway under test keeps its state.
#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Embedded,
    Redis,
    Cluster,
}

/// A core (on Redis or on its embedded store) and an edge, with `env` for the core; the
/// sweep of expired sessions runs every second.
struct Gateway {
    _upstream: FakeUpstream,
    // The edge first: dropped before its core, it never retries a core that is gone.
    edge: Process,
    core: Process,
    redis: Option<Process>,
    cluster: Option<RedisCluster>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Gateway {
    async fn start(on_redis: bool, env: &[(&str, &str)]) -> Self {
        let backend = if on_redis {
            Backend::Redis
        } else {
            Backend::Embedded
        };
        Self::on(backend, env).await
    }

    async fn on(backend: Backend, env: &[(&str, &str)]) -> Self {
        let upstream = FakeUpstream::start().await;
        let dir = tempfile::tempdir().expect("temp dir");
        let redis = (backend == Backend::Redis).then(start_redis);
        let cluster = (backend == Backend::Cluster).then(|| RedisCluster::start(3, 0));
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push(("OPENCLAW_SESSION_SWEEP_INTERVAL_SECS".into(), "1".into()));
        if let Some(cluster) = &cluster {
            env.push(("OPENCLAW_REDIS_CLUSTER_NODES".into(), cluster.seeds()));
        }
        let core = spawn_core(&CoreOptions {
            redis_url: redis.as_ref().map(redis_url),
            upstream: Some(upstream.base_url()),
            data_dir: Some(dir.path().to_path_buf()),
            env,
        });
        let edge = spawn_edge(&[&core]);
        wait_until_ready(&edge).await;
        Self {
            _upstream: upstream,
            redis,
            cluster,
            core,
            edge,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.edge.port)
    }

    /// A new key: (id, secret).
    async fn key(&self, name: &str) -> (String, String) {
        let response = self
            .http
            .post(self.url("/api/v1/keys"))
            .bearer_auth(INTERNAL_TOKEN)
            .json(&json!({"name": name}))
            .send()
            .await
            .expect("create key");
        let data = expect_data(response, 201).await;
        (
            data["id"].as_str().expect("key id").to_string(),
            data["key"].as_str().expect("key secret").to_string(),
        )
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .expect("POST")
    }

    async fn get(&self, path: &str, key: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .expect("GET")
    }

    /// Creates a session answering `first`; its `data`.
    async fn create(&self, key: &str, extra: Value) -> Value {
        let mut body = json!({"messages": [{"role": "user", "content": "first"}]});
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        expect_data(self.post("/api/v1/sessions", key, body).await, 201).await
    }

    async fn send(&self, key: &str, id: &str, content: &str) -> reqwest::Response {
        self.post(
            &format!("/api/v1/sessions/{id}/messages"),
            key,
            json!({"message": {"role": "user", "content": content}}),
        )
        .await
    }

    async fn listed(&self, key: &str) -> Vec<String> {
        let data = expect_data(self.get("/api/v1/sessions?pageSize=200", key).await, 200).await;
        data["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .map(|s| s["sessionId"].as_str().expect("sessionId").to_string())
            .collect()
    }

    /// A connection to the gateway's Redis, one node or a cluster.
    async fn redis(&self) -> Raw {
        if let Some(cluster) = &self.cluster {
            let nodes: Vec<String> = cluster
                .seeds()
                .split(',')
                .map(|node| format!("redis://{node}"))
                .collect();
            let conn = redis::cluster::ClusterClient::new(nodes)
                .expect("cluster seeds")
                .get_async_connection()
                .await
                .expect("connect to the test cluster");
            return Raw::Cluster(conn);
        }
        let url = redis_url(self.redis.as_ref().expect("a Redis-backed gateway"));
        let conn = redis::Client::open(url)
            .expect("Redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test Redis");
        Raw::One(conn)
    }
}

/// A plain Redis client beside the gateway, to look at what it stored.
enum Raw {
    One(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Raw {
    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> T {
        match self {
            Raw::One(conn) => cmd.query_async(conn).await,
            Raw::Cluster(conn) => cmd.query_async(conn).await,
        }
        .expect("a Redis command")
    }
}

fn time(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(
        value
            .as_str()
            .unwrap_or_else(|| panic!("a time, got {value}")),
    )
    .expect("RFC 3339")
    .with_timezone(&Utc)
}

/// Asserts that the session is gone from every read and from send, as NOT_FOUND.
async fn assert_gone(gw: &Gateway, key: &str, id: &str) {
    let error = expect_error(
        gw.get(&format!("/api/v1/sessions/{id}"), key).await,
        404,
        "NOT_FOUND",
    )
    .await;
    assert!(
        error["details"].as_str().unwrap().contains(id),
        "the refusal names the session: {error}"
    );
    expect_error(
        gw.get(&format!("/api/v1/sessions/{id}/messages"), key)
            .await,
        404,
        "NOT_FOUND",
    )
    .await;
    expect_error(gw.send(key, id, "are you there?").await, 404, "NOT_FOUND").await;
    assert!(
        !gw.listed(key).await.contains(&id.to_string()),
        "an expired session is not listed"
    );
}

/// A session of a key with a 2-second idle time to live: its expiry shows in reads, and two
/// seconds after its last turn it is gone everywhere.
async fn idle_session_disappears(gw: &Gateway, key: &str) -> String {
    let created = gw.create(key, json!({})).await;
    let id = created["sessionId"].as_str().unwrap().to_string();
    let session = expect_data(gw.get(&format!("/api/v1/sessions/{id}"), key).await, 200).await;
    let expires = time(&session["expiresAt"]);
    let updated = time(&session["updatedAt"]);
    assert_eq!(
        (expires - updated).num_seconds(),
        2,
        "expiresAt is the last activity plus the idle time to live: {session}"
    );
    assert!(
        time(&created["expiresAt"]) >= updated,
        "the create's answer shows the expiry too: {created}"
    );
    assert_eq!(gw.listed(key).await, vec![id.clone()]);
    let history = expect_data(
        gw.get(&format!("/api/v1/sessions/{id}/messages"), key)
            .await,
        200,
    )
    .await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 2);

    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_gone(gw, key, &id).await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_disappears_from_get_list_and_history_on_redis() {
    idle_session_with_a_keys_own_ttl_disappears(Backend::Redis).await;
}

/// The same on a Redis Cluster: the session's keys, its owner's index and the index's expiry
/// entries each live in their own slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_disappears_from_get_list_and_history_on_a_redis_cluster() {
    idle_session_with_a_keys_own_ttl_disappears(Backend::Cluster).await;
}

async fn idle_session_with_a_keys_own_ttl_disappears(backend: Backend) {
    let gw = Gateway::on(backend, &[]).await;
    let (owner, key) = gw.key("short-lived").await;
    // The key's own quota, set through the key API: 2 seconds, against the gateway's default of
    // 30 days.
    let response = gw
        .http
        .patch(gw.url(&format!("/api/v1/keys/{owner}")))
        .bearer_auth(INTERNAL_TOKEN)
        .json(&json!({"quotas": {"sessionIdleTtlSeconds": 2}}))
        .send()
        .await
        .expect("PATCH key");
    let patched = expect_data(response, 200).await;
    assert_eq!(patched["quotas"]["sessionIdleTtlSeconds"], 2, "{patched}");
    let mut redis = gw.redis().await;
    let (_, other) = gw.key("default-retention").await;
    let kept = gw.create(&other, json!({})).await;

    let id = idle_session_disappears(&gw, &key).await;

    // Redis dropped every key of the session by itself...
    let base = format!("oc:s:{{{owner}/{id}}}");
    for suffix in ["meta", "msgs", "results", "results:exp"] {
        let exists: bool = redis
            .query(redis::cmd("EXISTS").arg(format!("{base}:{suffix}")))
            .await;
        assert!(!exists, "{base}:{suffix} outlived the session");
    }
    // ... and the sweep drops the owner's index entry (another slot) within seconds.
    let index = format!("oc:o:{owner}:sessions");
    let mut dropped = false;
    for _ in 0..40 {
        let score: Option<f64> = redis.query(redis::cmd("ZSCORE").arg(&index).arg(&id)).await;
        if score.is_none() {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(dropped, "the owner's index still names the expired session");
    let due: Option<f64> = redis
        .query(
            redis::cmd("ZSCORE")
                .arg(format!("{{oc:o:{owner}:sessions}}:expiring"))
                .arg(&id),
        )
        .await;
    assert_eq!(due, None, "its expiry entry went with it");

    // Another key's session keeps the default: 30 days after its last turn.
    let kept_id = kept["sessionId"].as_str().unwrap();
    let session = expect_data(
        gw.get(&format!("/api/v1/sessions/{kept_id}"), &other).await,
        200,
    )
    .await;
    let left = time(&session["expiresAt"]) - time(&session["updatedAt"]);
    assert_eq!(left.num_days(), 30, "{session}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_disappears_from_get_list_and_history_on_the_embedded_store() {
    // The embedded store's file belongs to the running core: the idle time to live comes
    // from the gateway-wide default here.
    let gw = Gateway::start(false, &[("OPENCLAW_DEFAULT_SESSION_IDLE_TTL_SECONDS", "2")]).await;
    let (_, key) = gw.key("short-lived").await;
    idle_session_disappears(&gw, &key).await;
    // Reads hid it at once; the sweep (every second here) deleted it, and counts so.
    let metrics = format!("http://127.0.0.1:{}/metrics", gw.core.metrics_port);
    let mut swept = 0.0;
    for _ in 0..20 {
        let text = gw
            .http
            .get(&metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        swept = text
            .lines()
            .find_map(|line| line.strip_prefix("openclaw_expired_sessions_swept_total "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if swept >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(swept, 1.0, "the sweep deleted the expired session once");
}

async fn sends_keep_a_session_alive(gw: &Gateway) {
    let (_, key) = gw.key("chatty").await;
    let created = gw.create(&key, json!({})).await;
    let id = created["sessionId"].as_str().unwrap().to_string();
    for n in 0..3 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        expect_data(gw.send(&key, &id, &format!("turn {n}")).await, 200).await;
    }
    // 3.6 s after creation, well past the 2-second idle time to live, the session is whole.
    let session = expect_data(gw.get(&format!("/api/v1/sessions/{id}"), &key).await, 200).await;
    assert_eq!(session["messageCount"], 8, "{session}");
    assert_eq!(
        gw.listed(&key).await,
        vec![id.clone()],
        "still listed: the sweep saw it was due and found it alive"
    );
    assert_eq!(
        (time(&session["expiresAt"]) - time(&session["updatedAt"])).num_seconds(),
        2
    );
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_gone(gw, &key, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_keep_a_session_alive_past_its_idle_ttl_on_redis() {
    let gw = Gateway::start(true, &[("OPENCLAW_DEFAULT_SESSION_IDLE_TTL_SECONDS", "2")]).await;
    sends_keep_a_session_alive(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_keep_a_session_alive_past_its_idle_ttl_on_the_embedded_store() {
    let gw = Gateway::start(false, &[("OPENCLAW_DEFAULT_SESSION_IDLE_TTL_SECONDS", "2")]).await;
    sends_keep_a_session_alive(&gw).await;
}

async fn expires_at_is_honoured(gw: &Gateway) {
    let (_, key) = gw.key("deadline").await;
    // Refused, naming the field, and nothing is created.
    for (bad, says) in [
        (json!("next tuesday"), "RFC 3339"),
        (json!("2020-01-01T00:00:00Z"), "must be in the future"),
    ] {
        let response = gw
            .post(
                "/api/v1/sessions",
                &key,
                json!({"messages": [{"role": "user", "content": "hi"}], "expiresAt": bad}),
            )
            .await;
        let error = expect_error(response, 400, "INVALID_REQUEST").await;
        let details = error["details"].as_str().unwrap();
        assert!(
            details.contains("expiresAt") && details.contains(says),
            "{error}"
        );
    }
    assert!(gw.listed(&key).await.is_empty());

    let end =
        (Utc::now() + chrono::Duration::seconds(4)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let created = gw
        .create(
            &key,
            json!({"expiresAt": end, "context": {"sessionId": "with-deadline"}}),
        )
        .await;
    assert_eq!(created["expiresAt"], json!(end), "{created}");
    let session = expect_data(gw.get("/api/v1/sessions/with-deadline", &key).await, 200).await;
    assert_eq!(session["expiresAt"], json!(end));

    // Fixed at creation: continuing with another expiresAt is refused; with its own, or none,
    // the session goes on (and a turn does not move the deadline).
    let other =
        (Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let error = expect_error(
        gw.post(
            "/api/v1/sessions",
            &key,
            json!({"messages": [{"role": "user", "content": "more"}], "expiresAt": other, "context": {"sessionId": "with-deadline"}}),
        )
        .await,
        400,
        "INVALID_REQUEST",
    )
    .await;
    assert!(
        error["details"]
            .as_str()
            .unwrap()
            .contains("set when it is created"),
        "{error}"
    );
    let continued = expect_data(
        gw.post(
            "/api/v1/sessions",
            &key,
            json!({"messages": [{"role": "user", "content": "more"}], "expiresAt": end, "context": {"sessionId": "with-deadline"}}),
        )
        .await,
        200,
    )
    .await;
    assert_eq!(continued["expiresAt"], json!(end));
    expect_data(gw.send(&key, "with-deadline", "still here").await, 200).await;
    let session = expect_data(gw.get("/api/v1/sessions/with-deadline", &key).await, 200).await;
    assert_eq!(
        session["expiresAt"],
        json!(end),
        "a turn does not move expiresAt"
    );
    assert_eq!(session["messageCount"], 6);

    let wait = time(&json!(end)) - Utc::now() + chrono::Duration::milliseconds(600);
    tokio::time::sleep(wait.to_std().unwrap_or_default()).await;
    assert_gone(gw, &key, "with-deadline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_at_ends_a_session_however_active_on_redis() {
    let gw = Gateway::start(true, &[]).await;
    expires_at_is_honoured(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expires_at_ends_a_session_however_active_on_the_embedded_store() {
    let gw = Gateway::start(false, &[]).await;
    expires_at_is_honoured(&gw).await;
}

async fn an_expired_id_can_be_used_again(gw: &Gateway) {
    let (_, key) = gw.key("reuse").await;
    let first = gw
        .create(&key, json!({"context": {"sessionId": "reused"}}))
        .await;
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_gone(gw, &key, "reused").await;
    let response = gw
        .post(
            "/api/v1/sessions",
            &key,
            json!({"messages": [{"role": "user", "content": "second life"}], "context": {"sessionId": "reused"}}),
        )
        .await;
    let second = expect_data(response, 201).await;
    assert_eq!(
        second["sessionId"], "reused",
        "a new session, not a continued one"
    );
    assert!(time(&second["createdAt"]) > time(&first["createdAt"]));
    let history = expect_data(gw.get("/api/v1/sessions/reused/messages", &key).await, 200).await;
    let contents: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, vec!["second life", "echo: second life"]);
    assert_eq!(gw.listed(&key).await, vec!["reused".to_string()]);
    expect_data(gw.send(&key, "reused", "and on").await, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_id_can_be_used_again_on_redis() {
    let gw = Gateway::start(true, &[("OPENCLAW_DEFAULT_SESSION_IDLE_TTL_SECONDS", "2")]).await;
    an_expired_id_can_be_used_again(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_id_can_be_used_again_on_the_embedded_store() {
    let gw = Gateway::start(false, &[("OPENCLAW_DEFAULT_SESSION_IDLE_TTL_SECONDS", "2")]).await;
    an_expired_id_can_be_used_again(&gw).await;
}

/// The session an agentTurn run starts for itself is kept for the cron session retention;
/// the key's other sessions keep the key's idle time to live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_run_session_expires_after_the_cron_session_retention() {
    let gw = Gateway::start(true, &[("OPENCLAW_CRON_SESSION_RETENTION_SECS", "2")]).await;
    let (_, key) = gw.key("agent").await;
    let ordinary = gw.create(&key, json!({})).await;
    let job = expect_data(
        gw.post(
            "/api/v1/cron/jobs",
            &key,
            json!({"name": "daily-digest", "schedule": {"kind": "every", "everyMs": 3_600_000}, "payload": {"kind": "agentTurn", "message": "digest"}}),
        )
        .await,
        201,
    )
    .await;
    let job_id = job["id"].as_str().unwrap();
    let response = gw
        .post(&format!("/api/v1/cron/jobs/{job_id}/run"), &key, json!({}))
        .await;
    assert!(
        response.status().is_success(),
        "run now: {}",
        response.status()
    );
    let mut session = None;
    for _ in 0..100 {
        let runs = expect_data(
            gw.get(&format!("/api/v1/cron/jobs/{job_id}/runs"), &key)
                .await,
            200,
        )
        .await;
        session = runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["status"] == "ok")
            .and_then(|r| r["sessionId"].as_str())
            .map(str::to_string);
        if session.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let session = session.expect("the run finished with a session");
    let read = expect_data(
        gw.get(&format!("/api/v1/sessions/{session}"), &key).await,
        200,
    )
    .await;
    assert_eq!(
        (time(&read["expiresAt"]) - time(&read["updatedAt"])).num_seconds(),
        2,
        "a run's session is kept for the cron session retention: {read}"
    );
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_gone(&gw, &key, &session).await;

    let ordinary_id = ordinary["sessionId"].as_str().unwrap();
    let read = expect_data(
        gw.get(&format!("/api/v1/sessions/{ordinary_id}"), &key)
            .await,
        200,
    )
    .await;
    assert_eq!(
        (time(&read["expiresAt"]) - time(&read["updatedAt"])).num_days(),
        30,
        "{read}"
    );
}

/// A session bound to an OpenAI-compatible completion (`OpenClaw-Session-Id`) gets its key's
/// idle time to live like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_bound_to_a_completion_expires_too() {
    let gw = Gateway::start(false, &[("OPENCLAW_DEFAULT_SESSION_IDLE_TTL_SECONDS", "2")]).await;
    let (_, key) = gw.key("openai-sdk").await;
    let response = gw
        .http
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("OpenClaw-Session-Id", "bound")
        .json(
            &json!({"model": "zai/glm-4.7-flash", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .expect("completion");
    assert_eq!(response.status(), 200);
    let session = expect_data(gw.get("/api/v1/sessions/bound", &key).await, 200).await;
    assert_eq!(
        (time(&session["expiresAt"]) - time(&session["updatedAt"])).num_seconds(),
        2,
        "{session}"
    );
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_gone(&gw, &key, "bound").await;
}

/// gRPC callers set and read the same expiry: `CreateSessionRequest.expires_at` (RFC 3339) and
/// `Session.expires_at`; a past time is INVALID_ARGUMENT naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callers_set_and_read_expires_at() {
    use openclaw_gateway::proto::session_service_client::SessionServiceClient;
    use openclaw_gateway::proto::{ChatMessage, CreateSessionRequest, GetSessionRequest};
    use tonic_types::StatusExt as _;

    let gw = Gateway::start(false, &[]).await;
    let (_, key) = gw.key("grpc").await;
    let mut client = SessionServiceClient::connect(format!("http://127.0.0.1:{}", gw.core.port))
        .await
        .expect("connect");
    let request = |expires_at: &str| {
        let mut request = tonic::Request::new(CreateSessionRequest {
            messages: vec![ChatMessage {
                role: "user".into(),
                content: "hi".into(),
                ..Default::default()
            }],
            expires_at: Some(expires_at.to_string()),
            ..CreateSessionRequest::default()
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {key}").parse().unwrap());
        request
    };
    let status = client
        .create_session(request("2001-01-01T00:00:00Z"))
        .await
        .expect_err("a past expiresAt is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let details = status.get_error_details();
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "INVALID_REQUEST");
    let fields: Vec<&str> = details
        .bad_request()
        .map(|b| {
            b.field_violations
                .iter()
                .map(|v| v.field.as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(fields, vec!["expiresAt"], "{status:?}");

    let end = Utc::now() + chrono::Duration::hours(2);
    let created = client
        .create_session(request(&end.to_rfc3339()))
        .await
        .expect("created")
        .into_inner();
    let session = created.session.expect("session");
    let shown = session.expires_at.expect("expires_at");
    assert_eq!(shown.seconds, end.timestamp());
    let mut get = tonic::Request::new(GetSessionRequest {
        session_id: session.session_id.clone(),
    });
    get.metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let read = client.get_session(get).await.expect("read").into_inner();
    assert_eq!(read.expires_at.map(|t| t.seconds), Some(end.timestamp()));
}

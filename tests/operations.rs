//! Running it like production: layered configuration, the production
//! profile's refusals, metrics and probes, readiness that follows Redis and
//! draining, graceful drain under load, and one trace from edge to core.

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Behaviour, CoreOptions, FakeUpstream, Stack, expect_data, wait_for_status};

fn gateway() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openclaw-gateway"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

fn printed(cmd: &mut Command) -> String {
    let output = cmd.output().expect("run openclaw-gateway");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn flags_win_over_environment_which_wins_over_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(
        &file,
        "redis-timeout-ms = 111\ndefault_max_tokens = 222\ndefault-requests-per-minute = 7\ninternal-token = \"from-the-file\"\n",
    )
    .unwrap();
    let config = printed(
        gateway()
            .current_dir(dir.path())
            .args(["serve", "--print-config", "--config"])
            .arg(&file)
            .args(["--default-requests-per-minute", "9"])
            .env("OPENCLAW_DEFAULT_MAX_TOKENS", "333")
            .env("OPENCLAW_DEFAULT_REQUESTS_PER_MINUTE", "8"),
    );
    assert!(
        config.contains("redis-timeout-ms = \"111\""),
        "the file sets what nothing else does:\n{config}"
    );
    assert!(
        config.contains("default-max-tokens = \"333\""),
        "the environment beats the file:\n{config}"
    );
    assert!(
        config.contains("default-requests-per-minute = \"9\""),
        "a flag beats both:\n{config}"
    );
    assert!(
        config.contains("internal-token = \"<redacted>\""),
        "{config}"
    );
    assert!(
        !config.contains("from-the-file"),
        "secrets are never printed"
    );
    assert!(
        config.contains("grpc-addr = \"0.0.0.0:50051\""),
        "defaults are shown:\n{config}"
    );
}

#[test]
fn an_unknown_setting_in_the_file_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, "redis-urll = \"redis://x\"\n").unwrap();
    let output = gateway()
        .args(["serve", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("unknown setting 'redis-urll'") && err.contains("redis-url"),
        "{err}"
    );
}

#[test]
fn the_production_profile_refuses_unsafe_settings_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let output = gateway()
        .current_dir(dir.path())
        .args([
            "serve",
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("OPENCLAW_PROFILE", "production")
        .env("OPENCLAW_CORE_REPLICAS", "3")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!output.status.success(), "refused to start");
    let err = String::from_utf8_lossy(&output.stderr);
    for expected in ["OPENCLAW_INTERNAL_TOKEN", "simulator", "OPENCLAW_REDIS_URL"] {
        assert!(err.contains(expected), "names {expected}:\n{err}");
    }
}

async fn get_text(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(response) => (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        ),
        Err(_) => (0, String::new()),
    }
}

#[tokio::test]
async fn metrics_expose_the_named_series_on_their_own_port() {
    let stack = Stack::start().await;
    let key = stack.create_key("metrics").await;
    let response = stack
        .post(
            "/api/v1/sessions",
            &key,
            &json!({"messages": [{"role": "user", "content": "count me"}]}),
        )
        .await;
    expect_data(response, 201).await;
    let (status, edge) = get_text(&format!(
        "http://127.0.0.1:{}/metrics",
        stack.edge.metrics_port
    ))
    .await;
    assert_eq!(status, 200);
    for series in [
        "openclaw_http_requests_total{route=\"/api/v1/sessions\",method=\"POST\",status=\"201\"} 1",
        "openclaw_http_request_duration_seconds_bucket",
        "openclaw_http_requests_in_flight",
    ] {
        assert!(edge.contains(series), "edge metrics have {series}:\n{edge}");
    }
    let (status, core) = get_text(&format!(
        "http://127.0.0.1:{}/metrics",
        stack.core.metrics_port
    ))
    .await;
    assert_eq!(status, 200);
    for series in [
        "openclaw_grpc_requests_total{method=\"SessionService/CreateSession\",status=\"Ok\"} 1",
        "openclaw_grpc_request_duration_seconds_bucket",
        "openclaw_grpc_requests_in_flight",
        "openclaw_rate_limit_decision_seconds_bucket",
        "openclaw_store_ping_seconds_bucket{store=\"redis\"",
        "openclaw_store_up{store=\"redis\"} 1",
        "openclaw_tokens_total{model=\"zai/glm-4.7-flash\",kind=\"prompt\"} 10",
        "openclaw_provider_attempts_total{provider=\"zai\",model=\"zai/glm-4.7-flash\",outcome=\"ok\"} 1",
        "openclaw_provider_attempt_duration_seconds_bucket",
    ] {
        assert!(core.contains(series), "core metrics have {series}:\n{core}");
    }
    assert_eq!(
        get_text(&format!(
            "http://127.0.0.1:{}/livez",
            stack.core.metrics_port
        ))
        .await
        .0,
        200
    );
}

#[tokio::test]
async fn readiness_follows_redis_and_the_core() {
    let mut stack = Stack::start().await;
    let core_ready = format!("http://127.0.0.1:{}/readyz", stack.core.metrics_port);
    let edge_ready = stack.url("/readyz");
    wait_for_status(&core_ready, 200, Duration::from_secs(5)).await;
    wait_for_status(&edge_ready, 200, Duration::from_secs(5)).await;
    let redis = stack.redis.as_ref().unwrap();
    let pid = redis.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let took = wait_for_status(&core_ready, 503, Duration::from_secs(6)).await;
    println!("core readiness turned false {took:?} after Redis paused");
    wait_for_status(&edge_ready, 503, Duration::from_secs(6)).await;
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for_status(&core_ready, 200, Duration::from_secs(6)).await;
    wait_for_status(&edge_ready, 200, Duration::from_secs(6)).await;
    stack.core.kill();
    wait_for_status(&edge_ready, 503, Duration::from_secs(5)).await;
}

fn sigterm(process: &support::Process) {
    assert!(
        Command::new("kill")
            .args(["-TERM", &process.pid().to_string()])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_core_finishes_what_it_acknowledged_and_exits_cleanly() {
    let redis = support::start_redis();
    let upstream = FakeUpstream::start().await;
    upstream.behave(Behaviour::Stall(Duration::from_millis(800)));
    let dir = tempfile::tempdir().unwrap();
    let options = CoreOptions::shared(&redis, &upstream, dir.path());
    let mut core = support::spawn_core(&options);
    let edge = support::spawn_edge(&[&core]);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", edge.port);
    let key = support::create_key(
        &http,
        &base,
        "drain",
        json!({"limits": {"requestsPerMinute": 1000}}),
    )
    .await;
    let sends: Vec<_> = (0..12)
        .map(|i| {
            let (http, base, key) = (http.clone(), base.clone(), key.clone());
            tokio::spawn(async move {
                let response = support::post_with_key(
                    &http,
                    format!("{base}/api/v1/sessions"),
                    &key,
                    &json!({"messages": [{"role": "user", "content": format!("turn {i}")}]}),
                )
                .await;
                let status = response.status().as_u16();
                let body: serde_json::Value = response.json().await.unwrap();
                (status, body)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(&core);
    let exited = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let status = core.wait_exit(Duration::from_secs(20));
        (status, started.elapsed())
    });
    let mut acknowledged = Vec::new();
    for send in sends {
        let (status, body) = send.await.unwrap();
        assert!(
            status == 201 || status == 503,
            "in-flight work finishes or is refused cleanly: {status} {body}"
        );
        if status == 201 {
            acknowledged.push(body["data"]["sessionId"].as_str().unwrap().to_string());
        } else {
            assert_eq!(body["error"]["code"], "UNAVAILABLE");
        }
    }
    let (status, took) = exited.await.unwrap();
    assert_eq!(status, Some(0), "the core exits 0 after draining");
    println!(
        "{} of 12 in-flight sends acknowledged; core exited after {took:?}",
        acknowledged.len()
    );
    assert!(
        !acknowledged.is_empty(),
        "requests in flight at SIGTERM were finished"
    );

    // Every acknowledged turn is stored whole.
    let core = support::spawn_core(&options);
    let edge = support::spawn_edge(&[&core]);
    let base = format!("http://127.0.0.1:{}", edge.port);
    for id in acknowledged {
        let response =
            support::get_with_key(&http, format!("{base}/api/v1/sessions/{id}"), &key).await;
        assert_eq!(expect_data(response, 200).await["messageCount"], 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_edge_turns_unready_and_finishes_requests_in_flight() {
    let stack = Stack::start().await;
    let key = stack.create_key("edge drain").await;
    stack
        .upstream
        .behave(Behaviour::Stall(Duration::from_millis(800)));
    let send = {
        let (http, url, key) = (
            stack.http.clone(),
            stack.url("/api/v1/sessions"),
            key.clone(),
        );
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(&key)
                .json(&json!({"messages": [{"role": "user", "content": "finish me"}]}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    sigterm(&stack.edge);
    assert_eq!(send.await.unwrap(), 201, "the request in flight finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_sent_to_the_edge_continues_into_the_core() {
    let collector = support::otlp::Collector::start().await;
    let otlp = collector.endpoint.clone();
    let redis = support::start_redis();
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let export = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let core = support::spawn_core(&CoreOptions {
        redis_url: Some(support::redis_url(&redis)),
        upstream: Some(upstream.base_url()),
        data_dir: Some(dir.path().to_path_buf()),
        env: export
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    });
    let edge = support::spawn_edge_with(&[&core], &export);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", edge.port);
    let key = support::create_key(&http, &base, "traced", json!({})).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = http
        .post(format!("{base}/api/v1/sessions"))
        .bearer_auth(&key)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"messages": [{"role": "user", "content": "trace me"}]}))
        .send()
        .await
        .unwrap();
    expect_data(response, 201).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen: Vec<(String, String)> = collector.spans();
        let services: Vec<&String> = seen
            .iter()
            .filter(|(_, t)| t == trace_id)
            .map(|(s, _)| s)
            .collect();
        let edge_seen = services.iter().any(|s| s.contains("openclaw-rest"));
        let core_seen = services.iter().any(|s| s.contains("openclaw-gateway"));
        if edge_seen && core_seen {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "spans of the trace from both processes (saw {seen:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ... and out to the model provider.
    let sent = upstream.traceparents();
    assert!(
        sent.iter().any(|t| t.contains(trace_id)),
        "the provider call carries the trace: {sent:?}"
    );
}

#[tokio::test]
async fn an_edge_finds_cores_by_host_name() {
    let redis = support::start_redis();
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let core = support::spawn_core(&CoreOptions::shared(&redis, &upstream, dir.path()));
    let url = format!("http://localhost:{}", core.port);
    let edge = support::spawn_edge_with(&[], &[("OPENCLAW_CORE_URL", url.as_str())]);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", edge.port);
    wait_for_status(&format!("{base}/readyz"), 200, Duration::from_secs(10)).await;
    let key = support::create_key(&http, &base, "named", json!({})).await;
    let status = support::get_with_key(&http, format!("{base}/api/v1/system/status"), &key).await;
    expect_data(status, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_a_core_costs_idempotent_clients_nothing() {
    let redis = support::start_redis();
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let options = CoreOptions::shared(&redis, &upstream, dir.path());
    let first = support::spawn_core(&options);
    let mut second = support::spawn_core(&options);
    let second_port = second.port;
    let edge = support::spawn_edge(&[&first, &second]);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", edge.port);
    let key = support::create_key(
        &http,
        &base,
        "steady",
        json!({"limits": {"requestsPerMinute": 100000}}),
    )
    .await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (http, base, key, stop) = (http.clone(), base.clone(), key.clone(), stop.clone());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let response = http
                        .get(format!("{base}/api/v1/sessions"))
                        .bearer_auth(&key)
                        .send()
                        .await;
                    outcomes.push(response.map_or(0, |r| r.status().as_u16()));
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                outcomes
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    sigterm(&second);
    let code = tokio::task::spawn_blocking(move || second.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    let _restarted = support::spawn_core_at(&options, second_port);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut all = Vec::new();
    for task in load {
        all.extend(task.await.unwrap());
    }
    let failed: Vec<_> = all.iter().filter(|s| **s != 200).collect();
    println!(
        "{} requests during a core restart, {} failed",
        all.len(),
        failed.len()
    );
    assert!(all.len() > 100);
    assert!(
        failed.is_empty(),
        "failed requests during the restart: {failed:?}"
    );
}

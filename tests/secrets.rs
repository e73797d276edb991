//! Secrets stay secret: a whole scenario runs with debug logging and trace
//! export on, then every log line and every exported span is searched for the
//! internal token, API keys, the provider's key and message content — and
//! none of them is found.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{CoreOptions, FakeUpstream, INTERNAL_TOKEN, expect_data, expect_error};

const SENSITIVE: &str = "SENSITIVE-CONTENT-4f2a9c";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_message_content_reaches_logs_or_traces() {
    let collector = support::otlp::Collector::start().await;
    let redis = support::start_redis();
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let core_log = dir.path().join("core.log");
    let edge_log = dir.path().join("edge.log");
    let telemetry = [
        ("RUST_LOG", "debug"),
        ("OPENCLAW_TRACE_FILTER", "debug"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let core = support::spawn_core_logging(
        &CoreOptions {
            redis_url: Some(support::redis_url(&redis)),
            upstream: Some(upstream.base_url()),
            data_dir: Some(dir.path().to_path_buf()),
            env: telemetry
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        },
        support::free_port(),
        Stdio::from(std::fs::File::create(&core_log).unwrap()),
    );
    let edge = support::spawn_edge_logging(
        &[&core],
        &telemetry,
        Stdio::from(std::fs::File::create(&edge_log).unwrap()),
    );
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", edge.port);

    let created = support::post_with_key(
        &http,
        format!("{base}/api/v1/keys"),
        INTERNAL_TOKEN,
        &json!({"name": "secret holder"}),
    )
    .await;
    let created = expect_data(created, 201).await;
    let key = created["key"].as_str().unwrap().to_string();
    let session = support::post_with_key(
        &http,
        format!("{base}/api/v1/sessions"),
        &key,
        &json!({"messages": [{"role": "user", "content": SENSITIVE}]}),
    )
    .await;
    let id = expect_data(session, 201).await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let sent = support::post_with_key(
        &http,
        format!("{base}/api/v1/sessions/{id}/messages"),
        &key,
        &json!({"message": {"role": "user", "content": format!("again {SENSITIVE}")}}),
    )
    .await;
    expect_data(sent, 200).await;
    let status = support::get_with_key(&http, format!("{base}/api/v1/system/status"), &key).await;
    expect_data(status, 200).await;
    let revoked = http
        .delete(format!(
            "{base}/api/v1/keys/{}",
            created["id"].as_str().unwrap()
        ))
        .bearer_auth(INTERNAL_TOKEN)
        .send()
        .await
        .unwrap();
    expect_data(revoked, 200).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let refused = support::get_with_key(&http, format!("{base}/api/v1/system/status"), &key).await;
    expect_error(refused, 401, "UNAUTHORIZED").await;

    // Wait for both processes' spans, then stop them so their logs are complete.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(collector
        .spans()
        .iter()
        .any(|(s, _)| s.contains("openclaw-rest"))
        && collector
            .spans()
            .iter()
            .any(|(s, _)| s.contains("openclaw-gateway")))
    {
        assert!(Instant::now() < deadline, "both processes exported spans");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(edge);
    drop(core);

    let logs =
        std::fs::read_to_string(&core_log).unwrap() + &std::fs::read_to_string(&edge_log).unwrap();
    let spans = collector.exports().join("\n");
    assert!(
        logs.lines().count() > 50,
        "debug logging was on ({} lines)",
        logs.lines().count()
    );
    assert!(!spans.is_empty());
    for (what, secret) in [
        ("the internal token", INTERNAL_TOKEN),
        ("the API key", key.as_str()),
        ("the provider's key", "upstream-secret-key"),
        ("message content", SENSITIVE),
    ] {
        assert!(!logs.contains(secret), "{what} appears in a log line");
        assert!(
            !spans.contains(secret),
            "{what} appears in an exported span"
        );
    }
    println!(
        "searched {} log lines and {} bytes of exported spans: no secret found",
        logs.lines().count(),
        spans.len()
    );
}

const PASSWORD: &str = "redis-Pa55word-7c1e";

/// Runs a binary with only `env` (and PATH) in its environment, in an empty folder, and returns
/// everything it wrote.
fn run_printing(binary: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(binary)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .current_dir(dir.path())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn printed_configuration_shows_urls_without_their_credentials() {
    let core = std::path::PathBuf::from(env!("CARGO_BIN_EXE_openclaw-gateway"));
    let flag_url = format!("redis://:{PASSWORD}@10.0.0.7:6379/0");
    let by_flag = run_printing(
        &core,
        &["serve", "--redis-url", &flag_url, "--print-config"],
        &[],
    );
    assert!(
        by_flag.contains("redis-url = \"redis://:***@10.0.0.7:6379/0\""),
        "{by_flag}"
    );
    let env_url = format!("redis://admin:{PASSWORD}@[::1]:6379");
    let by_env = run_printing(
        &core,
        &["serve", "--print-config"],
        &[
            ("OPENCLAW_REDIS_URL", env_url.as_str()),
            (
                "ZAI_BASE_URL",
                &format!("https://z.example/v4?api-key={PASSWORD}"),
            ),
        ],
    );
    assert!(
        by_env.contains("redis-url = \"redis://***:***@[::1]:6379\""),
        "{by_env}"
    );
    assert!(
        by_env.contains("zai-base-url = \"https://z.example/v4?api-key=***\""),
        "{by_env}"
    );
    // Cluster seeds, Sentinels and the password of every Redis mode.
    let topologies = run_printing(
        &core,
        &["serve", "--print-config"],
        &[
            (
                "OPENCLAW_REDIS_CLUSTER_NODES",
                &format!("rediss://ops:{PASSWORD}@10.0.0.7:6379,10.0.0.8:6379"),
            ),
            (
                "OPENCLAW_REDIS_SENTINELS",
                &format!("redis://:{PASSWORD}@10.0.0.9:26379"),
            ),
            ("OPENCLAW_REDIS_PASSWORD", PASSWORD),
        ],
    );
    assert!(
        topologies
            .contains("redis-cluster-nodes = \"rediss://***:***@10.0.0.7:6379,10.0.0.8:6379\""),
        "{topologies}"
    );
    assert!(
        topologies.contains("redis-sentinels = \"redis://:***@10.0.0.9:26379\""),
        "{topologies}"
    );
    assert!(
        topologies.contains("redis-password = \"<redacted>\""),
        "{topologies}"
    );
    let unparsable = run_printing(
        &core,
        &["serve", "--print-config"],
        &[("OPENCLAW_REDIS_URL", &format!("redis://:{PASSWORD}/x@host"))],
    );
    let edge = run_printing(
        &support::binary("openclaw-rest"),
        &["--print-config"],
        &[(
            "OPENCLAW_CORE_URL",
            &format!("http://core-a:50051,https://u:{PASSWORD}@core-b:50051"),
        )],
    );
    assert!(
        edge.contains("core-url = \"http://core-a:50051,https://***:***@core-b:50051\""),
        "{edge}"
    );
    for printed in [by_flag, by_env, topologies, unparsable, edge] {
        assert!(!printed.contains(PASSWORD), "{printed}");
    }
}

#[test]
fn startup_logs_and_errors_show_urls_without_their_credentials() {
    // A core whose Redis is away and whose trace collector needs a token: it starts, logs at
    // debug, and complains about both, without their credentials.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("core.log");
    let core = support::spawn_core_logging(
        &CoreOptions {
            redis_url: Some(format!(
                "redis://:{PASSWORD}@127.0.0.1:{}",
                support::free_port()
            )),
            upstream: Some(format!("http://127.0.0.1:1/v1?token={PASSWORD}")),
            data_dir: Some(dir.path().to_path_buf()),
            env: [
                ("RUST_LOG", "debug".to_string()),
                (
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    format!("http://otel:{PASSWORD}@127.0.0.1:{}", support::free_port()),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        },
        support::free_port(),
        Stdio::from(std::fs::File::create(&log).unwrap()),
    );
    std::thread::sleep(Duration::from_millis(1500));
    drop(core);
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("exporting traces over OTLP"), "{logs}");
    assert!(!logs.contains(PASSWORD), "{logs}");

    // An edge refusing a core URL it cannot use names it without its credentials.
    let edge = run_printing(
        &support::binary("openclaw-rest"),
        &[
            "--http-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
        ],
        &[(
            "OPENCLAW_CORE_URL",
            &format!("ftp://u:{PASSWORD}@core:50051"),
        )],
    );
    assert!(
        edge.contains("invalid core URL 'ftp://***:***@core:50051'"),
        "{edge}"
    );
    assert!(!edge.contains(PASSWORD), "{edge}");
}

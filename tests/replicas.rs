//! Replicas are interchangeable: state lives in the store, so any edge and any
//! core serve any session, and a restarted core has lost nothing it acknowledged.

mod support;

use serde_json::json;
use support::{CoreOptions, FakeUpstream, expect_data};

#[tokio::test]
async fn a_session_started_on_one_pair_continues_on_another() {
    let redis = support::start_redis();
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let options = CoreOptions::shared(&redis, &upstream, dir.path());
    let (core_a, core_b) = (support::spawn_core(&options), support::spawn_core(&options));
    let (edge_a, edge_b) = (
        support::spawn_edge(&[&core_a]),
        support::spawn_edge(&[&core_b]),
    );
    let http = reqwest::Client::new();
    let a = format!("http://127.0.0.1:{}", edge_a.port);
    let b = format!("http://127.0.0.1:{}", edge_b.port);

    // A key made through one pair works through the other.
    let key = support::create_key(&http, &a, "shared", json!({})).await;
    let created = support::post_with_key(
        &http,
        format!("{a}/api/v1/sessions"),
        &key,
        &json!({"messages": [{"role": "user", "content": "first"}]}),
    )
    .await;
    let id = expect_data(created, 201).await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let sent = support::post_with_key(
        &http,
        format!("{b}/api/v1/sessions/{id}/messages"),
        &key,
        &json!({"message": {"role": "user", "content": "second"}}),
    )
    .await;
    expect_data(sent, 200).await;
    let last = upstream.received().pop().unwrap();
    assert_eq!(
        last["messages"].as_array().unwrap().len(),
        3,
        "core B saw core A's turn"
    );
    let status_a = expect_data(
        http.get(format!("{a}/api/v1/system/status"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    let status_b = expect_data(
        http.get(format!("{b}/api/v1/system/status"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_ne!(status_a["replica"], status_b["replica"]);
}

#[tokio::test]
async fn concurrent_sends_through_two_cores_never_interleave() {
    let redis = support::start_redis();
    let upstream = FakeUpstream::start().await;
    upstream.behave(support::Behaviour::Stall(std::time::Duration::from_millis(
        30,
    )));
    let dir = tempfile::tempdir().unwrap();
    let options = CoreOptions::shared(&redis, &upstream, dir.path());
    let (core_a, core_b) = (support::spawn_core(&options), support::spawn_core(&options));
    let edge = support::spawn_edge(&[&core_a, &core_b]);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", edge.port);
    let key = support::create_key(&http, &base, "race", json!({})).await;
    let created = support::post_with_key(
        &http,
        format!("{base}/api/v1/sessions"),
        &key,
        &json!({"messages": []}),
    )
    .await;
    let id = expect_data(created, 201).await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let sends = (0..10).map(|i| {
        let (http, base, key, id) = (&http, &base, &key, &id);
        async move {
            http.post(format!("{base}/api/v1/sessions/{id}/messages"))
                .bearer_auth(key)
                .json(&json!({"message": {"role": "user", "content": format!("q{i}")}}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses = futures::future::join_all(sends).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let messages = expect_data(
        http.get(format!("{base}/api/v1/sessions/{id}/messages"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await["messages"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(messages.len(), 20);
    for pair in messages.chunks(2) {
        assert_eq!(
            pair[1]["content"],
            format!("echo: {}", pair[0]["content"].as_str().unwrap())
        );
    }
}

async fn restart_keeps_acknowledged_turns(redis: Option<&support::Process>) {
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let options = CoreOptions {
        redis_url: redis.map(support::redis_url),
        upstream: Some(upstream.base_url()),
        data_dir: Some(dir.path().to_path_buf()),
        env: Vec::new(),
    };
    let mut core = support::spawn_core(&options);
    let http = reqwest::Client::new();
    let (key, id) = {
        let edge = support::spawn_edge(&[&core]);
        let base = format!("http://127.0.0.1:{}", edge.port);
        let key = support::create_key(&http, &base, "durable", json!({})).await;
        let created = support::post_with_key(
            &http,
            format!("{base}/api/v1/sessions"),
            &key,
            &json!({"messages": [{"role": "user", "content": "remember me"}]}),
        )
        .await;
        let id = expect_data(created, 201).await["sessionId"]
            .as_str()
            .unwrap()
            .to_string();
        (key, id)
    };
    core.kill(); // SIGKILL: no chance to flush anything
    let core = support::spawn_core(&options);
    let edge = support::spawn_edge(&[&core]);
    let base = format!("http://127.0.0.1:{}", edge.port);
    let messages = expect_data(
        http.get(format!("{base}/api/v1/sessions/{id}/messages"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await["messages"]
        .clone();
    assert_eq!(messages[0]["content"], "remember me");
    assert_eq!(messages[1]["content"], "echo: remember me");
}

#[tokio::test]
async fn a_killed_core_with_redis_loses_nothing_acknowledged() {
    let redis = support::start_redis();
    restart_keeps_acknowledged_turns(Some(&redis)).await;
}

#[tokio::test]
async fn a_killed_core_with_the_embedded_store_loses_nothing_acknowledged() {
    restart_keeps_acknowledged_turns(None).await;
}

/// Waits until Redis has been sent `count` commands naming `key` (seen through MONITOR), and
/// returns the last one.
async fn command_on(
    monitor: &mut tokio::io::Lines<tokio::io::BufReader<tokio::net::TcpStream>>,
    key: &str,
    count: usize,
) -> String {
    let named = format!("\"{key}\"");
    let mut seen = 0;
    loop {
        let line = tokio::time::timeout(std::time::Duration::from_secs(20), monitor.next_line())
            .await
            .expect("Redis saw the command in time")
            .unwrap()
            .expect("MONITOR goes on");
        if line.contains(&named) {
            seen += 1;
            if seen == count {
                return line;
            }
        }
    }
}

// Multi-threaded: the slow link runs on the test's runtime while the test waits for processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_lowering_a_key_s_limits_is_not_undone_by_its_use_on_another_core() {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let redis = support::start_redis();
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Core B reaches Redis through a slow link: a read-then-write over it stays open long enough
    // for core A's write to land in between.
    let slow = support::fault_proxy::FaultProxy::start(redis.addr()).await;
    let options_a = CoreOptions::shared(&redis, &upstream, dir.path());
    let options_b = CoreOptions {
        redis_url: Some(format!("redis://127.0.0.1:{}", slow.port)),
        env: vec![("OPENCLAW_REDIS_TIMEOUT_MS".into(), "10000".into())],
        ..options_a.clone()
    };
    let (core_a, core_b) = (
        support::spawn_core(&options_a),
        support::spawn_core(&options_b),
    );
    let (edge_a, edge_b) = (
        support::spawn_edge(&[&core_a]),
        support::spawn_edge(&[&core_b]),
    );
    let http = reqwest::Client::new();
    let a = format!("http://127.0.0.1:{}", edge_a.port);
    let b = format!("http://127.0.0.1:{}", edge_b.port);
    let created = support::post_with_key(
        &http,
        format!("{a}/api/v1/keys"),
        support::INTERNAL_TOKEN,
        &json!({"name": "tuned", "limits": {"requestsPerMinute": 1000}}),
    )
    .await;
    let created = expect_data(created, 201).await;
    let (id, key) = (
        created["id"].as_str().unwrap().to_string(),
        created["key"].as_str().unwrap().to_string(),
    );
    let record = format!("oc:key:{id}");

    let mut monitor = tokio::net::TcpStream::connect(redis.addr()).await.unwrap();
    monitor.write_all(b"MONITOR\r\n").await.unwrap();
    let mut monitor = tokio::io::BufReader::new(monitor).lines();
    slow.set_latency(
        std::time::Duration::from_millis(400),
        std::time::Duration::from_millis(400),
    );
    // The key's first use on core B: authenticating reads its record, then recording the use
    // reaches it again.
    let used = tokio::spawn({
        let (http, b, key) = (http.clone(), b.clone(), key.clone());
        async move {
            http.get(format!("{b}/api/v1/system/status"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    command_on(&mut monitor, &record, 2).await;
    // That moment, the administrator lowers the key's limits through core A.
    let lowered = http
        .patch(format!("{a}/api/v1/keys/{id}"))
        .bearer_auth(support::INTERNAL_TOKEN)
        .json(&json!({"limits": {"requestsPerMinute": 2}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect_data(lowered, 200).await["limits"]["requestsPerMinute"],
        2
    );
    assert!(used.await.unwrap().is_success());
    // Whatever core B still had in flight has landed by now.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    slow.heal();
    let stored = support::get_with_key(
        &http,
        format!("{a}/api/v1/keys/{id}"),
        support::INTERNAL_TOKEN,
    )
    .await;
    let stored = expect_data(stored, 200).await;
    assert_eq!(
        stored["limits"]["requestsPerMinute"], 2,
        "recording the key's use undid the administrator's change: {stored}"
    );
    assert!(
        !stored["lastUsedAt"].is_null(),
        "the use was recorded: {stored}"
    );

    // The lowered limit holds on core B once its cached copy of the key has expired.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response =
            support::get_with_key(&http, format!("{b}/api/v1/system/status"), &key).await;
        statuses.push(response.status().as_u16());
    }
    assert!(
        statuses.contains(&429),
        "2 requests a minute, 4 made: {statuses:?}"
    );
}

// Multi-threaded: the slow turn's client waits on the test's runtime while the test goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_turn_never_lands_in_a_session_created_again_under_its_id() {
    use std::time::{Duration, Instant};
    let redis = support::start_redis();
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let options = CoreOptions::shared(&redis, &upstream, dir.path());
    let (core_a, core_b) = (support::spawn_core(&options), support::spawn_core(&options));
    let (edge_a, edge_b) = (
        support::spawn_edge(&[&core_a]),
        support::spawn_edge(&[&core_b]),
    );
    let http = reqwest::Client::new();
    let a = format!("http://127.0.0.1:{}", edge_a.port);
    let b = format!("http://127.0.0.1:{}", edge_b.port);
    let key = support::create_key(&http, &a, "reborn", json!({})).await;
    let id = "sess-reborn";
    let create = |base: &str, content: &str| {
        let body = json!({"messages": [{"role": "user", "content": content}], "context": {"sessionId": id}});
        let (http, url, key) = (http.clone(), format!("{base}/api/v1/sessions"), key.clone());
        async move { support::post_with_key(&http, url, &key, &body).await }
    };
    let first = expect_data(create(&a, "first life").await, 201).await;
    assert_eq!(first["sessionId"], id);

    // A slow turn on the first session, through core A.
    upstream.then([support::Behaviour::Stall(Duration::from_secs(3))]);
    let asked = upstream.received().len();
    let slow_turn = tokio::spawn({
        let (http, a, key) = (http.clone(), a.clone(), key.clone());
        async move {
            support::post_with_key(
                &http,
                format!("{a}/api/v1/sessions/{id}/messages"),
                &key,
                &json!({"message": {"role": "user", "content": "stale question"}}),
            )
            .await
        }
    });
    let started = Instant::now();
    while upstream.received().len() == asked {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the slow turn reached the model"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Meanwhile, through core B, the session is deleted and created again under the same id.
    let deleted = http
        .delete(format!("{b}/api/v1/sessions/{id}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    expect_data(deleted, 200).await;
    let second = expect_data(create(&b, "second life").await, 201).await;
    assert_eq!(second["sessionId"], id);
    assert!(
        !slow_turn.is_finished(),
        "the slow turn is still being answered"
    );

    // The slow turn ends with a clear error, and the new session holds only its own turn.
    let error = support::expect_error(slow_turn.await.unwrap(), 404, "NOT_FOUND").await;
    let details = error["details"].as_str().unwrap();
    assert!(details.contains("deleted while"), "{error}");
    let history = expect_data(
        support::get_with_key(&http, format!("{a}/api/v1/sessions/{id}/messages"), &key).await,
        200,
    )
    .await;
    let contents: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents.len(), 2, "{history}");
    assert_eq!(contents[0], "second life", "{history}");
    assert!(
        !contents.iter().any(|c| c.contains("stale question")),
        "the old turn landed in the new session: {history}"
    );

    // And the new session takes its own turns at once.
    let sent = support::post_with_key(
        &http,
        format!("{b}/api/v1/sessions/{id}/messages"),
        &key,
        &json!({"message": {"role": "user", "content": "next"}}),
    )
    .await;
    expect_data(sent, 200).await;
}

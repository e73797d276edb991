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
    let created = http
        .post(format!("{a}/api/v1/sessions"))
        .bearer_auth(&key)
        .json(&json!({"messages": [{"role": "user", "content": "first"}]}))
        .send()
        .await
        .unwrap();
    let id = expect_data(created, 201).await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let sent = http
        .post(format!("{b}/api/v1/sessions/{id}/messages"))
        .bearer_auth(&key)
        .json(&json!({"message": {"role": "user", "content": "second"}}))
        .send()
        .await
        .unwrap();
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
    let created = http
        .post(format!("{base}/api/v1/sessions"))
        .bearer_auth(&key)
        .json(&json!({"messages": []}))
        .send()
        .await
        .unwrap();
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
        let created = http
            .post(format!("{base}/api/v1/sessions"))
            .bearer_auth(&key)
            .json(&json!({"messages": [{"role": "user", "content": "remember me"}]}))
            .send()
            .await
            .unwrap();
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

//! Sessions end to end: history, ownership, atomic turns, serialized sends.

mod support;

use serde_json::{Value, json};
use support::{Behaviour, Stack, expect_data, expect_error};

async fn create(stack: &Stack, key: &str, body: Value) -> Value {
    let response = stack.post("/api/v1/sessions", key, &body).await;
    expect_data(response, 201).await
}

async fn send(stack: &Stack, key: &str, id: &str, content: &str) -> reqwest::Response {
    stack
        .post(
            &format!("/api/v1/sessions/{id}/messages"),
            key,
            &json!({"message": {"role": "user", "content": content}}),
        )
        .await
}

#[tokio::test]
async fn the_whole_history_goes_upstream_in_order() {
    let stack = Stack::start().await;
    let key = stack.create_key("history").await;
    let data = create(
        &stack,
        &key,
        json!({"messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "one"}]}),
    )
    .await;
    let id = data["sessionId"].as_str().unwrap();
    for content in ["two", "three"] {
        expect_data(send(&stack, &key, id, content).await, 200).await;
    }
    let received = stack.upstream.received();
    assert_eq!(received.len(), 3);
    let roles_and_text = |body: &Value| -> Vec<(String, String)> {
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["role"].as_str().unwrap().into(),
                    m["content"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    assert_eq!(
        roles_and_text(&received[2]),
        vec![
            ("system".into(), "Be brief".into()),
            ("user".into(), "one".into()),
            ("assistant".into(), "echo: one".into()),
            ("user".into(), "two".into()),
            ("assistant".into(), "echo: two".into()),
            ("user".into(), "three".into()),
        ]
    );
    assert_eq!(
        stack.upstream.authorization_headers()[0],
        "Bearer upstream-secret-key"
    );

    // The stored history is what was sent plus the last reply.
    let response = stack
        .get(&format!("/api/v1/sessions/{id}/messages"), &key)
        .await;
    let data = expect_data(response, 200).await;
    let messages = data["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 7);
    assert_eq!(messages[6]["content"], "echo: three");
    assert!(messages[0]["createdAt"].as_str().unwrap().ends_with('Z'));

    let response = stack.get(&format!("/api/v1/sessions/{id}"), &key).await;
    let session = expect_data(response, 200).await;
    assert_eq!(session["messageCount"], 7);
    assert_eq!(session["model"], "zai/glm-4.7-flash");
}

#[tokio::test]
async fn a_session_belongs_to_its_key_and_is_invisible_to_others() {
    let stack = Stack::start().await;
    let alice = stack.create_key("alice").await;
    let bob = stack.create_key("bob").await;
    let data = create(
        &stack,
        &alice,
        json!({"messages": [{"role": "user", "content": "secret plan"}]}),
    )
    .await;
    let id = data["sessionId"].as_str().unwrap().to_string();

    let get = stack.get(&format!("/api/v1/sessions/{id}"), &bob).await;
    expect_error(get, 404, "NOT_FOUND").await;
    expect_error(send(&stack, &bob, &id, "hi").await, 404, "NOT_FOUND").await;
    let history = stack
        .get(&format!("/api/v1/sessions/{id}/messages"), &bob)
        .await;
    expect_error(history, 404, "NOT_FOUND").await;
    let delete = stack
        .http
        .delete(stack.url(&format!("/api/v1/sessions/{id}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    expect_error(delete, 404, "NOT_FOUND").await;
    let list = stack.get("/api/v1/sessions", &bob).await;
    assert_eq!(expect_data(list, 200).await["sessions"], json!([]));

    // Bob naming Alice's session id in context gets a session of his own, not hers.
    let data = create(
        &stack,
        &bob,
        json!({"messages": [{"role": "user", "content": "x"}], "context": {"sessionId": id}}),
    )
    .await;
    assert_eq!(data["sessionId"], id);
    let mine = stack
        .get(&format!("/api/v1/sessions/{id}/messages"), &alice)
        .await;
    let messages = expect_data(mine, 200).await["messages"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(messages.len(), 2, "Alice's history is untouched");
    assert_eq!(messages[0]["content"], "secret plan");
}

#[tokio::test]
async fn context_session_id_continues_the_callers_session() {
    let stack = Stack::start().await;
    let key = stack.create_key("continue").await;
    let first = create(&stack, &key, json!({"messages": [{"role": "user", "content": "a"}], "context": {"sessionId": "my-chat"}})).await;
    assert_eq!(first["sessionId"], "my-chat");
    let response = stack.post("/api/v1/sessions", &key, &json!({"messages": [{"role": "user", "content": "b"}], "context": {"sessionId": "my-chat"}})).await;
    let second = expect_data(response, 200).await;
    assert_eq!(second["sessionId"], "my-chat");
    assert_eq!(second["message"]["content"], "echo: b");
    let sent = stack.upstream.received();
    assert_eq!(
        sent[1]["messages"].as_array().unwrap().len(),
        3,
        "a, echo: a, b"
    );
}

#[tokio::test]
async fn a_failed_model_call_stores_nothing() {
    let stack = Stack::start().await;
    let key = stack.create_key("atomic").await;
    let data = create(
        &stack,
        &key,
        json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    let id = data["sessionId"].as_str().unwrap().to_string();
    stack.upstream.behave(Behaviour::Fail {
        status: 500,
        message: "boom".into(),
    });
    let error = expect_error(
        send(&stack, &key, &id, "lost?").await,
        502,
        "UPSTREAM_ERROR",
    )
    .await;
    assert!(
        error["details"].as_str().unwrap().contains("zai"),
        "{error}"
    );
    assert!(!error.to_string().contains("upstream-secret-key"));
    let response = stack.get(&format!("/api/v1/sessions/{id}"), &key).await;
    assert_eq!(
        expect_data(response, 200).await["messageCount"],
        2,
        "no half turn was stored"
    );

    // A create whose model call fails creates no session.
    let response = stack.post("/api/v1/sessions", &key, &json!({"messages": [{"role": "user", "content": "x"}], "context": {"sessionId": "never"}})).await;
    expect_error(response, 502, "UPSTREAM_ERROR").await;
    let response = stack.get("/api/v1/sessions/never", &key).await;
    expect_error(response, 404, "NOT_FOUND").await;
}

#[tokio::test]
async fn concurrent_sends_to_one_session_are_served_one_after_the_other() {
    let stack = Stack::start().await;
    let key = stack.create_key("serial").await;
    let data = create(&stack, &key, json!({"messages": []})).await;
    let id = data["sessionId"].as_str().unwrap().to_string();
    stack
        .upstream
        .behave(Behaviour::Stall(std::time::Duration::from_millis(50)));
    let sends = (0..8).map(|i| {
        let (stack, key, id) = (&stack, &key, &id);
        async move {
            send(stack, key, id, &format!("m{i}"))
                .await
                .status()
                .as_u16()
        }
    });
    let statuses = futures::future::join_all(sends).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let response = stack
        .get(&format!("/api/v1/sessions/{id}/messages"), &key)
        .await;
    let messages = expect_data(response, 200).await["messages"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(messages.len(), 16);
    for pair in messages.chunks(2) {
        let asked = pair[0]["content"].as_str().unwrap();
        assert_eq!(pair[0]["role"], "user");
        assert_eq!(
            pair[1]["content"],
            format!("echo: {asked}"),
            "each reply follows its own question"
        );
    }
    // Each model call saw every earlier turn: the k-th call had 2k+1 messages.
    let mut lengths: Vec<usize> = stack
        .upstream
        .received()
        .iter()
        .map(|b| b["messages"].as_array().unwrap().len())
        .collect();
    lengths.sort_unstable();
    assert_eq!(lengths, (0..8).map(|k| 2 * k + 1).collect::<Vec<_>>());
}

#[tokio::test]
async fn sessions_list_page_and_delete() {
    let stack = Stack::start().await;
    let key = stack.create_key("list").await;
    for i in 0..3 {
        create(
            &stack,
            &key,
            json!({"messages": [], "context": {"sessionId": format!("s{i}")}}),
        )
        .await;
    }
    let page = stack.get("/api/v1/sessions?pageSize=2", &key).await;
    let page = expect_data(page, 200).await;
    assert_eq!(page["sessions"].as_array().unwrap().len(), 2);
    let token = page["nextPageToken"].as_str().expect("a second page");
    let rest = stack
        .get(
            &format!("/api/v1/sessions?pageSize=2&pageToken={token}"),
            &key,
        )
        .await;
    let rest = expect_data(rest, 200).await;
    assert_eq!(rest["sessions"].as_array().unwrap().len(), 1);

    let delete = stack
        .http
        .delete(stack.url("/api/v1/sessions/s1"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(expect_data(delete, 200).await["deleted"], true);
    let again = stack
        .http
        .delete(stack.url("/api/v1/sessions/s1"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    expect_error(again, 404, "NOT_FOUND").await;
    let gone = send(&stack, &key, "s1", "hello?").await;
    expect_error(gone, 404, "NOT_FOUND").await;
}

#[tokio::test]
async fn without_a_provider_key_the_simulator_answers_and_says_so() {
    let redis = support::start_redis();
    let dir = tempfile::tempdir().unwrap();
    let core = support::spawn_core(&support::CoreOptions {
        redis_url: Some(support::redis_url(&redis)),
        upstream: None,
        data_dir: Some(dir.path().to_path_buf()),
        env: Vec::new(),
    });
    let edge = support::spawn_edge(&[&core]);
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", edge.port);
    let key = support::create_key(&http, &base, "sim", json!({})).await;
    let response = support::post_with_key(
        &http,
        format!("{base}/api/v1/sessions"),
        &key,
        &json!({"model": "zai/glm-4.7-flash", "messages": [{"role": "user", "content": "Hello"}]}),
    )
    .await;
    assert_eq!(response.headers()["openclaw-simulated"], "true");
    let data = expect_data(response, 201).await;
    assert!(
        data["message"]["content"]
            .as_str()
            .unwrap()
            .contains("simulator")
    );
    assert!(data["usage"]["promptTokens"].as_u64().unwrap() > 0);
    let status = support::get_with_key(&http, format!("{base}/api/v1/system/status"), &key).await;
    let status = expect_data(status, 200).await;
    assert_eq!(status["simulated"], true);
    let zai = status["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "zai")
        .cloned()
        .unwrap();
    assert_eq!(zai["status"], "simulated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_on_a_send_leaves_the_session_whole_and_free() {
    let stack = Stack::start().await;
    let key = stack.create_key("impatient").await;
    let data = create(&stack, &key, json!({"messages": []})).await;
    let id = data["sessionId"].as_str().unwrap().to_string();
    stack
        .upstream
        .behave(Behaviour::Stall(std::time::Duration::from_millis(1000)));
    let gave_up = stack
        .http
        .post(stack.url(&format!("/api/v1/sessions/{id}/messages")))
        .bearer_auth(&key)
        .timeout(std::time::Duration::from_millis(200))
        .json(&json!({"message": {"role": "user", "content": "first"}}))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client gave up before the reply");
    let started = std::time::Instant::now();
    let second = send(&stack, &key, &id, "second").await;
    expect_data(second, 200).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the abandoned turn did not hold the session's lock ({:?})",
        started.elapsed()
    );
    let response = stack
        .get(&format!("/api/v1/sessions/{id}/messages"), &key)
        .await;
    let messages = expect_data(response, 200).await["messages"].clone();
    let contents: Vec<&str> = messages
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        ["first", "echo: first", "second", "echo: second"],
        "the abandoned turn was finished and stored whole, before the next"
    );
}

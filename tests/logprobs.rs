//! Log probabilities end to end: `logprobs` and `top_logprobs` reach an OpenAI-compatible
//! provider, and what it answers comes back as it gave it, whole (`choices[0].logprobs`) and
//! streamed (each chunk's own), on `/v1` and on the sessions API; what cannot give them (the
//! offline simulator) refuses them by name, and out-of-range values are refused.

mod support;

use serde_json::{Value, json};
use support::{Behaviour, Offline, Stack, expect_data, expect_error};

const MODEL: &str = "zai/glm-4.7-flash";
const ANSWER: &str = "Paris is sunny";

fn tokens(logprobs: &Value) -> Vec<(String, f64, usize)> {
    logprobs["content"]
        .as_array()
        .unwrap_or_else(|| panic!("logprobs.content: {logprobs}"))
        .iter()
        .map(|t| {
            (
                t["token"].as_str().unwrap().to_owned(),
                t["logprob"].as_f64().unwrap(),
                t["top_logprobs"].as_array().map_or(0, Vec::len),
            )
        })
        .collect()
}

fn expected() -> Vec<(String, f64, usize)> {
    ANSWER
        .split_inclusive(' ')
        .enumerate()
        .map(|(i, word)| (word.to_owned(), -((i + 1) as f64) / 10.0, 2))
        .collect()
}

/// The `data:` JSON events of a `/v1` stream, `[DONE]` left out.
fn chunks(body: &str) -> Vec<Value> {
    body.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter(|data| *data != "[DONE]")
        .map(|data| serde_json::from_str(data).unwrap())
        .collect()
}

#[tokio::test]
async fn v1_returns_the_providers_log_probabilities_whole_and_streamed() {
    let stack = Stack::embedded().await;
    let key = stack.create_key("logprobs-v1").await;
    stack.upstream.behave(Behaviour::ReplyLogprobs {
        content: ANSWER.into(),
    });
    let ask = json!({"model": MODEL, "messages": [{"role": "user", "content": "Weather?"}],
                     "logprobs": true, "top_logprobs": 2});
    let whole = stack.post("/v1/chat/completions", &key, &ask).await;
    assert_eq!(whole.status(), 200);
    let whole: Value = whole.json().await.unwrap();
    assert_eq!(
        tokens(&whole["choices"][0]["logprobs"]),
        expected(),
        "{whole}"
    );
    let sent = stack.upstream.received();
    assert_eq!(sent[0]["logprobs"], true);
    assert_eq!(sent[0]["top_logprobs"], 2);

    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let response = stack.post("/v1/chat/completions", &key, &streamed).await;
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    let mut seen = Vec::new();
    for chunk in chunks(&body) {
        let choice = &chunk["choices"][0];
        if choice["logprobs"].is_null() {
            continue;
        }
        // Each piece of text comes with its own tokens' log probabilities.
        let piece = tokens(&choice["logprobs"]);
        let text: String = piece.iter().map(|(t, _, _)| t.as_str()).collect();
        assert_eq!(choice["delta"]["content"], text, "{chunk}");
        seen.extend(piece);
    }
    assert_eq!(seen, expected(), "{body}");

    // Not asked: none sent, none returned.
    let plain = stack
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": MODEL, "messages": [{"role": "user", "content": "Weather?"}]}),
        )
        .await;
    let plain: Value = plain.json().await.unwrap();
    assert!(plain["choices"][0]["logprobs"].is_null(), "{plain}");
    assert!(stack.upstream.received()[2].get("logprobs").is_none());
}

#[tokio::test]
async fn a_session_send_returns_them_whole_and_streamed() {
    let stack = Stack::embedded().await;
    let key = stack.create_key("logprobs-session").await;
    stack.upstream.behave(Behaviour::ReplyLogprobs {
        content: ANSWER.into(),
    });
    let created = stack
        .post(
            "/api/v1/sessions",
            &key,
            &json!({"model": MODEL, "messages": []}),
        )
        .await;
    let id = expect_data(created, 201).await["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/v1/sessions/{id}/messages");
    let sent = stack
        .post(
            &path,
            &key,
            &json!({"message": {"role": "user", "content": "Weather?"}, "logprobs": true, "topLogprobs": 2}),
        )
        .await;
    let sent = expect_data(sent, 200).await;
    assert_eq!(tokens(&sent["logprobs"]), expected(), "{sent}");

    let streamed = stack
        .post(
            &path,
            &key,
            &json!({"message": {"role": "user", "content": "Again?"}, "logprobs": true,
                    "topLogprobs": 2, "stream": true}),
        )
        .await;
    let body = streamed.text().await.unwrap();
    let mut seen = Vec::new();
    let mut event = "";
    for line in body.lines() {
        if let Some(name) = line.strip_prefix("event: ") {
            event = name;
        } else if let Some(data) = line.strip_prefix("data: ")
            && event == "delta"
        {
            let data: Value = serde_json::from_str(data).unwrap();
            if !data["logprobs"].is_null() {
                seen.extend(tokens(&data["logprobs"]));
            }
        } else if let Some(data) = line.strip_prefix("data: ")
            && event == "done"
        {
            let done: Value = serde_json::from_str(data).unwrap();
            assert_eq!(tokens(&done["logprobs"]), expected(), "{done}");
        }
    }
    assert_eq!(seen, expected(), "{body}");
}

#[tokio::test]
async fn what_cannot_give_them_refuses_them_by_name() {
    let stack = Stack::embedded().await;
    let key = stack.create_key("logprobs-refused").await;
    let user = json!([{"role": "user", "content": "hi"}]);
    for (extra, param) in [
        (json!({"top_logprobs": 2}), "top_logprobs"),
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
    ] {
        let mut body = json!({"model": MODEL, "messages": user});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let response = stack.post("/v1/chat/completions", &key, &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["param"], param, "{error}");
    }
    let created = stack
        .post(
            "/api/v1/sessions",
            &key,
            &json!({"model": MODEL, "messages": user, "topLogprobs": 3}),
        )
        .await;
    let error = expect_error(created, 400, "INVALID_REQUEST").await;
    assert!(
        error["details"].as_str().unwrap().contains("'topLogprobs'"),
        "{error}"
    );
    assert!(stack.upstream.received().is_empty());

    // The offline simulator writes its answers: it has no log probabilities to give.
    let offline = Offline::start("offline-logprobs").await;
    let response = offline
        .post(
            "/v1/chat/completions",
            &json!({"model": MODEL, "messages": user, "logprobs": true}),
        )
        .await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["param"], "logprobs", "{error}");
}

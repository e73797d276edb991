//! Images in user messages, end to end: `/v1` and the sessions API carry text and image parts
//! (by URL and by data URL) to an OpenAI-compatible upstream exactly as sent, the session's
//! history keeps and returns them and sends them again on the next turn, an image counts in the
//! prompt estimate, the offline simulator sees them, and what is not an image a provider can
//! read is refused naming the field.

mod support;

use serde_json::{Value, json};
use support::{Offline, Stack, expect_data, expect_error};

const MODEL: &str = "zai/glm-4.7-flash";
const PNG: &str = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg==";

fn parts_v1() -> Value {
    json!([
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": PNG}}
    ])
}

#[tokio::test]
async fn v1_carries_image_parts_to_the_provider_as_sent() {
    let stack = Stack::embedded().await;
    let key = stack.create_key("images-v1").await;
    let response = stack
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": MODEL, "messages": [{"role": "user", "content": parts_v1()}]}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let received = stack.upstream.received();
    assert_eq!(received[0]["messages"][0]["content"], parts_v1());
}

#[tokio::test]
async fn a_session_keeps_its_images_and_sends_them_again() {
    let stack = Stack::embedded().await;
    let key = stack.create_key("images-session").await;
    let parts = json!([
        {"type": "text", "text": "Describe "},
        {"type": "text", "text": "this."},
        {"type": "image_url", "imageUrl": {"url": PNG, "detail": "low"}}
    ]);
    let created = stack
        .post(
            "/api/v1/sessions",
            &key,
            &json!({"model": MODEL, "messages": [{"role": "user", "content": parts}]}),
        )
        .await;
    let created = expect_data(created, 201).await;
    let id = created["sessionId"].as_str().unwrap().to_owned();
    let sent = stack
        .post(
            &format!("/api/v1/sessions/{id}/messages"),
            &key,
            &json!({"message": {"role": "user", "content": "And now?"}}),
        )
        .await;
    expect_data(sent, 200).await;

    let history = expect_data(
        stack
            .get(&format!("/api/v1/sessions/{id}/messages"), &key)
            .await,
        200,
    )
    .await;
    let first = &history["messages"][0];
    assert_eq!(first["content"], "Describe this.", "{history}");
    assert_eq!(first["parts"], parts, "{history}");
    assert!(history["messages"][2].get("parts").is_none(), "{history}");

    // The second turn sends the first message again with its image, in OpenAI's shape.
    let received = stack.upstream.received();
    assert_eq!(received.len(), 2);
    assert_eq!(
        received[1]["messages"][0]["content"],
        json!([
            {"type": "text", "text": "Describe "},
            {"type": "text", "text": "this."},
            {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}}
        ])
    );
    assert_eq!(received[1]["messages"][2]["content"], "And now?");
}

/// An image counts in the prompt estimate the limits reserve: a key whose context limit holds
/// the text but not a full-detail image (765 tokens) is refused before the provider is asked.
#[tokio::test]
async fn an_image_counts_in_the_prompt_estimate() {
    let stack = Stack::embedded().await;
    let key = support::create_key(
        &stack.http,
        &stack.url(""),
        "images-limits",
        json!({"limits": {"contextTokensPerMinute": 500}}),
    )
    .await;
    let text_only = stack
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": MODEL, "messages": [{"role": "user", "content": "What is in this?"}]}),
        )
        .await;
    assert_eq!(text_only.status(), 200);
    let with_image = stack
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": MODEL, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is in this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
            ]}]}),
        )
        .await;
    // Bigger than the limit can ever admit: refused outright, the image's tokens counted.
    assert_eq!(with_image.status(), 400);
    let error: Value = with_image.json().await.unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    let context: u32 = message
        .split(" of context)")
        .next()
        .and_then(|head| head.rsplit('(').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the message says the context it needs: {message}"));
    assert!(
        context > 765,
        "a full-detail image counts 765 tokens: {message}"
    );
    assert_eq!(stack.upstream.received().len(), 1);
}

#[tokio::test]
async fn the_offline_simulator_sees_the_images() {
    let offline = Offline::start("offline-images").await;
    let response = offline
        .post(
            "/v1/chat/completions",
            &json!({"model": MODEL, "messages": [{"role": "user", "content": parts_v1()}]}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("with 2 images"), "{text}");
}

#[tokio::test]
async fn what_is_not_a_readable_image_is_refused_by_name() {
    let stack = Stack::embedded().await;
    let key = stack.create_key("images-refused").await;
    let image = |url: &str| json!({"type": "image_url", "image_url": {"url": url}});
    let cases = [
        (
            json!([image("ftp://example.com/a.png")]),
            "messages[0].content[0].image_url.url",
        ),
        (
            json!([image("data:image/tiff;base64,AAAA")]),
            "messages[0].content[0].image_url.url",
        ),
        (
            json!([image("data:image/png;base64,not base64!")]),
            "messages[0].content[0].image_url.url",
        ),
        (
            json!([{"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "ultra"}}]),
            "messages[0].content[0].image_url.detail",
        ),
        (
            json!([{"type": "image_url"}]),
            "messages[0].content[0].image_url",
        ),
        (
            json!([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]),
            "messages[0].content[0]",
        ),
        (json!([{"type": "text"}]), "messages[0].content[0].text"),
    ];
    for (content, param) in cases {
        let response = stack
            .post(
                "/v1/chat/completions",
                &key,
                &json!({"model": MODEL, "messages": [{"role": "user", "content": content}]}),
            )
            .await;
        assert_eq!(response.status(), 400, "{content}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["param"], param, "{error}");
        assert_eq!(error["error"]["type"], "invalid_request_error");
    }
    // An image from the assistant or the system prompt: user messages only.
    let response = stack
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": MODEL, "messages": [
                {"role": "system", "content": [image("https://example.com/a.png")]},
                {"role": "user", "content": "hi"}
            ]}),
        )
        .await;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"]["param"], "messages[0].content", "{error}");

    // The sessions API, in its own spelling and envelope.
    let response = stack
        .post(
            "/api/v1/sessions",
            &key,
            &json!({"model": MODEL, "messages": [{"role": "user", "content": [
                {"type": "image_url", "imageUrl": {"url": "file:///etc/passwd"}}
            ]}]}),
        )
        .await;
    let error = expect_error(response, 400, "INVALID_REQUEST").await;
    assert!(
        error["details"]
            .as_str()
            .unwrap()
            .contains("'messages[0].content[0].imageUrl.url'"),
        "{error}"
    );
    assert!(stack.upstream.received().is_empty());
}

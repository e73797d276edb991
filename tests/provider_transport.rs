//! How the core reaches a model provider: straight to it over kept-alive connections, or through
//! the proxy the environment names (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, minus
//! `NO_PROXY`), as an operator behind an egress proxy expects.

mod support;

use serde_json::{Value, json};
use support::Stack;

async fn complete(stack: &Stack, text: &str) -> (u16, Value) {
    let key = stack.create_key("transport").await;
    let response = stack
        .post(
            "/v1/chat/completions",
            &key,
            &json!({"model": "zai/glm-4.7-flash", "messages": [{"role": "user", "content": text}]}),
        )
        .await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_provider_behind_the_proxy_the_environment_names_is_reached_through_it() {
    // The provider's host does not resolve: only the proxy can reach it. The fake upstream
    // plays the proxy, answering the absolute-form request a proxy is sent.
    let stack = Stack::with_core_env(|upstream| {
        vec![
            ("ZAI_BASE_URL".into(), "http://provider.invalid/v1".into()),
            ("HTTP_PROXY".into(), format!("http://{}", upstream.addr)),
        ]
    })
    .await;
    let (status, body) = complete(&stack, "through the proxy").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|c| c.contains("through the proxy")),
        "{body}"
    );
    let sent = stack.upstream.received();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["messages"][0]["content"], "through the proxy");
    assert_eq!(
        stack.upstream.authorization_headers(),
        ["Bearer upstream-secret-key"],
        "the provider's key goes with the call through the proxy"
    );
}

#[tokio::test]
async fn a_proxy_that_does_not_answer_makes_the_provider_unreachable_unless_no_proxy_exempts_it() {
    // Nothing listens on port 1: a call sent to this proxy fails.
    let dead_proxy = || vec![("HTTP_PROXY".to_string(), "http://127.0.0.1:1".to_string())];
    let proxied = Stack::with_core_env(|_| dead_proxy()).await;
    let (status, body) = complete(&proxied, "via a dead proxy").await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("Could not reach")),
        "{body}"
    );
    assert!(proxied.upstream.received().is_empty());

    let exempt = Stack::with_core_env(|_| {
        let mut env = dead_proxy();
        env.push(("NO_PROXY".into(), "127.0.0.1".into()));
        env
    })
    .await;
    let (status, body) = complete(&exempt, "straight to the provider").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(exempt.upstream.received().len(), 1);
    assert_eq!(
        exempt.upstream.authorization_headers(),
        ["Bearer upstream-secret-key"]
    );
}

//! What schema-driven fuzzing of the served OpenAPI document (scripts/schemathesis.sh) found,
//! kept as regression tests: every answer's status is one the document declares for it, in the
//! shape it declares.

mod support;

use serde_json::Value;
use support::Stack;

async fn served_document(stack: &Stack) -> Value {
    stack
        .http
        .get(stack.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .expect("the OpenAPI document")
}

fn operations(document: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            if ["get", "post", "patch", "put", "delete"].contains(&method.as_str()) {
                out.push((path.clone(), method.clone(), operation.clone()));
            }
        }
    }
    out
}

fn declares_version_header(operation: &Value) -> bool {
    operation["parameters"]
        .as_array()
        .is_some_and(|params| params.iter().any(|p| p["name"] == "OpenClaw-Version"))
}

#[tokio::test]
async fn every_guide_operation_declares_the_400_an_unsupported_version_gets() {
    let stack = Stack::start().await;
    let document = served_document(&stack).await;
    for (path, method, operation) in operations(&document) {
        let versioned = path.starts_with("/api/");
        assert_eq!(
            declares_version_header(&operation),
            versioned,
            "{method} {path}: OpenClaw-Version is checked on the guide's API only"
        );
        if versioned {
            assert!(
                operation["responses"]["400"].is_object(),
                "{method} {path} can answer 400 for OpenClaw-Version but does not declare it"
            );
        }
    }

    // Found on GET/DELETE /api/v1/cron/jobs/{jobId} and POST .../run, which declared no 400.
    let key = stack.create_key("versions").await;
    let response = stack
        .http
        .get(stack.url("/api/v1/cron/jobs/some-job"))
        .bearer_auth(&key)
        .header("OpenClaw-Version", "AAA")
        .send()
        .await
        .unwrap();
    support::expect_error(response, 400, "INVALID_REQUEST").await;
}

#[tokio::test]
async fn probes_and_the_openai_surface_ignore_the_guide_version_header() {
    let stack = Stack::start().await;
    let key = stack.create_key("unversioned").await;
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        let response = stack
            .http
            .get(stack.url(path))
            .header("OpenClaw-Version", "AAA")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let response = stack
        .http
        .get(stack.url("/v1/models"))
        .bearer_auth(&key)
        .header("OpenClaw-Version", "AAA")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let models: Value = response.json().await.unwrap();
    assert_eq!(models["object"], "list", "{models}");

    // An OpenAI client's error is OpenAI's shape, never the guide's envelope.
    let response = stack
        .http
        .post(stack.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("OpenClaw-Version", "AAA")
        .json(&serde_json::json!({"model": "zai/glm-4.7-flash", "messages": [], "n": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["type"].is_string(), "{body}");
    assert!(body.get("success").is_none(), "{body}");
}

#[tokio::test]
async fn a_completion_without_a_json_body_gets_the_declared_415() {
    let stack = Stack::start().await;
    let key = stack.create_key("media-type").await;
    let response = stack
        .http
        .post(stack.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");

    let document = served_document(&stack).await;
    let responses = &document["paths"]["/v1/chat/completions"]["post"]["responses"];
    for status in ["413", "415"] {
        assert!(
            responses[status].is_object(),
            "{status} undeclared: {responses}"
        );
    }
}

/// Whether `value` satisfies the string schema `schema` declares (length bounds only: the one
/// kind of constraint the document puts on `X-Request-ID`).
fn string_schema_accepts(schema: &Value, value: &str) -> bool {
    let len = value.chars().count() as u64;
    schema["minLength"].as_u64().is_none_or(|min| len >= min)
        && schema["maxLength"].as_u64().is_none_or(|max| len <= max)
}

// Found by schemathesis (ST201) on GET /healthz and GET /readyz: the document bounded
// X-Request-ID to 1-128 characters, yet an empty one was accepted (as it is everywhere: an
// unusable ID is replaced by a generated one). A probe must never turn an orchestrator away over a
// header, so the document now describes what every route does.
#[tokio::test]
async fn probes_answer_an_empty_request_id_as_their_document_says() {
    let stack = Stack::start().await;
    let document = served_document(&stack).await;
    for path in ["/healthz", "/readyz"] {
        let parameter = document["paths"][path]["get"]["parameters"]
            .as_array()
            .and_then(|params| params.iter().find(|p| p["name"] == "X-Request-ID"))
            .unwrap_or_else(|| panic!("GET {path} documents X-Request-ID"))
            .clone();
        let documented_accepts_empty = string_schema_accepts(&parameter["schema"], "");
        let response = stack
            .http
            .get(stack.url(path))
            .header("x-request-id", "")
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answered_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert_eq!(
            status.is_client_error(),
            !documented_accepts_empty,
            "GET {path}: the document {} an empty X-Request-ID, the probe answered {status}",
            if documented_accepts_empty {
                "allows"
            } else {
                "forbids"
            }
        );
        assert!(status.is_success(), "GET {path} answered {status}");
        assert!(
            !answered_id.is_empty(),
            "GET {path}: an empty X-Request-ID is replaced by a generated one"
        );
    }
    // Every other operation treats the header the same way, so the document says one thing.
    for (path, method, operation) in operations(&document) {
        if let Some(parameter) = operation["parameters"]
            .as_array()
            .and_then(|params| params.iter().find(|p| p["name"] == "X-Request-ID"))
        {
            assert!(
                string_schema_accepts(&parameter["schema"], ""),
                "{method} {path} forbids the empty X-Request-ID every route accepts"
            );
        }
    }
}

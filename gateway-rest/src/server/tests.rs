//! The router as a client sees it, driven in-process. The core URL points at a closed port: every
//! rejection checked here must happen before the edge calls the core.

use std::time::{Duration, Instant};

use axum::{
    Router,
    body::{Body, to_bytes},
    http::{HeaderMap, Method, Request, StatusCode, header},
};
use serde_json::Value;
use tower::ServiceExt as _;

use super::router;
use crate::EdgeConfig;

const BODY_LIMIT: usize = 256;

/// A local port nobody listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn app() -> Router {
    router(&EdgeConfig {
        core_urls: vec![format!("http://127.0.0.1:{}", closed_port())],
        max_body_bytes: BODY_LIMIT,
        core_timeout: Duration::from_secs(10),
        ..EdgeConfig::default()
    })
    .expect("router")
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn details(&self) -> &str {
        self.body["error"]["details"].as_str().unwrap_or_default()
    }

    fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.body["success"], false, "{}", self.body);
        assert_eq!(self.body["error"]["code"], code, "{}", self.body);
        assert!(self.body["error"]["message"].is_string(), "{}", self.body);
        assert!(!self.details().is_empty(), "{}", self.body);
        assert!(self.body["timestamp"].is_string(), "{}", self.body);
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert!(self.header("x-request-id").is_some());
        assert_eq!(self.header("openclaw-version"), Some("1.0"));
    }
}

async fn send(request: Request<Body>) -> Answer {
    let response = app().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|error| {
        panic!(
            "{status}: body is not JSON ({error}): {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    Answer {
        status,
        headers,
        body,
    }
}

fn post_json(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, "Bearer oc_test")
        .body(body.into())
        .expect("request")
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).expect("request")
}

#[tokio::test]
async fn malformed_json_names_line_and_column() {
    let answer = send(post_json("/api/v1/sessions", "{\"model\": }")).await;
    answer.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    assert!(
        answer.details().contains("line 1 column 11"),
        "{}",
        answer.details()
    );
}

#[tokio::test]
async fn wrong_field_type_names_the_field_path() {
    let answer = send(post_json(
        "/api/v1/sessions",
        r#"{"model":"zai/glm-4.7-flash","messages":[{"role":7,"content":"Hello"}]}"#,
    ))
    .await;
    answer.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    assert_eq!(
        answer.details(),
        "The field 'messages[0].role' must be a string"
    );
}

#[tokio::test]
async fn send_message_body_types_are_checked_too() {
    let answer = send(post_json(
        "/api/v1/sessions/s-1/messages",
        r#"{"message":{"role":"user","content":"hi"},"maxTokens":"many"}"#,
    ))
    .await;
    answer.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    assert_eq!(
        answer.details(),
        "The field 'maxTokens' must be a non-negative integer in range"
    );
}

#[tokio::test]
async fn invalid_utf8_is_rejected_with_the_envelope() {
    let answer = send(post_json(
        "/api/v1/sessions",
        b"{\"model\":\"\xc3\x28\"}".to_vec(),
    ))
    .await;
    answer.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    assert!(answer.details().contains("UTF-8"), "{}", answer.details());
}

#[tokio::test]
async fn missing_or_wrong_content_type_is_415() {
    let missing = Request::post("/api/v1/sessions")
        .body(Body::from(r#"{"messages":[]}"#))
        .expect("request");
    let answer = send(missing).await;
    answer.assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "INVALID_REQUEST");
    assert_eq!(
        answer.details(),
        "Send the body as JSON with Content-Type: application/json"
    );

    let form = Request::post("/api/v1/keys")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("name=x"))
        .expect("request");
    send(form)
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "INVALID_REQUEST");
}

#[tokio::test]
async fn oversized_body_is_413_naming_the_limit() {
    let content = "x".repeat(BODY_LIMIT * 2);
    let body = format!(r#"{{"messages":[{{"role":"user","content":"{content}"}}]}}"#);
    let answer = send(post_json("/api/v1/sessions", body)).await;
    answer.assert_error(StatusCode::PAYLOAD_TOO_LARGE, "INVALID_REQUEST");
    assert!(
        answer.details().contains(&BODY_LIMIT.to_string()),
        "{}",
        answer.details()
    );
}

#[tokio::test]
async fn unknown_route_is_404_naming_method_path_and_the_spec() {
    let answer = send(get("/api/v1/nothing-here")).await;
    answer.assert_error(StatusCode::NOT_FOUND, "NOT_FOUND");
    let details = answer.details();
    assert!(details.contains("GET /api/v1/nothing-here"), "{details}");
    assert!(details.contains("/openapi.json"), "{details}");
}

#[tokio::test]
async fn wrong_method_is_405_with_allow_header() {
    let request = Request::delete("/api/v1/system/status")
        .body(Body::empty())
        .expect("request");
    let answer = send(request).await;
    answer.assert_error(StatusCode::METHOD_NOT_ALLOWED, "INVALID_REQUEST");
    let allow = answer.header("allow").expect("Allow header");
    assert!(allow.contains("GET"), "{allow}");
    assert!(answer.details().contains("DELETE"), "{}", answer.details());

    let request = Request::put("/api/v1/sessions")
        .body(Body::empty())
        .expect("request");
    let answer = send(request).await;
    answer.assert_error(StatusCode::METHOD_NOT_ALLOWED, "INVALID_REQUEST");
    let allow = answer.header("allow").expect("Allow header");
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
}

#[tokio::test]
async fn bad_query_parameter_is_400_before_the_core_is_called() {
    let answer = send(get("/api/v1/sessions?pageSize=lots")).await;
    answer.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    assert!(
        answer.details().contains("pageSize"),
        "{}",
        answer.details()
    );
}

#[tokio::test]
async fn client_request_id_is_echoed() {
    let request = Request::get("/api/v1/unknown")
        .header("x-request-id", "my-trace-42")
        .body(Body::empty())
        .expect("request");
    let answer = send(request).await;
    assert_eq!(answer.header("x-request-id"), Some("my-trace-42"));
}

#[tokio::test]
async fn request_id_is_generated_when_absent_or_unusable() {
    let absent = send(get("/healthz")).await;
    let generated = absent.header("x-request-id").expect("request id");
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");

    let too_long = Request::get("/healthz")
        .header("x-request-id", "z".repeat(200))
        .body(Body::empty())
        .expect("request");
    let answer = send(too_long).await;
    let replaced = answer.header("x-request-id").expect("request id");
    assert!(uuid::Uuid::parse_str(replaced).is_ok(), "{replaced}");
}

#[tokio::test]
async fn unsupported_version_is_rejected_naming_the_supported_ones() {
    let request = Request::get("/api/v1/system/status")
        .header("openclaw-version", "2.0")
        .header("x-request-id", "v-check")
        .body(Body::empty())
        .expect("request");
    let answer = send(request).await;
    answer.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    assert!(
        answer.details().contains("Supported versions: 1.0"),
        "{}",
        answer.details()
    );
    assert_eq!(answer.header("x-request-id"), Some("v-check"));
}

#[tokio::test]
async fn version_1_0_and_no_version_are_accepted() {
    let request = Request::get("/healthz")
        .header("openclaw-version", "1.0")
        .body(Body::empty())
        .expect("request");
    assert_eq!(send(request).await.status, StatusCode::OK);
    assert_eq!(send(get("/healthz")).await.status, StatusCode::OK);
}

#[tokio::test]
async fn healthz_is_plain_ok_with_the_usual_headers() {
    let answer = send(get("/healthz")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, serde_json::json!({"status": "ok"}));
    assert_eq!(answer.header("openclaw-version"), Some("1.0"));
}

#[tokio::test]
async fn unreachable_core_is_503_promptly() {
    let started = Instant::now();
    let request = Request::get("/api/v1/system/status")
        .header(header::AUTHORIZATION, "Bearer oc_test")
        .body(Body::empty())
        .expect("request");
    let answer = send(request).await;
    answer.assert_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE");
    assert_eq!(
        answer.body["error"]["message"],
        "The gateway core is unreachable"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_valid_body_reaches_the_core() {
    // With the core down, a well-formed request gets past every edge check and ends at 503.
    let answer = send(post_json(
        "/api/v1/sessions",
        r#"{"model":"zai/glm-4.7-flash","messages":[{"role":"user","content":"Hello"}],"context":{"sessionId":"optional-session-id"},"temperature":0.7,"maxTokens":1000}"#,
    ))
    .await;
    answer.assert_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE");
}

#[tokio::test]
async fn a_field_the_request_does_not_take_is_refused_at_the_edge() {
    // Refused before the (down) core is asked: nothing a client sends is dropped unread.
    let answer = send(post_json(
        "/api/v1/sessions",
        r#"{"model":"zai/glm-4.7-flash","messages":[{"role":"user","content":"Hello"}],"someFutureField":true}"#,
    ))
    .await;
    answer.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    assert!(
        answer.details().contains("'someFutureField'"),
        "{}",
        answer.body
    );
}

/// Every route of the contract, as (OpenAPI path, method).
const ROUTES: &[(&str, &str)] = &[
    ("/api/v1/sessions", "post"),
    ("/api/v1/sessions", "get"),
    ("/api/v1/sessions/{sessionId}", "get"),
    ("/api/v1/sessions/{sessionId}", "delete"),
    ("/api/v1/sessions/{sessionId}/messages", "post"),
    ("/api/v1/sessions/{sessionId}/messages", "get"),
    ("/api/v1/system/status", "get"),
    ("/api/v1/keys", "post"),
    ("/api/v1/keys", "get"),
    ("/api/v1/keys/{id}", "get"),
    ("/api/v1/keys/{id}", "patch"),
    ("/api/v1/keys/{id}", "delete"),
    ("/healthz", "get"),
    ("/openapi.json", "get"),
];

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let answer = send(get("/openapi.json")).await;
    assert_eq!(answer.status, StatusCode::OK);
    let doc = answer.body;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')),
        "{}",
        doc["openapi"]
    );
    for (path, method) in ROUTES {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} missing");
        assert!(
            operation["responses"]
                .as_object()
                .is_some_and(|r| !r.is_empty()),
            "{method} {path} has no responses"
        );
    }
    let documented: usize = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|item| item.as_object().map_or(0, |ops| ops.len()))
        .sum();
    assert!(documented >= ROUTES.len());
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc["components"]["schemas"]["ErrorEnvelope"].is_object());
    assert!(doc["components"]["responses"]["RateLimited"]["headers"]["Retry-After"].is_object());
}

#[tokio::test]
async fn openapi_documents_envelopes_errors_and_security_per_route() {
    let doc = send(get("/openapi.json")).await.body;
    if let Ok(path) = std::env::var("OPENCLAW_DUMP_OPENAPI") {
        std::fs::write(path, serde_json::to_vec_pretty(&doc).expect("JSON")).expect("write");
    }
    let create = &doc["paths"]["/api/v1/sessions"]["post"];
    for status in [
        "200", "201", "400", "401", "413", "415", "429", "500", "502", "503", "504",
    ] {
        assert!(
            create["responses"][status].is_object(),
            "POST /api/v1/sessions lacks {status}"
        );
    }
    assert_eq!(
        create["responses"]["401"]["$ref"],
        "#/components/responses/Unauthorized"
    );
    let created = &create["responses"]["201"]["content"]["application/json"]["schema"]["$ref"];
    let name = created
        .as_str()
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
        .expect("a schema reference");
    let envelope = &doc["components"]["schemas"][name]["properties"];
    for field in ["success", "data", "timestamp"] {
        assert!(envelope[field].is_object(), "{name} lacks {field}");
    }
    assert_eq!(create["security"][0]["bearer"], serde_json::json!([]));
    let params = create["parameters"].as_array().expect("parameters");
    assert!(params.iter().any(|p| p["name"] == "OpenClaw-Version"));
    assert!(params.iter().any(|p| p["name"] == "X-Request-ID"));
    // Probes are open.
    assert_eq!(
        doc["paths"]["/healthz"]["get"]["security"],
        serde_json::json!([{}])
    );
}

#[tokio::test]
async fn options_gets_405_in_the_envelope() {
    let request = Request::builder()
        .method(Method::OPTIONS)
        .uri("/api/v1/sessions")
        .body(Body::empty())
        .expect("request");
    send(request)
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "INVALID_REQUEST");
}

#[tokio::test]
async fn declared_oversized_body_is_413_without_reading_it_all() {
    let request = Request::post("/api/v1/sessions")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, (BODY_LIMIT + 1).to_string())
        .body(Body::from("x".repeat(BODY_LIMIT + 1)))
        .expect("request");
    send(request)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "INVALID_REQUEST");
}

/// Over a real socket: a client that sends a too-large body to the end must still read the 413,
/// not fail with a broken pipe because the edge hung up mid-upload.
#[tokio::test]
async fn a_client_uploading_too_much_still_reads_the_413() {
    use std::io::{Read as _, Write as _};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = EdgeConfig {
        core_urls: vec![format!("http://127.0.0.1:{}", closed_port())],
        max_body_bytes: 1024,
        core_timeout: Duration::from_secs(5),
        ..EdgeConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(crate::serve(listener, config, async {
        let _ = stopped.await;
    }));

    let client = tokio::task::spawn_blocking(move || {
        let body = format!(
            r#"{{"message":{{"role":"user","content":"{}"}}}}"#,
            "a".repeat(8 << 20)
        );
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        write!(
            stream,
            "POST /api/v1/sessions/s-1/messages HTTP/1.1\r\nHost: edge\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .expect("head");
        stream
            .write_all(body.as_bytes())
            .expect("the edge reads the whole upload before answering");
        let mut head = [0u8; 64];
        let read = stream.read(&mut head).expect("response");
        String::from_utf8_lossy(&head[..read]).into_owned()
    })
    .await
    .expect("client");
    assert!(client.starts_with("HTTP/1.1 413"), "{client}");

    let _ = stop.send(());
    server.await.expect("server task").expect("server");
}

#[tokio::test]
async fn openapi_document_describes_session_expiry() {
    let doc = send(get("/openapi.json")).await.body;
    let schemas = &doc["components"]["schemas"];
    for schema in ["Session", "CreatedSession", "CreateSessionRequest"] {
        let field = &schemas[schema]["properties"]["expiresAt"];
        assert!(
            field.is_object(),
            "{schema}.expiresAt missing: {}",
            schemas[schema]
        );
        assert!(
            field.to_string().contains("date-time"),
            "{schema}.expiresAt is an RFC 3339 time: {field}"
        );
    }
}

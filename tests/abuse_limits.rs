//! Limits against clients that send too slowly or too much: a client trickling its request (or
//! sending nothing) is cut off while others are served; oversized bodies, headers and gRPC
//! messages are refused with the contract's envelope and a sentence naming the limit.

mod support;

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// Sends `bytes` one at a time, `gap` apart, until the edge closes the connection; how long after
/// connecting that happened (`None`: still open after `give_up`).
fn trickle_until_closed(
    port: u16,
    bytes: &[u8],
    gap: Duration,
    give_up: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("read timeout");
    let mut sent = 0;
    let mut last_write = Instant::now();
    while started.elapsed() < give_up {
        if sent < bytes.len() && last_write.elapsed() >= gap {
            if stream.write_all(&bytes[sent..=sent]).is_err() {
                return Some(started.elapsed());
            }
            sent += 1;
            last_write = Instant::now();
        }
        let mut buf = [0u8; 512];
        match stream.read(&mut buf) {
            // Closed (hyper may say 408 first; either way the connection ends).
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

/// A core on the embedded store, with its fake upstream and data folder (kept for the test).
async fn embedded_core() -> (FakeUpstream, tempfile::TempDir, Process) {
    let upstream = FakeUpstream::start().await;
    let data = tempfile::tempdir().expect("temp dir");
    let core = spawn_core(&CoreOptions {
        upstream: Some(upstream.base_url()),
        data_dir: Some(data.path().to_path_buf()),
        ..CoreOptions::default()
    });
    (upstream, data, core)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_request_line_is_cut_off_while_others_are_served() {
    let (_upstream, _data, core) = embedded_core().await;
    let edge = spawn_edge_with(&[&core], &[("OPENCLAW_HEADER_READ_TIMEOUT_MS", "1000")]);
    let port = edge.port;

    // Half a request line, a byte every 100 ms: it would take 1.5 s to send even this much.
    let slow = std::thread::spawn(move || {
        trickle_until_closed(
            port,
            b"GET /api/v1/system/sta",
            Duration::from_millis(100),
            Duration::from_secs(10),
        )
    });
    let silent = std::thread::spawn(move || {
        trickle_until_closed(port, b"", Duration::ZERO, Duration::from_secs(10))
    });

    // Meanwhile a normal client is served, repeatedly.
    let http = reqwest::Client::new();
    let key = create_key(
        &http,
        &format!("http://127.0.0.1:{port}"),
        "normal",
        json!({}),
    )
    .await;
    for _ in 0..5 {
        let served = Instant::now();
        let response = http
            .get(format!("http://127.0.0.1:{port}/api/v1/system/status"))
            .bearer_auth(&key)
            .send()
            .await
            .expect("a normal client is served");
        assert_eq!(response.status(), 200);
        assert!(served.elapsed() < Duration::from_millis(900));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    for (who, client) in [("trickling", slow), ("silent", silent)] {
        let closed = client
            .join()
            .expect("client thread")
            .unwrap_or_else(|| panic!("the {who} client was never cut off"));
        assert!(
            closed >= Duration::from_millis(900) && closed < Duration::from_millis(3000),
            "the {who} client was cut off after {closed:?}, expected shortly after the 1 s timeout"
        );
    }
}

/// Every route that takes a JSON body, with a body just over a 1 KiB limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_413_invalid_request_on_every_body_taking_route() {
    let (_upstream, _data, core) = embedded_core().await;
    let edge = spawn_edge_with(&[&core], &[("OPENCLAW_MAX_BODY_BYTES", "1024")]);
    let base = format!("http://127.0.0.1:{}", edge.port);
    let http = reqwest::Client::new();
    let key = create_key(&http, &base, "big", json!({})).await;
    let long = "x".repeat(2048);
    let message = json!({"role": "user", "content": long});
    let routes: Vec<(reqwest::Method, &str, Value)> = vec![
        (
            reqwest::Method::POST,
            "/api/v1/sessions",
            json!({"messages": [message]}),
        ),
        // A long message in a session turn: the guide sets no length of its own, the body limit holds.
        (
            reqwest::Method::POST,
            "/api/v1/sessions/s-1/messages",
            json!({ "message": message }),
        ),
        (reqwest::Method::POST, "/api/v1/keys", json!({"name": long})),
        (
            reqwest::Method::PATCH,
            "/api/v1/keys/k-1",
            json!({"name": long}),
        ),
        (
            reqwest::Method::POST,
            "/api/v1/cron/jobs",
            json!({"name": long, "schedule": {"kind": "every", "everyMs": 60000},
                   "payload": {"kind": "systemEvent", "text": "t"}}),
        ),
        (
            reqwest::Method::PATCH,
            "/api/v1/cron/jobs/j-1",
            json!({"name": long}),
        ),
    ];
    for (method, path, body) in routes {
        let response = http
            .request(method.clone(), format!("{base}{path}"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .expect("request");
        let error = expect_error(response, 413, "INVALID_REQUEST").await;
        assert!(
            error["details"]
                .as_str()
                .unwrap_or_default()
                .contains("1024 bytes"),
            "{method} {path}: the details name the limit: {error}"
        );
    }

    // The OpenAI-compatible route answers in OpenAI's shape, with the same status and sentence.
    let response = http
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&json!({"model": "zai/glm-4.7-flash", "messages": [message]}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.expect("OpenAI error JSON");
    assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("1024 bytes"),
        "{body}"
    );

    // The dashboard's forms are held to the same limit.
    let response = http
        .post(format!("{base}/dashboard/login"))
        .form(&[("credential", long.as_str())])
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 413);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_the_limit_are_431_in_the_envelope_over_http1_and_http2() {
    let stack = Stack::embedded().await;
    let key = stack.create_key("headers").await;
    let url = stack.url("/api/v1/system/status");
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("h2c client");
    for (protocol, http) in [("HTTP/1.1", &stack.http), ("HTTP/2", &h2)] {
        // Under the default 16 KiB: served.
        let fits = http
            .get(&url)
            .bearer_auth(&key)
            .header("x-padding", "p".repeat(12 * 1024))
            .send()
            .await
            .expect("request");
        assert_eq!(fits.status(), 200, "{protocol}: 12 KiB of headers fit");

        let response = http
            .get(&url)
            .bearer_auth(&key)
            .header("x-padding", "p".repeat(20 * 1024))
            .send()
            .await
            .expect("request");
        let error = expect_error(response, 431, "INVALID_REQUEST").await;
        assert!(
            error["details"]
                .as_str()
                .unwrap_or_default()
                .contains("16384 bytes"),
            "{protocol}: the details name the limit: {error}"
        );

        // Many small headers count together.
        let mut request = http.get(&url).bearer_auth(&key);
        for i in 0..90 {
            request = request.header(format!("x-part-{i}"), "p".repeat(200));
        }
        let response = request.send().await.expect("request");
        expect_error(response, 431, "INVALID_REQUEST").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_message_over_the_cores_limit_is_invalid_request_naming_it() {
    use openclaw_gateway::proto::{
        ChatMessage, CreateSessionRequest, session_service_client::SessionServiceClient,
    };
    use tonic_types::StatusExt as _;

    let (upstream, _data, core) = embedded_core().await;
    let big = "x".repeat(5 << 20);

    // A gRPC caller: INVALID_ARGUMENT carrying INVALID_REQUEST and the limit.
    let mut client = SessionServiceClient::connect(format!("http://127.0.0.1:{}", core.port))
        .await
        .expect("connect");
    let mut request = tonic::Request::new(CreateSessionRequest {
        messages: vec![ChatMessage {
            role: "user".into(),
            content: big.clone(),
            ..Default::default()
        }],
        ..CreateSessionRequest::default()
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {INTERNAL_TOKEN}")
            .parse()
            .expect("metadata"),
    );
    let status = client
        .create_session(request)
        .await
        .expect_err("a 5 MiB message is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let info = status.get_error_details();
    let info = info.error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "INVALID_REQUEST");
    let details = info.metadata.get("details").cloned().unwrap_or_default();
    assert!(details.contains("4194304 bytes"), "{details}");

    // Through an edge whose own body limit is higher than the core's message limit.
    let edge = spawn_edge_with(&[&core], &[("OPENCLAW_MAX_BODY_BYTES", "8388608")]);
    let base = format!("http://127.0.0.1:{}", edge.port);
    let http = reqwest::Client::new();
    let key = create_key(&http, &base, "big", json!({})).await;
    let response = http
        .post(format!("{base}/api/v1/sessions"))
        .bearer_auth(&key)
        .json(&json!({"messages": [{"role": "user", "content": big}]}))
        .send()
        .await
        .expect("request");
    let error = expect_error(response, 400, "INVALID_REQUEST").await;
    assert!(
        error["details"]
            .as_str()
            .unwrap_or_default()
            .contains("4194304 bytes"),
        "{error}"
    );
    assert!(upstream.received().is_empty(), "no model was asked");
}

//! The brute-force guard and the client addresses it counts by.
//!
//! Guesses (wrong keys, wrong tokens) are limited per client address; a valid key is judged by
//! its own limits only, and a request with no credential guesses nothing. The address is one no
//! client can choose: the edge believes `X-Forwarded-For` only from its trusted proxies, reading
//! it from the right, and a core believes the address an edge forwards only beside the edge's
//! proof of the internal token.

mod support;

use openclaw_gateway::proto::{GetStatusRequest, system_service_client::SystemServiceClient};
use support::{CoreOptions, INTERNAL_TOKEN, Stack, expect_data, expect_error};

const WRONG_KEY: &str = "oc_wrongwrongwrongwrongwrongwrongwrongwrong";
/// How many guesses an address may make in a minute (`AUTH_FAILURES_ALLOWED`).
const GUESSES_ALLOWED: usize = 20;

/// `GET /api/v1/system/status` with `key` (none: no Authorization header) and, when given, an
/// `X-Forwarded-For` line; returns the HTTP status.
async fn status_call(stack: &Stack, key: Option<&str>, forwarded_for: Option<&str>) -> u16 {
    let mut request = stack.http.get(stack.url("/api/v1/system/status"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(forwarded_for) = forwarded_for {
        request = request.header("x-forwarded-for", forwarded_for);
    }
    request.send().await.expect("status call").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_key_is_served_from_an_address_that_guessed_too_often() {
    let stack = Stack::start().await;
    let key = stack.create_key("honest").await;
    let mut codes = Vec::new();
    for _ in 0..GUESSES_ALLOWED + 3 {
        codes.push(status_call(&stack, Some(WRONG_KEY), None).await);
    }
    assert_eq!(&codes[..GUESSES_ALLOWED - 1], &[401; GUESSES_ALLOWED - 1]);
    assert!(
        codes[GUESSES_ALLOWED..].iter().all(|c| *c == 429),
        "guesses beyond the allowance are refused: {codes:?}"
    );
    // The same address, with a key that is right: its own limits decide, nothing else.
    for _ in 0..5 {
        let answer = stack.get("/api/v1/system/status", &key).await;
        expect_data(answer, 200).await;
        assert_eq!(status_call(&stack, Some(WRONG_KEY), None).await, 429);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_credential_guesses_nothing_and_is_not_counted() {
    let stack = Stack::start().await;
    for _ in 0..GUESSES_ALLOWED * 2 {
        let answer = stack
            .http
            .get(stack.url("/api/v1/system/status"))
            .send()
            .await
            .unwrap();
        expect_error(answer, 401, "UNAUTHORIZED").await;
    }
    // Nor does an Authorization header no secret could pass.
    for header in ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    "] {
        let answer = stack
            .http
            .get(stack.url("/api/v1/system/status"))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        expect_error(answer, 401, "UNAUTHORIZED").await;
    }
    assert_eq!(
        status_call(&stack, Some(WRONG_KEY), None).await,
        401,
        "the first real guess is answered, not refused"
    );
    // A dashboard sign-in with nothing entered is not a guess either.
    for _ in 0..GUESSES_ALLOWED + 5 {
        let answer = stack
            .http
            .post(stack.url("/dashboard/login"))
            .form(&[("credential", "")])
            .send()
            .await
            .unwrap();
        assert_ne!(answer.status(), 429);
    }
    assert_eq!(status_call(&stack, Some(WRONG_KEY), None).await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_from_a_peer_that_is_no_trusted_proxy_is_not_believed() {
    // No trusted proxies: every guess counts against the real peer, whatever it claims.
    let stack = Stack::start().await;
    for n in 0..GUESSES_ALLOWED {
        let rotated = format!("198.51.100.{}", n + 1);
        let code = status_call(&stack, Some(WRONG_KEY), Some(&rotated)).await;
        assert!(code == 401 || code == 429, "{code}");
    }
    assert_eq!(
        status_call(&stack, Some(WRONG_KEY), Some("198.51.100.200")).await,
        429,
        "rotating X-Forwarded-For does not evade the guard"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_client_cannot_choose_its_address() {
    // The load balancer (loopback here) appends the address it saw; whatever the client wrote
    // to the left of it is the client's own invention.
    let stack = Stack::behind_proxy().await;
    for n in 0..GUESSES_ALLOWED + 2 {
        let spoofed = format!("192.0.2.{}, 203.0.113.7", n + 1);
        status_call(&stack, Some(WRONG_KEY), Some(&spoofed)).await;
    }
    assert_eq!(
        status_call(&stack, Some(WRONG_KEY), Some("10.9.9.9, 203.0.113.7")).await,
        429,
        "the guesser is known by the address its proxy saw"
    );
    // Another client behind the same proxy is not affected, nor is the guesser's valid key.
    assert_eq!(
        status_call(&stack, Some(WRONG_KEY), Some("203.0.113.8")).await,
        401
    );
    let key = stack.create_key("guesser").await;
    assert_eq!(
        status_call(&stack, Some(&key), Some("203.0.113.7")).await,
        200
    );
    // And nobody can pin a victim's address by naming it: the attacker's own guesses with the
    // victim's address on the left still count against the attacker (203.0.113.7).
    for _ in 0..GUESSES_ALLOWED + 2 {
        status_call(&stack, Some(WRONG_KEY), Some("203.0.113.9, 203.0.113.7")).await;
    }
    assert_eq!(
        status_call(&stack, Some(WRONG_KEY), Some("203.0.113.9")).await,
        401,
        "the victim's own guesses are still answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cores_believe_a_forwarded_client_address_only_from_an_edge() {
    // Two cores on one Redis: guesses are counted across replicas.
    let redis = support::start_redis();
    let dir = tempfile::tempdir().unwrap();
    let options = CoreOptions {
        redis_url: Some(support::redis_url(&redis)),
        upstream: None,
        data_dir: Some(dir.path().to_path_buf()),
        env: Vec::new(),
    };
    let cores = [support::spawn_core(&options), support::spawn_core(&options)];
    let mut clients = Vec::new();
    for core in &cores {
        clients.push(
            SystemServiceClient::connect(format!("http://127.0.0.1:{}", core.port))
                .await
                .unwrap(),
        );
    }
    let guess = |client_ip: &str, proof: Option<&str>| {
        let mut request = tonic::Request::new(GetStatusRequest {});
        let metadata = request.metadata_mut();
        metadata.insert(
            "authorization",
            format!("Bearer {WRONG_KEY}").parse().unwrap(),
        );
        metadata.insert("x-openclaw-client-ip", client_ip.parse().unwrap());
        if let Some(proof) = proof {
            metadata.insert("x-openclaw-edge-proof", proof.parse().unwrap());
        }
        request
    };
    // A caller without the proof names a new address on every guess, alternating cores: all
    // its guesses count against its socket address.
    for n in 0..GUESSES_ALLOWED {
        let client = &mut clients[n % 2];
        let error = client
            .get_status(guess(&format!("198.51.100.{}", n + 1), None))
            .await
            .unwrap_err();
        assert!(
            matches!(
                error.code(),
                tonic::Code::Unauthenticated | tonic::Code::ResourceExhausted
            ),
            "{error:?}"
        );
    }
    for client in &mut clients {
        let error = client
            .get_status(guess("198.51.100.250", None))
            .await
            .unwrap_err();
        assert_eq!(
            error.code(),
            tonic::Code::ResourceExhausted,
            "rotating x-openclaw-client-ip without the edge's proof evades nothing"
        );
        // A wrong proof is no proof.
        let error = client
            .get_status(guess("198.51.100.251", Some(&"0".repeat(64))))
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::ResourceExhausted);
    }
    // An edge (it holds the internal token) forwards a client of its own: that client has
    // guessed nothing yet.
    let proof = openclaw_runtime::forwarding::edge_proof(INTERNAL_TOKEN);
    for client in &mut clients {
        let error = client
            .get_status(guess("203.0.113.50", Some(&proof)))
            .await
            .unwrap_err();
        assert_eq!(error.code(), tonic::Code::Unauthenticated, "{error:?}");
    }
    // The edge's proof is not a credential: it authenticates nothing on its own.
    let mut request = tonic::Request::new(GetStatusRequest {});
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {proof}").parse().unwrap());
    request
        .metadata_mut()
        .insert("x-openclaw-client-ip", "203.0.113.51".parse().unwrap());
    request
        .metadata_mut()
        .insert("x-openclaw-edge-proof", proof.parse().unwrap());
    let error = clients[0].get_status(request).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::Unauthenticated);
}

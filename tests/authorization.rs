//! The authorization matrix, generated from the route tables themselves:
//! every REST operation in the served `/openapi.json` and every gRPC method in
//! the compiled contract, against every kind of credential. A new route or
//! method that nobody classified fails here, so none can skip the matrix.

mod support;

use std::collections::BTreeMap;

use serde_json::{Value, json};
use support::{INTERNAL_TOKEN, Stack, expect_data};

/// The credentials every operation is tried with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Credential {
    None,
    Garbage,
    Revoked,
    /// A valid key that owns none of the objects named in the path.
    AnotherKey,
    /// A valid key without the scope the operation needs.
    WithoutScope,
    Internal,
}

const CREDENTIALS: [Credential; 6] = [
    Credential::None,
    Credential::Garbage,
    Credential::Revoked,
    Credential::AnotherKey,
    Credential::WithoutScope,
    Credential::Internal,
];

/// What an operation needs beyond a valid credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Unauthenticated probes and documents.
    Nothing,
    /// An API key with this scope (or the internal token).
    Scope(&'static str),
    /// The internal token.
    Internal,
    /// Any valid credential.
    AnyKey,
}

/// Classifies a REST operation by its path. Unknown paths fail the test.
fn rest_need(method: &str, path: &str) -> Need {
    match path {
        "/healthz" | "/readyz" | "/openapi.json" => Need::Nothing,
        "/v1/models" => Need::AnyKey,
        "/v1/chat/completions" => Need::Scope("sessions"),
        p if p.starts_with("/api/v1/sessions") => Need::Scope("sessions"),
        p if p.starts_with("/api/v1/cron/") || p == "/api/v1/events" => Need::Scope("cron"),
        "/api/v1/system/status" => Need::Scope("status"),
        // Any key reads its own usage ledger; the internal token reads every key's.
        "/api/v1/usage" => Need::AnyKey,
        p if p.starts_with("/api/v1/keys") => Need::Internal,
        other => panic!("{method} {other} is not classified in the authorization matrix: add it"),
    }
}

/// Classifies a gRPC service. Unknown services fail the test.
fn grpc_need(service: &str, method: &str) -> Need {
    match service {
        "openclaw.v1.SessionService" | "openclaw.v1.CompletionService"
            if method == "ListModels" =>
        {
            Need::AnyKey
        }
        "openclaw.v1.SessionService" | "openclaw.v1.CompletionService" => Need::Scope("sessions"),
        "openclaw.v1.CronService" | "openclaw.v1.EventService" => Need::Scope("cron"),
        "openclaw.v1.SystemService" => Need::Scope("status"),
        "openclaw.v1.KeyService" => Need::Internal,
        "openclaw.v1.UsageService" => Need::AnyKey,
        other => {
            panic!("gRPC service {other} is not classified in the authorization matrix: add it")
        }
    }
}

/// A body that passes validation, for operations that take one.
fn sample_body(method: &str, path: &str) -> Option<Value> {
    match (method, path) {
        ("GET" | "DELETE", _) => None,
        ("POST", "/api/v1/sessions") => {
            Some(json!({"messages": [{"role": "user", "content": "hi"}]}))
        }
        ("POST", "/api/v1/sessions/{sessionId}/messages") => {
            Some(json!({"message": {"role": "user", "content": "hi"}}))
        }
        ("POST", "/api/v1/cron/jobs") => Some(json!({
            "name": "matrix", "schedule": {"kind": "every", "everyMs": 86400000},
            "payload": {"kind": "systemEvent", "text": "matrix"}
        })),
        ("PATCH", "/api/v1/cron/jobs/{jobId}") => Some(json!({"enabled": false})),
        ("POST", "/api/v1/cron/jobs/{jobId}/run") => Some(json!({})),
        ("POST", "/api/v1/keys") => Some(json!({"name": "matrix"})),
        ("PATCH", "/api/v1/keys/{id}") => Some(json!({"name": "renamed"})),
        ("POST", "/v1/chat/completions") => Some(
            json!({"model": "zai/glm-4.7-flash", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (method, path) => panic!("{method} {path} needs a sample body in the authorization matrix"),
    }
}

struct World {
    stack: Stack,
    owner: String,
    revoked: String,
    another: String,
    /// Keys lacking one scope each: scope → key.
    without: BTreeMap<&'static str, String>,
    /// Path parameter → the owner's object.
    ids: BTreeMap<&'static str, String>,
}

async fn key(stack: &Stack, name: &str, scopes: &[&str]) -> Value {
    let response = stack
        .post(
            "/api/v1/keys",
            INTERNAL_TOKEN,
            &json!({"name": name, "scopes": scopes, "limits": {"requestsPerMinute": 100000}}),
        )
        .await;
    expect_data(response, 201).await
}

impl World {
    async fn build() -> Self {
        let stack = Stack::behind_proxy().await;
        let owner = key(&stack, "owner", &[]).await;
        let revoked = key(&stack, "revoked", &[]).await;
        let revoke = stack
            .http
            .delete(stack.url(&format!("/api/v1/keys/{}", revoked["id"].as_str().unwrap())))
            .bearer_auth(INTERNAL_TOKEN)
            .send()
            .await
            .unwrap();
        expect_data(revoke, 200).await;
        let another = key(&stack, "another", &[]).await;
        let mut without = BTreeMap::new();
        for (scope, others) in [
            ("sessions", ["cron", "status"]),
            ("cron", ["sessions", "status"]),
            ("status", ["sessions", "cron"]),
        ] {
            let k = key(&stack, &format!("without {scope}"), &others).await;
            without.insert(scope, k["key"].as_str().unwrap().to_string());
        }
        let secret = owner["key"].as_str().unwrap().to_string();
        let session = stack
            .post(
                "/api/v1/sessions",
                &secret,
                &json!({"messages": [], "context": {"sessionId": "owned-session"}}),
            )
            .await;
        expect_data(session, 201).await;
        let job = stack
            .post(
                "/api/v1/cron/jobs",
                &secret,
                &sample_body("POST", "/api/v1/cron/jobs").unwrap(),
            )
            .await;
        let job = expect_data(job, 201).await;
        let mut ids = BTreeMap::new();
        ids.insert("{sessionId}", "owned-session".to_string());
        ids.insert("{jobId}", job["id"].as_str().unwrap().to_string());
        ids.insert("{id}", owner["id"].as_str().unwrap().to_string());
        Self {
            stack,
            owner: secret,
            revoked: revoked["key"].as_str().unwrap().to_string(),
            another: another["key"].as_str().unwrap().to_string(),
            without,
            ids,
        }
    }

    /// The bearer secret for `credential` on an operation needing `need`.
    fn secret(&self, credential: Credential, need: Need) -> Option<String> {
        match credential {
            Credential::None => None,
            Credential::Garbage => Some("oc_thisisnotakeythisisnotakeythisisnotakey".into()),
            Credential::Revoked => Some(self.revoked.clone()),
            Credential::AnotherKey => Some(self.another.clone()),
            Credential::WithoutScope => match need {
                Need::Scope(scope) => Some(self.without[scope].clone()),
                // Key administration: any API key lacks the internal token's rights.
                _ => Some(self.another.clone()),
            },
            Credential::Internal => Some(INTERNAL_TOKEN.into()),
        }
    }
}

/// The statuses the contract allows for `credential` on an operation needing `need`.
fn expected(credential: Credential, need: Need, names_an_object: bool) -> &'static [u16] {
    use Credential::*;
    match (need, credential) {
        (Need::Nothing, _) => &[200, 503],
        (_, None | Garbage | Revoked) => &[401],
        (Need::Internal, AnotherKey | WithoutScope) => &[403],
        (Need::Scope(_), WithoutScope) => &[403],
        // Another key's objects do not exist for this key.
        (Need::Scope(_), AnotherKey) if names_an_object => &[404],
        (_, AnotherKey | WithoutScope) => &[200, 201, 202],
        (_, Internal) => &[200, 201, 202, 404],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rest_route_answers_every_credential_as_the_contract_says() {
    let world = World::build().await;
    let openapi: Value = reqwest::get(world.stack.url("/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut checked = 0;
    let mut failures = Vec::new();
    for (path, operations) in openapi["paths"].as_object().unwrap() {
        for (method, _) in operations.as_object().unwrap() {
            let method = method.to_uppercase();
            if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
                continue;
            }
            let need = rest_need(&method, path);
            let names_an_object = world.ids.keys().any(|p| path.contains(p));
            let mut concrete = path.clone();
            for (param, id) in &world.ids {
                concrete = concrete.replace(param, id);
            }
            for credential in CREDENTIALS {
                // Probes are unauthenticated: one try is enough.
                if need == Need::Nothing && credential != Credential::None {
                    continue;
                }
                // The owner's own requests would change the objects under test.
                if credential == Credential::Internal && method == "DELETE" {
                    continue;
                }
                let url = world.stack.url(&concrete);
                let mut request = world.stack.http.request(method.parse().unwrap(), &url);
                if let Some(secret) = world.secret(credential, need) {
                    request = request.bearer_auth(secret);
                }
                // Each try from its own address: the brute-force guard is not under test here.
                request = request.header("x-forwarded-for", client_address(checked));
                if let Some(body) = sample_body(&method, path) {
                    request = request.json(&body);
                }
                if path == "/api/v1/events" {
                    request = request.timeout(std::time::Duration::from_millis(1500));
                }
                let status = match request.send().await {
                    Ok(response) => {
                        let status = response.status().as_u16();
                        if status >= 400 && path.starts_with("/api/") {
                            let body: Value = response.json().await.unwrap_or(Value::Null);
                            assert_eq!(
                                body["success"], false,
                                "{method} {path} as {credential:?}: envelope"
                            );
                        }
                        status
                    }
                    Err(err) if err.is_timeout() => 200, // an event stream stayed open: admitted
                    Err(err) => panic!("{method} {path} as {credential:?}: {err}"),
                };
                let allowed = expected(credential, need, names_an_object);
                if !allowed.contains(&status) {
                    failures.push(format!(
                        "{method} {path} as {credential:?}: {status}, expected one of {allowed:?}"
                    ));
                }
                checked += 1;
            }
        }
    }
    println!("checked {checked} REST operation × credential pairs");
    assert!(
        checked > 100,
        "the matrix covers the route table ({checked})"
    );
    assert!(
        failures.is_empty(),
        "authorization matrix failures:\n{}",
        failures.join("\n")
    );

    // Nothing of the owner's leaks into another key's listings.
    for list in ["/api/v1/sessions", "/api/v1/cron/jobs"] {
        let response = world.stack.get(list, &world.another).await;
        let body = response.text().await.unwrap();
        for id in world.ids.values() {
            assert!(
                !body.contains(id.as_str()),
                "{list} shows another key's {id}"
            );
        }
    }
    let _ = &world.owner;
}

/// A distinct documentation-range address per try.
fn client_address(n: usize) -> String {
    format!("198.51.{}.{}", 100 + n / 250, 1 + n % 250)
}

/// Sends raw protobuf bytes, so any method can be called without its types.
#[derive(Clone, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_method_refuses_missing_wrong_and_underscoped_credentials() {
    use prost::Message as _;
    let world = World::build().await;
    let descriptors =
        prost_types::FileDescriptorSet::decode(openclaw_gateway::proto::FILE_DESCRIPTOR_SET)
            .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "http://127.0.0.1:{}",
        world.stack.core.port
    ))
    .unwrap()
    .connect()
    .await
    .unwrap();
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in &descriptors.file {
        for service in &file.service {
            let service_name = format!("{}.{}", file.package(), service.name());
            if service_name == "openclaw.v1.DashboardService" {
                continue; // authenticated by dashboard sessions; tests/dashboard.rs covers it
            }
            for method in &service.method {
                let need = grpc_need(&service_name, method.name());
                for credential in [
                    Credential::None,
                    Credential::Garbage,
                    Credential::Revoked,
                    Credential::WithoutScope,
                ] {
                    let want = match (credential, need) {
                        (Credential::WithoutScope, Need::AnyKey) => continue,
                        (Credential::WithoutScope, _) => tonic::Code::PermissionDenied,
                        _ => tonic::Code::Unauthenticated,
                    };
                    let mut request = tonic::Request::new(Vec::<u8>::new());
                    if let Some(secret) = world.secret(credential, need) {
                        request
                            .metadata_mut()
                            .insert("authorization", format!("Bearer {secret}").parse().unwrap());
                    }
                    // As an edge holding the internal token forwards its client's address.
                    request.metadata_mut().insert(
                        "x-openclaw-client-ip",
                        client_address(checked).parse().unwrap(),
                    );
                    request.metadata_mut().insert(
                        "x-openclaw-edge-proof",
                        openclaw_runtime::forwarding::edge_proof(INTERNAL_TOKEN)
                            .parse()
                            .unwrap(),
                    );
                    let path: http::uri::PathAndQuery =
                        format!("/{service_name}/{}", method.name())
                            .parse()
                            .unwrap();
                    let mut grpc = tonic::client::Grpc::new(channel.clone());
                    grpc.ready().await.unwrap();
                    let code = if method.server_streaming() {
                        match grpc.server_streaming(request, path, Raw).await {
                            Ok(mut stream) => match stream.get_mut().message().await {
                                Ok(_) => tonic::Code::Ok,
                                Err(status) => status.code(),
                            },
                            Err(status) => status.code(),
                        }
                    } else {
                        match grpc.unary(request, path, Raw).await {
                            Ok(_) => tonic::Code::Ok,
                            Err(status) => status.code(),
                        }
                    };
                    if code != want {
                        failures.push(format!(
                            "{service_name}/{} as {credential:?}: {code:?}, expected {want:?}",
                            method.name()
                        ));
                    }
                    checked += 1;
                }
            }
        }
    }
    println!("checked {checked} gRPC method × credential pairs");
    assert!(checked > 60, "the matrix covers the contract ({checked})");
    assert!(
        failures.is_empty(),
        "gRPC authorization failures:\n{}",
        failures.join("\n")
    );
}

//! TLS: HTTPS on the edge's public listener (HTTP/2 and HTTP/1.1 by ALPN), TLS between the edge and
//! the core, and mutual TLS where the core admits only clients with a certificate its CA signed.
//! Certificates are made here, for each test.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{Value, json};
use support::*;

/// A certificate authority made for one test.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    name: String,
}

/// A certificate and key written as PEM files.
struct Pem {
    cert: PathBuf,
    key: PathBuf,
}

impl TestCa {
    fn new(dir: &Path, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA");
        let ca = Self {
            issuer,
            dir: dir.to_path_buf(),
            name: name.to_string(),
        };
        std::fs::write(ca.cert_path(), ca.issuer.pem()).expect("write the CA");
        ca
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf certificate for `localhost` and 127.0.0.1, for servers or clients.
    fn issue(&self, file: &str, usage: ExtendedKeyUsagePurpose) -> Pem {
        let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".into()])
            .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{file} ({})", self.name));
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &*self.issuer)
            .expect("sign the leaf");
        let pem = Pem {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        // The chain as servers send it: leaf, then the CA.
        std::fs::write(&pem.cert, format!("{}{}", cert.pem(), self.pem())).expect("write cert");
        std::fs::write(&pem.key, key.serialize_pem()).expect("write key");
        pem
    }

    fn server(&self, file: &str) -> Pem {
        self.issue(file, ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self, file: &str) -> Pem {
        self.issue(file, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A core serving gRPC over TLS with `cert`, requiring client certificates from `client_ca`.
fn tls_core(upstream: &FakeUpstream, dir: &Path, cert: &Pem, client_ca: Option<&Path>) -> Process {
    let mut env = vec![
        ("OPENCLAW_GRPC_TLS_CERT".to_string(), path(&cert.cert)),
        ("OPENCLAW_GRPC_TLS_KEY".to_string(), path(&cert.key)),
    ];
    if let Some(ca) = client_ca {
        env.push(("OPENCLAW_GRPC_CLIENT_CA".to_string(), path(ca)));
    }
    spawn_core(&CoreOptions {
        upstream: Some(upstream.base_url()),
        data_dir: Some(dir.to_path_buf()),
        env,
        ..CoreOptions::default()
    })
}

/// An HTTPS client that trusts only `ca`.
fn trusting(ca: &TestCa) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("CA pem")])
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTPS client")
}

async fn create_and_talk(http: &reqwest::Client, base: &str) {
    let key = create_key(http, base, "tls", json!({})).await;
    let response = http
        .post(format!("{base}/api/v1/sessions"))
        .bearer_auth(&key)
        .json(&json!({"messages": [{"role": "user", "content": "over TLS"}]}))
        .send()
        .await
        .expect("POST a session");
    let data = expect_data(response, 201).await;
    assert_eq!(data["message"]["content"], "echo: over TLS", "{data}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_serves_https_over_http2_and_http1_to_clients_trusting_its_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new(dir.path(), "public");
    let cert = ca.server("edge");
    let upstream = FakeUpstream::start().await;
    let core = spawn_core(&CoreOptions {
        upstream: Some(upstream.base_url()),
        data_dir: Some(dir.path().to_path_buf()),
        ..CoreOptions::default()
    });
    let edge = spawn_edge_with(
        &[&core],
        &[
            ("OPENCLAW_TLS_CERT", &path(&cert.cert)),
            ("OPENCLAW_TLS_KEY", &path(&cert.key)),
        ],
    );
    let base = format!("https://localhost:{}", edge.port);

    let http = trusting(&ca);
    let health = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("HTTPS");
    assert_eq!(health.status(), 200);
    assert_eq!(health.version(), reqwest::Version::HTTP_2, "ALPN picks h2");
    create_and_talk(&http, &base).await;

    let http1 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("CA pem")])
        .http1_only()
        .build()
        .expect("HTTP/1.1 client");
    let health = http1
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("HTTPS/1.1");
    assert_eq!(health.status(), 200);
    assert_eq!(health.version(), reqwest::Version::HTTP_11);
    create_and_talk(&http1, &base).await;

    // A dashboard sign-in over the edge's own TLS gets the `__Host-` cookie, Secure, whichever
    // HTTP version carried it (an HTTP/1.1 request line names no scheme).
    for http1_only in [false, true] {
        let mut client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.pem().as_bytes()).expect("CA pem")])
            .redirect(reqwest::redirect::Policy::none());
        if http1_only {
            client = client.http1_only();
        }
        let signed_in = client
            .build()
            .expect("HTTPS client")
            .post(format!("{base}/dashboard/login"))
            .form(&[("credential", INTERNAL_TOKEN)])
            .send()
            .await
            .expect("dashboard sign-in over HTTPS");
        let cookie = signed_in
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            cookie.starts_with("__Host-openclaw_dash=") && cookie.contains("; Secure"),
            "{:?}: {cookie}",
            signed_in.version()
        );
    }

    // A client that does not trust the CA refuses the edge; plain HTTP gets no answer.
    let stranger = TestCa::new(dir.path(), "stranger");
    assert!(
        trusting(&stranger)
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err()
    );
    assert!(
        reqwest::Client::new()
            .get(format!("http://localhost:{}/healthz", edge.port))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_reaches_a_core_over_tls_by_name_and_by_address() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new(dir.path(), "internal");
    let cert = ca.server("core");
    let upstream = FakeUpstream::start().await;
    let core = tls_core(&upstream, dir.path(), &cert, None);
    let ca_path = path(&ca.cert_path());
    // A host name is re-resolved (the certificate is checked against the name); an address is fixed.
    for host in ["localhost", "127.0.0.1"] {
        let url = format!("https://{host}:{}", core.port);
        let edge = spawn_edge_with(
            &[&core],
            &[("OPENCLAW_CORE_URL", &url), ("OPENCLAW_CORE_CA", &ca_path)],
        );
        // Like a readiness probe in front of it: traffic once the edge has reached the core.
        wait_until_ready(&edge).await;
        let http = reqwest::Client::new();
        create_and_talk(&http, &format!("http://127.0.0.1:{}", edge.port)).await;
    }

    // A plain-text edge cannot talk to the TLS core: an error in the envelope, not a hang. (The
    // core's TLS alert reads as a broken HTTP/2 frame: 500 INTERNAL_ERROR, or 503 UNAVAILABLE when
    // the connection is seen to drop first.)
    let plain = spawn_edge(&[&core]);
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/api/v1/keys", plain.port))
        .bearer_auth(INTERNAL_TOKEN)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("an answer");
    match response.status().as_u16() {
        500 => expect_error(response, 500, "INTERNAL_ERROR").await,
        _ => expect_error(response, 503, "UNAVAILABLE").await,
    };
}

/// A core requiring client certificates from `client_ca`, and an edge presenting `client` (or none).
async fn mutual(client_from: Option<&str>) -> (tempfile::TempDir, Process, Process) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new(dir.path(), "internal");
    let server = ca.server("core");
    let upstream = FakeUpstream::start().await;
    let core = tls_core(&upstream, dir.path(), &server, Some(&ca.cert_path()));
    let url = format!("https://localhost:{}", core.port);
    let ca_path = path(&ca.cert_path());
    let mut env = vec![("OPENCLAW_CORE_URL", url), ("OPENCLAW_CORE_CA", ca_path)];
    let client = match client_from {
        Some("internal") => Some(ca.client("edge")),
        Some(other) => Some(TestCa::new(dir.path(), other).client("edge")),
        None => None,
    };
    if let Some(client) = &client {
        env.push(("OPENCLAW_CORE_CLIENT_CERT", path(&client.cert)));
        env.push(("OPENCLAW_CORE_CLIENT_KEY", path(&client.key)));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let edge = spawn_edge_with(&[&core], &env);
    (dir, core, edge)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_an_edge_whose_certificate_the_cores_ca_signed() {
    let (_dir, _core, edge) = mutual(Some("internal")).await;
    wait_until_ready(&edge).await;
    create_and_talk(
        &reqwest::Client::new(),
        &format!("http://127.0.0.1:{}", edge.port),
    )
    .await;
}

async fn refused(edge: &Process) -> Value {
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/api/v1/keys", edge.port))
        .bearer_auth(INTERNAL_TOKEN)
        .json(&json!({"name": "never"}))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .expect("an answer");
    expect_error(response, 503, "UNAVAILABLE").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_an_edge_without_a_client_certificate() {
    let (_dir, _core, edge) = mutual(None).await;
    let error = refused(&edge).await;
    assert!(
        error["details"]
            .as_str()
            .is_some_and(|d| d.contains("OPENCLAW_CORE_URL")),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_an_edge_whose_certificate_another_ca_signed() {
    let (_dir, _core, edge) = mutual(Some("stranger")).await;
    refused(&edge).await;
}

/// Runs a binary that should refuse its configuration; its exit code and what it printed.
fn refusal(binary: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let program = PathBuf::from(env!("CARGO_BIN_EXE_openclaw-gateway")).with_file_name(binary);
    let output = Command::new(program)
        .args(args)
        .env_clear()
        .env("OPENCLAW_HTTP_ADDR", "127.0.0.1:0")
        .env("OPENCLAW_GRPC_ADDR", "127.0.0.1:0")
        .env("OPENCLAW_METRICS_ADDR", "127.0.0.1:0")
        .env("OPENCLAW_INTERNAL_TOKEN", INTERNAL_TOKEN)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

#[test]
fn tls_settings_that_cannot_work_stop_the_start_with_what_to_fix() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.pem");
    let missing = path(&missing);

    let (code, text) = refusal(
        "openclaw-rest",
        &[],
        &[
            ("OPENCLAW_TLS_CERT", &missing),
            ("OPENCLAW_TLS_KEY", &missing),
        ],
    );
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains(&missing), "names the file: {text}");

    let (code, text) = refusal("openclaw-rest", &[], &[("OPENCLAW_TLS_CERT", &missing)]);
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("OPENCLAW_TLS_KEY"), "{text}");

    let (code, text) = refusal(
        "openclaw-rest",
        &[],
        &[("OPENCLAW_CORE_URL", "https://core.internal:50051")],
    );
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("OPENCLAW_CORE_CA"), "{text}");

    let data = dir.path().to_path_buf();
    let (code, text) = refusal(
        "openclaw-gateway",
        &["serve", "--data-dir", &path(&data)],
        &[("OPENCLAW_GRPC_CLIENT_CA", &missing)],
    );
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("OPENCLAW_GRPC_TLS_CERT"), "{text}");

    let (code, text) = refusal(
        "openclaw-gateway",
        &["serve", "--data-dir", &path(&data)],
        &[
            ("OPENCLAW_GRPC_TLS_CERT", &missing),
            ("OPENCLAW_GRPC_TLS_KEY", &missing),
        ],
    );
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains(&missing), "{text}");
}

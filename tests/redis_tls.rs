//! The gateway on Redis that speaks only TLS: with the right CA it serves keys, sessions and
//! turns end to end (one node, a Cluster, a Sentinel group); with the wrong CA, a server
//! certificate for another name, or a server requiring a client certificate the core lacks,
//! `openclaw-gateway serve` exits at start-up with a message naming the setting to fix;
//! `--print-config` shows no Redis password.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::redis_topologies::{
    RedisCluster, SentinelGroup, TlsMaterial, TopologyOptions, start_redis_tls,
};
use support::{CoreOptions, FakeUpstream, Process, expect_data};

/// How long a core with an unusable TLS setting may take to give up: a few Redis timeouts.
const EXIT_WITHIN: Duration = Duration::from_secs(10);

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// Settings for a core on `redis` (one of the `OPENCLAW_REDIS_*` address settings) with
/// extra `env`.
fn core_options(
    upstream: &FakeUpstream,
    dir: &tempfile::TempDir,
    env: &[(&str, String)],
) -> CoreOptions {
    CoreOptions {
        redis_url: None,
        upstream: Some(upstream.base_url()),
        data_dir: Some(dir.path().to_path_buf()),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .chain([("OPENCLAW_REDIS_TIMEOUT_MS".to_string(), "1000".to_string())])
            .collect(),
    }
}

/// A key, a session created with a first turn, and a second turn, through an edge on `cores`.
async fn serves_keys_sessions_and_turns(cores: &[&Process]) {
    let edge = support::spawn_edge(cores);
    support::wait_until_ready(&edge).await;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", edge.port);
    let key = support::create_key(&http, &base, "tls", json!({})).await;
    let created = support::post_with_key(
        &http,
        format!("{base}/api/v1/sessions"),
        &key,
        &json!({"messages": [{"role": "user", "content": "over tls"}]}),
    )
    .await;
    let created = expect_data(created, 201).await;
    let session = created["sessionId"].as_str().unwrap().to_string();
    let sent = support::post_with_key(
        &http,
        format!("{base}/api/v1/sessions/{session}/messages"),
        &key,
        &json!({"message": {"role": "user", "content": "still over tls"}}),
    )
    .await;
    expect_data(sent, 200).await;
    let history = support::get_with_key(
        &http,
        format!("{base}/api/v1/sessions/{session}/messages"),
        &key,
    )
    .await;
    let history = expect_data(history, 200).await;
    assert_eq!(
        history["messages"].as_array().unwrap().len(),
        4,
        "{history}"
    );
}

/// Runs a core expected to refuse its Redis setting: it must exit non-zero within
/// `EXIT_WITHIN`, saying every one of `named`. Returns what it said.
fn refuses_to_start(options: &CoreOptions, named: &[&str]) -> String {
    let started = Instant::now();
    let (code, output) = support::run_core_to_exit(options, &[], EXIT_WITHIN);
    let took = started.elapsed();
    assert!(
        code.is_some_and(|c| c != 0),
        "the core did not exit with an error within {EXIT_WITHIN:?} (code {code:?}):\n{output}"
    );
    for name in named {
        assert!(
            output.contains(name),
            "the exit does not name {name}:\n{output}"
        );
    }
    eprintln!(
        "refused in {took:?}: {}",
        output.trim().lines().last().unwrap_or_default()
    );
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_right_ca_a_tls_redis_serves_end_to_end_by_name_and_by_ip() {
    let material = TlsMaterial::generate();
    let redis = start_redis_tls(&material, false);
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    // By host name, and by IP address (the certificate carries both as SANs).
    for host in ["localhost", "127.0.0.1"] {
        let core = support::spawn_core(&core_options(
            &upstream,
            &dir,
            &[
                (
                    "OPENCLAW_REDIS_URL",
                    format!("rediss://{host}:{}", redis.port),
                ),
                ("OPENCLAW_REDIS_CA_FILE", path(&material.ca_cert)),
            ],
        ));
        serves_keys_sessions_and_turns(&[&core]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_a_certificate_for_another_name_stops_the_core_at_start_up() {
    let material = TlsMaterial::generate();
    let redis = start_redis_tls(&material, false);
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("rediss://localhost:{}", redis.port);

    // A CA that did not sign the server's certificate.
    let options = core_options(
        &upstream,
        &dir,
        &[
            ("OPENCLAW_REDIS_URL", url.clone()),
            ("OPENCLAW_REDIS_CA_FILE", path(&material.other_ca_cert)),
        ],
    );
    let said = refuses_to_start(
        &options,
        &["OPENCLAW_REDIS_CA_FILE", "not signed by the CA"],
    );
    assert!(said.contains(&path(&material.other_ca_cert)), "{said}");

    // No CA at all: the system's roots do not know the test CA either.
    let options = core_options(&upstream, &dir, &[("OPENCLAW_REDIS_URL", url)]);
    refuses_to_start(&options, &["OPENCLAW_REDIS_CA_FILE", "the system's roots"]);

    // A rediss:// address of a server that speaks plain TCP.
    let plain = support::start_redis();
    let options = core_options(
        &upstream,
        &dir,
        &[
            (
                "OPENCLAW_REDIS_URL",
                format!("rediss://localhost:{}", plain.port),
            ),
            ("OPENCLAW_REDIS_CA_FILE", path(&material.ca_cert)),
        ],
    );
    refuses_to_start(
        &options,
        &[
            "answers plain-text Redis, not TLS",
            "OPENCLAW_REDIS_URL",
            "redis://",
        ],
    );

    // The right CA, but a certificate issued for another name: names are checked.
    let elsewhere = material.with_server_cert_for("elsewhere.example");
    let stranger = start_redis_tls(&elsewhere, false);
    for host in ["localhost", "127.0.0.1"] {
        let options = core_options(
            &upstream,
            &dir,
            &[
                (
                    "OPENCLAW_REDIS_URL",
                    format!("rediss://{host}:{}", stranger.port),
                ),
                ("OPENCLAW_REDIS_CA_FILE", path(&material.ca_cert)),
            ],
        );
        refuses_to_start(
            &options,
            &["not issued for the host", "OPENCLAW_REDIS_URL", host],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_requiring_client_certificates_needs_the_clients_and_takes_no_stranger() {
    let material = TlsMaterial::generate();
    let redis = start_redis_tls(&material, true);
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let base = [
        (
            "OPENCLAW_REDIS_URL",
            format!("rediss://localhost:{}", redis.port),
        ),
        ("OPENCLAW_REDIS_CA_FILE", path(&material.ca_cert)),
    ];

    // Without a client certificate.
    let options = core_options(&upstream, &dir, &base);
    refuses_to_start(
        &options,
        &[
            "requires a client certificate",
            "OPENCLAW_REDIS_CLIENT_CERT",
            "OPENCLAW_REDIS_CLIENT_KEY",
        ],
    );

    // With a certificate another CA signed.
    let mut stranger = base.to_vec();
    stranger.push((
        "OPENCLAW_REDIS_CLIENT_CERT",
        path(&material.foreign_client_cert),
    ));
    stranger.push((
        "OPENCLAW_REDIS_CLIENT_KEY",
        path(&material.foreign_client_key),
    ));
    let options = core_options(&upstream, &dir, &stranger);
    refuses_to_start(
        &options,
        &[
            "refused the client certificate",
            "OPENCLAW_REDIS_CLIENT_CERT",
        ],
    );

    // Half a pair is named before anything is tried.
    let mut half = base.to_vec();
    half.push(("OPENCLAW_REDIS_CLIENT_CERT", path(&material.client_cert)));
    let options = core_options(&upstream, &dir, &half);
    refuses_to_start(&options, &["OPENCLAW_REDIS_CLIENT_KEY"]);

    // With the client certificate the server's CA signed.
    let mut with_cert = base.to_vec();
    with_cert.push(("OPENCLAW_REDIS_CLIENT_CERT", path(&material.client_cert)));
    with_cert.push(("OPENCLAW_REDIS_CLIENT_KEY", path(&material.client_key)));
    let core = support::spawn_core(&core_options(&upstream, &dir, &with_cert));
    serves_keys_sessions_and_turns(&[&core]).await;
}

#[test]
fn the_printed_configuration_shows_no_redis_password() {
    let options = CoreOptions {
        env: [
            (
                "OPENCLAW_REDIS_URL",
                "rediss://gateway:url-secret-1@localhost:6380/0",
            ),
            ("OPENCLAW_REDIS_PASSWORD", "env-secret-2"),
            (
                "OPENCLAW_REDIS_SENTINELS",
                "rediss://:sentinel-url-secret-3@127.0.0.1:26379,127.0.0.1:26380",
            ),
            ("OPENCLAW_REDIS_SENTINEL_PASSWORD", "sentinel-secret-4"),
            (
                "OPENCLAW_REDIS_CLUSTER_NODES",
                "redis://:cluster-secret-5@127.0.0.1:7000",
            ),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..CoreOptions::default()
    };
    let (code, printed) =
        support::run_core_to_exit(&options, &["--print-config"], Duration::from_secs(10));
    assert_eq!(code, Some(0), "{printed}");
    for secret in [
        "url-secret-1",
        "env-secret-2",
        "sentinel-url-secret-3",
        "sentinel-secret-4",
        "cluster-secret-5",
    ] {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
    }
    // What is not secret is still shown, so the operator can tell which servers are meant.
    assert!(printed.contains("localhost:6380"), "{printed}");
    assert!(
        printed.contains("redis-password = \"<redacted>\""),
        "{printed}"
    );
    assert!(
        printed.contains("redis-sentinel-password = \"<redacted>\""),
        "{printed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_cluster_serves_end_to_end() {
    let material = TlsMaterial::generate();
    let cluster = RedisCluster::start_with(
        3,
        1,
        &TopologyOptions {
            tls: Some(material.clone()),
            ..TopologyOptions::default()
        },
    );
    let seeds = cluster
        .seeds()
        .split(',')
        .map(|seed| format!("rediss://{seed}"))
        .collect::<Vec<_>>()
        .join(",");
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let options = core_options(
        &upstream,
        &dir,
        &[
            ("OPENCLAW_REDIS_CLUSTER_NODES", seeds.clone()),
            ("OPENCLAW_REDIS_CA_FILE", path(&material.ca_cert)),
        ],
    );
    let cores: Vec<Process> = (0..2).map(|_| support::spawn_core(&options)).collect();
    serves_keys_sessions_and_turns(&cores.iter().collect::<Vec<_>>()).await;

    // The wrong CA is named at start-up here too.
    let options = core_options(
        &upstream,
        &dir,
        &[
            ("OPENCLAW_REDIS_CLUSTER_NODES", seeds),
            ("OPENCLAW_REDIS_CA_FILE", path(&material.other_ca_cert)),
        ],
    );
    refuses_to_start(&options, &["OPENCLAW_REDIS_CA_FILE"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_sentinel_group_serves_end_to_end() {
    let material = TlsMaterial::generate();
    let group = SentinelGroup::start_with(
        "openclaw-tls",
        &TopologyOptions {
            tls: Some(material.clone()),
            ..TopologyOptions::default()
        },
    );
    let sentinels = group
        .sentinels()
        .split(',')
        .map(|sentinel| format!("rediss://{sentinel}"))
        .collect::<Vec<_>>()
        .join(",");
    let upstream = FakeUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let options = core_options(
        &upstream,
        &dir,
        &[
            ("OPENCLAW_REDIS_SENTINELS", sentinels.clone()),
            (
                "OPENCLAW_REDIS_SENTINEL_MASTER",
                group.master_name().to_string(),
            ),
            ("OPENCLAW_REDIS_CA_FILE", path(&material.ca_cert)),
        ],
    );
    let cores: Vec<Process> = (0..2).map(|_| support::spawn_core(&options)).collect();
    serves_keys_sessions_and_turns(&cores.iter().collect::<Vec<_>>()).await;

    let options = core_options(
        &upstream,
        &dir,
        &[
            ("OPENCLAW_REDIS_SENTINELS", sentinels),
            (
                "OPENCLAW_REDIS_SENTINEL_MASTER",
                group.master_name().to_string(),
            ),
            ("OPENCLAW_REDIS_CA_FILE", path(&material.other_ca_cert)),
        ],
    );
    refuses_to_start(&options, &["OPENCLAW_REDIS_CA_FILE"]);
}

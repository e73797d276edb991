//! The gateway on a Sentinel-managed Redis: one primary, one replica, three Sentinels, two
//! cores and two edges. Sessions are created and continued across the replicas; when the
//! primary is SIGKILLed mid-traffic, every send is answered (succeeded or UNAVAILABLE) within
//! a bound of the Redis timeout, the cores follow the promoted replica without a restart, the
//! system status names the new primary, and no acknowledged turn is lost. The same holds when
//! the data nodes require a password or an ACL user while the Sentinels require none.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::redis_topologies::{RedisAuth, SentinelGroup, TopologyOptions};
use support::{CoreOptions, Replicas, expect_data};

/// The Redis timeout the cores run with: the bound on any one store command.
const REDIS_TIMEOUT_MS: u64 = 1000;

/// The longest a send may take while the primary is gone: a few Redis timeouts (asking the
/// Sentinels, connecting to the primary they name, the command itself) and the edge's hop.
const SEND_BOUND: Duration = Duration::from_millis(REDIS_TIMEOUT_MS * 4 + 2000);

/// How long after the kill the service must answer again: the Sentinels' down-after
/// (1.5 s), their election and promotion, and the cores asking them again.
const RESUME_BOUND: Duration = Duration::from_secs(20);

struct SentinelStack {
    group: SentinelGroup,
    replicas: Replicas,
}

impl std::ops::Deref for SentinelStack {
    type Target = Replicas;

    fn deref(&self) -> &Replicas {
        &self.replicas
    }
}

impl SentinelStack {
    async fn start(options: &TopologyOptions) -> Self {
        let group = SentinelGroup::start_with("openclaw", options);
        let mut env = vec![
            ("OPENCLAW_REDIS_SENTINELS".to_string(), group.sentinels()),
            (
                "OPENCLAW_REDIS_SENTINEL_MASTER".to_string(),
                group.master_name().to_string(),
            ),
            (
                "OPENCLAW_REDIS_TIMEOUT_MS".to_string(),
                REDIS_TIMEOUT_MS.to_string(),
            ),
            // Keeps a turn lock orphaned by the failover short-lived.
            (
                "OPENCLAW_PROVIDER_TIMEOUT_MS".to_string(),
                "5000".to_string(),
            ),
        ];
        // The data nodes' credentials; the harness's Sentinels require none.
        if let Some(auth) = &options.auth {
            if let Some(user) = &auth.user {
                env.push(("OPENCLAW_REDIS_USERNAME".to_string(), user.clone()));
            }
            env.push(("OPENCLAW_REDIS_PASSWORD".to_string(), auth.password.clone()));
        }
        let replicas = Replicas::start(env).await;
        Self { group, replicas }
    }

    /// A new key's secret.
    async fn key(&self, name: &str) -> String {
        support::create_key(&self.http, &self.edge(0), name, json!({})).await
    }

    /// The Redis nodes the status through `edge` lists: (address, kind, status).
    async fn redis_nodes(&self, edge: usize, key: &str) -> Vec<(String, String, String)> {
        let response = support::get_with_key(
            &self.http,
            format!("{}/api/v1/system/status", self.edge(edge)),
            key,
        )
        .await;
        let status = expect_data(response, 200).await;
        let mut nodes: Vec<(String, String, String)> = status["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|d| {
                let name = d["name"].as_str()?;
                let address = name.strip_prefix("redis ")?;
                Some((
                    address.to_string(),
                    d["kind"].as_str().unwrap_or_default().to_string(),
                    d["status"].as_str().unwrap_or_default().to_string(),
                ))
            })
            .collect();
        nodes.sort();
        nodes
    }

    /// Polls the replica until it has applied everything the primary holds, so what was
    /// acknowledged before this returns survives the primary's loss.
    fn wait_for_replication(&self) {
        let primary = self.group.primary_port();
        let replica = self.replica_port(primary);
        let offset = |port: u16, field: &str| -> i64 {
            self.group
                .redis_cli(port, &["INFO", "replication"])
                .lines()
                .find_map(|line| line.strip_prefix(field))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(-1)
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let wanted = offset(primary, "master_repl_offset:");
            if offset(replica, "slave_repl_offset:") >= wanted {
                return;
            }
            assert!(Instant::now() < deadline, "the replica lags behind");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn replica_port(&self, primary: u16) -> u16 {
        self.group
            .data_ports()
            .into_iter()
            .find(|p| *p != primary)
            .unwrap()
    }
}

/// Sessions across both edges, then the primary killed mid-traffic: every send answered in
/// bound, service back on the promoted replica, status naming it, nothing acknowledged lost.
async fn survives_the_primarys_loss(options: TopologyOptions) {
    let mut stack = SentinelStack::start(&options).await;
    let key = stack.key("sentinel-failover").await;
    let primary = stack.group.primary_port();
    let replica = stack.replica_port(primary);

    // Created through one edge, continued through the other, read through both.
    let created = support::post_with_key(
        &stack.http,
        format!("{}/api/v1/sessions", stack.edge(0)),
        &key,
        &json!({"messages": [{"role": "user", "content": "before 0"}]}),
    )
    .await;
    let session = expect_data(created, 201).await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let mut acknowledged = vec!["before 0".to_string()];
    for n in 1..5 {
        let text = format!("before {n}");
        expect_data(stack.send(n, &key, &session, &text).await, 200).await;
        acknowledged.push(text);
    }
    for edge in 0..2 {
        let history = stack.history(edge, &key, &session).await;
        assert_eq!(history.len(), 10, "through edge {edge}: {history:?}");
    }

    // Both replicas' status lists the primary and its replica.
    for edge in 0..2 {
        let mut expected = vec![
            (
                format!("127.0.0.1:{primary}"),
                "store-primary".to_string(),
                "ok".to_string(),
            ),
            (
                format!("127.0.0.1:{replica}"),
                "store-replica".to_string(),
                "ok".to_string(),
            ),
        ];
        expected.sort();
        assert_eq!(
            stack.redis_nodes(edge, &key).await,
            expected,
            "through edge {edge}"
        );
    }

    stack.wait_for_replication();
    let killed = stack.group.kill_primary();
    assert_eq!(killed, primary);
    let killed_at = Instant::now();

    // Keep talking through both edges until the session answers again, then a little longer.
    let during = stack
        .talk_through_failover(&key, &session, killed_at, 6, (SEND_BOUND, RESUME_BOUND))
        .await;
    acknowledged.extend(during.acknowledged.iter().cloned());
    let (answers, slowest) = (&during.answers, during.slowest);
    let resumed_after = during.resumed_after.unwrap();
    let (promoted, promotion) = stack.group.wait_for_promotion(Duration::from_secs(20));
    assert_eq!(promoted, replica, "the only replica is the one promoted");
    eprintln!(
        "sentinel failover ({}): every Sentinel named {promoted} when checked, {promotion:?} after the kill; \
         first success {resumed_after:?} after the kill; answers {answers:?}; slowest answer \
         {slowest:?} (bound {SEND_BOUND:?})",
        match &options.auth {
            None => "no auth".to_string(),
            Some(RedisAuth { user: None, .. }) => "requirepass".to_string(),
            Some(RedisAuth { user: Some(u), .. }) => format!("ACL user {u}"),
        }
    );

    // Nothing acknowledged is missing, through either edge; nothing appears twice.
    for edge in 0..2 {
        let history = stack.history(edge, &key, &session).await;
        for text in &acknowledged {
            assert_eq!(
                history.iter().filter(|m| *m == text).count(),
                1,
                "acknowledged turn {text:?} through edge {edge}: {history:?}"
            );
        }
    }

    // The status of both cores names the promoted replica as the primary.
    for edge in 0..2 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let nodes = stack.redis_nodes(edge, &key).await;
            let primaries: Vec<&(String, String, String)> =
                nodes.iter().filter(|n| n.1 == "store-primary").collect();
            // The lost primary stays listed, now as a replica that is down.
            let lost = (
                format!("127.0.0.1:{killed}"),
                "store-replica".to_string(),
                "down".to_string(),
            );
            if primaries.len() == 1
                && primaries[0].0 == format!("127.0.0.1:{promoted}")
                && primaries[0].2 == "ok"
                && nodes.contains(&lost)
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "status through edge {edge} after the failover: {nodes:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_followed_to_its_promoted_replica_without_a_restart() {
    survives_the_primarys_loss(TopologyOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_nodes_behind_a_password_are_reached_through_sentinels_that_have_none() {
    survives_the_primarys_loss(TopologyOptions {
        auth: Some(RedisAuth::password("data-node-secret")),
        ..TopologyOptions::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_nodes_behind_an_acl_user_are_reached_through_sentinels_that_have_none() {
    survives_the_primarys_loss(TopologyOptions {
        auth: Some(RedisAuth::acl_user("gateway", "acl-user-secret")),
        ..TopologyOptions::default()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_stop_the_core_at_start_up_naming_the_side_that_refused() {
    let group = SentinelGroup::start_with(
        "openclaw-auth",
        &TopologyOptions {
            auth: Some(RedisAuth::password("data-node-secret")),
            ..TopologyOptions::default()
        },
    );
    let options = |extra: &[(&str, &str)]| CoreOptions {
        env: [
            ("OPENCLAW_REDIS_SENTINELS", group.sentinels().as_str()),
            ("OPENCLAW_REDIS_SENTINEL_MASTER", group.master_name()),
        ]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        ..CoreOptions::default()
    };
    let cases: [(&[(&str, &str)], &str); 3] = [
        // The data nodes' password missing, or wrong: the primary refuses.
        (
            &[],
            "OPENCLAW_REDIS_PASSWORD to the data nodes' credentials",
        ),
        (
            &[("OPENCLAW_REDIS_PASSWORD", "not-the-secret")],
            "OPENCLAW_REDIS_PASSWORD to the data nodes' credentials",
        ),
        // A password for Sentinels that have none: the Sentinels refuse.
        (
            &[
                ("OPENCLAW_REDIS_PASSWORD", "data-node-secret"),
                ("OPENCLAW_REDIS_SENTINEL_PASSWORD", "data-node-secret"),
            ],
            "the Sentinels refused them",
        ),
    ];
    for (extra, named) in cases {
        let started = Instant::now();
        let (code, output) =
            support::run_core_to_exit(&options(extra), &[], Duration::from_secs(10));
        assert!(
            code.is_some_and(|c| c != 0),
            "with {extra:?} the core did not exit with an error (code {code:?}):\n{output}"
        );
        assert!(output.contains(named), "with {extra:?}:\n{output}");
        assert!(
            !output.contains("data-node-secret") && !output.contains("not-the-secret"),
            "a password is printed:\n{output}"
        );
        eprintln!(
            "with {extra:?} refused in {:?}: {}",
            started.elapsed(),
            output.trim()
        );
    }
}

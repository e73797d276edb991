//! The gateway on a Redis Cluster: three primaries, each with a replica, two cores and two
//! edges. The guide's flows, exact rate-limit admission and cron exactly once hold across the
//! replicas as on one node; a primary killed mid-traffic is followed by its replica, with every
//! request answered (succeeded or UNAVAILABLE) within the Redis timeout's bound and no
//! acknowledged turn lost.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::redis_topologies::RedisCluster;
use support::{CoreOptions, FakeUpstream, Process, expect_data};

/// The Redis timeout the cores run with: the bound on any one store command.
const REDIS_TIMEOUT_MS: u64 = 1000;

struct ClusterStack {
    cluster: RedisCluster,
    _upstream: FakeUpstream,
    _cores: Vec<Process>,
    edges: Vec<Process>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl ClusterStack {
    async fn start() -> Self {
        let cluster = RedisCluster::start(3, 1);
        let upstream = FakeUpstream::start().await;
        let dir = tempfile::tempdir().unwrap();
        let options = CoreOptions {
            redis_url: None,
            upstream: Some(upstream.base_url()),
            data_dir: Some(dir.path().to_path_buf()),
            env: vec![
                ("OPENCLAW_REDIS_CLUSTER_NODES".into(), cluster.seeds()),
                ("OPENCLAW_REDIS_TIMEOUT_MS".into(), REDIS_TIMEOUT_MS.to_string()),
                // Keeps a turn lock orphaned by the failover short-lived.
                ("OPENCLAW_PROVIDER_TIMEOUT_MS".into(), "5000".into()),
            ],
        };
        let cores: Vec<Process> = (0..2).map(|_| support::spawn_core(&options)).collect();
        let refs: Vec<&Process> = cores.iter().collect();
        let edges: Vec<Process> = (0..2).map(|_| support::spawn_edge(&refs)).collect();
        for edge in &edges {
            support::wait_until_ready(edge).await;
        }
        Self {
            cluster,
            _upstream: upstream,
            _cores: cores,
            edges,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            _dir: dir,
        }
    }

    fn edge(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.edges[i % self.edges.len()].port)
    }

    /// A key with `limits`; returns (secret, id).
    async fn key(&self, name: &str, limits: Value) -> (String, String) {
        let response = self
            .http
            .post(format!("{}/api/v1/keys", self.edge(0)))
            .bearer_auth(support::INTERNAL_TOKEN)
            .json(&json!({"name": name, "limits": limits}))
            .send()
            .await
            .unwrap();
        let data = expect_data(response, 201).await;
        (
            data["key"].as_str().unwrap().to_string(),
            data["id"].as_str().unwrap().to_string(),
        )
    }

    async fn send(&self, edge: usize, key: &str, session: &str, text: &str) -> reqwest::Response {
        support::post_with_key(
            &self.http,
            format!("{}/api/v1/sessions/{session}/messages", self.edge(edge)),
            key,
            &json!({"message": {"role": "user", "content": text}}),
        )
        .await
    }

    async fn history(&self, edge: usize, key: &str, session: &str) -> Vec<String> {
        let response = support::get_with_key(
            &self.http,
            format!(
                "{}/api/v1/sessions/{session}/messages?pageSize=500",
                self.edge(edge)
            ),
            key,
        )
        .await;
        let data = expect_data(response, 200).await;
        data["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_flows_limits_and_cron_hold_across_replicas_on_a_redis_cluster() {
    let stack = ClusterStack::start().await;

    // Sessions: created through one edge, continued through the other, read through both.
    let (key, _) = stack.key("cluster-flows", json!({})).await;
    let created = support::post_with_key(
        &stack.http,
        format!("{}/api/v1/sessions", stack.edge(0)),
        &key,
        &json!({"messages": [{"role": "user", "content": "first"}]}),
    )
    .await;
    let created = expect_data(created, 201).await;
    let session = created["sessionId"].as_str().unwrap().to_string();
    for (turn, text) in ["second", "third", "fourth"].iter().enumerate() {
        let answer = stack.send(turn + 1, &key, &session, text).await;
        expect_data(answer, 200).await;
    }
    for edge in 0..2 {
        let history = stack.history(edge, &key, &session).await;
        assert_eq!(
            history
                .iter()
                .filter(|m| !m.starts_with("echo: "))
                .collect::<Vec<_>>(),
            ["first", "second", "third", "fourth"],
            "through edge {edge}: {history:?}"
        );
        assert_eq!(history.len(), 8, "{history:?}");
    }
    let listed = support::get_with_key(
        &stack.http,
        format!("{}/api/v1/sessions", stack.edge(1)),
        &key,
    )
    .await;
    let listed = expect_data(listed, 200).await;
    assert!(listed.to_string().contains(&session), "{listed}");

    // Exact admission: 60 calls at once through both edges and both cores, 25 admitted.
    let (limited, _) = stack
        .key("cluster-limited", json!({"requestsPerMinute": 25}))
        .await;
    let calls = (0..60).map(|i| {
        support::get_with_key(
            &stack.http,
            format!("{}/api/v1/system/status", stack.edge(i)),
            limited.clone(),
        )
    });
    let statuses: Vec<u16> = futures::future::join_all(calls)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((admitted, refused), (25, 35), "{statuses:?}");

    // Cron: a job every second, claimed by two cores, runs once per due time.
    let (cron_key, _) = stack.key("cluster-cron", json!({})).await;
    let job = support::post_with_key(
        &stack.http,
        format!("{}/api/v1/cron/jobs", stack.edge(0)),
        &cron_key,
        &json!({"name": "tick", "schedule": {"kind": "every", "everyMs": 1000},
                "payload": {"kind": "systemEvent", "text": "tick"}}),
    )
    .await;
    let job = expect_data(job, 201).await;
    let job = job["id"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let runs = support::get_with_key(
        &stack.http,
        format!("{}/api/v1/cron/jobs/{job}/runs?pageSize=500", stack.edge(1)),
        &cron_key,
    )
    .await;
    let runs = expect_data(runs, 200).await;
    let due: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let unique: BTreeSet<&&str> = due.iter().collect();
    assert!(due.len() >= 4, "a run per second: {due:?}");
    assert_eq!(unique.len(), due.len(), "a due time ran twice: {due:?}");
    drop(stack.cluster);
}

/// Polls the replicas of `primary` until each has applied everything the primary holds, so
/// what was acknowledged before this returns survives the primary's loss.
fn wait_for_replication(cluster: &RedisCluster, primary: u16) {
    let offset = |port: u16, field: &str| -> i64 {
        cluster
            .redis_cli(port, &["INFO", "replication"])
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(-1)
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let wanted = offset(primary, "master_repl_offset:");
        if cluster
            .replicas_of(primary)
            .iter()
            .all(|replica| offset(*replica, "slave_repl_offset:") >= wanted)
        {
            return;
        }
        assert!(Instant::now() < deadline, "replicas of {primary} lag behind");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_mid_traffic_is_followed_by_its_replica() {
    let mut stack = ClusterStack::start().await;
    let (key, key_id) = stack.key("cluster-failover", json!({})).await;
    let created = support::post_with_key(
        &stack.http,
        format!("{}/api/v1/sessions", stack.edge(0)),
        &key,
        &json!({"messages": []}),
    )
    .await;
    let session = expect_data(created, 201).await["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let mut acknowledged = Vec::new();
    for n in 0..5 {
        let text = format!("before {n}");
        expect_data(stack.send(n, &key, &session, &text).await, 200).await;
        acknowledged.push(text);
    }
    // The node holding this session's keys (they share the tag `{<owner>/<id>}`).
    let victim = stack
        .cluster
        .primary_for_key(&format!("oc:s:{{{key_id}/{session}}}:meta"));
    wait_for_replication(&stack.cluster, victim);
    stack.cluster.kill(victim);
    let killed_at = Instant::now();

    // Keep talking to the session through both edges until it answers again, then a little
    // longer. Every answer is a success or UNAVAILABLE, and none takes long.
    let bound = Duration::from_millis(REDIS_TIMEOUT_MS * 4 + 2000);
    let mut answers: BTreeMap<u16, usize> = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    let mut resumed_after = None;
    let mut after_resume = 0;
    let mut n = 0;
    while after_resume < 5 {
        assert!(
            killed_at.elapsed() < Duration::from_secs(30),
            "service did not resume within 30 s of the kill: {answers:?}"
        );
        n += 1;
        let text = format!("during {n}");
        let started = Instant::now();
        let response = stack.send(n, &key, &session, &text).await;
        let took = started.elapsed();
        slowest = slowest.max(took);
        let status = response.status().as_u16();
        *answers.entry(status).or_default() += 1;
        match status {
            200 => {
                acknowledged.push(text);
                resumed_after.get_or_insert(killed_at.elapsed());
                after_resume += 1;
            }
            503 => {
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["error"]["code"], "UNAVAILABLE", "{body}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!(
                "during the failover a send got {other}: {}",
                response.text().await.unwrap_or_default()
            ),
        }
        assert!(took < bound, "a send took {took:?} during the failover");
    }
    let promotion = stack.cluster.wait_for_failover(victim, Duration::from_secs(30));
    eprintln!(
        "failover: replica promoted within {promotion:?} of waiting; first success {:?} after \
         the kill; answers {answers:?}; slowest answer {slowest:?}",
        resumed_after.unwrap()
    );
    // Nothing acknowledged is missing, through either edge.
    for edge in 0..2 {
        let history = stack.history(edge, &key, &session).await;
        for text in &acknowledged {
            assert!(
                history.contains(text),
                "acknowledged turn {text:?} missing through edge {edge}: {history:?}"
            );
        }
    }
}

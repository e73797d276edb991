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
use support::{CoreOptions, Replicas, expect_data};

/// The Redis timeout the cores run with: the bound on any one store command.
const REDIS_TIMEOUT_MS: u64 = 1000;

struct ClusterStack {
    cluster: RedisCluster,
    replicas: Replicas,
}

impl std::ops::Deref for ClusterStack {
    type Target = Replicas;

    fn deref(&self) -> &Replicas {
        &self.replicas
    }
}

impl ClusterStack {
    async fn start() -> Self {
        let cluster = RedisCluster::start(3, 1);
        let replicas = Replicas::start(vec![
            ("OPENCLAW_REDIS_CLUSTER_NODES".into(), cluster.seeds()),
            (
                "OPENCLAW_REDIS_TIMEOUT_MS".into(),
                REDIS_TIMEOUT_MS.to_string(),
            ),
            // Keeps a turn lock orphaned by the failover short-lived.
            ("OPENCLAW_PROVIDER_TIMEOUT_MS".into(), "5000".into()),
            // Key creations and changes wait for a replica's confirmation.
            ("OPENCLAW_REDIS_WAIT_REPLICAS".into(), "1".into()),
        ])
        .await;
        Self { cluster, replicas }
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

    // Cron: a job every second, claimed by two cores, runs once per due time, and each run's
    // event reaches a live subscriber on either core (the event stream is read with blocking
    // reads on a cluster connection of its own).
    let mut subscriber =
        openclaw_gateway::proto::event_service_client::EventServiceClient::connect(format!(
            "http://127.0.0.1:{}",
            stack.cores[1].port
        ))
        .await
        .unwrap();
    let mut subscribe = tonic::Request::new(openclaw_gateway::proto::SubscribeRequest {
        after_id: String::new(),
    });
    subscribe.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", support::INTERNAL_TOKEN)
            .parse()
            .unwrap(),
    );
    let mut live = subscriber.subscribe(subscribe).await.unwrap().into_inner();
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
    // The job keeps ticking: read what has arrived, up to the runs listed above.
    let mut ticks = 0;
    while ticks < due.len() {
        match tokio::time::timeout(Duration::from_millis(1500), live.message()).await {
            Ok(Ok(Some(event))) if event.job_id == job => ticks += 1,
            Ok(Ok(Some(_))) => {}
            _ => break,
        }
    }
    assert!(ticks >= 4, "live events of the job's runs: {ticks}");

    // The dashboard's traffic counts reached the cluster (a pipeline over minutes, one slot).
    let minute = chrono::Utc::now().timestamp().div_euclid(60);
    let counted: u64 = [minute, minute - 1]
        .iter()
        .map(|m| {
            stack
                .cluster
                .cli()
                .run_in_cluster(
                    stack.cluster.live_ports()[0],
                    &["HGET", &format!("oc:{{stats}}:{m}"), "r"],
                )
                .unwrap_or_default()
                .trim()
                .parse::<u64>()
                .unwrap_or(0)
        })
        .sum();
    assert!(counted > 0, "no traffic counted in the cluster");
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
        assert!(
            Instant::now() < deadline,
            "replicas of {primary} lag behind"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The ms of a cron run's due time, from its id (`<job>:<ms>`).
fn due_ms(run: &Value) -> i64 {
    run["id"]
        .as_str()
        .and_then(|id| id.rsplit_once(':'))
        .and_then(|(_, ms)| ms.parse().ok())
        .expect("run id <job>:<ms>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_mid_traffic_is_followed_by_its_replica() {
    let mut stack = ClusterStack::start().await;
    let (key, key_id) = stack
        .key("cluster-failover", json!({"requestsPerMinute": 100000}))
        .await;
    // The victim holds cron (every `{sched}` key) and, chosen by its id, one session: both
    // live through the failover.
    let victim = stack.cluster.primary_for_key("oc:{sched}:due");
    let session = (0..200)
        .map(|n| format!("failover-{n}"))
        .find(|id| {
            stack
                .cluster
                .primary_for_key(&format!("oc:s:{{{key_id}/{id}}}:meta"))
                == victim
        })
        .expect("a session id on the victim's slots");
    let created = support::post_with_key(
        &stack.http,
        format!("{}/api/v1/sessions", stack.edge(0)),
        &key,
        &json!({"messages": [], "context": {"sessionId": session}}),
    )
    .await;
    expect_data(created, 201).await;
    let job = support::post_with_key(
        &stack.http,
        format!("{}/api/v1/cron/jobs", stack.edge(0)),
        &key,
        &json!({"name": "tick", "schedule": {"kind": "every", "everyMs": 1000},
                "payload": {"kind": "systemEvent", "text": "tick"}}),
    )
    .await;
    let job = expect_data(job, 201).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut acknowledged = Vec::new();
    for n in 0..5 {
        let text = format!("before {n}");
        expect_data(stack.send(n, &key, &session, &text).await, 200).await;
        acknowledged.push(text);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_for_replication(&stack.cluster, victim);
    let kill_ms = chrono::Utc::now().timestamp_millis();
    stack.cluster.kill(victim);
    let killed_at = Instant::now();

    // Keep talking to the session through both edges until it answers again, then a little
    // longer. Every answer is a success or UNAVAILABLE, and none takes long.
    let bound = Duration::from_millis(REDIS_TIMEOUT_MS * 4 + 2000);
    let during = stack
        .talk_through_failover(
            &key,
            &session,
            killed_at,
            5,
            (bound, Duration::from_secs(30)),
        )
        .await;
    acknowledged.extend(during.acknowledged.iter().cloned());
    let promotion = stack
        .cluster
        .wait_for_failover(victim, Duration::from_secs(30));
    eprintln!(
        "failover: replica promoted within {promotion:?} of waiting; first success {:?} after \
         the kill; answers {:?}; slowest answer {:?}",
        during.resumed_after, during.answers, during.slowest
    );
    // Cron: every due time ran at most once, but one claimed in the instant before the kill
    // and not yet copied to the replica (asynchronous replication) may run again on the new
    // primary: the documented bound is the replication lag at the crash (well under a second
    // here), so a second run is allowed only for due times within 1 s before the kill.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let runs = support::get_with_key(
        &stack.http,
        format!("{}/api/v1/cron/jobs/{job}/runs?pageSize=500", stack.edge(1)),
        &key,
    )
    .await;
    let runs = expect_data(runs, 200).await;
    let mut per_due: BTreeMap<i64, usize> = BTreeMap::new();
    for run in runs["runs"].as_array().unwrap() {
        *per_due.entry(due_ms(run)).or_default() += 1;
    }
    let twice: Vec<i64> = per_due
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(due, _)| *due)
        .collect();
    eprintln!(
        "cron through the failover: {} due times, ran twice: {twice:?} (kill at {kill_ms})",
        per_due.len()
    );
    assert!(
        twice
            .iter()
            .all(|due| (kill_ms - 1000..=kill_ms).contains(due)),
        "a due time outside the replication window ran twice: {twice:?}, kill at {kill_ms}"
    );
    assert!(
        per_due.keys().any(|due| *due > kill_ms + 1000),
        "cron runs again after the failover: {per_due:?}"
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_down_is_shown_in_status_and_leaves_the_cores_ready() {
    let mut stack = ClusterStack::start().await;
    let (key, _) = stack.key("cluster-health", json!({})).await;
    let status = |stack: &ClusterStack| {
        let http = stack.http.clone();
        let url = format!("{}/api/v1/system/status", stack.edge(0));
        let key = key.clone();
        async move { expect_data(support::get_with_key(&http, url, key).await, 200).await }
    };
    let nodes = |status: &Value| -> BTreeMap<String, (String, String)> {
        status["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].as_str().unwrap_or_default().starts_with("store-"))
            .map(|d| {
                (
                    d["name"].as_str().unwrap().to_string(),
                    (
                        d["kind"].as_str().unwrap().to_string(),
                        d["status"].as_str().unwrap().to_string(),
                    ),
                )
            })
            .collect()
    };
    let before = nodes(&status(&stack).await);
    assert_eq!(before.len(), 6, "every node listed: {before:?}");
    assert_eq!(
        before
            .values()
            .filter(|(kind, _)| kind == "store-primary")
            .count(),
        3,
        "{before:?}"
    );
    assert!(before.values().all(|(_, up)| up == "ok"), "{before:?}");

    let primary = stack.cluster.primaries()[0];
    let replica = stack.cluster.replicas_of(primary)[0];
    stack.cluster.kill(replica);
    let killed = Instant::now();
    let name = format!("redis 127.0.0.1:{replica}");
    loop {
        let status = status(&stack).await;
        if nodes(&status)
            .get(&name)
            .is_some_and(|(_, up)| up == "down")
        {
            assert_eq!(status["gateway"], "degraded", "{status}");
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the dead replica is not shown down: {status}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The state is still served: every core stays ready, and requests succeed.
    for core in &stack.cores {
        let ready = reqwest::get(format!("http://127.0.0.1:{}/readyz", core.metrics_port))
            .await
            .unwrap();
        assert_eq!(
            ready.status(),
            200,
            "a replica down does not make a core unready"
        );
    }
    let created = support::post_with_key(
        &stack.http,
        format!("{}/api/v1/sessions", stack.edge(1)),
        &key,
        &json!({"messages": [{"role": "user", "content": "still here"}]}),
    )
    .await;
    expect_data(created, 201).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_change_no_replica_confirms_is_not_acknowledged() {
    // One node without replicas, asked for one confirmation: the key is not reported created.
    let redis = support::start_redis();
    let dir = tempfile::tempdir().unwrap();
    let core = support::spawn_core(&CoreOptions {
        redis_url: Some(support::redis_url(&redis)),
        upstream: None,
        data_dir: Some(dir.path().to_path_buf()),
        env: vec![
            ("OPENCLAW_REDIS_WAIT_REPLICAS".into(), "1".into()),
            ("OPENCLAW_REDIS_TIMEOUT_MS".into(), "500".into()),
        ],
    });
    let edge = support::spawn_edge(&[&core]);
    support::wait_until_ready(&edge).await;
    let refused = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/api/v1/keys", edge.port))
        .bearer_auth(support::INTERNAL_TOKEN)
        .json(&json!({"name": "unconfirmed"}))
        .send()
        .await
        .unwrap();
    let error = support::expect_error(refused, 503, "UNAVAILABLE").await;
    assert!(
        error.to_string().contains("OPENCLAW_REDIS_WAIT_REPLICAS"),
        "{error}"
    );
}

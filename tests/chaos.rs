//! Chaos across replicas. Redis, three cores and two edges run as real processes on loopback; the
//! edges reach the cores, and the cores reach Redis, through fault proxies. Steady load (session
//! turns from several clients through both edges, traffic against a low per-key limit, a cron job
//! due every second) runs while faults come one after another: a core and an edge SIGKILLed and
//! restarted, Redis SIGSTOPped, added latency, stalls, and resets with refused connections between
//! the edge and the core and between the core and Redis.
//!
//! Afterwards: no acknowledged turn is lost or half stored, no cron due time ran twice or went
//! missing beyond the policy of `docs/cron.md`, the low limit admitted no more than its quota in
//! any window, every failed request was the guide's envelope with a contract code (a connection
//! failure only from an edge while it was killed), and each fault's time to recover is measured.
//!
//! `cargo test --test chaos` runs one short round. `scripts/chaos.sh` runs longer ones through
//! the environment: `CHAOS_ROUNDS`, `CHAOS_CLIENTS`, `CHAOS_FAULT_MS`, `CHAOS_FIGURES` (a file
//! the figures are written to) and `CHAOS_LOG_DIR` (where the processes' logs are kept).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::fault_proxy::FaultProxy;
use support::{CoreOptions, FakeUpstream, Process, all_events};

/// Requests per minute of the key the rate-limited traffic uses.
const LOW_LIMIT: usize = 5;
/// The rate limiter's window.
const WINDOW: Duration = Duration::from_secs(60);
/// A cron job due this often (the minimum interval).
const EVERY_MS: i64 = 1000;
/// Turns per session before a client starts a new one (keeps histories, and the CPU each turn
/// costs, small).
const TURNS_PER_SESSION: usize = 40;
/// Attempts of one turn (the same `X-Request-ID` each time) before a client gives up on it.
const ATTEMPTS_PER_TURN: u32 = 6;
/// Longest a fault may take to heal before the run counts it as not recovered.
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);

/// The error codes of the contract and the HTTP statuses each may come with.
const CONTRACT_CODES: &[(&str, &[u16])] = &[
    ("UNAUTHORIZED", &[401]),
    ("INVALID_REQUEST", &[400, 405, 413, 415]),
    ("NOT_FOUND", &[404]),
    ("RATE_LIMIT_EXCEEDED", &[429]),
    ("INTERNAL_ERROR", &[500]),
    ("FORBIDDEN", &[403]),
    ("CONFLICT", &[409]),
    ("UPSTREAM_ERROR", &[502]),
    ("UNAVAILABLE", &[503]),
    ("UPSTREAM_TIMEOUT", &[504]),
];

/// How long and how hard a run is; the environment can make it longer.
struct Plan {
    rounds: u32,
    clients: usize,
    fault: Duration,
    figures: Option<PathBuf>,
    log_dir: Option<PathBuf>,
}

impl Plan {
    fn from_env() -> Self {
        let number = |name: &str, default: u64| -> u64 {
            std::env::var(name)
                .ok()
                .map(|v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("{name} must be a whole number, got '{v}'"))
                })
                .unwrap_or(default)
        };
        Self {
            rounds: number("CHAOS_ROUNDS", 1).max(1) as u32,
            clients: number("CHAOS_CLIENTS", 4).max(2) as usize,
            fault: Duration::from_millis(number("CHAOS_FAULT_MS", 1000).max(200)),
            figures: std::env::var_os("CHAOS_FIGURES").map(PathBuf::from),
            log_dir: std::env::var_os("CHAOS_LOG_DIR").map(PathBuf::from),
        }
    }
}

// ------------------------------------------------------------------------------- the deployment

/// Redis, three cores and two edges; proxies between edges and cores, and between cores and Redis.
struct Cluster {
    redis: Process,
    redis_proxy: FaultProxy,
    core_proxies: Vec<FaultProxy>,
    cores: Vec<Option<Process>>,
    core_ports: Vec<u16>,
    edges: Vec<Option<Process>>,
    edge_ports: Vec<u16>,
    options: CoreOptions,
    logs: PathBuf,
    _upstream: FakeUpstream,
    _dir: tempfile::TempDir,
}

fn log_file(dir: &Path, name: &str) -> Stdio {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .expect("open a log file");
    Stdio::from(file)
}

impl Cluster {
    async fn start(plan: &Plan) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let logs = plan
            .log_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("logs"));
        std::fs::create_dir_all(&logs).expect("create the log folder");
        let redis = support::start_redis();
        let redis_proxy = FaultProxy::start(redis.addr()).await;
        let upstream = FakeUpstream::start().await;
        let options = CoreOptions {
            redis_url: Some(format!("redis://{}", redis_proxy.addr())),
            upstream: Some(upstream.base_url()),
            data_dir: Some(dir.path().to_path_buf()),
            env: vec![
                // A killed holder's cron run is taken over soon.
                ("OPENCLAW_CRON_LEASE_MS".into(), "1500".into()),
                // A turn's lock lease is the provider timeout + 10 s: keep it short, so a
                // session whose core was killed mid-turn is free again within seconds.
                ("OPENCLAW_PROVIDER_TIMEOUT_MS".into(), "2000".into()),
                ("OPENCLAW_CORE_REPLICAS".into(), "3".into()),
            ],
        };
        let core_ports: Vec<u16> = (0..3).map(|_| support::free_port()).collect();
        let mut core_proxies = Vec::new();
        for port in &core_ports {
            core_proxies.push(FaultProxy::start(([127, 0, 0, 1], *port).into()).await);
        }
        let mut cluster = Self {
            redis,
            redis_proxy,
            core_proxies,
            cores: (0..3).map(|_| None).collect(),
            core_ports,
            edges: vec![None, None],
            edge_ports: (0..2).map(|_| support::free_port()).collect(),
            options,
            logs,
            _upstream: upstream,
            _dir: dir,
        };
        for i in 0..3 {
            cluster.start_core(i).await;
        }
        for i in 0..2 {
            cluster.start_edge(i).await;
        }
        cluster
    }

    async fn start_core(&mut self, i: usize) {
        let (options, port, log) = (
            self.options.clone(),
            self.core_ports[i],
            log_file(&self.logs, &format!("core-{i}.log")),
        );
        let core =
            tokio::task::spawn_blocking(move || support::spawn_core_logging(&options, port, log))
                .await
                .expect("start a core");
        self.cores[i] = Some(core);
    }

    async fn start_edge(&mut self, i: usize) {
        let urls: Vec<String> = self
            .core_proxies
            .iter()
            .map(|p| format!("http://{}", p.addr()))
            .collect();
        let (port, log) = (
            self.edge_ports[i],
            log_file(&self.logs, &format!("edge-{i}.log")),
        );
        let edge =
            tokio::task::spawn_blocking(move || support::spawn_edge_to(&urls, port, &[], log))
                .await
                .expect("start an edge");
        self.edges[i] = Some(edge);
    }

    fn edge_base(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.edge_ports[i])
    }

    fn signal_redis(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.redis.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} redis-server");
    }
}

// ------------------------------------------------------------------------------- what clients saw

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Traffic {
    Turn,
    Limited,
    /// The reads that check the outcome, after the load stopped.
    Check,
}

#[derive(Clone, Debug)]
enum Outcome {
    /// 2xx in the success envelope.
    Ok { replayed: bool },
    /// The guide's error envelope with a contract code and its status.
    Error { code: String },
    /// The edge's port refused the connection.
    Refused,
    /// The connection failed after it was made, or no answer came in time.
    Broken(String),
    /// An answer that is not the contract's.
    Garbage(String),
}

#[derive(Clone, Debug)]
struct Attempt {
    traffic: Traffic,
    edge: usize,
    start: Instant,
    end: Instant,
    outcome: Outcome,
}

/// Everything the load recorded, shared by its tasks.
#[derive(Default)]
struct Record {
    attempts: Mutex<Vec<Attempt>>,
}

impl Record {
    fn push(&self, attempt: Attempt) {
        self.attempts.lock().unwrap().push(attempt);
    }

    fn turn_succeeded_since(&self, since: Instant) -> Option<Instant> {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.traffic == Traffic::Turn && a.start >= since)
            .filter(|a| matches!(a.outcome, Outcome::Ok { .. }))
            .map(|a| a.end)
            .min()
    }
}

/// Reads a response as the contract says it must be; the success data when it succeeded.
async fn classify(result: Result<reqwest::Response, reqwest::Error>) -> (Outcome, Option<Value>) {
    let response = match result {
        Ok(response) => response,
        Err(error) if error.is_connect() => return (Outcome::Refused, None),
        Err(error) => return (Outcome::Broken(format!("{error:?}")), None),
    };
    let status = response.status().as_u16();
    let has_request_id = response.headers().contains_key("x-request-id");
    let replayed = response
        .headers()
        .contains_key("openclaw-idempotent-replay");
    let text = match response.text().await {
        Ok(text) => text,
        Err(error) => return (Outcome::Broken(format!("body: {error:?}")), None),
    };
    let garbage = |why: &str| Outcome::Garbage(format!("{why}: HTTP {status} {text}"));
    let Ok(body) = serde_json::from_str::<Value>(&text) else {
        return (garbage("not JSON"), None);
    };
    if !has_request_id {
        return (garbage("no X-Request-ID"), None);
    }
    if body["timestamp"].as_str().is_none() {
        return (garbage("no timestamp"), None);
    }
    if (200..300).contains(&status) {
        if body["success"] != true {
            return (garbage("2xx without success"), None);
        }
        return (Outcome::Ok { replayed }, Some(body["data"].clone()));
    }
    let error = &body["error"];
    let code = error["code"].as_str().unwrap_or_default();
    let statuses = CONTRACT_CODES
        .iter()
        .find(|(known, _)| *known == code)
        .map(|(_, statuses)| *statuses);
    let filled = |field: &str| error[field].as_str().is_some_and(|s| !s.trim().is_empty());
    if body["success"] != false
        || !statuses.is_some_and(|s| s.contains(&status))
        || !filled("message")
        || !filled("details")
    {
        return (garbage("not the error envelope with a contract code"), None);
    }
    if code == "RATE_LIMIT_EXCEEDED" && error["retryAfter"].as_u64().is_none_or(|s| s == 0) {
        return (garbage("429 without retryAfter"), None);
    }
    (
        Outcome::Error {
            code: code.to_string(),
        },
        None,
    )
}

struct Load {
    http: reqwest::Client,
    edges: Vec<String>,
    record: Record,
    stop: AtomicBool,
    nonce: String,
}

impl Load {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    async fn request(
        &self,
        traffic: Traffic,
        edge: usize,
        build: impl FnOnce(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> (Outcome, Option<Value>) {
        let start = Instant::now();
        let (outcome, data) = classify(build(&self.http, &self.edges[edge]).send().await).await;
        self.record.push(Attempt {
            traffic,
            edge,
            start,
            end: Instant::now(),
            outcome: outcome.clone(),
        });
        (outcome, data)
    }
}

/// One acknowledged or abandoned turn of a client.
#[derive(Debug, Clone)]
struct TurnLog {
    content: String,
    acknowledged: bool,
    /// When its first attempt was sent.
    began: Instant,
    /// From the first attempt to the acknowledgement or the last failure.
    took: Duration,
}

#[derive(Debug, Default)]
struct SessionLog {
    id: String,
    key: String,
    turns: Vec<TurnLog>,
}

/// Is a failure worth another attempt of the same send?
fn retryable(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Error { code } => matches!(
            code.as_str(),
            "UNAVAILABLE" | "CONFLICT" | "UPSTREAM_ERROR" | "UPSTREAM_TIMEOUT"
        ),
        Outcome::Refused | Outcome::Broken(_) => true,
        Outcome::Ok { .. } | Outcome::Garbage(_) => false,
    }
}

/// A client sending turns, one after the other, alternating edges; each send keeps its
/// `X-Request-ID` across its attempts, so a retry of a stored turn is answered from its record.
async fn turn_client(load: Arc<Load>, client: usize, key: String) -> Vec<SessionLog> {
    let mut sessions: Vec<SessionLog> = Vec::new();
    let mut turn = 0usize;
    while !load.stopping() {
        if sessions
            .last()
            .is_none_or(|s| s.turns.len() >= TURNS_PER_SESSION)
        {
            let mut attempt = 0;
            let id = loop {
                let (outcome, data) = load
                    .request(Traffic::Turn, (client + attempt) % 2, |http, base| {
                        http.post(format!("{base}/api/v1/sessions"))
                            .bearer_auth(&key)
                            .json(&json!({"messages": []}))
                    })
                    .await;
                if let (Outcome::Ok { .. }, Some(data)) = (&outcome, data) {
                    break data["sessionId"].as_str().map(str::to_string);
                }
                if load.stopping() {
                    break None;
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            let Some(id) = id else { break };
            sessions.push(SessionLog {
                id,
                key: key.clone(),
                turns: Vec::new(),
            });
        }
        let session = sessions.last_mut().expect("a session");
        let content = format!("client {client} turn {turn}");
        let request_id = format!("chaos-{}-{client}-{turn}", load.nonce);
        let mut acknowledged = false;
        let began = Instant::now();
        for attempt in 0..ATTEMPTS_PER_TURN {
            let edge = (client + turn + attempt as usize) % 2;
            let (outcome, data) = load
                .request(Traffic::Turn, edge, |http, base| {
                    http.post(format!("{base}/api/v1/sessions/{}/messages", session.id))
                        .bearer_auth(&key)
                        .header("X-Request-ID", &request_id)
                        .json(&json!({"message": {"role": "user", "content": content}}))
                })
                .await;
            if let Some(data) = data {
                let answer = data["message"]["content"].as_str().unwrap_or_default();
                assert_eq!(
                    answer,
                    format!("echo: {content}"),
                    "the answer to {request_id} is another turn's: {data}"
                );
                acknowledged = true;
                break;
            }
            if !retryable(&outcome) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt + 1))).await;
        }
        session.turns.push(TurnLog {
            content,
            acknowledged,
            began,
            took: began.elapsed(),
        });
        turn += 1;
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    sessions
}

/// Traffic against the low limit, through one edge, ten requests a second.
async fn limited_client(load: Arc<Load>, edge: usize, key: String) {
    while !load.stopping() {
        load.request(Traffic::Limited, edge, |http, base| {
            http.get(format!("{base}/api/v1/sessions?pageSize=1"))
                .bearer_auth(&key)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ------------------------------------------------------------------------------- faults

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    KillCore,
    KillEdge,
    StopRedis,
    LatencyEdgeCore,
    LatencyCoreRedis,
    StallEdgeCore,
    StallCoreRedis,
    ResetEdgeCore,
    ResetCoreRedis,
}

const FAULTS: [Fault; 9] = [
    Fault::KillCore,
    Fault::KillEdge,
    Fault::StopRedis,
    Fault::LatencyEdgeCore,
    Fault::LatencyCoreRedis,
    Fault::StallEdgeCore,
    Fault::StallCoreRedis,
    Fault::ResetEdgeCore,
    Fault::ResetCoreRedis,
];

impl Fault {
    fn describe(self, plan: &Plan) -> String {
        let ms = plan.fault.as_millis();
        match self {
            Fault::KillCore => format!("core SIGKILL, restarted after {ms} ms"),
            Fault::KillEdge => format!("edge SIGKILL, restarted after {ms} ms"),
            Fault::StopRedis => format!(
                "Redis SIGSTOP for {} ms, then SIGCONT",
                stop_redis_for(plan).as_millis()
            ),
            Fault::LatencyEdgeCore => format!("edge→core +150 ms each way for {ms} ms"),
            Fault::LatencyCoreRedis => format!("core→Redis +100 ms each way for {ms} ms"),
            Fault::StallEdgeCore => format!("edge→core stalled for {ms} ms"),
            Fault::StallCoreRedis => format!("core→Redis stalled for {ms} ms"),
            Fault::ResetEdgeCore => {
                format!(
                    "edge→core connections reset, new ones refused for {} ms",
                    ms / 3
                )
            }
            Fault::ResetCoreRedis => {
                format!(
                    "core→Redis connections reset, new ones refused for {} ms",
                    ms / 3
                )
            }
        }
    }
}

/// Redis stays stopped a few seconds: twice the other faults' hold, at least 2 s.
fn stop_redis_for(plan: &Plan) -> Duration {
    (plan.fault * 2).max(Duration::from_secs(2))
}

/// One injected fault: from its first action to the moment it was fully undone.
#[derive(Debug, Clone)]
struct Injected {
    fault: Fault,
    round: u32,
    start: Instant,
    end: Instant,
    /// The edge that was down, for a kill of an edge.
    edge_down: Option<usize>,
    /// First success of a turn sent after `end`.
    recovered: Option<Instant>,
}

async fn inject(cluster: &mut Cluster, fault: Fault, round: u32, plan: &Plan) -> Injected {
    let hold = plan.fault;
    let start = Instant::now();
    let mut edge_down = None;
    match fault {
        Fault::KillCore => {
            let victim = round as usize % 3;
            if let Some(mut core) = cluster.cores[victim].take() {
                core.kill();
            }
            tokio::time::sleep(hold).await;
            cluster.start_core(victim).await;
        }
        Fault::KillEdge => {
            let victim = round as usize % 2;
            edge_down = Some(victim);
            if let Some(mut edge) = cluster.edges[victim].take() {
                edge.kill();
            }
            tokio::time::sleep(hold).await;
            cluster.start_edge(victim).await;
        }
        Fault::StopRedis => {
            cluster.signal_redis("-STOP");
            tokio::time::sleep(stop_redis_for(plan)).await;
            cluster.signal_redis("-CONT");
        }
        Fault::LatencyEdgeCore | Fault::StallEdgeCore | Fault::ResetEdgeCore => {
            let proxies: Vec<&FaultProxy> = cluster.core_proxies.iter().collect();
            disturb(&proxies, fault, hold, Duration::from_millis(150)).await;
        }
        Fault::LatencyCoreRedis | Fault::StallCoreRedis | Fault::ResetCoreRedis => {
            disturb(
                &[&cluster.redis_proxy],
                fault,
                hold,
                Duration::from_millis(100),
            )
            .await;
        }
    }
    Injected {
        fault,
        round,
        start,
        end: Instant::now(),
        edge_down,
        recovered: None,
    }
}

/// Applies a proxy fault to `proxies` for `hold`, then heals them.
async fn disturb(proxies: &[&FaultProxy], fault: Fault, hold: Duration, latency: Duration) {
    match fault {
        Fault::LatencyEdgeCore | Fault::LatencyCoreRedis => {
            proxies.iter().for_each(|p| p.set_latency(latency, latency));
            tokio::time::sleep(hold).await;
        }
        Fault::StallEdgeCore | Fault::StallCoreRedis => {
            proxies.iter().for_each(|p| p.set_stalled(true));
            tokio::time::sleep(hold).await;
        }
        _ => {
            proxies.iter().for_each(|p| {
                p.set_refusing(true);
                p.reset_all();
            });
            tokio::time::sleep(hold / 3).await;
        }
    }
    proxies.iter().for_each(|p| p.heal());
}

// ------------------------------------------------------------------------------- checks

fn page_token(token: &str) -> String {
    if token.is_empty() {
        String::new()
    } else {
        format!("&pageToken={token}")
    }
}

/// Every page of a session's history, through any edge that answers.
async fn history(load: &Load, session: &SessionLog) -> Vec<Value> {
    let mut messages = Vec::new();
    let mut token = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = loop {
            let (outcome, data) = load
                .request(Traffic::Check, messages.len() % 2, |http, base| {
                    http.get(format!(
                        "{base}/api/v1/sessions/{}/messages?pageSize=1000{}",
                        session.id,
                        page_token(&token)
                    ))
                    .bearer_auth(&session.key)
                })
                .await;
            if let Some(data) = data {
                break data;
            }
            assert!(
                Instant::now() < deadline,
                "the history of {} could not be read after the faults: {outcome:?}",
                session.id
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        messages.extend(page["messages"].as_array().cloned().unwrap_or_default());
        match page["nextPageToken"].as_str() {
            Some(next) if !next.is_empty() => token = next.to_string(),
            _ => return messages,
        }
    }
}

#[derive(Default, Debug)]
struct TurnFigures {
    sessions: usize,
    acknowledged: usize,
    abandoned: usize,
    abandoned_but_stored: usize,
    lost: usize,
    half_stored: usize,
    duplicated: usize,
    out_of_order: usize,
    /// The longest an acknowledged turn took, retries included.
    longest: Duration,
    /// Acknowledged turns that took longer than 5 s.
    slow: usize,
}

/// Compares each session's history with what its client saw.
fn check_sessions(
    sessions: &[(SessionLog, Vec<Value>)],
    violations: &mut Vec<String>,
) -> TurnFigures {
    let mut figures = TurnFigures {
        sessions: sessions.len(),
        ..TurnFigures::default()
    };
    for (session, messages) in sessions {
        let mut stored: Vec<String> = Vec::new();
        let mut i = 0;
        while i < messages.len() {
            let (role, content) = (
                messages[i]["role"].as_str().unwrap_or_default(),
                messages[i]["content"].as_str().unwrap_or_default(),
            );
            let answer = messages.get(i + 1);
            let answered = role == "user"
                && answer.is_some_and(|a| {
                    a["role"] == "assistant" && a["content"] == format!("echo: {content}")
                });
            if answered {
                stored.push(content.to_string());
                i += 2;
            } else {
                figures.half_stored += 1;
                violations.push(format!(
                    "session {}: message {i} ({role}: {content:?}) is not a user message followed by its answer",
                    session.id
                ));
                i += 1;
            }
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for content in &stored {
            *seen.entry(content).or_default() += 1;
        }
        for (content, count) in &seen {
            if *count > 1 {
                figures.duplicated += 1;
                violations.push(format!(
                    "session {}: the turn {content:?} is stored {count} times",
                    session.id
                ));
            }
        }
        for turn in &session.turns {
            let found = seen.contains_key(turn.content.as_str());
            if turn.acknowledged {
                figures.longest = figures.longest.max(turn.took);
                figures.slow += usize::from(turn.took > Duration::from_secs(5));
            }
            match (turn.acknowledged, found) {
                (true, true) => figures.acknowledged += 1,
                (true, false) => {
                    figures.acknowledged += 1;
                    figures.lost += 1;
                    violations.push(format!(
                        "session {}: the acknowledged turn {:?} is not in the history",
                        session.id, turn.content
                    ));
                }
                (false, stored) => {
                    figures.abandoned += 1;
                    figures.abandoned_but_stored += usize::from(stored);
                }
            }
        }
        // The client sent its turns one after the other: they are stored in that order.
        let order: HashMap<&str, usize> = session
            .turns
            .iter()
            .enumerate()
            .map(|(i, t)| (t.content.as_str(), i))
            .collect();
        let positions: Vec<usize> = stored
            .iter()
            .filter_map(|c| order.get(c.as_str()).copied())
            .collect();
        if positions.windows(2).any(|w| w[0] >= w[1]) {
            figures.out_of_order += 1;
            violations.push(format!(
                "session {}: turns stored out of the order they were sent: {positions:?}",
                session.id
            ));
        }
        if stored.len() != positions.len() {
            violations.push(format!(
                "session {}: the history holds turns no client sent",
                session.id
            ));
        }
    }
    figures
}

/// Every page of a job's run history.
async fn all_runs(load: &Load, key: &str, job: &str) -> Vec<Value> {
    let mut runs = Vec::new();
    let mut token = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (outcome, data) = load
            .request(Traffic::Check, 0, |http, base| {
                http.get(format!(
                    "{base}/api/v1/cron/jobs/{job}/runs?pageSize=500{}",
                    page_token(&token)
                ))
                .bearer_auth(key)
            })
            .await;
        let Some(page) = data else {
            assert!(
                Instant::now() < deadline,
                "the run history could not be read: {outcome:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        runs.extend(page["runs"].as_array().cloned().unwrap_or_default());
        match page["nextPageToken"].as_str() {
            Some(next) if !next.is_empty() => token = next.to_string(),
            _ => return runs,
        }
    }
}

#[derive(Default, Debug)]
struct CronFigures {
    due_times: usize,
    ok: usize,
    skipped_missed: usize,
    skipped_overlap: usize,
    errors: usize,
    duplicates: usize,
    gaps: usize,
    unfinished: usize,
    events: usize,
    event_mismatches: usize,
}

fn check_cron(
    runs: &[Value],
    events: &[openclaw_gateway::proto::Event],
    job: &str,
    violations: &mut Vec<String>,
) -> CronFigures {
    let mut figures = CronFigures::default();
    let mut by_due: BTreeMap<i64, &Value> = BTreeMap::new();
    for run in runs {
        let due: i64 = run["id"]
            .as_str()
            .and_then(|id| id.rsplit_once(':'))
            .and_then(|(_, ms)| ms.parse().ok())
            .expect("a run id is <job>:<ms>");
        if by_due.insert(due, run).is_some() {
            figures.duplicates += 1;
            violations.push(format!("cron: due time {due} has two runs"));
        }
    }
    figures.due_times = by_due.len();
    let dues: Vec<i64> = by_due.keys().copied().collect();
    for pair in dues.windows(2) {
        if pair[1] - pair[0] != EVERY_MS {
            let missing = ((pair[1] - pair[0]) / EVERY_MS - 1).max(0) as usize;
            figures.gaps += missing.max(1);
            violations.push(format!(
                "cron: no record for the due times between {} and {}",
                pair[0], pair[1]
            ));
        }
    }
    let mut ok: HashSet<String> = HashSet::new();
    for run in by_due.values() {
        let reason = run["error"].as_str().unwrap_or_default();
        match run["status"].as_str().unwrap_or_default() {
            "ok" => {
                ok.insert(run["id"].as_str().unwrap_or_default().to_string());
                figures.ok += 1;
            }
            "skipped" if reason.starts_with("missed") => figures.skipped_missed += 1,
            "skipped" if reason.contains("overlap policy") => figures.skipped_overlap += 1,
            "running" => {
                figures.unfinished += 1;
                violations.push(format!("cron: run {} never finished", run["id"]));
            }
            "error" => {
                figures.errors += 1;
                violations.push(format!("cron: a systemEvent run ended in error: {run}"));
            }
            other => violations.push(format!("cron: run in state {other} ({reason}): {run}")),
        }
    }
    let mut per_run: HashMap<&str, usize> = HashMap::new();
    for event in events
        .iter()
        .filter(|e| e.r#type == "system.event" && e.job_id == job)
    {
        figures.events += 1;
        *per_run.entry(event.run_id.as_str()).or_default() += 1;
    }
    for (run, count) in &per_run {
        if *count != 1 || !ok.contains(*run) {
            figures.event_mismatches += 1;
            violations.push(format!(
                "cron: run {run} published {count} events (ok runs publish exactly one)"
            ));
        }
    }
    for run in &ok {
        if !per_run.contains_key(run.as_str()) {
            figures.event_mismatches += 1;
            violations.push(format!("cron: ok run {run} published no event"));
        }
    }
    figures
}

#[derive(Default, Debug)]
struct LimitFigures {
    requests: usize,
    admitted: usize,
    limited: usize,
    unavailable: usize,
    other: usize,
    /// Most admissions that certainly fell in one window (sent and answered within 60 s).
    most_in_a_window: usize,
}

/// Over-admission shows as more than `LOW_LIMIT` admitted requests that were all sent and
/// answered within one window's length: the limiter's decisions for them lie in that window.
fn check_limit(attempts: &[Attempt], violations: &mut Vec<String>) -> LimitFigures {
    let mut figures = LimitFigures::default();
    let mut admitted: Vec<(Instant, Instant)> = Vec::new();
    for attempt in attempts.iter().filter(|a| a.traffic == Traffic::Limited) {
        figures.requests += 1;
        match &attempt.outcome {
            Outcome::Ok { .. } => admitted.push((attempt.start, attempt.end)),
            Outcome::Error { code } if code == "RATE_LIMIT_EXCEEDED" => figures.limited += 1,
            Outcome::Error { code } if code == "UNAVAILABLE" => figures.unavailable += 1,
            _ => figures.other += 1,
        }
    }
    figures.admitted = admitted.len();
    admitted.sort();
    for (i, (from, _)) in admitted.iter().enumerate() {
        let within = admitted[i..]
            .iter()
            .filter(|(_, end)| end.duration_since(*from) < WINDOW)
            .count();
        figures.most_in_a_window = figures.most_in_a_window.max(within);
    }
    if figures.most_in_a_window > LOW_LIMIT {
        violations.push(format!(
            "limit: {} requests admitted within one {} s window for a key allowed {LOW_LIMIT}",
            figures.most_in_a_window,
            WINDOW.as_secs()
        ));
    }
    figures
}

/// Every failure is the contract's; a connection failure only from an edge while it was down.
fn check_failures(attempts: &[Attempt], faults: &[Injected], violations: &mut Vec<String>) {
    for attempt in attempts {
        let while_killed = || {
            faults.iter().any(|f| {
                f.edge_down == Some(attempt.edge)
                    && attempt.start <= f.end
                    && attempt.end >= f.start
            })
        };
        match &attempt.outcome {
            Outcome::Garbage(what) => violations.push(format!(
                "edge {} answered outside the contract: {what}",
                attempt.edge
            )),
            Outcome::Error { code } if code == "INTERNAL_ERROR" => violations.push(format!(
                "edge {} answered INTERNAL_ERROR for a dependency fault",
                attempt.edge
            )),
            Outcome::Refused if !while_killed() => violations.push(format!(
                "edge {} refused a connection while it was up",
                attempt.edge
            )),
            Outcome::Broken(why) if !while_killed() => violations.push(format!(
                "edge {} failed at the connection level while it was up: {why}",
                attempt.edge
            )),
            _ => {}
        }
    }
}

// ------------------------------------------------------------------------------- figures

fn outcome_label(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Ok { replayed: false } => "ok".into(),
        Outcome::Ok { replayed: true } => "ok (replayed)".into(),
        Outcome::Error { code } => code.clone(),
        Outcome::Refused => "connection refused".into(),
        Outcome::Broken(_) => "connection broken".into(),
        Outcome::Garbage(_) => "outside the contract".into(),
    }
}

fn counts(attempts: &[&Attempt]) -> String {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for attempt in attempts {
        if !matches!(attempt.outcome, Outcome::Ok { replayed: false }) {
            *by.entry(outcome_label(&attempt.outcome)).or_default() += 1;
        }
    }
    if by.is_empty() {
        return "none".into();
    }
    by.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[allow(clippy::too_many_arguments)]
fn figures(
    plan: &Plan,
    started: Instant,
    faults: &[Injected],
    attempts: &[Attempt],
    logs: &[&TurnLog],
    turns: &TurnFigures,
    cron: &CronFigures,
    limit: &LimitFigures,
    proxies: &str,
    violations: &[String],
) -> String {
    let mut out = String::new();
    let ms = |d: Duration| d.as_millis();
    let _ = writeln!(
        out,
        "chaos: {} round(s), {} turn clients, 3 cores, 2 edges, {} s of load\n",
        plan.rounds,
        plan.clients,
        started.elapsed().as_secs()
    );
    let _ = writeln!(
        out,
        "| round | fault | lasted ms | turn requests | turns ok | turn failures by code | limited-key answers | recovery ms | slowest turn ms |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---|---|---:|---:|");
    for (i, fault) in faults.iter().enumerate() {
        // A fault's share of the traffic: from its start to the next fault's start.
        let until = faults.get(i + 1).map(|f| f.start);
        let share = |traffic: Traffic| -> Vec<&Attempt> {
            attempts
                .iter()
                .filter(|a| a.traffic == traffic && a.start >= fault.start)
                .filter(|a| until.is_none_or(|u| a.start < u))
                .collect()
        };
        let turns = share(Traffic::Turn);
        let ok = turns
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Ok { .. }))
            .count();
        let limited = share(Traffic::Limited);
        let slowest = logs
            .iter()
            .filter(|t| t.began >= fault.start && until.is_none_or(|u| t.began < u))
            .map(|t| t.took)
            .max()
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fault.round + 1,
            fault.fault.describe(plan),
            ms(fault.end - fault.start),
            turns.len(),
            ok,
            counts(&turns),
            {
                let mut all = counts(&limited);
                let admitted = limited
                    .iter()
                    .filter(|a| matches!(a.outcome, Outcome::Ok { .. }))
                    .count();
                if admitted > 0 {
                    all = format!("admitted {admitted}; {all}");
                }
                all
            },
            fault
                .recovered
                .map_or("not recovered".to_string(), |r| ms(r - fault.end)
                    .to_string()),
            ms(slowest),
        );
    }
    let all_turns: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.traffic == Traffic::Turn)
        .collect();
    let _ = writeln!(
        out,
        "\nturn requests {} (failures by kind: {})",
        all_turns.len(),
        counts(&all_turns)
    );
    let _ = writeln!(
        out,
        "sessions {}: turns acknowledged {}, lost {}, half stored {}, stored twice {}, out of order {}; \
         given up after {ATTEMPTS_PER_TURN} attempts {} (of which stored anyway {})",
        turns.sessions,
        turns.acknowledged,
        turns.lost,
        turns.half_stored,
        turns.duplicated,
        turns.out_of_order,
        turns.abandoned,
        turns.abandoned_but_stored
    );
    let _ = writeln!(
        out,
        "longest acknowledged turn, retries included: {} ms; acknowledged turns that took over 5 s: {}",
        ms(turns.longest),
        turns.slow
    );
    let _ = writeln!(
        out,
        "cron (every {EVERY_MS} ms): due times {}, ok {}, skipped by the catch-up policy {}, skipped by the overlap policy {}, \
         errors {}, run twice {}, missing {}, unfinished {}; system events {}, events not matching one ok run {}",
        cron.due_times,
        cron.ok,
        cron.skipped_missed,
        cron.skipped_overlap,
        cron.errors,
        cron.duplicates,
        cron.gaps,
        cron.unfinished,
        cron.events,
        cron.event_mismatches
    );
    let _ = writeln!(
        out,
        "low limit ({LOW_LIMIT}/min, both edges): requests {}, admitted {}, RATE_LIMIT_EXCEEDED {}, UNAVAILABLE {}, other {}; \
         most admitted within one window {}",
        limit.requests,
        limit.admitted,
        limit.limited,
        limit.unavailable,
        limit.other,
        limit.most_in_a_window
    );
    let _ = writeln!(out, "proxies: {proxies}");
    let _ = writeln!(out, "violations: {}", violations.len());
    for violation in violations.iter().take(40) {
        let _ = writeln!(out, "  - {violation}");
    }
    out
}

// ------------------------------------------------------------------------------- the run

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_keep_every_promise_while_processes_die_and_links_fail() {
    let plan = Plan::from_env();
    let mut cluster = Cluster::start(&plan).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let admin = cluster.edge_base(0);
    let generous = json!({"limits": {"requestsPerMinute": 1_000_000, "tokensPerMinute": 1_000_000_000_000u64, "contextTokensPerMinute": 1_000_000_000_000u64}});
    let mut keys = Vec::new();
    for i in 0..3 {
        keys.push(
            support::create_key(&http, &admin, &format!("chaos-{i}"), generous.clone()).await,
        );
    }
    let low = support::create_key(
        &http,
        &admin,
        "chaos-low-limit",
        json!({"limits": {"requestsPerMinute": LOW_LIMIT}}),
    )
    .await;
    let cron_key = support::create_key(&http, &admin, "chaos-cron", generous.clone()).await;
    let job = support::expect_data(
        http.post(format!("{admin}/api/v1/cron/jobs"))
            .bearer_auth(&cron_key)
            .json(&json!({"name": "chaos-heartbeat", "schedule": {"kind": "every", "everyMs": EVERY_MS}, "payload": {"kind": "systemEvent", "text": "tick"}}))
            .send()
            .await
            .unwrap(),
        201,
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let load = Arc::new(Load {
        http,
        edges: (0..2).map(|i| cluster.edge_base(i)).collect(),
        record: Record::default(),
        stop: AtomicBool::new(false),
        nonce: format!("{:x}", std::process::id()),
    });
    let started = Instant::now();
    let clients: Vec<_> = (0..plan.clients)
        .map(|c| tokio::spawn(turn_client(load.clone(), c, keys[c % keys.len()].clone())))
        .collect();
    let limited: Vec<_> = (0..2)
        .map(|edge| tokio::spawn(limited_client(load.clone(), edge, low.clone())))
        .collect();

    // Steady state first, so every fault meets traffic already flowing.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut faults: Vec<Injected> = Vec::new();
    for round in 0..plan.rounds {
        for fault in FAULTS {
            let mut injected = inject(&mut cluster, fault, round, &plan).await;
            let deadline = injected.end + RECOVERY_LIMIT;
            while Instant::now() < deadline {
                if let Some(at) = load.record.turn_succeeded_since(injected.end) {
                    injected.recovered = Some(at);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            faults.push(injected);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    load.stop.store(true, Ordering::Relaxed);
    let mut sessions = Vec::new();
    for client in clients {
        sessions.extend(client.await.expect("a turn client panicked"));
    }
    for task in limited {
        task.await.expect("a limited client panicked");
    }

    // Stop the job, then wait until no run is in progress (a killed holder's lease runs out).
    let mut violations: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, data) = load
            .request(Traffic::Check, 1, |http, base| {
                http.patch(format!("{base}/api/v1/cron/jobs/{job}"))
                    .bearer_auth(&cron_key)
                    .json(&json!({"enabled": false}))
            })
            .await;
        if data.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cron job could not be paused"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let runs = loop {
        let runs = all_runs(&load, &cron_key, &job).await;
        if runs.iter().all(|r| r["status"] != "running") || Instant::now() > deadline {
            break runs;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let events = all_events(cluster.core_ports[0]).await;
    let cron = check_cron(&runs, &events, &job, &mut violations);

    let mut stored = Vec::new();
    for session in sessions {
        let messages = history(&load, &session).await;
        stored.push((session, messages));
    }
    let turns = check_sessions(&stored, &mut violations);
    let attempts = load.record.attempts.lock().unwrap().clone();
    let limit = check_limit(&attempts, &mut violations);
    check_failures(&attempts, &faults, &mut violations);
    for fault in &faults {
        if fault.recovered.is_none() {
            violations.push(format!(
                "round {}: no turn succeeded within {} s after '{}' ended",
                fault.round + 1,
                RECOVERY_LIMIT.as_secs(),
                fault.fault.describe(&plan)
            ));
        }
    }
    if turns.acknowledged == 0 || cron.ok == 0 || limit.admitted == 0 {
        violations.push("the load did not run: nothing succeeded".into());
    }

    let proxies = {
        let mut parts = Vec::new();
        for (i, p) in cluster.core_proxies.iter().enumerate() {
            let s = p.stats();
            parts.push(format!(
                "edge→core-{i} accepted {} reset {} refused {} target down {}",
                s.accepted, s.reset, s.refused, s.target_unreachable
            ));
        }
        let s = cluster.redis_proxy.stats();
        parts.push(format!(
            "core→Redis accepted {} reset {} refused {}",
            s.accepted, s.reset, s.refused
        ));
        parts.join("; ")
    };
    let logs: Vec<&TurnLog> = stored.iter().flat_map(|(s, _)| &s.turns).collect();
    let report = figures(
        &plan,
        started,
        &faults,
        &attempts,
        &logs,
        &turns,
        &cron,
        &limit,
        &proxies,
        &violations,
    );
    println!("{report}");
    if let Some(path) = &plan.figures {
        File::create(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, report.as_bytes()))
            .expect("write the figures");
    }
    if !violations.is_empty() {
        for name in [
            "core-0.log",
            "core-1.log",
            "core-2.log",
            "edge-0.log",
            "edge-1.log",
        ] {
            let text = std::fs::read_to_string(cluster.logs.join(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            eprintln!("--- {name} (last lines)");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
    assert!(violations.is_empty(), "{report}");
}

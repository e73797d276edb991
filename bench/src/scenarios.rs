//! The scenarios of `docs/benchmarks.md`, each measured against its baseline (the fake upstream
//! alone, or Redis alone) at the same rate in the same run, so overhead is a difference taken
//! side by side.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use openclaw_gateway::limits::{Charge, LimitBackend as _, Quota, RedisLimits};
use openclaw_gateway::proto;
use openclaw_gateway::proto::completion_service_client::CompletionServiceClient;
use openclaw_gateway::store::{RedisConfig, SharedConnection};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::load::{Call, Outcome, Sample, open_loop};
use crate::oha::{self, Oha};
use crate::processes::{self, Binaries, Meter, Process, Usage};
use crate::redis_topology::{Layout, RedisDeployment};
use crate::stalls::{self, Probe, Stall};
use crate::upstream::SettingsPatch;

pub const SEND_MESSAGE: &str = "s1-send-message";
/// Scenario 1 through a combined replica (REST and core in one process).
pub const SEND_MESSAGE_COMBINED: &str = "s1c-send-message-combined";
pub const OPENAI: &str = "s2-openai-stateless";
/// Scenario 2 through a combined replica (REST and core in one process).
pub const OPENAI_COMBINED: &str = "s2c-openai-combined";
pub const GRPC: &str = "s3-grpc-core";
pub const STREAMING: &str = "s4-streaming";
pub const ADMISSION: &str = "s5-rate-limit-admission";
pub const LITELLM: &str = "litellm-openai";

/// The target of a step oha measured against the gateway (scenario 2, split or combined).
pub const OHA: &str = "oha";
/// The target of a step oha measured against the fake upstream alone: oha's own baseline, the
/// same command as its gateway step at that rate with only the URL changed.
pub const OHA_UPSTREAM: &str = "oha-upstream";

/// How a run is shaped.
#[derive(Debug, Clone)]
pub struct Plan {
    pub binaries: Binaries,
    pub rates: Vec<f64>,
    pub streaming_rates: Vec<f64>,
    /// LiteLLM's sweep: scenario 2's rates, preceded by lower ones (it saturates early).
    pub litellm_rates: Vec<f64>,
    pub step: Duration,
    pub max_in_flight: usize,
    pub only: Option<Vec<String>>,
    pub litellm: Option<PathBuf>,
    pub streams: u64,
    pub work_dir: PathBuf,
    /// Watch for the machine's own stalls during every step ([`crate::stalls`]).
    pub stall_probe: bool,
    /// oha, run beside our own generator on scenario 2 (open loop at every rate of the sweep,
    /// and closed loop once per topology); absent: not run.
    pub oha: Option<Oha>,
}

impl Plan {
    fn wants(&self, what: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|o| what.starts_with(o.as_str())))
    }
}

/// Latency percentiles, ms.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Option<Self> {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        (!h.is_empty()).then(|| Self {
            p50: ms(0.50),
            p90: ms(0.90),
            p99: ms(0.99),
            p999: ms(0.999),
        })
    }
}

/// One constant-rate measurement of one target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub scenario: String,
    /// `upstream` (the fake upstream alone), `gateway`, `litellm`, `redis` (a PING),
    /// `admission` (the limiter's script), or, measured by oha, `oha` (the gateway) and
    /// `oha-upstream` (the fake upstream alone: oha's baseline).
    pub target: String,
    pub rate: f64,
    pub achieved: f64,
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latency_ms: Percentiles,
    pub first_token_ms: Option<Percentiles>,
    pub token_gap_ms: Option<Percentiles>,
    pub usage: Usage,
    /// The slowest requests: when they were due (ms from the step's start) and their latency.
    #[serde(default)]
    pub slowest: Vec<SlowRequest>,
    /// What the stall probe saw during the step (absent when it did not run).
    #[serde(default)]
    pub machine: Option<MachineStalls>,
    /// Earlier attempts at this step, set aside because the machine stalled during them.
    #[serde(default)]
    pub set_aside: Vec<SetAside>,
    /// Targets `oha` and `oha-upstream`: the step was measured by oha, not by our generator;
    /// what oha reported.
    /// (oha gives no per-request times: no slowest requests, and no split of the requests by
    /// whether a stall touched them.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oha: Option<oha::Report>,
}

/// An attempt at a step that was measured again because the machine stalled during it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetAside {
    pub latency_ms: Percentiles,
    pub errors: u64,
    pub machine: MachineStalls,
}

/// The machine's own stalls during a step: windows of 1 ms or more in which a CPU ran no user
/// space at all (the hypervisor had taken it away, or the kernel would not be interrupted), and
/// the latency of the requests that no such window touched.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineStalls {
    /// Whether the probe ran real-time (else a busy CPU also delays it, and it overcounts).
    pub realtime: bool,
    pub stalls: u64,
    pub longest_ms: f64,
    /// The stalls' lengths added up, over all CPUs.
    pub stalled_ms: f64,
    /// Successful requests in flight (from due time to answer) during a stall.
    pub requests_hit: u64,
    /// The latency of the other successful requests.
    pub clear_latency_ms: Option<Percentiles>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlowRequest {
    pub due_ms: f64,
    pub latency_ms: f64,
    /// How long after its due time the load generator sent it.
    #[serde(default)]
    pub sent_late_ms: f64,
}

impl Step {
    /// Past what the target can take: behind the schedule, or failing.
    pub fn saturated(&self) -> bool {
        self.achieved < 0.95 * self.rate || self.errors * 100 > self.sent
    }
}

/// Open streaming connections and the memory they cost.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StreamsMemory {
    pub requested: u64,
    pub open: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    pub rss_mib: BTreeMap<String, f64>,
}

/// Everything one run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Run {
    pub idle_rss_mib: BTreeMap<String, f64>,
    pub steps: Vec<Step>,
    pub streams: Option<StreamsMemory>,
    /// oha's closed-loop throughput runs (scenario 2: the upstream alone, then the gateway).
    #[serde(default)]
    pub closed_loop: Vec<ClosedLoop>,
    /// oha runs that failed (oha did not start, exited with an error, or wrote no JSON).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub oha_failures: Vec<String>,
}

/// One closed-loop run of oha: `connections` connections, each sending its next request as soon
/// as the last is answered, for the step's length; no rate limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClosedLoop {
    pub scenario: String,
    /// `upstream` (the fake upstream alone, the same request as its baseline) or `gateway`.
    pub target: String,
    pub connections: usize,
    pub report: oha::Report,
    pub usage: Usage,
    pub machine: Option<MachineStalls>,
}

pub(crate) struct Stack {
    // Dropped (killed) in reverse order of start.
    litellm: Option<Process>,
    replica: Process,
    edge: Process,
    core: Process,
    upstream: Process,
    pub(crate) redis: RedisDeployment,
    pub(crate) http: reqwest::Client,
    pub(crate) key: HeaderValue,
}

impl Stack {
    fn processes(&self) -> Vec<(String, u32)> {
        let mut all = vec![
            ("loadgen".to_string(), std::process::id()),
            ("upstream".to_string(), self.upstream.pid()),
        ];
        all.extend(self.redis.processes());
        all.extend([
            ("core".to_string(), self.core.pid()),
            ("edge".to_string(), self.edge.pid()),
            ("replica".to_string(), self.replica.pid()),
        ]);
        if let Some(litellm) = &self.litellm {
            all.push(("litellm".to_string(), litellm.pid()));
        }
        all
    }

    fn upstream_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.upstream.port)
    }

    pub(crate) fn edge_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.edge.port)
    }

    fn replica_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.replica.port)
    }

    async fn configure_upstream(&self, settings: SettingsPatch) -> anyhow::Result<()> {
        let response = self
            .http
            .post(self.upstream_url("/admin/settings"))
            .json(&settings)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("configuring the fake upstream: {}", response.status());
        }
        Ok(())
    }
}

const STREAM_SETTINGS: SettingsPatch = SettingsPatch {
    delay_us: 0,
    tokens: 20,
    token_interval_us: 1000,
};

fn client(max_in_flight: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(max_in_flight)
        .pool_idle_timeout(Duration::from_secs(60))
        .timeout(Duration::from_secs(15))
        .build()?)
}

/// Redis laid out as `layout`, the fake upstream, a core, an edge and a combined replica, and
/// (when given) LiteLLM; one API key with limits that are checked on every call and never hit.
pub(crate) async fn start(plan: &Plan, layout: Layout) -> anyhow::Result<Stack> {
    let redis = RedisDeployment::start(layout, &plan.work_dir)?;
    let upstream = processes::upstream(&plan.binaries)?;
    let core = processes::core(&plan.binaries, &redis.core_env(), upstream.port)?;
    let edge = processes::edge(&plan.binaries, core.port)?;
    let replica = processes::replica(&plan.binaries, &redis.core_env(), upstream.port)?;
    let litellm = match &plan.litellm {
        Some(executable) if plan.wants(LITELLM) => {
            match processes::litellm(executable, upstream.port, &plan.work_dir) {
                Ok(process) => Some(process),
                Err(error) => {
                    eprintln!("LiteLLM did not start, its comparison is skipped: {error:#}");
                    None
                }
            }
        }
        _ => None,
    };
    let http = client(plan.max_in_flight.max(plan.streams as usize))?;
    let created = http
        .post(format!("http://127.0.0.1:{}/api/v1/keys", edge.port))
        .bearer_auth(processes::INTERNAL_TOKEN)
        .json(&json!({
            "name": "benchmark",
            "limits": {
                "requestsPerMinute": 1_000_000_000u64,
                "tokensPerMinute": 1_000_000_000_000u64,
                "contextTokensPerMinute": 1_000_000_000_000u64,
                // The memory figure holds 10,000 streams open on this one key.
                "concurrentStreams": 1_000_000u64,
            },
            // The runs create thousands of sessions and send thousands of turns to some: no
            // quota of the defaults may stop them halfway.
            "quotas": {
                "maxSessions": 1_000_000_000u64,
                "maxMessagesPerSession": 1_000_000_000u64,
                "maxSessionBytes": 1_000_000_000_000u64,
                "maxCronJobs": 1_000_000u64,
            }
        }))
        .send()
        .await?;
    let status = created.status();
    let body: Value = created.json().await?;
    let Some(secret) = body["data"]["key"].as_str() else {
        bail!("creating the benchmark key: {status} {body}");
    };
    let stack = Stack {
        litellm,
        replica,
        edge,
        core,
        upstream,
        redis,
        http,
        key: HeaderValue::from_str(&format!("Bearer {secret}"))?,
    };
    stack.configure_upstream(STREAM_SETTINGS).await?;
    Ok(stack)
}

/// One whole run: start everything, measure idle memory, every wanted scenario, the streams.
pub async fn run(plan: &Plan, log: &dyn Fn(&str)) -> anyhow::Result<Run> {
    let stack = start(plan, Layout::Standalone).await?;
    // Let start-up work (script loading, connection pools) settle before idle figures.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut result = Run {
        idle_rss_mib: stack
            .processes()
            .into_iter()
            .filter(|(name, _)| name != "loadgen")
            .map(|(name, pid)| (name, (processes::rss_mib(pid) * 10.0).round() / 10.0))
            .collect(),
        ..Run::default()
    };
    if plan.wants(ADMISSION) {
        admission(plan, &stack, &mut result, log).await?;
    }
    for (scenario, url) in [
        (OPENAI, stack.edge_url("/v1/chat/completions")),
        (OPENAI_COMBINED, stack.replica_url("/v1/chat/completions")),
    ] {
        if !plan.wants(scenario) {
            continue;
        }
        let gateway = Target::Http {
            url,
            auth: Some(stack.key.clone()),
            body: openai_body("zai/glm-4.7-flash", false),
            streamed: false,
        };
        sweep(
            plan,
            &stack,
            scenario,
            "gateway",
            &plan.rates,
            gateway.clone(),
            &mut result,
            log,
        )
        .await;
        if let Some(oha) = &plan.oha {
            closed_loops(plan, &stack, oha, scenario, &gateway, &mut result, log).await;
        }
    }
    if plan.wants(GRPC) {
        let channel = tonic::transport::Endpoint::from_shared(format!(
            "http://127.0.0.1:{}",
            stack.core.port
        ))?
        .tcp_nodelay(true)
        .connect()
        .await?;
        let gateway = Target::Grpc {
            channel,
            auth: tonic::metadata::MetadataValue::try_from(stack.key.to_str()?)?,
        };
        sweep(
            plan,
            &stack,
            GRPC,
            "gateway",
            &plan.rates,
            gateway,
            &mut result,
            log,
        )
        .await;
    }
    for (scenario, base) in [
        (SEND_MESSAGE, stack.edge_url("")),
        (SEND_MESSAGE_COMBINED, stack.replica_url("")),
    ] {
        if plan.wants(scenario) {
            send_message(plan, &stack, scenario, &base, &mut result, log).await?;
        }
    }
    if plan.wants(STREAMING) {
        let gateway = Target::Http {
            url: stack.edge_url("/v1/chat/completions"),
            auth: Some(stack.key.clone()),
            body: openai_body("zai/glm-4.7-flash", true),
            streamed: true,
        };
        let rates = plan.streaming_rates.clone();
        sweep(
            plan,
            &stack,
            STREAMING,
            "gateway",
            &rates,
            gateway,
            &mut result,
            log,
        )
        .await;
    }
    if let Some(litellm) = &stack.litellm {
        let target = Target::Http {
            url: format!("http://127.0.0.1:{}/v1/chat/completions", litellm.port),
            auth: Some(HeaderValue::from_str(&format!(
                "Bearer {}",
                processes::LITELLM_KEY
            ))?),
            body: openai_body("bench", false),
            streamed: false,
        };
        sweep(
            plan,
            &stack,
            LITELLM,
            "litellm",
            &plan.litellm_rates,
            target,
            &mut result,
            log,
        )
        .await;
    }
    if plan.wants("memory") && plan.streams > 0 {
        result.streams = Some(hold_streams(plan, &stack, log).await?);
        stack.configure_upstream(STREAM_SETTINGS).await?;
    }
    Ok(result)
}

// ---------------------------------------------------------------- targets

#[derive(Clone)]
pub(crate) enum Target {
    Http {
        url: String,
        auth: Option<HeaderValue>,
        body: Bytes,
        streamed: bool,
    },
    /// Scenario 1: each request to the next session of a pool.
    Sessions {
        base: String,
        auth: HeaderValue,
        sessions: Arc<Vec<String>>,
        body: Bytes,
    },
    Grpc {
        channel: tonic::transport::Channel,
        auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    },
    Admission {
        limits: Arc<RedisLimits>,
        keys: u64,
    },
    RedisPing {
        conn: SharedConnection,
    },
}

const HISTORY_TURNS: usize = 10;

fn history() -> Vec<Value> {
    (0..HISTORY_TURNS)
        .flat_map(|turn| {
            [
                json!({"role": "user", "content": format!("Turn {turn}: could you summarise what we decided about the quarterly report, and list the open questions that remain?")}),
                json!({"role": "assistant", "content": format!("Turn {turn}: we agreed to ship the report on Friday with the revised revenue table; the open questions are the currency conversion and who signs off the appendix.")}),
            ]
        })
        .collect()
}

const NEW_TURN: &str = "Thanks. Please draft the e-mail announcing it.";

pub(crate) fn openai_body(model: &str, stream: bool) -> Bytes {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "Hello! Say something short."}],
        "max_tokens": 32,
    });
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
    }
    Bytes::from(body.to_string())
}

/// The request the gateway sends upstream for a send-message on a 10-turn session, sent
/// directly: the baseline of scenario 1.
fn history_body() -> Bytes {
    let mut messages = history();
    messages.push(json!({"role": "user", "content": NEW_TURN}));
    Bytes::from(
        json!({"model": "glm-4.7-flash", "messages": messages, "max_tokens": 32}).to_string(),
    )
}

fn count_tokens(chunk: &[u8], at: Instant, tokens: &mut Vec<Instant>) {
    let needle = b"\"content\":\"";
    let mut i = 0;
    while i + needle.len() < chunk.len() {
        if &chunk[i..i + needle.len()] == needle {
            if chunk[i + needle.len()] != b'"' {
                tokens.push(at);
            }
            i += needle.len();
        } else {
            i += 1;
        }
    }
}

async fn http_call(
    http: reqwest::Client,
    url: String,
    auth: Option<HeaderValue>,
    body: Bytes,
    streamed: bool,
) -> Result<Sample, String> {
    let mut request = http
        .post(url)
        .header(CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(auth) = auth {
        request = request.header(AUTHORIZATION, auth);
    }
    let mut response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let mut sample = Sample::default();
    let mut text = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if streamed {
            count_tokens(&chunk, Instant::now(), &mut sample.tokens_at);
        }
        if !status.is_success() && text.len() < 400 {
            text.extend_from_slice(&chunk);
        }
    }
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&text)));
    }
    if streamed && sample.tokens_at.is_empty() {
        return Err("a stream without tokens".into());
    }
    Ok(sample)
}

const ADMISSION_QUOTA: Quota = Quota {
    requests: u64::MAX / 4,
    tokens: u64::MAX / 4,
    context: u64::MAX / 4,
};

pub(crate) fn caller(
    target: Target,
    http: reqwest::Client,
    run: u64,
) -> impl Fn(u64, Instant) -> Call + Send + Sync + 'static {
    move |i, _due| -> Call {
        match &target {
            Target::Http {
                url,
                auth,
                body,
                streamed,
            } => Box::pin(http_call(
                http.clone(),
                url.clone(),
                auth.clone(),
                body.clone(),
                *streamed,
            )),
            Target::Sessions {
                base,
                auth,
                sessions,
                body,
            } => {
                let session = &sessions[i as usize % sessions.len()];
                Box::pin(http_call(
                    http.clone(),
                    format!("{base}/api/v1/sessions/{session}/messages"),
                    Some(auth.clone()),
                    body.clone(),
                    false,
                ))
            }
            Target::Grpc { channel, auth } => {
                let mut client = CompletionServiceClient::new(channel.clone());
                let mut request = tonic::Request::new(proto::CompleteRequest {
                    model: "zai/glm-4.7-flash".into(),
                    messages: vec![proto::ChatMessage {
                        role: "user".into(),
                        content: "Hello! Say something short.".into(),
                        ..Default::default()
                    }],
                    options: Some(proto::GenerationOptions {
                        max_tokens: Some(32),
                        ..Default::default()
                    }),
                    session_id: String::new(),
                });
                request.metadata_mut().insert("authorization", auth.clone());
                Box::pin(async move {
                    client
                        .complete(request)
                        .await
                        .map(|_| Sample::default())
                        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
                })
            }
            Target::Admission { limits, keys } => {
                let limits = limits.clone();
                let key = format!("bench-admission-{}", i % keys);
                let reservation = format!("bench-{run}-{i}");
                Box::pin(async move {
                    limits
                        .admit(
                            &key,
                            ADMISSION_QUOTA,
                            Charge {
                                tokens: 120,
                                context: 20,
                                cost_micros: 0,
                            },
                            &reservation,
                        )
                        .await
                        .map(|_| Sample::default())
                        .map_err(|e| e.to_string())
                })
            }
            Target::RedisPing { conn } => {
                let mut conn = conn.clone();
                Box::pin(async move {
                    redis::cmd("PING")
                        .query_async::<String>(&mut conn)
                        .await
                        .map(|_| Sample::default())
                        .map_err(|e| e.to_string())
                })
            }
        }
    }
}

static RUN_IDS: AtomicU64 = AtomicU64::new(0);

/// Unrecorded load at the step's rate and on its target just before each measurement. Between
/// steps a target sits idle for seconds (its baseline is being measured), and on this VM
/// (`haltpoll.guest_halt_poll_ns=0`) the first requests after an idle spell wait for halted
/// vCPUs to be woken: 10-15 ms for a lone `/healthz` after 3 s idle against 0.4 ms back to
/// back, 45-80 ms for the first burst of a step. A steadily loaded gateway never pays that.
const WARM_UP: Duration = Duration::from_millis(500);

/// A step in which the stall probe saw the machine stop for this long (ms) or longer is measured
/// again: such a stall holds every request in flight, baseline or gateway, and at 2,000/s one of
/// 30 ms alone is the p99 of a 3-s step.
pub const REPEAT_AFTER_STALL_MS: f64 = 2.0;
/// Attempts at most per step; the last one counts whatever the machine did.
const ATTEMPTS: usize = 3;

/// [`measure_once`], again while the machine stalls (see [`REPEAT_AFTER_STALL_MS`]); the attempts
/// set aside are kept in the step.
async fn measure(
    plan: &Plan,
    stack: &Stack,
    scenario: &str,
    target_name: &str,
    rate: f64,
    duration: Duration,
    target: Target,
) -> Step {
    let attempt = || async {
        Ok::<_, std::convert::Infallible>(
            measure_once(
                plan,
                stack,
                scenario,
                target_name,
                rate,
                duration,
                target.clone(),
            )
            .await,
        )
    };
    match again_while_stalled(attempt).await {
        Ok(step) => step,
        Err(never) => match never {},
    }
}

/// Runs `attempt` again while the machine stalls during it (see [`REPEAT_AFTER_STALL_MS`]), at
/// most [`ATTEMPTS`] times; the attempts set aside are kept in the step.
async fn again_while_stalled<F, Fut, E>(mut attempt: F) -> Result<Step, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Step, E>>,
{
    let mut set_aside = Vec::new();
    loop {
        let mut step = attempt().await?;
        match step.machine.take() {
            Some(machine) if measure_again(&machine, set_aside.len()) => {
                set_aside.push(SetAside {
                    latency_ms: step.latency_ms,
                    errors: step.errors,
                    machine,
                });
            }
            machine => {
                step.machine = machine;
                step.set_aside = set_aside;
                return Ok(step);
            }
        }
    }
}

/// Whether an attempt during which the machine stalled as `machine` says is set aside, when
/// `set_aside` attempts at the step already were.
fn measure_again(machine: &MachineStalls, set_aside: usize) -> bool {
    machine.longest_ms >= REPEAT_AFTER_STALL_MS && set_aside + 1 < ATTEMPTS
}

/// A duration in milliseconds, rounded to a tenth.
fn tenths_of_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// Our own load at `rate` on `target` for `WARM_UP`, before any measured step (ours or oha's).
async fn warm_up(plan: &Plan, stack: &Stack, rate: f64, target: &Target) {
    let call = caller(
        target.clone(),
        stack.http.clone(),
        RUN_IDS.fetch_add(1, Ordering::Relaxed),
    );
    open_loop(
        rate,
        WARM_UP,
        plan.max_in_flight,
        Duration::from_secs(20),
        call,
    )
    .await;
}

async fn measure_once(
    plan: &Plan,
    stack: &Stack,
    scenario: &str,
    target_name: &str,
    rate: f64,
    duration: Duration,
    target: Target,
) -> Step {
    warm_up(plan, stack, rate, &target).await;
    let meter = Meter::start(&stack.processes());
    let probe = plan.stall_probe.then(Probe::start);
    let call = caller(
        target,
        stack.http.clone(),
        RUN_IDS.fetch_add(1, Ordering::Relaxed),
    );
    let outcome: Outcome = open_loop(
        rate,
        duration,
        plan.max_in_flight,
        Duration::from_secs(20),
        call,
    )
    .await;
    let usage = meter.stop();
    let machine = probe.map(|probe| {
        let realtime = probe.realtime;
        let seen = stalls::split(
            probe.stop(),
            outcome.started,
            outcome.started + outcome.elapsed,
            &outcome.spans,
        );
        MachineStalls {
            realtime,
            stalls: seen.stalls.len() as u64,
            longest_ms: tenths_of_ms(
                seen.stalls
                    .iter()
                    .map(Stall::length)
                    .max()
                    .unwrap_or_default(),
            ),
            stalled_ms: tenths_of_ms(seen.stalls.iter().map(Stall::length).sum()),
            requests_hit: seen.hit,
            clear_latency_ms: Percentiles::of(&seen.clear),
        }
    });
    Step {
        scenario: scenario.to_string(),
        target: target_name.to_string(),
        rate,
        achieved: (outcome.achieved() * 10.0).round() / 10.0,
        sent: outcome.sent,
        ok: outcome.ok,
        errors: outcome.errors,
        first_error: outcome.first_error.clone(),
        latency_ms: Percentiles::of(&outcome.latency).unwrap_or_default(),
        first_token_ms: Percentiles::of(&outcome.first_token),
        token_gap_ms: Percentiles::of(&outcome.token_gap),
        usage,
        slowest: outcome
            .slowest
            .iter()
            .map(|slow| SlowRequest {
                due_ms: tenths_of_ms(slow.due),
                latency_ms: tenths_of_ms(slow.latency),
                sent_late_ms: tenths_of_ms(slow.sent_late),
            })
            .collect(),
        machine,
        set_aside: Vec::new(),
        oha: None,
    }
}

fn describe(step: &Step) -> String {
    format!(
        "{:<24} {:<9} rate {:>6} achieved {:>8.1} p50 {:>7.3} p99 {:>8.3} p99.9 {:>8.3} ms errors {}{}{}{}{}",
        step.scenario,
        step.target,
        step.rate,
        step.achieved,
        step.latency_ms.p50,
        step.latency_ms.p99,
        step.latency_ms.p999,
        step.errors,
        step.first_error
            .as_deref()
            .map(|e| format!(" ({})", e.chars().take(160).collect::<String>()))
            .unwrap_or_default(),
        step.machine
            .as_ref()
            .map(|m| match m.clear_latency_ms {
                Some(clear) => format!(
                    "; machine stalls {} (longest {:.1} ms, {} requests in flight), p99 of the rest {:.3} ms",
                    m.stalls, m.longest_ms, m.requests_hit, clear.p99
                ),
                // oha's steps: no per-request times to split by the stalls.
                None => format!("; machine stalls {} (longest {:.1} ms)", m.stalls, m.longest_ms),
            })
            .unwrap_or_default(),
        step.set_aside
            .iter()
            .map(|a| format!(
                "; measured again after an attempt in which the machine stalled {} times, longest {:.1} ms (p99 {:.3} ms)",
                a.machine.stalls, a.machine.longest_ms, a.latency_ms.p99
            ))
            .collect::<String>(),
        if step.slowest.is_empty() {
            String::new()
        } else {
            format!(
                "; slowest {}",
                step.slowest
                    .iter()
                    .take(3)
                    .map(|s| format!(
                        "{:.1} ms due at +{:.0} ms (sent {:.1} ms late)",
                        s.latency_ms, s.due_ms, s.sent_late_ms
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    )
}

/// The target and its baseline (the fake upstream alone with the equivalent request) at every
/// rate, until the target saturates.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn sweep(
    plan: &Plan,
    stack: &Stack,
    scenario: &str,
    target_name: &str,
    rates: &[f64],
    target: Target,
    result: &mut Run,
    log: &dyn Fn(&str),
) {
    let streamed = scenario == STREAMING;
    let baseline = Target::Http {
        url: stack.upstream_url("/v1/chat/completions"),
        auth: None,
        body: openai_body("glm-4.7-flash", streamed),
        streamed,
    };
    sweep_with(
        plan,
        stack,
        scenario,
        target_name,
        rates,
        target,
        baseline,
        "upstream",
        result,
        log,
    )
    .await;
}

#[allow(clippy::too_many_arguments)]
async fn sweep_with(
    plan: &Plan,
    stack: &Stack,
    scenario: &str,
    target_name: &str,
    rates: &[f64],
    target: Target,
    baseline: Target,
    baseline_name: &str,
    result: &mut Run,
    log: &dyn Fn(&str),
) {
    // No separate warm-up: `measure` warms every target up (connections, caches, scripts).
    for &rate in rates {
        let base = measure(
            plan,
            stack,
            scenario,
            baseline_name,
            rate,
            plan.step,
            baseline.clone(),
        )
        .await;
        log(&describe(&base));
        let step = measure(
            plan,
            stack,
            scenario,
            target_name,
            rate,
            plan.step,
            target.clone(),
        )
        .await;
        log(&describe(&step));
        let saturated = step.saturated();
        result.steps.push(base);
        result.steps.push(step);
        if let Some(oha) = plan.oha.as_ref().filter(|_| beside_oha(scenario)) {
            // oha's own baseline first, as ours: the same command against the fake upstream
            // alone, so that oha's overhead is a difference of two oha figures.
            let upstream = oha_upstream(stack.upstream_url("/v1/chat/completions"), &target);
            for (name, target) in [(OHA_UPSTREAM, &upstream), (OHA, &target)] {
                match measure_oha(plan, stack, oha, scenario, name, rate, target).await {
                    Ok(step) => {
                        log(&describe(&step));
                        result.steps.push(step);
                    }
                    Err(error) => {
                        let error = format!("{scenario} {name} at {rate}/s, open loop: {error:#}");
                        log(&format!("oha failed: {error}"));
                        result.oha_failures.push(error);
                    }
                }
            }
        }
        if saturated {
            break;
        }
    }
}

// ---------------------------------------------------------------- oha beside our generator

/// The scenarios oha measures beside our generator: scenario 2, split and combined.
fn beside_oha(scenario: &str) -> bool {
    scenario == OPENAI || scenario == OPENAI_COMBINED
}

/// oha's baseline of an HTTP target: the same headers and body, sent to the fake upstream alone
/// at the URL our own baseline uses (the fake upstream answers every non-streamed request with
/// the same bytes, whatever the model or the key).
fn oha_upstream(upstream_url: String, target: &Target) -> Target {
    let mut upstream = target.clone();
    if let Target::Http { url, .. } = &mut upstream {
        *url = upstream_url;
    }
    upstream
}

/// The request of an HTTP target, for oha: the same URL, headers and body.
fn oha_request(target: &Target) -> anyhow::Result<oha::Request> {
    let Target::Http {
        url, auth, body, ..
    } = target
    else {
        bail!("oha sends only plain HTTP requests");
    };
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    if let Some(auth) = auth {
        headers.push(("authorization".into(), auth.to_str()?.to_string()));
    }
    Ok(oha::Request {
        url: url.clone(),
        headers,
        body: body.clone(),
    })
}

/// oha once against `request`, the processes metered and the stall probe watching meanwhile;
/// oha's own CPU and peak RSS go into the usage as `oha`.
async fn run_oha(
    plan: &Plan,
    stack: &Stack,
    oha: &Oha,
    request: &oha::Request,
    load: oha::Load,
) -> anyhow::Result<(oha::Report, Usage, Option<MachineStalls>)> {
    let meter = Meter::start(&stack.processes());
    let probe = plan.stall_probe.then(Probe::start);
    let started = Instant::now();
    let (runner, sent, duration) = (oha.clone(), request.clone(), plan.step);
    let report = tokio::task::spawn_blocking(move || runner.run(&sent, load, duration)).await?;
    let ended = Instant::now();
    let mut usage = meter.stop();
    let machine = probe.map(|probe| {
        let realtime = probe.realtime;
        let seen = stalls::split(probe.stop(), started, ended, &[]);
        MachineStalls {
            realtime,
            stalls: seen.stalls.len() as u64,
            longest_ms: tenths_of_ms(
                seen.stalls
                    .iter()
                    .map(Stall::length)
                    .max()
                    .unwrap_or_default(),
            ),
            stalled_ms: tenths_of_ms(seen.stalls.iter().map(Stall::length).sum()),
            requests_hit: 0,
            clear_latency_ms: None,
        }
    });
    let report = report?;
    let wall = report.wall_seconds.max(1e-3);
    usage.cpu_percent.insert(
        "oha".into(),
        (100.0 * report.cpu_seconds / wall * 10.0).round() / 10.0,
    );
    usage
        .cpu_seconds
        .insert("oha".into(), (report.cpu_seconds * 100.0).round() / 100.0);
    usage
        .peak_rss_mib
        .insert("oha".into(), (report.peak_rss_mib * 10.0).round() / 10.0);
    Ok((report, usage, machine))
}

/// oha open loop at `rate` against `target` (named `target_name`: [`OHA_UPSTREAM`] for the fake
/// upstream alone, [`OHA`] for the gateway), right after our generator's steps at that rate and
/// on the same running processes; warmed up like every step (0.5 s of our own load at the rate
/// on the same target), and measured again after a stall of the machine like every step.
async fn measure_oha(
    plan: &Plan,
    stack: &Stack,
    oha: &Oha,
    scenario: &str,
    target_name: &str,
    rate: f64,
    target: &Target,
) -> anyhow::Result<Step> {
    let request = oha_request(target)?;
    let attempt = || async {
        warm_up(plan, stack, rate, target).await;
        let (report, usage, machine) =
            run_oha(plan, stack, oha, &request, oha::Load::Open { rate }).await?;
        Ok::<_, anyhow::Error>(Step {
            scenario: scenario.to_string(),
            target: target_name.to_string(),
            rate,
            achieved: report.ok_per_sec,
            sent: report.ok + report.errors,
            ok: report.ok,
            errors: report.errors,
            first_error: report.first_error(),
            latency_ms: report.latency_ms,
            first_token_ms: None,
            token_gap_ms: None,
            usage,
            slowest: Vec::new(),
            machine,
            set_aside: Vec::new(),
            oha: Some(report),
        })
    };
    again_while_stalled(attempt).await
}

/// oha closed loop for the step's length: the fake upstream alone (the same request as the
/// scenario's baseline), then the gateway.
async fn closed_loops(
    plan: &Plan,
    stack: &Stack,
    oha: &Oha,
    scenario: &str,
    gateway: &Target,
    result: &mut Run,
    log: &dyn Fn(&str),
) {
    let upstream = Target::Http {
        url: stack.upstream_url("/v1/chat/completions"),
        auth: None,
        body: openai_body("glm-4.7-flash", false),
        streamed: false,
    };
    for (name, target) in [("upstream", &upstream), ("gateway", gateway)] {
        let measured = async {
            let request = oha_request(target)?;
            run_oha(plan, stack, oha, &request, oha::Load::Closed).await
        }
        .await;
        match measured {
            Ok((report, usage, machine)) => {
                let run = ClosedLoop {
                    scenario: scenario.to_string(),
                    target: name.to_string(),
                    connections: oha.connections,
                    report,
                    usage,
                    machine,
                };
                log(&describe_closed_loop(&run));
                result.closed_loop.push(run);
            }
            Err(error) => {
                let error = format!("{scenario} {name}, closed loop: {error:#}");
                log(&format!("oha failed: {error}"));
                result.oha_failures.push(error);
            }
        }
    }
}

fn describe_closed_loop(run: &ClosedLoop) -> String {
    format!(
        "{:<24} {:<9} closed loop (oha, {} connections, no rate limit): {:.1} 2xx/s, errors {}{}, p50 {:.3} p99 {:.3} ms, CPU % {:?}{}",
        run.scenario,
        run.target,
        run.connections,
        run.report.ok_per_sec,
        run.report.errors,
        run.report
            .first_error()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default(),
        run.report.latency_ms.p50,
        run.report.latency_ms.p99,
        run.usage.cpu_percent,
        run.machine
            .as_ref()
            .map(|m| format!(
                "; machine stalls {} (longest {:.1} ms)",
                m.stalls, m.longest_ms
            ))
            .unwrap_or_default(),
    )
}

/// Scenario 5: the limiter's admission script alone, against a Redis PING at the same rate.
async fn admission(
    plan: &Plan,
    stack: &Stack,
    result: &mut Run,
    log: &dyn Fn(&str),
) -> anyhow::Result<()> {
    let conn = SharedConnection::open(&RedisConfig::standalone(
        stack.redis.first_url(),
        std::time::Duration::from_secs(1),
    ))
    .await?;
    let limits = Arc::new(RedisLimits::new(conn.clone()));
    let target = Target::Admission { limits, keys: 1000 };
    let baseline = Target::RedisPing { conn };
    sweep_with(
        plan,
        stack,
        ADMISSION,
        "admission",
        &plan.rates,
        target,
        baseline,
        "redis",
        result,
        log,
    )
    .await;
    Ok(())
}

/// Scenario 1: send-message on sessions holding a 10-turn history, Redis store, limits on.
/// Two sends to one session are served one after the other, so the load is spread over a pool
/// of sessions (one per request per second: each is sent to about once a second, and its
/// history grows by one turn per second of measurement).
/// Scenario 1 through the REST API at `base`: the split edge and core, or a combined replica.
pub(crate) async fn send_message(
    plan: &Plan,
    stack: &Stack,
    scenario: &str,
    base: &str,
    result: &mut Run,
    log: &dyn Fn(&str),
) -> anyhow::Result<()> {
    let send_body = Bytes::from(
        json!({"message": {"role": "user", "content": NEW_TURN}, "maxTokens": 32}).to_string(),
    );
    let baseline = Target::Http {
        url: stack.upstream_url("/v1/chat/completions"),
        auth: None,
        body: history_body(),
        streamed: false,
    };
    for &rate in &plan.rates {
        let sessions = Arc::new(create_sessions(stack, (rate as usize).clamp(64, 4000)).await?);
        let target = Target::Sessions {
            base: base.to_string(),
            auth: stack.key.clone(),
            sessions: sessions.clone(),
            body: send_body.clone(),
        };
        let base = measure(
            plan,
            stack,
            scenario,
            "upstream",
            rate,
            plan.step,
            baseline.clone(),
        )
        .await;
        log(&describe(&base));
        let step = measure(plan, stack, scenario, "gateway", rate, plan.step, target).await;
        log(&describe(&step));
        let saturated = step.saturated();
        result.steps.push(base);
        result.steps.push(step);
        if saturated {
            break;
        }
    }
    Ok(())
}

pub(crate) async fn create_sessions(stack: &Stack, count: usize) -> anyhow::Result<Vec<String>> {
    use futures::StreamExt as _;
    let body =
        Bytes::from(json!({"model": "zai/glm-4.7-flash", "messages": history()}).to_string());
    let url = stack.edge_url("/api/v1/sessions");
    let created: Vec<anyhow::Result<String>> = futures::stream::iter(0..count)
        .map(|_| {
            let request = stack
                .http
                .post(&url)
                .header(AUTHORIZATION, stack.key.clone())
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone());
            async move {
                let response = request.send().await?;
                let status = response.status();
                let value: Value = response.json().await?;
                value["data"]["sessionId"]
                    .as_str()
                    .map(str::to_string)
                    .with_context(|| format!("creating a session: {status} {value}"))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    created.into_iter().collect()
}

/// Memory with many open streaming connections: each request gets its first token at once and
/// its second a minute later, so every stream stays open through edge, core and upstream.
async fn hold_streams(
    plan: &Plan,
    stack: &Stack,
    log: &dyn Fn(&str),
) -> anyhow::Result<StreamsMemory> {
    stack
        .configure_upstream(SettingsPatch {
            delay_us: 0,
            tokens: 2,
            token_interval_us: 90_000_000,
        })
        .await?;
    let open = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let url = stack.edge_url("/v1/chat/completions");
    let body = openai_body("zai/glm-4.7-flash", true);
    let mut tasks = Vec::new();
    let started = Instant::now();
    for i in 0..plan.streams {
        // 2,000 new streams a second.
        let due = started + Duration::from_micros(i * 500);
        tokio::time::sleep_until(due.into()).await;
        let request = stack
            .http
            .post(&url)
            .header(AUTHORIZATION, stack.key.clone())
            .header(CONTENT_TYPE, "application/json")
            .timeout(Duration::from_secs(120))
            .body(body.clone());
        let (open, failed, first_error, mut stopped) = (
            open.clone(),
            failed.clone(),
            first_error.clone(),
            stopped.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let outcome = async {
                let mut response = request.send().await.map_err(|e| e.to_string())?;
                if !response.status().is_success() {
                    return Err(format!("HTTP {}", response.status()));
                }
                let mut tokens = Vec::new();
                while tokens.is_empty() {
                    match response.chunk().await.map_err(|e| e.to_string())? {
                        Some(chunk) => count_tokens(&chunk, Instant::now(), &mut tokens),
                        None => return Err("the stream ended early".to_string()),
                    }
                }
                Ok(response)
            }
            .await;
            match outcome {
                Ok(response) => {
                    open.fetch_add(1, Ordering::Relaxed);
                    let _ = stopped.wait_for(|s| *s).await;
                    drop(response);
                }
                Err(error) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    first_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(error);
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while open.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) < plan.streams
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_mib = stack
        .processes()
        .into_iter()
        .map(|(name, pid)| (name, (processes::rss_mib(pid) * 10.0).round() / 10.0))
        .collect();
    let memory = StreamsMemory {
        requested: plan.streams,
        open: open.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        first_error: first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        rss_mib,
    };
    log(&format!(
        "streams: {} requested, {} open, {} failed {:?}; RSS MiB {:?}",
        memory.requested, memory.open, memory.failed, memory.first_error, memory.rss_mib
    ));
    let _ = stop.send(true);
    for task in tasks {
        task.abort();
    }
    Ok(memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stalled(longest_ms: f64) -> MachineStalls {
        MachineStalls {
            realtime: true,
            stalls: 1,
            longest_ms,
            stalled_ms: longest_ms,
            requests_hit: 1,
            clear_latency_ms: None,
        }
    }

    #[test]
    fn a_step_is_measured_again_after_a_long_stall_at_most_three_times_in_all() {
        assert!(!measure_again(&stalled(1.9), 0));
        assert!(measure_again(&stalled(REPEAT_AFTER_STALL_MS), 0));
        assert!(measure_again(&stalled(30.0), 1));
        // The third attempt counts whatever the machine did.
        assert!(!measure_again(&stalled(30.0), 2));
    }

    #[test]
    fn oha_s_baseline_is_the_same_command_as_its_gateway_step_but_for_the_url() {
        let gateway = Target::Http {
            url: "http://127.0.0.1:2/v1/chat/completions".into(),
            auth: Some(HeaderValue::from_static("Bearer secret")),
            body: openai_body("zai/glm-4.7-flash", false),
            streamed: false,
        };
        let upstream = oha_upstream("http://127.0.0.1:1/v1/chat/completions".into(), &gateway);
        let oha = Oha {
            path: "oha".into(),
            version: "1.16.0".into(),
            connections: 64,
        };
        let load = oha::Load::Open { rate: 500.0 };
        let step = Duration::from_secs(3);
        let mut at_gateway = oha.arguments(&oha_request(&gateway).unwrap(), load, step);
        let mut at_upstream = oha.arguments(&oha_request(&upstream).unwrap(), load, step);
        assert_eq!(
            at_gateway.pop().unwrap(),
            "http://127.0.0.1:2/v1/chat/completions"
        );
        assert_eq!(
            at_upstream.pop().unwrap(),
            "http://127.0.0.1:1/v1/chat/completions"
        );
        assert_eq!(at_gateway, at_upstream);
        assert!(at_upstream.contains(&"authorization: Bearer secret".to_string()));
    }

    #[test]
    fn durations_are_reported_in_tenths_of_a_millisecond() {
        assert_eq!(tenths_of_ms(Duration::from_micros(1_249)), 1.2);
        assert_eq!(tenths_of_ms(Duration::from_micros(1_251)), 1.3);
    }
}

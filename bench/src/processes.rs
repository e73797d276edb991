//! The processes under test, each a child on free loopback ports, and what `/proc` says about
//! them: CPU time (`/proc/<pid>/stat`), resident and peak resident memory (`/proc/<pid>/status`).

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The internal token the benchmark's core and edge share.
pub const INTERNAL_TOKEN: &str = "bench-internal-token-0123456789abcdef";

/// Clock ticks per second in `/proc/<pid>/stat` (USER_HZ, 100 on every Linux we run on).
const TICKS_PER_SECOND: f64 = 100.0;

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process, killed when dropped.
pub struct Process {
    pub name: String,
    pub port: u16,
    child: Child,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_listening(mut self, within: Duration) -> anyhow::Result<Self> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(self);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited before listening on {}: {status}",
                    self.name,
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "{} did not listen on {} within {within:?}",
            self.name,
            self.port
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command` and waits until it listens on `port`.
pub fn spawn_listening(
    name: &str,
    mut command: Command,
    port: u16,
    within: Duration,
) -> anyhow::Result<Process> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {name} ({command:?})"))?;
    Process {
        name: name.to_string(),
        port,
        child,
    }
    .wait_listening(within)
}

/// Where the gateway's binaries and ours are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub core: PathBuf,
    pub edge: PathBuf,
    pub upstream: PathBuf,
}

impl Binaries {
    /// The gateway's binaries in `dir` (`target/release` or `target/debug`); the fake upstream
    /// beside this load generator.
    pub fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        let here = std::env::current_exe()?;
        let upstream = here.with_file_name("fake-upstream");
        let binaries = Self {
            core: dir.join("openclaw-gateway"),
            edge: dir.join("openclaw-rest"),
            upstream,
        };
        for path in [&binaries.core, &binaries.edge, &binaries.upstream] {
            if !path.exists() {
                bail!(
                    "{} is missing: build it first (scripts/bench.sh does)",
                    path.display()
                );
            }
        }
        Ok(binaries)
    }
}

pub fn redis() -> anyhow::Result<Process> {
    let port = free_port()?;
    let mut command = Command::new("redis-server");
    command.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    spawn_listening("redis", command, port, Duration::from_secs(10))
}

pub fn upstream(binaries: &Binaries) -> anyhow::Result<Process> {
    let port = free_port()?;
    let mut command = Command::new(&binaries.upstream);
    command.args(["--listen", &format!("127.0.0.1:{port}")]);
    spawn_listening("upstream", command, port, Duration::from_secs(10))
}

/// Where the core finds Redis: the variable that says it and its value
/// (`OPENCLAW_REDIS_URL`, or `OPENCLAW_REDIS_CLUSTER_NODES` for a cluster).
pub type RedisEnv = (&'static str, String);

pub fn core(binaries: &Binaries, redis: &RedisEnv, upstream_port: u16) -> anyhow::Result<Process> {
    let port = free_port()?;
    let command = core_command(binaries, redis, upstream_port, port, "bench-core")?;
    spawn_listening("core", command, port, Duration::from_secs(30))
}

/// A combined replica: `openclaw-gateway serve --http-addr`, the REST API served by the core's
/// own process (its edge calls the core in-process). Its `port` is the REST one.
pub fn replica(
    binaries: &Binaries,
    redis: &RedisEnv,
    upstream_port: u16,
) -> anyhow::Result<Process> {
    let port = free_port()?;
    let mut command = core_command(
        binaries,
        redis,
        upstream_port,
        free_port()?,
        "bench-replica",
    )?;
    command.env("OPENCLAW_HTTP_ADDR", format!("127.0.0.1:{port}"));
    spawn_listening("replica", command, port, Duration::from_secs(30))
}

fn core_command(
    binaries: &Binaries,
    redis: &RedisEnv,
    upstream_port: u16,
    grpc_port: u16,
    replica: &str,
) -> anyhow::Result<Command> {
    let mut command = Command::new(&binaries.core);
    command
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("OPENCLAW_GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
        .env(
            "OPENCLAW_METRICS_ADDR",
            format!("127.0.0.1:{}", free_port()?),
        )
        .env(redis.0, &redis.1)
        .env("OPENCLAW_INTERNAL_TOKEN", INTERNAL_TOKEN)
        .env("OPENCLAW_REPLICA_ID", replica)
        // The 10,000-stream memory figure holds streams open for tens of seconds.
        .env("OPENCLAW_PROVIDER_TIMEOUT_MS", "120000")
        .env(
            "OPENCLAW_PROVIDERS_FILE",
            providers_file(upstream_port, grpc_port)?,
        )
        .env("ZAI_API_KEY", "bench-upstream-key")
        .stderr(Stdio::null());
    pass_tuning(&mut command);
    Ok(command)
}

/// The guide's models on the fake upstream, as the built-in provider serves them, with
/// glm-4.7-flash priced as resellers sell it ($0.07 in, $0.40 out per million tokens): so a key
/// with a budget reserves and settles a real cost on every call (keys without one are priced
/// the same and pay nothing for it).
fn providers_file(upstream_port: u16, grpc_port: u16) -> anyhow::Result<std::path::PathBuf> {
    let path = std::env::temp_dir().join(format!("openclaw-bench-providers-{grpc_port}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"defaultModel = "zai/glm-4.7-flash"

[[providers]]
name = "zai"
baseUrl = "http://127.0.0.1:{upstream_port}/v1"
apiKeyEnv = "ZAI_API_KEY"
models = [
  {{ name = "glm-4.7-flash", inputPricePerMTok = 0.07, outputPricePerMTok = 0.4 }},
  {{ name = "glm-4.5-flash" }},
  {{ name = "glm-4-flash-250414" }},
]
"#
        ),
    )?;
    Ok(path)
}

pub fn edge(binaries: &Binaries, core_port: u16) -> anyhow::Result<Process> {
    let port = free_port()?;
    let mut command = Command::new(&binaries.edge);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn")
        .env("OPENCLAW_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env(
            "OPENCLAW_METRICS_ADDR",
            format!("127.0.0.1:{}", free_port()?),
        )
        .env("OPENCLAW_CORE_URL", format!("http://127.0.0.1:{core_port}"))
        .stderr(Stdio::null());
    pass_tuning(&mut command);
    spawn_listening("edge", command, port, Duration::from_secs(30))
}

/// Runtime tuning set in the load generator's environment applies to the core and the edge
/// (e.g. `OPENCLAW_WORKER_THREADS=1 scripts/bench.sh`).
fn pass_tuning(command: &mut Command) {
    if let Ok(workers) = std::env::var("OPENCLAW_WORKER_THREADS") {
        command.env("OPENCLAW_WORKER_THREADS", workers);
    }
}

/// The master key LiteLLM's proxy is configured with.
pub const LITELLM_KEY: &str = "sk-bench-litellm";

/// LiteLLM's proxy (one worker) in front of the fake upstream as an OpenAI-compatible model
/// named `bench`.
pub fn litellm(executable: &Path, upstream_port: u16, dir: &Path) -> anyhow::Result<Process> {
    let port = free_port()?;
    std::fs::create_dir_all(dir)?;
    let config = dir.join("litellm-config.yaml");
    std::fs::write(
        &config,
        format!(
            "model_list:\n  - model_name: bench\n    litellm_params:\n      model: openai/glm-4.7-flash\n      api_base: http://127.0.0.1:{upstream_port}/v1\n      api_key: bench-upstream-key\ngeneral_settings:\n  master_key: {LITELLM_KEY}\nlitellm_settings:\n  drop_params: true\n  telemetry: false\n"
        ),
    )?;
    let mut command = Command::new(executable);
    command
        .args([
            "--config",
            &config.display().to_string(),
            "--host",
            "127.0.0.1",
        ])
        .args(["--port", &port.to_string(), "--num_workers", "1"])
        .env("LITELLM_LOG", "ERROR")
        .env("LITELLM_TELEMETRY", "False")
        .env("DISABLE_SCHEMA_UPDATE", "True")
        .stderr(Stdio::null());
    spawn_listening("litellm", command, port, Duration::from_secs(180))
}

// ---------------------------------------------------------------- /proc

/// A process and every descendant (LiteLLM's workers, for one). The load generator is the
/// parent of every process under test, so it counts as itself alone.
fn tree(pid: u32) -> Vec<u32> {
    if pid == std::process::id() {
        return vec![pid];
    }
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(ppid) = stat_fields(child)
                .and_then(|fields| fields.get(1).and_then(|p| p.parse::<u32>().ok()))
            {
                parents.push((child, ppid));
            }
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found
}

/// The fields of `/proc/<pid>/stat` after the command name (field 3, the state, first).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// User + system CPU seconds used so far by `pid` and its descendants.
pub fn cpu_seconds(pid: u32) -> f64 {
    tree(pid)
        .into_iter()
        .filter_map(stat_fields)
        .map(|f| {
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            (ticks(11) + ticks(12)) as f64 / TICKS_PER_SECOND
        })
        .sum()
}

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory now, MiB, of `pid` and its descendants.
pub fn rss_mib(pid: u32) -> f64 {
    tree(pid)
        .into_iter()
        .map(|p| status_kb(p, "VmRSS:"))
        .sum::<u64>() as f64
        / 1024.0
}

/// Peak resident memory since the last [`reset_peak`], MiB, of `pid` and its descendants.
pub fn peak_rss_mib(pid: u32) -> f64 {
    tree(pid)
        .into_iter()
        .map(|p| status_kb(p, "VmHWM:"))
        .sum::<u64>() as f64
        / 1024.0
}

/// Starts a new peak-RSS measurement (`echo 5 > /proc/<pid>/clear_refs`); best effort.
pub fn reset_peak(pid: u32) {
    for p in tree(pid) {
        let _ = std::fs::write(format!("/proc/{p}/clear_refs"), "5");
    }
}

/// CPU and peak memory of named processes over one measurement.
pub struct Meter {
    pids: Vec<(String, u32)>,
    cpu: Vec<f64>,
    started: Instant,
}

/// What a [`Meter`] saw: per process, CPU in % of one core and in seconds (user + system, in
/// clock ticks of 10 ms), and peak RSS in MiB.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub cpu_percent: BTreeMap<String, f64>,
    #[serde(default)]
    pub cpu_seconds: BTreeMap<String, f64>,
    pub peak_rss_mib: BTreeMap<String, f64>,
}

impl Meter {
    pub fn start(pids: &[(String, u32)]) -> Self {
        for (_, pid) in pids {
            reset_peak(*pid);
        }
        Self {
            pids: pids.to_vec(),
            cpu: pids.iter().map(|(_, pid)| cpu_seconds(*pid)).collect(),
            started: Instant::now(),
        }
    }

    pub fn stop(self) -> Usage {
        let wall = self.started.elapsed().as_secs_f64().max(1e-3);
        let mut usage = Usage::default();
        for ((name, pid), before) in self.pids.iter().zip(self.cpu) {
            let used = cpu_seconds(*pid) - before;
            usage
                .cpu_percent
                .insert(name.clone(), (100.0 * used / wall * 10.0).round() / 10.0);
            usage
                .cpu_seconds
                .insert(name.clone(), (used * 100.0).round() / 100.0);
            usage
                .peak_rss_mib
                .insert(name.clone(), (peak_rss_mib(*pid) * 10.0).round() / 10.0);
        }
        usage
    }
}

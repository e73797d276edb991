//! The core's configuration: every key has a default, a doc line, and one
//! place where it is read (flag, then environment, then `.env`).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// A value that must never be printed or logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

/// Settings of the core (`openclaw-gateway serve`, and the core half of `dev`).
#[derive(Debug, Clone, Args)]
pub struct CoreConfig {
    #[command(flatten)]
    pub cron: crate::cron::CronSettings,

    #[command(flatten)]
    pub stream_caps: crate::limits::StreamCaps,

    /// When the storage-pressure policy refuses growth (docs/storage-pressure.md).
    #[command(flatten)]
    pub storage: crate::store::pressure::StorageSettings,

    /// Address of the gRPC server.
    #[arg(long, env = "OPENCLAW_GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,

    /// PEM certificate chain (leaf first) for TLS on the gRPC address; with --grpc-tls-key.
    /// Absent: plaintext gRPC (for a private network or a service mesh that encrypts).
    #[arg(long, env = "OPENCLAW_GRPC_TLS_CERT")]
    pub grpc_tls_cert: Option<PathBuf>,

    /// PEM private key of --grpc-tls-cert.
    #[arg(long, env = "OPENCLAW_GRPC_TLS_KEY")]
    pub grpc_tls_key: Option<PathBuf>,

    /// PEM file of the CA whose client certificates the gRPC server requires (mutual TLS):
    /// clients without a certificate it signed are refused. Needs --grpc-tls-cert.
    #[arg(long, env = "OPENCLAW_GRPC_CLIENT_CA")]
    pub grpc_client_ca: Option<PathBuf>,

    /// Redis URL for shared state: one node (redis://host:port/db, rediss:// for TLS). Absent,
    /// with no cluster nodes and no Sentinels: the embedded store.
    #[arg(long, env = "OPENCLAW_REDIS_URL")]
    pub redis_url: Option<String>,

    /// Seed nodes of a Redis Cluster for shared state, comma-separated (host:port, or
    /// redis[s]://host:port); the rest of the cluster is discovered from them.
    #[arg(long, env = "OPENCLAW_REDIS_CLUSTER_NODES", value_delimiter = ',')]
    pub redis_cluster_nodes: Vec<String>,

    /// Redis Sentinels that name the primary holding shared state, comma-separated (host:port,
    /// or redis[s]://host:port); needs --redis-sentinel-master.
    #[arg(long, env = "OPENCLAW_REDIS_SENTINELS", value_delimiter = ',')]
    pub redis_sentinels: Vec<String>,

    /// The name the Sentinels monitor the primary under (`sentinel monitor <name> …`).
    #[arg(long, env = "OPENCLAW_REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,

    /// ACL user for every Redis data node: the one node, each cluster node, or the primary and
    /// replicas Sentinels name (instead of URL userinfo). Sentinels take
    /// --redis-sentinel-username.
    #[arg(long, env = "OPENCLAW_REDIS_USERNAME")]
    pub redis_username: Option<String>,

    /// Password for every Redis data node, as --redis-username (instead of URL userinfo).
    /// Sentinels take --redis-sentinel-password.
    #[arg(long, env = "OPENCLAW_REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<Secret>,

    /// Replicas that must confirm a key's creation or change (a revocation, new limits) before
    /// it is acknowledged (Redis `WAIT`), so a failover right after cannot undo it; 0: none.
    #[arg(long, env = "OPENCLAW_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    pub redis_wait_replicas: u32,

    /// ACL user of the Sentinels themselves, when they require one; absent: the user in the
    /// Sentinels' redis://user:password@host:port addresses, or none.
    #[arg(long, env = "OPENCLAW_REDIS_SENTINEL_USERNAME")]
    pub redis_sentinel_username: Option<String>,

    /// Password of the Sentinels themselves (`requirepass` in sentinel.conf), which is often
    /// none even when the data nodes have one; absent: the password in the Sentinels'
    /// addresses, or none.
    #[arg(long, env = "OPENCLAW_REDIS_SENTINEL_PASSWORD", hide_env_values = true)]
    pub redis_sentinel_password: Option<Secret>,

    /// PEM file of the CA that signed the Redis servers' certificates (rediss:// addresses);
    /// absent: the system's roots. Server names are always checked.
    #[arg(long, env = "OPENCLAW_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// PEM client certificate for Redis servers that require mutual TLS; with
    /// --redis-client-key.
    #[arg(long, env = "OPENCLAW_REDIS_CLIENT_CERT")]
    pub redis_client_cert: Option<PathBuf>,

    /// PEM private key of --redis-client-cert.
    #[arg(long, env = "OPENCLAW_REDIS_CLIENT_KEY")]
    pub redis_client_key: Option<PathBuf>,

    /// Bound on any one Redis command, in milliseconds; a dead Redis fails requests this fast.
    #[arg(long, env = "OPENCLAW_REDIS_TIMEOUT_MS", default_value_t = 1000)]
    pub redis_timeout_ms: u64,

    /// Folder of the embedded store's database file (used without --redis-url).
    #[arg(long, env = "OPENCLAW_DATA_DIR", default_value = ".openclaw")]
    pub data_dir: PathBuf,

    /// The private token for service-to-service calls and key administration.
    #[arg(long, env = "OPENCLAW_INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: Option<Secret>,

    /// Z.ai API key. Absent: the zai models are answered by the offline simulator.
    #[arg(long, env = "ZAI_API_KEY", hide_env_values = true)]
    pub zai_api_key: Option<Secret>,

    /// Z.ai's OpenAI-compatible API base URL.
    #[arg(
        long,
        env = "ZAI_BASE_URL",
        default_value = "https://api.z.ai/api/paas/v4"
    )]
    pub zai_base_url: String,

    /// Bound on connecting to a model provider, in milliseconds.
    #[arg(
        long,
        env = "OPENCLAW_PROVIDER_CONNECT_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub provider_connect_timeout_ms: u64,

    /// Bound on a whole model call, in milliseconds.
    #[arg(long, env = "OPENCLAW_PROVIDER_TIMEOUT_MS", default_value_t = 120_000)]
    pub provider_timeout_ms: u64,

    /// Default requests per minute for keys without their own limit.
    #[arg(
        long,
        env = "OPENCLAW_DEFAULT_REQUESTS_PER_MINUTE",
        default_value_t = 60
    )]
    pub default_requests_per_minute: u64,

    /// Default tokens (prompt + completion) per minute for keys without their own limit.
    #[arg(
        long,
        env = "OPENCLAW_DEFAULT_TOKENS_PER_MINUTE",
        default_value_t = 1_000_000
    )]
    pub default_tokens_per_minute: u64,

    /// Default context (prompt) tokens per minute for keys without their own limit.
    #[arg(
        long,
        env = "OPENCLAW_DEFAULT_CONTEXT_TOKENS_PER_MINUTE",
        default_value_t = 200_000
    )]
    pub default_context_tokens_per_minute: u64,

    /// Default quota: sessions a key keeps at once (`maxSessions`).
    #[arg(long, env = "OPENCLAW_DEFAULT_MAX_SESSIONS", default_value_t = 1_000)]
    pub default_max_sessions: u64,

    /// Default quota: messages one session holds (`maxMessagesPerSession`).
    #[arg(
        long,
        env = "OPENCLAW_DEFAULT_MAX_MESSAGES_PER_SESSION",
        default_value_t = 10_000
    )]
    pub default_max_messages_per_session: u64,

    /// Default quota: bytes of message content one session holds (`maxSessionBytes`, 16 MiB).
    #[arg(
        long,
        env = "OPENCLAW_DEFAULT_MAX_SESSION_BYTES",
        default_value_t = 16 * 1024 * 1024
    )]
    pub default_max_session_bytes: u64,

    /// Default quota: bytes of content one message may carry (`maxMessageBytes`, 1 MiB).
    #[arg(
        long,
        env = "OPENCLAW_DEFAULT_MAX_MESSAGE_BYTES",
        default_value_t = 1024 * 1024
    )]
    pub default_max_message_bytes: u64,

    /// Default quota: cron jobs a key owns at once (`maxCronJobs`).
    #[arg(long, env = "OPENCLAW_DEFAULT_MAX_CRON_JOBS", default_value_t = 100)]
    pub default_max_cron_jobs: u64,

    /// Default seconds a session is kept after its last turn (`sessionIdleTtlSeconds`, 30 days);
    /// `0` keeps sessions until they are deleted.
    #[arg(
        long,
        env = "OPENCLAW_DEFAULT_SESSION_IDLE_TTL_SECONDS",
        default_value_t = 30 * 24 * 3600
    )]
    pub default_session_idle_ttl_seconds: u64,

    /// Days the usage ledger keeps each day's figures (docs/usage.md).
    #[arg(long, env = "OPENCLAW_USAGE_RETENTION_DAYS", default_value_t = 400,
        value_parser = clap::value_parser!(u64).range(1..=36500))]
    pub usage_retention_days: u64,

    /// Shifts the clock that budget periods and the usage ledger's days are read by, in
    /// seconds (0 in production; tests cross a period boundary with it).
    #[arg(
        long,
        env = "OPENCLAW_SPEND_CLOCK_OFFSET_SECONDS",
        default_value_t = 0,
        allow_negative_numbers = true,
        hide = true
    )]
    pub spend_clock_offset_seconds: i64,

    /// A spend budget for every key's model calls together, in micro-dollars per period
    /// (docs/budgets.md); unset: none (and no cost per request). Calls past it get
    /// BUDGET_EXCEEDED (402) with `scope: "gateway"`.
    #[arg(long, env = "OPENCLAW_GATEWAY_BUDGET_MICROS",
        value_parser = clap::value_parser!(u64).range(0..=crate::spend::MAX_BUDGET_MICROS))]
    pub gateway_budget_micros: Option<u64>,

    /// The gateway budget's period: "day", "week" or "month".
    #[arg(long, env = "OPENCLAW_GATEWAY_BUDGET_PERIOD", default_value = "month",
        value_parser = ["day", "week", "month"])]
    pub gateway_budget_period: String,

    /// The IANA time zone the gateway budget's periods start in.
    #[arg(long, env = "OPENCLAW_GATEWAY_BUDGET_TIME_ZONE", default_value = "UTC")]
    pub gateway_budget_time_zone: String,

    /// Fractions of the gateway budget (comma-separated, e.g. "0.5,0.8") that each publish one
    /// `budget.threshold` event per period, seen by the internal token; none by default.
    #[arg(
        long,
        env = "OPENCLAW_GATEWAY_BUDGET_THRESHOLDS",
        value_delimiter = ','
    )]
    pub gateway_budget_thresholds: Vec<f64>,

    /// How often each replica drops expired sessions (the embedded store's rows, Redis's
    /// index entries naming them), in seconds; `0` turns the sweep off. Reads never show an
    /// expired session either way.
    #[arg(
        long,
        env = "OPENCLAW_SESSION_SWEEP_INTERVAL_SECS",
        default_value_t = 60
    )]
    pub session_sweep_interval_secs: u64,

    /// Completion tokens reserved against the token limit, and asked of the
    /// model as max_tokens, when a request names no maxTokens.
    #[arg(long, env = "OPENCLAW_DEFAULT_MAX_TOKENS", default_value_t = 4096)]
    pub default_max_tokens: u32,

    /// When Redis is unreachable: `closed` refuses requests with UNAVAILABLE;
    /// `open` admits through a limiter in each replica's memory, at 1/N of each limit.
    #[arg(
        long,
        env = "OPENCLAW_RATE_LIMIT_REDIS_DOWN",
        value_enum,
        default_value = "closed"
    )]
    pub rate_limit_redis_down: crate::limits::RedisDownPolicy,

    /// N for the fail-open share: how many core replicas run (each admits 1/N of a limit).
    #[arg(long, env = "OPENCLAW_CORE_REPLICAS", default_value_t = 1)]
    pub core_replicas: u64,

    /// This replica's name in status and logs (defaults to the host name).
    #[arg(long, env = "OPENCLAW_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// `production` refuses unsafe settings (simulated models, no internal token,
    /// the embedded store with more than one replica) and logs JSON.
    #[arg(
        long,
        env = "OPENCLAW_PROFILE",
        value_enum,
        default_value = "development"
    )]
    pub profile: openclaw_runtime::Profile,

    /// Address of the Prometheus metrics and probe endpoints (/metrics, /livez, /readyz).
    #[arg(long, env = "OPENCLAW_METRICS_ADDR", default_value = "0.0.0.0:9464")]
    pub metrics_addr: SocketAddr,

    /// On SIGTERM, how long calls in flight (and cron runs) may take to finish before exit.
    #[arg(long, env = "OPENCLAW_DRAIN_TIMEOUT_MS", default_value_t = 30_000)]
    pub drain_timeout_ms: u64,

    /// `text` or `json` log lines (production defaults to json).
    #[arg(long, env = "OPENCLAW_LOG_FORMAT")]
    pub log_format: Option<String>,

    /// TOML file declaring the model providers, their models, fallbacks, timeouts,
    /// retries and circuit breakers (docs/providers.md). Absent: the built-in zai provider.
    #[arg(long, env = "OPENCLAW_PROVIDERS_FILE")]
    pub providers_file: Option<PathBuf>,

    /// How long a send's result is kept for replay to a client repeating its X-Request-ID, in seconds.
    #[arg(
        long,
        env = "OPENCLAW_IDEMPOTENCY_RETENTION_SECS",
        default_value_t = 86_400
    )]
    pub idempotency_retention_secs: u64,
}

impl CoreConfig {
    /// JSON log lines: asked for, or implied by the production profile.
    pub fn json_logs(&self) -> bool {
        self.log_format
            .as_deref()
            .map_or(self.profile == openclaw_runtime::Profile::Production, |f| {
                f == "json"
            })
    }

    /// The production profile's refusals, each naming what to change.
    pub fn check_production(&self, simulated_models: bool) -> anyhow::Result<()> {
        if self.profile != openclaw_runtime::Profile::Production {
            return Ok(());
        }
        let mut problems = Vec::new();
        if self.internal_token.is_none() {
            problems.push("no internal token: set OPENCLAW_INTERNAL_TOKEN (a long random secret)");
        }
        if simulated_models {
            problems.push(
                "models would be answered by the offline simulator: set ZAI_API_KEY or declare providers in OPENCLAW_PROVIDERS_FILE",
            );
        }
        if !self.uses_redis() && self.core_replicas > 1 {
            problems.push(
                "the embedded store serves one process, but OPENCLAW_CORE_REPLICAS > 1: set OPENCLAW_REDIS_URL",
            );
        }
        anyhow::ensure!(
            problems.is_empty(),
            "refusing to start with OPENCLAW_PROFILE=production:\n  - {}",
            problems.join("\n  - ")
        );
        Ok(())
    }

    /// The gateway-wide budget, if one is configured; an invalid time zone or threshold is
    /// an error naming its variable.
    pub fn gateway_budget(&self) -> anyhow::Result<Option<crate::spend::KeyBudget>> {
        let Some(limit_micros) = self.gateway_budget_micros else {
            return Ok(None);
        };
        crate::spend::parse_budget(&crate::proto::Budget {
            limit_micros,
            period: self.gateway_budget_period.clone(),
            time_zone: self.gateway_budget_time_zone.clone(),
            thresholds: self.gateway_budget_thresholds.clone(),
        })
        .map(Some)
        .map_err(|err| {
            let field = err.field.as_deref().unwrap_or_default();
            let variable = if field.starts_with("budget.period") {
                "OPENCLAW_GATEWAY_BUDGET_PERIOD"
            } else if field.starts_with("budget.timeZone") {
                "OPENCLAW_GATEWAY_BUDGET_TIME_ZONE"
            } else if field.starts_with("budget.thresholds") {
                "OPENCLAW_GATEWAY_BUDGET_THRESHOLDS"
            } else {
                "OPENCLAW_GATEWAY_BUDGET_MICROS"
            };
            anyhow::anyhow!("{variable} is invalid: {}", err.details)
        })
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }

    /// Whether state is shared through Redis (any topology) rather than the embedded store.
    pub fn uses_redis(&self) -> bool {
        self.redis_url.is_some()
            || !self.redis_cluster_nodes.is_empty()
            || !self.redis_sentinels.is_empty()
    }

    /// How to reach Redis, or `None` for the embedded store; a contradictory or incomplete
    /// setting is an error naming it.
    pub fn redis(&self) -> anyhow::Result<Option<crate::store::RedisConfig>> {
        use crate::store::{RedisConfig, RedisTlsFiles, RedisTopology};
        let cluster = !self.redis_cluster_nodes.is_empty();
        let sentinel = !self.redis_sentinels.is_empty();
        let chosen = [self.redis_url.is_some(), cluster, sentinel]
            .iter()
            .filter(|set| **set)
            .count();
        anyhow::ensure!(
            chosen <= 1,
            "set one of OPENCLAW_REDIS_URL (one node), OPENCLAW_REDIS_CLUSTER_NODES (a Redis \
             Cluster) or OPENCLAW_REDIS_SENTINELS (a Sentinel-managed primary), not several"
        );
        anyhow::ensure!(
            sentinel
                || (self.redis_sentinel_username.is_none()
                    && self.redis_sentinel_password.is_none()),
            "OPENCLAW_REDIS_SENTINEL_USERNAME or OPENCLAW_REDIS_SENTINEL_PASSWORD is set without \
             OPENCLAW_REDIS_SENTINELS: they are the Sentinels' own credentials; the data nodes \
             take OPENCLAW_REDIS_USERNAME and OPENCLAW_REDIS_PASSWORD"
        );
        anyhow::ensure!(
            sentinel || self.redis_sentinel_master.is_none(),
            "OPENCLAW_REDIS_SENTINEL_MASTER is set without OPENCLAW_REDIS_SENTINELS: list the \
             Sentinels (host:port,…) that monitor it"
        );
        let topology = if let Some(url) = &self.redis_url {
            RedisTopology::Standalone { url: url.clone() }
        } else if cluster {
            RedisTopology::Cluster {
                seeds: self.redis_cluster_nodes.clone(),
            }
        } else if sentinel {
            let master = self.redis_sentinel_master.clone().ok_or_else(|| {
                anyhow::anyhow!(
                    "OPENCLAW_REDIS_SENTINELS is set without OPENCLAW_REDIS_SENTINEL_MASTER: name \
                     the primary as the Sentinels monitor it (`sentinel monitor <name> …`)"
                )
            })?;
            RedisTopology::Sentinel {
                sentinels: self.redis_sentinels.clone(),
                master,
                username: self.redis_sentinel_username.clone(),
                password: self
                    .redis_sentinel_password
                    .as_ref()
                    .map(|p| p.expose().to_string()),
            }
        } else {
            anyhow::ensure!(
                self.redis_ca_file.is_none()
                    && self.redis_client_cert.is_none()
                    && self.redis_username.is_none()
                    && self.redis_password.is_none(),
                "Redis credentials or TLS files are set, but no Redis is: set OPENCLAW_REDIS_URL, \
                 OPENCLAW_REDIS_CLUSTER_NODES or OPENCLAW_REDIS_SENTINELS"
            );
            return Ok(None);
        };
        let client = match (&self.redis_client_cert, &self.redis_client_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => anyhow::bail!(
                "set both OPENCLAW_REDIS_CLIENT_CERT and OPENCLAW_REDIS_CLIENT_KEY for mutual TLS \
                 with Redis, or neither"
            ),
        };
        Ok(Some(RedisConfig {
            topology,
            username: self.redis_username.clone(),
            password: self.redis_password.as_ref().map(|p| p.expose().to_string()),
            tls: RedisTlsFiles {
                ca: self.redis_ca_file.clone(),
                client,
            },
            connect_timeout: self.redis_timeout(),
            response_timeout: self.redis_timeout(),
            wait_replicas: self.redis_wait_replicas,
        }))
    }

    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms.max(1))
    }

    pub fn provider_timeout(&self) -> Duration {
        Duration::from_millis(self.provider_timeout_ms.max(1))
    }

    pub fn provider_connect_timeout(&self) -> Duration {
        Duration::from_millis(self.provider_connect_timeout_ms.max(1))
    }

    pub fn replica(&self) -> String {
        self.replica_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("core-{}", std::process::id()))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: CoreConfig,
    }

    fn redis(args: &[&str]) -> anyhow::Result<Option<crate::store::RedisConfig>> {
        let mut all = vec!["openclaw-gateway"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)?.config.redis()
    }

    #[test]
    fn one_redis_topology_is_chosen_and_contradictions_are_named() {
        assert!(redis(&[]).unwrap().is_none(), "embedded");
        let cluster = redis(&["--redis-cluster-nodes", "a:1,b:2"])
            .unwrap()
            .unwrap();
        assert_eq!(cluster.mode(), "cluster");
        let sentinel = redis(&[
            "--redis-sentinels",
            "s:26379",
            "--redis-sentinel-master",
            "main",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(sentinel.mode(), "sentinel");
        for (args, named) in [
            (
                &["--redis-url", "redis://a", "--redis-cluster-nodes", "b:1"][..],
                "not several",
            ),
            (
                &["--redis-sentinels", "s:26379"][..],
                "OPENCLAW_REDIS_SENTINEL_MASTER",
            ),
            (
                &["--redis-sentinel-master", "main"][..],
                "OPENCLAW_REDIS_SENTINELS",
            ),
            (&["--redis-ca-file", "/ca.pem"][..], "no Redis is"),
            (
                &["--redis-url", "rediss://a", "--redis-client-cert", "/c.pem"][..],
                "OPENCLAW_REDIS_CLIENT_KEY",
            ),
        ] {
            let error = redis(args).unwrap_err().to_string();
            assert!(error.contains(named), "{args:?}: {error}");
        }
    }
}

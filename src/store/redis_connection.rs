//! How the core reaches Redis, whatever the topology: one standalone node (`--redis-url`), a
//! Redis Cluster (`--redis-cluster-nodes`), or a primary managed by Sentinels
//! (`--redis-sentinels` with `--redis-sentinel-master`), each in plain TCP or TLS (`rediss://`,
//! with an optional CA file and client certificate).
//!
//! Every Redis-backed part of the core (store, limiter, cron, events, dashboard sessions and
//! traffic) talks through one [`SharedConnection`]: the same commands and scripts in every
//! topology, no second implementation per mode. What differs is only how a command finds its
//! node:
//! - **standalone**: one multiplexed connection that reconnects by itself;
//! - **cluster**: redis-rs's cluster client, which learns the slot map from the seed nodes and
//!   follows `MOVED`/`ASK`. Every script and pipeline the core sends touches keys of one hash
//!   slot (see the key layouts in `store/redis.rs`, `limits/redis.rs`, `cron/store/redis.rs`);
//! - **sentinel**: the primary's address is asked of the Sentinels; a connection error, a
//!   timeout or a `READONLY` answer (the node was demoted) makes the next command ask again, so
//!   a failover is followed without a restart.
//!
//! Whatever the topology, one command (with the cluster client's retries) is bounded by the
//! Redis timeout: a node that does not answer fails the request with UNAVAILABLE, never hangs it.
//! Every socket has TCP_NODELAY.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisError, RedisFuture,
    RedisResult, TlsCertificates, Value,
};

/// Where Redis is, as configured.
#[derive(Debug, Clone)]
pub enum Topology {
    /// One node: `redis://[user:password@]host:port[/db]` or `rediss://…`.
    Standalone { url: String },
    /// Seed nodes of a Redis Cluster (`host:port` or `redis[s]://…`); the rest is discovered.
    Cluster { seeds: Vec<String> },
    /// The Sentinels (`host:port` or `redis[s]://…`) and the name of the primary they watch.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

/// PEM files for TLS to Redis; used only when an address says `rediss://`.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// The CA that signed the servers' certificates (absent: the system's roots).
    pub ca: Option<std::path::PathBuf>,
    /// A client certificate and its key, for servers that require mutual TLS.
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub topology: Topology,
    /// User and password for every node (and Sentinel), beside or instead of URL userinfo.
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: TlsFiles,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Bound on any single command's answer (retries included).
    pub response_timeout: Duration,
}

impl RedisConfig {
    /// A standalone node at `url` with these timeouts, nothing else set.
    pub fn standalone(url: impl Into<String>, timeout: Duration) -> Self {
        Self {
            topology: Topology::Standalone { url: url.into() },
            username: None,
            password: None,
            tls: TlsFiles::default(),
            connect_timeout: timeout,
            response_timeout: timeout,
        }
    }

    /// The topology's name, for status and logs.
    pub fn mode(&self) -> &'static str {
        match self.topology {
            Topology::Standalone { .. } => "standalone",
            Topology::Cluster { .. } => "cluster",
            Topology::Sentinel { .. } => "sentinel",
        }
    }

    fn addresses(&self) -> Vec<&str> {
        match &self.topology {
            Topology::Standalone { url } => vec![url.as_str()],
            Topology::Cluster { seeds } => seeds.iter().map(String::as_str).collect(),
            Topology::Sentinel { sentinels, .. } => sentinels.iter().map(String::as_str).collect(),
        }
    }

    /// Whether the connections use TLS: an address written `rediss://`.
    pub fn uses_tls(&self) -> bool {
        self.addresses()
            .iter()
            .any(|address| address.starts_with("rediss://"))
    }

    /// The address settings as the client reads them, with TCP_NODELAY and the configured
    /// credentials. `host:port` is read as `redis://host:port`.
    fn connection_info(&self, address: &str) -> RedisResult<ConnectionInfo> {
        let url = if address.contains("://") {
            address.to_string()
        } else {
            format!("redis://{address}")
        };
        let mut info = url.as_str().into_connection_info()?;
        let mut redis = info.redis_settings().clone();
        if let Some(username) = &self.username {
            redis = redis.set_username(username);
        }
        if let Some(password) = &self.password {
            redis = redis.set_password(password);
        }
        info = info
            .set_redis_settings(redis)
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));
        Ok(info)
    }

    /// The CA and client certificate, read now so a wrong path is named at start-up.
    fn certificates(&self) -> Result<Option<TlsCertificates>, ConfigError> {
        if !self.uses_tls() {
            if self.tls.ca.is_some() || self.tls.client.is_some() {
                return Err(ConfigError(
                    "OPENCLAW_REDIS_CA_FILE or OPENCLAW_REDIS_CLIENT_CERT is set, but no Redis \
                     address uses TLS: write it as rediss://host:port"
                        .into(),
                ));
            }
            return Ok(None);
        }
        let read = |path: &std::path::Path, setting: &str| {
            std::fs::read(path)
                .map_err(|e| ConfigError(format!("{setting}: cannot read {}: {e}", path.display())))
        };
        let root_cert = match &self.tls.ca {
            Some(ca) => Some(read(ca, "OPENCLAW_REDIS_CA_FILE")?),
            None => None,
        };
        let client_tls = match &self.tls.client {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert, "OPENCLAW_REDIS_CLIENT_CERT")?,
                client_key: read(key, "OPENCLAW_REDIS_CLIENT_KEY")?,
            }),
            None => None,
        };
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

/// A configuration that cannot work, named in words an operator can act on.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl From<RedisError> for ConfigError {
    fn from(error: RedisError) -> Self {
        Self(format!("invalid Redis address: {error}"))
    }
}

/// The connection every Redis-backed part of the core shares: cheap to clone, multiplexed,
/// healing itself after failures.
#[derive(Clone)]
pub struct SharedConnection {
    inner: Link,
    /// Bound on one command or pipeline, retries included.
    timeout: Duration,
}

#[derive(Clone)]
enum Link {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelLink>),
}

impl SharedConnection {
    /// Prepares the shared connection. Standalone and Sentinel connect lazily (the core starts,
    /// and reports Redis as down, while Redis is away); a cluster needs one seed to answer
    /// before its slot map is known, so it is tried now and then on first use.
    pub async fn open(config: &RedisConfig) -> Result<Self, ConfigError> {
        Self::open_with(config, config.response_timeout).await
    }

    /// A connection of its own for a caller that blocks on it (the event pump's `XREAD
    /// BLOCK`), with a longer bound on each answer.
    pub async fn dedicated(
        config: &RedisConfig,
        response_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        Self::open_with(config, response_timeout).await
    }

    async fn open_with(config: &RedisConfig, timeout: Duration) -> Result<Self, ConfigError> {
        let certificates = config.certificates()?;
        if certificates.is_some() {
            openclaw_runtime::tls::install_crypto_provider();
        }
        let inner = match &config.topology {
            Topology::Standalone { url } => {
                let info = config.connection_info(url)?;
                let client = match certificates {
                    Some(certs) => redis::Client::build_with_tls(info, certs)?,
                    None => redis::Client::open(info)?,
                };
                let manager = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.connect_timeout))
                    .set_response_timeout(Some(timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                Link::Standalone(ConnectionManager::new_lazy_with_config(client, manager)?)
            }
            Topology::Cluster { seeds } => {
                let infos = seeds
                    .iter()
                    .map(|seed| config.connection_info(seed))
                    .collect::<RedisResult<Vec<_>>>()?;
                let mut builder = ClusterClientBuilder::new(infos)
                    .connection_timeout(config.connect_timeout)
                    .response_timeout(timeout)
                    // A failover takes the cluster a node timeout or two: retried within the
                    // bound below, then the request fails with UNAVAILABLE.
                    .retries(3)
                    .min_retry_wait(50)
                    .max_retry_wait(500);
                if let Some(username) = &config.username {
                    builder = builder.username(username);
                }
                if let Some(password) = &config.password {
                    builder = builder.password(password);
                }
                if let Some(certs) = certificates {
                    builder = builder.certs(certs);
                }
                let client = builder.build()?;
                let connection = tokio::time::timeout(
                    config.connect_timeout.max(Duration::from_secs(1)) * 2,
                    client.get_async_connection(),
                )
                .await
                .map_err(|_| {
                    ConfigError(format!(
                        "no Redis Cluster seed node answered within {:?}: check \
                         OPENCLAW_REDIS_CLUSTER_NODES ({})",
                        config.connect_timeout * 2,
                        openclaw_runtime::redact::urls(seeds).join(",")
                    ))
                })?
                .map_err(|e| {
                    ConfigError(format!(
                        "cannot reach the Redis Cluster through OPENCLAW_REDIS_CLUSTER_NODES ({}): \
                         {}",
                        openclaw_runtime::redact::urls(seeds).join(","),
                        e
                    ))
                })?;
                Link::Cluster(connection)
            }
            Topology::Sentinel { sentinels, master } => {
                let addresses = sentinels
                    .iter()
                    .map(|sentinel| {
                        config
                            .connection_info(sentinel)
                            .map(|info| info.addr().clone())
                    })
                    .collect::<RedisResult<Vec<ConnectionAddr>>>()?;
                let mut builder = SentinelClientBuilder::new(
                    addresses,
                    master.clone(),
                    SentinelServerType::Master,
                )?
                .set_client_to_redis_tcp_settings(TcpSettings::default().set_nodelay(true))
                .set_client_to_sentinel_tcp_settings(TcpSettings::default().set_nodelay(true));
                if let Some(username) = &config.username {
                    builder = builder
                        .set_client_to_redis_username(username)
                        .set_client_to_sentinel_username(username);
                }
                if let Some(password) = &config.password {
                    builder = builder
                        .set_client_to_redis_password(password)
                        .set_client_to_sentinel_password(password);
                }
                if let Some(certs) = certificates {
                    builder = builder
                        .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                        .set_client_to_redis_certificates(certs.clone())
                        .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure)
                        .set_client_to_sentinel_certificates(certs);
                }
                Link::Sentinel(Arc::new(SentinelLink {
                    client: tokio::sync::Mutex::new(builder.build()?),
                    current: Mutex::new(None),
                    connect_timeout: config.connect_timeout,
                    response_timeout: timeout,
                }))
            }
        };
        Ok(Self { inner, timeout })
    }
}

/// The primary the Sentinels named last, and how to ask them again.
struct SentinelLink {
    client: tokio::sync::Mutex<SentinelClient>,
    /// The connection to the primary, with a generation so a failed command drops only the
    /// connection it failed on.
    current: Mutex<Option<(u64, ConnectionManager)>>,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl SentinelLink {
    /// The connection to the current primary, asking the Sentinels when there is none.
    async fn connection(&self) -> RedisResult<(u64, ConnectionManager)> {
        if let Some(current) = self.current() {
            return Ok(current);
        }
        // One question to the Sentinels at a time; whoever waited finds the answer.
        let mut client = self.client.lock().await;
        if let Some(current) = self.current() {
            return Ok(current);
        }
        let primary = client.async_get_client().await?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout))
            .set_number_of_retries(0);
        let connection = ConnectionManager::new_with_config(primary, manager).await?;
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let generation = current.as_ref().map_or(0, |(g, _)| g + 1);
        *current = Some((generation, connection.clone()));
        tracing::info!("connected to the Redis primary the Sentinels name");
        Ok((generation, connection))
    }

    fn current(&self) -> Option<(u64, ConnectionManager)> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// After `error` on the connection of `generation`: when it means the primary may have
    /// moved, the next command asks the Sentinels again.
    fn failed(&self, generation: u64, error: &RedisError) {
        let moved = error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_io_error()
            || error.is_timeout()
            || error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
        if !moved {
            return;
        }
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            tracing::warn!(%error, "the Redis primary failed; asking the Sentinels again");
            // Keep counting generations past the dropped one.
            *current = None;
        }
    }
}

fn timed_out(bound: Duration) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("Redis did not answer within {bound:?}"),
    ))
}

impl ConnectionLike for SharedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let bound = self.timeout;
        Box::pin(async move {
            match &mut self.inner {
                Link::Standalone(connection) => connection.req_packed_command(cmd).await,
                Link::Cluster(connection) => {
                    tokio::time::timeout(bound, connection.req_packed_command(cmd))
                        .await
                        .unwrap_or_else(|_| Err(timed_out(bound)))
                }
                Link::Sentinel(link) => {
                    let asked = async {
                        let (generation, mut connection) = link.connection().await?;
                        let answer = connection.req_packed_command(cmd).await;
                        if let Err(error) = &answer {
                            link.failed(generation, error);
                        }
                        answer
                    };
                    tokio::time::timeout(bound + link.connect_timeout, asked)
                        .await
                        .unwrap_or_else(|_| Err(timed_out(bound)))
                }
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let bound = self.timeout;
        Box::pin(async move {
            match &mut self.inner {
                Link::Standalone(connection) => {
                    connection
                        .req_packed_commands(pipeline, offset, count)
                        .await
                }
                Link::Cluster(connection) => tokio::time::timeout(
                    bound,
                    connection.req_packed_commands(pipeline, offset, count),
                )
                .await
                .unwrap_or_else(|_| Err(timed_out(bound))),
                Link::Sentinel(link) => {
                    let asked = async {
                        let (generation, mut connection) = link.connection().await?;
                        let answer = connection
                            .req_packed_commands(pipeline, offset, count)
                            .await;
                        if let Err(error) = &answer {
                            link.failed(generation, error);
                        }
                        answer
                    };
                    tokio::time::timeout(bound + link.connect_timeout, asked)
                        .await
                        .unwrap_or_else(|_| Err(timed_out(bound)))
                }
            }
        })
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Link::Standalone(connection) => connection.get_db(),
            Link::Cluster(connection) => connection.get_db(),
            Link::Sentinel(_) => 0,
        }
    }
}

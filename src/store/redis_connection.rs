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
#[derive(Clone)]
pub enum Topology {
    /// One node: `redis://[user:password@]host:port[/db]` or `rediss://…`.
    Standalone { url: String },
    /// Seed nodes of a Redis Cluster (`host:port` or `redis[s]://…`); the rest is discovered.
    Cluster { seeds: Vec<String> },
    /// The Sentinels (`host:port` or `redis[s]://…`) and the name of the primary they watch.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        /// The Sentinels' own credentials, when they require any: Sentinels are protected
        /// apart from the data nodes (often not at all while the data nodes are). Absent: the
        /// userinfo of their addresses, or none.
        username: Option<String>,
        password: Option<String>,
    },
}

/// Addresses without their credentials, and no password: fit for logs.
impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Topology::Standalone { url } => f
                .debug_struct("Standalone")
                .field("url", &openclaw_runtime::redact::url(url))
                .finish(),
            Topology::Cluster { seeds } => f
                .debug_struct("Cluster")
                .field("seeds", &openclaw_runtime::redact::urls(seeds))
                .finish(),
            Topology::Sentinel {
                sentinels,
                master,
                username,
                password,
            } => f
                .debug_struct("Sentinel")
                .field("sentinels", &openclaw_runtime::redact::urls(sentinels))
                .field("master", master)
                .field("username", username)
                .field("password", &password.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
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
#[derive(Clone)]
pub struct RedisConfig {
    pub topology: Topology,
    /// User and password for every data node (not the Sentinels, see [`Topology::Sentinel`]),
    /// beside or instead of URL userinfo.
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: TlsFiles,
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Bound on any single command's answer (retries included).
    pub response_timeout: Duration,
    /// Replicas that must confirm a key's creation or change (revocation included) before it is
    /// acknowledged (`WAIT`); 0: none.
    pub wait_replicas: u32,
}

/// Without the password: fit for logs.
impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("topology", &self.topology)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
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
            wait_replicas: 0,
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

    /// The setting holding the addresses a connection is made to; in Sentinel mode, the
    /// data nodes' addresses are the ones the Sentinels announce.
    fn address_setting(&self) -> &'static str {
        match self.topology {
            Topology::Standalone { .. } => "OPENCLAW_REDIS_URL",
            Topology::Cluster { .. } => {
                "OPENCLAW_REDIS_CLUSTER_NODES (or the addresses the cluster announces)"
            }
            Topology::Sentinel { .. } => {
                "OPENCLAW_REDIS_SENTINELS (or the addresses the Sentinels announce for the \
                 primary and replicas)"
            }
        }
    }

    /// Whether the connections use TLS: an address written `rediss://`.
    pub fn uses_tls(&self) -> bool {
        self.addresses()
            .iter()
            .any(|address| address.starts_with("rediss://"))
    }

    /// When `error` (from a first command) is a failed TLS handshake, what an operator should
    /// do, naming the setting: a wrong CA, host name or client certificate is a configuration
    /// error to stop on, not an outage to wait out.
    pub fn tls_failure(&self, error: &str) -> Option<String> {
        if !self.uses_tls() {
            return None;
        }
        let lower = error.to_ascii_lowercase();
        let has = |words: &[&str]| words.iter().any(|word| lower.contains(word));
        if !has(&[
            "certificate",
            "handshake",
            "unknownissuer",
            "notvalidforname",
            "tls",
            "alert",
            "corrupt message",
        ]) {
            return None;
        }
        let ca = match &self.tls.ca {
            Some(ca) => format!("OPENCLAW_REDIS_CA_FILE ({})", ca.display()),
            None => "OPENCLAW_REDIS_CA_FILE (unset: the system's roots)".to_string(),
        };
        let client = match &self.tls.client {
            Some((cert, _)) => format!("OPENCLAW_REDIS_CLIENT_CERT ({})", cert.display()),
            None => "OPENCLAW_REDIS_CLIENT_CERT (unset)".to_string(),
        };
        let fix = if has(&["unknownissuer", "unknown issuer", "badsignature"]) {
            format!(
                "The Redis server's certificate is not signed by the CA in {ca}: set it to the \
                 PEM file of the CA that signed the server's certificate"
            )
        } else if has(&["notvalidforname", "not valid for name"]) {
            format!(
                "The Redis server's certificate is not issued for the host in {}: write the \
                 address with a name or IP address the certificate lists (server names are \
                 always checked), or reissue the certificate",
                self.address_setting()
            )
        } else if has(&["certificaterequired", "certificate required"]) {
            "The Redis server requires a client certificate: set OPENCLAW_REDIS_CLIENT_CERT \
             and OPENCLAW_REDIS_CLIENT_KEY to a certificate its CA (tls-ca-cert-file) signed \
             and the certificate's key"
                .to_string()
        } else if self.tls.client.is_some() && has(&["unknownca", "badcertificate", "alert"]) {
            format!(
                "The Redis server refused the client certificate {client}: use one signed by \
                 the CA the server trusts (tls-ca-cert-file), with its key in \
                 OPENCLAW_REDIS_CLIENT_KEY"
            )
        } else if has(&["corrupt message", "invalidcontenttype"]) {
            format!(
                "The server at {} does not speak TLS: write its address as \
                 redis://host:port, or point the rediss:// address at the server's tls-port",
                self.address_setting()
            )
        } else {
            format!(
                "Check that {ca} is the CA that signed the Redis server's certificate, that the \
                 address names a host the certificate was issued for, and, if the server \
                 requires client certificates, {client} and OPENCLAW_REDIS_CLIENT_KEY"
            )
        };
        Some(format!(
            "the TLS handshake with Redis failed: {error}. {fix}"
        ))
    }

    /// When `error` (from a first command) means Redis refused the credentials, what an
    /// operator should set, naming the settings: like a failed TLS handshake, a configuration
    /// error to stop on, not an outage to wait out.
    pub fn credentials_failure(&self, error: &str) -> Option<String> {
        let lower = error.to_ascii_lowercase();
        let refused = [
            "noauth",
            "wrongpass",
            "authentication",
            "invalid username-password",
        ]
        .iter()
        .any(|word| lower.contains(word));
        if !refused {
            return None;
        }
        let settings = match &self.topology {
            Topology::Sentinel { .. } => {
                "The primary and replicas take OPENCLAW_REDIS_USERNAME and \
                 OPENCLAW_REDIS_PASSWORD; the Sentinels take their own, \
                 OPENCLAW_REDIS_SENTINEL_USERNAME and OPENCLAW_REDIS_SENTINEL_PASSWORD (leave \
                 them unset for Sentinels that require none)"
            }
            _ => {
                "Check OPENCLAW_REDIS_USERNAME and OPENCLAW_REDIS_PASSWORD (or the user:password \
                 of the address); leave the user unset for a server protected by requirepass \
                 alone"
            }
        };
        Some(format!(
            "Redis refused the credentials: {error}. {settings}"
        ))
    }

    /// What stops the core at start-up when a first command fails with `error`: a failed TLS
    /// handshake, refused credentials, or a `rediss://` address of a server that answers in
    /// plain text (its handshake never completes, so the command only timed out). Anything
    /// else (Redis down) is waited out.
    pub async fn startup_failure(&self, error: &str) -> Option<String> {
        if let Some(failure) = self
            .tls_failure(error)
            .or_else(|| self.credentials_failure(error))
        {
            return Some(failure);
        }
        let plain = self.plain_text_server().await?;
        Some(format!(
            "Redis did not complete a TLS handshake ({error}): the server at {plain} answers \
             plain-text Redis, not TLS. Write its address in {} as redis://host:port, or point \
             the rediss:// address at the server's tls-port",
            self.address_setting()
        ))
    }

    /// The first `rediss://` address whose server answers a plain-text `PING` (`+PONG`, or an
    /// error asking for credentials), redacted: a TLS client waits there for a handshake that
    /// never comes.
    async fn plain_text_server(&self) -> Option<String> {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        for address in self.addresses() {
            if !address.starts_with("rediss://") {
                continue;
            }
            let Ok(info) = parse_address(address) else {
                continue;
            };
            let ConnectionAddr::TcpTls { host, port, .. } = info.addr() else {
                continue;
            };
            let probe = async {
                let mut stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                stream.write_all(b"PING\r\n").await?;
                let mut answer = [0u8; 16];
                let read = stream.read(&mut answer).await?;
                Ok::<_, std::io::Error>(answer[..read].to_vec())
            };
            if let Ok(Ok(answer)) = tokio::time::timeout(self.connect_timeout, probe).await
                && (answer.starts_with(b"+PONG") || answer.starts_with(b"-NOAUTH"))
            {
                return Some(openclaw_runtime::redact::url(address));
            }
        }
        None
    }

    /// The address settings as the client reads them, with TCP_NODELAY and the configured
    /// credentials. `host:port` is read as `redis://host:port`.
    fn connection_info(&self, address: &str) -> RedisResult<ConnectionInfo> {
        let mut info = parse_address(address)?;
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

/// `redis[s]://…` or `host:port` (read as `redis://host:port`), as written.
fn parse_address(address: &str) -> RedisResult<ConnectionInfo> {
    if address.contains("://") {
        address.into_connection_info()
    } else {
        format!("redis://{address}").as_str().into_connection_info()
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
    wait_replicas: u32,
    /// Bound on (re)connecting before a command, the TLS handshake included.
    connect_timeout: Duration,
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
                    ConfigError(config.tls_failure(&e.to_string()).or_else(|| config.credentials_failure(&e.to_string())).unwrap_or_else(|| {
                        format!(
                            "cannot reach the Redis Cluster through OPENCLAW_REDIS_CLUSTER_NODES \
                             ({}): {e}",
                            openclaw_runtime::redact::urls(seeds).join(",")
                        )
                    }))
                })?;
                Link::Cluster(connection)
            }
            Topology::Sentinel {
                sentinels,
                master,
                username: sentinel_username,
                password: sentinel_password,
            } => {
                // The data nodes' credentials are not the Sentinels': a Sentinel without a
                // password refuses an AUTH, so each side gets only its own.
                let infos = sentinels
                    .iter()
                    .map(|sentinel| parse_address(sentinel))
                    .collect::<RedisResult<Vec<ConnectionInfo>>>()?;
                let from_addresses = |part: fn(&ConnectionInfo) -> Option<&str>| {
                    infos.iter().find_map(|info| part(info).map(str::to_string))
                };
                let sentinel_username = sentinel_username
                    .clone()
                    .or_else(|| from_addresses(|info| info.redis_settings().username()));
                let sentinel_password = sentinel_password
                    .clone()
                    .or_else(|| from_addresses(|info| info.redis_settings().password()));
                let addresses: Vec<ConnectionAddr> =
                    infos.iter().map(|info| info.addr().clone()).collect();
                let mut builder = SentinelClientBuilder::new(
                    addresses,
                    master.clone(),
                    SentinelServerType::Master,
                )?
                .set_client_to_redis_tcp_settings(TcpSettings::default().set_nodelay(true))
                .set_client_to_sentinel_tcp_settings(TcpSettings::default().set_nodelay(true));
                if let Some(username) = &config.username {
                    builder = builder.set_client_to_redis_username(username);
                }
                if let Some(password) = &config.password {
                    builder = builder.set_client_to_redis_password(password);
                }
                if let Some(username) = &sentinel_username {
                    builder = builder.set_client_to_sentinel_username(username);
                }
                if let Some(password) = &sentinel_password {
                    builder = builder.set_client_to_sentinel_password(password);
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
                    address: Mutex::new(None),
                    master: master.clone(),
                    connect_timeout: config.connect_timeout,
                    response_timeout: timeout,
                }))
            }
        };
        Ok(Self {
            inner,
            timeout,
            connect_timeout: config.connect_timeout,
            wait_replicas: config.wait_replicas,
        })
    }

    /// Waits until `wait_replicas` replicas hold every write this connection made so far
    /// (`WAIT`, on every primary of a cluster), within half the Redis timeout; an error says how
    /// many confirmed. Nothing to wait for when `wait_replicas` is 0.
    pub async fn replicated(&self) -> Result<(), super::StoreError> {
        if self.wait_replicas == 0 {
            return Ok(());
        }
        let mut connection = self.clone();
        // Half the Redis timeout: the command itself is bounded by the whole of it.
        let bound = (self.timeout / 2).max(Duration::from_millis(1));
        let confirmed: i64 = redis::cmd("WAIT")
            .arg(self.wait_replicas)
            .arg(bound.as_millis() as u64)
            .query_async(&mut connection)
            .await?;
        if confirmed >= i64::from(self.wait_replicas) {
            return Ok(());
        }
        Err(super::StoreError::NotReplicated(format!(
            "The change was written, but only {confirmed} of the {} Redis replicas \
             OPENCLAW_REDIS_WAIT_REPLICAS asks for confirmed it within {bound:?}; repeat the call \
             once the replicas are back (it is safe to repeat)",
            self.wait_replicas
        )))
    }
}

/// One Redis node as the deployment sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHealth {
    /// `host:port`.
    pub address: String,
    /// `primary` or `replica`.
    pub role: String,
    pub up: bool,
    /// What is wrong, when it is not up (the cluster's flags, a lost link).
    pub detail: String,
}

impl SharedConnection {
    /// Each node of a cluster (as `CLUSTER NODES` on any node reports them) or of a
    /// Sentinel-managed group (the primary's `ROLE`, and every replica as the Sentinels see
    /// it, down ones included); empty
    /// for one standalone node, which the store's own health covers.
    pub async fn nodes(&self) -> RedisResult<Vec<NodeHealth>> {
        let mut connection = self.clone();
        match &self.inner {
            Link::Standalone(_) => Ok(Vec::new()),
            Link::Cluster(_) => {
                let listing: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query_async(&mut connection)
                    .await?;
                Ok(cluster_nodes(&listing))
            }
            Link::Sentinel(link) => {
                let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut connection).await?;
                let mut nodes = sentinel_nodes(&role, &self.primary_address());
                // The Sentinels also know the replicas that are down, which the primary no
                // longer lists; when they answer, their view of the replicas is the one shown.
                let bound = link.connect_timeout + link.response_timeout;
                if let Ok(Ok(replicas)) =
                    tokio::time::timeout(bound, link.replicas_known_to_sentinels()).await
                {
                    nodes.truncate(1);
                    nodes.extend(replicas);
                }
                Ok(nodes)
            }
        }
    }

    fn primary_address(&self) -> String {
        match &self.inner {
            Link::Sentinel(link) => link
                .address
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
                .unwrap_or_else(|| "primary".into()),
            _ => String::new(),
        }
    }
}

/// Reads `CLUSTER NODES`: `<id> <ip:port@bus> <flags> <primary> <ping> <pong> <epoch> <link>
/// <slots…>` per line.
fn cluster_nodes(listing: &str) -> Vec<NodeHealth> {
    let mut nodes: Vec<NodeHealth> = listing
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let address = fields[1].split('@').next().unwrap_or(fields[1]).to_string();
            let flags: Vec<&str> = fields[2].split(',').collect();
            let role = if flags.contains(&"master") {
                "primary"
            } else {
                "replica"
            };
            let failing = flags.iter().any(|f| *f == "fail" || *f == "fail?");
            let disconnected = fields[7] != "connected" && !flags.contains(&"myself");
            let detail = if failing {
                format!("the cluster flags it {}", fields[2])
            } else if disconnected {
                "the cluster bus link to it is down".to_string()
            } else {
                String::new()
            };
            Some(NodeHealth {
                address,
                role: role.into(),
                up: !failing && !disconnected,
                detail,
            })
        })
        .collect();
    nodes.sort_by(|a, b| a.address.cmp(&b.address));
    nodes
}

/// Reads a primary's `ROLE`: `master`, its offset, and `[ip, port, offset]` per connected
/// replica.
fn sentinel_nodes(role: &[Value], primary: &str) -> Vec<NodeHealth> {
    let text = |value: &Value| redis::from_redis_value::<String>(value.clone()).ok();
    let mut nodes = vec![NodeHealth {
        address: primary.to_string(),
        role: "primary".into(),
        up: role.first().and_then(text).as_deref() == Some("master"),
        detail: String::new(),
    }];
    if let Some(Value::Array(replicas)) = role.get(2) {
        for replica in replicas {
            if let Value::Array(fields) = replica {
                let host = fields.first().and_then(text).unwrap_or_default();
                let port = fields.get(1).and_then(text).unwrap_or_default();
                nodes.push(NodeHealth {
                    address: format!("{host}:{port}"),
                    role: "replica".into(),
                    up: true,
                    detail: String::new(),
                });
            }
        }
    }
    nodes
}

/// The primary the Sentinels named last, and how to ask them again.
struct SentinelLink {
    client: tokio::sync::Mutex<SentinelClient>,
    /// The connection to the primary, with a generation so a failed command drops only the
    /// connection it failed on.
    current: Mutex<Option<(u64, ConnectionManager)>>,
    /// The primary's address as the Sentinels named it last, for status.
    address: Mutex<Option<String>>,
    /// The name the Sentinels monitor the primary under.
    master: String,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl SentinelLink {
    /// `SENTINEL REPLICAS <master>` of the first Sentinel that answers: every replica, with
    /// the Sentinels' flags (`s_down`, `o_down`, `disconnected` mean down).
    async fn replicas_known_to_sentinels(&self) -> RedisResult<Vec<NodeHealth>> {
        let sentinel = self.client.lock().await.async_get_sentinel_client().await?;
        let mut connection = sentinel.get_multiplexed_async_connection().await?;
        let replicas: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
            .arg("REPLICAS")
            .arg(&self.master)
            .query_async(&mut connection)
            .await?;
        let mut nodes: Vec<NodeHealth> = replicas
            .iter()
            .map(|fields| {
                let field = |name: &str| fields.get(name).cloned().unwrap_or_default();
                let flags = field("flags");
                let down = flags
                    .split(',')
                    .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"));
                NodeHealth {
                    address: format!("{}:{}", field("ip"), field("port")),
                    role: "replica".into(),
                    up: !down,
                    detail: if down {
                        format!("the Sentinels flag it {flags}")
                    } else {
                        String::new()
                    },
                }
            })
            .collect();
        nodes.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(nodes)
    }

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
        let primary = match client.async_get_client().await {
            Ok(primary) => primary,
            Err(error) if refused_credentials(&error) => {
                // The client asks the Sentinels, then the primary they name: which of the two
                // refused is what the operator needs to know.
                let sentinels_accept = client.async_get_sentinel_client().await.is_ok();
                let detail = if sentinels_accept {
                    "the primary the Sentinels name refused them: set OPENCLAW_REDIS_USERNAME \
                     and OPENCLAW_REDIS_PASSWORD to the data nodes' credentials"
                } else {
                    "the Sentinels refused them: set OPENCLAW_REDIS_SENTINEL_USERNAME and \
                     OPENCLAW_REDIS_SENTINEL_PASSWORD to the Sentinels' own credentials, or \
                     leave them unset when the Sentinels require none"
                };
                return Err(RedisError::from((
                    redis::ErrorKind::AuthenticationFailed,
                    "authentication failed",
                    format!("{detail} ({error})"),
                )));
            }
            Err(error) => return Err(error),
        };
        *self.address.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(primary.get_connection_info().addr().to_string());
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

    /// Runs `command` on the current primary; a failure that means the primary may have moved
    /// makes the next command ask the Sentinels again.
    async fn on_primary<T, F, Fut>(&self, command: F) -> RedisResult<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = RedisResult<T>>,
    {
        let (generation, primary) = self.connection().await?;
        let answer = command(primary).await;
        if let Err(error) = &answer {
            self.failed(generation, error);
        }
        answer
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

/// Whether `error` is a server refusing the credentials (or asking for some).
fn refused_credentials(error: &RedisError) -> bool {
    error.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(error.code(), Some("NOAUTH" | "WRONGPASS"))
}

fn timed_out(bound: Duration) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("Redis did not answer within {bound:?}"),
    ))
}

impl SharedConnection {
    /// The most one command or pipeline may take. A cluster's client connects within its own
    /// retries; the others may have to (re)connect first, and a standalone manager's own
    /// timeouts do not cover a TLS handshake that never completes (a rediss:// address of a
    /// plain server).
    fn bound(&self) -> Duration {
        match self.inner {
            Link::Cluster(_) => self.timeout,
            Link::Standalone(_) | Link::Sentinel(_) => self.timeout + self.connect_timeout,
        }
    }
}

/// `answer`, or a timeout error once `bound` has passed.
async fn within<T>(
    bound: Duration,
    answer: impl std::future::Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    tokio::time::timeout(bound, answer)
        .await
        .unwrap_or_else(|_| Err(timed_out(bound)))
}

impl ConnectionLike for SharedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let bound = self.bound();
        Box::pin(within(bound, async move {
            match &mut self.inner {
                Link::Standalone(connection) => connection.req_packed_command(cmd).await,
                Link::Cluster(connection) => connection.req_packed_command(cmd).await,
                Link::Sentinel(link) => {
                    link.on_primary(
                        |mut primary| async move { primary.req_packed_command(cmd).await },
                    )
                    .await
                }
            }
        }))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let bound = self.bound();
        Box::pin(within(bound, async move {
            match &mut self.inner {
                Link::Standalone(connection) => {
                    connection
                        .req_packed_commands(pipeline, offset, count)
                        .await
                }
                Link::Cluster(connection) => {
                    connection
                        .req_packed_commands(pipeline, offset, count)
                        .await
                }
                Link::Sentinel(link) => {
                    link.on_primary(|mut primary| async move {
                        primary.req_packed_commands(pipeline, offset, count).await
                    })
                    .await
                }
            }
        }))
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Link::Standalone(connection) => connection.get_db(),
            Link::Cluster(connection) => connection.get_db(),
            Link::Sentinel(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_are_read_with_their_role_and_failures() {
        let listing = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@40004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@40003 master,fail - 1426238316232 1426238316232 3 disconnected 10923-16383
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
";
        let nodes = cluster_nodes(listing);
        let summary: Vec<(&str, &str, bool)> = nodes
            .iter()
            .map(|n| (n.address.as_str(), n.role.as_str(), n.up))
            .collect();
        assert_eq!(
            summary,
            [
                ("127.0.0.1:30001", "primary", true),
                ("127.0.0.1:30002", "primary", true),
                ("127.0.0.1:30003", "primary", false),
                ("127.0.0.1:30004", "replica", true),
            ]
        );
        assert!(
            nodes[2].detail.contains("master,fail"),
            "{}",
            nodes[2].detail
        );
    }

    #[test]
    fn tls_is_chosen_by_the_address_and_tls_files_need_it() {
        let plain = RedisConfig::standalone("redis://127.0.0.1:6379", Duration::from_secs(1));
        assert!(!plain.uses_tls());
        assert!(plain.certificates().unwrap().is_none());
        let with_ca = RedisConfig {
            tls: TlsFiles {
                ca: Some("/nonexistent/ca.pem".into()),
                client: None,
            },
            ..plain.clone()
        };
        let refused = with_ca.certificates().unwrap_err().0;
        assert!(refused.contains("rediss://"), "{refused}");
        let tls = RedisConfig {
            topology: Topology::Standalone {
                url: "rediss://127.0.0.1:6380".into(),
            },
            ..with_ca
        };
        assert!(tls.uses_tls());
        let unreadable = tls.certificates().unwrap_err().0;
        assert!(
            unreadable.contains("OPENCLAW_REDIS_CA_FILE") && unreadable.contains("/nonexistent"),
            "{unreadable}"
        );
        let failure = tls
            .tls_failure("invalid peer certificate: UnknownIssuer")
            .expect("a certificate failure is named");
        assert!(failure.contains("OPENCLAW_REDIS_CA_FILE"), "{failure}");
        let failure = tls
            .tls_failure("received fatal alert: CertificateRequired")
            .expect("a missing client certificate is named");
        assert!(failure.contains("OPENCLAW_REDIS_CLIENT_KEY"), "{failure}");
        assert_eq!(plain.tls_failure("connection refused"), None);
    }

    #[test]
    fn refused_credentials_name_the_settings_of_the_side_that_holds_them() {
        let plain = RedisConfig::standalone("redis://127.0.0.1:6379", Duration::from_secs(1));
        let failure = plain
            .credentials_failure("WRONGPASS invalid username-password pair")
            .expect("refused credentials are named");
        assert!(failure.contains("OPENCLAW_REDIS_PASSWORD"), "{failure}");
        let sentinel = RedisConfig {
            topology: Topology::Sentinel {
                sentinels: vec!["127.0.0.1:26379".into()],
                master: "main".into(),
                username: None,
                password: Some("sentinel-secret".into()),
            },
            password: Some("data-secret".into()),
            ..plain.clone()
        };
        let failure = sentinel
            .credentials_failure("Password authentication failed - AuthenticationFailed")
            .expect("refused credentials are named");
        assert!(
            failure.contains("OPENCLAW_REDIS_SENTINEL_PASSWORD")
                && failure.contains("OPENCLAW_REDIS_PASSWORD"),
            "{failure}"
        );
        assert_eq!(sentinel.credentials_failure("Connection refused"), None);
        let shown = format!("{sentinel:?}");
        assert!(
            !shown.contains("sentinel-secret") && !shown.contains("data-secret"),
            "{shown}"
        );
    }
}

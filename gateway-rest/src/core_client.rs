//! The edge's way to the core: HTTP/2 connections to every core replica, calls spread over
//! them ([`crate::core_pool`]), or the core's own service when both run in one process.

use std::{future::Future, time::Duration};

use axum::http::HeaderMap;
use axum::http::Uri;
use tower::util::BoxCloneSyncService;

use crate::{
    EdgeConfig,
    core_pool::{CorePool, Target},
    error::ApiError,
    headers,
    tls::CoreTlsMaterial,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The core's gRPC API as a service: connections to the core replicas, or the core's own
/// service in this process (see [`crate::EdgeConfig::in_process_core`]). Either way a call
/// carries the same protobuf messages and metadata through the same core layers.
#[derive(Debug, Clone)]
pub enum CoreService {
    /// HTTP/2 connections to the core replicas, calls spread over them (`openclaw-rest`).
    Network(CorePool),
    /// The core's services in this process (a combined replica).
    InProcess(InProcessCore, Option<Direct>),
}

/// The answer, to come, of a [`DirectCalls`] call.
pub type Unary<T> = BoxFuture<Result<tonic::Response<T>, tonic::Status>>;

/// The core's busiest calls as plain method calls, for the edge of the same process: the
/// request and its answer are handed over as they are, not encoded into gRPC frames and decoded
/// again. The core observes and bounds them as its gRPC layers do every other call
/// (`openclaw_gateway::server`).
pub trait DirectCalls: Send + Sync + 'static {
    /// `CompletionService/Complete`.
    fn complete(
        &self,
        request: tonic::Request<crate::proto::CompleteRequest>,
    ) -> Unary<crate::proto::CompleteResponse>;
    /// `SessionService/SendMessage`.
    fn send_message(
        &self,
        request: tonic::Request<crate::proto::SendMessageRequest>,
    ) -> Unary<crate::proto::SendMessageResponse>;
}

/// A handle on the core's [`DirectCalls`].
#[derive(Clone)]
pub struct Direct(std::sync::Arc<dyn DirectCalls>);

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Direct")
    }
}

impl std::ops::Deref for Direct {
    type Target = dyn DirectCalls;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

type InProcessCore = BoxCloneSyncService<
    axum::http::Request<tonic::body::Body>,
    axum::http::Response<tonic::body::Body>,
    std::convert::Infallible,
>;

impl CoreService {
    /// The core's own service, called directly by the edge of the same process.
    pub fn in_process<S>(service: S) -> Self
    where
        S: tower::Service<
                axum::http::Request<tonic::body::Body>,
                Response = axum::http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        Self::InProcess(BoxCloneSyncService::new(service), None)
    }

    /// The core's own service, with its busiest calls also made as plain method calls.
    pub fn with_direct_calls(self, calls: impl DirectCalls) -> Self {
        match self {
            Self::InProcess(service, _) => {
                Self::InProcess(service, Some(Direct(std::sync::Arc::new(calls))))
            }
            network => network,
        }
    }

    /// The core's [`DirectCalls`], when it runs in this process.
    pub(crate) fn direct(&self) -> Option<&Direct> {
        match self {
            Self::InProcess(_, direct) => direct.as_ref(),
            Self::Network(_) => None,
        }
    }
}

type BoxFuture<T> = std::pin::Pin<Box<dyn Future<Output = T> + Send>>;
type Answer = Result<axum::http::Response<tonic::body::Body>, crate::core_pool::BoxError>;

fn never(never: std::convert::Infallible) -> crate::core_pool::BoxError {
    match never {}
}

impl tower::Service<axum::http::Request<tonic::body::Body>> for CoreService {
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = crate::core_pool::BoxError;
    /// The in-process core's future is boxed already; only a network call is boxed here.
    type Future = futures::future::Either<
        BoxFuture<Answer>,
        futures::future::MapErr<
            <InProcessCore as tower::Service<axum::http::Request<tonic::body::Body>>>::Future,
            fn(std::convert::Infallible) -> crate::core_pool::BoxError,
        >,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        match self {
            // A call waits for a connection itself, bounded by the connect timeout.
            Self::Network(_) => std::task::Poll::Ready(Ok(())),
            Self::InProcess(core, _) => core.poll_ready(cx).map_err(never),
        }
    }

    fn call(&mut self, request: axum::http::Request<tonic::body::Body>) -> Self::Future {
        use futures::TryFutureExt as _;
        match self {
            Self::Network(pool) => {
                futures::future::Either::Left(Box::pin(pool.clone().call(request)))
            }
            Self::InProcess(core, _) => futures::future::Either::Right(
                core.call(request)
                    .map_err(never as fn(std::convert::Infallible) -> _),
            ),
        }
    }
}

/// A handle on the core replicas. Cloning is cheap: every clone shares the channel.
#[derive(Debug, Clone)]
pub(crate) struct CoreClient {
    channel: CoreService,
    timeout: Duration,
}

/// A core answer, with the metadata headers that belong on the HTTP response.
#[derive(Debug)]
pub(crate) struct CoreReply<T> {
    pub(crate) message: T,
    pub(crate) headers: HeaderMap,
}

impl CoreClient {
    /// Starts connecting to the cores in the background and returns at once, so the edge
    /// starts (and answers 503) while the cores are down. Needs a Tokio runtime.
    pub(crate) fn new(config: &EdgeConfig) -> anyhow::Result<Self> {
        if let Some(core) = &config.in_process_core {
            return Ok(Self {
                channel: core.clone(),
                timeout: config.core_timeout,
            });
        }
        let urls = config
            .core_urls
            .iter()
            .map(|url| CoreUrl::parse(url))
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(
            !urls.is_empty(),
            "no core URL configured; set OPENCLAW_CORE_URL"
        );
        let tls = tls_for(config, &urls)?;
        let pool = CorePool::new(
            concat!("openclaw-rest/", env!("CARGO_PKG_VERSION")),
            crate::core_pool::Settings {
                connect_timeout: CONNECT_TIMEOUT,
                keep_alive_interval: KEEP_ALIVE_INTERVAL,
                keep_alive_timeout: KEEP_ALIVE_TIMEOUT,
            },
        );
        let mut named = Vec::new();
        for url in urls {
            match url.host.parse::<std::net::IpAddr>() {
                Ok(ip) => {
                    let target = url.target((ip, url.port).into(), tls.as_ref())?;
                    pool.insert(url.origin.to_string(), target);
                }
                Err(_) => named.push(url),
            }
        }
        if !named.is_empty() {
            // Host names (a headless Service's) are re-resolved, so cores that
            // come and go join and leave the rotation without a restart.
            tokio::spawn(resolve_forever(named, tls, pool.clone()));
        }
        Ok(Self {
            channel: CoreService::Network(pool),
            timeout: config.core_timeout,
        })
    }

    /// Calls the core and maps a failure to the API's error. `call` gets a channel clone and
    /// the request, already carrying the caller's metadata and the edge's deadline.
    ///
    /// A core that is shutting down refuses new work before doing any of it and says so
    /// (`openclaw-retry-elsewhere`); such calls are retried, briefly, on another core, so a
    /// core's restart costs clients nothing.
    pub(crate) async fn call<Req, Resp, F, Fut>(
        &self,
        caller: &headers::Caller,
        message: Req,
        call: F,
    ) -> Result<CoreReply<Resp>, ApiError>
    where
        Req: Clone,
        F: Fn(CoreService, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut backoff = Duration::from_millis(25);
        for attempt in 0..=RETRIES_ELSEWHERE {
            let mut request = caller.request(message.clone());
            // Tells the core the deadline (grpc-timeout) so it stops working for nobody.
            request.set_timeout(deadline.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout_at(deadline, call(self.channel.clone(), request)).await {
                Ok(Ok(response)) => {
                    let (metadata, message, _) = response.into_parts();
                    return Ok(CoreReply {
                        headers: headers::forwardable(metadata),
                        message,
                    });
                }
                Ok(Err(status))
                    if attempt < RETRIES_ELSEWHERE
                        && (status.metadata().contains_key(RETRY_ELSEWHERE)
                            || (caller.is_safe() && lost_connection(&status))) =>
                {
                    tracing::debug!(attempt, code = ?status.code(), "a core could not take the call; retrying on another");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Ok(Err(status)) => return Err(ApiError::from(status)),
                Err(_elapsed) => return Err(ApiError::core_timeout(self.timeout)),
            }
        }
        Err(ApiError::core_unreachable())
    }
}

/// A failure of the connection to a core (it went away), not an answer from one.
fn lost_connection(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    ) && status.details().is_empty()
}

/// Marks a refusal the core made before doing any work, so the call may go to another core.
const RETRY_ELSEWHERE: &str = "openclaw-retry-elsewhere";
/// How often a refused call is retried on another core (after 25, 50, … 800 ms).
const RETRIES_ELSEWHERE: u32 = 6;

impl CoreClient {
    /// True when a core answers the standard gRPC health check within a second.
    pub(crate) async fn healthy(&self) -> bool {
        let mut client = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        let check = client.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        });
        matches!(
            tokio::time::timeout(Duration::from_secs(1), check).await,
            Ok(Ok(response)) if response.get_ref().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        )
    }
}

/// How often host names of cores are looked up again.
const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// Keeps the pool's connections equal to what the configured host names resolve to.
async fn resolve_forever(configured: Vec<CoreUrl>, tls: Option<CoreTlsMaterial>, pool: CorePool) {
    use std::collections::BTreeMap;
    let mut current: BTreeMap<String, ()> = BTreeMap::new();
    loop {
        let mut found: BTreeMap<String, Target> = BTreeMap::new();
        for url in &configured {
            match tokio::net::lookup_host((url.host.as_str(), url.port)).await {
                Ok(addrs) => {
                    for addr in addrs {
                        match url.target(addr, tls.as_ref()) {
                            Ok(target) => {
                                found.insert(format!("{}@{addr}", url.origin), target);
                            }
                            Err(error) => {
                                tracing::warn!(host = %url.host, %error, "cannot reach a core");
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(host = %url.host, %error, "could not resolve a core address");
                }
            }
        }
        // A failed lookup keeps what was known rather than emptying the pool.
        if !found.is_empty() {
            for gone in current
                .keys()
                .filter(|k| !found.contains_key(*k))
                .cloned()
                .collect::<Vec<_>>()
            {
                tracing::info!(core = %gone, "core left");
                current.remove(&gone);
                pool.remove(&gone);
            }
            for (key, target) in found {
                if current.insert(key.clone(), ()).is_none() {
                    tracing::info!(core = %key, "core joined");
                    pool.insert(key, target);
                }
            }
        }
        tokio::time::sleep(RESOLVE_EVERY).await;
    }
}

/// The core's TLS material when any core URL is `https://`; refuses settings that cannot work
/// together (an `https://` URL without a CA to trust, TLS files for plain `http://` cores).
fn tls_for(config: &EdgeConfig, urls: &[CoreUrl]) -> anyhow::Result<Option<CoreTlsMaterial>> {
    let secure = urls.iter().filter(|url| url.is_https()).collect::<Vec<_>>();
    if secure.is_empty() {
        anyhow::ensure!(
            config.core_tls.ca.is_none() && config.core_tls.client.is_none(),
            "OPENCLAW_CORE_CA or OPENCLAW_CORE_CLIENT_CERT is set, but no core URL is https://: \
             use https:// core URLs (OPENCLAW_CORE_URL) to reach the core over TLS, or unset them"
        );
        return Ok(None);
    }
    anyhow::ensure!(
        secure.len() == urls.len(),
        "mixed core URLs: every core URL must be https://, or none (OPENCLAW_CORE_URL)"
    );
    anyhow::ensure!(
        config.core_tls.ca.is_some(),
        "the core URL https://{} is https://, but no CA to trust it is set: \
         set OPENCLAW_CORE_CA to the PEM file of the CA that signed the core's certificate",
        secure[0].origin.authority().map_or("", |a| a.as_str())
    );
    CoreTlsMaterial::load(&config.core_tls).map(Some)
}

/// A configured core URL: `http://host:port` or `https://host:port`; no scheme means `http://`,
/// no port means 50051.
#[derive(Debug, Clone)]
struct CoreUrl {
    /// The scheme and authority calls carry.
    origin: Uri,
    /// The host as written (a name or an address, without IPv6 brackets).
    host: String,
    port: u16,
}

impl CoreUrl {
    fn parse(url: &str) -> anyhow::Result<Self> {
        let url = url.trim();
        let full = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        let invalid = |why: &str| {
            anyhow::anyhow!(
                "invalid core URL '{}': {why}; write it as http://host:port or https://host:port (OPENCLAW_CORE_URL)",
                openclaw_runtime::redact::url(url)
            )
        };
        let uri: Uri = full.parse().map_err(|error| invalid(&format!("{error}")))?;
        let scheme = uri.scheme_str().unwrap_or_default().to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(invalid("the scheme must be http or https"));
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(invalid("a core URL has no path"));
        }
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("it names no host"))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(50051);
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let origin = format!("{scheme}://{authority}")
            .parse()
            .map_err(|error| invalid(&format!("{error}")))?;
        Ok(Self { origin, host, port })
    }

    fn is_https(&self) -> bool {
        self.origin.scheme_str() == Some("https")
    }

    /// A connection to `address`, one of this URL's host's; `https://` URLs get the client TLS
    /// of `tls`, checking the certificate against the URL's host.
    fn target(
        &self,
        address: std::net::SocketAddr,
        tls: Option<&CoreTlsMaterial>,
    ) -> anyhow::Result<Target> {
        let tls = if self.is_https() {
            let tls = tls.ok_or_else(|| {
                anyhow::anyhow!(
                    "the core URL {} is https://, but no core TLS is configured",
                    openclaw_runtime::redact::url(&self.origin.to_string())
                )
            })?;
            Some(tls.connector(&self.host)?)
        } else {
            None
        };
        Ok(Target {
            address,
            origin: self.origin.clone(),
            tls,
        })
    }
}

/// A part of the core's answer the contract promises; its absence is a core bug, not the caller's.
pub(crate) fn required<T>(value: Option<T>, what: &str) -> Result<T, ApiError> {
    value.ok_or_else(|| ApiError::incomplete_answer(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_urls_without_a_scheme_default_to_http() {
        let url = CoreUrl::parse("127.0.0.1:50051").expect("valid");
        assert_eq!(url.origin.to_string(), "http://127.0.0.1:50051/");
        assert_eq!((url.host.as_str(), url.port), ("127.0.0.1", 50051));
        let url = CoreUrl::parse("http://[::1]").expect("valid");
        assert_eq!((url.host.as_str(), url.port), ("::1", 50051));
        let url = CoreUrl::parse(" HTTPS://core.internal:7000 ").expect("valid");
        assert_eq!(url.origin.to_string(), "https://core.internal:7000/");
        for bad in [
            "http://exa mple:1",
            "ftp://core:1",
            "http://core:1/api",
            "http://:1",
        ] {
            let error = CoreUrl::parse(bad).expect_err(bad).to_string();
            assert!(error.contains("OPENCLAW_CORE_URL"), "{error}");
        }
    }

    #[tokio::test]
    async fn an_empty_core_list_is_a_configuration_error() {
        let config = EdgeConfig {
            core_urls: vec![],
            ..EdgeConfig::default()
        };
        assert!(CoreClient::new(&config).is_err());
    }

    #[tokio::test]
    async fn an_https_core_needs_a_ca_and_tls_files_need_an_https_core() {
        let config = EdgeConfig {
            core_urls: vec!["https://core:50051".into()],
            ..EdgeConfig::default()
        };
        let error = CoreClient::new(&config).unwrap_err().to_string();
        assert!(error.contains("OPENCLAW_CORE_CA"), "{error}");

        let config = EdgeConfig {
            core_urls: vec!["http://core:50051".into()],
            core_tls: crate::tls::CoreTls {
                ca: Some("ca.pem".into()),
                client: None,
            },
            ..EdgeConfig::default()
        };
        let error = CoreClient::new(&config).unwrap_err().to_string();
        assert!(error.contains("https://"), "{error}");

        let config = EdgeConfig {
            core_urls: vec!["https://core:50051".into()],
            core_tls: crate::tls::CoreTls {
                ca: Some("/nonexistent/ca.pem".into()),
                client: None,
            },
            ..EdgeConfig::default()
        };
        let error = format!("{:#}", CoreClient::new(&config).unwrap_err());
        assert!(error.contains("/nonexistent/ca.pem"), "{error}");
    }
}

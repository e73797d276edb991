//! The edge's one connection to the core: a lazily connecting, load-balanced gRPC channel, or
//! the core's own service when both run in one process.

use std::{future::Future, time::Duration};

use axum::http::HeaderMap;
use tonic::transport::{Channel, Endpoint};
use tower::util::BoxCloneSyncService;

use crate::{EdgeConfig, error::ApiError, headers, tls::CoreTlsMaterial};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The core's gRPC API as a service: a network channel to the core replicas, or the core's own
/// service in this process (see [`crate::EdgeConfig::in_process_core`]). Either way a call
/// carries the same protobuf messages and metadata through the same core layers.
#[derive(Debug, Clone)]
pub enum CoreService {
    /// The load-balanced gRPC channel to the core replicas (`openclaw-rest`).
    Network(Channel),
    /// The core's services in this process (a combined replica).
    InProcess(InProcessCore),
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
        Self::InProcess(BoxCloneSyncService::new(service))
    }
}

fn unreachable(never: std::convert::Infallible) -> tonic::transport::Error {
    match never {}
}

impl tower::Service<axum::http::Request<tonic::body::Body>> for CoreService {
    type Response = axum::http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = futures::future::Either<
        tonic::transport::channel::ResponseFuture,
        futures::future::MapErr<
            <InProcessCore as tower::Service<axum::http::Request<tonic::body::Body>>>::Future,
            fn(std::convert::Infallible) -> tonic::transport::Error,
        >,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        match self {
            Self::Network(channel) => channel.poll_ready(cx),
            Self::InProcess(core) => core.poll_ready(cx).map_err(unreachable),
        }
    }

    fn call(&mut self, request: axum::http::Request<tonic::body::Body>) -> Self::Future {
        use futures::TryFutureExt as _;
        match self {
            Self::Network(channel) => futures::future::Either::Left(channel.call(request)),
            Self::InProcess(core) => futures::future::Either::Right(
                core.call(request)
                    .map_err(unreachable as fn(std::convert::Infallible) -> _),
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
    /// Builds the channel without connecting, so the edge starts (and answers 503) while the
    /// core is down. Needs a Tokio runtime: the balancer runs as a task.
    pub(crate) fn new(config: &EdgeConfig) -> anyhow::Result<Self> {
        if let Some(core) = &config.in_process_core {
            return Ok(Self {
                channel: core.clone(),
                timeout: config.core_timeout,
            });
        }
        let tls = tls_for(config)?;
        let endpoints = config
            .core_urls
            .iter()
            .map(|url| endpoint(url, tls.as_ref(), None))
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(
            !endpoints.is_empty(),
            "no core URL configured; set OPENCLAW_CORE_URL"
        );
        let named: Vec<(String, u16)> = endpoints
            .iter()
            .filter_map(|e| {
                let host = e.uri().host()?.trim_matches(|c| c == '[' || c == ']');
                let port = e.uri().port_u16().unwrap_or(50051);
                host.parse::<std::net::IpAddr>()
                    .is_err()
                    .then(|| (host.to_owned(), port))
            })
            .collect();
        let channel = if named.is_empty() {
            Channel::balance_list(endpoints.into_iter())
        } else {
            // Host names (a headless Service's) are re-resolved, so cores that
            // come and go join and leave the balancer without a restart.
            let (channel, changes) = Channel::balance_channel::<String>(64);
            tokio::spawn(resolve_forever(endpoints, tls, changes));
            channel
        };
        Ok(Self {
            channel: CoreService::Network(channel),
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
                    return Ok(CoreReply {
                        headers: headers::forwardable(response.metadata()),
                        message: response.into_inner(),
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

/// Keeps the balancer's endpoints equal to what the configured URLs resolve to.
async fn resolve_forever(
    configured: Vec<Endpoint>,
    tls: Option<CoreTlsMaterial>,
    changes: tokio::sync::mpsc::Sender<tonic::transport::channel::Change<String, Endpoint>>,
) {
    use std::collections::BTreeMap;
    use tonic::transport::channel::Change;
    let mut current: BTreeMap<String, ()> = BTreeMap::new();
    loop {
        let mut found: BTreeMap<String, Endpoint> = BTreeMap::new();
        for endpoint in &configured {
            let uri = endpoint.uri();
            let (Some(host), port) = (uri.host(), uri.port_u16().unwrap_or(50051)) else {
                continue;
            };
            let host = host.trim_matches(|c| c == '[' || c == ']');
            match tokio::net::lookup_host((host, port)).await {
                Ok(addrs) => {
                    for addr in addrs {
                        let url = format!("{}://{addr}", uri.scheme_str().unwrap_or("http"));
                        // The certificate names the host, not the address it resolved to.
                        if let Ok(resolved) = self::endpoint(&url, tls.as_ref(), Some(host)) {
                            found.insert(url, resolved);
                        }
                    }
                }
                Err(error) => tracing::warn!(%host, %error, "could not resolve a core address"),
            }
        }
        // A failed lookup keeps what was known rather than emptying the balancer.
        if !found.is_empty() {
            for gone in current
                .keys()
                .filter(|k| !found.contains_key(*k))
                .cloned()
                .collect::<Vec<_>>()
            {
                tracing::info!(core = %gone, "core left");
                current.remove(&gone);
                if changes.send(Change::Remove(gone)).await.is_err() {
                    return;
                }
            }
            for (url, endpoint) in found {
                if current.insert(url.clone(), ()).is_none() {
                    tracing::info!(core = %url, "core joined");
                    if changes.send(Change::Insert(url, endpoint)).await.is_err() {
                        return;
                    }
                }
            }
        }
        tokio::time::sleep(RESOLVE_EVERY).await;
    }
}

/// The core's TLS material when any core URL is `https://`; refuses settings that cannot work
/// together (an `https://` URL without a CA to trust, TLS files for plain `http://` cores).
fn tls_for(config: &EdgeConfig) -> anyhow::Result<Option<CoreTlsMaterial>> {
    let secure = config
        .core_urls
        .iter()
        .filter(|url| is_https(url))
        .collect::<Vec<_>>();
    if secure.is_empty() {
        anyhow::ensure!(
            config.core_tls.ca.is_none() && config.core_tls.client.is_none(),
            "OPENCLAW_CORE_CA or OPENCLAW_CORE_CLIENT_CERT is set, but no core URL is https://: \
             use https:// core URLs (OPENCLAW_CORE_URL) to reach the core over TLS, or unset them"
        );
        return Ok(None);
    }
    anyhow::ensure!(
        secure.len() == config.core_urls.len(),
        "mixed core URLs: every core URL must be https://, or none (OPENCLAW_CORE_URL)"
    );
    anyhow::ensure!(
        config.core_tls.ca.is_some(),
        "the core URL {} is https://, but no CA to trust it is set: \
         set OPENCLAW_CORE_CA to the PEM file of the CA that signed the core's certificate",
        secure[0]
    );
    CoreTlsMaterial::load(&config.core_tls).map(Some)
}

fn is_https(url: &str) -> bool {
    url.trim()
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// One core's endpoint. `https://` URLs get the client TLS of `tls`, checking the certificate
/// against `domain` when given (a resolved address), else against the URL's host.
fn endpoint(
    url: &str,
    tls: Option<&CoreTlsMaterial>,
    domain: Option<&str>,
) -> anyhow::Result<Endpoint> {
    let url = url.trim();
    let url = if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|error| anyhow::anyhow!("invalid core URL '{url}': {error}"))?;
    if is_https(&url) {
        let tls = tls.ok_or_else(|| {
            anyhow::anyhow!("the core URL {url} is https://, but no core TLS is configured")
        })?;
        let host = endpoint
            .uri()
            .host()
            .unwrap_or_default()
            .trim_matches(|c| c == '[' || c == ']')
            .to_owned();
        endpoint = endpoint
            .tls_config(tls.client_config(domain.unwrap_or(&host)))
            .map_err(|error| anyhow::anyhow!("core TLS for {url}: {error}"))?;
    }
    Ok(endpoint
        .user_agent(concat!("openclaw-rest/", env!("CARGO_PKG_VERSION")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .tcp_keepalive(Some(KEEP_ALIVE_INTERVAL))
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
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
        assert_eq!(
            endpoint("127.0.0.1:50051", None, None)
                .expect("valid")
                .uri()
                .to_string(),
            "http://127.0.0.1:50051/"
        );
        assert!(endpoint("http://[::1]:50051", None, None).is_ok());
        assert!(endpoint("http://exa mple:1", None, None).is_err());
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

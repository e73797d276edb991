//! The edge's one connection to the core: a lazily connecting, load-balanced gRPC channel.

use std::{future::Future, time::Duration};

use axum::http::HeaderMap;
use tonic::transport::{Channel, Endpoint};

use crate::{EdgeConfig, error::ApiError, headers};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A handle on the core replicas. Cloning is cheap: every clone shares the channel.
#[derive(Debug, Clone)]
pub(crate) struct CoreClient {
    channel: Channel,
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
        let endpoints = config
            .core_urls
            .iter()
            .map(|url| endpoint(url))
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(
            !endpoints.is_empty(),
            "no core URL configured; set OPENCLAW_CORE_URL"
        );
        Ok(Self {
            channel: Channel::balance_list(endpoints.into_iter()),
            timeout: config.core_timeout,
        })
    }

    /// Calls the core once and maps a failure to the API's error. `call` gets a channel clone and
    /// the request, already carrying the caller's metadata and the edge's deadline.
    pub(crate) async fn call<Req, Resp, F, Fut>(
        &self,
        caller: &headers::Caller,
        message: Req,
        call: F,
    ) -> Result<CoreReply<Resp>, ApiError>
    where
        F: FnOnce(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let mut request = caller.request(message);
        // Tells the core the deadline (grpc-timeout) so it stops working for nobody.
        request.set_timeout(self.timeout);
        match tokio::time::timeout(self.timeout, call(self.channel.clone(), request)).await {
            Ok(Ok(response)) => Ok(CoreReply {
                headers: headers::forwardable(response.metadata()),
                message: response.into_inner(),
            }),
            Ok(Err(status)) => Err(ApiError::from(status)),
            Err(_elapsed) => Err(ApiError::core_timeout(self.timeout)),
        }
    }
}

fn endpoint(url: &str) -> anyhow::Result<Endpoint> {
    let url = url.trim();
    let url = if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|error| anyhow::anyhow!("invalid core URL '{url}': {error}"))?;
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
            endpoint("127.0.0.1:50051")
                .expect("valid")
                .uri()
                .to_string(),
            "http://127.0.0.1:50051/"
        );
        assert!(endpoint("http://[::1]:50051").is_ok());
        assert!(endpoint("http://exa mple:1").is_err());
    }

    #[tokio::test]
    async fn an_empty_core_list_is_a_configuration_error() {
        let config = EdgeConfig {
            core_urls: vec![],
            ..EdgeConfig::default()
        };
        assert!(CoreClient::new(&config).is_err());
    }
}

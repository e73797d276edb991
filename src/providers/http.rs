//! How a provider is called over HTTP: `POST` of a JSON body to one endpoint, the answer's
//! status, headers and body. The provider's request timeout bounds the whole of every attempt
//! (the call and its answer, streamed or not) in `super::resilience`, the only caller of a
//! provider, so no second timer is set here.
//!
//! Calls go through hyper's pooled client (kept-alive connections, TCP_NODELAY, TLS by rustls
//! with the platform's roots, HTTP/2 where the provider offers it). The endpoint, its headers
//! and the client are built once per provider, so a call costs the request and nothing else:
//! no URL is parsed or printed per call, and no redirect or retry layer wraps it (a provider's
//! redirect is an error, as it always was for a `POST` with a body). A provider reached through
//! a proxy (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, minus `NO_PROXY`) is called with reqwest,
//! which speaks to proxies.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};

use super::ProviderError;
use super::openai::OpenAiConfig;

type Direct = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One provider endpoint and the client that calls it.
pub(super) struct Endpoint {
    transport: Transport,
    uri: Uri,
    /// Every call's headers: user agent, `accept`, `content-type`, credentials, the configured.
    headers: HeaderMap,
    /// What a proxied call's timeout error names (reqwest keeps its own bound).
    timeout: Duration,
}

enum Transport {
    /// Boxed: the client is a few hundred bytes, the proxied one a tenth of that.
    Direct(Box<Direct>),
    /// The endpoint is reached through a proxy named in the environment.
    Proxied(reqwest::Client, reqwest::Url),
}

/// A provider's successful answer.
pub(super) struct Response {
    body: Body,
    timeout: Duration,
}

enum Body {
    Direct(hyper::body::Incoming),
    Proxied(reqwest::Response),
}

/// The stream of a streamed answer's bytes.
pub(super) type ByteStream = futures::stream::BoxStream<'static, Result<Bytes, ProviderError>>;

impl Endpoint {
    /// `{base_url}{path}` with the configured query parameters; `headers` are sent with every
    /// call beside the user agent, `accept: */*` and `content-type: application/json`.
    pub(super) fn new(
        config: &OpenAiConfig,
        path: &str,
        mut headers: HeaderMap,
    ) -> anyhow::Result<Self> {
        let url = config.endpoint(path)?;
        let uri: Uri = url.as_str().parse().map_err(|error| {
            anyhow::anyhow!(
                "provider '{}': the base URL '{}' is not a valid URL ({error})",
                config.name,
                openclaw_runtime::redact::url(&config.base_url)
            )
        })?;
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("openclaw-gateway/", env!("CARGO_PKG_VERSION"))),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let proxied = hyper_util::client::proxy::matcher::Matcher::from_system()
            .intercept(&uri)
            .is_some();
        let transport = if proxied {
            Transport::Proxied(config.client()?, url)
        } else {
            Transport::Direct(Box::new(direct(config)?))
        };
        Ok(Self {
            transport,
            uri,
            headers,
            timeout: config.request_timeout,
        })
    }

    /// Posts `body`; a non-2xx answer is the provider's refusal. `stream` asks for server-sent
    /// events.
    pub(super) async fn post(
        &self,
        body: Vec<u8>,
        stream: bool,
    ) -> Result<Response, ProviderError> {
        let mut headers = self.headers.clone();
        if stream {
            headers.insert(
                header::ACCEPT,
                HeaderValue::from_static("text/event-stream"),
            );
        }
        // The trace continues into the provider (W3C traceparent), when traces are exported.
        openclaw_runtime::telemetry::inject(
            &tracing::Span::current(),
            &mut openclaw_runtime::telemetry::HeaderCarrier(&mut headers),
        );
        let (status, answer_headers, body) = match &self.transport {
            Transport::Direct(client) => {
                let mut request = http::Request::new(Full::new(Bytes::from(body)));
                *request.method_mut() = http::Method::POST;
                *request.uri_mut() = self.uri.clone();
                *request.headers_mut() = headers;
                // Refused, reset or closed before an answer began: the request was not served.
                let response = client
                    .request(request)
                    .await
                    .map_err(|error| ProviderError::Connect(describe(&error)))?;
                let (parts, body) = response.into_parts();
                (parts.status, parts.headers, Body::Direct(body))
            }
            Transport::Proxied(client, url) => {
                let response = client
                    .post(url.clone())
                    .headers(headers)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| classify(e, self.timeout))?;
                (
                    response.status(),
                    response.headers().clone(),
                    Body::Proxied(response),
                )
            }
        };
        let response = Response {
            body,
            timeout: self.timeout,
        };
        if status.is_success() {
            Ok(response)
        } else {
            Err(response.refusal(status, &answer_headers).await)
        }
    }
}

/// hyper's client: connect timeout, TCP_NODELAY, idle connections kept 90 s, TLS by rustls
/// (aws-lc-rs) verifying against the platform's roots, ALPN offering HTTP/2 and HTTP/1.1.
fn direct(config: &OpenAiConfig) -> anyhow::Result<Direct> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone())?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    http.enforce_http(false);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(http);
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .build(connector))
}

/// A failed call's cause, with its sources (hyper's own text says only "client error").
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A reqwest failure (a proxied call) as the provider's error.
pub(super) fn classify(err: reqwest::Error, timeout: Duration) -> ProviderError {
    if err.is_timeout() {
        ProviderError::Timeout(timeout)
    } else if err.is_connect() || (err.is_request() && err.status().is_none()) {
        // Refused, reset or closed before an answer began: the request was not served.
        ProviderError::Connect(err.to_string())
    } else {
        ProviderError::BadResponse(err.to_string())
    }
}

impl Response {
    /// The whole body.
    pub(super) async fn bytes(self) -> Result<Bytes, ProviderError> {
        match self.body {
            Body::Direct(body) => body
                .collect()
                .await
                .map(|whole| whole.to_bytes())
                .map_err(|e| ProviderError::BadResponse(describe(&e))),
            Body::Proxied(response) => response
                .bytes()
                .await
                .map_err(|e| classify(e, self.timeout)),
        }
    }

    /// The body as it arrives.
    pub(super) fn bytes_stream(self) -> ByteStream {
        let timeout = self.timeout;
        match self.body {
            Body::Direct(body) => body
                .into_data_stream()
                .map(|piece| piece.map_err(|e| ProviderError::BadResponse(describe(&e))))
                .boxed(),
            Body::Proxied(response) => response
                .bytes_stream()
                .map(move |piece| piece.map_err(|e| classify(e, timeout)))
                .boxed(),
        }
    }

    /// The provider's refusal, summarised without echoing more than a line of it. OpenAI's
    /// error body (`{"error": {"message"}}`) and Anthropic's (`{"type": "error", "error":
    /// {"type", "message"}}`) both carry the message there.
    async fn refusal(self, status: StatusCode, headers: &HeaderMap) -> ProviderError {
        let retry_after = super::openai::retry_after(headers);
        let bytes = self.bytes().await.unwrap_or_default();
        let message = serde_json::from_slice::<super::openai::WireError>(&bytes)
            .ok()
            .and_then(|e| e.error.message)
            .map(|m| m.chars().take(300).collect())
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
        ProviderError::Status {
            status: status.as_u16(),
            message,
            retry_after,
        }
    }
}

//! Headers in and out: the request ID and API version on every exchange, the caller's identity
//! forwarded to the core as gRPC metadata, and the core's rate-limit headers passed back.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Instant};

use axum::{
    extract::{ConnectInfo, FromRequestParts, Request},
    http::{HeaderMap, HeaderName, HeaderValue, header, request::Parts},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tonic::metadata::MetadataMap;
use tracing::Instrument as _;

use crate::client_address::Forwarding;
use crate::error::ApiError;

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(crate) const OPENCLAW_VERSION: HeaderName = HeaderName::from_static("openclaw-version");
pub(crate) const OPENCLAW_SIMULATED: HeaderName = HeaderName::from_static("openclaw-simulated");
/// On an answer replayed from the record of an earlier send with the same `X-Request-ID`.
pub(crate) const OPENCLAW_REPLAYED: HeaderName =
    HeaderName::from_static("openclaw-idempotent-replay");
/// Tells the core whether the request id is the client's (an idempotency key) or the edge's.
const IDEMPOTENT: HeaderName = HeaderName::from_static("x-openclaw-idempotent");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// The gRPC metadata naming a dashboard session (set by [`Caller::for_dashboard`] only).
const DASHBOARD_SESSION: &str = "x-openclaw-dashboard-session";
const CLIENT_IP: HeaderName = HeaderName::from_static(openclaw_runtime::forwarding::CLIENT_IP);
const EDGE_PROOF: HeaderName = HeaderName::from_static(openclaw_runtime::forwarding::EDGE_PROOF);

/// The API versions this edge speaks; a request without `OpenClaw-Version` means the first.
pub(crate) const SUPPORTED_VERSIONS: &[&str] = &["1.0"];
const CURRENT_VERSION: &str = "1.0";

const MAX_REQUEST_ID_LEN: usize = 128;

/// The ID that follows one request through edge logs, core metadata and the response, and
/// whether the client chose it (then it also names the request for safe retries).
#[derive(Debug, Clone)]
pub(crate) struct RequestId(HeaderValue, bool);

impl RequestId {
    /// The client's ID when it is 1–128 printable ASCII characters, a fresh UUID v4 otherwise.
    fn from_headers(headers: &HeaderMap) -> Self {
        headers
            .get(&REQUEST_ID)
            .filter(|value| is_usable_request_id(value.as_bytes()))
            .map(|value| Self(value.clone(), true))
            .unwrap_or_else(Self::generate)
    }

    fn generate() -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        Self(
            HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            false,
        )
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only printable ASCII gets in, so this never falls back.
        self.0.to_str().unwrap_or_default()
    }
}

fn is_usable_request_id(bytes: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&bytes.len())
        && bytes.iter().all(|byte| (0x20..=0x7e).contains(byte))
}

/// What the edge checks on every request before routing it.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    /// The most bytes all headers of a request may take, as on the wire: well below hyper's own
    /// cap, so a client gets a sentence in the API's envelope, not a bare 431.
    pub(crate) max_header_bytes: usize,
    pub(crate) draining: crate::server::Draining,
    /// Whose `X-Forwarded-For` is believed, and the proof the core believes the result by.
    pub(crate) forwarding: Arc<Forwarding>,
}

impl Gate {
    /// The answer to a request refused before routing: headers over the limit, or an API call
    /// while this edge drains (probes still answer, so clients retry elsewhere).
    fn refusal(&self, request: &Request) -> Option<Response> {
        let path = request.uri().path();
        let openai = path.starts_with("/v1/");
        // As on the wire: "name: value\r\n" per header.
        let size: usize = request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        let error = if size > self.max_header_bytes {
            ApiError::invalid_request(
                "Request headers too large",
                format!(
                    "The request headers total {size} bytes; they must total at most {} bytes. \
                     Send fewer or shorter headers (large cookies are a common cause)",
                    self.max_header_bytes
                ),
            )
            .with_status(axum::http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        } else if self.draining.is_set() && (openai || path.starts_with("/api/")) {
            ApiError::draining()
        } else {
            return None;
        };
        Some(if openai {
            crate::routes::openai::OpenAiError::from(error).into_response()
        } else {
            error.into_response()
        })
    }
}

/// The one middleware around every route: settles the request ID, checks the API version, the
/// headers' size and whether the edge drains ([`Gate`]), logs the exchange, and stamps
/// `X-Request-ID` and `OpenClaw-Version` on every response, errors and 404s included.
pub(crate) async fn stamp(
    axum::extract::State(gate): axum::extract::State<Gate>,
    mut request: Request,
    next: Next,
) -> Response {
    let request_id = RequestId::from_headers(request.headers());
    request.extensions_mut().insert(request_id.clone());
    request.extensions_mut().insert(gate.forwarding.clone());
    let span = tracing::info_span!(
        "request",
        request_id = request_id.as_str(),
        method = %request.method(),
        path = request.uri().path(),
    );
    // Continue the caller's trace, if it sent one.
    openclaw_runtime::telemetry::adopt(
        &span,
        &openclaw_runtime::telemetry::HeaderSource(request.headers()),
    );
    let route = crate::observe::RouteSlot::default();
    request.extensions_mut().insert(route.clone());
    let method = request.method().clone();
    let in_flight = crate::observe::InFlight::start();
    let started = Instant::now();
    // Only the guide's API is versioned: probes, the OpenAPI document, the dashboard and the
    // OpenAI-compatible `/v1` (which answers in OpenAI's error shape) ignore the header.
    let versioned = request.uri().path().starts_with("/api/");
    let mut response = async {
        let refused = match versioned
            .then(|| check_version(request.headers()))
            .transpose()
        {
            Ok(_) => gate.refusal(&request),
            Err(error) => Some(error.into_response()),
        };
        match refused {
            Some(refused) => refused,
            None => next.run(request).await,
        }
    }
    .instrument(span.clone())
    .await;
    drop(in_flight);
    crate::observe::record(&method, &route, response.status(), started.elapsed());
    let headers = response.headers_mut();
    headers.insert(REQUEST_ID, request_id.0);
    headers.insert(OPENCLAW_VERSION, HeaderValue::from_static(CURRENT_VERSION));
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            latency_ms = started.elapsed().as_millis() as u64,
            "served"
        );
    });
    response
}

fn check_version(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = headers.get(&OPENCLAW_VERSION) else {
        return Ok(());
    };
    let asked = value.to_str().map(str::trim).unwrap_or_default();
    if SUPPORTED_VERSIONS.contains(&asked) {
        return Ok(());
    }
    let shown = if asked.is_empty() {
        "an empty or unreadable value".to_owned()
    } else {
        format!("'{}'", asked.chars().take(32).collect::<String>())
    };
    Err(ApiError::invalid_request(
        "Unsupported API version",
        format!(
            "OpenClaw-Version {shown} is not supported. Supported versions: {}",
            SUPPORTED_VERSIONS.join(", ")
        ),
    ))
}

/// Who is calling, as the core needs to know it: forwarded on every core call as gRPC metadata.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    metadata: MetadataMap,
    /// A GET or HEAD: safe to send again when a core fails underneath it.
    safe: bool,
}

impl Caller {
    /// Wraps a core request message with the caller's metadata.
    pub(crate) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        *request.metadata_mut() = self.metadata.clone();
        request
    }

    /// The same caller acting through a signed-in dashboard session: the session id travels as
    /// its own metadata, never as `authorization`, and only dashboard routes ever set it.
    /// True for calls that may be repeated when a core fails underneath them.
    pub(crate) fn is_safe(&self) -> bool {
        self.safe
    }

    pub(crate) fn for_dashboard(mut self, session_id: &str) -> Self {
        self.metadata.remove(header::AUTHORIZATION.as_str());
        if let Ok(mut value) = tonic::metadata::MetadataValue::try_from(session_id) {
            value.set_sensitive(true);
            self.metadata.insert(DASHBOARD_SESSION, value);
        }
        self
    }

    fn from_parts(parts: &Parts) -> Self {
        let headers = &parts.headers;
        // Room for everything below without growing.
        let mut forwarded = HeaderMap::with_capacity(16);
        // Verbatim: deciding whether the credential is any good is the core's job.
        if let Some(authorization) = headers.get(header::AUTHORIZATION) {
            let mut authorization = authorization.clone();
            authorization.set_sensitive(true);
            forwarded.insert(header::AUTHORIZATION, authorization);
        }
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId::from_headers(headers));
        let chosen = if request_id.1 { "1" } else { "0" };
        forwarded.insert(IDEMPOTENT, HeaderValue::from_static(chosen));
        forwarded.insert(REQUEST_ID, request_id.0);
        // The edge's own span continues the trace into the core; without an
        // exporter there is no span context, and the caller's is passed through.
        openclaw_runtime::telemetry::inject(
            &tracing::Span::current(),
            &mut openclaw_runtime::telemetry::HeaderCarrier(&mut forwarded),
        );
        if !forwarded.contains_key(&TRACEPARENT) {
            for name in [TRACEPARENT, TRACESTATE] {
                if let Some(value) = headers.get(&name).filter(|v| v.to_str().is_ok()) {
                    forwarded.insert(name, value.clone());
                }
            }
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| *addr);
        let forwarding = parts.extensions.get::<Arc<Forwarding>>();
        let client = match forwarding {
            Some(forwarding) => forwarding.client(peer, headers),
            None => peer.map(|addr| addr.ip()),
        };
        if let Some(ip) = client
            && let Ok(value) = HeaderValue::from_str(&ip_text(ip))
        {
            forwarded.insert(CLIENT_IP, value);
        }
        if let Some(proof) = forwarding.and_then(|f| f.proof.clone()) {
            forwarded.insert(EDGE_PROOF, proof);
        }
        Self {
            metadata: MetadataMap::from_headers(forwarded),
            safe: parts.method == axum::http::Method::GET
                || parts.method == axum::http::Method::HEAD,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::from_parts(parts))
    }
}

/// An address as text; an IPv4 address without the formatting machinery `to_string` goes through.
fn ip_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// The core metadata that belongs on the HTTP response: the simulator flag and rate-limit state.
/// Everything else in the core's metadata stays inside.
pub(crate) fn forwardable(metadata: MetadataMap) -> HeaderMap {
    let all = metadata.into_headers();
    // A call answered in this process carries only what the core wrote, all of it for the
    // response: the map is kept as it is, not built again.
    if all.keys().all(is_forwardable) {
        return all;
    }
    let mut out = HeaderMap::with_capacity(all.len());
    let mut last = None;
    for (name, value) in all {
        // A name is given once, before the first of its values.
        if let Some(name) = name {
            last = is_forwardable(&name).then_some(name);
        }
        if let Some(name) = &last {
            out.append(name.clone(), value);
        }
    }
    out
}

fn is_forwardable(name: &HeaderName) -> bool {
    let name = name.as_str();
    name == OPENCLAW_SIMULATED.as_str()
        || name == OPENCLAW_REPLAYED.as_str()
        || name == header::RETRY_AFTER.as_str()
        || name.starts_with("x-ratelimit-")
        || name.starts_with("ratelimit")
}

#[cfg(test)]
mod tests {
    use axum::http::Request as HttpRequest;

    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut builder = HttpRequest::builder().uri("/api/v1/sessions");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request").into_parts().0
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.199.255",
            "100.9.90.109",
            "::1",
            "2001:db8::8a2e:370:7334",
        ] {
            let ip: std::net::IpAddr = ip.parse().expect("address");
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }

    #[test]
    fn request_id_is_kept_when_printable_and_short_enough() {
        let headers = parts(&[("x-request-id", "req-123 abc")]).headers;
        assert_eq!(RequestId::from_headers(&headers).as_str(), "req-123 abc");
    }

    #[test]
    fn request_id_is_generated_when_absent_empty_or_too_long() {
        let long = "a".repeat(129);
        for headers in [
            vec![],
            vec![("x-request-id", "")],
            vec![("x-request-id", long.as_str())],
        ] {
            let id = RequestId::from_headers(&parts(&headers).headers);
            assert!(
                uuid::Uuid::parse_str(id.as_str()).is_ok(),
                "{}",
                id.as_str()
            );
        }
        let exact = "b".repeat(128);
        let id = RequestId::from_headers(&parts(&[("x-request-id", &exact)]).headers);
        assert_eq!(id.as_str(), exact);
    }

    #[test]
    fn version_check_accepts_absent_and_1_0_only() {
        assert!(check_version(&parts(&[]).headers).is_ok());
        assert!(check_version(&parts(&[("openclaw-version", "1.0")]).headers).is_ok());
        let error = check_version(&parts(&[("openclaw-version", "2.0")]).headers)
            .expect_err("2.0 is not supported");
        assert_eq!(error.code, crate::proto::ErrorCode::InvalidRequest);
        assert!(
            error.details.contains("Supported versions: 1.0"),
            "{}",
            error.details
        );
    }

    #[test]
    fn caller_forwards_identity_and_trace_as_metadata() {
        let mut request_parts = parts(&[
            ("authorization", "Bearer oc_secret"),
            ("x-request-id", "req-1"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("x-forwarded-for", "198.51.100.1, 203.0.113.9, 10.0.0.1"),
            ("cookie", "not-for-the-core"),
        ]);
        // From a trusted load balancer, whose own hops are trusted too.
        request_parts
            .extensions
            .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 2], 40000))));
        request_parts.extensions.insert(Arc::new(Forwarding {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            proof: Forwarding::proof_for("ocit_token"),
        }));
        let caller = Caller::from_parts(&request_parts);
        let metadata = caller.request(()).metadata().clone();
        let get = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok());
        assert_eq!(get("authorization"), Some("Bearer oc_secret"));
        assert_eq!(get("x-request-id"), Some("req-1"));
        assert_eq!(
            get("traceparent"),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(get("x-openclaw-client-ip"), Some("203.0.113.9"));
        assert_eq!(
            get("x-openclaw-edge-proof"),
            Some(openclaw_runtime::forwarding::edge_proof("ocit_token").as_str())
        );
        assert_eq!(
            get("x-openclaw-idempotent"),
            Some("1"),
            "the client chose the id"
        );
        assert_eq!(get("cookie"), None);
        assert_eq!(get("tracestate"), None);
    }

    #[test]
    fn a_client_cannot_smuggle_a_dashboard_session_into_the_json_api() {
        let caller = Caller::from_parts(&parts(&[
            ("x-openclaw-dashboard-session", "ocd_stolen"),
            ("cookie", "openclaw_dash=ocd_stolen"),
        ]));
        let metadata = caller.request(()).metadata().clone();
        assert!(metadata.get(DASHBOARD_SESSION).is_none());
        let dashboard = Caller::from_parts(&parts(&[("authorization", "Bearer oc_x")]))
            .for_dashboard("ocd_mine");
        let metadata = dashboard.request(()).metadata().clone();
        assert_eq!(
            metadata
                .get(DASHBOARD_SESSION)
                .and_then(|v| v.to_str().ok()),
            Some("ocd_mine")
        );
        assert!(metadata.get("authorization").is_none(), "never both");
    }

    #[test]
    fn caller_without_authorization_forwards_none_and_uses_the_peer_ip() {
        // X-Forwarded-For from a peer that is no trusted proxy is not believed.
        let mut request_parts = parts(&[("x-forwarded-for", "203.0.113.9")]);
        request_parts
            .extensions
            .insert(Arc::new(Forwarding::default()));
        request_parts
            .extensions
            .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 7], 40000))));
        let metadata = Caller::from_parts(&request_parts)
            .request(())
            .metadata()
            .clone();
        assert!(metadata.get("authorization").is_none());
        assert_eq!(
            metadata
                .get("x-openclaw-client-ip")
                .and_then(|v| v.to_str().ok()),
            Some("192.0.2.7")
        );
        assert!(metadata.get("x-request-id").is_some());
    }

    #[test]
    fn only_simulator_and_rate_limit_metadata_is_forwarded() {
        let mut metadata = MetadataMap::new();
        for (key, value) in [
            ("openclaw-simulated", "true"),
            ("retry-after", "12"),
            ("x-ratelimit-limit-requests", "60"),
            ("ratelimit-policy", "60;w=60"),
            ("x-replica", "core-7"),
            ("content-type", "application/grpc"),
        ] {
            metadata.insert(key, value.parse().expect("ascii"));
        }
        let headers = forwardable(metadata.clone());
        let mut names: Vec<_> = headers.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "openclaw-simulated",
                "ratelimit-policy",
                "retry-after",
                "x-ratelimit-limit-requests"
            ]
        );
    }

    #[test]
    fn metadata_that_is_all_forwardable_is_forwarded_whole() {
        let mut metadata = MetadataMap::new();
        metadata.insert(
            "x-ratelimit-remaining-requests",
            "59".parse().expect("ascii"),
        );
        metadata.insert("ratelimit", "limit=60".parse().expect("ascii"));
        metadata.append("ratelimit", "remaining=59".parse().expect("ascii"));
        let expected = metadata.clone().into_headers();
        assert_eq!(forwardable(metadata), expected);
    }
}

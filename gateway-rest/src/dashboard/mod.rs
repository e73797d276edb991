//! The OpenClaw Dashboard: server-rendered pages under `/dashboard`, for operators (signed in
//! with the internal token) and key holders (signed in with their API key).
//!
//! The dashboard is one more client of the core: every page is a few gRPC calls made as the
//! signed-in user, whose session the core resolves from `x-openclaw-dashboard-session` metadata.
//! The browser holds only the session id, in an HttpOnly, SameSite=Strict cookie; state-changing
//! requests also need the session's CSRF token and a same-origin `Origin`. Responses carry a
//! strict Content-Security-Policy: the only script is our own file, served from the binary.

mod charts;
mod keys;
mod money;
mod pages;
mod usage;
mod views;

use axum::{
    Router,
    extract::{FromRef, FromRequestParts, Request},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};

use crate::{
    core_client::CoreClient,
    error::ApiError,
    headers::Caller,
    proto::{self, ErrorCode, dashboard_service_client::DashboardServiceClient},
    server::AppState,
};

/// The cookie's name over plain HTTP, and (with the `__Host-` prefix browsers enforce) over TLS.
const COOKIE: &str = "openclaw_dash";
const SECURE_COOKIE: &str = "__Host-openclaw_dash";
/// The header the dashboard's script sends its CSRF token in.
const CSRF_HEADER: &str = "x-csrf-token";

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; \
                   form-action 'self'";

/// Every dashboard route, and `/` sending browsers to it.
pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/dashboard") }))
        .route(
            "/dashboard",
            get(|| async { Redirect::to("/dashboard/status") }),
        )
        .route(
            "/dashboard/",
            get(|| async { Redirect::to("/dashboard/status") }),
        )
        .route(
            "/dashboard/login",
            get(pages::login_form).post(pages::login),
        )
        .route("/dashboard/logout", post(pages::logout))
        .route(
            "/dashboard/logout/everywhere",
            post(pages::logout_everywhere),
        )
        .route("/dashboard/status", get(views::status))
        .route("/dashboard/api/traffic", get(views::traffic))
        .route("/dashboard/usage", get(usage::view))
        .route("/dashboard/usage.csv", get(usage::csv))
        .route("/dashboard/settings", get(views::settings))
        .route(
            "/dashboard/settings/keys",
            get(keys::list).post(keys::create),
        )
        .route("/dashboard/settings/keys/new", get(keys::new_form))
        .route(
            "/dashboard/settings/keys/{id}",
            get(keys::edit_form).post(keys::update),
        )
        .route(
            "/dashboard/settings/keys/{id}/budget",
            post(keys::set_budget),
        )
        .route(
            "/dashboard/settings/keys/{id}/revoke",
            get(keys::revoke_form).post(keys::revoke),
        )
        .route("/dashboard/sessions", get(views::sessions))
        .route("/dashboard/sessions/{id}", get(views::session))
        .route("/dashboard/cron", get(views::jobs))
        .route("/dashboard/cron/{id}", get(views::job))
        .route("/dashboard/cron/{id}/toggle", post(views::toggle_job))
        .route("/dashboard/cron/{id}/run", post(views::run_job))
        .route("/dashboard/events", get(views::events))
        .route("/dashboard/events/stream", get(views::event_stream))
        .route("/dashboard/assets/{file}", get(pages::asset))
        .layer(middleware::from_fn(guard))
}

/// Security headers on every dashboard answer, and no cross-site state changes: a POST whose
/// `Origin` (or `Sec-Fetch-Site`) shows another site is refused before any handler runs.
async fn guard(request: Request, next: Next) -> Response {
    if request.method() != Method::GET
        && request.method() != Method::HEAD
        && !same_origin(request.headers())
    {
        return pages::error_page(
            StatusCode::FORBIDDEN,
            "Cross-site request refused",
            "This form must be sent from the dashboard itself.",
        );
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn same_origin(headers: &HeaderMap) -> bool {
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    // Browsers say where a request comes from; `none` is the user typing or a bookmark.
    if let Some(site) = site {
        return matches!(site, "same-origin" | "none");
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        // Browsers send Origin on every POST; a client without one is not a browser being
        // tricked, and still needs the session's CSRF token.
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
}

/// Whether the browser reached us over TLS: on this edge's own TLS listener, or through a
/// trusted proxy (`OPENCLAW_TRUSTED_PROXIES`) that says so with `X-Forwarded-Proto: https`. The
/// header from any other peer is the client's own word and is not believed.
fn over_tls(parts: &Parts) -> bool {
    if parts.uri.scheme_str() == Some("https")
        || parts
            .extensions
            .get::<crate::client_address::ReachedOverTls>()
            .is_some()
    {
        return true;
    }
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0);
    let from_proxy = parts
        .extensions
        .get::<std::sync::Arc<crate::client_address::Forwarding>>()
        .is_some_and(|forwarding| forwarding.is_trusted_proxy(peer));
    from_proxy
        && parts
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// The dashboard session id from the cookie. Over TLS only the `__Host-` name counts: browsers
/// let only this origin, over HTTPS, set a cookie of that name, whereas a plain-named cookie can
/// be planted by a sibling subdomain (`Domain=` the parent) or a plain-HTTP response, and would
/// pin the victim to the planter's session. Over plain HTTP (no `Secure` cookie is possible)
/// either name.
fn session_cookie(headers: &HeaderMap, tls: bool) -> Option<String> {
    let accepted = |name: &str| name == SECURE_COOKIE || (!tls && name == COOKIE);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| accepted(name) && !value.is_empty())
        .map(|(_, value)| value.to_string())
}

fn set_cookie(secure: bool, value: &str, max_age: i64) -> HeaderValue {
    let cookie = if secure {
        format!(
            "{SECURE_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Secure; Max-Age={max_age}"
        )
    } else {
        format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}")
    };
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Headers that forget the session cookie under both names.
fn clear_cookies() -> [(header::HeaderName, HeaderValue); 2] {
    [
        (header::SET_COOKIE, set_cookie(false, "", 0)),
        (header::SET_COOKIE, set_cookie(true, "", 0)),
    ]
}

fn to_login() -> Response {
    let mut response = Redirect::to("/dashboard/login").into_response();
    for (name, value) in clear_cookies() {
        response.headers_mut().append(name, value);
    }
    response
}

/// The signed-in user of a dashboard request, as the core knows them.
pub(crate) struct Viewer {
    pub(crate) caller: Caller,
    pub(crate) identity: proto::DashboardIdentity,
    pub(crate) core: CoreClient,
}

impl Viewer {
    pub(crate) fn is_operator(&self) -> bool {
        self.identity.kind == "operator"
    }

    pub(crate) fn name(&self) -> String {
        match &self.identity.key {
            Some(key) => format!("key “{}” ({}…)", key.name, key.prefix),
            None => "operator".to_string(),
        }
    }

    /// Whether `submitted` is this session's CSRF token (compared in constant time).
    pub(crate) fn csrf_ok(&self, submitted: Option<&str>) -> bool {
        let expected = self.identity.csrf_token.as_bytes();
        let Some(submitted) = submitted.map(str::as_bytes) else {
            return false;
        };
        !expected.is_empty()
            && expected.len() == submitted.len()
            && expected
                .iter()
                .zip(submitted)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    /// Refuses a state change that does not carry the session's CSRF token.
    pub(crate) fn require_csrf(&self, submitted: Option<&str>) -> Result<(), Box<Response>> {
        if self.csrf_ok(submitted) {
            Ok(())
        } else {
            Err(Box::new(pages::error_page(
                StatusCode::FORBIDDEN,
                "Form expired",
                "This request did not carry the dashboard's security token. Reload the page and try again.",
            )))
        }
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let core = CoreClient::from_ref(state);
        let Some(session) = session_cookie(&parts.headers, over_tls(parts)) else {
            return Err(to_login());
        };
        let caller = Caller::from_request_parts(parts, state)
            .await
            .unwrap_or_else(|never| match never {})
            .for_dashboard(&session);
        let reply = core
            .call(
                &caller,
                proto::WhoamiRequest {},
                |channel, request| async move {
                    DashboardServiceClient::new(channel).whoami(request).await
                },
            )
            .await;
        match reply {
            Ok(reply) => Ok(Viewer {
                caller,
                identity: reply.message,
                core,
            }),
            Err(error) if error.code == ErrorCode::Unauthorized => Err(to_login()),
            Err(error) => Err(pages::api_error_page(&error)),
        }
    }
}

/// A core error as a dashboard page.
impl From<ApiError> for pages::PageError {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cookies(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn over_tls_only_the_host_prefixed_cookie_names_a_session() {
        let planted = cookies("openclaw_dash=ocd_attacker");
        assert_eq!(session_cookie(&planted, true), None);
        assert_eq!(
            session_cookie(&planted, false).as_deref(),
            Some("ocd_attacker")
        );
        let both = cookies("openclaw_dash=ocd_attacker; __Host-openclaw_dash=ocd_victim");
        assert_eq!(session_cookie(&both, true).as_deref(), Some("ocd_victim"));
        let host = cookies("__Host-openclaw_dash=ocd_victim");
        assert_eq!(session_cookie(&host, false).as_deref(), Some("ocd_victim"));
    }
}

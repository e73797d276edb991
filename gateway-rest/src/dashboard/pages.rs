//! The page frame, sign-in and sign-out, error pages, and the embedded assets.

use std::collections::HashMap;

use axum::{
    Form,
    extract::{FromRequestParts, Path, Query, State},
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Redirect, Response},
};
use maud::{DOCTYPE, Markup, html};

use super::{Viewer, clear_cookies, over_tls, set_cookie};
use crate::{
    core_client::CoreClient,
    error::ApiError,
    headers::Caller,
    proto::{self, ErrorCode, dashboard_service_client::DashboardServiceClient},
    server::AppState,
};

const SCRIPT: &str = include_str!("assets/dashboard.js");
const STYLE: &str = include_str!("assets/dashboard.css");

/// The sections in the navigation, with their paths.
const SECTIONS: &[(&str, &str)] = &[
    ("Status", "/dashboard/status"),
    ("Usage", "/dashboard/usage"),
    ("Sessions", "/dashboard/sessions"),
    ("Cron jobs", "/dashboard/cron"),
    ("Events", "/dashboard/events"),
    ("Settings", "/dashboard/settings"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · OpenClaw Dashboard" }
            link rel="stylesheet" href="/dashboard/assets/dashboard.css";
            script src="/dashboard/assets/dashboard.js" defer {}
        }
    }
}

/// A signed-in page: navigation, who is signed in, sign-out, and `body`.
pub(crate) fn page(viewer: &Viewer, title: &str, active: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body data-csrf=(viewer.identity.csrf_token) {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/dashboard/status" { "OpenClaw Dashboard" }
                    nav aria-label="Main" {
                        ul {
                            @for (name, path) in SECTIONS {
                                li {
                                    @if *name == active {
                                        a href=(path) aria-current="page" { (name) }
                                    } @else {
                                        a href=(path) { (name) }
                                    }
                                }
                            }
                        }
                    }
                    div.who {
                        span { "Signed in as " (viewer.name()) }
                        form method="post" action="/dashboard/logout" {
                            input type="hidden" name="csrf" value=(viewer.identity.csrf_token);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page for someone not signed in (or an error before we know who they are).
fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top { span.brand { "OpenClaw Dashboard" } }
                main #main { h1 { (title) } (body) }
            }
        }
    }
}

pub(crate) fn error_page(status: StatusCode, title: &str, details: &str) -> Response {
    let body = bare(
        title,
        html! {
            p role="alert" { (details) }
            p { a href="/dashboard" { "Back to the dashboard" } }
        },
    );
    (status, body).into_response()
}

pub(crate) fn api_error_page(error: &ApiError) -> Response {
    error_page(error.status(), &error.message, &error.details)
}

/// A handler's failure: the core's error, rendered as a page.
pub(crate) struct PageError(pub(crate) ApiError);

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        api_error_page(&self.0)
    }
}

pub(crate) type PageResult = Result<Response, PageError>;

fn login_page(status: StatusCode, problem: Option<&str>) -> Response {
    login_page_with(status, problem, None)
}

fn login_page_with(status: StatusCode, problem: Option<&str>, done: Option<&str>) -> Response {
    let body = bare(
        "Sign in",
        html! {
            (notice(done))
            @if let Some(problem) = problem {
                p.problem role="alert" { (problem) }
            }
            form.card method="post" action="/dashboard/login" {
                label for="credential" { "Internal token or API key" }
                input #credential type="password" name="credential" required
                    autocomplete="current-password" autofocus;
                button type="submit" { "Sign in" }
            }
            p.hint {
                "Operators sign in with the internal token (OPENCLAW_INTERNAL_TOKEN) and manage every key. "
                "A key holder signs in with an API key and sees only that key, its usage, sessions and jobs."
            }
        },
    );
    (status, body).into_response()
}

pub(crate) async fn login_form(Query(query): Query<HashMap<String, String>>) -> Response {
    login_page_with(StatusCode::OK, None, query.get("done").map(String::as_str))
}

/// Signs in through the core (which counts failures against the brute-force guard) and hands the
/// browser the session cookie.
pub(crate) async fn login(
    State(core): State<CoreClient>,
    caller: Caller,
    parts: RequestParts,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let credential = form.get("credential").cloned().unwrap_or_default();
    let reply = core
        .call(
            &caller,
            proto::SignInRequest { credential },
            |channel, request| async move {
                DashboardServiceClient::new(channel).sign_in(request).await
            },
        )
        .await;
    match reply {
        Ok(reply) => {
            let expires = reply
                .message
                .identity
                .as_ref()
                .and_then(|i| i.expires_at.as_ref())
                .map(|t| t.seconds - chrono::Utc::now().timestamp())
                .unwrap_or(3600)
                .max(1);
            let mut response = Redirect::to("/dashboard/status").into_response();
            response.headers_mut().insert(
                header::SET_COOKIE,
                set_cookie(parts.0, &reply.message.session_id, expires),
            );
            response
        }
        Err(error) if error.code == ErrorCode::Unauthorized => login_page(
            StatusCode::UNAUTHORIZED,
            Some("That is not a valid internal token or API key."),
        ),
        Err(error) if error.code == ErrorCode::RateLimitExceeded => login_page(
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "Too many failed sign-ins from this address. {}",
                error.details
            )),
        ),
        Err(error) => api_error_page(&error),
    }
}

/// Whether the request came over TLS, for the cookie's `Secure` flag.
pub(crate) struct RequestParts(bool);

impl FromRequestParts<AppState> for RequestParts {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Self(over_tls(parts)))
    }
}

pub(crate) async fn logout(viewer: Viewer, Form(form): Form<HashMap<String, String>>) -> Response {
    if let Err(refused) = viewer.require_csrf(form.get("csrf").map(String::as_str)) {
        return *refused;
    }
    let ended = viewer
        .core
        .call(
            &viewer.caller,
            proto::SignOutRequest {},
            |channel, request| async move {
                DashboardServiceClient::new(channel).sign_out(request).await
            },
        )
        .await;
    if let Err(error) = ended {
        return api_error_page(&error);
    }
    let mut response = Redirect::to("/dashboard/login").into_response();
    for (name, value) in clear_cookies() {
        response.headers_mut().append(name, value);
    }
    response
}

/// Ends every dashboard session of the signed-in identity (the operator, or this key), on every
/// replica, this one included.
pub(crate) async fn logout_everywhere(
    viewer: Viewer,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if let Err(refused) = viewer.require_csrf(form.get("csrf").map(String::as_str)) {
        return *refused;
    }
    let ended = viewer
        .core
        .call(
            &viewer.caller,
            proto::SignOutEverywhereRequest {},
            |channel, request| async move {
                DashboardServiceClient::new(channel)
                    .sign_out_everywhere(request)
                    .await
            },
        )
        .await;
    if let Err(error) = ended {
        return api_error_page(&error);
    }
    let mut response = Redirect::to("/dashboard/login?done=everywhere").into_response();
    for (name, value) in clear_cookies() {
        response.headers_mut().append(name, value);
    }
    response
}

pub(crate) async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "dashboard.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "dashboard.css" => (STYLE, "text/css; charset=utf-8"),
        _ => return error_page(StatusCode::NOT_FOUND, "Not found", "No such file."),
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

// ---------------------------------------------------------------- pieces of pages

/// An RFC 3339 timestamp shown in UTC to the minute, or "never".
pub(crate) fn when(at: Option<&prost_types::Timestamp>) -> String {
    at.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "never".into())
}

/// A usage bar that reads at a glance and to a screen reader.
pub(crate) fn meter(label: &str, used: u64, limit: u64) -> Markup {
    let level = if limit > 0 && used * 10 >= limit * 9 {
        "high"
    } else {
        "ok"
    };
    html! {
        div.usage {
            span.usage-label { (label) ": " (used) " / " (limit) }
            meter class=(level) min="0" max=(limit.max(1)) low=(limit * 7 / 10) high=(limit * 9 / 10)
                value=(used.min(limit.max(1))) aria-label=(format!("{label}: {used} of {limit} this minute")) {
                (used) " of " (limit)
            }
        }
    }
}

/// Text for a notice after a redirect (`?done=...`); fixed strings only, never an echo.
pub(crate) fn notice(done: Option<&str>) -> Markup {
    let text = match done {
        Some("revoked") => "The key was revoked. Clients using it get 401 within seconds.",
        Some("updated") => "The key's limits were saved.",
        Some("budget") => "The key's budget was saved.",
        Some("budget-removed") => "The key's budget was removed: its spend is no longer limited.",
        Some("enabled") => "The job is enabled.",
        Some("disabled") => "The job is disabled.",
        Some("ran") => "The job ran.",
        Some("everywhere") => {
            "Every dashboard session you had open, in any browser and on any replica, has been ended."
        }
        _ => return html! {},
    };
    html! { p.notice role="status" { (text) } }
}

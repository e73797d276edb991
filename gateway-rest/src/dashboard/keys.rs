//! Settings → API Keys: list with usage, quotas and spend against the budget, Generate New Key
//! (shown once), edit limits, quotas and the budget, revoke.

use std::collections::HashMap;

use axum::{
    Form,
    extract::{Path, Query},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};

use super::{
    Viewer,
    money::{dollars, parse_dollars, percent},
    pages::{self, PageResult, meter, notice, page, when},
};
use crate::proto::{
    self, dashboard_service_client::DashboardServiceClient, key_service_client::KeyServiceClient,
};

/// The scopes a key may have (the core checks them; this only draws the checkboxes).
const SCOPES: &[&str] = &["sessions", "cron", "status"];

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn needs_operator(viewer: &Viewer) -> Result<(), Box<Response>> {
    if viewer.is_operator() {
        Ok(())
    } else {
        Err(Box::new(pages::error_page(
            StatusCode::FORBIDDEN,
            "Operators only",
            "Managing keys needs the internal token. Sign in with it to generate, edit or revoke keys.",
        )))
    }
}

/// A posted key form is acted on only with the viewer's CSRF token and by an operator.
fn operator_post(viewer: &Viewer, form: &[(String, String)]) -> Result<(), Box<Response>> {
    viewer.require_csrf(field(form, "csrf"))?;
    needs_operator(viewer)
}

/// Reads `limits.*` fields: empty means "leave as it is" (or the default, for a new key).
fn limits(form: &[(String, String)]) -> Result<proto::Limits, Box<Response>> {
    let parse = |name: &str, label: &str| -> Result<Option<u64>, Box<Response>> {
        match field(form, name).map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v.parse::<u64>().ok().filter(|n| *n > 0).map(Some).ok_or_else(|| {
                Box::new(pages::error_page(
                    StatusCode::BAD_REQUEST,
                    "Invalid limit",
                    &format!("{label} must be a whole number of at least 1, or empty for the default."),
                ))
            }),
        }
    };
    Ok(proto::Limits {
        requests_per_minute: parse("requests", "Requests per minute")?,
        tokens_per_minute: parse("tokens", "Tokens per minute")?,
        context_tokens_per_minute: parse("context", "Context tokens per minute")?,
        // The form sets the per-minute limits; the concurrency caps keep their values.
        concurrent_streams: None,
        event_subscriptions: None,
    })
}

/// Reads `quotas.*` fields: empty means "leave as it is" (or the default, for a new key). Every
/// quota is a positive whole number, except the idle expiry, where 0 keeps sessions forever.
fn quotas(form: &[(String, String)]) -> Result<proto::Quotas, Box<Response>> {
    let parse = |name: &str, label: &str, least: u64| -> Result<Option<u64>, Box<Response>> {
        match field(form, name).map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= least)
                .map(Some)
                .ok_or_else(|| {
                    Box::new(pages::error_page(
                        StatusCode::BAD_REQUEST,
                        "Invalid quota",
                        &format!(
                            "{label} must be a whole number of at least {least}, or empty for the default."
                        ),
                    ))
                }),
        }
    };
    Ok(proto::Quotas {
        max_sessions: parse("maxSessions", "Sessions", 1)?,
        max_messages_per_session: parse("maxMessagesPerSession", "Messages per session", 1)?,
        max_session_bytes: parse("maxSessionBytes", "Bytes per session", 1)?,
        max_message_bytes: parse("maxMessageBytes", "Bytes per message", 1)?,
        max_cron_jobs: parse("maxCronJobs", "Cron jobs", 1)?,
        session_idle_ttl_seconds: parse("sessionIdleTtlSeconds", "Idle session expiry", 0)?,
    })
}

/// The form's quota fields, each showing the key's own value (empty: the default, shown as
/// the placeholder).
fn quota_inputs(key: Option<&proto::ApiKey>) -> Markup {
    let own = key.and_then(|k| k.quotas).unwrap_or_default();
    let effective = key.and_then(|k| k.effective_quotas);
    let value = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    let default = |pick: fn(&proto::Quotas) -> Option<u64>| {
        effective
            .as_ref()
            .and_then(pick)
            .map(|v| format!("default: {v}"))
            .unwrap_or_else(|| "gateway default".into())
    };
    html! {
        fieldset {
            legend { "Quotas (empty: the gateway's default)" }
            label for="maxSessions" { "Sessions kept at once" }
            input #maxSessions type="number" name="maxSessions" min="1" inputmode="numeric"
                value=(value(own.max_sessions)) placeholder=(default(|q| q.max_sessions));
            label for="maxMessagesPerSession" { "Messages per session" }
            input #maxMessagesPerSession type="number" name="maxMessagesPerSession" min="1" inputmode="numeric"
                value=(value(own.max_messages_per_session)) placeholder=(default(|q| q.max_messages_per_session));
            label for="maxSessionBytes" { "Bytes per session" }
            input #maxSessionBytes type="number" name="maxSessionBytes" min="1" inputmode="numeric"
                value=(value(own.max_session_bytes)) placeholder=(default(|q| q.max_session_bytes));
            label for="maxMessageBytes" { "Bytes per message" }
            input #maxMessageBytes type="number" name="maxMessageBytes" min="1" inputmode="numeric"
                value=(value(own.max_message_bytes)) placeholder=(default(|q| q.max_message_bytes));
            label for="maxCronJobs" { "Cron jobs" }
            input #maxCronJobs type="number" name="maxCronJobs" min="1" inputmode="numeric"
                value=(value(own.max_cron_jobs)) placeholder=(default(|q| q.max_cron_jobs));
            label for="sessionIdleTtlSeconds" { "Idle session expiry, seconds (0: never)" }
            input #sessionIdleTtlSeconds type="number" name="sessionIdleTtlSeconds" min="0" inputmode="numeric"
                value=(value(own.session_idle_ttl_seconds)) placeholder=(default(|q| q.session_idle_ttl_seconds));
        }
    }
}

/// A key's quotas in force, with what it holds against those counted per key.
fn quota_list(key: &proto::ApiKey, usage: Option<&proto::KeyUsage>) -> Markup {
    let q = key.effective_quotas.unwrap_or_default();
    let own = key.quotas.unwrap_or_default();
    let shown = |v: Option<u64>, own: Option<u64>, unit: fn(u64) -> String| {
        let v = v.map(unit).unwrap_or_else(|| "?".into());
        if own.is_some() {
            v
        } else {
            format!("{v} (default)")
        }
    };
    html! {
        @if let Some(u) = usage {
            div.meters aria-label="Stored against quotas" {
                (quota_meter("Sessions", u.sessions, u.session_limit))
                (quota_meter("Cron jobs", u.cron_jobs, u.cron_job_limit))
            }
        }
        dl.quotas aria-label="Quotas" {
            dt { "Sessions" } dd { (shown(q.max_sessions, own.max_sessions, count)) }
            dt { "Messages per session" } dd { (shown(q.max_messages_per_session, own.max_messages_per_session, count)) }
            dt { "Bytes per session" } dd { (shown(q.max_session_bytes, own.max_session_bytes, bytes)) }
            dt { "Bytes per message" } dd { (shown(q.max_message_bytes, own.max_message_bytes, bytes)) }
            dt { "Cron jobs" } dd { (shown(q.max_cron_jobs, own.max_cron_jobs, count)) }
            dt { "Idle session expiry" } dd { (shown(q.session_idle_ttl_seconds, own.session_idle_ttl_seconds, idle_expiry)) }
        }
    }
}

fn count(n: u64) -> String {
    n.to_string()
}

/// Bytes in the largest binary unit that divides them (16 MiB, 1536 KiB), else in bytes.
fn bytes(n: u64) -> String {
    match n {
        0 => "0 B".to_owned(),
        n if n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

/// An idle expiry in the largest whole unit (30 days, 36 h), or "never" for 0.
fn idle_expiry(seconds: u64) -> String {
    match seconds {
        0 => "never".to_owned(),
        s if s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s % 3_600 == 0 => format!("{} h", s / 3_600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// What a key holds against a quota counted per key.
fn quota_meter(label: &str, used: u64, limit: u64) -> Markup {
    let level = if limit > 0 && used.saturating_mul(10) >= limit.saturating_mul(9) {
        "high"
    } else {
        "ok"
    };
    html! {
        div.usage {
            span.usage-label { (label) ": " (used) " / " (limit) }
            meter class=(level) min="0" max=(limit.max(1)) low=(limit / 10 * 7) high=(limit / 10 * 9)
                value=(used.min(limit.max(1))) aria-label=(format!("{label}: {used} of {limit} stored")) {
                (used) " of " (limit)
            }
        }
    }
}

async fn usage_of(
    viewer: &Viewer,
    ids: Vec<String>,
) -> Result<HashMap<String, proto::KeyUsage>, pages::PageError> {
    let reply = viewer
        .core
        .call(
            &viewer.caller,
            proto::GetKeyUsageRequest { key_ids: ids },
            |channel, request| async move {
                DashboardServiceClient::new(channel)
                    .get_key_usage(request)
                    .await
            },
        )
        .await?;
    Ok(reply
        .message
        .usage
        .into_iter()
        .map(|u| (u.key_id.clone(), u))
        .collect())
}

pub(crate) async fn list(
    viewer: Viewer,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult {
    let keys = if viewer.is_operator() {
        viewer
            .core
            .call(
                &viewer.caller,
                proto::ListKeysRequest {},
                |channel, request| async move {
                    KeyServiceClient::new(channel).list_keys(request).await
                },
            )
            .await?
            .message
            .keys
    } else {
        viewer.identity.key.clone().into_iter().collect()
    };
    let live: Vec<String> = if viewer.is_operator() {
        keys.iter()
            .filter(|k| !k.revoked)
            .map(|k| k.id.clone())
            .collect()
    } else {
        Vec::new()
    };
    let usage = usage_of(&viewer, live).await?;
    let body = html! {
        (notice(query.get("done").map(String::as_str)))
        @if viewer.is_operator() {
            form.actions method="get" action="/dashboard/settings/keys/new" {
                button type="submit" { "Generate New Key" }
            }
        } @else {
            p.hint { "You are signed in with this key: you see only it. Operators generate and revoke keys." }
        }
        @if keys.is_empty() {
            p { "No keys yet." }
        } @else {
            ul.cards aria-label="API keys" {
                @for key in &keys {
                    li.card.key data-key-id=(key.id) {
                        h2 { (key.name) " " @if key.revoked { span.badge.revoked { "revoked" } } }
                        dl {
                            dt { "Prefix" } dd { code { (key.prefix) "…" } }
                            dt { "Created" } dd { (when(key.created_at.as_ref())) }
                            dt { "Last used" } dd { (when(key.last_used_at.as_ref())) }
                            dt { "Scopes" } dd { (key.scopes.join(", ")) }
                        }
                        @if let Some(u) = usage.get(&key.id) {
                            div.meters aria-label="Usage this minute" {
                                (meter("Requests", u.requests, u.request_limit))
                                (meter("Tokens", u.tokens, u.token_limit))
                                (meter("Context tokens", u.context_tokens, u.context_token_limit))
                            }
                        }
                        (quota_list(key, usage.get(&key.id)))
                        (budget_summary(key, usage.get(&key.id).and_then(|u| u.budget_spend.as_ref()).or(key.budget_spend.as_ref())))
                        @if viewer.is_operator() && !key.revoked {
                            p.actions {
                                a href=(format!("/dashboard/settings/keys/{}", key.id)) { "Edit limits, quotas and budget" span.sr-only { " of " (key.name) } }
                                " "
                                a.danger href=(format!("/dashboard/settings/keys/{}/revoke", key.id)) { "Revoke" span.sr-only { " " (key.name) } }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&viewer, "API Keys", "Settings", body).into_response())
}

/// The words for "this period" of a budget.
fn this_period(period: &str) -> &'static str {
    match period {
        "week" => "this week",
        "month" => "this month",
        _ => "today",
    }
}

/// What the key has spent in its budget's period, as a meter, with the limit, the reset and
/// the alert thresholds; or that it has no budget.
fn budget_summary(key: &proto::ApiKey, spend: Option<&proto::BudgetSpend>) -> Markup {
    let Some(budget) = &key.budget else {
        return html! { p.budget.hint { "Budget: none (spend is not limited)." } };
    };
    let spent = spend.map(|s| s.spent_micros).unwrap_or(0);
    let limit = spend.map(|s| s.limit_micros).unwrap_or(budget.limit_micros);
    let resets = spend.and_then(|s| s.resets_at.as_ref());
    let fraction = |f: f64| (limit as f64 * f).round() as u64;
    let low = budget.thresholds.first().copied().unwrap_or(0.7);
    let high = budget.thresholds.last().copied().unwrap_or(0.9).max(low);
    let level = if limit == 0 || spent >= fraction(high) {
        "high"
    } else {
        "ok"
    };
    let said = format!(
        "{} of {} {}",
        dollars(spent),
        dollars(limit),
        this_period(&budget.period)
    );
    let zone = if budget.time_zone.is_empty() {
        "UTC"
    } else {
        budget.time_zone.as_str()
    };
    html! {
        div.usage.budget {
            span.usage-label {
                "Spend: " (said)
                @if resets.is_some() { " " span.nowrap { "· resets " (when(resets)) } }
            }
            // Less is better: green below the first threshold, amber to the last, red beyond.
            meter class=(level) min="0" max=(limit.max(1)) low=(fraction(low)) high=(fraction(high)) optimum="0"
                value=(spent.min(limit.max(1))) aria-label=(format!("Spend: {said}")) {
                (said)
            }
            @if !budget.thresholds.is_empty() || zone != "UTC" {
                span.hint {
                    @if !budget.thresholds.is_empty() {
                        "Alerts at " (budget.thresholds.iter().map(|t| format!("{}%", percent(*t))).collect::<Vec<_>>().join(", ")) ". "
                    }
                    @if zone != "UTC" { "Periods start at midnight " (zone) "." }
                }
            }
        }
    }
}

/// The budget form: set (limit in dollars, period, time zone, alert thresholds as percentages)
/// or remove. The core checks the values and says what is wrong.
fn budget_form(viewer: &Viewer, key: &proto::ApiKey) -> Markup {
    let budget = key.budget.clone();
    let period = budget
        .as_ref()
        .map(|b| b.period.as_str())
        .unwrap_or("month");
    let limit = budget
        .as_ref()
        .map(|b| {
            dollars(b.limit_micros)
                .trim_start_matches('$')
                .replace(',', "")
        })
        .unwrap_or_default();
    let zone = budget
        .as_ref()
        .map(|b| b.time_zone.clone())
        .filter(|z| !z.is_empty())
        .unwrap_or_else(|| "UTC".into());
    let thresholds = budget
        .as_ref()
        .map(|b| {
            b.thresholds
                .iter()
                .map(|t| percent(*t))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    html! {
        form.card #budget method="post" action=(format!("/dashboard/settings/keys/{}/budget", key.id)) aria-labelledby="budget-h" {
            h2 #budget-h { "Spend budget" }
            (budget_summary(key, key.budget_spend.as_ref()))
            input type="hidden" name="csrf" value=(viewer.identity.csrf_token);
            label for="budget-limit" { "Limit per period, US dollars" }
            input #budget-limit type="text" name="limit" inputmode="decimal" autocomplete="off"
                value=(limit) placeholder="e.g. 5.00";
            label for="budget-period" { "Period" }
            select #budget-period name="period" {
                @for (value, words) in [("day", "Day"), ("week", "Week (from Monday)"), ("month", "Month")] {
                    option value=(value) selected[value == period] { (words) }
                }
            }
            label for="budget-zone" { "Time zone whose midnight starts a period (IANA)" }
            input #budget-zone type="text" name="timeZone" autocomplete="off" value=(zone) placeholder="UTC, Europe/Berlin, America/New_York";
            label for="budget-thresholds" { "Alert thresholds, % of the limit (comma-separated)" }
            input #budget-thresholds type="text" name="thresholds" inputmode="decimal" autocomplete="off"
                value=(thresholds) placeholder="e.g. 50, 80";
            p.hint { "Each threshold publishes one budget.threshold event per period. At the limit, model calls answer 402 BUDGET_EXCEEDED until the period resets." }
            div.actions {
                button type="submit" { "Save budget" }
                @if budget.is_some() {
                    button.danger type="submit" name="remove" value="yes" { "Remove budget" }
                }
                a href="/dashboard/settings/keys" { "Cancel" }
            }
        }
    }
}

/// Reads the budget form: `None` for "remove the budget".
fn budget(form: &[(String, String)]) -> Result<Option<proto::Budget>, Box<Response>> {
    if field(form, "remove") == Some("yes") {
        return Ok(None);
    }
    let invalid = |details: &str| {
        Box::new(pages::error_page(
            StatusCode::BAD_REQUEST,
            "Invalid budget",
            details,
        ))
    };
    let limit_micros = parse_dollars(field(form, "limit").unwrap_or_default()).ok_or_else(|| {
        invalid("The limit must be an amount in US dollars, such as 5 or 12.50 (at most 6 decimal places).")
    })?;
    let thresholds = field(form, "thresholds")
        .unwrap_or_default()
        .split([',', ' ', ';'])
        .map(|t| t.trim().trim_end_matches('%'))
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<f64>().map(|p| p / 100.0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| {
            invalid("Thresholds are percentages of the limit separated by commas, such as 50, 80.")
        })?;
    Ok(Some(proto::Budget {
        limit_micros,
        period: field(form, "period").unwrap_or_default().to_string(),
        time_zone: field(form, "timeZone")
            .unwrap_or_default()
            .trim()
            .to_string(),
        thresholds,
    }))
}

pub(crate) async fn set_budget(
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> PageResult {
    if let Err(refused) = operator_post(&viewer, &form) {
        return Ok(*refused);
    }
    let budget = match budget(&form) {
        Ok(budget) => budget,
        Err(refused) => return Ok(*refused),
    };
    let done = if budget.is_some() {
        "budget"
    } else {
        "budget-removed"
    };
    viewer
        .core
        .call(
            &viewer.caller,
            proto::UpdateKeyRequest {
                id,
                name: None,
                limits: None,
                quotas: None,
                remove_budget: budget.is_none(),
                budget,
            },
            |channel, request| async move { KeyServiceClient::new(channel).update_key(request).await },
        )
        .await?;
    Ok(Redirect::to(&format!("/dashboard/settings/keys?done={done}")).into_response())
}

fn limit_inputs(current: Option<&proto::Limits>) -> Markup {
    let value = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    let c = current.cloned().unwrap_or_default();
    html! {
        fieldset {
            legend { "Limits per minute (empty: the gateway's default)" }
            label for="requests" { "Requests per minute" }
            input #requests type="number" name="requests" min="1" inputmode="numeric" value=(value(c.requests_per_minute));
            label for="tokens" { "Tokens per minute" }
            input #tokens type="number" name="tokens" min="1" inputmode="numeric" value=(value(c.tokens_per_minute));
            label for="context" { "Context tokens per minute" }
            input #context type="number" name="context" min="1" inputmode="numeric" value=(value(c.context_tokens_per_minute));
        }
    }
}

pub(crate) async fn new_form(viewer: Viewer) -> PageResult {
    if let Err(refused) = needs_operator(&viewer) {
        return Ok(*refused);
    }
    let body = html! {
        form.card method="post" action="/dashboard/settings/keys" {
            input type="hidden" name="csrf" value=(viewer.identity.csrf_token);
            label for="name" { "Name" }
            input #name type="text" name="name" required maxlength="100" placeholder="e.g. billing-service";
            fieldset {
                legend { "Scopes (none checked: all)" }
                @for scope in SCOPES {
                    label.check { input type="checkbox" name="scopes" value=(scope); " " (scope) }
                }
            }
            (limit_inputs(None))
            (quota_inputs(None))
            button type="submit" { "Create key" }
        }
    };
    Ok(page(&viewer, "Generate New Key", "Settings", body).into_response())
}

/// The page showing a new key once. Not cacheable, and its script replaces the address with the
/// key list, so reloading shows the list (without the key), never a resubmission.
pub(crate) async fn create(
    viewer: Viewer,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> PageResult {
    if let Err(refused) = operator_post(&viewer, &form) {
        return Ok(*refused);
    }
    let limits = match limits(&form) {
        Ok(limits) => limits,
        Err(refused) => return Ok(*refused),
    };
    let quotas = match quotas(&form) {
        Ok(quotas) => quotas,
        Err(refused) => return Ok(*refused),
    };
    let request = proto::CreateKeyRequest {
        name: field(&form, "name").unwrap_or_default().to_string(),
        scopes: form
            .iter()
            .filter(|(k, _)| k == "scopes")
            .map(|(_, v)| v.clone())
            .collect(),
        limits: Some(limits),
        quotas: Some(quotas),
        budget: None,
    };
    let created = viewer
        .core
        .call(&viewer.caller, request, |channel, request| async move {
            KeyServiceClient::new(channel).create_key(request).await
        })
        .await?
        .message;
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost:18789");
    let curl = format!(
        "curl -X GET http://{host}/api/v1/system/status \\\n  -H \"Authorization: Bearer {}\"",
        created.secret
    );
    let name = created
        .key
        .as_ref()
        .map(|k| k.name.clone())
        .unwrap_or_default();
    let body = html! {
        div.card.shown-once data-replace-url="/dashboard/settings/keys" {
            p role="alert" { strong { "Copy this key now: it is shown only once." } " The gateway keeps only a hash of it." }
            label for="new-key" { "API key “" (name) "”" }
            div.copy-row {
                input #new-key type="text" readonly value=(created.secret) spellcheck="false";
                button type="button" data-copy="new-key" { "Copy" }
            }
            p { "Try it with the guide's status request:" }
            div.copy-row {
                pre { code #curl { (curl) } }
                button type="button" data-copy="curl" { "Copy cURL" }
            }
            p { a href="/dashboard/settings/keys" { "Done: back to API Keys" } }
        }
    };
    let mut response = page(&viewer, "New API key", "Settings", body).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn get_key(viewer: &Viewer, id: String) -> Result<proto::ApiKey, pages::PageError> {
    Ok(viewer
        .core
        .call(
            &viewer.caller,
            proto::GetKeyRequest { id },
            |channel, request| async move { KeyServiceClient::new(channel).get_key(request).await },
        )
        .await?
        .message)
}

/// An operator's page with one form about key `id`, posting to the key's address and `action`:
/// `fields` (ending with the submit button), then a way back.
async fn key_form(
    viewer: &Viewer,
    id: String,
    title: &str,
    action: &str,
    fields: impl FnOnce(&proto::ApiKey) -> Markup,
) -> PageResult {
    if let Err(refused) = needs_operator(viewer) {
        return Ok(*refused);
    }
    let key = get_key(viewer, id).await?;
    let body = html! {
        form.card method="post" action=(format!("/dashboard/settings/keys/{}{action}", key.id)) {
            input type="hidden" name="csrf" value=(viewer.identity.csrf_token);
            (fields(&key))
            " "
            a href="/dashboard/settings/keys" { "Cancel" }
        }
    };
    Ok(page(viewer, title, "Settings", body).into_response())
}

pub(crate) async fn edit_form(viewer: Viewer, Path(id): Path<String>) -> PageResult {
    if let Err(refused) = needs_operator(&viewer) {
        return Ok(*refused);
    }
    let key = get_key(&viewer, id).await?;
    let body = html! {
        div.forms {
            form.card method="post" action=(format!("/dashboard/settings/keys/{}", key.id)) aria-label="Limits and quotas" {
                input type="hidden" name="csrf" value=(viewer.identity.csrf_token);
                p { "Key " strong { (key.name) } " (" code { (key.prefix) "…" } ")" }
                (limit_inputs(key.limits.as_ref()))
                (quota_inputs(Some(&key)))
                button type="submit" { "Save limits" }
                " "
                a href="/dashboard/settings/keys" { "Cancel" }
            }
            (budget_form(&viewer, &key))
        }
    };
    Ok(page(&viewer, "Edit limits", "Settings", body).into_response())
}

pub(crate) async fn update(
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> PageResult {
    if let Err(refused) = operator_post(&viewer, &form) {
        return Ok(*refused);
    }
    let limits = match limits(&form) {
        Ok(limits) => limits,
        Err(refused) => return Ok(*refused),
    };
    let quotas = match quotas(&form) {
        Ok(quotas) => quotas,
        Err(refused) => return Ok(*refused),
    };
    viewer
        .core
        .call(
            &viewer.caller,
            proto::UpdateKeyRequest {
                id,
                name: None,
                limits: Some(limits),
                quotas: Some(quotas),
                budget: None,
                remove_budget: false,
            },
            |channel, request| async move { KeyServiceClient::new(channel).update_key(request).await },
        )
        .await?;
    Ok(Redirect::to("/dashboard/settings/keys?done=updated").into_response())
}

pub(crate) async fn revoke_form(viewer: Viewer, Path(id): Path<String>) -> PageResult {
    key_form(&viewer, id, "Revoke key", "/revoke", |key| {
        html! {
            p { "Revoke key " strong { (key.name) } " (" code { (key.prefix) "…" } ")?" }
            p { "Every client using it gets 401 within seconds. This cannot be undone." }
            button.danger type="submit" { "Revoke key" }
        }
    })
    .await
}

pub(crate) async fn revoke(
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<Vec<(String, String)>>,
) -> PageResult {
    if let Err(refused) = operator_post(&viewer, &form) {
        return Ok(*refused);
    }
    viewer
        .core
        .call(&viewer.caller, proto::RevokeKeyRequest { id }, |channel, request| async move {
            KeyServiceClient::new(channel).revoke_key(request).await
        })
        .await?;
    Ok(Redirect::to("/dashboard/settings/keys?done=revoked").into_response())
}

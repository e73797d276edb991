//! Status (with live charts), Settings, Sessions, Cron jobs and Events.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::{
    Form, Json,
    extract::{Path, Query},
    http::{HeaderMap, StatusCode},
    response::{
        IntoResponse, Redirect, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use futures::StreamExt as _;
use maud::html;
use serde_json::json;

use super::{
    CSRF_HEADER, Viewer,
    charts::chart,
    pages::{self, PageResult, meter, notice, page, when},
};
use crate::proto::{
    self, cron_service_client::CronServiceClient, dashboard_service_client::DashboardServiceClient,
    event_service_client::EventServiceClient, session_service_client::SessionServiceClient,
    system_service_client::SystemServiceClient,
};

fn uptime(duration: Option<&prost_types::Duration>) -> String {
    let secs = duration.map(|d| d.seconds.max(0)).unwrap_or(0);
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

async fn traffic_report(viewer: &Viewer) -> Result<proto::TrafficReport, pages::PageError> {
    Ok(viewer
        .core
        .call(
            &viewer.caller,
            proto::GetTrafficRequest {},
            |channel, request| async move {
                DashboardServiceClient::new(channel)
                    .get_traffic(request)
                    .await
            },
        )
        .await?
        .message)
}

pub(crate) async fn status(viewer: Viewer) -> PageResult {
    let status = viewer
        .core
        .call(
            &viewer.caller,
            proto::GetStatusRequest {},
            |channel, request| async move {
                SystemServiceClient::new(channel).get_status(request).await
            },
        )
        .await?
        .message;
    let traffic = if viewer.is_operator() {
        Some(traffic_report(&viewer).await?)
    } else {
        None
    };
    let resources = status.resources.unwrap_or_default();
    let body = html! {
        @if status.simulated {
            p.notice.simulated role="status" {
                strong { "Simulator active: " }
                "no provider credential is configured, so the zai models are answered by the built-in offline simulator. Set ZAI_API_KEY to use Z.ai."
            }
        }
        section.card aria-labelledby="state-h" {
            h2 #state-h { "Gateway" }
            dl.grid {
                dt { "State" } dd { span class=(format!("badge {}", status.gateway)) { (status.gateway) } }
                dt { "Version" } dd { (status.version) }
                dt { "Uptime" } dd { (uptime(status.uptime.as_ref())) }
                dt { "Queue depth" } dd { (resources.queue_depth) " model calls waiting" }
                dt { "Replica" } dd { (status.replica) }
            }
        }
        section.card aria-labelledby="deps-h" {
            h2 #deps-h { "Dependencies" }
            table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Kind" } th scope="col" { "Health" } th scope="col" { "Detail" } } }
                tbody {
                    @for dep in &status.dependencies {
                        tr {
                            td data-label="Name" { (dep.name) }
                            td data-label="Kind" { (dep.kind) }
                            td data-label="Health" { span class=(format!("badge {}", dep.status)) { (dep.status) } }
                            td data-label="Detail" { (dep.detail) @if dep.latency_ms > 0.0 { " (" (format!("{:.1}", dep.latency_ms)) " ms)" } }
                        }
                    }
                }
            }
        }
        @if !viewer.is_operator() {
            section.card aria-labelledby="usage-h" {
                h2 #usage-h { "Your usage this minute" }
                (meter("Requests", resources.request_usage, resources.request_limit))
                (meter("Tokens", resources.token_usage, resources.token_limit))
                (meter("Context tokens", resources.context_usage, resources.context_limit))
            }
        }
        @if let Some(traffic) = &traffic {
            section.card.charts aria-labelledby="traffic-h" data-traffic-url="/dashboard/api/traffic" {
                h2 #traffic-h { "Last hour, per minute" }
                (chart("chart-requests", "Requests", &traffic.minutes.iter().map(|m| m.requests).collect::<Vec<_>>()))
                (chart("chart-tokens", "Tokens", &traffic.minutes.iter().map(|m| m.tokens).collect::<Vec<_>>()))
                (chart("chart-rejections", "Rate-limit rejections", &traffic.minutes.iter().map(|m| m.rejections).collect::<Vec<_>>()))
                p.hint { "Summed over every replica; refreshed every 10 seconds." }
            }
        }
    };
    Ok(page(&viewer, "Status", "Status", body).into_response())
}

/// The charts' data for `dashboard.js`. Needs the CSRF header, so another site cannot read it
/// even where a browser would attach the cookie.
pub(crate) async fn traffic(viewer: Viewer, headers: HeaderMap) -> PageResult {
    if !viewer.csrf_ok(headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok())) {
        return Ok((
            StatusCode::FORBIDDEN,
            Json(json!({"error": "missing CSRF token"})),
        )
            .into_response());
    }
    let report = traffic_report(&viewer).await?;
    let minutes: Vec<_> = report
        .minutes
        .iter()
        .map(|m| {
            json!({
                "minute": m.minute.as_ref().map(|t| t.seconds).unwrap_or(0),
                "requests": m.requests,
                "tokens": m.tokens,
                "rejections": m.rejections,
            })
        })
        .collect();
    Ok(Json(json!({ "minutes": minutes })).into_response())
}

pub(crate) async fn settings(viewer: Viewer) -> Response {
    let body = html! {
        nav aria-label="Settings" {
            ul.cards {
                li.card {
                    h2 { a href="/dashboard/settings/keys" { "API Keys" } }
                    p { "Generate, inspect, limit and revoke the keys clients use." }
                }
                li.card {
                    h2 #sign-ins { "Dashboard sign-ins" }
                    p {
                        "Signed in as " (viewer.name()) " until " (when(viewer.identity.expires_at.as_ref())) ". "
                        @if viewer.is_operator() {
                            "“Sign out everywhere” ends every dashboard session opened with the internal token, in every browser and on every replica, this one included. "
                            "Changing the internal token ends them too."
                        } @else {
                            "“Sign out everywhere” ends every dashboard session opened with this API key, in every browser and on every replica, this one included. "
                            "Revoking the key ends them too."
                        }
                    }
                    form method="post" action="/dashboard/logout/everywhere" {
                        input type="hidden" name="csrf" value=(viewer.identity.csrf_token);
                        button type="submit" { "Sign out everywhere" }
                    }
                }
            }
        }
    };
    page(&viewer, "Settings", "Settings", body).into_response()
}

pub(crate) async fn sessions(viewer: Viewer) -> PageResult {
    let list = viewer
        .core
        .call(
            &viewer.caller,
            proto::ListSessionsRequest {
                page_size: 100,
                page_token: String::new(),
            },
            |channel, request| async move {
                SessionServiceClient::new(channel)
                    .list_sessions(request)
                    .await
            },
        )
        .await?
        .message;
    let body = html! {
        @if viewer.is_operator() {
            p.hint { "Sessions belong to the credential that created them: these are the internal token's. Sign in with a key to see its sessions." }
        }
        @if list.sessions.is_empty() {
            p { "No sessions yet." }
        } @else {
            table {
                caption.sr-only { "Sessions, newest first" }
                thead { tr { th scope="col" { "Session" } th scope="col" { "Model" } th scope="col" { "Messages" } th scope="col" { "Updated" } } }
                tbody {
                    @for s in &list.sessions {
                        tr {
                            td data-label="Session" { a href=(format!("/dashboard/sessions/{}", s.session_id)) { code { (s.session_id) } } }
                            td data-label="Model" { (s.model) }
                            td data-label="Messages" { (s.message_count) }
                            td data-label="Updated" { (when(s.updated_at.as_ref())) }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&viewer, "Sessions", "Sessions", body).into_response())
}

pub(crate) async fn session(viewer: Viewer, Path(id): Path<String>) -> PageResult {
    let messages = viewer
        .core
        .call(
            &viewer.caller,
            proto::ListMessagesRequest {
                session_id: id.clone(),
                page_size: 1000,
                page_token: String::new(),
            },
            |channel, request| async move {
                SessionServiceClient::new(channel)
                    .list_messages(request)
                    .await
            },
        )
        .await?
        .message;
    let body = html! {
        p { "Session " code { (id) } " · " a href="/dashboard/sessions" { "All sessions" } }
        ol.history {
            @for m in &messages.messages {
                li class=(format!("msg {}", m.role)) {
                    span.role { (m.role) }
                    @if !m.tool_call_id.is_empty() {
                        span.call { " result of " code { (m.tool_call_id) } }
                    }
                    @if !m.content.is_empty() || m.tool_calls.is_empty() {
                        div.content { (m.content) }
                    }
                    @for part in m.parts.iter().filter(|p| p.r#type == "image_url") {
                        div.content.call {
                            "image " code { (part.image_url.chars().take(80).collect::<String>()) }
                        }
                    }
                    @for call in &m.tool_calls {
                        div.content.call {
                            "calls " code { (call.name) } " with " code { (call.arguments) }
                            " (" code { (call.id) } ")"
                        }
                    }
                }
            }
        }
    };
    Ok(page(&viewer, "Session history", "Sessions", body).into_response())
}

/// A schedule as a sentence.
fn schedule_words(schedule: Option<&proto::Schedule>) -> String {
    let Some(s) = schedule else {
        return "—".into();
    };
    match s.kind.as_str() {
        "every" => {
            let ms = s.every_ms.unwrap_or(0);
            let unit = |n: i64, one: &str| {
                if n == 1 {
                    format!("every {one}")
                } else {
                    format!("every {n} {one}s")
                }
            };
            if ms % 86_400_000 == 0 {
                unit(ms / 86_400_000, "day")
            } else if ms % 3_600_000 == 0 {
                unit(ms / 3_600_000, "hour")
            } else if ms % 60_000 == 0 {
                unit(ms / 60_000, "minute")
            } else {
                unit(ms / 1000, "second")
            }
        }
        "at" => format!("once, at {}", s.at.clone().unwrap_or_default()),
        "cron" => {
            let expr = s.expr.clone().unwrap_or_default();
            let tz = s.tz.clone().unwrap_or_else(|| "UTC".into());
            let fields: Vec<&str> = expr.split_whitespace().collect();
            match fields.as_slice() {
                [m, h, "*", "*", "*"] if m.parse::<u8>().is_ok() && h.parse::<u8>().is_ok() => {
                    format!("every day at {h:0>2}:{m:0>2} ({tz})")
                }
                [m, "*", "*", "*", "*"] if m.parse::<u8>().is_ok() => {
                    format!("every hour at minute {m} ({tz})")
                }
                ["*", "*", "*", "*", "*"] => "every minute".into(),
                [m, h, "*", "*", dow] if m.parse::<u8>().is_ok() && h.parse::<u8>().is_ok() => {
                    format!("at {h:0>2}:{m:0>2} on weekdays {dow} ({tz})")
                }
                _ => format!("on the cron schedule “{expr}” ({tz})"),
            }
        }
        other => other.to_string(),
    }
}

pub(crate) async fn jobs(
    viewer: Viewer,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult {
    let list =
        viewer
            .core
            .call(
                &viewer.caller,
                proto::ListJobsRequest {},
                |channel, request| async move {
                    CronServiceClient::new(channel).list_jobs(request).await
                },
            )
            .await?
            .message;
    let csrf = &viewer.identity.csrf_token;
    let body = html! {
        (notice(query.get("done").map(String::as_str)))
        @if list.jobs.is_empty() {
            p { "No cron jobs yet. Create them with POST /api/v1/cron/jobs." }
        } @else {
            ul.cards aria-label="Cron jobs" {
                @for job in &list.jobs {
                    @let state = job.state.clone().unwrap_or_default();
                    li.card {
                        h2 { a href=(format!("/dashboard/cron/{}", job.id)) { (job.name) } " "
                             span class=(if job.enabled { "badge ok" } else { "badge disabled" }) { (if job.enabled { "enabled" } else { "disabled" }) } }
                        dl {
                            dt { "Schedule" } dd { (schedule_words(job.schedule.as_ref())) }
                            dt { "Next run" } dd { (when(job.next_run.as_ref())) }
                            dt { "Last run" } dd { (when(state.last_run_at.as_ref())) @if !state.last_status.is_empty() { " (" (state.last_status) ")" } }
                        }
                        div.actions {
                            form method="post" action=(format!("/dashboard/cron/{}/toggle", job.id)) {
                                input type="hidden" name="csrf" value=(csrf);
                                input type="hidden" name="enabled" value=(if job.enabled { "false" } else { "true" });
                                button type="submit" { (if job.enabled { "Disable" } else { "Enable" }) span.sr-only { " " (job.name) } }
                            }
                            form method="post" action=(format!("/dashboard/cron/{}/run", job.id)) {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" { "Run now" span.sr-only { " " (job.name) } }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&viewer, "Cron jobs", "Cron jobs", body).into_response())
}

pub(crate) async fn job(viewer: Viewer, Path(id): Path<String>) -> PageResult {
    let job = viewer
        .core
        .call(&viewer.caller, proto::GetJobRequest { job_id: id.clone() }, |channel, request| async move {
            CronServiceClient::new(channel).get_job(request).await
        })
        .await?
        .message;
    let runs =
        viewer
            .core
            .call(
                &viewer.caller,
                proto::ListRunsRequest {
                    job_id: id,
                    page_size: 50,
                    page_token: String::new(),
                },
                |channel, request| async move {
                    CronServiceClient::new(channel).list_runs(request).await
                },
            )
            .await?
            .message;
    let body = html! {
        p { (job.name) ": " (schedule_words(job.schedule.as_ref())) " · next run " (when(job.next_run.as_ref())) " · " a href="/dashboard/cron" { "All jobs" } }
        @if runs.runs.is_empty() {
            p { "No runs yet." }
        } @else {
            table {
                caption.sr-only { "Run history, newest first" }
                thead { tr { th scope="col" { "Started" } th scope="col" { "Trigger" } th scope="col" { "Status" } th scope="col" { "Duration" } th scope="col" { "Error" } } }
                tbody {
                    @for run in &runs.runs {
                        tr {
                            td data-label="Started" { (when(run.started_at.as_ref())) }
                            td data-label="Trigger" { (run.trigger) }
                            td data-label="Status" { span class=(format!("badge {}", run.status)) { (run.status) } }
                            td data-label="Duration" { @if let Some(ms) = run.duration_ms { (ms) " ms" } }
                            td data-label="Error" { (run.error) }
                        }
                    }
                }
            }
        }
    };
    Ok(page(&viewer, "Run history", "Cron jobs", body).into_response())
}

pub(crate) async fn toggle_job(
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> PageResult {
    if let Err(refused) = viewer.require_csrf(form.get("csrf").map(String::as_str)) {
        return Ok(*refused);
    }
    let enabled = form.get("enabled").map(String::as_str) == Some("true");
    viewer
        .core
        .call(
            &viewer.caller,
            proto::UpdateJobRequest { job_id: id, enabled: Some(enabled), ..Default::default() },
            |channel, request| async move { CronServiceClient::new(channel).update_job(request).await },
        )
        .await?;
    let done = if enabled { "enabled" } else { "disabled" };
    Ok(Redirect::to(&format!("/dashboard/cron?done={done}")).into_response())
}

pub(crate) async fn run_job(
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> PageResult {
    if let Err(refused) = viewer.require_csrf(form.get("csrf").map(String::as_str)) {
        return Ok(*refused);
    }
    viewer
        .core
        .call(&viewer.caller, proto::RunJobRequest { job_id: id }, |channel, request| async move {
            CronServiceClient::new(channel).run_job(request).await
        })
        .await?;
    Ok(Redirect::to("/dashboard/cron?done=ran").into_response())
}

pub(crate) async fn events(viewer: Viewer) -> Response {
    let body = html! {
        p.hint { "System events as they happen (the same stream as GET /api/v1/events)." }
        p #events-state role="status" { "Connecting…" }
        ol #events.events aria-live="polite" aria-label="Events, newest first" data-stream="/dashboard/events/stream" {}
    };
    page(&viewer, "Events", "Events", body).into_response()
}

/// The core's event stream for the signed-in user, as server-sent events.
pub(crate) async fn event_stream(viewer: Viewer) -> PageResult {
    let stream =
        viewer
            .core
            .call(
                &viewer.caller,
                proto::SubscribeRequest {
                    after_id: String::new(),
                },
                |channel, request| async move {
                    EventServiceClient::new(channel).subscribe(request).await
                },
            )
            .await?
            .message;
    let events = stream
        .take_while(|item| std::future::ready(item.is_ok()))
        .filter_map(|item| std::future::ready(item.ok()))
        .map(|event| {
            let data = json!({
                "id": event.id,
                "type": event.r#type,
                "time": when(event.time.as_ref()),
                "text": event.text,
                "jobId": event.job_id,
                "keyId": event.key_id,
            });
            Ok::<_, Infallible>(
                SseEvent::default()
                    .id(event.id.clone())
                    .event("event")
                    .data(data.to_string()),
            )
        });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

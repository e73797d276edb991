//! Usage: spend and tokens over days or weeks, by model and by key, from the usage ledger
//! (`UsageService.GetUsage`), as charts and as tables with the same figures; and the figures as
//! CSV. An operator reads every key (or one); a key holder reads its own key.

use std::collections::{BTreeMap, HashMap};

use axum::{
    extract::Query,
    http::{HeaderValue, header},
    response::IntoResponse,
};
use chrono::{Datelike as _, NaiveDate};
use maud::{Markup, html};
use serde::Deserialize;

use super::{
    Viewer,
    charts::{Axes, Column, bar_chart, column_chart, compact},
    money::{dollars, thousands},
    pages::{PageError, PageResult, page},
};
use crate::proto::{
    self, key_service_client::KeyServiceClient, usage_service_client::UsageServiceClient,
};
use crate::routes;

/// What the page (and the CSV) is asked for; every field may be empty.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct UsageQuery {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    /// "day" (the default) or "week", for the charts over time.
    #[serde(default)]
    per: String,
    /// Only this key (operators).
    #[serde(default)]
    key: String,
    /// For the CSV: "day", "model" or "key".
    #[serde(default)]
    group_by: String,
}

impl UsageQuery {
    fn weekly(&self) -> bool {
        self.per == "week"
    }

    /// The query string for the same range and key, grouped by `group_by` (for CSV links).
    fn csv_link(&self, report: &proto::UsageReport, group_by: &str) -> String {
        let mut link = format!(
            "/dashboard/usage.csv?from={}&to={}&group_by={group_by}",
            report.from, report.to
        );
        if !self.key.is_empty() {
            link.push_str("&key=");
            link.push_str(&url_escape(&self.key));
        }
        link
    }
}

/// Percent-encodes everything but unreserved characters (a key id in a link).
fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn usage(
    viewer: &Viewer,
    query: &UsageQuery,
    group_by: &str,
) -> Result<proto::UsageReport, PageError> {
    let request = proto::GetUsageRequest {
        from: query.from.trim().to_string(),
        to: query.to.trim().to_string(),
        group_by: group_by.to_string(),
        // A key holder always reads its own key; the core ignores nothing, so send none.
        key_id: if viewer.is_operator() {
            query.key.clone()
        } else {
            String::new()
        },
    };
    Ok(viewer
        .core
        .call(&viewer.caller, request, |channel, request| async move {
            UsageServiceClient::new(channel).get_usage(request).await
        })
        .await?
        .message)
}

/// Every key's name and prefix, by id (operators; a key holder knows only its own).
async fn key_names(viewer: &Viewer) -> Result<HashMap<String, (String, String)>, PageError> {
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
    Ok(keys
        .into_iter()
        .map(|k| (k.id, (k.name, k.prefix)))
        .collect())
}

const SPEND: Axes = Axes {
    x: "Date (UTC)",
    y: "US dollars",
    value: dollars,
    tick: dollars,
    empty_step: 10_000,
};

const TOKENS: Axes = Axes {
    x: "Date (UTC)",
    y: "Tokens",
    value: thousands,
    tick: compact,
    empty_step: 1,
};

/// One line of the table over time: a day, or a week (named by its Monday).
struct Period {
    /// "2026-12-07"; for a week, its first day in the range.
    first: String,
    /// The last day in the range, for a week.
    last: String,
    figures: proto::UsageFigures,
}

fn add(into: &mut proto::UsageFigures, figures: &proto::UsageFigures) {
    into.requests += figures.requests;
    into.errors += figures.errors;
    into.prompt_tokens += figures.prompt_tokens;
    into.completion_tokens += figures.completion_tokens;
    into.cached_tokens += figures.cached_tokens;
    into.cost_micros += figures.cost_micros;
}

/// The report's days, or its weeks (from Monday; the first and last clipped to the range).
fn periods(report: &proto::UsageReport, weekly: bool) -> Vec<Period> {
    let mut out: Vec<Period> = Vec::new();
    let mut weeks: BTreeMap<NaiveDate, usize> = BTreeMap::new();
    for row in &report.rows {
        let figures = row.figures.unwrap_or_default();
        let day = NaiveDate::parse_from_str(&row.day, "%Y-%m-%d").ok();
        match (weekly, day) {
            (true, Some(day)) => {
                let monday =
                    day - chrono::Days::new(u64::from(day.weekday().num_days_from_monday()));
                let at = *weeks.entry(monday).or_insert_with(|| {
                    out.push(Period {
                        first: row.day.clone(),
                        last: row.day.clone(),
                        figures: proto::UsageFigures::default(),
                    });
                    out.len() - 1
                });
                out[at].last = row.day.clone();
                add(&mut out[at].figures, &figures);
            }
            _ => out.push(Period {
                first: row.day.clone(),
                last: row.day.clone(),
                figures,
            }),
        }
    }
    out
}

/// Named rows' spend, largest first, for a bar chart.
fn by_spend<'a>(rows: impl Iterator<Item = (String, &'a proto::UsageRow)>) -> Vec<(String, u64)> {
    let mut spend: Vec<(String, u64)> = rows
        .map(|(name, row)| (name, row.figures.map(|f| f.cost_micros).unwrap_or(0)))
        .collect();
    spend.sort_by_key(|(_, micros)| std::cmp::Reverse(*micros));
    spend
}

/// "Dec 7" for a tick under a column.
fn short_date(day: &str) -> String {
    NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .map(|d| d.format("%b %-d").to_string())
        .unwrap_or_else(|_| day.to_string())
}

fn period_name(period: &Period, weekly: bool) -> String {
    if weekly && period.first != period.last {
        format!("{} – {}", period.first, period.last)
    } else if weekly {
        format!("week of {}", period.first)
    } else {
        period.first.clone()
    }
}

/// The figures' columns, in one order for every table.
fn figure_cells(f: &proto::UsageFigures) -> Markup {
    html! {
        td.num data-label="Requests" { (thousands(f.requests)) }
        td.num data-label="Errors" { (thousands(f.errors)) }
        td.num data-label="Prompt tokens" { (thousands(f.prompt_tokens)) }
        td.num data-label="Completion tokens" { (thousands(f.completion_tokens)) }
        td.num data-label="Cached tokens" { (thousands(f.cached_tokens)) }
        td.num data-label="Cost" { (dollars(f.cost_micros)) }
    }
}

fn figure_heads() -> Markup {
    html! {
        th.num scope="col" { "Requests" }
        th.num scope="col" { "Errors" }
        th.num scope="col" { "Prompt tokens" }
        th.num scope="col" { "Completion tokens" }
        th.num scope="col" { "Cached tokens" }
        th.num scope="col" { "Cost" }
    }
}

/// A table of named rows with their figures and the report's totals.
fn figure_table(
    id: &str,
    caption: &str,
    first: &str,
    rows: &[(Markup, proto::UsageFigures)],
    totals: &proto::UsageFigures,
) -> Markup {
    html! {
        div.table-scroll {
            table.figures #(id) {
                caption { (caption) }
                thead { tr { th scope="col" { (first) } (figure_heads()) } }
                tbody {
                    @for (name, figures) in rows {
                        tr { th scope="row" data-label=(first) { (name) } (figure_cells(figures)) }
                    }
                }
                tfoot { tr { th scope="row" data-label=(first) { "Total" } (figure_cells(totals)) } }
            }
        }
    }
}

fn range_form(
    viewer: &Viewer,
    query: &UsageQuery,
    report: &proto::UsageReport,
    keys: &HashMap<String, (String, String)>,
) -> Markup {
    let mut choices: Vec<(&String, &(String, String))> = keys.iter().collect();
    choices.sort_by(|a, b| a.1.0.cmp(&b.1.0));
    html! {
        form.card.range method="get" action="/dashboard/usage" aria-label="Date range" {
            div.field {
                label for="from" { "From" }
                input #from type="date" name="from" value=(report.from) required;
            }
            div.field {
                label for="to" { "To" }
                input #to type="date" name="to" value=(report.to) required;
            }
            div.field {
                label for="per" { "Over time, per" }
                select #per name="per" {
                    option value="day" selected[!query.weekly()] { "Day" }
                    option value="week" selected[query.weekly()] { "Week" }
                }
            }
            @if viewer.is_operator() {
                div.field {
                    label for="key" { "Key" }
                    select #key name="key" {
                        option value="" selected[query.key.is_empty()] { "All keys" }
                        @for (id, (name, prefix)) in &choices {
                            option value=(id) selected[query.key == **id] { (name) " (" (prefix) "…)" }
                        }
                    }
                }
            }
            div.field { button type="submit" { "Show" } }
        }
    }
}

pub(crate) async fn view(viewer: Viewer, Query(query): Query<UsageQuery>) -> PageResult {
    let by_day = usage(&viewer, &query, "day").await?;
    // The other groupings read the very days the first report settled on.
    let settled = UsageQuery {
        from: by_day.from.clone(),
        to: by_day.to.clone(),
        per: query.per.clone(),
        key: query.key.clone(),
        group_by: String::new(),
    };
    let by_model = usage(&viewer, &settled, "model").await?;
    let per_key = viewer.is_operator() && query.key.is_empty();
    let by_key = if per_key {
        Some(usage(&viewer, &settled, "key").await?)
    } else {
        None
    };
    let keys = key_names(&viewer).await?;
    let key_label = |id: &str| match keys.get(id) {
        Some((name, prefix)) => format!("{name} ({prefix}…)"),
        None if id == "internal" => "the internal token".to_string(),
        None => id.to_string(),
    };
    let totals = by_day.totals.unwrap_or_default();
    let weekly = query.weekly();
    let periods = periods(&by_day, weekly);
    let unit = if weekly { "week" } else { "day" };
    let ticks: Vec<String> = periods.iter().map(|p| short_date(&p.first)).collect();
    let spend_columns: Vec<Column> = periods
        .iter()
        .zip(&ticks)
        .map(|(p, tick)| Column {
            tick: tick.clone(),
            name: period_name(p, weekly),
            values: vec![p.figures.cost_micros],
        })
        .collect();
    let token_columns: Vec<Column> = periods
        .iter()
        .zip(&ticks)
        .map(|(p, tick)| Column {
            tick: tick.clone(),
            name: period_name(p, weekly),
            values: vec![p.figures.prompt_tokens, p.figures.completion_tokens],
        })
        .collect();
    let over_time: Vec<(Markup, proto::UsageFigures)> = periods
        .iter()
        .map(|p| (html! { (period_name(p, weekly)) }, p.figures))
        .collect();
    let models: Vec<(Markup, proto::UsageFigures)> = by_model
        .rows
        .iter()
        .map(|r| {
            (
                html! {
                    (r.model)
                    // "zai/glm-4.7-flash" names its provider already.
                    @if !r.provider.is_empty() && !r.model.starts_with(&format!("{}/", r.provider)) {
                        span.hint { " (" (r.provider) ")" }
                    }
                },
                r.figures.unwrap_or_default(),
            )
        })
        .collect();
    let model_spend = by_spend(by_model.rows.iter().map(|r| (r.model.clone(), r)));
    let subject = if viewer.is_operator() {
        if query.key.is_empty() {
            "every key".to_string()
        } else {
            format!("key {}", key_label(&query.key))
        }
    } else {
        viewer.name()
    };
    let body = html! {
        (range_form(&viewer, &query, &by_day, &keys))
        p.hint {
            "Model calls of " (subject) " from " (by_day.from) " to " (by_day.to) " (UTC days), priced at each model's configured prices. "
            "Download as CSV: "
            a href=(query.csv_link(&by_day, "day")) download { "per day" } ", "
            a href=(query.csv_link(&by_day, "model")) download { "per model" }
            @if per_key { ", " a href=(query.csv_link(&by_day, "key")) download { "per key" } }
            "."
        }
        section.card aria-labelledby="totals-h" {
            h2 #totals-h { "In all" }
            dl.grid.totals {
                dt { "Cost" } dd #total-cost { (dollars(totals.cost_micros)) }
                dt { "Requests" } dd { (thousands(totals.requests)) @if totals.errors > 0 { " (" (thousands(totals.errors)) " failed)" } }
                dt { "Prompt tokens" } dd { (thousands(totals.prompt_tokens)) @if totals.cached_tokens > 0 { " (" (thousands(totals.cached_tokens)) " cached)" } }
                dt { "Completion tokens" } dd { (thousands(totals.completion_tokens)) }
            }
        }
        section.card aria-labelledby="time-h" {
            h2 #time-h { "Per " (unit) }
            div.chart-grid {
                (column_chart("chart-spend", &format!("Spend per {unit}"), &SPEND, &["Cost"], &spend_columns))
                (column_chart("chart-usage-tokens", &format!("Tokens per {unit}"), &TOKENS, &["Prompt", "Completion"], &token_columns))
            }
            (figure_table("table-time", &format!("Figures per {unit}"), if weekly { "Week" } else { "Day" }, &over_time, &totals))
        }
        section.card aria-labelledby="model-h" {
            h2 #model-h { "By model" }
            @if model_spend.is_empty() {
                p { "No model calls in these days." }
            } @else {
                (bar_chart("chart-models", "Spend by model", &Axes { x: "US dollars", ..SPEND }, &model_spend))
                (figure_table("table-models", "Figures by model", "Model", &models, &by_model.totals.unwrap_or_default()))
            }
        }
        @if let Some(by_key) = &by_key {
            @let rows: Vec<(Markup, proto::UsageFigures)> = by_key.rows.iter().map(|r| (html! { (key_label(&r.key_id)) }, r.figures.unwrap_or_default())).collect();
            @let spend = by_spend(by_key.rows.iter().map(|r| (keys.get(&r.key_id).map(|k| k.0.clone()).unwrap_or_else(|| r.key_id.clone()), r)));
            section.card aria-labelledby="key-h" {
                h2 #key-h { "By key" }
                @if spend.is_empty() {
                    p { "No model calls in these days." }
                } @else {
                    (bar_chart("chart-keys", "Spend by key", &Axes { x: "US dollars", ..SPEND }, &spend))
                    (figure_table("table-keys", "Figures by key", "Key", &rows, &by_key.totals.unwrap_or_default()))
                }
            }
        }
    };
    Ok(page(&viewer, "Usage", "Usage", body).into_response())
}

/// The figures as a CSV download, exactly as `GET /api/v1/usage` gives them with `Accept:
/// text/csv`. The API answers only bearer credentials, never the dashboard's cookie, so the
/// page cannot link to it; this route makes the same call as the signed-in user.
pub(crate) async fn csv(viewer: Viewer, Query(query): Query<UsageQuery>) -> PageResult {
    let group_by = match query.group_by.as_str() {
        "model" | "key" => query.group_by.as_str(),
        _ => "day",
    };
    let report = usage(&viewer, &query, group_by).await?;
    let file = format!(
        "attachment; filename=\"usage-{}-{}-by-{group_by}.csv\"",
        report.from, report.to
    );
    let disposition = HeaderValue::from_str(&file)
        .unwrap_or_else(|_| HeaderValue::from_static("attachment; filename=\"usage.csv\""));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/csv; charset=utf-8"),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        routes::usage::csv(&report.into()),
    )
        .into_response())
}

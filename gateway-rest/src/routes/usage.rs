//! `GET /api/v1/usage` (translated to `UsageService.GetUsage`): the usage ledger as the
//! envelope's JSON, or as CSV for `Accept: text/csv` (docs/usage.md).

use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{
    core_client::CoreClient,
    envelope::{Enveloped, SuccessEnvelope},
    error::ApiError,
    extract::QueryParams,
    headers::Caller,
    openapi::responses::*,
    proto::{self, usage_service_client::UsageServiceClient},
};

pub(crate) const TAG: &str = "usage";

/// Which days, how grouped, whose.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub(crate) struct UsageQuery {
    /// First day, inclusive: an RFC 3339 date (`2026-12-01`) or date-time (read as its UTC
    /// day). Default: 29 days before `to` (30 days in all); at most 400 days before it.
    #[param(example = "2026-12-01")]
    from: Option<String>,
    /// Last day, inclusive, like `from`. Default: today (UTC).
    #[param(example = "2026-12-07")]
    to: Option<String>,
    /// `day` (default: one row per day of the range, days without calls included), `model`
    /// (one per model and provider) or `key` (one per key).
    #[param(example = "model")]
    group_by: Option<String>,
    /// Only this key. An API key always reads its own (naming another is FORBIDDEN); the
    /// internal token reads every key unless it names one (`internal` names its own calls).
    key_id: Option<String>,
}

/// Figures summed over some model calls. Costs are integer micro-dollars (US$0.000001).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UsageFigures {
    /// Model calls.
    #[schema(example = 42)]
    requests: u64,
    /// Calls that failed (counted in `requests` too).
    #[schema(example = 1)]
    errors: u64,
    #[schema(example = 52000)]
    prompt_tokens: u64,
    #[schema(example = 8100)]
    completion_tokens: u64,
    /// Prompt tokens the provider reported as read from its cache (part of `promptTokens`).
    #[schema(example = 12000)]
    cached_tokens: u64,
    /// What the calls cost, in micro-dollars: each call rounded up to the micro-dollar once.
    #[schema(example = 10442)]
    cost_micros: u64,
}

/// One row: the grouping's fields (`day`, or `model` and `provider`, or `keyId`) and figures.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UsageRow {
    /// With `groupBy=day`: the UTC day.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "2026-12-07")]
    day: Option<String>,
    /// With `groupBy=model`: the model that answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "zai/glm-4.7-flash")]
    model: Option<String>,
    /// With `groupBy=model`: the provider that served it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "zai")]
    provider: Option<String>,
    /// With `groupBy=key`: the key (`internal` for calls with the internal token).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "key_01J...")]
    key_id: Option<String>,
    #[serde(flatten)]
    figures: UsageFigures,
}

/// The usage of the caller's key (or, for the internal token, of every key) over a range of days.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UsageReport {
    /// First day read (UTC, inclusive).
    #[schema(example = "2026-12-01")]
    from: String,
    /// Last day read (UTC, inclusive).
    #[schema(example = "2026-12-07")]
    to: String,
    /// `day`, `model` or `key`.
    #[schema(example = "day")]
    group_by: String,
    /// The exact sum of the rows.
    totals: UsageFigures,
    rows: Vec<UsageRow>,
}

impl From<proto::UsageFigures> for UsageFigures {
    fn from(figures: proto::UsageFigures) -> Self {
        Self {
            requests: figures.requests,
            errors: figures.errors,
            prompt_tokens: figures.prompt_tokens,
            completion_tokens: figures.completion_tokens,
            cached_tokens: figures.cached_tokens,
            cost_micros: figures.cost_micros,
        }
    }
}

fn present(text: String) -> Option<String> {
    Some(text).filter(|t| !t.is_empty())
}

impl From<proto::UsageReport> for UsageReport {
    fn from(report: proto::UsageReport) -> Self {
        let by = report.group_by.as_str();
        Self {
            rows: report
                .rows
                .into_iter()
                .map(|row| UsageRow {
                    day: present(row.day).filter(|_| by == "day"),
                    model: present(row.model).filter(|_| by == "model"),
                    provider: Some(row.provider).filter(|_| by == "model"),
                    key_id: present(row.key_id).filter(|_| by == "key"),
                    figures: row.figures.unwrap_or_default().into(),
                })
                .collect(),
            from: report.from,
            to: report.to,
            totals: report.totals.unwrap_or_default().into(),
            group_by: report.group_by,
        }
    }
}

/// Whether the client's `Accept` asks for CSV: it names `text/csv`, with a quality above
/// `application/json`'s (or equal, and listed first).
fn accepts_csv(headers: &HeaderMap) -> bool {
    let mut best: Option<(f32, bool)> = None;
    for range in headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
    {
        let mut parts = range.split(';');
        let kind = parts.next().unwrap_or_default().trim();
        let csv = kind.eq_ignore_ascii_case("text/csv");
        if !csv && !kind.eq_ignore_ascii_case("application/json") {
            continue;
        }
        let quality = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if quality > 0.0 && best.is_none_or(|(q, _)| quality > q) {
            best = Some((quality, csv));
        }
    }
    best.is_some_and(|(_, csv)| csv)
}

/// One CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

const FIGURE_COLUMNS: &str =
    "requests,errors,promptTokens,completionTokens,cachedTokens,costMicros";

/// The report as CSV: a header line naming the columns (the grouping's, then the figures, with
/// the JSON's names), then one line per row, CRLF-terminated. No totals line, so summing a
/// column gives the totals.
pub(crate) fn csv(report: &UsageReport) -> String {
    let group_columns = match report.group_by.as_str() {
        "model" => "model,provider",
        "key" => "keyId",
        _ => "day",
    };
    let mut out = format!("{group_columns},{FIGURE_COLUMNS}\r\n");
    for row in &report.rows {
        let group = match report.group_by.as_str() {
            "model" => format!(
                "{},{}",
                csv_field(row.model.as_deref().unwrap_or_default()),
                csv_field(row.provider.as_deref().unwrap_or_default())
            ),
            "key" => csv_field(row.key_id.as_deref().unwrap_or_default()),
            _ => csv_field(row.day.as_deref().unwrap_or_default()),
        };
        let f = &row.figures;
        out.push_str(&format!(
            "{group},{},{},{},{},{},{}\r\n",
            f.requests,
            f.errors,
            f.prompt_tokens,
            f.completion_tokens,
            f.cached_tokens,
            f.cost_micros
        ));
    }
    out
}

/// Model calls, tokens and cost in micro-dollars, per day, model or key.
#[utoipa::path(
    get,
    path = "/api/v1/usage",
    tag = TAG,
    params(
        UsageQuery,
        ("Accept" = Option<String>, Header, description = "`text/csv` answers the rows as CSV (header line, one line per row, no totals line); otherwise the JSON envelope"),
    ),
    responses(
        (status = 200, description = "The usage report: the envelope, or with `Accept: text/csv` a CSV table of its rows", content(
            (SuccessEnvelope<UsageReport> = "application/json"),
            (String = "text/csv", example = "model,provider,requests,errors,promptTokens,completionTokens,cachedTokens,costMicros\r\nzai/glm-4.7-flash,zai,42,1,52000,8100,12000,10442\r\n"),
        )),
        (status = 400, response = InvalidRequest),
        (status = 404, response = NotFound),
        CallErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn get_usage(
    State(core): State<CoreClient>,
    caller: Caller,
    headers: HeaderMap,
    QueryParams(query): QueryParams<UsageQuery>,
) -> Result<Response, ApiError> {
    let request = proto::GetUsageRequest {
        from: query.from.unwrap_or_default(),
        to: query.to.unwrap_or_default(),
        group_by: query.group_by.unwrap_or_default(),
        key_id: query.key_id.unwrap_or_default(),
    };
    let reply = core
        .call(&caller, request, |channel, request| async move {
            UsageServiceClient::new(channel).get_usage(request).await
        })
        .await?;
    let report = UsageReport::from(reply.message);
    if !accepts_csv(&headers) {
        return Ok(Enveloped::ok(report)
            .with_headers(reply.headers)
            .into_response());
    }
    let name = format!(
        "attachment; filename=\"usage-{}-{}.csv\"",
        report.from, report.to
    );
    let mut response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        )],
        csv(&report),
    )
        .into_response();
    if let Ok(disposition) = HeaderValue::from_str(&name) {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, disposition);
    }
    response.headers_mut().extend(reply.headers);
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(n: u64) -> UsageFigures {
        UsageFigures {
            requests: n,
            errors: 0,
            prompt_tokens: n * 10,
            completion_tokens: n * 2,
            cached_tokens: 0,
            cost_micros: n * 7,
        }
    }

    #[test]
    fn csv_has_a_header_and_one_line_per_row_with_awkward_names_quoted() {
        let report = UsageReport {
            from: "2026-12-01".into(),
            to: "2026-12-07".into(),
            group_by: "model".into(),
            totals: figures(3),
            rows: vec![
                UsageRow {
                    day: None,
                    model: Some("local/a,b".into()),
                    provider: Some("say \"hi\"".into()),
                    key_id: None,
                    figures: figures(1),
                },
                UsageRow {
                    day: None,
                    model: Some("zai/glm-4.7-flash".into()),
                    provider: Some("zai".into()),
                    key_id: None,
                    figures: figures(2),
                },
            ],
        };
        assert_eq!(
            csv(&report),
            "model,provider,requests,errors,promptTokens,completionTokens,cachedTokens,costMicros\r\n\
             \"local/a,b\",\"say \"\"hi\"\"\",1,0,10,2,0,7\r\n\
             zai/glm-4.7-flash,zai,2,0,20,4,0,14\r\n"
        );
    }

    #[test]
    fn csv_is_chosen_by_accept() {
        let mut headers = HeaderMap::new();
        assert!(!accepts_csv(&headers));
        for (accept, csv) in [
            ("text/csv", true),
            ("text/csv; charset=utf-8", true),
            ("application/json, text/csv;q=0.5", false),
            ("application/json;q=0.5, text/csv", true),
            ("text/csv, application/json", true),
            ("*/*", false),
        ] {
            headers.insert(header::ACCEPT, HeaderValue::from_static(accept));
            assert_eq!(accepts_csv(&headers), csv, "{accept}");
        }
    }
}

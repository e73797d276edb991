//! `/api/v1/events`: system events as server-sent events, translated from `EventService.Subscribe`.
//! Each SSE `id:` is the event's stream id: a client that reconnects with `Last-Event-ID` (or
//! `?after=`) gets every event it missed that the gateway still keeps.

use std::convert::Infallible;

use axum::{
    extract::State,
    http::HeaderMap,
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use futures::{Stream, StreamExt as _};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{
    core_client::CoreClient,
    envelope::ErrorObject,
    error::{ApiError, code_name},
    extract::QueryParams,
    headers::Caller,
    openapi::responses::*,
    proto::{self, ErrorCode, event_service_client::EventServiceClient},
    timestamp,
};

pub(crate) const TAG: &str = "events";

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// Resume after this event id (as `Last-Event-ID` does; the header wins). `0` replays every
    /// event still kept; absent means only new events.
    after: Option<String>,
}

/// One event, the `data:` of an SSE message (its `event:` is the type, its `id:` the id).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EventData {
    #[schema(example = "1771113600000-0")]
    id: String,
    /// "system.event", "cron.job_failed", "key.revoked" or "replica.draining".
    #[serde(rename = "type")]
    #[schema(example = "system.event")]
    kind: String,
    #[schema(value_type = Option<String>, format = DateTime, example = "2026-02-15T00:00:00Z")]
    time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "Running daily backup")]
    text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replica: Option<String>,
}

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

impl From<proto::Event> for EventData {
    fn from(event: proto::Event) -> Self {
        Self {
            time: timestamp::from_proto(event.time.as_ref()),
            id: event.id,
            kind: event.r#type,
            text: non_empty(event.text),
            job_id: non_empty(event.job_id),
            run_id: non_empty(event.run_id),
            key_id: non_empty(event.key_id),
            replica: non_empty(event.replica),
        }
    }
}

fn sse_event(item: Result<proto::Event, tonic::Status>) -> SseEvent {
    match item {
        Ok(event) => {
            let id = event.id.clone();
            let kind = event.r#type.clone();
            let data = EventData::from(event);
            SseEvent::default()
                .id(id)
                .event(kind)
                .json_data(&data)
                .unwrap_or_else(|_| SseEvent::default().comment("unencodable event"))
        }
        Err(status) => {
            // The stream ends after this, with the envelope's `error` object. Cut short (the
            // store or the core away), the client reconnects with its Last-Event-ID; ended by
            // the core for a reason (a key revoked meanwhile), the core's details say what to do.
            let error = ApiError::from(status);
            let details = match error.code {
                ErrorCode::Unavailable | ErrorCode::InternalError => {
                    "The event stream was interrupted; reconnect with the last id you received as Last-Event-ID".to_owned()
                }
                _ => error.details.clone(),
            };
            let object = ErrorObject {
                code: code_name(error.code).to_owned(),
                retry_after: error.rendered_retry_after(),
                quota: error.quota().cloned(),
                resets_at: error.budget().map(|b| b.resets_at.clone()),
                budget: error.budget().cloned(),
                message: error.message,
                details,
            };
            SseEvent::default()
                .event("error")
                .json_data(&object)
                .unwrap_or_else(|_| SseEvent::default().event("error").data("{}"))
        }
    }
}

/// Subscribe to system events (server-sent events).
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = TAG,
    params(
        EventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "The id of the last event received; the stream resumes after it"),
    ),
    responses(
        (status = 200, description = "An endless `text/event-stream`: `id:` the event id, `event:` its type, `data:` the event as JSON", content_type = "text/event-stream", body = EventData),
        (status = 400, response = InvalidRequest),
        CallErrors,
    ),
    security(("bearer" = []))
)]
pub(crate) async fn subscribe(
    State(core): State<CoreClient>,
    caller: Caller,
    headers: HeaderMap,
    QueryParams(query): QueryParams<EventsQuery>,
) -> Result<Response, ApiError> {
    let after_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(query.after)
        .unwrap_or_default();
    let reply = core
        .call(
            &caller,
            proto::SubscribeRequest { after_id },
            |channel, request| async move {
                EventServiceClient::new(channel).subscribe(request).await
            },
        )
        .await?;
    let stream: std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send>> =
        Box::pin(reply.message.map(|item| Ok(sse_event(item))));
    Ok((
        reply.headers,
        Sse::new(stream).keep_alive(KeepAlive::default()),
    )
        .into_response())
}

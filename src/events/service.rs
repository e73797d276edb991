//! `EventService`: the events a caller may see, as a server stream resumable from the last id
//! it saw, for as long as the caller's key holds.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use super::{Event, EventBus, EventId};
use crate::auth::{KEY_RECHECK_INTERVAL, Principal};
use crate::error::{ApiError, ErrorCode};
use crate::front_door::{FrontDoor, Scope};
use crate::limits::{CapKind, Charge, Leased};
use crate::metadata::respond;
use crate::proto::{self, event_service_server::EventService};
use crate::store::KeyRecord;

/// `EventService`: the events a caller may see, as a server stream.
pub(crate) struct Events {
    door: Arc<FrontDoor>,
    bus: EventBus,
}

impl Events {
    pub(crate) fn new(door: Arc<FrontDoor>, bus: EventBus) -> Self {
        Self { door, bus }
    }
}

fn event_to_proto(event: &Event) -> proto::Event {
    proto::Event {
        id: event.id.to_string(),
        r#type: event.kind.clone(),
        time: Some(prost_types::Timestamp {
            seconds: event.time_ms.div_euclid(1000),
            nanos: (event.time_ms.rem_euclid(1000) * 1_000_000) as i32,
        }),
        text: event.text.clone(),
        job_id: event.job_id.clone(),
        run_id: event.run_id.clone(),
        key_id: event.key_id.clone(),
        replica: event.replica.clone(),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::Event, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl EventService for Events {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<proto::SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let principal = self.door.authorize(&request, Scope::Named("cron")).await?;
        let raw = request.get_ref().after_id.trim();
        let after = match raw {
            "" => None,
            raw => Some(raw.parse::<EventId>().map_err(|()| {
                ApiError::invalid_field(
                    "afterId",
                    "Invalid event id",
                    "The field 'afterId' must be an event id such as 1771106400000-0 (or 0 for every event kept)",
                )
            })?),
        };
        if self.door.is_draining() {
            return Err(ApiError::unavailable(
                "This replica is draining; subscribe again (another replica will answer) with the last event id you saw",
            )
            .into());
        }
        // Held (and counted against the key's cap) for as long as the subscriber stays.
        let lease = self
            .door
            .open_stream(&principal, CapKind::Subscriptions)
            .await?;
        let admission = self.door.admit(&principal, Charge::default()).await?;
        let revoked = match &principal {
            Principal::Key(key) => Some(revocation(self.door.clone(), key.clone())),
            Principal::Internal => None,
        };
        let events = self.bus.subscribe(principal, after).map(|item| match item {
            Ok(event) => Ok(event_to_proto(&event)),
            Err(err) => Err(Status::from(ApiError::from(err))),
        });
        let stream = UntilRevoked {
            events: Box::pin(events),
            revoked,
            ended: false,
        };
        let stream = Leased::new(stream, lease);
        Ok(respond(Box::pin(stream) as EventStream, &admission))
    }
}

type Revocation = Pin<Box<dyn Future<Output = ApiError> + Send>>;

/// Resolves, with the error that ends the subscription, once `key` no longer holds (revoked or
/// deleted, on any replica): checked every [`KEY_RECHECK_INTERVAL`] through the
/// authenticator's cache. A store that cannot answer ends nothing; the stream itself reports
/// a store that stays away.
fn revocation(door: Arc<FrontDoor>, key: Arc<KeyRecord>) -> Revocation {
    Box::pin(async move {
        let start = tokio::time::Instant::now() + KEY_RECHECK_INTERVAL;
        let mut every = tokio::time::interval_at(start, KEY_RECHECK_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match door.auth().still_valid(&key).await {
                Err(error) if error.code == ErrorCode::Unauthorized => {
                    tracing::info!(key = %key.id, "event subscription ended: its key no longer holds");
                    return ApiError::new(
                        ErrorCode::Unauthorized,
                        "API key revoked",
                        "This API key was revoked while the event stream was open, so the stream has ended; subscribe again with a valid key (generate one in the dashboard, Settings → API Keys)",
                    );
                }
                _ => {}
            }
        }
    })
}

/// A key holder's events, ended by its key's revocation: the error is the stream's last item.
/// The check runs on its own timer, never per event: an event costs one poll of that timer.
struct UntilRevoked<S> {
    events: S,
    /// `None` for the internal token, which is not revoked.
    revoked: Option<Revocation>,
    ended: bool,
}

impl<S> Stream for UntilRevoked<S>
where
    S: Stream<Item = Result<proto::Event, Status>> + Unpin,
{
    type Item = Result<proto::Event, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(revoked) = self.revoked.as_mut()
            && let Poll::Ready(error) = revoked.as_mut().poll(cx)
        {
            self.ended = true;
            self.revoked = None;
            return Poll::Ready(Some(Err(error.into())));
        }
        let next = self.events.poll_next_unpin(cx);
        if matches!(next, Poll::Ready(None)) {
            self.ended = true;
        }
        next
    }
}

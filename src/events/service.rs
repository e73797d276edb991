//! `EventService`: the events a caller may see, as a server stream resumable from the last id
//! it saw.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use super::{Event, EventBus, EventId};
use crate::error::ApiError;
use crate::front_door::{FrontDoor, Scope};
use crate::limits::{CapKind, Charge, Leased};
use crate::metadata::respond;
use crate::proto::{self, event_service_server::EventService};

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
        let stream = self.bus.subscribe(principal, after).map(|item| match item {
            Ok(event) => Ok(event_to_proto(&event)),
            Err(err) => Err(Status::from(ApiError::from(err))),
        });
        let stream = Leased::new(Box::pin(stream), lease);
        Ok(respond(Box::pin(stream) as EventStream, &admission))
    }
}

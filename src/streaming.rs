//! A streamed answer told to its caller: the one tail every streamed call shares (a session's
//! streamed send, a streamed completion). The answer runs in a task of its own, to its end, even
//! if the caller leaves (before or after the first piece), so whatever it is stored in gets it
//! whole; the call answers once the model's first chunk has arrived, with the caller's
//! rate-limit figures.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Response, Status};

use crate::error::{ApiError, ApiResult};
use crate::inference::{Answer, Streamed};
use crate::limits::{Leased, StreamLease};
use crate::metadata::{mark_simulated, respond};
use crate::proto;
use crate::providers::Model;

/// Events of a streamed reply in flight to the caller.
const STREAM_BUFFER: usize = 16;

/// The stream of events a streamed call answers with, holding its cap's lease.
pub(crate) type EventStream<E> = Leased<ReceiverStream<Result<E, Status>>>;

/// One streamed answer: how it is asked for, how its events look, and where it ends up.
pub(crate) trait StreamedAnswer: Send + 'static {
    /// What the stream carries.
    type Event: Send + 'static;

    /// Asks the model. On failure the answer has given back whatever it held (a session's
    /// lock): the error is the call's.
    fn open(&mut self) -> impl Future<Output = ApiResult<Streamed>> + Send;

    /// The event sent before any piece of the answer, if the stream has one.
    fn started(&mut self, _model: &Model) -> Option<Self::Event> {
        None
    }

    /// The event carrying one piece of the answer.
    fn delta(delta: proto::Delta) -> Self::Event;

    /// Keeps the whole answer (or, when it broke off, gives back what the answer held) and
    /// returns the stream's last event.
    fn finish(
        self,
        answer: ApiResult<Answer>,
    ) -> impl Future<Output = ApiResult<Self::Event>> + Send;
}

/// Runs `answer` in a task of its own and answers the call with its events.
pub(crate) async fn stream<A: StreamedAnswer>(
    mut answer: A,
    lease: Option<StreamLease>,
) -> Result<Response<EventStream<A::Event>>, Status> {
    let (events, stream) = mpsc::channel(STREAM_BUFFER);
    let (opened, opening) = oneshot::channel();
    // The task keeps the call's request id, which errors quote.
    tokio::spawn(crate::observe::carrying_request_id(async move {
        let streamed = match answer.open().await {
            Ok(streamed) => streamed,
            Err(error) => {
                let _ = opened.send(Err(error));
                return;
            }
        };
        if let Some(first) = answer.started(streamed.model()) {
            // The buffer is empty: the first event always fits.
            let _ = events.try_send(Ok(first));
        }
        let _ = opened.send(Ok((
            streamed.admission().clone(),
            streamed.model().provider.simulated(),
        )));
        let relayed = streamed.relay(&events, A::delta).await;
        let last = answer.finish(relayed).await.map_err(Status::from);
        let _ = events.send(last).await;
    }));
    let (admission, simulated) = opening.await.map_err(|_| ApiError::internal())??;
    let response = respond(Leased::new(ReceiverStream::new(stream), lease), &admission);
    Ok(mark_simulated(response, simulated))
}

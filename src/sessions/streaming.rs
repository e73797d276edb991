//! A session's turn answered as a stream: the events of `SessionService.StreamMessage`, and
//! what the turn does with the answer once it has been relayed (stores it with the turn).

use std::sync::Arc;

use crate::auth::Principal;
use crate::error::ApiResult;
use crate::idempotency::SendKey;
use crate::inference::{Answer, Streamed};
use crate::proto;
use crate::streaming::StreamedAnswer;

use super::turn::{Turn, Turns};

/// A locked turn whose answer is streamed.
pub(super) struct StreamedTurn {
    pub(super) turns: Arc<Turns>,
    pub(super) principal: Principal,
    pub(super) turn: Turn,
    /// As the request named it (the lock's id too).
    pub(super) session_id: String,
    pub(super) options: Option<proto::GenerationOptions>,
    pub(super) key: Option<SendKey>,
}

pub(super) fn delta_event(delta: proto::Delta) -> proto::StreamEvent {
    proto::StreamEvent {
        event: Some(proto::stream_event::Event::Delta(delta)),
    }
}

pub(super) fn done_event(done: proto::SendMessageResponse) -> proto::StreamEvent {
    proto::StreamEvent {
        event: Some(proto::stream_event::Event::Done(done)),
    }
}

impl StreamedAnswer for StreamedTurn {
    type Event = proto::StreamEvent;

    async fn open(&mut self) -> ApiResult<Streamed> {
        let streamed = self
            .turns
            .open_stream(&self.principal, &mut self.turn, self.options.as_ref())
            .await?;
        // The model has the transcript: the history is not needed again.
        drop(std::mem::take(&mut self.turn.history.tail));
        Ok(streamed)
    }

    fn delta(delta: proto::Delta) -> proto::StreamEvent {
        delta_event(delta)
    }

    async fn finish(self, answer: ApiResult<Answer>) -> ApiResult<proto::StreamEvent> {
        let Self {
            turns,
            principal,
            turn: Turn { lock, mut new, .. },
            session_id,
            key,
            ..
        } = self;
        let stored = async {
            let answer = answer?;
            new.push(answer.stored);
            let done = proto::SendMessageResponse {
                session_id,
                reply: Some(answer.reply),
            };
            let record = key.as_ref().map(|key| (key, key.record(&done)));
            turns
                .locks
                .append(
                    &lock,
                    &new,
                    record.as_ref().map(|(key, body)| (*key, body.as_slice())),
                    turns.quotas(&principal).session_caps(),
                )
                .await?;
            Ok(done_event(done))
        }
        .await;
        if stored.is_err() {
            turns.locks.release(&lock).await;
        }
        stored
    }
}

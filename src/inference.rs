//! Asking a model on behalf of a caller, whole or streamed: admission against
//! the caller's limits (the prompt's tokens plus the completion's cap are
//! reserved), the resilient call (`providers::resilience`), and settling the
//! reservation with the usage the provider reports. A streamed answer settles
//! exactly as a whole one: with the usage the provider reports at its end.

use std::sync::Arc;

use chrono::Utc;
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tonic::Status;

use crate::auth::Principal;
use crate::convert;
use crate::error::{ApiError, ApiResult};
use crate::front_door::{FrontDoor, QueueSlot};
use crate::limits::{Admission, Charge};
use crate::proto;
use crate::providers::{
    ChatCompletion, ChatRequest, Chunk, ChunkStream, LogprobsAssembler, Message, Model,
    ModelCatalog, Sampling, StreamEnd, ToolCallAssembler,
};
use crate::spend::SpendRecord;
use crate::store::StoredMessage;
use crate::tokenizer;

/// `openclaw_tokens_total` by model: (prompt, completion).
static TOKENS: openclaw_runtime::metrics::Handles<String, (metrics::Counter, metrics::Counter)> =
    openclaw_runtime::metrics::Handles::new();

/// The model's answer to one turn, ready to store and return.
pub(crate) struct Answer {
    pub(crate) reply: proto::Reply,
    pub(crate) stored: StoredMessage,
}

/// What asking a model takes: the front door (admission, settling, the queue), the model
/// catalogue, and the completion tokens reserved when a request names no maxTokens.
pub(crate) struct Inference {
    door: Arc<FrontDoor>,
    models: Arc<ModelCatalog>,
    default_max_tokens: u32,
}

/// An admitted model call, not yet made.
pub(crate) struct Call {
    inference: Arc<Inference>,
    model: Arc<Model>,
    request: ChatRequest,
    prompt_tokens: u32,
    admission: Admission,
    slot: QueueSlot,
}

impl Inference {
    pub(crate) fn new(
        door: Arc<FrontDoor>,
        models: Arc<ModelCatalog>,
        default_max_tokens: u32,
    ) -> Self {
        Self {
            door,
            models,
            default_max_tokens,
        }
    }

    /// The models callers may ask.
    /// The front door the calls pass (admission, the storage-pressure check, the caller's quotas).
    pub(crate) fn door(&self) -> &FrontDoor {
        &self.door
    }

    pub(crate) fn models(&self) -> &ModelCatalog {
        &self.models
    }

    /// The completion tokens reserved for a request that names no maxTokens.
    pub(crate) fn default_max_tokens(&self) -> u32 {
        self.default_max_tokens
    }

    /// Admits a call of `model` with the transcript `messages` (in order) against the caller's
    /// limits. Messages that carry their token count are not tokenized again.
    pub(crate) async fn admit<'a>(
        self: &Arc<Self>,
        principal: &Principal,
        model: Arc<Model>,
        messages: impl IntoIterator<Item = &'a StoredMessage> + Clone,
        temperature: Option<f32>,
        max_tokens: Option<u32>,
        sampling: Sampling,
    ) -> ApiResult<Call> {
        if let Some((field, instead)) = model.provider.refuses(&sampling) {
            return Err(ApiError::invalid_field(
                field,
                "Unsupported by the model's provider",
                format!(
                    "The field '{field}' is not supported by the provider '{}' of {}: {instead}; remove it, or choose a model of an OpenAI-compatible provider",
                    model.provider.name(),
                    model.id
                ),
            ));
        }
        let max_tokens = max_tokens.unwrap_or(self.default_max_tokens);
        // The tool definitions are part of the prompt the provider builds.
        let prompt_tokens = tokenizer::count_prompt_known(
            messages
                .clone()
                .into_iter()
                .map(|m| (m.role.as_str(), m.content.as_str(), m.tokens)),
        )
        .saturating_add(sampling.tool_tokens());
        let transcript = messages.into_iter().map(Message::from).collect();
        // The most the call can cost, at the dearest prices of the model and its fallbacks,
        // reserved against the key's budget and the gateway's while it runs (the limits ignore
        // it where there is no budget).
        let cost_micros = match principal {
            Principal::Key(_) => self.models.dearest_prices(&model).cost_micros(
                u64::from(prompt_tokens),
                0,
                u64::from(max_tokens),
            ),
            Principal::Internal => 0,
        };
        let charge = Charge {
            tokens: u64::from(prompt_tokens) + u64::from(max_tokens),
            context: u64::from(prompt_tokens),
            cost_micros,
        };
        let admission = self.door.admit_call(principal, charge).await?;
        Ok(Call {
            inference: self.clone(),
            request: ChatRequest {
                model: model.upstream.clone(),
                messages: transcript,
                temperature,
                max_tokens: Some(max_tokens),
                sampling,
            },
            model,
            prompt_tokens,
            admission,
            slot: self.door.enqueue(),
        })
    }
}

impl Call {
    /// Asks for the whole answer and settles the reservation (with nothing, if it failed).
    pub(crate) async fn complete(self) -> ApiResult<(Answer, Admission)> {
        let Call {
            inference,
            model,
            request,
            admission,
            slot,
            ..
        } = self;
        let outcome = inference.models.complete(&model, request).await;
        drop(slot);
        match outcome {
            Ok(answered) => {
                let answer = settle(&inference, &admission, &answered.model, answered.value).await;
                Ok((answer, admission))
            }
            Err(failure) => {
                let record = inference.record(&model, &admission, 0, 0, 0, false);
                settle_behind(&inference, &admission, Charge::default(), record).await;
                Err(failure.into_api_error(crate::observe::request_id().as_deref()))
            }
        }
    }

    /// Asks for a streamed answer; returns once its first chunk has arrived
    /// (until then, failed attempts are retried and fallbacks asked).
    pub(crate) async fn stream(self) -> ApiResult<Streamed> {
        let Call {
            inference,
            model,
            request,
            prompt_tokens,
            admission,
            slot,
        } = self;
        match inference.models.open_stream(&model, request).await {
            Ok(answered) => Ok(Streamed {
                inference,
                model: answered.model,
                prompt_tokens,
                admission,
                _slot: slot,
                first: Some(answered.value.first),
                rest: answered.value.rest,
                content: String::new(),
                tool_calls: ToolCallAssembler::default(),
                logprobs: LogprobsAssembler::default(),
                pending_logprobs: None,
            }),
            Err(failure) => {
                let record = inference.record(&model, &admission, 0, 0, 0, false);
                settle_behind(&inference, &admission, Charge::default(), record).await;
                Err(failure.into_api_error(crate::observe::request_id().as_deref()))
            }
        }
    }
}

impl Inference {
    /// What the ledger and the budget record of a settled call of `model`.
    fn record(
        &self,
        model: &Model,
        admission: &Admission,
        prompt: u64,
        completion: u64,
        cached: u64,
        ok: bool,
    ) -> SpendRecord {
        self.door.spend_settings().record(
            &model.id,
            model.provider.name(),
            &model.prices,
            prompt,
            completion,
            cached,
            ok,
            admission.budget.as_deref().cloned(),
        )
    }
}

/// Replaces the admission's reservation with `used` without making the caller wait for the
/// limits store's answer, so a reply costs one round trip to the store (the admission), not two,
/// and a slow store cannot hold a finished answer.
///
/// The order of decisions stays what it was: the first poll queues the settling script on this
/// replica's connection to the store (unbudgeted, so tokio's cooperative scheduling cannot
/// postpone it), and every later admission of this replica is queued behind it on the same
/// connection. Yielding once then lets the connection's writer, woken by the queueing, run (here,
/// or at once on another worker) before the reply is even formed, so the script is on its way
/// to the store while another replica's admission can only follow the caller's reading of the
/// reply. The store's answer is awaited in a task of its own.
async fn settle_behind(
    inference: &Arc<Inference>,
    admission: &Admission,
    used: Charge,
    record: SpendRecord,
) {
    let inference = inference.clone();
    let admission = admission.clone();
    let mut settling = Box::pin(tokio::task::unconstrained(async move {
        inference.door.settle(&admission, used, Some(&record)).await;
    }));
    if futures::poll!(settling.as_mut()).is_pending() {
        tokio::spawn(settling);
        tokio::task::yield_now().await;
    }
}

/// Settles the reservation with the reported usage, and shapes the reply.
async fn settle(
    inference: &Arc<Inference>,
    admission: &Admission,
    model: &Model,
    completion: ChatCompletion,
) -> Answer {
    let used = Charge {
        tokens: u64::from(completion.prompt_tokens) + u64::from(completion.completion_tokens),
        context: u64::from(completion.prompt_tokens),
        cost_micros: 0,
    };
    // Priced at the answering model's prices, from the usage its provider reported.
    let record = inference.record(
        model,
        admission,
        u64::from(completion.prompt_tokens),
        u64::from(completion.completion_tokens),
        u64::from(completion.cached_tokens),
        true,
    );
    settle_behind(inference, admission, used, record).await;
    let (prompt, completed) = TOKENS.labelled(&[&model.id], || {
        (
            metrics::counter!("openclaw_tokens_total", "model" => model.id.clone(), "kind" => "prompt"),
            metrics::counter!("openclaw_tokens_total", "model" => model.id.clone(), "kind" => "completion"),
        )
    });
    prompt.increment(u64::from(completion.prompt_tokens));
    completed.increment(u64::from(completion.completion_tokens));
    let stored = StoredMessage {
        role: "assistant".into(),
        content: completion.content,
        created_at: Utc::now(),
        summary: None,
        tool_calls: completion.tool_calls,
        tool_call_id: None,
        name: None,
        parts: Vec::new(),
        // The model's own count of its answer stands in for the BPE's in later admissions.
        tokens: Some(completion.completion_tokens),
    };
    let reply = proto::Reply {
        message: Some(convert::message(&stored)),
        usage: Some(proto::Usage {
            prompt_tokens: completion.prompt_tokens,
            completion_tokens: completion.completion_tokens,
            total_tokens: completion
                .prompt_tokens
                .saturating_add(completion.completion_tokens),
        }),
        model: model.id.clone(),
        simulated: model.provider.simulated(),
        finish_reason: completion.finish_reason,
        logprobs: completion
            .logprobs
            .map(|logprobs| logprobs.to_string())
            .unwrap_or_default(),
    };
    Answer { reply, stored }
}

/// A streamed answer whose first chunk has arrived.
pub(crate) struct Streamed {
    inference: Arc<Inference>,
    model: Arc<Model>,
    prompt_tokens: u32,
    admission: Admission,
    _slot: QueueSlot,
    first: Option<Chunk>,
    rest: ChunkStream,
    /// The text so far.
    content: String,
    /// The tool calls so far.
    tool_calls: ToolCallAssembler,
    /// The log probabilities so far, and those not yet passed on (they go with the next piece).
    logprobs: LogprobsAssembler,
    pending_logprobs: Option<serde_json::Value>,
}

impl Streamed {
    /// The model answering: the asked one, or a fallback.
    pub(crate) fn model(&self) -> &Model {
        &self.model
    }

    pub(crate) fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Passes every delta to `forward` as it arrives, then settles and returns
    /// the whole answer. A failed `forward` (the caller went away) does not
    /// stop the answer: it is read to its end, so it can still be stored.
    pub(crate) async fn relay<E>(
        mut self,
        events: &mpsc::Sender<Result<E, Status>>,
        forward: impl Fn(proto::Delta) -> E,
    ) -> ApiResult<Answer> {
        let mut listening = true;
        loop {
            let chunk = match self.first.take() {
                Some(chunk) => Ok(chunk),
                None => match self.rest.next().await {
                    Some(chunk) => chunk,
                    None => Err(crate::providers::ProviderError::BadResponse(
                        "the stream ended without its last chunk".into(),
                    )),
                },
            };
            let mut delta = match chunk {
                Ok(Chunk::Delta(text)) => {
                    self.content.push_str(&text);
                    proto::Delta {
                        content: text,
                        ..Default::default()
                    }
                }
                Ok(Chunk::ToolCall(call)) => {
                    self.tool_calls.add(&call);
                    proto::Delta {
                        tool_call: Some(proto::ToolCallDelta {
                            index: call.index,
                            id: call.id.unwrap_or_default(),
                            name: call.name.unwrap_or_default(),
                            arguments: call.arguments,
                        }),
                        ..Default::default()
                    }
                }
                Ok(Chunk::Logprobs(logprobs)) => {
                    self.logprobs.add(&logprobs);
                    self.pending_logprobs = Some(logprobs);
                    continue;
                }
                Ok(Chunk::End(end)) => {
                    // Log probabilities no piece carried yet go in a piece of their own.
                    if let Some(logprobs) = self.pending_logprobs.take()
                        && listening
                    {
                        let delta = proto::Delta {
                            logprobs: logprobs.to_string(),
                            ..Default::default()
                        };
                        let _ = events.send(Ok(forward(delta))).await;
                    }
                    return Ok(self.finish(end).await);
                }
                Err(error) => return Err(self.abandon(error).await),
            };
            if let Some(logprobs) = self.pending_logprobs.take() {
                delta.logprobs = logprobs.to_string();
            }
            if listening && events.send(Ok(forward(delta))).await.is_err() {
                listening = false;
                tracing::info!(
                    model = %self.model.id,
                    "the caller left mid-stream; finishing the answer to store it"
                );
            }
        }
    }

    async fn finish(self, end: StreamEnd) -> Answer {
        let completion = ChatCompletion::from_stream(
            self.content,
            self.tool_calls.finish(),
            self.logprobs.finish(),
            end,
            self.prompt_tokens,
        );
        settle(&self.inference, &self.admission, &self.model, completion).await
    }

    /// A stream that broke after its first chunk: settled with what was
    /// sent and received so far, and never retried.
    async fn abandon(self, error: crate::providers::ProviderError) -> ApiError {
        let completion = u64::from(crate::providers::reply_tokens(
            &self.content,
            &self.tool_calls.finish(),
        ));
        let used = u64::from(self.prompt_tokens) + completion;
        let charge = Charge {
            tokens: used,
            context: u64::from(self.prompt_tokens),
            cost_micros: 0,
        };
        // No usage was reported: the prompt sent and the text received are counted.
        let record = self.inference.record(
            &self.model,
            &self.admission,
            u64::from(self.prompt_tokens),
            completion,
            0,
            false,
        );
        settle_behind(&self.inference, &self.admission, charge, record).await;
        error.into_api_error(
            self.model.provider.name(),
            &self.model.id,
            crate::observe::request_id().as_deref(),
        )
    }
}

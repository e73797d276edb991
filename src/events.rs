//! System events: what cron jobs publish (`system.event`) and the gateway's
//! own news (`cron.job_failed`, `key.revoked`, `replica.draining`), delivered
//! to subscribers over `EventService.Subscribe` (and the edge's server-sent
//! events), resumable from the last id a subscriber saw.
//!
//! With Redis the events live in one stream, `oc:{sched}:events`, trimmed to
//! about [`EventSettings::max_len`] entries (`XADD MAXLEN ~`). Each replica
//! runs one pump that follows the stream with `XREAD BLOCK` on a connection of
//! its own and fans new entries out to its local subscribers; a subscriber
//! that resumes (or falls behind) reads the gap with `XRANGE`. The stream
//! shares its hash slot with the cron keys, so a systemEvent run publishes its
//! event and records its completion in one script (see `cron::store`).
//!
//! Without Redis the events live in a bounded ring in memory: resumable while
//! the process runs, gone after a restart.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::store::{RedisConfig, SharedConnection};
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use crate::auth::Principal;
use crate::store::{StoreError, StoreResult};

mod service;

pub(crate) use self::service::Events;

/// The Redis stream that holds the events.
pub(crate) const STREAM_KEY: &str = "oc:{sched}:events";
/// The one field of a stream entry: the event as JSON.
pub(crate) const STREAM_FIELD: &str = "e";

/// Event types.
pub(crate) const SYSTEM_EVENT: &str = "system.event";
pub(crate) const JOB_FAILED: &str = "cron.job_failed";
pub(crate) const KEY_REVOKED: &str = "key.revoked";
pub(crate) const REPLICA_DRAINING: &str = "replica.draining";

/// How long the pump's `XREAD` blocks before it looks again.
const PUMP_BLOCK: Duration = Duration::from_millis(1000);
/// How many entries one range read returns.
const RANGE_BATCH: usize = 500;
/// Live events a slow subscriber may fall behind before it re-reads from the store.
const LIVE_BUFFER: usize = 4096;

/// A stream id, `<ms>-<seq>`, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for EventId {
    type Err = ();

    /// `<ms>-<seq>`, or `<ms>` alone (meaning `<ms>-0`).
    fn from_str(s: &str) -> Result<Self, ()> {
        let (ms, seq) = match s.split_once('-') {
            Some((ms, seq)) => (ms, seq),
            None => (s, "0"),
        };
        Ok(Self {
            ms: ms.parse().map_err(|_| ())?,
            seq: seq.parse().map_err(|_| ())?,
        })
    }
}

/// One event. `id` is given by the stream when it is published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Event {
    #[serde(skip)]
    pub id: EventId,
    #[serde(rename = "type")]
    pub kind: String,
    pub time_ms: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub job_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub run_id: String,
    /// The key concerned. Empty: a gateway-wide event every subscriber sees.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub replica: String,
}

impl Event {
    pub fn new(kind: &str, text: impl Into<String>) -> Self {
        Self {
            id: EventId::default(),
            kind: kind.to_string(),
            time_ms: chrono::Utc::now().timestamp_millis(),
            text: text.into(),
            job_id: String::new(),
            run_id: String::new(),
            key_id: String::new(),
            replica: String::new(),
        }
    }

    /// A key was revoked (seen by the internal token's subscribers).
    pub fn key_revoked(key_id: &str) -> Self {
        let mut event = Self::new(KEY_REVOKED, format!("API key {key_id} was revoked"));
        event.key_id = key_id.to_string();
        event
    }

    /// A key holder sees the events about its own key and jobs, and the
    /// gateway-wide ones; the internal token sees everything.
    pub fn visible_to(&self, principal: &Principal) -> bool {
        match principal {
            Principal::Internal => true,
            Principal::Key(key) => self.key_id.is_empty() || self.key_id == key.id,
        }
    }

    pub(crate) fn encode(&self) -> String {
        // A struct of strings and integers always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    fn decode(id: EventId, raw: &str) -> Option<Self> {
        let mut event: Event = serde_json::from_str(raw).ok()?;
        event.id = id;
        Some(event)
    }
}

/// Settings of the event stream.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EventSettings {
    /// About how many events the stream keeps (older ones are trimmed).
    pub max_len: u64,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self { max_len: 10_000 }
    }
}

/// Publishes events and serves subscribers. Cloning is cheap.
#[derive(Clone)]
pub(crate) struct EventBus {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    settings: EventSettings,
    live: broadcast::Sender<Event>,
    /// The id of the newest event handed to live subscribers.
    delivered: watch::Sender<EventId>,
    closed: watch::Sender<bool>,
}

enum Backend {
    Redis { conn: SharedConnection },
    Memory { ring: Mutex<Ring> },
}

#[derive(Default)]
struct Ring {
    events: VecDeque<Event>,
    last: EventId,
}

impl EventBus {
    /// The shared stream in Redis; starts this replica's pump, which follows the stream on a
    /// connection of its own (its reads block), made from `redis`.
    pub fn redis(conn: SharedConnection, redis: &RedisConfig, settings: EventSettings) -> Self {
        let bus = Self::with_backend(Backend::Redis { conn }, settings);
        tokio::spawn(pump(bus.clone(), redis.clone()));
        bus
    }

    /// The in-process ring, for the embedded single-process deployment.
    pub fn in_memory(settings: EventSettings) -> Self {
        Self::with_backend(
            Backend::Memory {
                ring: Mutex::new(Ring::default()),
            },
            settings,
        )
    }

    fn with_backend(backend: Backend, settings: EventSettings) -> Self {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        let (delivered, _) = watch::channel(EventId::default());
        let (closed, _) = watch::channel(false);
        Self {
            inner: Arc::new(Inner {
                backend,
                settings,
                live,
                delivered,
                closed,
            }),
        }
    }

    /// Appends the event to the stream and returns its id.
    pub async fn publish(&self, event: Event) -> StoreResult<EventId> {
        match &self.inner.backend {
            Backend::Redis { conn } => {
                let mut conn = conn.clone();
                let id: String = redis::cmd("XADD")
                    .arg(STREAM_KEY)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.inner.settings.max_len)
                    .arg("*")
                    .arg(STREAM_FIELD)
                    .arg(event.encode())
                    .query_async(&mut conn)
                    .await
                    .map_err(StoreError::from)?;
                id.parse()
                    .map_err(|_| StoreError::Corrupt(format!("stream id {id}")))
            }
            Backend::Memory { ring } => {
                let mut ring = ring.lock().unwrap_or_else(PoisonError::into_inner);
                let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
                let id = if now > ring.last.ms {
                    EventId { ms: now, seq: 0 }
                } else {
                    EventId {
                        ms: ring.last.ms,
                        seq: ring.last.seq + 1,
                    }
                };
                let mut event = event;
                event.id = id;
                ring.last = id;
                ring.events.push_back(event.clone());
                while ring.events.len() as u64 > self.inner.settings.max_len.max(1) {
                    ring.events.pop_front();
                }
                // Sent under the lock, so live subscribers see ids in order.
                let _ = self.inner.live.send(event);
                self.inner.delivered.send_replace(id);
                Ok(id)
            }
        }
    }

    /// Publishes, logging instead of failing: for news whose loss must not
    /// fail the operation that caused it.
    pub async fn announce(&self, event: Event) {
        let kind = event.kind.clone();
        if let Err(err) = self.publish(event).await {
            tracing::warn!(error = %err, kind, "could not publish a system event");
        }
    }

    /// Events after `after`, oldest first, at most `limit`.
    async fn range_after(&self, after: EventId, limit: usize) -> StoreResult<Vec<Event>> {
        match &self.inner.backend {
            Backend::Redis { conn } => {
                let mut conn = conn.clone();
                let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                    .arg(STREAM_KEY)
                    .arg(format!("({after}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(&mut conn)
                    .await
                    .map_err(StoreError::from)?;
                Ok(reply.ids.iter().filter_map(decode_entry).collect())
            }
            Backend::Memory { ring } => {
                let ring = ring.lock().unwrap_or_else(PoisonError::into_inner);
                Ok(ring
                    .events
                    .iter()
                    .filter(|e| e.id > after)
                    .take(limit)
                    .cloned()
                    .collect())
            }
        }
    }

    /// Ends every subscription (the replica is draining): subscribers
    /// reconnect, to another replica, with the last id they saw.
    pub fn close(&self) {
        self.inner.closed.send_replace(true);
    }

    /// Closes once the event `last` (published just before) has reached this
    /// replica's subscribers, or after two seconds.
    pub async fn close_after(&self, last: Option<EventId>) {
        if let Some(last) = last {
            let mut delivered = self.inner.delivered.subscribe();
            let _ =
                tokio::time::timeout(Duration::from_secs(2), delivered.wait_for(|id| *id >= last))
                    .await;
        }
        self.close();
    }

    /// The events `principal` may see after `after` (`None`: from now on),
    /// then live ones, until the bus closes. A store failure ends the stream
    /// with the error.
    pub fn subscribe(
        &self,
        principal: Principal,
        after: Option<EventId>,
    ) -> impl Stream<Item = StoreResult<Event>> + Send + 'static {
        let bus = self.clone();
        // Subscribe to live events before reading the backlog, so nothing
        // published in between is missed; duplicates are dropped by id.
        let mut live = self.inner.live.subscribe();
        let mut closed = self.inner.closed.subscribe();
        async_stream(move |tx| async move {
            let mut last = after;
            if let Some(from) = after
                && !catch_up(&bus, &principal, from, &mut last, &tx).await
            {
                return;
            }
            loop {
                if *closed.borrow() {
                    drain_live(&mut live, &principal, &mut last, &tx).await;
                    return;
                }
                tokio::select! {
                    _ = closed.changed() => {
                        drain_live(&mut live, &principal, &mut last, &tx).await;
                        return;
                    }
                    received = live.recv() => match received {
                        Ok(event) => {
                            if last.is_some_and(|l| event.id <= l) {
                                continue;
                            }
                            last = Some(event.id);
                            if event.visible_to(&principal) && tx.send(Ok(event)).await.is_err() {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            let from = last.unwrap_or_default();
                            if !catch_up(&bus, &principal, from, &mut last, &tx).await {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        })
    }
}

/// Sends what live events are already queued, as the stream ends.
async fn drain_live(
    live: &mut broadcast::Receiver<Event>,
    principal: &Principal,
    last: &mut Option<EventId>,
    tx: &tokio::sync::mpsc::Sender<StoreResult<Event>>,
) {
    while let Ok(event) = live.try_recv() {
        if last.is_some_and(|l| event.id <= l) {
            continue;
        }
        *last = Some(event.id);
        if event.visible_to(principal) && tx.send(Ok(event)).await.is_err() {
            return;
        }
    }
}

/// Sends the stored events after `from` to `tx`. False when the subscriber is
/// gone or the store failed (the error was sent).
async fn catch_up(
    bus: &EventBus,
    principal: &Principal,
    from: EventId,
    last: &mut Option<EventId>,
    tx: &tokio::sync::mpsc::Sender<StoreResult<Event>>,
) -> bool {
    let mut cursor = from;
    loop {
        let batch = match bus.range_after(cursor, RANGE_BATCH).await {
            Ok(batch) => batch,
            Err(err) => {
                let _ = tx.send(Err(err)).await;
                return false;
            }
        };
        let full = batch.len() == RANGE_BATCH;
        for event in batch {
            cursor = event.id;
            *last = Some(event.id);
            if event.visible_to(principal) && tx.send(Ok(event)).await.is_err() {
                return false;
            }
        }
        if !full {
            if last.is_none() {
                *last = Some(from);
            }
            return true;
        }
    }
}

/// A stream fed by a task through a small channel; the task stops when the
/// stream is dropped.
fn async_stream<T, F, Fut>(body: F) -> impl Stream<Item = T> + Send + 'static
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(body(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn decode_entry(entry: &redis::streams::StreamId) -> Option<Event> {
    let id: EventId = entry.id.parse().ok()?;
    let raw = entry.map.get(STREAM_FIELD)?;
    let raw: String = redis::from_redis_value(raw.clone()).ok()?;
    Event::decode(id, &raw)
}

/// Follows the stream and hands new entries to this replica's subscribers.
async fn pump(bus: EventBus, redis: RedisConfig) {
    let mut closed = bus.inner.closed.subscribe();
    // "$": only entries added from now on; afterwards the last id delivered.
    let mut last: Option<String> = None;
    let redis = RedisConfig {
        connect_timeout: Duration::from_secs(2),
        ..redis
    };
    'connect: loop {
        if *closed.borrow() {
            return;
        }
        let mut conn =
            match SharedConnection::dedicated(&redis, PUMP_BLOCK + Duration::from_secs(5)).await {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::debug!(error = %err, "event pump cannot reach Redis; retrying");
                    tokio::select! {
                        _ = closed.changed() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue 'connect,
                    }
                }
            };
        if last.is_none() {
            // Start from the newest entry, so nothing added after this read is missed.
            let newest: redis::streams::StreamRangeReply = match redis::cmd("XREVRANGE")
                .arg(STREAM_KEY)
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1)
                .query_async(&mut conn)
                .await
            {
                Ok(reply) => reply,
                Err(_) => continue 'connect,
            };
            last = Some(
                newest
                    .ids
                    .first()
                    .map(|e| e.id.clone())
                    .unwrap_or_else(|| "0-0".into()),
            );
        }
        loop {
            if *closed.borrow() {
                return;
            }
            let from = last.clone().unwrap_or_else(|| "0-0".into());
            let mut command = redis::cmd("XREAD");
            command
                .arg("COUNT")
                .arg(RANGE_BATCH)
                .arg("BLOCK")
                .arg(PUMP_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(STREAM_KEY)
                .arg(&from);
            let read = command.query_async::<Option<redis::streams::StreamReadReply>>(&mut conn);
            let reply = tokio::select! {
                _ = closed.changed() => return,
                reply = read => reply,
            };
            match reply {
                Ok(Some(reply)) => {
                    for key in reply.keys {
                        for entry in key.ids {
                            last = Some(entry.id.clone());
                            if let Some(event) = decode_entry(&entry) {
                                let id = event.id;
                                let _ = bus.inner.live.send(event);
                                bus.inner.delivered.send_replace(id);
                            }
                        }
                    }
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::debug!(error = %err, "event pump lost Redis; reconnecting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue 'connect;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt as _;

    #[test]
    fn ids_order_like_redis_and_round_trip() {
        let a: EventId = "1700000000000-1".parse().unwrap();
        let b: EventId = "1700000000000-10".parse().unwrap();
        let c: EventId = "1700000000001".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "1700000000000-10");
        assert!("x-1".parse::<EventId>().is_err());
    }

    #[tokio::test]
    async fn a_subscriber_resumes_after_the_last_id_it_saw() {
        let bus = EventBus::in_memory(EventSettings { max_len: 100 });
        let first = bus.publish(Event::new(SYSTEM_EVENT, "one")).await.unwrap();
        bus.publish(Event::new(SYSTEM_EVENT, "two")).await.unwrap();
        let mut stream = Box::pin(bus.subscribe(Principal::Internal, Some(first)));
        let next = stream.next().await.unwrap().unwrap();
        assert_eq!(next.text, "two");
        bus.publish(Event::new(SYSTEM_EVENT, "three"))
            .await
            .unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap().text, "three");
        bus.close();
        assert!(stream.next().await.is_none());
    }
}

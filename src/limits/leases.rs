//! Per-key caps on what a key holds open at once: streamed replies, and event
//! subscriptions. Unlike the per-minute limits these count *concurrency*, so
//! each open stream holds a lease: an entry `lease id → expiry` in the key's
//! set for that cap (a Redis sorted set shared by every replica, or this
//! process's memory in the embedded deployment).
//!
//! A lease is taken only while fewer than the cap are live, in one atomic
//! step, so N replicas together never hold more than the cap. The replica
//! holding it renews it every third of its time to live while the stream is
//! open, and releases it when the [`StreamLease`] guard drops: the client
//! left, the stream ended or failed, or the call was abandoned. A replica
//! that dies without releasing (SIGKILL, a lost host) stops renewing, and its
//! leases expire within one time to live ([`DEFAULT_LEASE_TTL`], 30 s).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::oneshot;

use super::LimitBackend;
use crate::error::{ApiError, ErrorCode};
use crate::store::StoreError;

/// How long a lease lives unless renewed; a dead replica's leases are gone after it.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);

/// What a cap counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CapKind {
    /// Streamed replies (a session's streamed send, a streamed chat completion).
    Streams,
    /// Open event subscriptions (`EventService.Subscribe`, REST `/api/v1/events`).
    Subscriptions,
}

impl CapKind {
    /// The last part of the cap's storage key.
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            CapKind::Streams => "streams",
            CapKind::Subscriptions => "subscriptions",
        }
    }

    /// The key's limit field that sets this cap.
    pub fn field(self) -> &'static str {
        match self {
            CapKind::Streams => "concurrentStreams",
            CapKind::Subscriptions => "eventSubscriptions",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            CapKind::Streams => "streamed replies",
            CapKind::Subscriptions => "event subscriptions",
        }
    }

    fn metric(self) -> &'static str {
        match self {
            CapKind::Streams => "streams",
            CapKind::Subscriptions => "event_subscriptions",
        }
    }
}

/// The configured caps for keys without their own, and the leases' time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct StreamCaps {
    /// Streamed replies (sessions' and chat completions' together) one key may have open at
    /// once, over every replica, unless the key sets its own `concurrentStreams`.
    #[arg(
        long = "default-concurrent-streams",
        env = "OPENCLAW_DEFAULT_CONCURRENT_STREAMS",
        value_parser = clap::value_parser!(u64).range(1..),
        default_value_t = 20
    )]
    pub concurrent_streams: u64,

    /// Event subscriptions one key may have open at once, over every replica, unless the key
    /// sets its own `eventSubscriptions`.
    #[arg(
        long = "default-event-subscriptions",
        env = "OPENCLAW_DEFAULT_EVENT_SUBSCRIPTIONS",
        value_parser = clap::value_parser!(u64).range(1..),
        default_value_t = 10
    )]
    pub event_subscriptions: u64,

    /// Seconds an open stream's lease lives without renewal (renewed every third of it):
    /// the longest a stopped replica's streams keep counting against their keys.
    #[arg(
        long = "stream-lease-secs",
        env = "OPENCLAW_STREAM_LEASE_SECS",
        value_parser = clap::value_parser!(u64).range(1..),
        default_value_t = 30
    )]
    pub lease_secs: u64,
}

impl Default for StreamCaps {
    fn default() -> Self {
        Self {
            concurrent_streams: 20,
            event_subscriptions: 10,
            lease_secs: DEFAULT_LEASE_TTL.as_secs(),
        }
    }
}

impl StreamCaps {
    pub fn cap(&self, kind: CapKind) -> u64 {
        match kind {
            CapKind::Streams => self.concurrent_streams,
            CapKind::Subscriptions => self.event_subscriptions,
        }
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_secs.max(1))
    }
}

/// The answer of a backend asked for a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseDecision {
    /// True when the lease was taken.
    pub taken: bool,
    /// Live leases of the key for the cap: including the new one when taken.
    pub open: u64,
}

/// An open stream's lease. It is renewed while the guard lives and released
/// when it drops (by a task of its own, so dropping never blocks).
pub struct StreamLease {
    /// Dropping it tells the renewal task to release the lease and stop.
    _stop: oneshot::Sender<()>,
}

impl std::fmt::Debug for StreamLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamLease")
    }
}

/// Where a lease lives, and how to keep it.
pub(crate) struct Holding {
    pub backend: Arc<dyn LimitBackend>,
    pub key: String,
    pub kind: CapKind,
    pub id: String,
    pub ttl: Duration,
    /// Bound on each renewal and on the release.
    pub timeout: Duration,
}

impl StreamLease {
    /// Starts renewing `holding`'s lease until the returned guard drops, then releases it.
    pub(crate) fn hold(holding: Holding) -> Self {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let gauge = metrics::gauge!("openclaw_open_streams", "cap" => holding.kind.metric());
        gauge.increment(1.0);
        tokio::spawn(async move {
            let Holding {
                backend,
                key,
                kind,
                id,
                ttl,
                timeout,
            } = holding;
            let every = ttl / 3;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    () = tokio::time::sleep(every) => {
                        // Renewing runs to its end before the loop looks at `stopped` again,
                        // so a release is never overtaken by a renewal re-adding the lease.
                        let renewed =
                            tokio::time::timeout(timeout, backend.renew_lease(&key, kind, &id, ttl))
                                .await
                                .unwrap_or(Err(StoreError::Timeout));
                        if let Err(err) = renewed {
                            tracing::warn!(error = %err, cap = kind.field(), "could not renew an open stream's lease; it expires unless a later renewal succeeds");
                        }
                    }
                }
            }
            gauge.decrement(1.0);
            let released = tokio::time::timeout(timeout, backend.release_lease(&key, kind, &id))
                .await
                .unwrap_or(Err(StoreError::Timeout));
            if let Err(err) = released {
                tracing::warn!(error = %err, cap = kind.field(), "could not release a closed stream's lease; it expires within its time to live");
            }
        });
        Self { _stop: stop }
    }
}

/// The refusal of a stream over its key's cap.
pub(crate) fn over_cap(kind: CapKind, cap: u64, open: u64) -> ApiError {
    metrics::counter!("openclaw_rate_limit_rejections_total", "resource" => kind.metric())
        .increment(1);
    let (message, what) = match kind {
        CapKind::Streams => ("Too many concurrent streams", "streamed reply"),
        CapKind::Subscriptions => ("Too many event subscriptions", "event subscription"),
    };
    ApiError::new(
        ErrorCode::RateLimitExceeded,
        message,
        format!(
            "This key already has {open} {noun} open and its {field} cap is {cap} (counted over every replica); close one (or let it finish) before opening another {what}, or ask the gateway's administrator to raise the key's {field} limit",
            noun = kind.noun(),
            field = kind.field(),
        ),
    )
    .with_retry_after(Duration::from_secs(1))
    .with_metadata(vec![("retry-after", "1".to_string())])
}

/// A stream that holds its lease for as long as it is open: the server drops
/// it when the client leaves or after its last item.
pub struct Leased<S> {
    inner: S,
    _lease: Option<StreamLease>,
}

impl<S> Leased<S> {
    pub fn new(inner: S, lease: Option<StreamLease>) -> Self {
        Self {
            inner,
            _lease: lease,
        }
    }
}

impl<S: Stream + Unpin> Stream for Leased<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

//! The edge's HTTP/2 connections to the cores, driven on `h2` directly.
//!
//! A call sends its headers and its one message from the calling task and waits on the
//! response there: the only other task involved is each connection's own (which reads and
//! writes the socket). tonic's `Channel` puts three more in the way of every call (its buffer's
//! worker, and hyper's per-request send and body-pipe tasks), each a wake-up that may have to
//! wait for a CPU.
//!
//! Every core address gets a task that keeps one connection to it open, reconnecting with
//! backoff; a call goes to whichever of the next two connections in the rotation has fewer calls
//! pending. A connection that fails or that the core closes (`GOAWAY` when it drains) leaves the
//! rotation at once.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::http::{self, HeaderValue, Uri, uri};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use tokio::sync::{oneshot, watch};

/// How many connections a call tries when each turns out closed before the call goes out.
const TRIES_BEFORE_SENDING: u32 = 3;

/// What a call fails with: a `tonic::Status` (which tonic hands on unchanged) with the cause.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One core to keep a connection to.
#[derive(Clone)]
pub(crate) struct Target {
    /// The address to connect to.
    pub(crate) address: std::net::SocketAddr,
    /// The scheme and authority requests carry (`http://core:50051`).
    pub(crate) origin: Uri,
    /// TLS to speak on the connection, and the name the core's certificate must carry.
    pub(crate) tls: Option<(
        tokio_rustls::TlsConnector,
        tokio_rustls::rustls::pki_types::ServerName<'static>,
    )>,
}

/// A connection that is up, as calls see it.
#[derive(Clone)]
struct Live {
    id: u64,
    origin: Uri,
    send: h2::client::SendRequest<Bytes>,
    /// Calls on this connection that have not ended (their response bodies included).
    pending: Arc<AtomicUsize>,
}

/// One call counted as pending on its connection until it is dropped.
struct Pending(Arc<AtomicUsize>);

impl Pending {
    fn on(live: &Live) -> Self {
        live.pending.fetch_add(1, Ordering::Relaxed);
        Self(live.pending.clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What calls choose from: the connections that are up, and how many cores are being connected
/// to right now (while one is, a call waits for it rather than failing).
#[derive(Clone, Default)]
struct Rotation {
    live: Arc<[Live]>,
    connecting: usize,
}

/// The pool: connections that are up, and where the rotation stands.
#[derive(Clone)]
pub struct CorePool {
    shared: Arc<Shared>,
}

struct Shared {
    rotation: watch::Sender<Rotation>,
    next: AtomicUsize,
    user_agent: HeaderValue,
    settings: Settings,
    /// Each core's driver task, by key, stops when its sender here is dropped.
    drivers: std::sync::Mutex<HashMap<String, oneshot::Sender<()>>>,
}

/// How connections are made and kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub(crate) connect_timeout: Duration,
    pub(crate) keep_alive_interval: Duration,
    pub(crate) keep_alive_timeout: Duration,
}

impl std::fmt::Debug for CorePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rotation = self.shared.rotation.borrow();
        f.debug_struct("CorePool")
            .field("connections", &rotation.live.len())
            .field("connecting", &rotation.connecting)
            .finish()
    }
}

impl CorePool {
    /// An empty pool; [`CorePool::insert`] adds cores. Needs a Tokio runtime.
    pub(crate) fn new(user_agent: &'static str, settings: Settings) -> Self {
        Self {
            shared: Arc::new(Shared {
                rotation: watch::Sender::new(Rotation::default()),
                next: AtomicUsize::new(0),
                user_agent: HeaderValue::from_static(user_agent),
                settings,
                drivers: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Starts keeping a connection to `target` under `key` (replacing one of the same key).
    pub(crate) fn insert(&self, key: String, target: Target) {
        let (stop, stopped) = oneshot::channel();
        // Counted before the task runs, so a call made right now waits for this connection.
        let first = Connecting::start(&self.shared);
        tokio::spawn(drive(
            Arc::downgrade(&self.shared),
            target,
            self.shared.settings,
            stopped,
            first,
        ));
        // A replaced driver stops when its sender drops here.
        self.drivers().insert(key, stop);
    }

    /// Takes the core kept under `key` out of the rotation; the calls in flight on its
    /// connection finish, and then the connection closes.
    pub(crate) fn remove(&self, key: &str) {
        self.drivers().remove(key);
    }

    fn drivers(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<()>>> {
        self.shared
            .drivers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next connection in the rotation. When none is up, waits while a core is being
    /// connected to (at most the connect timeout), and fails at once otherwise.
    async fn pick(&self) -> Result<Live, BoxError> {
        let mut changes = self.shared.rotation.subscribe();
        let wait = async {
            loop {
                {
                    let rotation = changes.borrow_and_update();
                    let live = &rotation.live;
                    if !live.is_empty() {
                        return Ok(self.choose(live).clone());
                    }
                    if rotation.connecting == 0 {
                        return Err(unavailable("no core accepts connections"));
                    }
                }
                if changes.changed().await.is_err() {
                    return Err(unavailable("the edge is shutting down"));
                }
            }
        };
        tokio::time::timeout(self.shared.settings.connect_timeout, wait)
            .await
            .unwrap_or_else(|_| Err(unavailable("no connection to a core could be made")))
    }

    /// Of two connections next to each other in the rotation, the one with fewer calls
    /// pending (the first on a tie): a core that has slowed down gets fewer new calls, and
    /// equal cores still take turns.
    fn choose<'a>(&self, live: &'a [Live]) -> &'a Live {
        let i = self.shared.next.fetch_add(1, Ordering::Relaxed) % live.len();
        let (first, second) = (&live[i], &live[(i + 1) % live.len()]);
        if second.pending.load(Ordering::Relaxed) < first.pending.load(Ordering::Relaxed) {
            second
        } else {
            first
        }
    }

    /// Sends one gRPC call: its headers and (unary or server-streaming) request message.
    pub(crate) async fn call(
        self,
        request: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, BoxError> {
        let (mut head, body) = request.into_parts();
        let message = body
            .collect()
            .await
            .map_err(|error| unavailable_because("the request could not be encoded", error))?
            .to_bytes();
        head.headers
            .insert(http::header::USER_AGENT, self.shared.user_agent.clone());
        // A connection found closed before the call goes out on it (the core sent GOAWAY as it
        // drains, or the socket died) costs the call nothing, whatever its method: it takes the
        // next connection in the rotation.
        let mut tries = 0;
        let (id, mut send, pending) = loop {
            tries += 1;
            let live = self.pick().await?;
            let pending = Pending::on(&live);
            match live.send.ready().await {
                Ok(send) => {
                    head.uri = with_origin(&live.origin, &head.uri)?;
                    break (live.id, send, pending);
                }
                Err(error) if tries < TRIES_BEFORE_SENDING => {
                    tracing::debug!(%error, "a core connection closed before a call went out on it");
                    self.lost(live.id, error);
                }
                Err(error) => return Err(self.lost(live.id, error)),
            }
        };
        let end = message.is_empty();
        let (response, mut stream) = send
            .send_request(http::Request::from_parts(head, ()), end)
            .map_err(|error| self.lost(id, error))?;
        if !end {
            stream
                .send_data(message, true)
                .map_err(|error| self.lost(id, error))?;
        }
        let response = response.await.map_err(|error| self.lost(id, error))?;
        Ok(response.map(|body| tonic::body::Body::new(ResponseBody::new(body, pending))))
    }

    /// A connection failed under a call: it leaves the rotation now, not when its task notices.
    fn lost(&self, id: u64, error: h2::Error) -> BoxError {
        if error.is_go_away() || error.is_io() {
            leave(&self.shared, id);
        }
        unavailable_because("the connection to the core failed", error)
    }
}

fn with_origin(origin: &Uri, path: &Uri) -> Result<Uri, BoxError> {
    let mut parts = uri::Parts::default();
    parts.scheme = origin.scheme().cloned();
    parts.authority = origin.authority().cloned();
    parts.path_and_query = path.path_and_query().cloned();
    Uri::from_parts(parts).map_err(|error| unavailable_because("a call's path", error))
}

fn unavailable(message: &'static str) -> BoxError {
    Box::new(tonic::Status::unavailable(message))
}

fn unavailable_because(
    message: &'static str,
    cause: impl std::error::Error + Send + Sync + 'static,
) -> BoxError {
    Box::new(tonic::Status::from_error(Box::new(Cause(
        message,
        Box::new(cause),
    ))))
}

/// A failure with what it failed at; becomes a bare `Unavailable` that keeps its cause.
#[derive(Debug)]
struct Cause(&'static str, BoxError);

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0, self.1)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.1.as_ref())
    }
}

/// Takes connection `id` out of the rotation (if it is still in it).
fn leave(shared: &Shared, id: u64) {
    shared.rotation.send_if_modified(|rotation| {
        if !rotation.live.iter().any(|l| l.id == id) {
            return false;
        }
        rotation.live = rotation
            .live
            .iter()
            .filter(|l| l.id != id)
            .cloned()
            .collect();
        true
    });
}

/// One connection attempt in progress, counted in the rotation while it lives.
struct Connecting(std::sync::Weak<Shared>);

impl Connecting {
    fn start(shared: &Arc<Shared>) -> Self {
        shared
            .rotation
            .send_modify(|rotation| rotation.connecting += 1);
        Self(Arc::downgrade(shared))
    }
}

impl Drop for Connecting {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            shared
                .rotation
                .send_modify(|rotation| rotation.connecting -= 1);
        }
    }
}

/// A connection in the rotation; leaves it when dropped.
struct InRotation(std::sync::Weak<Shared>, u64);

impl Drop for InRotation {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            leave(&shared, self.1);
        }
    }
}

static NEXT_CONNECTION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Keeps one connection to `target` up until `stop` fires (or its sender is dropped).
async fn drive(
    shared: std::sync::Weak<Shared>,
    target: Target,
    settings: Settings,
    mut stop: oneshot::Receiver<()>,
    first: Connecting,
) {
    const MAX_BACKOFF: Duration = Duration::from_secs(2);
    let mut backoff = Duration::from_millis(50);
    let mut failures = 0_u32;
    let mut first = Some(first);
    loop {
        let connecting = match first.take() {
            Some(first) => first,
            None => match shared.upgrade() {
                Some(shared) => Connecting::start(&shared),
                None => return,
            },
        };
        let attempt = tokio::select! {
            attempt = connect(&target, settings) => attempt,
            _ = &mut stop => return,
        };
        match attempt {
            Ok((send, mut connection)) => {
                backoff = Duration::from_millis(50);
                failures = 0;
                let id = NEXT_CONNECTION.fetch_add(1, Ordering::Relaxed);
                let live = Live {
                    id,
                    origin: target.origin.clone(),
                    send,
                    pending: Arc::new(AtomicUsize::new(0)),
                };
                let Some(strong) = shared.upgrade() else {
                    return;
                };
                strong.rotation.send_modify(|rotation| {
                    rotation.live = rotation.live.iter().cloned().chain([live]).collect();
                });
                drop(strong);
                let in_rotation = InRotation(shared.clone(), id);
                drop(connecting);
                tracing::debug!(core = %target.address, "connected to a core");
                tokio::select! {
                    ended = &mut connection => {
                        if let Err(error) = ended {
                            tracing::info!(core = %target.address, %error, "a core connection ended; reconnecting");
                        }
                    }
                    _ = &mut stop => {
                        // No new calls; the ones in flight finish, then the connection closes.
                        drop(in_rotation);
                        let _ = connection.await;
                        return;
                    }
                }
            }
            Err(error) => {
                drop(connecting);
                // The first failure of a streak is worth an operator's attention; the retries
                // every 2 s after it are not.
                if failures == 0 {
                    tracing::warn!(core = %target.address, %error, "could not connect to a core; retrying");
                } else {
                    tracing::debug!(core = %target.address, %error, "could not connect to a core");
                }
                failures += 1;
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = &mut stop => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

type Running = Pin<Box<dyn std::future::Future<Output = Result<(), h2::Error>> + Send>>;

/// Opens a connection, and returns its handle and the future that runs it until it ends.
async fn connect(
    target: &Target,
    settings: Settings,
) -> Result<(h2::client::SendRequest<Bytes>, Running), BoxError> {
    let open = async {
        let tcp = tokio::net::TcpStream::connect(target.address).await?;
        tcp.set_nodelay(true)?;
        match &target.tls {
            None => handshake(tcp, settings).await,
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await?;
                if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                    return Err("the core did not agree to HTTP/2 over TLS (ALPN h2)".into());
                }
                handshake(tls, settings).await
            }
        }
    };
    tokio::time::timeout(settings.connect_timeout, open)
        .await
        .map_err(|_| -> BoxError {
            format!("no connection within {:?}", settings.connect_timeout).into()
        })?
}

/// The HTTP/2 handshake on an open stream; the connection it returns also keeps itself alive.
async fn handshake<T>(
    io: T,
    settings: Settings,
) -> Result<(h2::client::SendRequest<Bytes>, Running), BoxError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    // hyper's client windows: a stream may have 2 MiB in flight, the connection 5 MiB.
    let (send, mut connection) = h2::client::Builder::new()
        .initial_window_size(2 << 20)
        .initial_connection_window_size(5 << 20)
        .handshake::<_, Bytes>(io)
        .await?;
    let ping = connection.ping_pong();
    let run = async move {
        tokio::select! {
            ended = connection => ended,
            () = keep_alive(ping, settings) => Ok(()),
        }
    };
    Ok((send, Box::pin(run)))
}

/// Pings the core every `keep_alive_interval`; returns when one goes unanswered, which ends the
/// connection (a core that vanished without closing it, or a dead network path).
async fn keep_alive(ping: Option<h2::PingPong>, settings: Settings) {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(settings.keep_alive_interval).await;
        let answered =
            tokio::time::timeout(settings.keep_alive_timeout, ping.ping(h2::Ping::opaque())).await;
        if !matches!(answered, Ok(Ok(_))) {
            tracing::warn!("a core did not answer a keep-alive ping; reconnecting");
            return;
        }
    }
}

/// A response body read from an `h2` stream: its data, then its trailers (the gRPC status).
struct ResponseBody {
    recv: h2::RecvStream,
    data_done: bool,
    /// The call stays pending on its connection until its response has been read or dropped.
    _pending: Pending,
}

impl ResponseBody {
    fn new(recv: h2::RecvStream, pending: Pending) -> Self {
        Self {
            recv,
            data_done: false,
            _pending: pending,
        }
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match self.recv.poll_data(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    // Hands the window back, so the core may send the next messages.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(None) => self.data_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        match self.recv.poll_trailers(cx) {
            Poll::Ready(Ok(Some(trailers))) => {
                Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
            }
            Poll::Ready(Ok(None)) => Poll::Ready(None),
            Poll::Ready(Err(error)) => Poll::Ready(Some(Err(error))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use tokio::sync::Notify;

    const SETTINGS: Settings = Settings {
        connect_timeout: Duration::from_secs(2),
        keep_alive_interval: Duration::from_secs(30),
        keep_alive_timeout: Duration::from_secs(10),
    };

    /// An HTTP/2 server that answers every call with its name (`x-core`), a message and a gRPC
    /// status in trailers; with `hold`, each answer waits for a notification first.
    async fn core(name: &'static str, hold: Option<Arc<Notify>>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let hold = hold.clone();
                tokio::spawn(async move {
                    let mut connection = h2::server::handshake(tcp).await.unwrap();
                    while let Some(Ok((request, mut respond))) = connection.accept().await {
                        let hold = hold.clone();
                        tokio::spawn(async move {
                            let mut body = request.into_body();
                            let mut received = 0;
                            while let Some(data) = body.data().await {
                                let data = data.unwrap();
                                received += data.len();
                                let _ = body.flow_control().release_capacity(data.len());
                            }
                            if let Some(hold) = hold {
                                hold.notified().await;
                            }
                            let response = http::Response::builder()
                                .header("x-core", name)
                                .header("x-received", received)
                                .body(())
                                .unwrap();
                            let mut send = respond.send_response(response, false).unwrap();
                            send.send_data(Bytes::from_static(b"answer"), false)
                                .unwrap();
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", HeaderValue::from_static("0"));
                            send.send_trailers(trailers).unwrap();
                        });
                    }
                });
            }
        });
        address
    }

    fn target(address: SocketAddr) -> Target {
        Target {
            address,
            origin: format!("http://{address}").parse().unwrap(),
            tls: None,
        }
    }

    /// Makes one call; returns the core that answered, or the status it failed with.
    async fn call(pool: &CorePool) -> Result<String, tonic::Status> {
        call_with(pool, Bytes::from_static(b"message")).await
    }

    async fn call_with(pool: &CorePool, message: Bytes) -> Result<String, tonic::Status> {
        let length = message.len();
        let request = http::Request::post("/openclaw.v1.Test/Call")
            .body(tonic::body::Body::new(http_body_util::Full::new(message)))
            .unwrap();
        let response = pool
            .clone()
            .call(request)
            .await
            .map_err(tonic::Status::from_error)?;
        let name = response.headers()["x-core"].to_str().unwrap().to_owned();
        assert_eq!(
            response.headers()["x-received"],
            length.to_string().as_str(),
            "the message arrived whole"
        );
        let body = response.into_body().collect().await.unwrap();
        assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(body.to_bytes(), "answer");
        Ok(name)
    }

    #[tokio::test]
    async fn calls_take_turns_over_the_cores_and_a_removed_core_finishes_its_calls() {
        let held = Arc::new(Notify::new());
        let (a, b) = (core("a", None).await, core("b", Some(held.clone())).await);
        let pool = CorePool::new("test", SETTINGS);
        pool.insert("a".into(), target(a));
        pool.insert("b".into(), target(b));
        while pool.shared.rotation.borrow().live.len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let in_flight = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut answered = Vec::new();
                for _ in 0..2 {
                    answered.push(call(&pool).await.unwrap());
                }
                answered
            })
        };
        // One of those two calls is held on core b; take b out of the rotation meanwhile.
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.remove("b");
        while pool.shared.rotation.borrow().live.len() > 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let after = futures::future::join_all((0..4).map(|_| call(&pool)));
        let after = tokio::time::timeout(Duration::from_secs(10), after)
            .await
            .expect("calls after the removal answered by core a");
        assert!(
            after.iter().all(|c| matches!(c.as_deref(), Ok("a"))),
            "{after:?}"
        );
        held.notify_one();
        let mut answered = tokio::time::timeout(Duration::from_secs(10), in_flight)
            .await
            .expect("the held call answered")
            .unwrap();
        answered.sort();
        assert_eq!(answered, ["a", "b"], "turns alternate; b's call finished");
    }

    #[tokio::test]
    async fn new_calls_go_to_the_core_with_fewer_calls_pending() {
        let held = Arc::new(Notify::new());
        let (slow, fast) = (
            core("slow", Some(held.clone())).await,
            core("fast", None).await,
        );
        let pool = CorePool::new("test", SETTINGS);
        pool.insert("slow".into(), target(slow));
        pool.insert("fast".into(), target(fast));
        while pool.shared.rotation.borrow().live.len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Calls until one is held by the slow core (the second at the latest).
        let held_call = loop {
            let pool2 = pool.clone();
            let call = tokio::spawn(async move { call(&pool2).await });
            tokio::time::sleep(Duration::from_millis(50)).await;
            if !call.is_finished() {
                break call;
            }
            assert_eq!(call.await.unwrap().unwrap(), "fast");
        };
        for _ in 0..6 {
            let answered = tokio::time::timeout(Duration::from_secs(5), call(&pool));
            assert_eq!(
                answered.await.expect("not sent to the slow core").unwrap(),
                "fast"
            );
        }
        held.notify_one();
        assert_eq!(held_call.await.unwrap().unwrap(), "slow");
        let rotation = pool.shared.rotation.borrow().clone();
        assert!(
            rotation
                .live
                .iter()
                .all(|l| l.pending.load(Ordering::Relaxed) == 0),
            "every call ended is no longer pending"
        );
    }

    #[tokio::test]
    async fn a_message_larger_than_the_cores_window_goes_out_whole() {
        // The core's stream window is h2's default 64 KiB; the rest goes as it opens.
        let a = core("a", None).await;
        let pool = CorePool::new("test", SETTINGS);
        pool.insert("a".into(), target(a));
        let message = Bytes::from(vec![7_u8; 3 << 20]);
        let answered = tokio::time::timeout(Duration::from_secs(10), call_with(&pool, message));
        assert_eq!(answered.await.expect("answered").unwrap(), "a");
    }

    #[tokio::test]
    async fn a_call_made_as_the_core_is_added_waits_for_its_connection() {
        let a = core("a", None).await;
        let pool = CorePool::new("test", SETTINGS);
        pool.insert("a".into(), target(a));
        assert_eq!(call(&pool).await.unwrap(), "a");
    }

    #[tokio::test]
    async fn with_no_core_accepting_a_call_fails_at_once_as_unavailable() {
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let pool = CorePool::new("test", SETTINGS);
        pool.insert("gone".into(), target(closed));
        let started = std::time::Instant::now();
        let status = call(&pool).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        // Again, with the driver now waiting to retry.
        let status = call(&pool).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            started.elapsed() < SETTINGS.connect_timeout,
            "failed within {:?}",
            started.elapsed()
        );
    }
}

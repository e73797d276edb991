//! The accept loop: every connection gets TCP_NODELAY, an optional TLS handshake, HTTP/1.1 or
//! HTTP/2, its peer address (`ConnectInfo<SocketAddr>`) and a bound on how slowly it may start.
//! On shutdown the listener closes and the loop waits for the requests in flight.
//!
//! A client that connects and then sends nothing, or trickles its request headers, is cut off:
//! the TLS handshake and the first bytes must arrive within `header_read_timeout`, and then hyper
//! bounds the headers of every HTTP/1 request by the same time.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_rustls::TlsAcceptor;

use crate::EdgeConfig;

/// What HTTP/2 clients send first; anything else is HTTP/1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The largest header limit that stays under hyper's own read buffer (about 400 KiB), which
/// answers a bare 431 past it.
const MAX_HEADER_LIMIT: usize = 256 * 1024;

/// How the edge takes connections: TLS or not, and the HTTP settings of each.
#[derive(Clone)]
pub(super) struct Connections(Arc<Settings>);

struct Settings {
    tls: Option<TlsAcceptor>,
    http: auto::Builder<TokioExecutor>,
    start_timeout: Duration,
}

impl Connections {
    pub(super) fn new(config: &EdgeConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (1024..=MAX_HEADER_LIMIT).contains(&config.max_header_bytes),
            "the header size limit must be from 1024 to {MAX_HEADER_LIMIT} bytes (OPENCLAW_MAX_HEADER_BYTES), not {}",
            config.max_header_bytes
        );
        anyhow::ensure!(
            !config.header_read_timeout.is_zero(),
            "the header read timeout must be above zero (OPENCLAW_HEADER_READ_TIMEOUT_MS)"
        );
        let tls = config
            .tls
            .as_ref()
            .map(crate::tls::server_config)
            .transpose()?
            .map(TlsAcceptor::from);
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout);
        // hyper's HTTP/2 default (16 KiB) would refuse large headers before the edge can answer
        // with its envelope; leave room above the edge's own limit.
        let header_list = (config.max_header_bytes * 2).max(64 * 1024);
        http.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(header_list).unwrap_or(u32::MAX))
            // Reaps HTTP/2 connections whose peer vanished without closing them.
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        Ok(Self(Arc::new(Settings {
            tls,
            http,
            start_timeout: config.header_read_timeout,
        })))
    }

    /// Accepts until `shutdown` resolves, then waits for every connection to finish its requests.
    pub(super) async fn serve(
        self,
        listener: TcpListener,
        app: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let graceful = GracefulShutdown::new();
        // Connections still being set up (TLS handshake, first bytes) stop on this.
        let (stopping, stopped) = watch::channel(false);
        tokio::pin!(shutdown);
        loop {
            let (tcp, remote) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        pause_after_accept_error(&error).await;
                        continue;
                    }
                },
            };
            // Small JSON answers: don't let Nagle hold them back.
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::trace!(%error, "could not set TCP_NODELAY");
            }
            let connections = self.clone();
            let app = app.clone();
            let watcher = graceful.watcher();
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let started = tokio::select! {
                    started = connections.start(tcp) => started,
                    _ = stopped.wait_for(|stop| *stop) => return,
                };
                let Some(io) = started else { return };
                let tls = connections.0.tls.is_some();
                let service = hyper::service::service_fn(
                    move |mut request: hyper::Request<hyper::body::Incoming>| {
                        request.extensions_mut().insert(ConnectInfo(remote));
                        if tls {
                            request
                                .extensions_mut()
                                .insert(crate::client_address::ReachedOverTls);
                        }
                        // The router is always ready and never fails.
                        tower::ServiceExt::oneshot(app.clone(), request)
                    },
                );
                let connection = connections
                    .0
                    .http
                    .serve_connection_with_upgrades(TokioIo::new(io), service);
                if let Err(error) = watcher.watch(connection.into_owned()).await {
                    tracing::debug!(%remote, error = %error, "connection ended with an error");
                }
            });
        }
        drop(listener);
        let _ = stopping.send(true);
        graceful.shutdown().await;
    }

    /// The TLS handshake (when configured) and enough of the first bytes to tell HTTP/2 from
    /// HTTP/1, within the start timeout. `None`: the client was too slow, failed the handshake,
    /// or left.
    async fn start(&self, tcp: TcpStream) -> Option<Replay<Stream>> {
        let settings = &self.0;
        let start = async {
            let mut stream = match &settings.tls {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(tls) => Stream::Tls(Box::new(tls)),
                    Err(error) => {
                        tracing::debug!(%error, "TLS handshake failed");
                        return None;
                    }
                },
                None => Stream::Plain(tcp),
            };
            let first = read_preface(&mut stream).await.ok()?;
            (!first.is_empty()).then(|| Replay::new(first, stream))
        };
        match tokio::time::timeout(settings.start_timeout, start).await {
            Ok(started) => started,
            Err(_) => {
                tracing::debug!("a client sent nothing within the header read timeout");
                None
            }
        }
    }
}

/// Reads until the bytes differ from HTTP/2's preface (an HTTP/1 request) or hold all of it.
async fn read_preface(stream: &mut Stream) -> io::Result<Vec<u8>> {
    let mut first = Vec::with_capacity(H2_PREFACE.len());
    let mut chunk = [0u8; H2_PREFACE.len()];
    while first.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&first) {
        let read = stream
            .read(&mut chunk[..H2_PREFACE.len() - first.len()])
            .await?;
        if read == 0 {
            break;
        }
        first.extend_from_slice(&chunk[..read]);
    }
    Ok(first)
}

/// Errors of one accepted connection (the peer left early) are not the listener's; others (out
/// of file descriptors) are, and retrying at once would spin.
async fn pause_after_accept_error(error: &io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accepting a connection failed; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A client connection, with or without TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// A stream whose first bytes, already read, are read again before the rest.
struct Replay<S> {
    first: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S> Replay<S> {
    fn new(first: Vec<u8>, inner: S) -> Self {
        Self {
            first,
            offset: 0,
            inner,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(tcp) => tcp.is_write_vectored(),
            Stream::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.offset < this.first.len() {
            let rest = &this.first[this.offset..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.offset += n;
            if this.offset == this.first.len() {
                this.first = Vec::new();
                this.offset = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    #[tokio::test]
    async fn an_http1_request_is_told_apart_and_replayed_whole() {
        let (mut client, server) = pair().await;
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut stream = Stream::Plain(server);
        let first = read_preface(&mut stream).await.expect("read");
        // Whatever arrived, up to the preface's length; "G" alone already rules HTTP/2 out.
        assert!(!first.is_empty() && b"GET / HTTP/1.1\r\n\r\n".starts_with(&first));
        let mut replay = Replay::new(first, stream);
        let mut all = vec![0u8; 18];
        replay.read_exact(&mut all).await.expect("replayed");
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn the_http2_preface_is_read_whole_even_in_pieces() {
        let (mut client, server) = pair().await;
        let writer = tokio::spawn(async move {
            for piece in H2_PREFACE.chunks(5) {
                client.write_all(piece).await.expect("write");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            client
        });
        let mut stream = Stream::Plain(server);
        let first = read_preface(&mut stream).await.expect("read");
        assert_eq!(first, H2_PREFACE);
        drop(writer.await);
    }
}

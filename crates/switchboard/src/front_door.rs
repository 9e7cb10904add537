//! The front door: accepts TCP connections, refuses those over the connection cap or a
//! client address's rate, serves HTTP/1.1 (over TLS when configured) with header and
//! body timeouts, and closes every socket with a lingering close.
//!
//! A lingering close matters because closing a socket with unread input makes the
//! kernel send a reset, and a reset discards what the client has not read yet: the
//! close frame with its code, or the response that explains the close.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::NetworkConfig;
use crate::limiter::PerIpRate;
use crate::metrics::Metrics;

/// Descriptors kept free for files, the engine's sockets and the reserve: the
/// connection cap's default is the open-files limit minus this.
const FD_HEADROOM: usize = 64;
/// Pause after an accept error that is not about one connection (out of descriptors
/// or memory): retrying at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// What a refused connection is told, written at once without reading its request.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

/// Admission state shared by the accept loop and the handlers.
pub struct Door {
    config: NetworkConfig,
    max_connections: usize,
    /// Sockets open, lingering ones included.
    open: AtomicUsize,
    connections_per_ip: PerIpRate,
    handshakes_per_ip: PerIpRate,
    /// Counts refusals.
    metrics: Arc<Metrics>,
    /// Set when serving `https`/`wss`.
    tls: Option<TlsAcceptor>,
}

impl Door {
    pub(crate) fn new(
        config: &NetworkConfig,
        metrics: Arc<Metrics>,
        tls: Option<TlsAcceptor>,
    ) -> Arc<Self> {
        let max_connections = match config.max_connections {
            0 => open_files_limit().map_or(usize::MAX, |n| n.saturating_sub(FD_HEADROOM).max(1)),
            n => n,
        };
        Arc::new(Self {
            config: config.clone(),
            max_connections,
            open: AtomicUsize::new(0),
            connections_per_ip: PerIpRate::new(
                config.connection_rate_per_ip,
                config.connection_burst_per_ip,
            ),
            handshakes_per_ip: PerIpRate::new(
                config.handshake_rate_per_ip,
                config.handshake_burst_per_ip,
            ),
            metrics,
            tls,
        })
    }

    fn admit_connection(self: &Arc<Self>, peer: IpAddr) -> Option<OpenGuard> {
        // Counted first, so that concurrent accepts can not overshoot the cap.
        let guard = OpenGuard(self.clone());
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_connections
            || !self.connections_per_ip.admit(peer)
        {
            self.metrics.connections_refused.inc();
            return None;
        }
        Some(guard)
    }
}

/// Counts one open socket until dropped (after its lingering close).
struct OpenGuard(Arc<Door>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The open-files limit of this process, from `/proc/self/limits` (Linux).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The client address of a request, and the handshake rate it is subject to: an
/// extractor that never fails (a router served elsewhere, as in a test, has no peer).
#[derive(Clone)]
pub struct Peer(Option<(SocketAddr, Arc<Door>)>);

impl Peer {
    /// The client's socket address, when served by the front door.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.0.as_ref().map(|(a, _)| *a)
    }

    /// Counts one new WebSocket connection or Socket.IO handshake against the client
    /// address's rate.
    ///
    /// # Errors
    /// [`Busy`] when the address is over `network.handshake_rate_per_ip`.
    pub fn admit_handshake(&self) -> Result<(), Busy> {
        match &self.0 {
            Some((addr, door)) if !door.handshakes_per_ip.admit(addr.ip()) => {
                door.metrics.connections_refused.inc();
                Err(Busy)
            }
            _ => Ok(()),
        }
    }
}

/// A client over a cap or rate, answered `503` with `Retry-After: 1`.
#[derive(Debug, Clone, Copy)]
pub struct Busy;

impl IntoResponse for Busy {
    fn into_response(self) -> Response {
        let mut r = (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        r
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Peer>()
            .cloned()
            .unwrap_or(Peer(None)))
    }
}

/// Accepts connections until `stop` is cancelled, then lets in-flight requests finish
/// for at most `drain`.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    door: Arc<Door>,
    stop: CancellationToken,
    drain: Duration,
) {
    let connections = TaskTracker::new();
    // A descriptor held in reserve: when accept fails for want of descriptors, it is
    // given up to accept and refuse one waiting client, which otherwise would wait in
    // the listen queue until it gives up.
    let mut reserve = std::fs::File::open("/dev/null").ok();
    loop {
        let accepted = tokio::select! {
            biased;
            // Cancel-safe: holds no state.
            () = stop.cancelled() => break,
            // Cancel-safe: tokio's accept loses no connection when dropped.
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let Some(guard) = door.admit_connection(peer.ip()) else {
                    refuse(&tcp);
                    continue;
                };
                let conn = connection(tcp, peer, guard, &router, &door, &stop);
                connections.spawn(conn);
            }
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                if reserve.take().is_some() {
                    if let Ok(Ok((tcp, _))) =
                        tokio::time::timeout(ACCEPT_BACKOFF, listener.accept()).await
                    {
                        door.metrics.connections_refused.inc();
                        refuse(&tcp);
                    }
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                if reserve.is_none() {
                    reserve = std::fs::File::open("/dev/null").ok();
                }
            }
        }
    }
    // New clients are refused by the kernel from now on, not left in the listen queue.
    drop(listener);
    connections.close();
    if tokio::time::timeout(drain, connections.wait())
        .await
        .is_err()
    {
        tracing::debug!("HTTP connections did not finish in time");
    }
}

/// Errors about one connection (it was reset before it was accepted): the next accept
/// may succeed at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Answers `503` without waiting: the reply fits the empty send buffer of a fresh socket.
fn refuse(tcp: &TcpStream) {
    let _ = tcp.try_write(REFUSAL);
}

/// Serves one connection's HTTP/1.1 requests (and its upgrade to WebSocket), after a
/// TLS handshake when configured.
fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    guard: OpenGuard,
    router: &Router,
    door: &Arc<Door>,
    stop: &CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let _ = tcp.set_nodelay(true);
    let config = &door.config;
    let io = LingeringStream {
        tcp: Some(tcp),
        linger: config.close_linger,
        guard: Some(guard),
    };
    let body_timeout = config.body_read_timeout;
    let extension = Peer(Some((peer, door.clone())));
    let router = router.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let mut req = req.map(|body| {
            if http_body::Body::is_end_stream(&body) {
                Body::new(body)
            } else {
                Body::new(TimedBody::new(body, body_timeout))
            }
        });
        req.extensions_mut().insert(extension.clone());
        tower_service::Service::call(&mut router.clone(), req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let header_read_timeout = config.header_read_timeout;
    let tls = door.tls.clone();
    let stop = stop.clone();
    async move {
        let Some(tls) = tls else {
            return http(&builder, io, service, &stop).await;
        };
        // The handshake is the start of the first request: it gets the header timeout.
        // A failed one drops the stream, which closes the socket the lingering way.
        match tokio::time::timeout(header_read_timeout, tls.accept(io)).await {
            Ok(Ok(stream)) => http(&builder, stream, service, &stop).await,
            Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }
}

/// Serves HTTP/1.1 on `io` until the client leaves or `stop` (then gracefully).
async fn http<I, S>(
    builder: &hyper::server::conn::http1::Builder,
    io: I,
    service: S,
    stop: &CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming, ResBody = Body> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        // Cancel-safe: the connection is polled by reference.
        _ = conn.as_mut() => {}
        // Cancel-safe: holds no state.
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A TCP socket that, when dropped, is closed the lingering way: the write side is
/// shut, then input is read and discarded until the peer closes or `linger` passes.
struct LingeringStream {
    tcp: Option<TcpStream>,
    linger: Duration,
    guard: Option<OpenGuard>,
}

impl LingeringStream {
    fn tcp(&mut self) -> io::Result<&mut TcpStream> {
        self.tcp
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl Drop for LingeringStream {
    fn drop(&mut self) {
        let (Some(tcp), Ok(runtime)) = (self.tcp.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let guard = self.guard.take();
        let linger = self.linger;
        runtime.spawn(async move {
            linger_close(tcp, linger).await;
            drop(guard);
        });
    }
}

async fn linger_close(mut tcp: TcpStream, linger: Duration) {
    let _ = tokio::time::timeout(linger, async {
        let _ = tcp.shutdown().await;
        let mut buf = [0u8; 1024];
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

impl AsyncRead for LingeringStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.tcp()?).poll_read(cx, buf)
    }
}

impl AsyncWrite for LingeringStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.tcp()?).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.tcp()?).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.tcp()?).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.tcp()?).poll_shutdown(cx)
    }
}

/// A request body that fails once `network.body_read_timeout` has passed since the
/// headers: a stalled upload is cut instead of holding the connection.
struct TimedBody {
    inner: Incoming,
    /// Boxed: only requests with a body pay for the timer.
    deadline: Pin<Box<Sleep>>,
}

impl TimedBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

/// The error of a body that took longer than `network.body_read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("request body read timeout")]
struct BodyTimeout;

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        ready!(self.deadline.as_mut().poll(cx));
        Poll::Ready(Some(Err(BodyTimeout.into())))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

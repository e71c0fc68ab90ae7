//! The accept loop: TCP listener -> (optional) TLS handshake -> hyper's HTTP/1.1 + HTTP/2 server
//! (`auto`: ALPN or the HTTP/2 preface decides) -> the axum router. Every request carries the peer
//! address (`ConnectInfo<SocketAddr>`) and, after a mutual-TLS handshake, the client certificate's
//! subject CN (`ClientCertName`) in its extensions. On the stop signal the loop stops accepting,
//! asks every open connection to finish its in-flight requests and close (HTTP/1: after the current
//! response; HTTP/2: GOAWAY), and returns once they have. On SIGHUP a TLS listener reloads its
//! certificate files (`tls::Tls::reload`) for the next connections.
//!
//! This is the one place connections are admitted (`ConnectionLimits`): at most `max_connections`
//! open per port (beyond it a new connection is answered 503 with `Retry-After` on plain HTTP, or
//! closed on TLS, at once, so `accept` keeps up and the file-descriptor limit is never reached by
//! connections alone); the TLS handshake and each request head must arrive within
//! `header_read_timeout` (hyper's timer; on HTTP/1.1 it also bounds the idle wait between
//! requests); HTTP/2 streams per connection and header-list size are capped, dead HTTP/2 peers
//! are found by PING, and a connection with no request in progress for `http2_idle_timeout` is
//! closed gracefully (GOAWAY on HTTP/2). Nothing here knows a route or a model.

pub mod cert;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tower::ServiceExt;

use tls::Tls;

pub use crate::config::ConnectionLimits;

/// Largest HTTP/2 header list a client may send (hyper's default is 16 MiB).
const HTTP2_MAX_HEADER_LIST: u32 = 64 * 1024;
/// HTTP/2 PING interval and timeout: a peer that stops answering is dropped.
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(20);
/// Connections over the cap being answered at once; beyond this they are closed unanswered.
const REFUSING_MAX: usize = 256;
/// How long an over-the-cap connection is given to take its 503 before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_millis(500);

/// The subject common name of the verified client certificate of a mutual-TLS connection, in the
/// extensions of every request on that connection. Absent on plain HTTP, on TLS without client
/// certificates, and when the certificate's subject has no CN.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientCertName(pub String);

/// Serves `app` on `listener` (over TLS when `tls` is given) until `stop` turns true, then drains.
pub fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<Tls>>,
    limits: ConnectionLimits,
    stop: watch::Receiver<bool>,
) -> JoinHandle<io::Result<()>> {
    tokio::spawn(accept_loop(listener, app, tls, limits, stop))
}

fn builder(limits: &ConnectionLimits) -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        .max_header_list_size(HTTP2_MAX_HEADER_LIST)
        .keep_alive_interval(HTTP2_KEEPALIVE)
        .keep_alive_timeout(HTTP2_KEEPALIVE);
    b
}

async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<Tls>>,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(builder(&limits));
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let refusing = Arc::new(Semaphore::new(REFUSING_MAX));
    let mut hangup = tls.as_ref().and_then(|_| reload_signal());
    loop {
        tokio::select! {
            // the guard `wait_for` returns is not Send: drop it inside the branch's future
            _ = async { stop.wait_for(|s| *s).await.is_ok() } => break,
            _ = next_signal(&mut hangup) => {
                // reads three small files on this task: accepting pauses for well under a ms
                if let Some(tls) = &tls {
                    reload(tls);
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let Ok(permit) = open.clone().try_acquire_owned() else {
                        refuse(tcp, peer, tls.is_some(), &refusing, limits.max_connections);
                        continue;
                    };
                    let conn = Connection {
                        app: app.clone(),
                        tls: tls.as_ref().map(|t| t.acceptor()),
                        builder: builder.clone(),
                        watcher: graceful.watcher(),
                        peer,
                        handshake_timeout: limits.header_read_timeout,
                        idle_timeout: limits.http2_idle_timeout,
                        stop: stop.clone(),
                        _permit: permit,
                    };
                    tokio::spawn(conn.serve(tcp));
                }
                Err(e) => accept_error(e).await,
            },
        }
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A connection over the cap: on plain HTTP a 503 with `Retry-After` and `Connection: close`, the
/// request (if any arrived) read and dropped for a moment so the client sees the answer rather than a
/// reset; on TLS (no handshake to spend on it) it is closed at once. At most `REFUSING_MAX` are
/// answered at a time; the rest are closed unanswered.
fn refuse(tcp: TcpStream, peer: SocketAddr, tls: bool, refusing: &Arc<Semaphore>, cap: usize) {
    tracing::debug!(%peer, cap, "connection refused: too many open connections");
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        return;
    };
    if tls {
        return;
    }
    tokio::spawn(answer_503(tcp, permit));
}

async fn answer_503(mut tcp: TcpStream, _permit: OwnedSemaphorePermit) {
    const BODY: &str = "{\"error\":\"too many open connections; retry later\"}";
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        tcp.write_all(head.as_bytes()).await?;
        tcp.shutdown().await?;
        let mut sink = [0u8; 4096];
        while tcp.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
}

/// What one accepted connection needs.
struct Connection {
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    builder: Arc<Builder<TokioExecutor>>,
    watcher: Watcher,
    peer: SocketAddr,
    /// The TLS handshake must finish within this.
    handshake_timeout: Duration,
    /// With no request in progress for this long, the connection is closed gracefully (HTTP/2:
    /// GOAWAY; HTTP/1.1 is already closed sooner by `header_read_timeout`).
    idle_timeout: Duration,
    /// The server's stop signal: the connection finishes its requests and closes.
    stop: watch::Receiver<bool>,
    /// This connection's place under `max_connections`, given back when it closes.
    _permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn serve(self, tcp: TcpStream) {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(peer = %self.peer, error = %e, "cannot set TCP_NODELAY");
        }
        let Some(acceptor) = self.tls.clone() else {
            return self.http(tcp, None).await;
        };
        let stream = match tokio::time::timeout(self.handshake_timeout, acceptor.accept(tcp)).await
        {
            Ok(Ok(s)) => s,
            Err(_) => {
                tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                return;
            }
            Ok(Err(e)) => {
                // plain HTTP on the TLS port, an untrusted or missing client certificate, a scanner:
                // the client's problem, so not a warning
                tracing::debug!(peer = %self.peer, error = %e, "TLS handshake refused");
                return;
            }
        };
        let session = stream.get_ref().1;
        let name = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| cert::subject_common_name(leaf))
            .map(ClientCertName);
        tracing::debug!(
            peer = %self.peer,
            alpn = session.alpn_protocol().map(String::from_utf8_lossy).as_deref(),
            client_cn = name.as_ref().map(|n| n.0.as_str()),
            "TLS connection"
        );
        self.http(stream, name).await
    }

    /// HTTP/1.1 (keep-alive) or HTTP/2 on an established stream, until the peer closes or the
    /// graceful shutdown has let the in-flight requests finish.
    async fn http<I>(self, io: I, name: Option<ClientCertName>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // HTTP/1.1 requests run in this task: they share the connection's memo of its last
        // credential (`auth::CredentialMemo`); HTTP/2 streams are tasks of their own.
        crate::auth::CONNECTION_CREDENTIAL
            .scope(Default::default(), self.serve_http(io, name))
            .await
    }

    async fn serve_http<I>(self, io: I, name: Option<ClientCertName>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (app, peer) = (self.app, self.peer);
        let streams = Arc::new(Streams::default());
        let open = streams.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            if let Some(n) = &name {
                req.extensions_mut().insert(n.clone());
            }
            let guard = Stream::open(&open);
            let response = app.clone().oneshot(req);
            async move {
                let r = response.await;
                drop(guard);
                r
            }
        });
        // hyper-util reads the first bytes (HTTP/1 or the HTTP/2 preface?) before hyper's own
        // header timer runs: a connection that sends nothing at all must time out here.
        let io = FirstByteDeadline {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(self.handshake_timeout))),
        };
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        // Counted by the server's drain (`GracefulShutdown`) until this connection ends.
        let _watcher = self.watcher;
        let mut stop = self.stop;
        let mut closing = false;
        let ended = loop {
            tokio::select! {
                ended = conn.as_mut() => break ended,
                _ = async { stop.wait_for(|s| *s).await.is_ok() }, if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = streams.idle_for(self.idle_timeout), if !closing => {
                    tracing::debug!(%peer, "idle connection closed");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        };
        if let Err(e) = ended {
            tracing::trace!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// The requests in progress on one connection (HTTP/2 streams, or the one HTTP/1.1 request), and
/// a wake-up each time the count falls to zero.
#[derive(Default)]
struct Streams {
    open: std::sync::atomic::AtomicUsize,
    ended: tokio::sync::Notify,
}

impl Streams {
    /// Returns once no request has been in progress for `timeout` (the wait restarts whenever one
    /// ends).
    async fn idle_for(&self, timeout: Duration) {
        use std::sync::atomic::Ordering;
        loop {
            if self.open.load(Ordering::Acquire) == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(timeout) => {
                        if self.open.load(Ordering::Acquire) == 0 {
                            return;
                        }
                    }
                    _ = self.ended.notified() => {}
                }
            } else {
                self.ended.notified().await;
            }
        }
    }
}

/// One request in progress: counted in `Streams` until its response is ready.
struct Stream(Arc<Streams>);

impl Stream {
    fn open(streams: &Arc<Streams>) -> Stream {
        streams
            .open
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Stream(streams.clone())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self
            .0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            self.0.ended.notify_one();
        }
    }
}

/// A stream whose first read must bring data before `deadline`; after that, the stream itself.
struct FirstByteDeadline<I> {
    io: I,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstByteDeadline<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.deadline = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within the header timeout",
                ))),
                _ => Poll::Pending,
            },
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstByteDeadline<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// SIGHUP as a stream; `None` (after a warning) where it cannot be installed.
#[cfg(unix)]
fn reload_signal() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup())
        .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP: no TLS reload"))
        .ok()
}

#[cfg(not(unix))]
fn reload_signal() -> Option<()> {
    None
}

/// The next SIGHUP; never, without a listener.
#[cfg(unix)]
async fn next_signal(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_signal(_: &mut Option<()>) {
    std::future::pending().await
}

/// Reloads the certificate files: one info line on success, a warning (old config kept) on error.
/// Names files, never key material.
fn reload(tls: &Tls) {
    let files = tls.files();
    match tls.reload() {
        Ok(()) => tracing::info!(
            cert = %files.cert.display(),
            client_ca = files.client_ca.as_ref().map(|p| p.display().to_string()),
            "TLS certificates reloaded (SIGHUP): new connections use them"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "TLS reload failed (SIGHUP): keeping the previous certificates"
        ),
    }
}

/// Per-connection accept errors (the peer gave up) are ignored; others (out of file descriptors)
/// are logged and the loop pauses a second so it does not spin, as hyper and axum do.
async fn accept_error(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; pausing for a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

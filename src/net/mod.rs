//! The accept loop: TCP listener -> (optional) TLS handshake -> hyper's HTTP/1.1 + HTTP/2 server
//! (`auto`: ALPN or the HTTP/2 preface decides) -> the axum router. Every request carries the peer
//! address (`ConnectInfo<SocketAddr>`) and, after a mutual-TLS handshake, the client certificate's
//! subject CN (`ClientCertName`) in its extensions. On the stop signal the loop stops accepting,
//! asks every open connection to finish its in-flight requests and close (HTTP/1: after the current
//! response; HTTP/2: GOAWAY), and returns once they have. On SIGHUP a TLS listener reloads its
//! certificate files (`tls::Tls::reload`) for the next connections.
//!
//! This is the one place connections are admitted: connection limits and handshake/header
//! timeouts belong in `accept_loop` / `serve_connection`. Nothing here knows a route or a model.

pub mod cert;
pub mod tls;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::ServiceExt;

use tls::Tls;

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
    stop: watch::Receiver<bool>,
) -> JoinHandle<io::Result<()>> {
    tokio::spawn(accept_loop(listener, app, tls, stop))
}

async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<Tls>>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    let builder = Arc::new(Builder::new(TokioExecutor::new()));
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
                    let conn = Connection {
                        app: app.clone(),
                        tls: tls.as_ref().map(|t| t.acceptor()),
                        builder: builder.clone(),
                        watcher: graceful.watcher(),
                        peer,
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

/// What one accepted connection needs.
struct Connection {
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    builder: Arc<Builder<TokioExecutor>>,
    watcher: Watcher,
    peer: SocketAddr,
}

impl Connection {
    async fn serve(self, tcp: TcpStream) {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(peer = %self.peer, error = %e, "cannot set TCP_NODELAY");
        }
        let Some(acceptor) = self.tls.clone() else {
            return self.http(tcp, None).await;
        };
        let stream = match acceptor.accept(tcp).await {
            Ok(s) => s,
            Err(e) => {
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
        let (app, peer) = (self.app, self.peer);
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            if let Some(n) = &name {
                req.extensions_mut().insert(n.clone());
            }
            app.clone().oneshot(req)
        });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        if let Err(e) = self.watcher.watch(conn).await {
            tracing::trace!(%peer, error = %e, "connection ended with an error");
        }
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

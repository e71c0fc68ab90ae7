//! Composition root: discover devices, start the telemetry sampler, bind the HTTP and metrics
//! listeners (served by `net`: accept loop, TLS), load the repository (warm-up included) and flip
//! readiness. `shutdown` owns the order: not ready, stop accepting, drain in-flight requests
//! (bounded), stop models and join their workers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, AppState};
use crate::config::Settings;
use crate::device;
use crate::net::{self, tls::Tls};
use crate::repository::Repository;
use crate::telemetry::gpu::{self, GpuError, GpuSource};
use crate::telemetry::{Metrics, Sampler};

/// A running server.
pub struct Server {
    http_addr: SocketAddr,
    metrics_addr: SocketAddr,
    state: AppState,
    stop: watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
    metrics: JoinHandle<std::io::Result<()>>,
    exit_timeout: std::time::Duration,
    sampler: Sampler,
}

impl Server {
    /// Binds, serves, loads every model; returns once the repository is loaded (ready).
    pub async fn start(settings: &Settings) -> anyhow::Result<Server> {
        Self::start_with_gpu_source(settings, gpu::open_default()).await
    }

    /// As `start`, with the GPU telemetry source given (tests pass a simulated one).
    pub async fn start_with_gpu_source(
        settings: &Settings,
        gpu_source: Result<Box<dyn GpuSource>, GpuError>,
    ) -> anyhow::Result<Server> {
        let devices = device::discover(&settings.gpus);
        let metrics = Arc::new(Metrics::new());
        let sampler = Sampler::spawn(gpu_source, settings.metrics_interval, metrics.clone())
            .context("cannot start the telemetry thread")?;
        let repo = Arc::new(Repository::new(
            settings.model_repository.clone(),
            devices,
            metrics.clone(),
        ));
        let state = AppState {
            repo: repo.clone(),
            metrics: metrics.clone(),
            telemetry: sampler.telemetry(),
            accepting: Arc::new(AtomicBool::new(false)),
            max_body_bytes: settings.max_body_bytes,
        };
        // Bad certificate files stop the start, before anything listens.
        let tls = match &settings.tls {
            None => None,
            Some(files) => Some(Arc::new(Tls::load(files).context("TLS on the HTTP port")?)),
        };
        let http = TcpListener::bind((settings.host, settings.http_port))
            .await
            .with_context(|| {
                format!("cannot listen on {}:{}", settings.host, settings.http_port)
            })?;
        let metrics_l = TcpListener::bind((settings.host, settings.metrics_port))
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}:{}",
                    settings.host, settings.metrics_port
                )
            })?;
        let (http_addr, metrics_addr) = (http.local_addr()?, metrics_l.local_addr()?);
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(
            "listening on {scheme}://{http_addr} (metrics on http://{metrics_addr}/metrics)"
        );
        if let Some(t) = &tls {
            tracing::info!(
                cert = %t.files().cert.display(),
                client_ca = t.files().client_ca.as_ref().map(|p| p.display().to_string()),
                mutual = t.mutual(),
                "TLS on the HTTP port (HTTP/1.1 and HTTP/2 by ALPN); SIGHUP reloads the files"
            );
        }
        let (stop, stop_rx) = watch::channel(false);
        let http = net::serve(http, api::router(state.clone()), tls, stop_rx.clone());
        let metrics_task = net::serve(metrics_l, api::metrics_router(metrics), None, stop_rx);
        repo.load_all().await;
        state.accepting.store(true, Ordering::Release);
        tracing::info!(models = repo.index().len(), "server ready");
        Ok(Server {
            http_addr,
            metrics_addr,
            state,
            stop,
            http,
            metrics: metrics_task,
            exit_timeout: settings.exit_timeout,
            sampler,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Graceful stop: readiness off, no new connections, in-flight requests drained (at most
    /// `exit_timeout`), then models stopped and workers joined.
    pub async fn shutdown(self) {
        tracing::info!(
            timeout_s = self.exit_timeout.as_secs_f64(),
            "shutting down: draining in-flight requests"
        );
        self.state.accepting.store(false, Ordering::Release);
        let _ = self.stop.send(true);
        match tokio::time::timeout(self.exit_timeout, self.http).await {
            Ok(Ok(Ok(()))) => tracing::info!("in-flight requests drained"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
            Err(_) => tracing::warn!("drain timed out; remaining requests are dropped"),
        }
        self.state.repo.shutdown().await;
        self.metrics.abort();
        // Joins the sampler thread: at most one sample late.
        let mut sampler = self.sampler;
        let _ = tokio::task::spawn_blocking(move || sampler.stop()).await;
        tracing::info!("shutdown complete");
    }
}

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

use crate::api::{self, AppInner, AppState, BodyKey, Security};
use crate::cache::RedisLevel;
use crate::config::{redacted, ModelControl, Settings};
use crate::device;
use crate::net::{self, tls::Tls};
use crate::repository::Repository;
use crate::telemetry::gpu::{self, GpuError, GpuSource};
use crate::telemetry::{Metrics, Sampler};

/// A running server.
pub struct Server {
    http_addr: SocketAddr,
    metrics_addr: SocketAddr,
    grpc_addr: SocketAddr,
    state: AppState,
    stop: watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
    grpc: JoinHandle<std::io::Result<()>>,
    metrics: JoinHandle<std::io::Result<()>>,
    exit_timeout: std::time::Duration,
    sampler: Sampler,
    /// Background tasks (auth reload, repository poll), stopped at shutdown.
    tasks: Vec<JoinHandle<()>>,
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
        let cache_redis = match &settings.cache_redis {
            None => None,
            Some(r) => {
                let errors = metrics.cache_backend_errors("redis");
                let level = RedisLevel::spawn(r, errors)
                    .map_err(|e| anyhow::anyhow!("--cache-redis-url: {e}"))?;
                tracing::info!(redis = %redacted(&r.url), timeout_ms = r.timeout.as_millis() as u64, "response cache: shared Redis level");
                Some(level)
            }
        };
        let repo = Arc::new(
            Repository::new(settings.model_repository.clone(), devices, metrics.clone())
                .with_cache_redis(cache_redis)
                .with_state_dir(settings.state_dir.clone()),
        );
        let security = Arc::new(
            Security::new(settings.auth.as_ref()).map_err(|e| anyhow::anyhow!("[auth]: {e}"))?,
        );
        match &settings.auth {
            None => tracing::warn!(
                "no [auth] configured: every route is open to anyone who can reach this port \
                 (unauthenticated; fine for local use, not for a shared network)"
            ),
            Some(a) => tracing::info!(
                api_keys = a.api_keys.len(),
                jwt = a.jwt.is_some(),
                clients = a.clients.len(),
                "access control on: inference and management routes need credentials"
            ),
        }
        tracing::info!(
            model_control = settings.model_control.as_str(),
            "model control (load/unload through the API: only with explicit)"
        );
        let state = AppState::new(AppInner {
            repo: repo.clone(),
            metrics: metrics.clone(),
            telemetry: sampler.telemetry(),
            accepting: Arc::new(AtomicBool::new(false)),
            max_body_bytes: settings.max_body_bytes,
            body_timeout: settings.limits.body_timeout,
            inflight: Arc::new(tokio::sync::Semaphore::new(
                settings
                    .limits
                    .max_inflight_bytes
                    .min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
            security: security.clone(),
            model_control: settings.model_control,
            access_log: settings.access_log,
            body_key: Arc::new(BodyKey::random()),
            jobs: crate::jobs::Manager::new(settings.jobs.clone(), repo.clone(), &metrics),
        });
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
        let grpc_l = TcpListener::bind((settings.host, settings.grpc_port))
            .await
            .with_context(|| {
                format!("cannot listen on {}:{}", settings.host, settings.grpc_port)
            })?;
        let (http_addr, metrics_addr) = (http.local_addr()?, metrics_l.local_addr()?);
        let grpc_addr = grpc_l.local_addr()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(
            "listening on {scheme}://{http_addr} (metrics on http://{metrics_addr}/metrics)"
        );
        tracing::info!(
            "listening for gRPC on {}://{grpc_addr} (inference.GRPCInferenceService, grpc.health.v1)",
            if tls.is_some() { "grpcs" } else { "grpc" }
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
        let limits = settings.limits;
        let http = net::serve(
            http,
            api::router(state.clone()),
            tls.clone(),
            limits,
            stop_rx.clone(),
        );
        let grpc = net::serve(
            grpc_l,
            crate::grpc::router(state.clone(), settings.grpc_max_message_bytes),
            tls,
            limits,
            stop_rx.clone(),
        );
        let metrics_task = net::serve(
            metrics_l,
            api::metrics_router(state.clone()),
            None,
            limits,
            stop_rx,
        );
        let mut tasks = vec![reload_auth_task(settings, security, state.metrics.clone())];
        repo.load_all().await;
        // Unfinished bulk jobs resume once their models are loaded.
        state
            .jobs
            .resume()
            .context("cannot open --jobs-state-dir")?;
        if settings.model_control == ModelControl::Poll {
            tasks.push(poll_task(repo.clone(), settings.repository_poll));
        }
        tasks.push(guard_task(repo.clone()));
        state.accepting.store(true, Ordering::Release);
        tracing::info!(models = repo.index().len(), "server ready");
        Ok(Server {
            http_addr,
            metrics_addr,
            grpc_addr,
            state,
            stop,
            http,
            grpc,
            metrics: metrics_task,
            exit_timeout: settings.exit_timeout,
            sampler,
            tasks,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
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
        self.tasks.iter().for_each(JoinHandle::abort);
        let _ = self.stop.send(true);
        let both = async {
            let (http, grpc) = tokio::join!(self.http, self.grpc);
            http.and_then(|h| grpc.map(|g| h.and(g)))
        };
        match tokio::time::timeout(self.exit_timeout, both).await {
            Ok(Ok(Ok(()))) => tracing::info!("in-flight requests drained"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server task failed"),
            Err(_) => tracing::warn!("drain timed out; remaining requests are dropped"),
        }
        self.state.repo.shutdown().await;
        // Running bulk jobs see their model gone and record that they paused (resumed at start).
        self.state.jobs.wait_stopped(self.exit_timeout).await;
        self.metrics.abort();
        // Joins the sampler thread: at most one sample late.
        let mut sampler = self.sampler;
        let _ = tokio::task::spawn_blocking(move || sampler.stop()).await;
        tracing::info!("shutdown complete");
    }
}

/// How often the auth reload task looks at the files `[auth]` reads (Kubernetes Secret updates
/// send no signal).
const AUTH_FILES_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Reloads `[auth]` (API keys from the settings file, JWT key files) on SIGHUP and when one of
/// those files changes; a bad new config is logged and the old one keeps working.
fn reload_auth_task(
    settings: &Settings,
    security: Arc<Security>,
    metrics: Arc<Metrics>,
) -> JoinHandle<()> {
    let config_file = settings.config_file.clone();
    let mut files: Vec<std::path::PathBuf> = config_file.iter().cloned().collect();
    files.extend(
        settings
            .auth
            .as_ref()
            .map(crate::auth::Authenticator::watched_files)
            .unwrap_or_default(),
    );
    tokio::spawn(async move {
        let stamp = |files: &[std::path::PathBuf]| -> Vec<Option<std::time::SystemTime>> {
            files
                .iter()
                .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
                .collect()
        };
        let mut last = stamp(&files);
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; auth reloads on file changes only");
                None
            }
        };
        let mut tick = tokio::time::interval(AUTH_FILES_CHECK);
        loop {
            let why = tokio::select! {
                _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => "SIGHUP",
                _ = tick.tick() => {
                    let now = stamp(&files);
                    if now == last { continue; }
                    last = now;
                    "a file changed"
                }
            };
            let Some(path) = &config_file else {
                continue;
            };
            let result = Settings::reload_auth(path)
                .map_err(|e| e.to_string())
                .and_then(|cfg| {
                    security.reload(cfg.as_ref())?;
                    Ok(cfg)
                });
            metrics.record_auth_reload(result.is_ok());
            match result {
                Ok(cfg) => {
                    if let Some(c) = &cfg {
                        files = config_file.iter().cloned().collect();
                        files.extend(crate::auth::Authenticator::watched_files(c));
                        last = stamp(&files);
                    }
                    tracing::info!(reason = why, "access control reloaded")
                }
                Err(e) => {
                    tracing::warn!(reason = why, error = %e, "access control reload failed; the previous keys stay in force")
                }
            }
        }
    })
}

/// How often the rollout guard compares canaries with their live versions.
const GUARD_PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

/// The rollout guard (`[routing.guard]`): one pass a second over the models that have a canary.
fn guard_task(repo: Arc<Repository>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut memory = crate::repository::rollout_api::GuardMemory::default();
        let mut tick = tokio::time::interval(GUARD_PERIOD);
        loop {
            tick.tick().await;
            repo.guard_tick(&mut memory, std::time::Instant::now());
        }
    })
}

/// `--model-control poll`: rescans the repository every `every`.
fn poll_task(repo: Arc<Repository>, every: std::time::Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            repo.poll_once().await;
        }
    })
}

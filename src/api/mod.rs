//! HTTP routes (axum): one short handler file per protocol, shared state, middleware (request id,
//! tracing) and the error table. Handlers decode, submit to a model's queue and encode; they never
//! touch a device.

mod access;
pub(crate) mod auth;
mod devices;
mod error;
pub(crate) mod infer;
mod jobs;
mod kserve_v1;
pub(crate) mod kserve_v2;
pub(crate) mod monitor;
mod openai;
mod openapi;
pub(crate) mod repository;
mod rollout;
pub mod shadow;
pub(crate) mod stats;
mod tei;
mod text;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use axum::routing::get;
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use access::{request_id, BodyKey, RequestCtx, Served, REQUEST_ID};
pub use auth::Security;
pub use error::ApiError;

use crate::config::ModelControl;
use crate::repository::Repository;
use crate::telemetry::{Metrics, Telemetry};

/// What every handler can reach: one `Arc`, so that the clone each handler and middleware takes is a
/// single reference count, not one per field (measured: with eight `Arc` fields, their counts
/// bouncing between the I/O threads cost ~30% of digits throughput once two middleware layers
/// cloned the state too).
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

impl AppState {
    pub fn new(inner: AppInner) -> AppState {
        AppState(Arc::new(inner))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

pub struct AppInner {
    pub repo: Arc<Repository>,
    pub metrics: Arc<Metrics>,
    /// Latest GPU/CPU readings (for `/v2/devices`).
    pub telemetry: Telemetry,
    /// False while starting and once draining: readiness and new inference say no.
    pub accepting: Arc<AtomicBool>,
    pub max_body_bytes: usize,
    /// The longest a client may take to send a body (`--body-timeout-secs`).
    pub body_timeout: std::time::Duration,
    /// Request-body bytes being read or served at once (`--max-inflight-bytes`), one permit a byte.
    pub inflight: Arc<tokio::sync::Semaphore>,
    /// Who may call what (`[auth]`), and their rate limits.
    pub security: Arc<Security>,
    /// Whether management routes are enabled (`--model-control`).
    pub model_control: ModelControl,
    /// Per-request access log (`--access-log`) and its body-hash key.
    pub access_log: bool,
    pub body_key: Arc<BodyKey>,
    /// Bulk jobs (`--jobs-state-dir`; off without it).
    pub jobs: Arc<crate::jobs::Manager>,
}

impl AppInner {
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }
}

/// Every documented route of the API port, as `OpenApiRouter`s: each handler's `#[utoipa::path]`
/// gives both its route and its entry in the OpenAPI document (`openapi.rs`).
fn documented() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa::OpenApi;
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(kserve_v2::server_metadata))
        .routes(routes!(kserve_v2::live))
        .routes(routes!(kserve_v2::ready))
        .routes(routes!(kserve_v2::model_metadata))
        .routes(routes!(kserve_v2::model_metadata_v))
        .routes(routes!(kserve_v2::model_ready))
        .routes(routes!(kserve_v2::model_ready_v))
        .routes(routes!(kserve_v2::model_config))
        .routes(routes!(stats::all))
        .routes(routes!(stats::model))
        .routes(routes!(stats::model_version))
        .routes(routes!(kserve_v2::infer))
        .routes(routes!(kserve_v2::infer_v))
        .routes(routes!(monitor::drift))
        .routes(routes!(monitor::drift_v))
        .routes(routes!(monitor::feedback))
        .routes(routes!(jobs::create))
        .routes(routes!(jobs::get, jobs::cancel))
        .routes(routes!(jobs::result))
        .routes(routes!(jobs::rejects))
        .routes(routes!(devices::devices))
        .routes(routes!(repository::index))
        .routes(routes!(repository::load))
        .routes(routes!(repository::unload))
        .routes(routes!(rollout::routing))
        .routes(routes!(rollout::promote))
        .routes(routes!(rollout::rollback))
        .routes(routes!(rollout::status))
        .routes(routes!(openai::embeddings))
        .routes(routes!(tei::embed))
        .routes(routes!(tei::info))
        .routes(routes!(kserve_v1::status, kserve_v1::predict))
        .routes(routes!(kserve_v1::predict_v))
}

/// The OpenAPI document of both ports (the API port's routes and the metrics port's), as served
/// at `GET /openapi.json`.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = documented().split_for_parts();
    let (_, metrics) = documented_metrics().split_for_parts();
    doc.merge(metrics);
    doc
}

/// The inference API router (KServe v2, KServe v1, repository extension, devices, health) and
/// `GET /openapi.json`.
pub fn router(state: AppState) -> Router {
    let (routes, _) = documented().split_for_parts();
    let doc = openapi::document(openapi_document());
    routes
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], doc) }
            }),
        )
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::edge,
        ))
        .with_state(state)
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &axum::http::Request<Body>| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("request", id, method = %req.method(), uri = %req.uri())
                })
                .on_failure(log_failure),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// The metrics router (`GET /metrics`, Prometheus text format; the `metrics` scope is required when
/// `[auth] protect_metrics` is set), and the liveness and readiness probes again, always open: with
/// mutual TLS on the HTTP port, kubelet (which presents no client certificate) cannot complete a
/// handshake there, so probes go to this plain-HTTP port instead.
pub fn metrics_router(state: AppState) -> Router {
    let (routes, _) = documented_metrics().split_for_parts();
    routes
        .route_layer(axum::middleware::from_fn_with_state(
            state.security.clone(),
            auth::authorize_metrics,
        ))
        .route("/v2/health/live", get(kserve_v2::live))
        .route("/v2/health/ready", get(kserve_v2::ready))
        .with_state(state)
}

/// The metrics port's documented route (`/metrics`; its probes are added after the auth layer,
/// outside it, and are documented with the API port's).
fn documented_metrics() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::new().routes(routes!(metrics))
}

/// Prometheus metrics in the text format (the `metrics` scope is needed when `[auth]
/// protect_metrics` is set).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "metrics",
    description = "Served on the metrics port (--metrics-port), not the API port.",
    responses(
        (status = 200, description = "Metrics", body = String, content_type = "text/plain"),
        openapi::KServeErrors
    )
)]
async fn metrics(
    axum::extract::State(s): axum::extract::State<AppState>,
) -> impl axum::response::IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// How long a body waits for room under `--max-inflight-bytes` before it gets 503.
const INFLIGHT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A request body read whole, and its share of the in-flight budget (given back when dropped: keep
/// it while the body, or what was decoded from it, is alive).
pub(crate) struct ReadBody {
    pub bytes: Bytes,
    pub _budget: tokio::sync::OwnedSemaphorePermit,
}

impl std::ops::Deref for ReadBody {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

/// Reads a whole body: 413 past `max_body_bytes`, 408 when it has not all arrived within the body
/// timeout (a body that stalls half-way would otherwise hold its buffer forever), and 503 with
/// `Retry-After` when the bodies being read and served at once would pass `--max-inflight-bytes`
/// (per-request limits alone do not bound the process: 64 maximum bodies at once are 4 GiB).
/// Budget is taken frame by frame as the bytes arrive, so a slow client holds only what it sent.
pub(crate) async fn read_body(
    s: &AppInner,
    headers: &HeaderMap,
    body: Body,
) -> Result<ReadBody, ApiError> {
    use http_body_util::BodyExt;
    let (limit, timeout) = (s.max_body_bytes, s.body_timeout);
    let too_large = || {
        ApiError::TooLarge(format!(
            "request body is larger than the limit of {limit} bytes"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let read = async {
        let mut budget = s.inflight.clone().try_acquire_many_owned(0).map_err(|_| {
            ApiError::Internal("the in-flight budget is closed. This is a bug.".into())
        })?;
        let mut body = body;
        // One frame (the usual small request) is kept as it came, without a copy.
        let mut first: Option<Bytes> = None;
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| ApiError::BadRequest(format!("cannot read request body: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            let have = first.as_ref().map_or(0, Bytes::len) + buf.len();
            if have + data.len() > limit {
                return Err(too_large());
            }
            let n = u32::try_from(data.len()).map_err(|_| too_large())?;
            let more =
                tokio::time::timeout(INFLIGHT_WAIT, s.inflight.clone().acquire_many_owned(n))
                    .await
                    .map_err(|_| {
                        ApiError::Overloaded(
                            "too many request bytes in flight on this server; retry later".into(),
                        )
                    })?
                    .map_err(|_| {
                        ApiError::Internal("the in-flight budget is closed. This is a bug.".into())
                    })?;
            budget.merge(more);
            match first.take() {
                None if buf.is_empty() => first = Some(data),
                earlier => {
                    if let Some(earlier) = earlier {
                        buf.reserve(declared.unwrap_or(0).min(limit));
                        buf.extend_from_slice(&earlier);
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
        Ok(ReadBody {
            bytes: first.unwrap_or_else(|| buf.freeze()),
            _budget: budget,
        })
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| {
        ApiError::Timeout(format!(
            "the request body did not arrive within {} s",
            timeout.as_secs()
        ))
    })?
}

/// tower-http's failure hook: a 503 (queue timeout, overload, not ready) is expected under load and
/// counted in the metrics, so it is logged at debug, not once per request at error; any other server
/// error or a failed connection is an error.
fn log_failure(
    class: tower_http::classify::ServerErrorsFailureClass,
    latency: std::time::Duration,
    _span: &tracing::Span,
) {
    use tower_http::classify::ServerErrorsFailureClass as C;
    match class {
        C::StatusCode(code) if code == axum::http::StatusCode::SERVICE_UNAVAILABLE => {
            tracing::debug!(status = %code, ?latency, "request failed (unavailable)")
        }
        _ => tracing::error!(classification = %class, ?latency, "request failed"),
    }
}

//! Access control at the HTTP edge: a thin route layer around `auth::Authenticator` (who is
//! calling, may they, are they over their rate). The decisions live in `auth/`; this file only maps
//! a route to what it needs and a refusal to each door's status and error body.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::auth::{
    AuthConfig, AuthError, Authenticator, Need, Principal, RateDecision, RateLimiters,
};
use crate::protocol::{openai, tei};

/// The server's access-control state: the current verifiers (swapped whole on reload) and the
/// rate limiters (kept across reloads).
pub struct Security {
    /// `None`: no `[auth]`, every route is open (local use). Read on every request: an
    /// `ArcSwapOption` load touches no shared reference count (an `RwLock` plus an `Arc` clone
    /// costs two contended atomic writes per request).
    current: ArcSwapOption<Authenticator>,
    protect_metrics: std::sync::atomic::AtomicBool,
    pub rates: RateLimiters,
}

impl Security {
    pub fn new(cfg: Option<&AuthConfig>) -> Result<Security, String> {
        let s = Security {
            current: ArcSwapOption::empty(),
            protect_metrics: Default::default(),
            rates: RateLimiters::default(),
        };
        s.reload(cfg)?;
        Ok(s)
    }

    /// Builds new verifiers from `cfg` and swaps them in; on error the old ones stay.
    pub fn reload(&self, cfg: Option<&AuthConfig>) -> Result<(), String> {
        let next = cfg.map(Authenticator::new).transpose()?;
        self.protect_metrics.store(
            cfg.is_some_and(|c| c.protect_metrics),
            std::sync::atomic::Ordering::Release,
        );
        self.current.store(next);
        Ok(())
    }

    /// The current verifiers, for one request (a cheap guard; do not hold it across an await).
    pub fn current(&self) -> arc_swap::Guard<Option<Arc<Authenticator>>> {
        self.current.load()
    }

    pub fn protects_metrics(&self) -> bool {
        self.protect_metrics
            .load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Which error shape a route answers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    KServe,
    OpenAi,
    Tei,
}

impl Door {
    pub fn of(route: &str) -> Door {
        match route {
            "/v1/embeddings" => Door::OpenAi,
            "/embed" | "/info" => Door::Tei,
            _ => Door::KServe,
        }
    }
}

/// What a request path needs. Decided on the raw path, before routing, so that one edge layer
/// does access control and the access log (each axum layer costs a boxed service clone per
/// request). A `{model}` segment is compared as sent: a percent-encoded name needs `infer`.
pub fn need_of(path: &str) -> Need<'_> {
    fn segment(rest: &str) -> Option<&str> {
        rest.split('/').next().filter(|m| !m.is_empty())
    }
    match path {
        "/v2/health/live" | "/v2/health/ready" => Need::Nothing,
        // Every model's statistics: any infer scope (each model's own needs its name).
        "/v2/models/stats" => Need::Infer(None),
        p if p == "/v2/repository" || p.starts_with("/v2/repository/") => Need::Admin,
        // Ground truth: the `feedback` scope (or `admin`), not `infer`.
        p if p.starts_with("/v2/models/") && p.ends_with("/feedback") => Need::Feedback,
        // Bulk jobs: creating one on a model, and everything under /v2/jobs.
        p if p.starts_with("/v2/jobs/") || is_jobs_create(p) => Need::Jobs,
        p => match (p.strip_prefix("/v2/models/"), p.strip_prefix("/v1/models/")) {
            (Some(rest), _) => Need::Infer(segment(rest)),
            // `/v1/models/{model}:predict` carries `:predict` in the same segment.
            (_, Some(rest)) => {
                Need::Infer(segment(rest).map(|m| m.strip_suffix(":predict").unwrap_or(m)))
            }
            // Server metadata, devices, the embedding doors (the handler checks the model it
            // picks), and unknown paths (no route map for anonymous callers).
            _ => Need::Infer(None),
        },
    }
}

/// `/v2/models/{m}/jobs`.
fn is_jobs_create(path: &str) -> bool {
    path.strip_prefix("/v2/models/")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(_, tail)| tail == "jobs")
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Access control for one request: verifies the caller, checks the path's scope and the caller's
/// rate, and returns the `Principal` (the edge puts it in the request's context, where handlers
/// read it as `Caller`). `Err` is the refusal.
pub fn check(
    s: &AppState,
    auth: &Arc<Authenticator>,
    req: &Request,
) -> Result<Option<Arc<Principal>>, Box<Response>> {
    let principal = {
        let path = req.uri().path();
        let need = need_of(path);
        if need == Need::Nothing {
            return Ok(None);
        }
        let door = Door::of(path);
        let cn = req
            .extensions()
            .get::<crate::net::ClientCertName>()
            .map(|c| c.0.as_str());
        let (headers, now) = (req.headers(), now());
        // On an HTTP/1.1 connection, through the connection's memo of its last credential.
        let principal = crate::auth::CONNECTION_CREDENTIAL
            .try_with(|memo| auth.verify_remembered(headers, cn, now, &mut memo.borrow_mut()))
            .unwrap_or_else(|_| auth.verify(headers, cn, now))
            .map_err(|e| Box::new(refuse(door, e)))?;
        if !principal.allows(need) {
            tracing::info!(principal = %principal.name, path, "insufficient scope");
            return Err(Box::new(refuse(door, AuthError::Forbidden)));
        }
        if let RateDecision::Deny { retry_after } = s.security.rates.check(&principal) {
            s.metrics.record_rate_limited(need.label());
            tracing::info!(principal = %principal.name, scope = need.label(), "rate limited");
            return Err(Box::new(too_many(door, retry_after)));
        }
        principal
    };
    Ok(Some(principal))
}

/// The caller of the request a handler serves (`None` with no `[auth]`), as the edge layer left it
/// in the request's context (`RequestCtx::principal`). A handler run outside that context is a bug,
/// and is refused (500) rather than served as if auth were off.
pub struct Caller(pub Option<Arc<Principal>>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        _: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Caller, ApiError> {
        super::REQUEST_ID
            .try_with(|c| Caller(c.principal.clone()))
            .map_err(|_| {
                ApiError::internal("a handler ran outside the edge layer's request context")
            })
    }
}

/// Whether `principal` (if auth is on) may run inference on `model`; for doors that learn the
/// model from the body.
pub fn check_model(principal: Option<&Principal>, model: &str) -> Result<(), ApiError> {
    match principal {
        Some(p) if !p.allows(Need::Infer(Some(model))) => {
            Err(ApiError::Forbidden(AuthError::Forbidden.to_string()))
        }
        _ => Ok(()),
    }
}

/// The door's error body with `status`.
pub fn door_error(door: Door, status: StatusCode, message: &str) -> Response {
    match door {
        Door::OpenAi => {
            let kind = match status {
                StatusCode::TOO_MANY_REQUESTS => openai::ErrorKind::RateLimitError,
                StatusCode::UNAUTHORIZED => openai::ErrorKind::AuthenticationError,
                StatusCode::FORBIDDEN => openai::ErrorKind::PermissionError,
                _ => openai::ErrorKind::InvalidRequestError,
            };
            ApiError::respond(status, openai::encode_error(message, kind))
        }
        Door::Tei => {
            let kind = match status {
                StatusCode::TOO_MANY_REQUESTS => tei::ErrorType::Overloaded,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => tei::ErrorType::Unauthorized,
                _ => tei::ErrorType::Validation,
            };
            ApiError::respond(status, tei::encode_error(message, kind))
        }
        Door::KServe => ApiError::respond(status, serde_json::json!({ "error": message })),
    }
}

/// 401 (with `WWW-Authenticate: Bearer`) or 403. The body says only missing, invalid, expired or
/// insufficient scope.
pub fn refuse(door: Door, e: AuthError) -> Response {
    let status = match e {
        AuthError::Forbidden => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    };
    let mut resp = door_error(door, status, &e.to_string());
    let challenge = match e.bearer_error() {
        Some(code) => {
            format!("Bearer realm=\"ferrite\", error=\"{code}\", error_description=\"{e}\"")
        }
        None => "Bearer realm=\"ferrite\"".to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// 429 with `Retry-After` in whole seconds (at least 1).
fn too_many(door: Door, retry_after: Duration) -> Response {
    let mut resp = door_error(
        door,
        StatusCode::TOO_MANY_REQUESTS,
        "rate limit exceeded; retry later",
    );
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    resp.into_response()
}

/// Layer for the metrics port: requires the `metrics` scope when `protect_metrics` is set.
pub async fn authorize_metrics(
    State(security): State<Arc<Security>>,
    req: Request,
    next: Next,
) -> Response {
    let verdict = match &*security.current() {
        Some(auth) if security.protects_metrics() => Some(auth.verify(req.headers(), None, now())),
        _ => None,
    };
    match verdict {
        None => next.run(req).await,
        Some(Ok(p)) if p.allows(Need::Metrics) => next.run(req).await,
        Some(Ok(_)) => refuse(Door::KServe, AuthError::Forbidden),
        Some(Err(e)) => refuse(Door::KServe, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_scopes() {
        assert_eq!(need_of("/v2/health/ready"), Need::Nothing);
        assert_eq!(need_of("/v2/health/live"), Need::Nothing);
        assert_eq!(need_of("/v2/health/liveness"), Need::Infer(None));
        assert_eq!(need_of("/v2/repository/models/digits/load"), Need::Admin);
        assert_eq!(need_of("/v2/repository/index"), Need::Admin);
        assert_eq!(
            need_of("/v2/models/digits/versions/1/infer"),
            Need::Infer(Some("digits"))
        );
        assert_eq!(need_of("/v2/models/digits"), Need::Infer(Some("digits")));
        assert_eq!(need_of("/v2/models/stats"), Need::Infer(None));
        assert_eq!(need_of("/v2/models/digits/feedback"), Need::Feedback);
        assert_eq!(
            need_of("/v2/models/digits/drift"),
            Need::Infer(Some("digits"))
        );
        assert_eq!(need_of("/v2/models/minilm/jobs"), Need::Jobs);
        assert_eq!(need_of("/v2/jobs/1234/result"), Need::Jobs);
        assert_eq!(
            need_of("/v2/models/jobs"),
            Need::Infer(Some("jobs")),
            "a model named jobs"
        );
        assert_eq!(
            need_of("/v2/models/digits/stats"),
            Need::Infer(Some("digits"))
        );
        assert_eq!(
            need_of("/v1/models/digits:predict"),
            Need::Infer(Some("digits"))
        );
        assert_eq!(
            need_of("/v1/models/digits/versions/1:predict"),
            Need::Infer(Some("digits"))
        );
        for r in [
            "/v2",
            "/v2/devices",
            "/v1/embeddings",
            "/embed",
            "/info",
            "/nope",
        ] {
            assert_eq!(need_of(r), Need::Infer(None), "{r}");
        }
        assert_eq!(Door::of("/v1/embeddings"), Door::OpenAi);
        assert_eq!(Door::of("/info"), Door::Tei);
        assert_eq!(Door::of("/v2/models/digits/infer"), Door::KServe);
    }

    async fn caller() -> Result<Caller, ApiError> {
        use axum::extract::FromRequestParts;
        let (mut parts, ()) = axum::http::Request::new(()).into_parts();
        Caller::from_request_parts(&mut parts, &()).await
    }

    #[tokio::test]
    async fn a_handler_reads_the_principal_from_the_request_context_and_fails_closed_outside_it() {
        use crate::api::{RequestCtx, REQUEST_ID};
        let p = Arc::new(Principal {
            name: "ci".into(),
            scopes: vec![crate::auth::Scope::Infer],
            rate: crate::auth::RateLimit {
                per_second: 0.0,
                burst: 0,
            },
        });
        let ctx = RequestCtx::with_principal("r1".into(), Some(p.clone()));
        let got = REQUEST_ID.scope(ctx, caller()).await.ok().unwrap().0;
        assert!(got.is_some_and(|g| Arc::ptr_eq(&g, &p)));
        // No [auth]: the edge leaves no principal, and the handler sees none.
        let none = REQUEST_ID.scope(RequestCtx::new("r2".into()), caller());
        assert!(none.await.ok().unwrap().0.is_none());
        // Outside the edge's context: refused (500), never served as if auth were off.
        match caller().await {
            Err(e) => assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR),
            Ok(_) => panic!("a handler outside the request context must be refused"),
        }
    }
}

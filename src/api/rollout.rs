//! Rollout routes: `PUT /v2/repository/models/{m}/routing`, `POST .../promote`, `POST .../rollback`
//! (admin actions: enabled with `--model-control explicit` or `poll`, behind the `admin` scope when
//! `[auth]` is configured, one audit line each) and `GET /v2/models/{m}/rollout` (the status:
//! split, shadow summary, gate figures, history, guard events).

use axum::extract::{Path, State};
use axum::Json;
use serde_json::Value;

use super::auth::Caller;
#[allow(unused_imports)]
use super::openapi::*;
use super::{read_body, ApiError, AppState};
use crate::auth::Principal;
use crate::config::ModelControl;
use crate::repository::rollout_api::{RolloutStatus, RoutingChange};

fn control_enabled(s: &AppState) -> Result<(), ApiError> {
    match s.model_control {
        ModelControl::Explicit | ModelControl::Poll => Ok(()),
        ModelControl::None => Err(ApiError::Disabled(
            "model control is disabled: start the server with --model-control explicit or poll \
             to change routing, promote or roll back"
                .into(),
        )),
    }
}

/// Checks `--model-control`, acts, writes the audit line.
fn act(
    s: &AppState,
    principal: Option<&Principal>,
    action: &str,
    model: &str,
    detail: &str,
    f: impl FnOnce(&str) -> Result<RolloutStatus, crate::repository::RepoError>,
) -> Result<Json<RolloutStatus>, ApiError> {
    let who = principal.map_or("(unauthenticated)", |p| p.name.as_str());
    let outcome = control_enabled(s).and_then(|()| f(who).map_err(ApiError::from));
    match &outcome {
        Ok(_) => {
            tracing::info!(target: "audit", principal = who, action, model, detail, outcome = "ok", "admin action")
        }
        Err(e) => {
            tracing::info!(target: "audit", principal = who, action, model, detail, outcome = "refused", status = e.status().as_u16(), reason = e.message(), "admin action")
        }
    }
    outcome.map(Json)
}

#[utoipa::path(
    put,
    path = "/v2/repository/models/{model}/routing",
    tag = "repository",
    params(("model" = String, Path, description = "Model name", example = "digits")),
    request_body(content = AnyJson, content_type = "application/json", description = "Weights, shadow and guard"),
    responses((status = 200, description = "The rollout status after the change", body = AnyJson), KServeErrors)
)]
pub async fn routing(
    State(s): State<AppState>,
    Caller(principal): Caller,
    Path(model): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Json<RolloutStatus>, ApiError> {
    let bytes = read_body(&s, &headers, body).await?;
    let change: RoutingChange = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("routing body: {e}")))?;
    let detail = format!("{:?}", change);
    act(
        &s,
        principal.as_deref(),
        "routing",
        &model,
        &detail,
        |who| s.repo.set_routing(&model, change, who),
    )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Promote {
    version: Value,
    #[serde(default)]
    force: bool,
}

#[utoipa::path(
    post,
    path = "/v2/repository/models/{model}/promote",
    tag = "repository",
    params(("model" = String, Path, description = "Model name", example = "digits")),
    request_body(content = PromoteRequest, content_type = "application/json"),
    responses((status = 200, description = "The rollout status after the change", body = AnyJson), KServeErrors)
)]
pub async fn promote(
    State(s): State<AppState>,
    Caller(principal): Caller,
    Path(model): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Json<RolloutStatus>, ApiError> {
    let bytes = read_body(&s, &headers, body).await?;
    let req: Promote = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("promote body: {e}")))?;
    let version = match &req.version {
        Value::String(v) => v.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
    .ok_or_else(|| ApiError::BadRequest("'version' must be a version number".into()))?;
    let detail = format!("version {version} force {}", req.force);
    act(
        &s,
        principal.as_deref(),
        "promote",
        &model,
        &detail,
        |who| s.repo.promote(&model, version, req.force, who),
    )
}

#[utoipa::path(
    post,
    path = "/v2/repository/models/{model}/rollback",
    tag = "repository",
    params(("model" = String, Path, description = "Model name", example = "digits")),
    responses((status = 200, description = "The rollout status after the change", body = AnyJson), KServeErrors)
)]
pub async fn rollback(
    State(s): State<AppState>,
    Caller(principal): Caller,
    Path(model): Path<String>,
) -> Result<Json<RolloutStatus>, ApiError> {
    act(&s, principal.as_deref(), "rollback", &model, "", |who| {
        s.repo.rollback(&model, who)
    })
}

#[utoipa::path(
    get,
    path = "/v2/models/{model}/rollout",
    tag = "repository",
    params(("model" = String, Path, description = "Model name", example = "digits")),
    responses((status = 200, description = "Routing, guard and history", body = AnyJson), KServeErrors)
)]
pub async fn status(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<RolloutStatus>, ApiError> {
    Ok(Json(s.repo.rollout_status(&model)?))
}

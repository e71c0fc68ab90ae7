//! The model-repository extension: index, load and unload. Load and unload are admin actions:
//! enabled only with `--model-control explicit` (403 naming the flag otherwise), behind the `admin`
//! scope when `[auth]` is configured (the route layer checks it), and each writes one audit line.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
#[allow(unused_imports)]
use super::openapi::*;
use super::{ApiError, AppState};
use crate::auth::Principal;
use crate::config::ModelControl;

#[utoipa::path(
    post,
    path = "/v2/repository/index",
    tag = "repository",
    responses((status = 200, description = "Every model and version with its state", body = Vec<AnyJson>), KServeErrors)
)]
pub async fn index(State(s): State<AppState>) -> Json<Value> {
    Json(json!(s.repo.index()))
}

/// Refuses load/unload unless `--model-control explicit`.
fn control_enabled(s: &AppState) -> Result<(), ApiError> {
    match s.model_control {
        ModelControl::Explicit => Ok(()),
        ModelControl::None => Err(ApiError::Disabled(
            "model control is disabled: start the server with --model-control explicit to load \
             and unload models through the API"
                .into(),
        )),
        ModelControl::Poll => Err(ApiError::Disabled(
            "--model-control poll: the repository folder is the source of truth; add or remove \
             model folders instead of calling load/unload"
                .into(),
        )),
    }
}

/// One structured audit line per admin action (target `audit`).
fn audit(principal: Option<&Principal>, action: &str, model: &str, outcome: &Result<(), ApiError>) {
    let who = principal.map_or("(unauthenticated)", |p| p.name.as_str());
    match outcome {
        Ok(()) => {
            tracing::info!(target: "audit", principal = who, action, model, version = "all", outcome = "ok", "admin action")
        }
        Err(e) => {
            tracing::info!(target: "audit", principal = who, action, model, version = "all", outcome = "refused", status = e.status().as_u16(), reason = e.message(), "admin action")
        }
    }
}

/// The one admin path for load and unload (HTTP and gRPC): checks `--model-control`, acts,
/// writes the audit line. The `admin` scope was checked at the door's edge.
pub(crate) async fn act(
    s: &AppState,
    principal: Option<&Principal>,
    action: &str,
    model: &str,
) -> Result<(), ApiError> {
    let outcome = match control_enabled(s) {
        Err(e) => Err(e),
        Ok(()) if action == "load" => s.repo.load(model).await.map_err(ApiError::from),
        Ok(()) => s.repo.unload(model).await.map_err(ApiError::from),
    };
    audit(principal, action, model, &outcome);
    outcome
}

#[utoipa::path(
    post,
    path = "/v2/repository/models/{model}/load",
    tag = "repository",
    params(("model" = String, Path, description = "Model name", example = "digits")),
    responses((status = 200, description = "Loaded (needs --model-control explicit)", body = AnyJson), KServeErrors)
)]
pub async fn load(
    State(s): State<AppState>,
    Caller(principal): Caller,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    act(&s, principal.as_deref(), "load", &model).await?;
    Ok(Json(json!({})))
}

#[utoipa::path(
    post,
    path = "/v2/repository/models/{model}/unload",
    tag = "repository",
    params(("model" = String, Path, description = "Model name", example = "digits")),
    responses((status = 200, description = "Unloaded (needs --model-control explicit)", body = AnyJson), KServeErrors)
)]
pub async fn unload(
    State(s): State<AppState>,
    Caller(principal): Caller,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    act(&s, principal.as_deref(), "unload", &model).await?;
    Ok(Json(json!({})))
}

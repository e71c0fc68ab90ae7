//! The statistics extension (`GET /v2/models/stats`, `GET /v2/models/{m}[/versions/{v}]/stats`):
//! per loaded model version, Triton's counts and durations, read from the version's metrics. The
//! gRPC `ModelStatistics` answers from the same `collect`.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::auth::{check_model, Caller};
use super::infer::parse_version;
#[allow(unused_imports)]
use super::openapi::*;
use super::{ApiError, AppState};
use crate::auth::Principal;
use crate::telemetry::metrics::ModelStatistics;

/// Statistics of every loaded version (`model` empty or `None`: of every model the caller may
/// use; `version` `None`: of every loaded version of the model).
pub fn collect(
    s: &AppState,
    principal: Option<&Principal>,
    model: Option<&str>,
    version: Option<u64>,
) -> Result<Vec<ModelStatistics>, ApiError> {
    if let Some(m) = model.filter(|m| !m.is_empty()) {
        check_model(principal, m)?;
    }
    match (model.filter(|m| !m.is_empty()), version) {
        (Some(m), Some(v)) => {
            let lv = s.repo.get(m, Some(v))?;
            Ok(vec![lv.metrics.statistics(&lv.name, lv.version)])
        }
        (m, _) => {
            if let Some(m) = m {
                // 404 for an unknown or unloaded model, as its other routes answer.
                s.repo.get(m, None)?;
            }
            Ok(s.repo
                .index()
                .into_iter()
                .filter(|e| m.is_none_or(|m| e.name == m))
                .filter(|e| check_model(principal, &e.name).is_ok())
                .filter_map(|e| {
                    let v = e.version.as_deref()?.parse().ok()?;
                    s.repo.get(&e.name, Some(v)).ok()
                })
                .map(|lv| lv.metrics.statistics(&lv.name, lv.version))
                .collect())
        }
    }
}

fn answer(stats: Vec<ModelStatistics>) -> Json<Value> {
    Json(json!({ "model_stats": stats }))
}

#[utoipa::path(
    get,
    path = "/v2/models/stats",
    tag = "kserve-v2",
    responses((status = 200, description = "Every model's statistics", body = AnyJson), KServeErrors)
)]
pub async fn all(
    State(s): State<AppState>,
    Caller(principal): Caller,
) -> Result<Json<Value>, ApiError> {
    collect(&s, principal.as_deref(), None, None).map(answer)
}

#[utoipa::path(
    get,
    path = "/v2/models/{model}/stats",
    tag = "kserve-v2",
    params(("model" = String, Path, description = "Model name", example = "digits")),
    responses((status = 200, description = "The model's statistics", body = AnyJson), KServeErrors)
)]
pub async fn model(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    collect(&s, None, Some(&model), None).map(answer)
}

#[utoipa::path(
    get,
    path = "/v2/models/{model}/versions/{version}/stats",
    tag = "kserve-v2",
    params(("model" = String, Path, description = "Model name", example = "digits"), ("version" = String, Path, description = "Version number", example = "1")),
    responses((status = 200, description = "The version's statistics", body = AnyJson), KServeErrors)
)]
pub async fn model_version(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let v = parse_version(&model, &version)?;
    collect(&s, None, Some(&model), Some(v)).map(answer)
}

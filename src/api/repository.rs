//! The model-repository extension: index, load and unload.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, AppState};

pub async fn index(State(s): State<AppState>) -> Json<Value> {
    Json(json!(s.repo.index()))
}

pub async fn load(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.repo.load(&model).await?;
    Ok(Json(json!({})))
}

pub async fn unload(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    s.repo.unload(&model).await?;
    Ok(Json(json!({})))
}

//! KServe v1 / TF-Serving style routes: `GET /v1/models/{m}` (status) and
//! `POST /v1/models/{m}:predict` (`instances` -> `predictions`).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::infer::{self, parse_version};
#[allow(unused_imports)]
use super::openapi::*;
use super::{read_body, ApiError, AppState};
use crate::auth::Principal;
use crate::batcher::SubmitOptions;
use crate::protocol::kserve_v1;

fn split_predict(segment: &str) -> Result<&str, ApiError> {
    segment
        .strip_suffix(":predict")
        .ok_or_else(|| ApiError::NotFound(format!("no such route: expected '{segment}:predict'")))
}

#[utoipa::path(
    get,
    path = "/v1/models/{model}",
    tag = "kserve-v1",
    params(("model" = String, Path, description = "Model name", example = "digits")),
    responses((status = 200, description = "The model is ready", body = V1ModelStatus), KServeErrors)
)]
pub async fn status(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let lv = s.repo.get(&model, None)?;
    Ok(Json(json!({ "name": lv.name, "ready": true })))
}

#[utoipa::path(
    post,
    path = "/v1/models/{model}",
    tag = "kserve-v1",
    params(("model" = String, Path, description = "`{name}:predict`", example = "digits:predict")),
    request_body(content = PredictRequest, content_type = "application/json"),
    responses((status = 200, description = "One prediction per instance", body = PredictResponse), KServeErrors)
)]
pub async fn predict(
    State(s): State<AppState>,
    Path(segment): Path<String>,
    Caller(principal): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let model = split_predict(&segment)?;
    predict_on(s, (model, None), principal, headers, body).await
}

#[utoipa::path(
    post,
    path = "/v1/models/{model}/versions/{version}",
    tag = "kserve-v1",
    params(("model" = String, Path, description = "Model name", example = "digits"), ("version" = String, Path, description = "`{number}:predict`", example = "1:predict")),
    request_body(content = PredictRequest, content_type = "application/json"),
    responses((status = 200, description = "One prediction per instance", body = PredictResponse), KServeErrors)
)]
pub async fn predict_v(
    State(s): State<AppState>,
    Path((model, segment)): Path<(String, String)>,
    Caller(principal): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let version = parse_version(&model, split_predict(&segment)?)?;
    predict_on(s, (&model, Some(version)), principal, headers, body).await
}

async fn predict_on(
    s: AppState,
    (model, version): (&str, Option<u64>),
    principal: Option<std::sync::Arc<Principal>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (lv, shadow) = match version {
        Some(_) => (s.repo.get(model, version)?, None),
        None => {
            let r = s.repo.route(model, infer::routing_key(&headers))?;
            (r.lv, r.shadow)
        }
    };
    let bytes = read_body(&s, &headers, body).await?;
    let batching = lv.config.max_batch_size > 0;
    let max_rows = lv
        .text
        .as_ref()
        .map_or(lv.config.max_batch_size, |t| t.max_client_batch_size);
    let inputs = kserve_v1::decode_request(&bytes, &lv.config.inputs, batching, max_rows)
        .map_err(|e| infer::invalid(&lv, e))?;
    let cache = infer::cache_use(&lv, &headers, principal.as_deref(), None);
    let shadow = shadow.and_then(|p| Some((p, infer::shadow_input(&lv, &inputs)?)));
    let mut done = infer::run(&s, &lv, inputs, SubmitOptions::default(), cache).await?;
    infer::mirror(&s, &lv, shadow, || {
        super::shadow::LiveOutput::of_tensors(&done.output.outputs)
    });
    infer::tap(&lv, done.sample.take(), None);
    let body = kserve_v1::encode_response(&done.output.outputs, batching);
    Ok(infer::served(
        &lv,
        done.cache,
        (infer::timing_headers(&done), Json(body)).into_response(),
    ))
}

//! KServe v2 / Open Inference Protocol routes: server and model metadata, health, readiness, infer
//! (JSON and binary tensor extension).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::auth::Caller;
use super::infer::{self, parse_version};
#[allow(unused_imports)]
use super::openapi::*;
use super::shadow::LiveOutput as ShadowOut;
use super::{read_body, ApiError, AppState};
use crate::auth::Principal;
use crate::batcher::SubmitOptions;
use crate::protocol::kserve_v2::{self as v2, HEADER_LENGTH};
use crate::repository::{LoadedVersion, ShadowPlan};

pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "classification",
    "model_repository",
    "statistics",
    "parameters",
    "schedule_policy",
];

#[utoipa::path(
    get,
    path = "/v2",
    tag = "kserve-v2",
    responses((status = 200, description = "Server metadata", body = ServerMetadata), KServeErrors)
)]
pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "ferrite",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": EXTENSIONS,
    }))
}

#[utoipa::path(
    get,
    path = "/v2/health/live",
    tag = "health",
    responses((status = 200, description = "The server is live"), KServeErrors),
    security(())
)]
pub async fn live() -> StatusCode {
    StatusCode::OK
}

#[utoipa::path(
    get,
    path = "/v2/health/ready",
    tag = "health",
    responses((status = 200, description = "Every loaded model is ready and the server accepts requests"), KServeErrors),
    security(())
)]
pub async fn ready(State(s): State<AppState>) -> Response {
    if s.is_accepting() && s.repo.all_ready() {
        StatusCode::OK.into_response()
    } else {
        ApiError::Unavailable("server is not ready".into()).into_response()
    }
}

fn metadata(lv: &LoadedVersion, versions: Vec<String>) -> Json<Value> {
    let c = &lv.config;
    let specs = |v: &[crate::spec::TensorSpec]| -> Vec<Value> {
        v.iter()
            .map(|s| json!({"name": s.name, "datatype": s.datatype.as_str(), "shape": s.dims}))
            .collect()
    };
    let gate = lv.gate();
    Json(json!({
        "name": lv.name,
        "versions": versions,
        "platform": format!("ferrite_{}", c.architecture),
        "inputs": specs(&c.inputs),
        "outputs": specs(&c.outputs),
        "parameters": {
            "max_batch_size": c.max_batch_size,
            "metadata": c.metadata,
            "precision": lv.precision.join("+"),
        },
        "state": lv.state(),
        "version_meta": lv.meta,
        "validation": gate.configured.then_some(gate),
    }))
}

#[utoipa::path(
    get,
    path = "/v2/models/{model}",
    tag = "kserve-v2",
    params(("model" = String, Path, description = "Model name", example = "digits")),
    responses((status = 200, description = "The serving version's metadata", body = ModelMetadata), KServeErrors)
)]
pub async fn model_metadata(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let lv = s.repo.get(&model, None)?;
    let versions = s
        .repo
        .index()
        .into_iter()
        .filter(|e| e.name == model)
        .filter_map(|e| e.version)
        .collect();
    Ok(metadata(&lv, versions))
}

#[utoipa::path(
    get,
    path = "/v2/models/{model}/versions/{version}",
    tag = "kserve-v2",
    params(("model" = String, Path, description = "Model name", example = "digits"), ("version" = String, Path, description = "Version number", example = "1")),
    responses((status = 200, description = "The version's metadata", body = ModelMetadata), KServeErrors)
)]
pub async fn model_metadata_v(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    // A version whose gate failed still has metadata (with its figures).
    let lv = s
        .repo
        .version_any(&model, Some(parse_version(&model, &version)?))?;
    Ok(metadata(&lv, vec![lv.version.to_string()]))
}

/// Triton's model configuration JSON (the same fields gRPC ModelConfig returns).
#[utoipa::path(
    get,
    path = "/v2/models/{model}/config",
    tag = "kserve-v2",
    params(("model" = String, Path, description = "Model name", example = "digits")),
    responses((status = 200, description = "Triton's model configuration", body = AnyJson), KServeErrors)
)]
pub async fn model_config(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(crate::protocol::grpc::config_json(
        &infer::triton_config(&s, &model)?,
    )))
}

#[utoipa::path(
    get,
    path = "/v2/models/{model}/ready",
    tag = "kserve-v2",
    params(("model" = String, Path, description = "Model name", example = "digits")),
    responses((status = 200, description = "The model is ready"), KServeErrors)
)]
pub async fn model_ready(
    State(s): State<AppState>,
    Path(model): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.repo
        .get(&model, None)
        .map(|_| StatusCode::OK)
        .map_err(Into::into)
}

#[utoipa::path(
    get,
    path = "/v2/models/{model}/versions/{version}/ready",
    tag = "kserve-v2",
    params(("model" = String, Path, description = "Model name", example = "digits"), ("version" = String, Path, description = "Version number", example = "1")),
    responses((status = 200, description = "The version is ready"), KServeErrors)
)]
pub async fn model_ready_v(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let v = parse_version(&model, &version)?;
    s.repo
        .get(&model, Some(v))
        .map(|_| StatusCode::OK)
        .map_err(Into::into)
}

#[utoipa::path(
    post,
    path = "/v2/models/{model}/infer",
    tag = "kserve-v2",
    params(("model" = String, Path, description = "Model name", example = "digits")),
    request_body(content = InferRequest, content_type = "application/json", description = "JSON, or JSON then binary tensor data (`Inference-Header-Content-Length`)"),
    responses((status = 200, description = "Outputs: JSON, or JSON then binary data with `Inference-Header-Content-Length`", content((InferResponse = "application/json"), (Vec<u8> = "application/octet-stream"))), KServeErrors)
)]
pub async fn infer(
    State(s): State<AppState>,
    Path(model): Path<String>,
    Caller(principal): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let routed = s.repo.route(&model, infer::routing_key(&headers))?;
    infer_on(s, routed.lv, routed.shadow, principal, headers, body).await
}

#[utoipa::path(
    post,
    path = "/v2/models/{model}/versions/{version}/infer",
    tag = "kserve-v2",
    params(("model" = String, Path, description = "Model name", example = "digits"), ("version" = String, Path, description = "Version number", example = "1")),
    request_body(content = InferRequest, content_type = "application/json"),
    responses((status = 200, description = "Outputs: JSON, or JSON then binary data with `Inference-Header-Content-Length`", content((InferResponse = "application/json"), (Vec<u8> = "application/octet-stream"))), KServeErrors)
)]
pub async fn infer_v(
    State(s): State<AppState>,
    Path((model, version)): Path<(String, String)>,
    Caller(principal): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let lv = s.repo.get(&model, Some(parse_version(&model, &version)?))?;
    infer_on(s, lv, None, principal, headers, body).await
}

async fn infer_on(
    s: AppState,
    lv: std::sync::Arc<LoadedVersion>,
    shadow: Option<ShadowPlan>,
    principal: Option<std::sync::Arc<Principal>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&s, &headers, body).await?;
    let header_len = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| {
                    infer::invalid(
                        &lv,
                        ApiError::BadRequest(format!("{HEADER_LENGTH} must be a byte count")),
                    )
                })?,
        ),
    };
    let req = v2::decode_request(&bytes.bytes, header_len).map_err(|e| infer::invalid(&lv, e))?;
    let picked = infer::select_outputs(&lv, &req).map_err(|e| infer::invalid(&lv, e))?;
    let opts = SubmitOptions {
        priority: req.priority,
        timeout: req.timeout_us.map(std::time::Duration::from_micros),
        ..SubmitOptions::default()
    };
    let cache = infer::cache_use(&lv, &headers, principal.as_deref(), req.cache);
    let shadow = shadow.and_then(|p| Some((p, infer::shadow_input(&lv, &req.inputs)?)));
    let mut done = infer::run(&s, &lv, req.inputs, opts, cache).await?;
    infer::mirror(&s, &lv, shadow, || {
        ShadowOut::of_tensors(&done.output.outputs)
    });
    let outputs = infer::pick_outputs(&lv, &picked, &done.output.outputs)?;
    infer::tap(&lv, done.sample.take(), req.id.as_deref());
    let enc = v2::encode_response(
        &lv.name,
        lv.version,
        req.id.as_deref(),
        &outputs,
        &picked.binary,
    );
    let mut resp = (infer::timing_headers(&done), enc.body).into_response();
    let h = resp.headers_mut();
    match enc.header_len {
        Some(n) => {
            h.insert(HEADER_LENGTH, n.into());
            h.insert(
                header::CONTENT_TYPE,
                "application/octet-stream"
                    .parse()
                    .expect("static. This is a bug."),
            );
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                "application/json".parse().expect("static. This is a bug."),
            );
        }
    }
    Ok(infer::served(&lv, done.cache, resp))
}

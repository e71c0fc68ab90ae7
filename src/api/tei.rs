//! Text Embeddings Inference compatible routes: `POST /embed` (`inputs`, `normalize`, `truncate`,
//! `dimensions`) -> `[[f32]]`, and `GET /info`. Errors in TEI's shape:
//! `{"error": "...", "error_type": "Validation|Overloaded|Backend|Unhealthy|Empty"}`.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::{infer, text, ApiError, AppState};
use crate::batcher::SubmitOptions;
use crate::telemetry::FailureReason;

fn tei_error(e: ApiError) -> Response {
    let (status, kind) = match &e {
        ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "Validation"),
        ApiError::BadRequest(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Validation"),
        ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "Validation"),
        ApiError::Overloaded(_) => (StatusCode::TOO_MANY_REQUESTS, "Overloaded"),
        ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "Unhealthy"),
        ApiError::Internal(_) => (StatusCode::FAILED_DEPENDENCY, "Backend"),
    };
    ApiError::respond(status, json!({"error": e.message(), "error_type": kind}))
}

fn flag(req: &Value, key: &str, default: bool) -> Result<bool, ApiError> {
    match req.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(ApiError::BadRequest(format!(
            "'{key}' must be true or false, got {v}"
        ))),
    }
}

pub async fn embed(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    handle(s, headers, body).await.unwrap_or_else(tei_error)
}

async fn handle(s: AppState, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let start = Instant::now();
    let text::TextRequest { req, lv, texts } =
        text::read_request(&s, &headers, body, "inputs").await?;
    let tm = lv
        .text
        .as_ref()
        .expect("text_model returns text models. This is a bug.");
    if texts.is_empty() {
        lv.metrics.record_failure(FailureReason::Invalid);
        return Ok(ApiError::respond(
            StatusCode::BAD_REQUEST,
            json!({"error": "`inputs` cannot be empty", "error_type": "Empty"}),
        ));
    }
    // The request's own options; a bad one counts against the model as INVALID.
    let options = || -> Result<(bool, bool, Option<usize>), ApiError> {
        let normalize = flag(&req, "normalize", true)?;
        let truncate = flag(&req, "truncate", false)?;
        if let Some(dir) = req.get("truncation_direction").and_then(Value::as_str) {
            if !dir.eq_ignore_ascii_case("right") {
                return Err(ApiError::BadRequest(format!(
                    "truncation_direction '{dir}' is not supported (only Right)"
                )));
            }
        }
        Ok((normalize, truncate, text::dimensions(&req)?))
    };
    let (normalize, truncate, dims) = options().map_err(|e| infer::invalid(&lv, e))?;
    let e = infer::embed(
        &lv,
        tm,
        texts,
        truncate,
        normalize,
        SubmitOptions::default(),
    )
    .await?;
    let vectors = text::apply_dimensions(e.vectors.clone(), dims, normalize)?;
    Ok((text::headers(&e, start.elapsed()), Json(vectors)).into_response())
}

pub async fn info(State(s): State<AppState>) -> Response {
    match text::text_model(&s, None) {
        Ok(lv) => {
            let tm = lv
                .text
                .as_ref()
                .expect("text_model returns text models. This is a bug.");
            Json(json!({
                "model_id": lv.name,
                "model_type": {"embedding": {"pooling": "mean"}},
                "max_input_length": tm.pool.max_len(),
                "max_client_batch_size": tm.max_client_batch_size,
                "max_batch_tokens": lv.config.dynamic_batching.max_batch_tokens,
                "version": env!("CARGO_PKG_VERSION"),
            }))
            .into_response()
        }
        Err(e) => tei_error(e),
    }
}

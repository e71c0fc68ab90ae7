//! Text Embeddings Inference compatible routes (wire format in `protocol::tei`): `POST /embed` and
//! `GET /info`; errors in TEI's shape.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::Caller;
#[allow(unused_imports)]
use super::openapi::*;
use super::shadow::{LiveOutput, ShadowInput};
use super::{infer, text, ApiError, AppState};
use crate::auth::Principal;
use crate::batcher::SubmitOptions;
use crate::protocol::tei::{self, ErrorType};
use crate::telemetry::FailureReason;

fn tei_error(e: ApiError) -> Response {
    let (status, kind) = match &e {
        ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorType::Validation),
        ApiError::Timeout(_) => (StatusCode::REQUEST_TIMEOUT, ErrorType::Validation),
        ApiError::BadRequest(_) => (StatusCode::UNPROCESSABLE_ENTITY, ErrorType::Validation),
        ApiError::Conflict(_) => (StatusCode::CONFLICT, ErrorType::Validation),
        ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorType::Validation),
        ApiError::Forbidden(_) | ApiError::Disabled(_) => {
            (StatusCode::FORBIDDEN, ErrorType::Unauthorized)
        }
        ApiError::Overloaded(_) => (StatusCode::TOO_MANY_REQUESTS, ErrorType::Overloaded),
        ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorType::Unhealthy),
        ApiError::Internal(_) | ApiError::LoadFailed(_) => {
            (StatusCode::FAILED_DEPENDENCY, ErrorType::Backend)
        }
    };
    ApiError::respond(status, tei::encode_error(e.message(), kind))
}

#[utoipa::path(
    post,
    path = "/embed",
    tag = "tei",
    request_body(content = EmbedRequest, content_type = "application/json"),
    responses((status = 200, description = "Embeddings in input order", body = Vec<Vec<f32>>), TeiErrors)
)]
pub async fn embed(
    State(s): State<AppState>,
    Caller(principal): Caller,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(s, principal.as_deref(), headers, body)
        .await
        .unwrap_or_else(tei_error)
}

async fn handle(
    s: AppState,
    principal: Option<&Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let text::Picked { req, lv, shadow } = text::read_request(
        &s,
        principal,
        &headers,
        body,
        tei::decode_request,
        |r| r.model.as_deref(),
        |_| None,
    )
    .await?;
    let tm = lv
        .text
        .as_ref()
        .expect("text_model returns text models. This is a bug.");
    if req.inputs.is_empty() {
        lv.metrics.record_failure(FailureReason::Invalid);
        let body = tei::encode_error("`inputs` cannot be empty", ErrorType::Empty);
        return Ok(ApiError::respond(StatusCode::BAD_REQUEST, body));
    }
    let shadow = shadow
        .filter(|_| req.dimensions.is_none())
        .map(|p| (p, ShadowInput::Texts(req.inputs.clone())));
    let ereq = infer::EmbedRequest {
        texts: req.inputs,
        truncate: req.truncate,
        normalize: req.normalize,
        dimensions: req.dimensions,
        opts: SubmitOptions::default(),
        cache: infer::cache_use(&lv, &headers, principal, None),
    };
    let mut e = infer::embed(&lv, tm, ereq).await?;
    infer::mirror(&s, &lv, shadow, || Some(LiveOutput::of_vectors(&e.vectors)));
    infer::tap(&lv, e.sample.take(), None);
    let headers = text::headers(&e, start.elapsed());
    let body = tei::encode_embeddings(&e.vectors, &e.json);
    let json = [(CONTENT_TYPE, HeaderValue::from_static("application/json"))];
    Ok(infer::served(
        &lv,
        e.cache,
        (json, headers, body).into_response(),
    ))
}

#[utoipa::path(
    get,
    path = "/info",
    tag = "tei",
    responses((status = 200, description = "The embedding model", body = TeiInfo), TeiErrors)
)]
pub async fn info(State(s): State<AppState>) -> Response {
    match text::text_model(&s, None) {
        Ok(lv) => {
            let tm = lv
                .text
                .as_ref()
                .expect("text_model returns text models. This is a bug.");
            Json(tei::Info {
                model_id: lv.name.clone(),
                model_type: tei::ModelType {
                    embedding: tei::Pooling { pooling: "mean" },
                },
                max_input_length: tm.pool.max_len(),
                max_client_batch_size: tm.max_client_batch_size,
                max_batch_tokens: lv.config.dynamic_batching.max_batch_tokens,
                version: env!("CARGO_PKG_VERSION"),
            })
            .into_response()
        }
        Err(e) => tei_error(e),
    }
}

//! OpenAI `POST /v1/embeddings` (wire format in `protocol::openai`): decode, embed, encode; errors
//! in OpenAI's shape.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::auth::Caller;
#[allow(unused_imports)]
use super::openapi::*;
use super::shadow::{LiveOutput, ShadowInput};
use super::{infer, text, ApiError, AppState};
use crate::auth::Principal;
use crate::batcher::SubmitOptions;
use crate::protocol::openai::{self, ErrorKind};

fn openai_error(e: ApiError) -> Response {
    let (status, kind) = match &e {
        ApiError::Overloaded(_) => (StatusCode::TOO_MANY_REQUESTS, ErrorKind::RateLimitError),
        ApiError::NotFound(_) => (e.status(), ErrorKind::NotFoundError),
        ApiError::BadRequest(_) | ApiError::TooLarge(_) | ApiError::Timeout(_) => {
            (e.status(), ErrorKind::InvalidRequestError)
        }
        ApiError::Forbidden(_) => (e.status(), ErrorKind::PermissionError),
        _ => (e.status(), ErrorKind::ServerError),
    };
    ApiError::respond(status, openai::encode_error(e.message(), kind))
}

#[utoipa::path(
    post,
    path = "/v1/embeddings",
    tag = "openai",
    request_body(content = EmbeddingsRequest, content_type = "application/json"),
    responses((status = 200, description = "Embeddings in input order", body = EmbeddingsResponse), OpenAiErrors)
)]
pub async fn embeddings(
    State(s): State<AppState>,
    Caller(principal): Caller,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(s, principal.as_deref(), headers, body)
        .await
        .unwrap_or_else(openai_error)
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
        openai::decode_request,
        |r| r.model.as_deref(),
        |r| r.user.as_deref(),
    )
    .await?;
    let tm = lv
        .text
        .as_ref()
        .expect("text_model returns text models. This is a bug.");
    // The API has no truncate parameter: texts are cut at the model's limit, as
    // sentence-transformers does.
    let shadow = shadow
        .filter(|_| req.dimensions.is_none())
        .map(|p| (p, ShadowInput::Texts(req.input.clone())));
    let ereq = infer::EmbedRequest {
        texts: req.input,
        truncate: true,
        normalize: tm.normalize,
        dimensions: req.dimensions,
        opts: SubmitOptions::default(),
        cache: infer::cache_use(&lv, &headers, principal, None),
    };
    let mut e = infer::embed(&lv, tm, ereq).await?;
    infer::mirror(&s, &lv, shadow, || Some(LiveOutput::of_vectors(&e.vectors)));
    infer::tap(&lv, e.sample.take(), None);
    let headers = text::headers(&e, start.elapsed());
    let body = openai::encode_response(e.vectors, &lv.name, e.tokens, req.encoding_format);
    Ok(infer::served(
        &lv,
        e.cache,
        (headers, Json(body)).into_response(),
    ))
}

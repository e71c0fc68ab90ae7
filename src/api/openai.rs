//! OpenAI `POST /v1/embeddings`: `input` (string or list), `model`, `encoding_format`
//! (float | base64), `dimensions` -> `{object, data: [{object, embedding, index}], model, usage}`.
//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Value};

use super::{infer, text, ApiError, AppState};
use crate::batcher::SubmitOptions;

fn openai_error(e: ApiError) -> Response {
    let (status, kind) = match &e {
        ApiError::Overloaded(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
        ApiError::NotFound(_) => (e.status(), "not_found_error"),
        ApiError::BadRequest(_) | ApiError::TooLarge(_) => (e.status(), "invalid_request_error"),
        _ => (e.status(), "server_error"),
    };
    ApiError::respond(
        status,
        json!({"error": {"message": e.message(), "type": kind, "param": null, "code": null}}),
    )
}

pub async fn embeddings(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    handle(s, headers, body).await.unwrap_or_else(openai_error)
}

async fn handle(s: AppState, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let start = Instant::now();
    let text::TextRequest { req, lv, texts } =
        text::read_request(&s, &headers, body, "input").await?;
    let tm = lv
        .text
        .as_ref()
        .expect("text_model returns text models. This is a bug.");
    let base64 = match req.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "encoding_format must be 'float' or 'base64', got '{other}'"
            )))
        }
    };
    let dims = text::dimensions(&req)?;
    let e = infer::embed(&lv, tm, texts, true, tm.normalize, SubmitOptions::default()).await?;
    let data: Vec<Value> = text::apply_dimensions(e.vectors.clone(), dims, tm.normalize)?
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "embedding": embedding, "index": index})
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "model": lv.name,
        "usage": {"prompt_tokens": e.tokens, "total_tokens": e.tokens},
    });
    Ok((text::headers(&e, start.elapsed()), axum::Json(body)).into_response())
}

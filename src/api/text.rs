//! What the embedding front doors (OpenAI, TEI) share: picking the text model, reading `input`s
//! that may be a string or a list of strings, output dimensions, and response headers.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use serde_json::Value;

use super::infer::{l2_normalized, ms, Embedded};
use super::{read_body, ApiError, AppState};
use crate::repository::{LoadedVersion, ModelState, RepoError};

/// An embedding request: its JSON body, the text model it names (or the default one), its texts.
pub struct TextRequest {
    pub req: Value,
    pub lv: Arc<LoadedVersion>,
    pub texts: Vec<String>,
}

/// Reads the body, picks the model (`model` field) and the texts (`field`: a string or a list).
pub async fn read_request(
    s: &AppState,
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
    field: &str,
) -> Result<TextRequest, ApiError> {
    let bytes = read_body(headers, body, s.max_body_bytes).await?;
    let req: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("malformed JSON body: {e}")))?;
    let lv = text_model(s, req.get("model").and_then(Value::as_str))?;
    let texts = texts(req.get(field).unwrap_or(&Value::Null), field)?;
    Ok(TextRequest { req, lv, texts })
}

/// The optional `dimensions` field.
pub fn dimensions(req: &Value) -> Result<Option<usize>, ApiError> {
    match req.get("dimensions") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|d| Some(d as usize))
            .ok_or_else(|| ApiError::BadRequest("'dimensions' must be a positive integer".into())),
    }
}

/// The named model (it must take text), or the first loaded text model by name.
pub fn text_model(state: &AppState, name: Option<&str>) -> Result<Arc<LoadedVersion>, ApiError> {
    if let Some(name) = name.filter(|n| !n.is_empty()) {
        let lv = state.repo.get(name, None)?;
        if lv.text.is_none() {
            return Err(ApiError::BadRequest(format!(
                "model '{name}' does not take text (it is not an embedding model)"
            )));
        }
        return Ok(lv);
    }
    state
        .repo
        .index()
        .into_iter()
        .filter(|e| e.state == ModelState::Ready)
        .filter_map(|e| state.repo.get(&e.name, None).ok())
        .find(|lv| lv.text.is_some())
        .ok_or_else(|| ApiError::from(RepoError::ModelNotFound("(any embedding model)".into())))
}

/// A string or a list of strings.
pub fn texts(v: &Value, field: &str) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::BadRequest(format!(
            "'{field}' must be a string or a list of strings (token arrays are not supported)"
        ))
    };
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map(String::from).ok_or_else(bad))
            .collect(),
        _ => Err(bad()),
    }
}

/// Keeps the first `dims` values of each vector (renormalised when `normalize`).
pub fn apply_dimensions(
    vectors: Vec<Vec<f32>>,
    dims: Option<usize>,
    normalize: bool,
) -> Result<Vec<Vec<f32>>, ApiError> {
    let Some(d) = dims else { return Ok(vectors) };
    let full = vectors.first().map_or(0, Vec::len);
    if d == 0 || d > full {
        return Err(ApiError::BadRequest(format!(
            "'dimensions' must be within 1..={full}, got {d}"
        )));
    }
    Ok(vectors
        .into_iter()
        .map(|mut v| {
            v.truncate(d);
            if normalize {
                l2_normalized(v)
            } else {
                v
            }
        })
        .collect())
}

/// TEI's timing headers (milliseconds) and token count.
pub fn headers(e: &Embedded, total: Duration) -> [(HeaderName, HeaderValue); 5] {
    let t = &e.timings;
    [
        (
            HeaderName::from_static("x-tokenization-time"),
            ms(e.tokenize),
        ),
        (HeaderName::from_static("x-queue-time"), ms(t.queue)),
        (
            HeaderName::from_static("x-inference-time"),
            ms(t.compute_input + t.compute_infer + t.compute_output),
        ),
        (HeaderName::from_static("x-total-time"), ms(total)),
        (
            HeaderName::from_static("x-compute-tokens"),
            HeaderValue::from(e.tokens),
        ),
    ]
}

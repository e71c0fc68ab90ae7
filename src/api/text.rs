//! What the embedding front doors (OpenAI, TEI) share: reading and decoding the body
//! (`protocol::{openai, tei}`), picking the text model, output dimensions, and response headers.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};

use super::auth::check_model;
use super::infer::{invalid, ms, Embedded};
use super::{read_body, ApiError, AppState};
use crate::auth::Principal;
use crate::protocol::embeddings::DecodeError;
use crate::repository::{LoadedVersion, ModelState, RepoError};

/// Reads the body and decodes it with `decode`, then picks the text model it names (or the
/// default one). A body with a bad field counts as INVALID against that model.
pub async fn read_request<T>(
    s: &AppState,
    principal: Option<&Principal>,
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
    decode: impl FnOnce(&[u8]) -> Result<T, DecodeError>,
    model_of: impl FnOnce(&T) -> Option<&str>,
) -> Result<(T, Arc<LoadedVersion>), ApiError> {
    if !s.is_accepting() {
        return Err(ApiError::Unavailable(
            "server is shutting down or starting".into(),
        ));
    }
    let bytes = read_body(s, headers, body).await?;
    let (decoded, model) = match decode(&bytes) {
        Ok(req) => {
            let model = model_of(&req).map(str::to_string);
            (Ok(req), model)
        }
        Err(DecodeError::Malformed(e)) => return Err(e.into()),
        Err(DecodeError::Field { model, error }) => (Err(error), model),
    };
    let lv = text_model(s, model.as_deref())?;
    check_model(principal, &lv.name)?;
    match decoded {
        Ok(req) => Ok((req, lv)),
        Err(error) => Err(invalid(&lv, error)),
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

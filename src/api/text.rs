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
use crate::repository::{LoadedVersion, RepoError, Routed, ShadowPlan};

/// A decoded embedding request, the version the router picked and its shadow copy, if any.
pub struct Picked<T> {
    pub req: T,
    pub lv: Arc<LoadedVersion>,
    pub shadow: Option<ShadowPlan>,
}

/// Reads the body and decodes it with `decode`, then routes to the text model it names (or the
/// default one); the routing key is the `x-ferrite-routing-key` header, else what `key_of`
/// finds in the body (OpenAI's `user`). A body with a bad field counts as INVALID against that
/// model.
pub async fn read_request<T>(
    s: &AppState,
    principal: Option<&Principal>,
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
    decode: impl FnOnce(&[u8]) -> Result<T, DecodeError>,
    model_of: impl FnOnce(&T) -> Option<&str>,
    key_of: impl FnOnce(&T) -> Option<&str>,
) -> Result<Picked<T>, ApiError> {
    if !s.is_accepting() {
        return Err(ApiError::Unavailable(
            "server is shutting down or starting".into(),
        ));
    }
    let bytes = read_body(s, headers, body).await?;
    let (decoded, model, key) = match decode(&bytes) {
        Ok(req) => {
            let model = model_of(&req).map(str::to_string);
            let key = match super::infer::routing_key(headers) {
                Some(k) => Some(k.to_vec()),
                None => key_of(&req).map(|k| k.as_bytes().to_vec()),
            };
            (Ok(req), model, key)
        }
        Err(DecodeError::Malformed(e)) => return Err(e.into()),
        Err(DecodeError::Field { model, error }) => (Err(error), model, None),
    };
    let routed = route_text(s, model.as_deref(), key.as_deref())?;
    check_model(principal, &routed.lv.name)?;
    match decoded {
        Ok(req) => Ok(Picked {
            req,
            lv: routed.lv,
            shadow: routed.shadow,
        }),
        Err(error) => Err(invalid(&routed.lv, error)),
    }
}

/// `text_model`, through the model's router.
fn route_text(
    state: &AppState,
    name: Option<&str>,
    key: Option<&[u8]>,
) -> Result<Routed, ApiError> {
    let name = match name.filter(|n| !n.is_empty()) {
        Some(n) => n.to_string(),
        None => text_model(state, None)?.name.clone(),
    };
    let r = state.repo.route(&name, key)?;
    if r.lv.text.is_none() {
        return Err(ApiError::BadRequest(format!(
            "model '{name}' does not take text (it is not an embedding model)"
        )));
    }
    Ok(r)
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
        .first_ready(|lv| lv.text.is_some())
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

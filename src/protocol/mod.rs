//! Wire formats, as pure `decode`/`encode` functions: KServe v2 / Open Inference Protocol (JSON and
//! Triton's binary tensor data extension) and KServe v1 (`:predict`). No axum, no tokio, no models.

pub mod json;
pub mod kserve_v1;
pub mod kserve_v2;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed request body: {0}")]
    Json(String),
    #[error("input '{name}': {message}")]
    Input { name: String, message: String },
    #[error("binary tensor data: {0}")]
    Binary(String),
}

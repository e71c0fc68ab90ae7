//! Every wire format, as typed structs and pure `decode`/`encode` functions: KServe v2 / Open
//! Inference Protocol (JSON and Triton's binary tensor data extension), KServe v1 (`:predict`),
//! OpenAI embeddings and TEI. No axum, no tokio, no models.

pub mod classification;
pub mod embeddings;
pub mod grpc;
pub mod json;
pub mod kserve_v1;
pub mod kserve_v2;
pub mod openai;
pub mod tei;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProtocolError {
    #[error("malformed request body: {0}")]
    Json(String),
    #[error("input '{name}': {message}")]
    Input { name: String, message: String },
    #[error("binary tensor data: {0}")]
    Binary(String),
    /// A request field of the wrong type or value; the message names the field.
    #[error("{0}")]
    Field(String),
}

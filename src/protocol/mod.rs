//! Every wire format, as typed structs and pure `decode`/`encode` functions: KServe v2 / Open
//! Inference Protocol (JSON and Triton's binary tensor data extension), KServe v1 (`:predict`),
//! OpenAI embeddings and TEI. No axum, no tokio, no models.

pub mod classification;
pub mod embeddings;
mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod grpc;
pub mod json;
pub mod kserve_v1;
pub mod kserve_v2;
pub mod openai;
pub mod tei;

pub use error::ProtocolError;

//! The one error every wire decoder returns (its own file so that the fuzz crate can compile the
//! decoders without the rest of `protocol/`).

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

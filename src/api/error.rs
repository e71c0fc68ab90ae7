//! The one table from error kinds to HTTP status, and the protocol's `{"error": "..."}` body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::batcher::JobError;
use crate::protocol::ProtocolError;
use crate::repository::{ModelState, RepoError};
use crate::spec::ValidationError;
use crate::telemetry::FailureReason;

/// Seconds a client is told to wait after an overload answer.
const RETRY_AFTER_SECS: u64 = 1;

#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    NotFound(String),
    BadRequest(String),
    TooLarge(String),
    /// The client did not send its whole body in time (408).
    Timeout(String),
    /// The caller lacks the scope (403).
    Forbidden(String),
    /// Management is not enabled (`--model-control`): 403.
    Disabled(String),
    /// The resource is not in a state that allows this (a bulk job's result before it is done, a
    /// rollout action the model's versions do not allow): 409.
    Conflict(String),
    /// Queue full: the server is overloaded (503 in KServe, 429 in the OpenAI/TEI doors).
    Overloaded(String),
    Unavailable(String),
    /// A model failed to load from its files: 500 with the reason (admin routes only).
    LoadFailed(String),
    /// Anything else that is the server's fault: the client sees only "internal error, request id
    /// ..." (`ApiError::internal` logs the detail).
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Forbidden(_) | ApiError::Disabled(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Overloaded(_) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::LoadFailed(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            ApiError::NotFound(m)
            | ApiError::BadRequest(m)
            | ApiError::TooLarge(m)
            | ApiError::Timeout(m)
            | ApiError::Forbidden(m)
            | ApiError::Disabled(m)
            | ApiError::Conflict(m)
            | ApiError::Overloaded(m)
            | ApiError::Unavailable(m)
            | ApiError::LoadFailed(m)
            | ApiError::Internal(m) => m,
        }
    }

    /// An internal error: `detail` goes to the server log (with the request id), the client gets
    /// "internal error, request id ...".
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        let id = super::access::request_id();
        tracing::error!(request_id = %id, error = %detail, "internal error");
        ApiError::Internal(format!("internal error, request id {id}"))
    }
}

impl ApiError {
    /// A response with this status and JSON body, plus `Retry-After` on 429/503.
    pub fn respond(status: StatusCode, body: impl serde::Serialize) -> Response {
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        resp
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        Self::respond(
            self.status(),
            serde_json::json!({ "error": self.message() }),
        )
    }
}

impl From<RepoError> for ApiError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::ModelNotFound(_) | RepoError::VersionNotFound { .. } => {
                ApiError::NotFound(e.to_string())
            }
            RepoError::NotReady {
                state: ModelState::Loading,
                ..
            } => ApiError::Unavailable(e.to_string()),
            RepoError::NotReady {
                state: ModelState::FailedValidation,
                ..
            } => ApiError::Unavailable(e.to_string()),
            RepoError::NotReady { .. } => ApiError::NotFound(e.to_string()),
            RepoError::Conflict { .. } => ApiError::Conflict(e.to_string()),
            // The model's own files (config, weights) failed: the server's side, with the reason
            // (only admin routes load).
            RepoError::Config(_) | RepoError::Load { .. } => ApiError::LoadFailed(e.to_string()),
        }
    }
}

impl From<ProtocolError> for ApiError {
    fn from(e: ProtocolError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

/// The status of a job error and the failure reason it counts as.
pub fn job_error(e: JobError) -> (ApiError, FailureReason) {
    let msg = e.to_string();
    match e {
        JobError::QueueFull { .. } | JobError::QueueTime { .. } => {
            (ApiError::Overloaded(msg), FailureReason::Rejected)
        }
        JobError::Timeout { .. } => (ApiError::Unavailable(msg), FailureReason::Timeout),
        JobError::BadPriority { .. } => (ApiError::BadRequest(msg), FailureReason::Invalid),
        JobError::Unavailable { .. } => (ApiError::Unavailable(msg), FailureReason::Other),
        JobError::Model { .. } => (ApiError::internal(msg), FailureReason::Backend),
    }
}

//! The one table from error kinds to gRPC status codes (the HTTP table is `api::error`), and the
//! retry hint on overload: a `google.rpc.RetryInfo` in the status details plus a `retry-after`
//! metadata entry (seconds), the gRPC forms of HTTP's `Retry-After`.

use std::time::Duration;

use prost::Message;
use tonic::{Code, Status};

use crate::api::ApiError;
use crate::auth::AuthError;

/// Seconds a client is told to wait after an overload answer (as over HTTP).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// `google.rpc.Status` (the binary `grpc-status-details-bin` payload).
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(message, repeated, tag = "3")]
    details: Vec<prost_types::Any>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, Message)]
struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    retry_delay: Option<prost_types::Duration>,
}

/// A status telling the client to retry after `after`.
pub fn retryable(code: Code, message: String, after: Duration) -> Status {
    let info = RetryInfo {
        retry_delay: Some(prost_types::Duration {
            seconds: after.as_secs() as i64,
            nanos: after.subsec_nanos() as i32,
        }),
    };
    let details = RpcStatus {
        code: code as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: info.encode_to_vec(),
        }],
    };
    let mut st = Status::with_details(code, message, details.encode_to_vec().into());
    let secs = (after.as_secs() + u64::from(after.subsec_nanos() > 0)).max(1);
    st.metadata_mut().insert(
        "retry-after",
        secs.to_string()
            .parse()
            .expect("digits are valid metadata. This is a bug."),
    );
    st
}

/// The status of an error: NOT_FOUND, INVALID_ARGUMENT, PERMISSION_DENIED, UNAVAILABLE (queue
/// full, queue timeout, loading, draining; with a retry hint), INTERNAL (the text is the generic
/// one `ApiError::internal` made; the detail is in the server log).
pub fn status_of(e: ApiError) -> Status {
    let code = match &e {
        ApiError::NotFound(_) => Code::NotFound,
        ApiError::BadRequest(_) | ApiError::TooLarge(_) => Code::InvalidArgument,
        ApiError::Timeout(_) => Code::DeadlineExceeded,
        ApiError::Forbidden(_) | ApiError::Disabled(_) => Code::PermissionDenied,
        ApiError::Conflict(_) => Code::FailedPrecondition,
        ApiError::Overloaded(_) | ApiError::Unavailable(_) => {
            return retryable(Code::Unavailable, e.message().to_string(), RETRY_AFTER)
        }
        ApiError::LoadFailed(_) | ApiError::Internal(_) => Code::Internal,
    };
    Status::new(code, e.message())
}

/// An access-control refusal: UNAUTHENTICATED (missing, invalid, expired) or PERMISSION_DENIED.
pub fn refusal(e: AuthError) -> Status {
    match e {
        AuthError::Forbidden => Status::permission_denied(e.to_string()),
        _ => Status::unauthenticated(e.to_string()),
    }
}

/// Over the caller's rate limit: RESOURCE_EXHAUSTED with a retry hint.
pub fn rate_limited(after: Duration) -> Status {
    retryable(
        Code::ResourceExhausted,
        "rate limit exceeded; retry later".into(),
        after,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_map_to_codes_and_overload_carries_retry_info() {
        assert_eq!(
            status_of(ApiError::NotFound("x".into())).code(),
            Code::NotFound
        );
        assert_eq!(
            status_of(ApiError::BadRequest("x".into())).code(),
            Code::InvalidArgument
        );
        assert_eq!(
            status_of(ApiError::Disabled("x".into())).code(),
            Code::PermissionDenied
        );
        let st = status_of(ApiError::Overloaded("full".into()));
        assert_eq!((st.code(), st.message()), (Code::Unavailable, "full"));
        assert_eq!(st.metadata().get("retry-after").unwrap(), "1");
        let details = RpcStatus::decode(st.details()).unwrap();
        assert_eq!(
            details.details[0].type_url,
            "type.googleapis.com/google.rpc.RetryInfo"
        );
        let info = RetryInfo::decode(details.details[0].value.as_slice()).unwrap();
        assert_eq!(info.retry_delay.unwrap().seconds, 1);
        assert_eq!(refusal(AuthError::Missing).code(), Code::Unauthenticated);
        assert_eq!(
            rate_limited(Duration::from_millis(1500))
                .metadata()
                .get("retry-after")
                .unwrap(),
            "2"
        );
    }
}

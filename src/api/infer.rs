//! The inference core every front door shares: validate, submit to the model version's queue,
//! record metrics, and build the TEI-style timing headers.

use std::time::{Duration, Instant};

use axum::http::{HeaderName, HeaderValue};

use super::error::job_error;
use super::{ApiError, AppState};
use crate::batcher::{JobOutput, SubmitOptions};
use crate::repository::LoadedVersion;
use crate::telemetry::FailureReason;
use crate::tensor::{validate_inputs, Tensor};

/// A finished inference with its end-to-end time.
pub struct Inferred {
    pub output: JobOutput,
    pub total: Duration,
}

/// Validates `inputs` against the version's config and runs them through its queue.
pub async fn run(
    state: &AppState,
    lv: &LoadedVersion,
    inputs: Vec<Tensor>,
    opts: SubmitOptions,
) -> Result<Inferred, ApiError> {
    let start = Instant::now();
    if !state.is_accepting() {
        lv.metrics.record_failure(FailureReason::Other);
        return Err(ApiError::Unavailable(
            "server is shutting down or starting".into(),
        ));
    }
    let cfg = &lv.config;
    let rows = validate_inputs(&cfg.inputs, cfg.max_batch_size, &inputs).map_err(|e| {
        lv.metrics.record_failure(FailureReason::Invalid);
        ApiError::from(e)
    })?;
    match lv.queue.submit(inputs, rows, opts).await {
        Ok(output) => {
            let total = start.elapsed();
            lv.metrics.record_success(total, &output.timings);
            Ok(Inferred { output, total })
        }
        Err(e) => {
            let (err, reason) = job_error(e);
            lv.metrics.record_failure(reason);
            Err(err)
        }
    }
}

/// Records an invalid request against a model version (decode failures before `run`).
pub fn invalid(lv: &LoadedVersion, e: impl Into<ApiError>) -> ApiError {
    lv.metrics.record_failure(FailureReason::Invalid);
    e.into()
}

/// Milliseconds with microsecond precision ("1.234"), without float formatting on the hot path.
fn ms(d: Duration) -> HeaderValue {
    let us = d.as_micros();
    HeaderValue::from_str(&format!("{}.{:03}", us / 1000, us % 1000))
        .expect("a number is a valid header value. This is a bug.")
}

/// `x-queue-time`, `x-inference-time`, `x-total-time`, in milliseconds (as TEI).
pub fn timing_headers(r: &Inferred) -> [(HeaderName, HeaderValue); 3] {
    let t = &r.output.timings;
    [
        (HeaderName::from_static("x-queue-time"), ms(t.queue)),
        (
            HeaderName::from_static("x-inference-time"),
            ms(t.compute_input + t.compute_infer + t.compute_output),
        ),
        (HeaderName::from_static("x-total-time"), ms(r.total)),
    ]
}

/// Parses a version path segment.
pub fn parse_version(model: &str, v: &str) -> Result<u64, ApiError> {
    v.parse()
        .map_err(|_| ApiError::NotFound(format!("model '{model}' has no version '{v}'")))
}

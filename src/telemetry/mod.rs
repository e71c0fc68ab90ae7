//! Observability: every metric name (Triton's `nv_*` where Triton has one, else `ferrite_*`) lives in
//! `metrics.rs`; `logging.rs` sets up `tracing`. A leaf module: it knows nothing of HTTP or models.

pub mod logging;
pub mod metrics;

pub use metrics::{FailureReason, Metrics, ModelMetrics};

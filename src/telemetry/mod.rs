//! Observability: every metric name (Triton's `nv_*` where Triton has one, else `ferrite_*`) lives in
//! `metrics.rs`; `gpu.rs` (NVML behind the `GpuSource` trait) and `system.rs` (`/proc`) read the
//! hardware; `sampler.rs` is the thread that samples both at an interval; `logging.rs` sets up
//! `tracing`. A leaf module: it knows nothing of HTTP or models.

pub mod gpu;
pub mod jobs;
pub mod logging;
pub mod metrics;
pub mod monitor;
pub mod rollout;
pub mod sampler;
pub mod system;

pub use jobs::{JobMetrics, RejectReason};
pub use metrics::{CacheMetrics, FailureReason, Metrics, ModelMetrics};
pub use sampler::{Sampler, Snapshot, Telemetry};

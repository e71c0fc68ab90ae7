//! Prometheus metrics with Triton's names and labels (`model`, `version`, `reason`), so existing
//! dashboards, alert rules and perf_analyzer's server-side split work, plus `ferrite_*` histograms
//! for latency that aggregates across replicas. One registry per server (tests run several).

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::batcher::{QueueMetrics, Timings};

/// Why a request failed, as the `reason` label of `nv_inference_request_failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// Queue full (overload).
    Rejected,
    /// Deadline passed while queued.
    Timeout,
    /// The client went away before compute.
    Canceled,
    /// The model failed or panicked.
    Backend,
    /// The request was invalid (shape, datatype, NaN, ...).
    Invalid,
    /// Anything else (model unloading, ...).
    Other,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Rejected => "REJECTED",
            FailureReason::Timeout => "TIMEOUT",
            FailureReason::Canceled => "CANCELED",
            FailureReason::Backend => "BACKEND",
            FailureReason::Invalid => "INVALID",
            FailureReason::Other => "OTHER",
        }
    }
}

const MV: &[&str] = &["model", "version"];

/// Latency buckets in seconds: 100 us .. 60 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];
const RATIO_BUCKETS: &[f64] = &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0];
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// All metric families of one server.
pub struct Metrics {
    registry: Registry,
    success: IntCounterVec,
    failure: IntCounterVec,
    inference_count: IntCounterVec,
    exec_count: IntCounterVec,
    pending: IntGaugeVec,
    request_us: IntCounterVec,
    queue_us: IntCounterVec,
    input_us: IntCounterVec,
    infer_us: IntCounterVec,
    output_us: IntCounterVec,
    request_seconds: HistogramVec,
    queue_seconds: HistogramVec,
    batch_size: HistogramVec,
    padding: HistogramVec,
}

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("metric definitions are static. This is a bug.");
    reg.register(Box::new(c.clone()))
        .expect("metric names are unique. This is a bug.");
    c
}

fn histogram(reg: &Registry, name: &str, help: &str, buckets: &[f64]) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), MV)
        .expect("metric definitions are static. This is a bug.");
    reg.register(Box::new(h.clone()))
        .expect("metric names are unique. This is a bug.");
    h
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let pending = IntGaugeVec::new(
            Opts::new(
                "nv_inference_pending_request_count",
                "Instantaneous number of pending requests awaiting execution per-model.",
            ),
            MV,
        )
        .expect("static metric. This is a bug.");
        r.register(Box::new(pending.clone()))
            .expect("unique metric. This is a bug.");
        Metrics {
            success: counter(
                &r,
                "nv_inference_request_success",
                "Number of successful inference requests, all batch sizes",
                MV,
            ),
            failure: counter(
                &r,
                "nv_inference_request_failure",
                "Number of failed inference requests, all batch sizes",
                &["model", "version", "reason"],
            ),
            inference_count: counter(
                &r,
                "nv_inference_count",
                "Number of inferences performed (does not include cached requests)",
                MV,
            ),
            exec_count: counter(
                &r,
                "nv_inference_exec_count",
                "Number of model executions performed (does not include cached requests)",
                MV,
            ),
            request_us: counter(
                &r,
                "nv_inference_request_duration_us",
                "Cumulative inference request duration in microseconds",
                MV,
            ),
            queue_us: counter(
                &r,
                "nv_inference_queue_duration_us",
                "Cumulative inference queuing duration in microseconds",
                MV,
            ),
            input_us: counter(
                &r,
                "nv_inference_compute_input_duration_us",
                "Cumulative compute input duration in microseconds",
                MV,
            ),
            infer_us: counter(
                &r,
                "nv_inference_compute_infer_duration_us",
                "Cumulative compute inference duration in microseconds",
                MV,
            ),
            output_us: counter(
                &r,
                "nv_inference_compute_output_duration_us",
                "Cumulative inference compute output duration in microseconds",
                MV,
            ),
            request_seconds: histogram(
                &r,
                "ferrite_request_duration_seconds",
                "End-to-end request latency in seconds (successful requests)",
                SECONDS_BUCKETS,
            ),
            queue_seconds: histogram(
                &r,
                "ferrite_queue_duration_seconds",
                "Time requests spent queued in seconds",
                SECONDS_BUCKETS,
            ),
            batch_size: histogram(
                &r,
                "ferrite_batch_size",
                "Rows per model execution",
                BATCH_BUCKETS,
            ),
            padding: histogram(
                &r,
                "ferrite_batch_padding_ratio",
                "Padding efficiency of sequence batches: real tokens / (rows x longest); 1 = no padding",
                RATIO_BUCKETS,
            ),
            pending,
            registry: r,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Children of every family for one model version, resolved once.
    pub fn for_model(&self, model: &str, version: u64) -> ModelMetrics {
        let v = version.to_string();
        let l = [model, v.as_str()];
        let fail = |reason: FailureReason| {
            self.failure
                .with_label_values(&[model, v.as_str(), reason.as_str()])
        };
        ModelMetrics {
            success: self.success.with_label_values(&l),
            rejected: fail(FailureReason::Rejected),
            timeout: fail(FailureReason::Timeout),
            canceled: fail(FailureReason::Canceled),
            backend: fail(FailureReason::Backend),
            invalid: fail(FailureReason::Invalid),
            other: fail(FailureReason::Other),
            inference_count: self.inference_count.with_label_values(&l),
            exec_count: self.exec_count.with_label_values(&l),
            pending: self.pending.with_label_values(&l),
            request_us: self.request_us.with_label_values(&l),
            queue_us: self.queue_us.with_label_values(&l),
            input_us: self.input_us.with_label_values(&l),
            infer_us: self.infer_us.with_label_values(&l),
            output_us: self.output_us.with_label_values(&l),
            request_seconds: self.request_seconds.with_label_values(&l),
            queue_seconds: self.queue_seconds.with_label_values(&l),
            batch_size: self.batch_size.with_label_values(&l),
            padding: self.padding.with_label_values(&l),
        }
    }

    /// The Prometheus text exposition of every family.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail. This is a bug.");
        String::from_utf8(buf).expect("the text encoder writes UTF-8. This is a bug.")
    }
}

/// Metric children of one model version; cheap to clone.
#[derive(Clone)]
pub struct ModelMetrics {
    success: IntCounter,
    rejected: IntCounter,
    timeout: IntCounter,
    canceled: IntCounter,
    backend: IntCounter,
    invalid: IntCounter,
    other: IntCounter,
    inference_count: IntCounter,
    exec_count: IntCounter,
    pending: IntGauge,
    request_us: IntCounter,
    queue_us: IntCounter,
    input_us: IntCounter,
    infer_us: IntCounter,
    output_us: IntCounter,
    request_seconds: prometheus::Histogram,
    queue_seconds: prometheus::Histogram,
    batch_size: prometheus::Histogram,
    padding: prometheus::Histogram,
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

impl ModelMetrics {
    /// The gauges and counters the batcher's dispatcher keeps.
    pub fn queue(&self) -> QueueMetrics {
        QueueMetrics {
            pending: self.pending.clone(),
            canceled: self.canceled.clone(),
        }
    }

    /// One successful request: end-to-end time and its stage timings.
    pub fn record_success(&self, total: Duration, t: &Timings) {
        self.success.inc();
        self.request_us.inc_by(us(total));
        self.queue_us.inc_by(us(t.queue));
        self.input_us.inc_by(us(t.compute_input));
        self.infer_us.inc_by(us(t.compute_infer));
        self.output_us.inc_by(us(t.compute_output));
        self.request_seconds.observe(total.as_secs_f64());
        self.queue_seconds.observe(t.queue.as_secs_f64());
    }

    pub fn record_failure(&self, reason: FailureReason) {
        match reason {
            FailureReason::Rejected => &self.rejected,
            FailureReason::Timeout => &self.timeout,
            FailureReason::Canceled => &self.canceled,
            FailureReason::Backend => &self.backend,
            FailureReason::Invalid => &self.invalid,
            FailureReason::Other => &self.other,
        }
        .inc();
    }

    /// Padding efficiency of one sequence batch (real tokens / padded tokens).
    pub fn record_padding(&self, efficiency: f64) {
        self.padding.observe(efficiency);
    }

    /// One model execution of `rows` rows.
    pub fn record_execution(&self, rows: usize) {
        self.exec_count.inc();
        self.inference_count.inc_by(rows as u64);
        self.batch_size.observe(rows as f64);
    }
}

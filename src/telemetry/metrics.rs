//! Prometheus metrics with Triton's names and labels (`model`, `version`, `reason`), so existing
//! dashboards, alert rules and perf_analyzer's server-side split work, plus `ferrite_*` histograms
//! for latency that aggregates across replicas; the GPU/CPU gauges the telemetry sampler sets (Triton's
//! `nv_gpu_*`/`nv_cpu_*`, label `gpu_uuid`) and model readiness. One registry per server (tests run
//! several).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus::{
    CounterVec, Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::telemetry::gpu::GpuSample;
use crate::telemetry::system::CpuSample;

/// Time a request spent in each stage; compute stages are those of the batch it ran in. A value the
/// worker fills and the API records (`ModelMetrics::record_success`); defined here, in the leaf, so
/// that `batcher` depends on `telemetry` and not the other way round.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    pub queue: Duration,
    pub compute_input: Duration,
    pub compute_infer: Duration,
    pub compute_output: Duration,
    /// Rows in the batch this request ran in.
    pub batch_rows: usize,
}

/// The gauge and counter the batcher's dispatcher keeps up to date (`ModelMetrics::queue`).
#[derive(Clone)]
pub struct QueueMetrics {
    pub pending: IntGauge,
    pub canceled: IntCounter,
}

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
    model_ready: IntGaugeVec,
    model_precision: IntGaugeVec,
    rate_limited: IntCounterVec,
    auth_reloads: IntCounterVec,
    cache: CacheFamilies,
    host: HostGauges,
    monitor: crate::telemetry::monitor::MonitorFamilies,
    jobs: crate::telemetry::jobs::JobsFamilies,
}

/// The response cache's families (`src/cache`): Triton's `nv_cache_*` per model plus ours.
struct CacheFamilies {
    hits: IntCounterVec,
    misses: IntCounterVec,
    hit_us: IntCounterVec,
    miss_us: IntCounterVec,
    bytes: IntGaugeVec,
    evictions: IntCounterVec,
    backend_errors: IntCounterVec,
}

impl CacheFamilies {
    fn new(r: &Registry) -> CacheFamilies {
        CacheFamilies {
            hits: counter(
                r,
                "nv_cache_num_hits_per_model",
                "Number of cache hits per model (one per request for tensor models, one per text for text models)",
                MV,
            ),
            misses: counter(
                r,
                "nv_cache_num_misses_per_model",
                "Number of cache misses per model (one per request for tensor models, one per text for text models)",
                MV,
            ),
            hit_us: counter(
                r,
                "nv_cache_hit_duration_per_model",
                "Total cache hit duration per model, in microseconds (lookups that hit)",
                MV,
            ),
            miss_us: counter(
                r,
                "nv_cache_miss_duration_per_model",
                "Total cache miss duration per model, in microseconds (lookups that missed, plus inserting the result)",
                MV,
            ),
            bytes: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "ferrite_cache_bytes",
                        "Bytes held by the in-process response cache of a model version (entries, keys and bookkeeping)",
                    ),
                    MV,
                )
                .expect("static metric. This is a bug."),
            ),
            evictions: counter(
                r,
                "ferrite_cache_evictions_total",
                "Entries removed from the in-process response cache, by reason (size: over max_bytes; expired: past ttl_secs)",
                &["model", "version", "reason"],
            ),
            backend_errors: counter(
                r,
                "ferrite_cache_backend_errors_total",
                "Cache backend operations that failed or timed out (the request was served uncached), by backend",
                &["backend"],
            ),
        }
    }
}

/// Cache metric children of one model version; cheap to clone.
#[derive(Clone)]
pub struct CacheMetrics {
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub hit_us: IntCounter,
    pub miss_us: IntCounter,
    pub bytes: IntGauge,
    pub evicted_size: IntCounter,
    pub evicted_expired: IntCounter,
}

/// Gauges set by the telemetry sampler thread.
struct HostGauges {
    gpu_utilization: GaugeVec,
    gpu_memory_total: GaugeVec,
    gpu_memory_used: GaugeVec,
    gpu_power_usage: GaugeVec,
    gpu_power_limit: GaugeVec,
    gpu_energy: CounterVec,
    gpu_temperature: GaugeVec,
    gpu_sm_clock: GaugeVec,
    cpu_utilization: Gauge,
    cpu_memory_total: Gauge,
    cpu_memory_used: Gauge,
    process_resident: Gauge,
    /// The GPUs of the last reading, each with its last NVML energy reading if it has one (the
    /// counter counts from server start, like Triton's). Only the sampler thread takes it, once per
    /// sample.
    last_gpus: Mutex<HashMap<String, Option<f64>>>,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(reg: &Registry, c: C) -> C {
    reg.register(Box::new(c.clone()))
        .expect("metric names are unique. This is a bug.");
    c
}

fn gauge(reg: &Registry, name: &str, help: &str) -> Gauge {
    register(
        reg,
        Gauge::new(name, help).expect("static metric. This is a bug."),
    )
}

fn gpu_gauge(reg: &Registry, name: &str, help: &str) -> GaugeVec {
    register(
        reg,
        GaugeVec::new(Opts::new(name, help), &["gpu_uuid"]).expect("static metric. This is a bug."),
    )
}

impl HostGauges {
    fn new(r: &Registry) -> HostGauges {
        HostGauges {
            gpu_utilization: gpu_gauge(r, "nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)"),
            gpu_memory_total: gpu_gauge(
                r,
                "nv_gpu_memory_total_bytes",
                "GPU total memory, in bytes",
            ),
            gpu_memory_used: gpu_gauge(r, "nv_gpu_memory_used_bytes", "GPU used memory, in bytes"),
            gpu_power_usage: gpu_gauge(r, "nv_gpu_power_usage", "GPU power usage in watts"),
            gpu_power_limit: gpu_gauge(
                r,
                "nv_gpu_power_limit",
                "GPU power management limit in watts",
            ),
            gpu_energy: register(
                r,
                CounterVec::new(
                    Opts::new(
                        "nv_energy_consumption",
                        "GPU energy consumption in joules since the server started",
                    ),
                    &["gpu_uuid"],
                )
                .expect("static metric. This is a bug."),
            ),
            gpu_temperature: gpu_gauge(
                r,
                "ferrite_gpu_temperature_celsius",
                "GPU die temperature in degrees Celsius",
            ),
            gpu_sm_clock: gpu_gauge(r, "ferrite_gpu_sm_clock_hz", "GPU SM clock in hertz"),
            cpu_utilization: gauge(r, "nv_cpu_utilization", "CPU utilization rate [0.0 - 1.0]"),
            cpu_memory_total: gauge(
                r,
                "nv_cpu_memory_total_bytes",
                "CPU total memory (RAM), in bytes",
            ),
            cpu_memory_used: gauge(
                r,
                "nv_cpu_memory_used_bytes",
                "CPU used memory (RAM), in bytes",
            ),
            process_resident: gauge(
                r,
                "ferrite_process_resident_memory_bytes",
                "Resident set size of the server process in bytes",
            ),
            last_gpus: Mutex::new(HashMap::new()),
        }
    }
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
        let rate_limited = counter(
            &r,
            "ferrite_rate_limited_total",
            "Requests refused with 429 because their principal was over its rate limit, by the scope the route needs",
            &["scope"],
        );
        for scope in ["infer", "admin", "feedback", "jobs", "metrics"] {
            rate_limited.with_label_values(&[scope]);
        }
        let auth_reloads = counter(
            &r,
            "ferrite_auth_reloads_total",
            "Reloads of [auth] (SIGHUP or a changed file), by outcome (ok, failed: the previous keys stay)",
            &["outcome"],
        );
        for outcome in ["ok", "failed"] {
            auth_reloads.with_label_values(&[outcome]);
        }
        Metrics {
            rate_limited,
            auth_reloads,
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
            model_precision: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "ferrite_model_precision",
                        "1 for each path a loaded version's linear layers run in (f32, bf16-amx, bf16-avx512, bf16-portable, q8, q4)",
                    ),
                    &["model", "version", "precision"],
                )
                .expect("static metric. This is a bug."),
            ),
            model_ready: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "ferrite_model_ready",
                        "1 when the model version is loaded and serving, 0 when it failed or was unloaded",
                    ),
                    MV,
                )
                .expect("static metric. This is a bug."),
            ),
            cache: CacheFamilies::new(&r),
            host: HostGauges::new(&r),
            monitor: crate::telemetry::monitor::MonitorFamilies::new(&r),
            jobs: crate::telemetry::jobs::JobsFamilies::new(&r),
            pending,
            registry: r,
        }
    }

    /// Sets `ferrite_model_ready{model,version}`.
    pub fn set_model_ready(&self, model: &str, version: u64, ready: bool) {
        self.model_ready
            .with_label_values(&[model, &version.to_string()])
            .set(i64::from(ready));
    }

    /// Sets `ferrite_model_precision{model,version,precision}` to 1 for each path (and drops the
    /// version's other paths: a reload may have changed them).
    pub fn set_model_precision(&self, model: &str, version: u64, paths: &[&str]) {
        let v = version.to_string();
        for p in self.precisions_of(model, &v) {
            if !paths.contains(&p.as_str()) {
                let _ = self.model_precision.remove_label_values(&[model, &v, &p]);
            }
        }
        for p in paths {
            self.model_precision
                .with_label_values(&[model, &v, p])
                .set(1);
        }
    }

    /// The `precision` labels exported for a version.
    fn precisions_of(&self, model: &str, version: &str) -> Vec<String> {
        use prometheus::core::Collector;
        let label = |m: &prometheus::proto::Metric, name: &str| {
            m.get_label()
                .iter()
                .find(|l| l.name() == name)
                .map(|l| l.value().to_string())
        };
        self.model_precision
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .filter(|m| {
                label(m, "model").as_deref() == Some(model)
                    && label(m, "version").as_deref() == Some(version)
            })
            .filter_map(|m| label(m, "precision"))
            .collect()
    }

    /// Drops a version's readiness and precision series (a version that is no longer selected
    /// at all).
    pub fn forget_model_version(&self, model: &str, version: u64) {
        let v = version.to_string();
        let _ = self.model_ready.remove_label_values(&[model, &v]);
        for p in self.precisions_of(model, &v) {
            let _ = self.model_precision.remove_label_values(&[model, &v, &p]);
        }
        let c = &self.cache;
        for f in [&c.hits, &c.misses, &c.hit_us, &c.miss_us] {
            let _ = f.remove_label_values(&[model, &v]);
        }
        let _ = c.bytes.remove_label_values(&[model, &v]);
        for reason in ["size", "expired"] {
            let _ = c.evictions.remove_label_values(&[model, &v, reason]);
        }
    }

    /// Exports one host reading.
    pub fn record_cpu(&self, s: &CpuSample) {
        let h = &self.host;
        h.cpu_utilization.set(s.utilization);
        h.cpu_memory_total.set(s.memory_total_bytes as f64);
        h.cpu_memory_used.set(s.memory_used_bytes as f64);
        h.process_resident.set(s.process_resident_bytes as f64);
    }

    /// Exports one reading per GPU, labelled `gpu_uuid`; unsupported fields are left out.
    pub fn record_gpus(&self, samples: &[GpuSample]) {
        let h = &self.host;
        let mut last = h
            .last_gpus
            .lock()
            .expect("GPU table lock poisoned. This is a bug.");
        // A GPU missing from this reading (NVML stopped answering for it): drop its series rather
        // than export its last values forever.
        let gone: Vec<String> = last
            .keys()
            .filter(|u| !samples.iter().any(|s| &s.uuid == *u))
            .cloned()
            .collect();
        for uuid in &gone {
            let l = [uuid.as_str()];
            for g in [
                &h.gpu_utilization,
                &h.gpu_memory_total,
                &h.gpu_memory_used,
                &h.gpu_power_usage,
                &h.gpu_power_limit,
                &h.gpu_temperature,
                &h.gpu_sm_clock,
            ] {
                let _ = g.remove_label_values(&l);
            }
            let _ = h.gpu_energy.remove_label_values(&l);
            last.remove(uuid);
        }
        for s in samples {
            let l = [s.uuid.as_str()];
            let set = |g: &GaugeVec, v: Option<f64>| {
                if let Some(v) = v {
                    g.with_label_values(&l).set(v);
                }
            };
            set(&h.gpu_utilization, s.utilization);
            set(&h.gpu_memory_total, s.memory_total_bytes.map(|b| b as f64));
            set(&h.gpu_memory_used, s.memory_used_bytes.map(|b| b as f64));
            set(&h.gpu_power_usage, s.power_usage_watts);
            set(&h.gpu_power_limit, s.power_limit_watts);
            set(&h.gpu_temperature, s.temperature_celsius);
            set(&h.gpu_sm_clock, s.sm_clock_hz);
            match s.energy_joules {
                Some(e) => {
                    let energy = h.gpu_energy.with_label_values(&l);
                    if let Some(Some(prev)) = last.insert(s.uuid.clone(), Some(e)) {
                        // A driver reload resets NVML's counter: count nothing for that interval.
                        energy.inc_by((e - prev).max(0.0));
                    }
                }
                None => {
                    last.entry(s.uuid.clone()).or_insert(None);
                }
            }
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
            jobs: self.jobs.for_version(model, version),
            extra: Default::default(),
        }
    }

    /// The response cache's children for one model version (created, so exported at 0).
    pub fn for_cache(&self, model: &str, version: u64) -> CacheMetrics {
        let v = version.to_string();
        let l = [model, v.as_str()];
        let c = &self.cache;
        let evicted = |reason: &str| c.evictions.with_label_values(&[model, v.as_str(), reason]);
        CacheMetrics {
            hits: c.hits.with_label_values(&l),
            misses: c.misses.with_label_values(&l),
            hit_us: c.hit_us.with_label_values(&l),
            miss_us: c.miss_us.with_label_values(&l),
            bytes: c.bytes.with_label_values(&l),
            evicted_size: evicted("size"),
            evicted_expired: evicted("expired"),
        }
    }

    /// The model-quality monitor's children for one model version (`telemetry::monitor`).
    pub fn for_monitor(
        &self,
        model: &str,
        version: u64,
    ) -> crate::telemetry::monitor::MonitorMetrics {
        self.monitor.for_version(model, version)
    }

    /// `ferrite_jobs{model,state}`: the jobs manager keeps it (`telemetry::jobs::JOB_STATES`).
    pub fn jobs_by_state(&self) -> prometheus::IntGaugeVec {
        self.jobs.jobs.clone()
    }

    /// `ferrite_cache_backend_errors_total{backend}` (created, so exported at 0).
    pub fn cache_backend_errors(&self, backend: &str) -> IntCounter {
        self.cache.backend_errors.with_label_values(&[backend])
    }

    pub fn record_auth_reload(&self, ok: bool) {
        self.auth_reloads
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
    }

    pub fn record_rate_limited(&self, scope: &str) {
        self.rate_limited.with_label_values(&[scope]).inc();
    }

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
    jobs: crate::telemetry::jobs::JobMetrics,
    /// What the statistics extension reports beyond the Prometheus counters.
    extra: std::sync::Arc<StatsExtra>,
}

/// Per-version totals the statistics extension needs and Prometheus does not export.
#[derive(Default)]
struct StatsExtra {
    /// Milliseconds since the epoch of the last successful inference; 0 = none yet.
    last_inference_ms: std::sync::atomic::AtomicU64,
    /// Per batch size (rows): executions and their compute stage nanoseconds. Locked once per
    /// executed batch (not per request), briefly, with no await.
    batches: Mutex<std::collections::BTreeMap<usize, [u64; 4]>>,
}

/// A count and the total nanoseconds it took (Triton's `StatisticDuration`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatDuration {
    pub count: u64,
    pub ns: u64,
}

/// Triton's `InferStatistics`: per request stage, how many and how long.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct InferStatistics {
    pub success: StatDuration,
    /// Count of failed requests (every reason); `ns` stays 0 (failure durations are not timed).
    pub fail: StatDuration,
    pub queue: StatDuration,
    pub compute_input: StatDuration,
    pub compute_infer: StatDuration,
    pub compute_output: StatDuration,
    pub cache_hit: StatDuration,
    pub cache_miss: StatDuration,
}

/// Triton's `InferBatchStatistics`: executions of one batch size.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BatchStatistics {
    pub batch_size: u64,
    pub compute_input: StatDuration,
    pub compute_infer: StatDuration,
    pub compute_output: StatDuration,
}

/// Triton's `ModelStatistics` for one model version (the statistics extension, HTTP and gRPC).
/// Request durations have microsecond resolution (the Prometheus counters'), batch stages
/// nanosecond.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ModelStatistics {
    pub name: String,
    pub version: String,
    /// Milliseconds since the epoch of the last successful inference; 0 = none yet.
    pub last_inference: u64,
    /// Rows inferred (a request of 3 rows counts 3), as `nv_inference_count`.
    pub inference_count: u64,
    /// Model executions (batches), as `nv_inference_exec_count`.
    pub execution_count: u64,
    pub inference_stats: InferStatistics,
    pub batch_stats: Vec<BatchStatistics>,
    /// Always empty (Ferrite does not report per-model memory).
    pub memory_usage: [u8; 0],
}

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
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
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.extra
            .last_inference_ms
            .store(now_ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The compute stages of one executed batch of `rows` rows (statistics extension).
    pub fn record_batch_stages(
        &self,
        rows: usize,
        input: Duration,
        infer: Duration,
        output: Duration,
    ) {
        let mut b = self.extra.batches.lock().unwrap_or_else(|e| e.into_inner());
        let e = b.entry(rows).or_default();
        e[0] += 1;
        e[1] += ns(input);
        e[2] += ns(infer);
        e[3] += ns(output);
    }

    /// This version's statistics (Triton's statistics extension).
    pub fn statistics(&self, name: &str, version: u64) -> ModelStatistics {
        let success = self.success.get();
        let at = |us: &IntCounter| StatDuration {
            count: success,
            ns: us.get().saturating_mul(1000),
        };
        let failed = [
            &self.rejected,
            &self.timeout,
            &self.canceled,
            &self.backend,
            &self.invalid,
            &self.other,
        ]
        .iter()
        .map(|c| c.get())
        .sum();
        let d = |count, ns| StatDuration { count, ns };
        let batch_stats = self
            .extra
            .batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(&rows, t)| BatchStatistics {
                batch_size: rows as u64,
                compute_input: d(t[0], t[1]),
                compute_infer: d(t[0], t[2]),
                compute_output: d(t[0], t[3]),
            })
            .collect();
        ModelStatistics {
            name: name.into(),
            version: version.to_string(),
            last_inference: self
                .extra
                .last_inference_ms
                .load(std::sync::atomic::Ordering::Relaxed),
            inference_count: self.inference_count.get(),
            execution_count: self.exec_count.get(),
            inference_stats: InferStatistics {
                success: at(&self.request_us),
                fail: d(failed, 0),
                queue: at(&self.queue_us),
                compute_input: at(&self.input_us),
                compute_infer: at(&self.infer_us),
                compute_output: at(&self.output_us),
                ..InferStatistics::default()
            },
            batch_stats,
            memory_usage: [],
        }
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

    /// Cumulative successes, server-side failures (backend, timeout, other: not the client's
    /// invalid or rejected requests) and the request-latency histogram as (upper bound,
    /// cumulative count): what the rollout guard compares between versions.
    pub fn request_totals(&self) -> (u64, u64, Vec<(f64, u64)>) {
        use prometheus::core::Metric;
        let errors = self.backend.get() + self.timeout.get() + self.other.get();
        let m = self.request_seconds.metric();
        let buckets = m
            .get_histogram()
            .get_bucket()
            .iter()
            .map(|b| (b.upper_bound(), b.cumulative_count()))
            .collect();
        (self.success.get(), errors, buckets)
    }

    /// Padding efficiency of one sequence batch (real tokens / padded tokens).
    pub fn record_padding(&self, efficiency: f64) {
        self.padding.observe(efficiency);
    }

    /// The bulk job children (`ferrite_job_*`) of this version.
    pub fn jobs(&self) -> &crate::telemetry::jobs::JobMetrics {
        &self.jobs
    }

    /// One model execution of `rows` rows.
    pub fn record_execution(&self, rows: usize) {
        self.exec_count.inc();
        self.inference_count.inc_by(rows as u64);
        self.batch_size.observe(rows as f64);
    }
}

#[cfg(test)]
mod gpu_series_tests {
    use super::Metrics;
    use crate::telemetry::gpu::GpuSample;

    fn sample(ordinal: usize, uuid: &str, util: f64, energy: f64) -> GpuSample {
        GpuSample {
            ordinal,
            uuid: uuid.into(),
            name: "test".into(),
            utilization: Some(util),
            memory_total_bytes: Some(80 << 30),
            memory_used_bytes: Some(1 << 30),
            power_usage_watts: Some(100.0),
            power_limit_watts: Some(700.0),
            energy_joules: Some(energy),
            temperature_celsius: Some(40.0),
            sm_clock_hz: Some(1.98e9),
        }
    }

    fn value(text: &str, metric: &str, uuid: &str) -> Option<f64> {
        let prefix = format!("{metric}{{gpu_uuid=\"{uuid}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map(|v| v.parse().unwrap())
    }

    /// A GPU that drops out of a reading (NVML stopped answering for it) loses its series; the
    /// others keep updating, and their energy counters keep counting from their first reading.
    #[test]
    fn a_gpu_missing_from_a_reading_loses_its_series_and_the_others_update() {
        let m = Metrics::new();
        m.record_gpus(&[
            sample(0, "GPU-a", 0.25, 1000.0),
            sample(1, "GPU-b", 0.5, 50.0),
        ]);
        m.record_gpus(&[
            sample(0, "GPU-a", 0.75, 1010.0),
            sample(1, "GPU-b", 0.5, 55.0),
        ]);
        let text = m.encode();
        assert_eq!(value(&text, "nv_gpu_utilization", "GPU-b"), Some(0.5));
        assert_eq!(value(&text, "nv_energy_consumption", "GPU-b"), Some(5.0));
        m.record_gpus(&[sample(0, "GPU-a", 0.125, 1030.0)]);
        let text = m.encode();
        assert_eq!(value(&text, "nv_gpu_utilization", "GPU-a"), Some(0.125));
        assert_eq!(value(&text, "nv_energy_consumption", "GPU-a"), Some(30.0));
        for metric in [
            "nv_gpu_utilization",
            "nv_gpu_memory_total_bytes",
            "nv_gpu_power_usage",
            "nv_energy_consumption",
        ] {
            assert_eq!(value(&text, metric, "GPU-b"), None, "{metric} of GPU-b");
        }
        // Back again: its energy counts from its new first reading, not across the gap.
        m.record_gpus(&[
            sample(0, "GPU-a", 0.125, 1030.0),
            sample(1, "GPU-b", 0.5, 90.0),
        ]);
        let text = m.encode();
        assert_eq!(value(&text, "nv_energy_consumption", "GPU-b"), Some(0.0));
    }

    /// A version's precision series follow what it runs now: a reload that changes the path
    /// replaces the series, and forgetting the version drops them (another version keeps its own).
    #[test]
    fn precision_series_follow_the_version_and_go_with_it() {
        let m = Metrics::new();
        let series = |v: &str, p: &str| {
            format!("ferrite_model_precision{{model=\"m\",precision=\"{p}\",version=\"{v}\"}} 1")
        };
        m.set_model_precision("m", 1, &["bf16-amx"]);
        m.set_model_precision("m", 2, &["f32", "q8"]);
        let text = m.encode();
        for (v, p) in [("1", "bf16-amx"), ("2", "f32"), ("2", "q8")] {
            assert!(text.contains(&series(v, p)), "{v} {p}:\n{text}");
        }
        m.set_model_precision("m", 1, &["f32"]);
        let text = m.encode();
        assert!(text.contains(&series("1", "f32")));
        assert!(!text.contains(&series("1", "bf16-amx")));
        m.forget_model_version("m", 2);
        let text = m.encode();
        assert!(!text.contains("version=\"2\""), "{text}");
        assert!(text.contains(&series("1", "f32")));
    }
}

//! The bulk jobs families (`src/jobs`): jobs by state per model, rows written and rows rejected
//! (by reason) per model version, and batches run on the job lane. Labels are `model`, `version`,
//! `reason` and `state` (a job's state, one of five); never a job id or anything from a row.

use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

const MV: &[&str] = &["model", "version"];

/// The states a job's gauge is split by (`jobs::JobState`, lowercase).
pub const JOB_STATES: [&str; 5] = ["queued", "running", "succeeded", "failed", "canceled"];

/// Why a job row was rejected (the `reason` label of `ferrite_job_rows_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The record could not be read as one: not JSON, not UTF-8, over the record size, no text.
    Malformed = 0,
    /// The model's validation refused it, as the online doors would (shape, datatype, rows,
    /// empty text, too many tokens with truncation off).
    Invalid = 1,
    /// The model failed on it.
    Backend = 2,
}

impl RejectReason {
    pub const ALL: [RejectReason; 3] = [
        RejectReason::Malformed,
        RejectReason::Invalid,
        RejectReason::Backend,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Malformed => "malformed",
            RejectReason::Invalid => "invalid",
            RejectReason::Backend => "backend",
        }
    }
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique. This is a bug.");
    c
}

/// The families, registered once per server (`Metrics::new`).
#[derive(Clone)]
pub struct JobsFamilies {
    pub jobs: IntGaugeVec,
    rows: IntCounterVec,
    rejected: IntCounterVec,
    batches: IntCounterVec,
}

impl JobsFamilies {
    pub fn new(r: &Registry) -> JobsFamilies {
        let counter = |n: &str, h: &str, labels: &[&str]| {
            reg(
                r,
                IntCounterVec::new(Opts::new(n, h), labels).expect("static metric. This is a bug."),
            )
        };
        JobsFamilies {
            jobs: reg(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "ferrite_jobs",
                        "Bulk jobs the server knows, by model and state (queued, running, succeeded, failed, canceled)",
                    ),
                    &["model", "state"],
                )
                .expect("static metric. This is a bug."),
            ),
            rows: counter(
                "ferrite_job_rows_total",
                "Bulk job rows written to committed output parts (a part redone after an interruption counts again)",
                MV,
            ),
            rejected: counter(
                "ferrite_job_rows_rejected_total",
                "Bulk job records sent to the rejects file, by reason (malformed, invalid, backend)",
                &["model", "version", "reason"],
            ),
            batches: counter(
                "ferrite_job_batches_total",
                "Batches run on the job lane (bulk job rows) of a model version",
                MV,
            ),
        }
    }

    /// One version's children (created, so exported at 0 from the load on).
    pub fn for_version(&self, model: &str, version: u64) -> JobMetrics {
        let v = version.to_string();
        let rejected = RejectReason::ALL.map(|r| {
            self.rejected
                .with_label_values(&[model, v.as_str(), r.as_str()])
        });
        JobMetrics {
            rows: self.rows.with_label_values(&[model, v.as_str()]),
            rejected,
            batches: self.batches.with_label_values(&[model, v.as_str()]),
        }
    }
}

/// The job children of one model version; cheap to clone.
#[derive(Clone)]
pub struct JobMetrics {
    rows: IntCounter,
    rejected: [IntCounter; 3],
    batches: IntCounter,
}

impl JobMetrics {
    /// A committed part: `rows` written, rejects counted by reason (indexed `reason as usize`).
    pub fn record_part(&self, rows: u64, rejected: [u64; 3]) {
        self.rows.inc_by(rows);
        for (c, n) in self.rejected.iter().zip(rejected) {
            c.inc_by(n);
        }
    }

    /// One batch executed on the job lane.
    pub fn record_batch(&self) {
        self.batches.inc();
    }
}

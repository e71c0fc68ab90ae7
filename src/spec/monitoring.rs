//! `[monitoring]` in a model's `config.toml`: model-quality monitoring of live traffic (drift
//! against the version's `profile.json`, ground-truth feedback and accuracy, prediction log). Off
//! unless `enable = true`. Plain data and its validation; `src/monitor` does the work.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Monitoring {
    pub enable: bool,
    /// Share of live requests whose rows feed the drift window (0 < rate <= 1).
    pub sample_rate: f64,
    /// Rows in the sliding window (kept as 8 blocks: between 7/8 of it and all of it once full).
    pub window: usize,
    /// How often the drift statistics are computed and exported.
    pub period_ms: u64,
    /// A feature drifts when its KS statistic is over this.
    pub ks_threshold: f64,
    /// No statistics before the window holds this many rows.
    pub min_rows: usize,
    /// Per-feature series exported (the features with the largest KS); the summary covers all.
    pub top_features: usize,
    /// Samples waiting for the monitor thread; beyond it samples are dropped and counted.
    pub queue_size: usize,
    /// Feedback joins a prediction up to this long after it (later: counted `late`).
    pub feedback_ttl_secs: u64,
    /// Most prediction ids kept for feedback.
    pub feedback_max_ids: usize,
    /// Labelled rows `ferrite_model_accuracy` is computed over.
    pub accuracy_window: usize,
    /// Prediction log (JSON lines) folder; none = no log.
    pub log_dir: Option<String>,
    /// A log file is rotated past this size or age; at most `log_max_files` are kept.
    pub log_max_bytes: u64,
    pub log_max_age_secs: u64,
    pub log_max_files: usize,
    /// Write the request's inputs and outputs into the log (off: only a hash of the inputs).
    pub log_payloads: bool,
}

impl Default for Monitoring {
    fn default() -> Self {
        Monitoring {
            enable: false,
            sample_rate: 1.0,
            window: 1000,
            period_ms: 10_000,
            ks_threshold: 0.2,
            min_rows: 100,
            top_features: 10,
            queue_size: 4096,
            feedback_ttl_secs: 3600,
            feedback_max_ids: 100_000,
            accuracy_window: 1000,
            log_dir: None,
            log_max_bytes: 64 << 20,
            log_max_age_secs: 3600,
            log_max_files: 8,
            log_payloads: false,
        }
    }
}

impl Monitoring {
    /// (field, message) of the first invalid setting.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |f: &str, m: &str| Err((format!("monitoring.{f}"), m.to_string()));
        if !(self.sample_rate > 0.0 && self.sample_rate <= 1.0) {
            return err("sample_rate", "expected a share in (0, 1]");
        }
        if !(self.ks_threshold > 0.0 && self.ks_threshold <= 1.0) {
            return err("ks_threshold", "expected a value in (0, 1]");
        }
        for (f, v) in [
            ("window", self.window),
            ("min_rows", self.min_rows),
            ("queue_size", self.queue_size),
            ("feedback_max_ids", self.feedback_max_ids),
            ("accuracy_window", self.accuracy_window),
            ("log_max_files", self.log_max_files),
        ] {
            if v == 0 {
                return err(f, "expected at least 1");
            }
        }
        if self.min_rows > self.window {
            return err("min_rows", "expected at most `window`");
        }
        if self.period_ms < 10 {
            return err("period_ms", "expected at least 10");
        }
        if self.feedback_ttl_secs == 0 {
            return err("feedback_ttl_secs", "expected at least 1");
        }
        if self.log_max_bytes < 4096 {
            return err("log_max_bytes", "expected at least 4096");
        }
        Ok(())
    }
}

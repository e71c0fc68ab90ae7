//! The model-quality families (`src/monitor`): drift per feature (capped to the top features by
//! KS) and per version, live accuracy from ground truth, feedback outcomes, dropped monitor samples
//! and prediction-log errors. Gauges are created on their first value: a version without a
//! computed window or without labels exports no drift or accuracy series (never a 0 that reads as
//! "no drift" or "always wrong").

use prometheus::{
    Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

const MV: &[&str] = &["model", "version"];
const MVF: &[&str] = &["model", "version", "feature"];

fn gauges(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("static metric. This is a bug.");
    r.register(Box::new(g.clone()))
        .expect("metric names are unique. This is a bug.");
    g
}

fn counters(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c =
        IntCounterVec::new(Opts::new(name, help), labels).expect("static metric. This is a bug.");
    r.register(Box::new(c.clone()))
        .expect("metric names are unique. This is a bug.");
    c
}

/// Registered once per server.
pub struct MonitorFamilies {
    ks: GaugeVec,
    psi: GaugeVec,
    js: GaugeVec,
    ks_max: GaugeVec,
    psi_max: GaugeVec,
    js_max: GaugeVec,
    over: IntGaugeVec,
    over_ratio: GaugeVec,
    window_rows: IntGaugeVec,
    accuracy: GaugeVec,
    labelled_rows: IntGaugeVec,
    feedback: IntCounterVec,
    dropped: IntCounterVec,
    log_errors: IntCounterVec,
}

impl MonitorFamilies {
    pub fn new(r: &Registry) -> MonitorFamilies {
        let over = IntGaugeVec::new(
            Opts::new(
                "ferrite_drift_features_over_threshold",
                "Features whose KS statistic against the reference profile is over the model's ks_threshold",
            ),
            MV,
        )
        .expect("static metric. This is a bug.");
        r.register(Box::new(over.clone()))
            .expect("metric names are unique. This is a bug.");
        let window_rows = IntGaugeVec::new(
            Opts::new(
                "ferrite_drift_window_rows",
                "Live rows in the drift window the statistics were computed on",
            ),
            MV,
        )
        .expect("static metric. This is a bug.");
        r.register(Box::new(window_rows.clone()))
            .expect("metric names are unique. This is a bug.");
        let labelled_rows = IntGaugeVec::new(
            Opts::new(
                "ferrite_model_accuracy_rows",
                "Labelled rows ferrite_model_accuracy is computed over",
            ),
            MV,
        )
        .expect("static metric. This is a bug.");
        r.register(Box::new(labelled_rows.clone()))
            .expect("metric names are unique. This is a bug.");
        MonitorFamilies {
            ks: gauges(r, "ferrite_drift_ks", "Two-sample Kolmogorov-Smirnov statistic of a feature, live window vs reference profile (top features by KS only)", MVF),
            psi: gauges(r, "ferrite_drift_psi", "Population stability index of a feature over the reference's deciles (top features by KS only)", MVF),
            js: gauges(r, "ferrite_drift_js", "Jensen-Shannon divergence (base 2) of a feature, live window vs reference (top features by KS only)", MVF),
            ks_max: gauges(r, "ferrite_drift_ks_max", "Largest KS statistic over all features of a model version", MV),
            psi_max: gauges(r, "ferrite_drift_psi_max", "Largest PSI over all features of a model version", MV),
            js_max: gauges(r, "ferrite_drift_js_max", "Largest Jensen-Shannon divergence over all features of a model version", MV),
            over,
            over_ratio: gauges(r, "ferrite_drift_features_over_threshold_ratio", "Share of the compared (non-constant) features whose KS is over the threshold", MV),
            window_rows,
            accuracy: gauges(r, "ferrite_model_accuracy", "Accuracy of the model version over the last labelled rows (ground truth posted to /feedback)", MV),
            labelled_rows,
            feedback: counters(r, "ferrite_feedback_total", "Feedback items by outcome (joined, ambiguous, late, unknown, duplicate, invalid)", &["model", "version", "outcome"]),
            dropped: counters(r, "ferrite_monitor_dropped_samples_total", "Live samples the monitor dropped because its queue was full", MV),
            log_errors: counters(r, "ferrite_prediction_log_errors_total", "Prediction log records that could not be written (the request was still served)", MV),
        }
    }

    pub fn for_version(&self, model: &str, version: u64) -> MonitorMetrics {
        let v = version.to_string();
        let l = [model, v.as_str()];
        let feedback = [
            "joined",
            "ambiguous",
            "late",
            "unknown",
            "duplicate",
            "invalid",
        ]
        .map(|o| self.feedback.with_label_values(&[model, &v, o]));
        MonitorMetrics {
            model: model.into(),
            version: v.clone(),
            dropped: self.dropped.with_label_values(&l),
            log_errors: self.log_errors.with_label_values(&l),
            feedback,
            families: Families {
                ks: self.ks.clone(),
                psi: self.psi.clone(),
                js: self.js.clone(),
                ks_max: self.ks_max.clone(),
                psi_max: self.psi_max.clone(),
                js_max: self.js_max.clone(),
                over: self.over.clone(),
                over_ratio: self.over_ratio.clone(),
                window_rows: self.window_rows.clone(),
                accuracy: self.accuracy.clone(),
                labelled_rows: self.labelled_rows.clone(),
            },
        }
    }
}

#[derive(Clone)]
struct Families {
    ks: GaugeVec,
    psi: GaugeVec,
    js: GaugeVec,
    ks_max: GaugeVec,
    psi_max: GaugeVec,
    js_max: GaugeVec,
    over: IntGaugeVec,
    over_ratio: GaugeVec,
    window_rows: IntGaugeVec,
    accuracy: GaugeVec,
    labelled_rows: IntGaugeVec,
}

/// One version's monitor metrics; cheap to clone.
#[derive(Clone)]
pub struct MonitorMetrics {
    model: String,
    version: String,
    pub dropped: IntCounter,
    pub log_errors: IntCounter,
    /// By `monitor::feedback::Outcome` order: joined, ambiguous, late, unknown, duplicate, invalid.
    pub feedback: [IntCounter; 6],
    families: Families,
}

/// The drift of one feature for export.
pub struct FeatureValues<'a> {
    pub feature: &'a str,
    pub ks: f64,
    pub psi: f64,
    pub js: f64,
}

/// A version's summary for export.
pub struct SummaryValues {
    pub ks_max: f64,
    pub psi_max: f64,
    pub js_max: f64,
    pub over: usize,
    pub over_ratio: f64,
    pub window_rows: usize,
}

impl MonitorMetrics {
    fn mv(&self) -> [&str; 2] {
        [self.model.as_str(), self.version.as_str()]
    }

    fn gauge(&self, g: &GaugeVec) -> Gauge {
        g.with_label_values(&self.mv())
    }

    fn int_gauge(&self, g: &IntGaugeVec) -> IntGauge {
        g.with_label_values(&self.mv())
    }

    /// Exports a computed window: the summary, and the per-feature series of `top` (those of
    /// features exported last time and not in `top` now are removed; `previous` is updated).
    pub fn export_drift(
        &self,
        s: &SummaryValues,
        top: &[FeatureValues],
        previous: &mut Vec<String>,
    ) {
        let f = &self.families;
        self.gauge(&f.ks_max).set(s.ks_max);
        self.gauge(&f.psi_max).set(s.psi_max);
        self.gauge(&f.js_max).set(s.js_max);
        self.int_gauge(&f.over).set(s.over as i64);
        self.gauge(&f.over_ratio).set(s.over_ratio);
        self.int_gauge(&f.window_rows).set(s.window_rows as i64);
        for gone in previous
            .iter()
            .filter(|p| !top.iter().any(|t| t.feature == p.as_str()))
        {
            let l = [self.model.as_str(), self.version.as_str(), gone.as_str()];
            for g in [&f.ks, &f.psi, &f.js] {
                let _ = g.remove_label_values(&l);
            }
        }
        previous.clear();
        for t in top {
            let l = [self.model.as_str(), self.version.as_str(), t.feature];
            f.ks.with_label_values(&l).set(t.ks);
            f.psi.with_label_values(&l).set(t.psi);
            f.js.with_label_values(&l).set(t.js);
            previous.push(t.feature.to_string());
        }
    }

    pub fn set_accuracy(&self, accuracy: f64, rows: usize) {
        let f = &self.families;
        self.gauge(&f.accuracy).set(accuracy);
        self.int_gauge(&f.labelled_rows).set(rows as i64);
    }
}

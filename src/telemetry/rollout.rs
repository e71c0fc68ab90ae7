//! The rollout families: routing weights per version, shadow comparisons and outcomes, automatic
//! rollbacks and each version's gate. Registered on the server's registry by the repository.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Agreement buckets: argmax (0 or 1), cosine (near 1) and max abs diff (near 0) share them.
const AGREEMENT_BUCKETS: &[f64] = &[
    1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999, 1.0,
];

#[derive(Clone)]
pub struct RolloutMetrics {
    pub weight: IntGaugeVec,
    pub gate_passed: IntGaugeVec,
    pub shadow_agreement: HistogramVec,
    pub shadow_requests: IntCounterVec,
    pub rollbacks: IntCounterVec,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique. This is a bug.");
    c
}

impl RolloutMetrics {
    pub fn new(r: &Registry) -> RolloutMetrics {
        let gauge = |n: &str, h: &str| {
            reg(
                r,
                IntGaugeVec::new(Opts::new(n, h), &["model", "version"])
                    .expect("static metric. This is a bug."),
            )
        };
        RolloutMetrics {
            weight: gauge(
                "ferrite_routing_weight_percent",
                "Share of the requests that name no version routed to this version, in percent",
            ),
            gate_passed: gauge(
                "ferrite_validation_passed",
                "1 when the version passed its validation gate (or has none), 0 when it failed",
            ),
            shadow_agreement: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "ferrite_shadow_agreement",
                        "Per row, shadow (candidate) output vs the live one: argmax agreement (0/1), cosine, or max abs diff",
                    )
                    .buckets(AGREEMENT_BUCKETS.to_vec()),
                    &["model", "live", "candidate"],
                )
                .expect("static metric. This is a bug."),
            ),
            shadow_requests: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "ferrite_shadow_requests_total",
                        "Shadow copies by outcome: compared, dropped (candidate busy), failed",
                    ),
                    &["model", "candidate", "outcome"],
                )
                .expect("static metric. This is a bug."),
            ),
            rollbacks: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "ferrite_rollbacks_total",
                        "Canary versions taken out of the split by the guard",
                    ),
                    &["model", "version"],
                )
                .expect("static metric. This is a bug."),
            ),
        }
    }
}

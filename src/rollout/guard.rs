//! The canary guard: over a sliding window, a canary whose error rate or p99 latency is worse
//! than the live version's by more than the configured margin is taken out of the split. The
//! decision is a pure function of two windows' counts; the repository's guard task feeds it
//! snapshots of the versions' request counters and latency histograms once a second.

use serde::{Deserialize, Serialize};

/// `[routing.guard]` in a model's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// Sliding window the rates and p99 are measured over [s].
    pub window_secs: u64,
    /// A canary breaches when its error rate exceeds the live version's by more than this
    /// (absolute: 0.05 = five points).
    pub max_error_rate_increase: f64,
    /// A canary breaches when its p99 exceeds the live version's times this.
    pub max_p99_ratio: f64,
    /// Fewer canary requests than this in the window: no decision.
    pub min_requests: u64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            window_secs: 30,
            max_error_rate_increase: 0.05,
            max_p99_ratio: 2.0,
            min_requests: 20,
        }
    }
}

impl GuardConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.window_secs == 0 {
            return Err("window_secs: expected at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.max_error_rate_increase) {
            return Err("max_error_rate_increase: expected 0..=1".into());
        }
        // NaN fails too.
        if self.max_p99_ratio.is_nan() || self.max_p99_ratio < 1.0 {
            return Err("max_p99_ratio: expected at least 1.0".into());
        }
        Ok(())
    }
}

/// Cumulative counters of one version at one instant: successes, server-side failures (the
/// model failed, timed out or was unavailable: not the client's invalid requests) and the
/// request-latency histogram (cumulative counts per upper bound, Prometheus style).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub ok: u64,
    pub errors: u64,
    pub bounds: Vec<f64>,
    pub cumulative: Vec<u64>,
}

/// What happened in a window: the difference of two snapshots.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WindowStats {
    pub requests: u64,
    pub errors: u64,
    /// p99 of successful requests [s], interpolated within the histogram bucket; `None` with no
    /// successes.
    pub p99_s: Option<f64>,
}

impl WindowStats {
    pub fn between(old: &Snapshot, new: &Snapshot) -> WindowStats {
        let ok = new.ok.saturating_sub(old.ok);
        let errors = new.errors.saturating_sub(old.errors);
        let delta: Vec<u64> = new
            .cumulative
            .iter()
            .enumerate()
            .map(|(i, &c)| c.saturating_sub(old.cumulative.get(i).copied().unwrap_or(0)))
            .collect();
        WindowStats {
            requests: ok + errors,
            errors,
            p99_s: quantile(&new.bounds, &delta, ok, 0.99),
        }
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// The `q` quantile of `total` observations from cumulative bucket counts, linear within the
/// bucket (observations past the last bound count at the last bound).
fn quantile(bounds: &[f64], cumulative: &[u64], total: u64, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0);
    let mut prev_count = 0u64;
    let mut prev_bound = 0.0;
    for (&b, &c) in bounds.iter().zip(cumulative) {
        if c as f64 >= rank {
            let inside = (c - prev_count).max(1) as f64;
            let frac = (rank - prev_count as f64) / inside;
            return Some(prev_bound + (b - prev_bound) * frac.clamp(0.0, 1.0));
        }
        prev_count = c;
        prev_bound = b;
    }
    bounds.last().copied()
}

/// The guard's decision about one canary.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Healthy,
    /// Too few canary requests in the window to judge.
    TooFew,
    /// Out of the split, with the reason (figures included).
    Breach(String),
}

pub fn decide(live: &WindowStats, canary: &WindowStats, cfg: &GuardConfig) -> Verdict {
    if canary.requests < cfg.min_requests.max(1) {
        return Verdict::TooFew;
    }
    let (le, ce) = (live.error_rate(), canary.error_rate());
    if ce - le > cfg.max_error_rate_increase {
        return Verdict::Breach(format!(
            "error rate {:.1}% vs live {:.1}% over {} requests (ceiling: +{:.1} points)",
            100.0 * ce,
            100.0 * le,
            canary.requests,
            100.0 * cfg.max_error_rate_increase
        ));
    }
    if let (Some(lp), Some(cp)) = (live.p99_s, canary.p99_s) {
        if cp > lp * cfg.max_p99_ratio {
            return Verdict::Breach(format!(
                "p99 {:.1} ms vs live {:.1} ms (ceiling: {:.2}x)",
                cp * 1e3,
                lp * 1e3,
                cfg.max_p99_ratio
            ));
        }
    }
    Verdict::Healthy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(requests: u64, errors: u64, p99_ms: Option<f64>) -> WindowStats {
        WindowStats {
            requests,
            errors,
            p99_s: p99_ms.map(|m| m / 1e3),
        }
    }

    #[test]
    fn decide_canary_failing_30_percent_breaches() {
        let v = decide(
            &w(900, 0, Some(5.0)),
            &w(100, 30, Some(5.0)),
            &GuardConfig::default(),
        );
        assert!(matches!(v, Verdict::Breach(r) if r.contains("error rate 30.0%")));
    }

    #[test]
    fn decide_few_requests_or_small_increase_is_not_a_breach() {
        let cfg = GuardConfig::default();
        assert_eq!(
            decide(&w(900, 0, None), &w(10, 10, None), &cfg),
            Verdict::TooFew
        );
        assert_eq!(
            decide(&w(900, 9, Some(5.0)), &w(100, 5, Some(6.0)), &cfg),
            Verdict::Healthy
        );
    }

    #[test]
    fn decide_slow_canary_breaches_on_p99() {
        let v = decide(
            &w(900, 0, Some(5.0)),
            &w(100, 0, Some(11.0)),
            &GuardConfig::default(),
        );
        assert!(matches!(v, Verdict::Breach(r) if r.contains("p99")));
    }

    #[test]
    fn window_between_snapshots_interpolates_p99() {
        let bounds = vec![0.001, 0.01, 0.1];
        let old = Snapshot {
            ok: 10,
            errors: 1,
            bounds: bounds.clone(),
            cumulative: vec![10, 10, 10],
        };
        // 100 new successes: 50 under 1 ms, 48 in 1..10 ms, 2 in 10..100 ms.
        let new = Snapshot {
            ok: 110,
            errors: 4,
            bounds,
            cumulative: vec![60, 108, 110],
        };
        let s = WindowStats::between(&old, &new);
        assert_eq!((s.requests, s.errors), (103, 3));
        // rank 99: the first of the two in the last bucket -> halfway through 10..100 ms.
        let p = s.p99_s.unwrap();
        assert!((p - 0.055).abs() < 1e-9, "p99 {p}");
    }
}

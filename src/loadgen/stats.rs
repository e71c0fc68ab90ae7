//! Measurement windows and their statistics: HDR latency histograms (microseconds), error counts
//! by kind, percentiles, and the stability rule that ends a step. Pure: no clocks, no I/O.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency a histogram holds: one hour, in microseconds (larger values are clamped).
const MAX_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds with 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("static histogram bounds. This is a bug.")
}

/// What one measurement window saw. Latency is recorded when a request completes.
#[derive(Clone)]
pub struct Window {
    pub latency: Histogram<u64>,
    /// How late sends were against their scheduled time (open loop only).
    pub send_lag: Histogram<u64>,
    pub ok: u64,
    /// Failed requests by kind: `"503"`, `"connect"`, ...
    pub errors: BTreeMap<String, u64>,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            latency: new_histogram(),
            send_lag: new_histogram(),
            ok: 0,
            errors: BTreeMap::new(),
        }
    }
}

impl Window {
    pub fn record_ok(&mut self, latency: Duration) {
        self.ok += 1;
        self.latency
            .saturating_record((latency.as_micros() as u64).max(1));
    }

    pub fn record_error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }

    pub fn record_send_lag(&mut self, lag: Duration) {
        self.send_lag
            .saturating_record((lag.as_micros() as u64).max(1));
    }

    pub fn merge(&mut self, other: &Window) {
        self.latency
            .add(&other.latency)
            .expect("histograms share bounds. This is a bug.");
        self.send_lag
            .add(&other.send_lag)
            .expect("histograms share bounds. This is a bug.");
        self.ok += other.ok;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Latency percentiles and mean, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50_us: f64,
    pub p90_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub mean_us: f64,
    pub max_us: f64,
}

/// Percentiles of a histogram (HDR: each value is exact to 3 significant digits). Empty: zeros.
pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let q = |q: f64| h.value_at_quantile(q) as f64;
    Percentiles {
        p50_us: q(0.50),
        p90_us: q(0.90),
        p95_us: q(0.95),
        p99_us: q(0.99),
        p999_us: q(0.999),
        mean_us: h.mean(),
        max_us: h.max() as f64,
    }
}

/// One finished window, reduced to what the stability rule and the progress display need.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WindowSummary {
    /// Successful requests per second.
    pub throughput: f64,
    pub p99_us: f64,
    pub ok: u64,
    pub errors: u64,
}

impl WindowSummary {
    pub fn of(w: &Window, elapsed: Duration) -> WindowSummary {
        let secs = elapsed.as_secs_f64().max(1e-9);
        WindowSummary {
            throughput: w.ok as f64 / secs,
            p99_us: percentiles(&w.latency).p99_us,
            ok: w.ok,
            errors: w.error_count(),
        }
    }
}

/// How many of the last windows the stability rule looks at (as perf_analyzer).
pub const STABLE_WINDOWS: usize = 3;

/// perf_analyzer's rule: the last 3 windows are stable when each one's throughput and each one's
/// p99 latency lie within ±`tolerance` (0.10 = 10%) of the mean of the three. A window with no
/// successful request is never stable.
pub fn is_stable(windows: &[WindowSummary], tolerance: f64) -> bool {
    if windows.len() < STABLE_WINDOWS {
        return false;
    }
    let last = &windows[windows.len() - STABLE_WINDOWS..];
    if last.iter().any(|w| w.ok == 0) {
        return false;
    }
    let within = |f: fn(&WindowSummary) -> f64| {
        let mean = last.iter().map(f).sum::<f64>() / STABLE_WINDOWS as f64;
        last.iter().all(|w| (f(w) - mean).abs() <= tolerance * mean)
    };
    within(|w| w.throughput) && within(|w| w.p99_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(throughput: f64, p99_us: f64) -> WindowSummary {
        WindowSummary {
            throughput,
            p99_us,
            ok: 1,
            errors: 0,
        }
    }

    #[test]
    fn is_stable_three_close_windows_true() {
        let ws = [
            w(10.0, 1.0),
            w(100.0, 1000.0),
            w(101.0, 1050.0),
            w(99.0, 980.0),
        ];
        assert!(is_stable(&ws, 0.10));
    }

    #[test]
    fn is_stable_fewer_than_three_windows_false() {
        assert!(!is_stable(&[w(100.0, 1000.0), w(100.0, 1000.0)], 0.10));
    }

    #[test]
    fn is_stable_throughput_outside_tolerance_false() {
        // mean 100, 85 is 15% below it
        assert!(!is_stable(
            &[w(85.0, 1000.0), w(107.0, 1000.0), w(108.0, 1000.0)],
            0.10
        ));
    }

    #[test]
    fn is_stable_p99_outside_tolerance_false() {
        assert!(!is_stable(
            &[w(100.0, 1000.0), w(100.0, 1000.0), w(100.0, 1400.0)],
            0.10
        ));
    }

    #[test]
    fn is_stable_empty_window_false() {
        let mut e = w(0.0, 0.0);
        e.ok = 0;
        assert!(!is_stable(&[e, e, e], 0.10));
    }

    #[test]
    fn percentiles_uniform_1_to_10000_match_nearest_rank() {
        let mut win = Window::default();
        for us in 1..=10_000u64 {
            win.record_ok(Duration::from_micros(us));
        }
        let p = percentiles(&win.latency);
        // nearest rank on 1..=10000: p50 = 5000, p99 = 9900, p99.9 = 9990; HDR keeps 3 digits.
        for (got, want) in [
            (p.p50_us, 5000.0),
            (p.p90_us, 9000.0),
            (p.p95_us, 9500.0),
            (p.p99_us, 9900.0),
            (p.p999_us, 9990.0),
            (p.mean_us, 5000.5),
        ] {
            assert!((got - want).abs() / want < 2e-3, "got {got}, want {want}");
        }
        assert_eq!(win.ok, 10_000);
    }

    #[test]
    fn percentiles_empty_histogram_zero() {
        assert_eq!(percentiles(&new_histogram()), Percentiles::default());
    }

    #[test]
    fn window_merge_adds_counts_and_errors() {
        let mut a = Window::default();
        a.record_ok(Duration::from_millis(1));
        a.record_error("503");
        let mut b = Window::default();
        b.record_ok(Duration::from_millis(3));
        b.record_error("503");
        b.record_error("connect");
        a.merge(&b);
        assert_eq!(a.ok, 2);
        assert_eq!(a.errors["503"], 2);
        assert_eq!(a.error_count(), 3);
        let s = WindowSummary::of(&a, Duration::from_millis(500));
        assert_eq!(s.throughput, 4.0);
    }
}

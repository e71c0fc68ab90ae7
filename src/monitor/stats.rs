//! The reference sketch of one feature and the drift statistics against a live histogram: pure
//! functions over plain data, no threads, no I/O.
//!
//! A reference feature is a compressed empirical CDF: up to `MAX_EDGES + 1` sorted distinct cut
//! points (every distinct value when there are at most `MAX_EDGES + 1`, else the reference's
//! percentiles, `lower` interpolation) with the reference fraction at or below each. Live values are
//! counted into the bins those cut points define (`bin_index`), so a live window is an array of
//! counters: mergeable (windows add), O(log edges) per value.
//!
//! - **KS**: the largest gap between the two CDFs evaluated at the cut points (and just below the
//!   first). Exact when the reference has at most `MAX_EDGES + 1` distinct values (ties included);
//!   otherwise it under-reads the two-sample statistic by at most `ks_error_bound`, the largest
//!   reference mass strictly between two cut points (about 1/`MAX_EDGES`), which the profile stores.
//! - **PSI** over the reference's deciles (bins `(-inf, d1], (d1, d2], ..., (d9, inf)`, ties
//!   merged), with proportions floored at `PSI_EPSILON` so that an empty bin gives a large, finite
//!   value.
//! - **JS**: Jensen–Shannon divergence, base 2 (0..=1), over the fine bins; empty bins contribute 0.

use serde::{Deserialize, Serialize};

/// Most cut points between the minimum and the maximum (the percentiles).
pub const MAX_EDGES: usize = 100;
/// Floor of a bin's proportion in PSI (reference and live).
pub const PSI_EPSILON: f64 = 1e-4;

/// The reference distribution of one feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureProfile {
    pub name: String,
    /// Sorted, distinct cut points; the first is the reference minimum, the last its maximum.
    pub edges: Vec<f64>,
    /// Fraction of the reference at or below each cut point.
    pub cdf: Vec<f64>,
    /// The reference's deciles (a subset of `edges`, ties merged): PSI's bins.
    pub deciles: Vec<f64>,
    /// Largest reference fraction strictly between two consecutive cut points (0: KS is exact).
    pub ks_error_bound: f64,
    /// Reference rows.
    pub n: u64,
}

impl FeatureProfile {
    /// The profile of `values` (sorted in place). `None` for an empty sample.
    pub fn from_values(name: impl Into<String>, values: &mut [f64]) -> Option<FeatureProfile> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        values.sort_unstable_by(f64::total_cmp);
        let mut distinct: Vec<f64> = values.to_vec();
        distinct.dedup();
        let pick = |q_num: usize, q_den: usize| values[q_num * (n - 1) / q_den];
        let edges = if distinct.len() <= MAX_EDGES + 1 {
            distinct
        } else {
            let mut e: Vec<f64> = (0..=MAX_EDGES).map(|i| pick(i, MAX_EDGES)).collect();
            e.dedup();
            e
        };
        let mut deciles: Vec<f64> = (1..10).map(|j| pick(j, 10)).collect();
        deciles.dedup();
        let at_or_below = |x: f64| values.partition_point(|v| *v <= x);
        let below = |x: f64| values.partition_point(|v| *v < x);
        let cdf = edges
            .iter()
            .map(|&e| at_or_below(e) as f64 / n as f64)
            .collect();
        let ks_error_bound = edges
            .windows(2)
            .map(|w| (below(w[1]) - at_or_below(w[0])) as f64 / n as f64)
            .fold(0.0, f64::max);
        Some(FeatureProfile {
            name: name.into(),
            edges,
            cdf,
            deciles,
            ks_error_bound,
            n: n as u64,
        })
    }

    /// Constant in the reference: skipped (reported as such).
    pub fn is_constant(&self) -> bool {
        self.edges.len() <= 1
    }

    /// Live histogram bins of this feature: below the minimum, one per cut point, above the maximum.
    pub fn bins(&self) -> usize {
        self.edges.len() + 2
    }

    /// Checks a profile read from a file: sorted distinct edges, a matching non-decreasing CDF
    /// ending at 1, deciles among the edges.
    pub fn check(&self) -> Result<(), String> {
        let ok = !self.edges.is_empty()
            && self.edges.len() == self.cdf.len()
            && self.edges.windows(2).all(|w| w[0] < w[1])
            && self.cdf.windows(2).all(|w| w[0] <= w[1])
            && self.cdf.last().is_some_and(|c| (c - 1.0).abs() < 1e-9)
            && self.deciles.iter().all(|d| self.edges.contains(d));
        if ok {
            Ok(())
        } else {
            Err(format!("feature '{}': malformed sketch", self.name))
        }
    }
}

/// The live bin of `x`: 0 below the first cut point, `i + 1` for `(edge[i-1], edge[i]]` (the first
/// cut point alone is bin 1), `edges.len() + 1` above the last (NaN too).
pub fn bin_index(edges: &[f64], x: f64) -> usize {
    match edges.first() {
        Some(&first) if x < first => 0,
        _ if x.is_nan() => edges.len() + 1,
        _ => 1 + edges.partition_point(|e| *e < x),
    }
}

/// Drift of one feature.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Drift {
    pub ks: f64,
    pub psi: f64,
    pub js: f64,
}

/// KS, PSI and JS of a live histogram (`counts`, `p.bins()` long) against the reference `p`.
/// `None` when the live histogram is empty or has the wrong length.
pub fn drift(p: &FeatureProfile, counts: &[u64]) -> Option<Drift> {
    let total: u64 = counts.iter().sum();
    if total == 0 || counts.len() != p.bins() {
        return None;
    }
    let n = total as f64;
    // Live CDF at each cut point: counts[0..=i+1].
    let mut live_cdf = Vec::with_capacity(p.edges.len());
    let mut acc = counts[0];
    for c in &counts[1..=p.edges.len()] {
        acc += c;
        live_cdf.push(acc as f64 / n);
    }
    let ks = p
        .cdf
        .iter()
        .zip(&live_cdf)
        .map(|(r, l)| (r - l).abs())
        .fold(counts[0] as f64 / n, f64::max);
    Some(Drift {
        ks,
        psi: psi(p, &live_cdf),
        js: js(p, counts, n),
    })
}

/// PSI over the reference's deciles, from both CDFs at the cut points.
fn psi(p: &FeatureProfile, live_cdf: &[f64]) -> f64 {
    let at = |cdf: &[f64], d: f64| {
        let i = p.edges.partition_point(|e| *e < d);
        cdf.get(i).copied().unwrap_or(1.0)
    };
    let (mut prev_r, mut prev_l) = (0.0, 0.0);
    let mut sum = 0.0;
    let bounds = p
        .deciles
        .iter()
        .map(|&d| (at(&p.cdf, d), at(live_cdf, d)))
        .chain(std::iter::once((1.0, 1.0)));
    for (r, l) in bounds {
        let pr = (r - prev_r).max(PSI_EPSILON);
        let pl = (l - prev_l).max(PSI_EPSILON);
        sum += (pl - pr) * (pl / pr).ln();
        (prev_r, prev_l) = (r, l);
    }
    sum
}

/// Jensen–Shannon divergence (base 2) over the fine bins.
fn js(p: &FeatureProfile, counts: &[u64], n: f64) -> f64 {
    let mut reference = Vec::with_capacity(counts.len());
    reference.push(0.0);
    let mut prev = 0.0;
    for c in &p.cdf {
        reference.push(c - prev);
        prev = *c;
    }
    reference.push(0.0);
    let kl_half = |a: f64, m: f64| if a > 0.0 { a * (a / m).log2() } else { 0.0 };
    let d: f64 = reference
        .iter()
        .zip(counts)
        .map(|(&r, &c)| {
            let l = c as f64 / n;
            let m = (r + l) / 2.0;
            0.5 * (kl_half(r, m) + kl_half(l, m))
        })
        .sum();
    d.clamp(0.0, 1.0)
}

/// Counts of `values` in `p`'s bins.
pub fn histogram(p: &FeatureProfile, values: &[f64]) -> Vec<u64> {
    let mut counts = vec![0; p.bins()];
    for &v in values {
        counts[bin_index(&p.edges, v)] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// The two-sample KS statistic computed directly on sorted samples (ties handled).
    fn ks_exact(a: &[f64], b: &[f64]) -> f64 {
        let (mut a, mut b) = (a.to_vec(), b.to_vec());
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        let mut all: Vec<f64> = a.iter().chain(&b).copied().collect();
        all.sort_by(f64::total_cmp);
        all.iter()
            .map(|&x| {
                let fa = a.partition_point(|v| *v <= x) as f64 / a.len() as f64;
                let fb = b.partition_point(|v| *v <= x) as f64 / b.len() as f64;
                (fa - fb).abs()
            })
            .fold(0.0, f64::max)
    }

    fn normal(rng: &mut impl Rng, n: usize, mean: f64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                // Box–Muller.
                let (u, v): (f64, f64) = (rng.random_range(1e-12..1.0), rng.random());
                mean + (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
            })
            .collect()
    }

    #[test]
    fn ks_on_discrete_reference_is_exact_with_ties() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let reference: Vec<f64> = (0..1000).map(|_| rng.random_range(0..17) as f64).collect();
        let live: Vec<f64> = (0..300)
            .map(|_| (rng.random_range(0..17) as f64 * 0.6).round())
            .collect();
        let p = FeatureProfile::from_values("x", &mut reference.clone()).unwrap();
        assert_eq!(p.ks_error_bound, 0.0);
        let d = drift(&p, &histogram(&p, &live)).unwrap();
        let want = ks_exact(&reference, &live);
        assert!((d.ks - want).abs() < 1e-12, "{} vs {want}", d.ks);
    }

    #[test]
    fn ks_on_continuous_reference_is_within_the_stated_bound() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let reference = normal(&mut rng, 5000, 0.0);
        let p = FeatureProfile::from_values("x", &mut reference.clone()).unwrap();
        assert!(p.ks_error_bound > 0.0 && p.ks_error_bound <= 0.011);
        // Live values outside the reference range land in the end bins.
        for shift in [0.0, 0.3, 1.0, 5.0, -5.0] {
            let live = normal(&mut rng, 777, shift);
            let d = drift(&p, &histogram(&p, &live)).unwrap();
            let want = ks_exact(&reference, &live);
            assert!(
                d.ks <= want + 1e-12 && want - d.ks <= p.ks_error_bound + 1e-12,
                "shift {shift}: sketch {} exact {want} bound {}",
                d.ks,
                p.ks_error_bound
            );
        }
    }

    #[test]
    fn same_distribution_gives_small_values_and_a_shift_large_ones() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let p = FeatureProfile::from_values("x", &mut normal(&mut rng, 4000, 0.0)).unwrap();
        let same = drift(&p, &histogram(&p, &normal(&mut rng, 2000, 0.0))).unwrap();
        let moved = drift(&p, &histogram(&p, &normal(&mut rng, 2000, 1.0))).unwrap();
        assert!(
            same.ks < 0.05 && same.psi < 0.05 && same.js < 0.05,
            "{same:?}"
        );
        assert!(
            moved.ks > 0.3 && moved.psi > 0.5 && moved.js > 0.1,
            "{moved:?}"
        );
        assert_eq!(p.deciles.len(), 9);
    }

    /// PSI and JS computed directly from proportions.
    #[test]
    fn psi_and_js_match_a_direct_computation() {
        let reference = [1.0, 1.0, 2.0, 3.0, 3.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        let live = [0.0, 1.0, 3.0, 3.0, 8.0, 8.0];
        let p = FeatureProfile::from_values("x", &mut reference.to_vec()).unwrap();
        assert_eq!(p.edges, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]);
        // lower deciles of 10 values: indices 0,1,2,...,8 -> values 1,1,2,3,3,3,4,5,6.
        assert_eq!(p.deciles, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let d = drift(&p, &histogram(&p, &live)).unwrap();
        // PSI bins: (-inf,1] (1,2] (2,3] (3,4] (4,5] (5,6] (6,inf)
        let r = [0.2, 0.1, 0.3, 0.1, 0.1, 0.1, 0.1];
        let l = [2.0 / 6.0, 0.0, 2.0 / 6.0, 0.0, 0.0, 0.0, 2.0 / 6.0];
        let want_psi: f64 = r
            .iter()
            .zip(&l)
            .map(|(&r, &l): (&f64, &f64)| {
                let (r, l) = (r.max(PSI_EPSILON), l.max(PSI_EPSILON));
                (l - r) * (l / r).ln()
            })
            .sum();
        assert!((d.psi - want_psi).abs() < 1e-12, "{} vs {want_psi}", d.psi);
        // JS bins: <1, =1, (1,2], ..., (6,7], >7
        let r = [0.0, 0.2, 0.1, 0.3, 0.1, 0.1, 0.1, 0.1, 0.0];
        let l = [
            1.0 / 6.0,
            1.0 / 6.0,
            0.0,
            2.0 / 6.0,
            0.0,
            0.0,
            0.0,
            0.0,
            2.0 / 6.0,
        ];
        let kl = |a: &[f64], m: &[f64]| -> f64 {
            a.iter()
                .zip(m)
                .filter(|(a, _)| **a > 0.0)
                .map(|(a, m)| a * (a / m).log2())
                .sum()
        };
        let m: Vec<f64> = r.iter().zip(&l).map(|(a, b)| (a + b) / 2.0).collect();
        let want_js = 0.5 * kl(&r, &m) + 0.5 * kl(&l, &m);
        assert!((d.js - want_js).abs() < 1e-12, "{} vs {want_js}", d.js);
        assert!((d.ks - ks_exact(&reference, &live)).abs() < 1e-12);
    }

    #[test]
    fn constant_feature_is_reported_constant_and_bins_are_sane() {
        let p = FeatureProfile::from_values("c", &mut [0.0; 50]).unwrap();
        assert!(p.is_constant());
        assert_eq!(bin_index(&p.edges, -1.0), 0);
        assert_eq!(bin_index(&p.edges, 0.0), 1);
        assert_eq!(bin_index(&p.edges, 1.0), 2);
        assert_eq!(bin_index(&p.edges, f64::NAN), 2);
        assert!(p.check().is_ok());
        assert!(FeatureProfile::from_values("e", &mut []).is_none());
        assert_eq!(drift(&p, &[0, 0, 0]), None);
    }
}

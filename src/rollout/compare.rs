//! How a shadow (candidate) output is compared with the live one, per row: argmax agreement for
//! classifiers (1 or 0), cosine similarity for embeddings, max absolute difference otherwise.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareKind {
    Argmax,
    Cosine,
    MaxAbsDiff,
}

impl CompareKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CompareKind::Argmax => "argmax",
            CompareKind::Cosine => "cosine",
            CompareKind::MaxAbsDiff => "max_abs_diff",
        }
    }
}

/// One figure per row of `width` values (rows beyond the shorter of the two are ignored; a width
/// of 0 or unequal lengths give no rows).
pub fn per_row(kind: CompareKind, live: &[f32], candidate: &[f32], width: usize) -> Vec<f64> {
    if width == 0 || live.len() != candidate.len() {
        return Vec::new();
    }
    live.chunks(width)
        .zip(candidate.chunks(width))
        .map(|(a, b)| match kind {
            CompareKind::Argmax => f64::from(u8::from(argmax(a) == argmax(b))),
            CompareKind::Cosine => cosine(a, b),
            CompareKind::MaxAbsDiff => a
                .iter()
                .zip(b)
                .map(|(x, y)| f64::from((x - y).abs()))
                .fold(0.0, f64::max),
        })
        .collect()
}

pub fn argmax(v: &[f32]) -> Option<usize> {
    v.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
}

/// Cosine similarity in f64 (0 when either vector is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa.sqrt() * bb.sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_row_argmax_counts_agreeing_rows() {
        let live = [0.1, 0.9, 0.8, 0.2];
        let cand = [0.2, 0.8, 0.1, 0.9];
        assert_eq!(
            per_row(CompareKind::Argmax, &live, &cand, 2),
            vec![1.0, 0.0]
        );
    }

    #[test]
    fn per_row_cosine_and_diff_of_odd_width() {
        let a = [1.0, 0.0, 0.0];
        let b = [1.0, 1.0, 0.0];
        let c = per_row(CompareKind::Cosine, &a, &b, 3);
        assert!((c[0] - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        assert_eq!(per_row(CompareKind::MaxAbsDiff, &a, &b, 3), vec![1.0]);
        assert!(per_row(CompareKind::Cosine, &a, &b[..2], 3).is_empty());
    }
}

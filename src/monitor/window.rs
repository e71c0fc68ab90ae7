//! The live sliding window of one model version: per feature, counts in the reference's bins, kept
//! as `BLOCKS` mergeable blocks so that the oldest rows leave a block at a time (the window holds
//! between `window - window / BLOCKS` and `window` rows once full), plus the drift table computed
//! from it. Pure: the monitor thread owns it.

use std::collections::VecDeque;

use serde::Serialize;

use super::stats::{bin_index, drift, FeatureProfile};

/// Blocks a window is cut into.
pub const BLOCKS: usize = 8;

struct Block {
    counts: Vec<u32>,
    rows: usize,
}

/// Bin counts of the last rows, per feature.
pub struct Window {
    features: Vec<FeatureProfile>,
    /// Where each feature's bins start in a counts array.
    offsets: Vec<usize>,
    bins: usize,
    total: Vec<u64>,
    rows: usize,
    blocks: VecDeque<Block>,
    block_rows: usize,
}

impl Window {
    /// A window of about `rows` rows over `features` (inputs then outputs).
    pub fn new(features: Vec<FeatureProfile>, rows: usize) -> Window {
        let mut offsets = Vec::with_capacity(features.len());
        let mut bins = 0;
        for f in &features {
            offsets.push(bins);
            bins += f.bins();
        }
        Window {
            features,
            offsets,
            bins,
            total: vec![0; bins],
            rows: 0,
            blocks: VecDeque::with_capacity(BLOCKS + 1),
            block_rows: rows.div_ceil(BLOCKS).max(1),
        }
    }

    pub fn features(&self) -> &[FeatureProfile] {
        &self.features
    }

    /// Rows in the window now.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes the counters take (for the README's memory figure).
    pub fn bytes(&self) -> usize {
        self.bins * (8 + 4 * (BLOCKS + 1))
    }

    /// Adds one row of feature values (one per feature, in order).
    pub fn add_row(&mut self, values: &[f64]) {
        debug_assert_eq!(values.len(), self.features.len());
        if self.blocks.back().is_none_or(|b| b.rows >= self.block_rows) {
            if self.blocks.len() == BLOCKS {
                let old = self
                    .blocks
                    .pop_front()
                    .expect("a full ring has a front. This is a bug.");
                for (t, c) in self.total.iter_mut().zip(&old.counts) {
                    *t -= u64::from(*c);
                }
                self.rows -= old.rows;
                self.blocks.push_back(Block {
                    counts: reuse(old.counts),
                    rows: 0,
                });
            } else {
                self.blocks.push_back(Block {
                    counts: vec![0; self.bins],
                    rows: 0,
                });
            }
        }
        let block = self
            .blocks
            .back_mut()
            .expect("a block was pushed above. This is a bug.");
        for ((f, off), v) in self.features.iter().zip(&self.offsets).zip(values) {
            let i = off + bin_index(&f.edges, *v);
            block.counts[i] += 1;
            self.total[i] += 1;
        }
        block.rows += 1;
        self.rows += 1;
    }

    /// The drift of every feature (`None` for constant ones).
    pub fn drift(&self) -> Vec<Option<super::stats::Drift>> {
        self.features
            .iter()
            .zip(&self.offsets)
            .map(|(f, &off)| {
                if f.is_constant() {
                    return None;
                }
                drift(f, &self.total[off..off + f.bins()])
            })
            .collect()
    }
}

fn reuse(mut v: Vec<u32>) -> Vec<u32> {
    v.iter_mut().for_each(|c| *c = 0);
    v
}

/// One row of the drift table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureDrift {
    pub feature: String,
    /// `input` or `output`.
    pub side: &'static str,
    /// `ok`, `over_threshold`, or `constant` (constant in the reference: skipped).
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ks: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psi: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub js: Option<f64>,
}

/// The per-version summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Summary {
    pub features: usize,
    pub constant: usize,
    pub over_threshold: usize,
    /// `over_threshold` / features compared (not constant).
    pub share_over_threshold: f64,
    pub max_ks: f64,
    pub max_psi: f64,
    pub max_js: f64,
}

/// The drift table of a window against a KS threshold (`inputs` features come first).
pub fn table(w: &Window, inputs: usize, ks_threshold: f64) -> (Vec<FeatureDrift>, Summary) {
    let mut s = Summary {
        features: w.features().len(),
        ..Summary::default()
    };
    let rows = w
        .features()
        .iter()
        .zip(w.drift())
        .enumerate()
        .map(|(i, (f, d))| {
            let side = if i < inputs { "input" } else { "output" };
            let status = match &d {
                None if f.is_constant() => "constant",
                None => "ok",
                Some(d) if d.ks > ks_threshold => "over_threshold",
                Some(_) => "ok",
            };
            if f.is_constant() {
                s.constant += 1;
            }
            if let Some(d) = &d {
                s.max_ks = s.max_ks.max(d.ks);
                s.max_psi = s.max_psi.max(d.psi);
                s.max_js = s.max_js.max(d.js);
                s.over_threshold += usize::from(d.ks > ks_threshold);
            }
            FeatureDrift {
                feature: f.name.clone(),
                side,
                status,
                ks: d.map(|d| d.ks),
                psi: d.map(|d| d.psi),
                js: d.map(|d| d.js),
            }
        })
        .collect();
    let compared = s.features - s.constant;
    s.share_over_threshold = if compared == 0 {
        0.0
    } else {
        s.over_threshold as f64 / compared as f64
    };
    (rows, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Vec<FeatureProfile> {
        let mut a: Vec<f64> = (0..100).map(|i| (i % 10) as f64).collect();
        vec![
            FeatureProfile::from_values("a", &mut a).unwrap(),
            FeatureProfile::from_values("c", &mut [1.0; 10]).unwrap(),
        ]
    }

    #[test]
    fn window_keeps_the_last_blocks_and_forgets_older_rows() {
        let mut w = Window::new(profile(), 80); // blocks of 10 rows
        for i in 0..80 {
            w.add_row(&[(i % 10) as f64, 1.0]);
        }
        assert_eq!(w.rows(), 80);
        let (rows, s) = table(&w, 1, 0.2);
        assert_eq!(rows[0].status, "ok");
        assert_eq!(rows[0].ks, Some(0.0));
        assert_eq!(rows[1].status, "constant");
        assert_eq!((s.constant, s.over_threshold), (1, 0));
        // 80 shifted rows push every unshifted block out (one block is being filled).
        for _ in 0..80 {
            w.add_row(&[100.0, 1.0]);
        }
        assert_eq!(w.rows(), 80);
        let (rows, s) = table(&w, 1, 0.2);
        assert_eq!(rows[0].ks, Some(1.0));
        assert_eq!(rows[0].status, "over_threshold");
        assert_eq!(s.share_over_threshold, 1.0);
        // One more row opens a new block and evicts the oldest.
        w.add_row(&[0.0, 1.0]);
        assert_eq!(w.rows(), 71);
    }
}

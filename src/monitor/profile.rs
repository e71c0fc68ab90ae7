//! A version's reference profile (`profile.json` in the version folder) and the one definition of
//! its features, used both to build the profile (`ferrite profile`) and to read live rows, so the
//! two cannot disagree:
//!
//! - inputs of a tensor model: every element position of each numeric input of fixed shape
//!   (`pixels[0]` .. `pixels[63]`); of a text model: the token count of each text (`tokens`);
//! - outputs of a classifier (a numeric output `[-1, C]`, C >= 2, not an embedding): the predicted
//!   class (`<output>.class`, the argmax); of an embedding model: `count` seeded random projections
//!   of the embedding (`<output>.proj[i]`, entries ±1/sqrt(dim) from SplitMix64, the seed stored).
//!
//! Pure: no files beyond `load`/`save`, no threads.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::stats::FeatureProfile;
use crate::spec::ModelConfig;
use crate::tensor::{Tensor, TensorData};

/// The file name in a version folder.
pub const PROFILE_FILE: &str = "profile.json";
/// Projections of an embedding by default, and their seed.
pub const DEFAULT_PROJECTIONS: usize = 16;
pub const DEFAULT_SEED: u64 = 0x5eed_f3a7_0017;

/// How outputs become features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum OutputFeatures {
    /// The argmax of `output` over its `classes` columns.
    Class {
        output: String,
        classes: usize,
    },
    /// `count` random projections of the `dim`-wide `output`.
    Projection {
        output: String,
        dim: usize,
        count: usize,
        seed: u64,
    },
    None,
}

/// How inputs become features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum InputFeatures {
    /// Element positions of these inputs, in order: (name, elements per row).
    Elements { inputs: Vec<(String, usize)> },
    /// The token count of each text.
    Tokens,
}

/// The reference profile of one model version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub model: String,
    pub version: u64,
    /// Where the reference came from (free text: file and split).
    pub source: String,
    pub rows: u64,
    pub input_features: InputFeatures,
    pub output_features: OutputFeatures,
    pub inputs: Vec<FeatureProfile>,
    pub outputs: Vec<FeatureProfile>,
}

/// Reading or checking a profile failed.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("profile does not match the model: {0}")]
    Mismatch(String),
}

impl Profile {
    /// Reads `dir/profile.json`; `Ok(None)` when there is none.
    pub fn load(dir: &Path) -> Result<Option<Profile>, ProfileError> {
        let path = dir.join(PROFILE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(ProfileError::File {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })
            }
        };
        let p: Profile = serde_json::from_str(&text).map_err(|e| ProfileError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        for f in p.inputs.iter().chain(&p.outputs) {
            f.check().map_err(|message| ProfileError::File {
                path: path.display().to_string(),
                message,
            })?;
        }
        Ok(Some(p))
    }

    /// Checks the profile's feature layout against what `config` (and whether it takes text)
    /// gives.
    pub fn check_against(&self, config: &ModelConfig, text: bool) -> Result<(), ProfileError> {
        let want = layout(config, text, self.projection_seed());
        let mismatch = |m: String| Err(ProfileError::Mismatch(m));
        if want.0 != self.input_features || want.1 != self.output_features {
            return mismatch(format!(
                "expected inputs {:?} and outputs {:?}, the profile has {:?} and {:?}",
                want.0, want.1, self.input_features, self.output_features
            ));
        }
        if self.inputs.len() != want.0.count() || self.outputs.len() != want.1.count() {
            return mismatch(format!(
                "expected {} input and {} output features, the profile has {} and {}",
                want.0.count(),
                want.1.count(),
                self.inputs.len(),
                self.outputs.len()
            ));
        }
        Ok(())
    }

    fn projection_seed(&self) -> (usize, u64) {
        match self.output_features {
            OutputFeatures::Projection { count, seed, .. } => (count, seed),
            _ => (DEFAULT_PROJECTIONS, DEFAULT_SEED),
        }
    }

    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join(PROFILE_FILE), text + "\n")
    }
}

impl InputFeatures {
    pub fn count(&self) -> usize {
        match self {
            InputFeatures::Elements { inputs } => inputs.iter().map(|(_, n)| n).sum(),
            InputFeatures::Tokens => 1,
        }
    }

    pub fn names(&self) -> Vec<String> {
        match self {
            InputFeatures::Elements { inputs } => inputs
                .iter()
                .flat_map(|(name, n)| (0..*n).map(move |i| format!("{name}[{i}]")))
                .collect(),
            InputFeatures::Tokens => vec!["tokens".into()],
        }
    }

    /// Appends the feature values of each of `rows` rows of `inputs` (row-major) to `out`.
    /// Inputs not named (or not numeric) are ignored; a missing one gives nothing.
    pub fn extract(&self, inputs: &[Tensor], rows: usize, out: &mut Vec<f64>) -> bool {
        let InputFeatures::Elements { inputs: names } = self else {
            return false;
        };
        let mut cols: Vec<(&TensorData, usize)> = Vec::with_capacity(names.len());
        for (name, n) in names {
            match inputs.iter().find(|t| &t.name == name) {
                Some(t) if t.data.len() == rows * n => cols.push((&t.data, *n)),
                _ => return false,
            }
        }
        for r in 0..rows {
            for (data, n) in &cols {
                for i in r * n..(r + 1) * n {
                    out.push(value_at(data, i));
                }
            }
        }
        true
    }
}

/// One element as f64 (NaN for BYTES).
fn value_at(d: &TensorData, i: usize) -> f64 {
    match d {
        TensorData::Bool(v) => f64::from(u8::from(v[i])),
        TensorData::U8(v) => f64::from(v[i]),
        TensorData::U16(v) => f64::from(v[i]),
        TensorData::U32(v) => f64::from(v[i]),
        TensorData::U64(v) => v[i] as f64,
        TensorData::I8(v) => f64::from(v[i]),
        TensorData::I16(v) => f64::from(v[i]),
        TensorData::I32(v) => f64::from(v[i]),
        TensorData::I64(v) => v[i] as f64,
        TensorData::F16(v) => f64::from(v[i]),
        TensorData::BF16(v) => f64::from(v[i]),
        TensorData::F32(v) => f64::from(v[i]),
        TensorData::F64(v) => v[i],
        TensorData::Bytes(_) => f64::NAN,
    }
}

impl OutputFeatures {
    pub fn count(&self) -> usize {
        match self {
            OutputFeatures::Class { .. } => 1,
            OutputFeatures::Projection { count, .. } => *count,
            OutputFeatures::None => 0,
        }
    }

    pub fn names(&self) -> Vec<String> {
        match self {
            OutputFeatures::Class { output, .. } => vec![format!("{output}.class")],
            OutputFeatures::Projection { output, count, .. } => {
                (0..*count).map(|i| format!("{output}.proj[{i}]")).collect()
            }
            OutputFeatures::None => Vec::new(),
        }
    }

    /// The output tensor these features read.
    pub fn output(&self) -> Option<&str> {
        match self {
            OutputFeatures::Class { output, .. } | OutputFeatures::Projection { output, .. } => {
                Some(output)
            }
            OutputFeatures::None => None,
        }
    }

    /// Width of one row of the output read.
    pub fn width(&self) -> usize {
        match self {
            OutputFeatures::Class { classes, .. } => *classes,
            OutputFeatures::Projection { dim, .. } => *dim,
            OutputFeatures::None => 0,
        }
    }
}

/// The predicted class of one output row (the first of equal maxima).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

/// SplitMix64: a fixed, portable generator (the projections must not change with a crate version).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `count` projection vectors of `dim` entries ±1/sqrt(dim), row-major.
pub fn projections(dim: usize, count: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let scale = 1.0 / (dim.max(1) as f32).sqrt();
    let mut out = Vec::with_capacity(dim * count);
    while out.len() < dim * count {
        let bits = splitmix64(&mut s);
        for b in 0..64 {
            if out.len() == dim * count {
                break;
            }
            out.push(if bits >> b & 1 == 1 { scale } else { -scale });
        }
    }
    out
}

/// Reads output rows into feature values (row-major).
pub struct OutputReader {
    pub features: OutputFeatures,
    projection: Vec<f32>,
}

impl OutputReader {
    pub fn new(features: OutputFeatures) -> OutputReader {
        let projection = match &features {
            OutputFeatures::Projection {
                dim, count, seed, ..
            } => projections(*dim, *count, *seed),
            _ => Vec::new(),
        };
        OutputReader {
            features,
            projection,
        }
    }

    /// Appends the feature values of each row of `flat` (rows of `width()` values) to `out`.
    pub fn extract(&self, flat: &[f32], out: &mut Vec<f64>) {
        let w = self.features.width();
        if w == 0 {
            return;
        }
        for row in flat.chunks_exact(w) {
            match &self.features {
                OutputFeatures::Class { .. } => out.push(argmax(row) as f64),
                OutputFeatures::Projection { .. } => {
                    for p in self.projection.chunks_exact(w) {
                        let dot: f32 = p.iter().zip(row).map(|(a, b)| a * b).sum();
                        out.push(f64::from(dot));
                    }
                }
                OutputFeatures::None => {}
            }
        }
    }
}

/// The feature layout `config` gives (`projection`: count and seed of an embedding's projections).
pub fn layout(
    config: &ModelConfig,
    text: bool,
    projection: (usize, u64),
) -> (InputFeatures, OutputFeatures) {
    let inputs = if text {
        InputFeatures::Tokens
    } else {
        InputFeatures::Elements {
            inputs: config
                .inputs
                .iter()
                .filter(|s| !matches!(s.datatype, crate::tensor::DataType::Bytes))
                .filter_map(|s| {
                    let dims = if config.max_batch_size > 0 {
                        &s.dims[1..]
                    } else {
                        &s.dims[..]
                    };
                    let fixed = dims.iter().all(|&d| d > 0);
                    fixed.then(|| (s.name.clone(), dims.iter().product::<i64>() as usize))
                })
                .collect(),
        }
    };
    let outputs = match config.outputs.first() {
        Some(o) if o.datatype == crate::tensor::DataType::F32 => {
            let dims = if config.max_batch_size > 0 {
                &o.dims[1..]
            } else {
                &o.dims[..]
            };
            match dims {
                [d] if *d > 0 && text => OutputFeatures::Projection {
                    output: o.name.clone(),
                    dim: *d as usize,
                    count: projection.0,
                    seed: projection.1,
                },
                [c] if *c >= 2 => OutputFeatures::Class {
                    output: o.name.clone(),
                    classes: *c as usize,
                },
                _ => OutputFeatures::None,
            }
        }
        _ => OutputFeatures::None,
    };
    (inputs, outputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projections_are_fixed_by_the_seed() {
        let a = projections(384, 16, DEFAULT_SEED);
        assert_eq!(a, projections(384, 16, DEFAULT_SEED));
        assert_ne!(a, projections(384, 16, DEFAULT_SEED + 1));
        assert_eq!(a.len(), 384 * 16);
        let s = 1.0 / 384f32.sqrt();
        assert!(a.iter().all(|v| *v == s || *v == -s));
        // About half positive.
        let pos = a.iter().filter(|v| **v > 0.0).count();
        assert!((2800..3350).contains(&pos), "{pos}");
    }

    #[test]
    fn elements_extract_row_major_features() {
        let f = InputFeatures::Elements {
            inputs: vec![("a".into(), 2), ("b".into(), 1)],
        };
        let t = [
            Tensor::new("b", vec![2, 1], TensorData::I64(vec![7, 8])),
            Tensor::new("a", vec![2, 2], TensorData::F32(vec![1.0, 2.0, 3.0, 4.0])),
        ];
        let mut out = Vec::new();
        assert!(f.extract(&t, 2, &mut out));
        assert_eq!(out, vec![1.0, 2.0, 7.0, 3.0, 4.0, 8.0]);
        assert_eq!(f.names(), vec!["a[0]", "a[1]", "b[0]"]);
        assert!(!f.extract(&t[..1], 2, &mut out));
    }

    #[test]
    fn class_reader_takes_the_argmax() {
        let r = OutputReader::new(OutputFeatures::Class {
            output: "p".into(),
            classes: 3,
        });
        let mut out = Vec::new();
        r.extract(&[0.1, 0.7, 0.2, 0.5, 0.2, 0.3], &mut out);
        assert_eq!(out, vec![1.0, 0.0]);
    }
}

//! Quantized weight formats and the one `Linear` / `Embedding` type every architecture uses.
//!
//! Formats (symmetric, no zero point):
//! - `q8`: int8 per output channel (one f32 scale per row of the [out, in] weight), stored as
//!   `<name>.q8` (U8 holding the i8 bit patterns) + `<name>.q8_scale` (F32 [out]).
//! - `q4`: 4-bit in groups of 16 along the input dimension (one f32 scale per group, chosen to
//!   minimise the group's squared error), two values per byte (low nibble first, value + 8), stored
//!   as `<name>.q4` (U8 [out, in/2]) + `<name>.q4_scale` (F32 [out, in/16]). Embedding tables are
//!   kept at 8 bits in a q4 conversion. (Groups of 32 measured mean cosine 0.967 on MiniLM, 16: 0.975.)
//!
//! No HTTP, no queues: pure tensors.

pub mod convert;
mod linear;

pub use linear::{Embedding, Linear, WeightOptions};

/// A quantization format (declared in the model spec, where configs name it).
pub use crate::spec::QuantFormat as Format;

use crate::ops::Bf16Kernel;
use crate::spec::{Architecture, ModelConfig, Precision};

/// What a version's linear layers run in on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    F32,
    /// bf16 weights and activations, f32 sums (`ops::bf16_matmul`), CPU only.
    Bf16(Bf16Kernel),
    Q8,
    Q4,
}

impl Path {
    /// "f32", "bf16-amx", "bf16-avx512", "bf16-portable", "q8" or "q4".
    pub fn as_str(self) -> &'static str {
        match self {
            Path::F32 => "f32",
            Path::Bf16(Bf16Kernel::Amx) => "bf16-amx",
            Path::Bf16(Bf16Kernel::Avx512) => "bf16-avx512",
            Path::Bf16(Bf16Kernel::Portable) => "bf16-portable",
            Path::Q8 => "q8",
            Path::Q4 => "q4",
        }
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The path a version's config asks for on a device (weights stored quantized still load as
/// stored; `Linear::path` says what a layer actually runs):
/// - `quantization = "q8" | "q4"` or `precision = "q8"`: that format;
/// - `precision = "f32"`: f32;
/// - `precision = "bf16"`: bf16 on the CPU with the fastest kernel it runs (the portable one on a
///   CPU without bf16 instructions); GPU instances run f32;
/// - `precision = "auto"` (the default): bf16 on a CPU with bf16 instructions for `bert` (its
///   embeddings are held to cosine 0.999 against sentence-transformers in bf16 too, see
///   tests/embeddings.rs), f32 otherwise (`mlp` is a few small layers with nothing to gain, and
///   its outputs are compared with f32 references).
pub fn resolve(config: &ModelConfig, on_cpu: bool) -> Path {
    resolve_parts(
        config.quantization,
        config.precision,
        config.architecture,
        on_cpu,
    )
}

/// `resolve` from the config's fields.
pub fn resolve_parts(
    quantization: Option<Format>,
    precision: Precision,
    architecture: Architecture,
    on_cpu: bool,
) -> Path {
    match (quantization, precision) {
        (Some(Format::Q4), _) => Path::Q4,
        (Some(Format::Q8), _) | (None, Precision::Q8) => Path::Q8,
        (None, Precision::F32) => Path::F32,
        (None, Precision::Bf16) if on_cpu => Path::Bf16(Bf16Kernel::detect()),
        (None, Precision::Auto)
            if on_cpu && architecture == Architecture::Bert && Bf16Kernel::hardware() =>
        {
            Path::Bf16(Bf16Kernel::detect())
        }
        (None, _) => Path::F32,
    }
}

/// Group size of the 4-bit format along the input dimension.
pub const Q4_GROUP: usize = 16;

/// The scale for one 4-bit group that minimises its squared error, searched around amax / 7
/// (levels -8..=7): plain amax / 7 wastes the -8 level and over-weights the outlier.
fn best_q4_scale(group: &[f32]) -> f32 {
    let amax = group.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 {
        return 1.0;
    }
    let sse = |s: f32| -> f32 {
        group
            .iter()
            .map(|&v| {
                let q = (v / s).round().clamp(-8.0, 7.0);
                (v - q * s) * (v - q * s)
            })
            .sum()
    };
    (0..=16)
        .map(|k| amax / (6.0 + 0.25 * k as f32))
        .min_by(|a, b| sse(*a).total_cmp(&sse(*b)))
        .unwrap_or(amax / 7.0)
}

/// A quantized [out, in] matrix kept on the host.
#[derive(Debug, Clone, PartialEq)]
pub enum QMatrix {
    Q8 {
        q: Vec<i8>,
        scale: Vec<f32>,
        rows: usize,
        cols: usize,
    },
    Q4 {
        q: Vec<u8>,
        scale: Vec<f32>,
        rows: usize,
        cols: usize,
    },
}

impl QMatrix {
    pub fn quantize(
        w: &[f32],
        rows: usize,
        cols: usize,
        format: Format,
    ) -> Result<QMatrix, String> {
        if w.len() != rows * cols {
            return Err(format!("{} values for a {rows} x {cols} matrix", w.len()));
        }
        match format {
            Format::Q8 => {
                let mut q = Vec::with_capacity(w.len());
                let mut scale = Vec::with_capacity(rows);
                for row in w.chunks_exact(cols) {
                    let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
                    scale.push(s);
                    q.extend(
                        row.iter()
                            .map(|v| (v / s).round().clamp(-127.0, 127.0) as i8),
                    );
                }
                Ok(QMatrix::Q8 {
                    q,
                    scale,
                    rows,
                    cols,
                })
            }
            Format::Q4 => {
                if !cols.is_multiple_of(Q4_GROUP) {
                    return Err(format!(
                        "q4 needs the input dimension ({cols}) to be a multiple of {Q4_GROUP}"
                    ));
                }
                let mut q = Vec::with_capacity(w.len() / 2);
                let mut scale = Vec::with_capacity(w.len() / Q4_GROUP);
                for group in w.chunks_exact(Q4_GROUP) {
                    let s = best_q4_scale(group);
                    scale.push(s);
                    let nib = |v: f32| ((v / s).round().clamp(-8.0, 7.0) as i8 + 8) as u8;
                    q.extend(group.chunks_exact(2).map(|p| nib(p[0]) | (nib(p[1]) << 4)));
                }
                Ok(QMatrix::Q4 {
                    q,
                    scale,
                    rows,
                    cols,
                })
            }
        }
    }

    pub fn rows(&self) -> usize {
        match self {
            QMatrix::Q8 { rows, .. } | QMatrix::Q4 { rows, .. } => *rows,
        }
    }

    pub fn cols(&self) -> usize {
        match self {
            QMatrix::Q8 { cols, .. } | QMatrix::Q4 { cols, .. } => *cols,
        }
    }

    /// Dequantizes row `r` into `out` (length `cols`).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        match self {
            QMatrix::Q8 { q, scale, cols, .. } => {
                let s = scale[r];
                out.iter_mut()
                    .zip(&q[r * cols..(r + 1) * cols])
                    .for_each(|(o, &v)| *o = v as f32 * s);
            }
            QMatrix::Q4 { q, scale, cols, .. } => {
                let bytes = &q[r * cols / 2..(r + 1) * cols / 2];
                let scales = &scale[r * cols / Q4_GROUP..(r + 1) * cols / Q4_GROUP];
                for (g, (o, b)) in out
                    .chunks_exact_mut(Q4_GROUP)
                    .zip(bytes.chunks_exact(Q4_GROUP / 2))
                    .enumerate()
                {
                    let s = scales[g];
                    for (pair, &byte) in o.chunks_exact_mut(2).zip(b) {
                        pair[0] = ((byte & 0x0f) as i8 - 8) as f32 * s;
                        pair[1] = ((byte >> 4) as i8 - 8) as f32 * s;
                    }
                }
            }
        }
    }

    /// The whole matrix in f32, transposed to [cols, rows] (the layout a `x @ W^T` matmul wants).
    pub fn dequantize_transposed(&self) -> Vec<f32> {
        let (rows, cols) = (self.rows(), self.cols());
        let mut row = vec![0f32; cols];
        let mut out = vec![0f32; rows * cols];
        for r in 0..rows {
            self.dequantize_row(r, &mut row);
            for (c, &v) in row.iter().enumerate() {
                out[c * rows + r] = v;
            }
        }
        out
    }

    /// The whole matrix in f32, row-major [rows, cols] (sequential writes; a matmul can take its
    /// transpose as a strided view).
    pub fn dequantize(&self) -> Vec<f32> {
        let cols = self.cols();
        let mut out = vec![0f32; self.rows() * cols];
        out.chunks_exact_mut(cols)
            .enumerate()
            .for_each(|(r, o)| self.dequantize_row(r, o));
        out
    }

    /// Bytes the quantized data takes (values + scales).
    pub fn size_bytes(&self) -> usize {
        match self {
            QMatrix::Q8 { q, scale, .. } => q.len() + 4 * scale.len(),
            QMatrix::Q4 { q, scale, .. } => q.len() + 4 * scale.len(),
        }
    }
}

/// Whether the weight `name` (with or without `.weight`) belongs to one of `layers`.
pub fn is_float_layer(name: &str, layers: &[String]) -> bool {
    let name = name.strip_suffix(".weight").unwrap_or(name);
    layers
        .iter()
        .any(|l| !l.is_empty() && (name == l || name.ends_with(&format!(".{l}"))))
}

#[cfg(test)]
mod tests {

    #[test]
    fn float_layers_match_whole_trailing_name_parts() {
        let layers = vec!["attention.self.value".to_string(), "dense".to_string()];
        for (name, want) in [
            ("bert.encoder.layer.0.attention.self.value.weight", true),
            ("encoder.layer.3.attention.self.value", true),
            ("attention.self.value", true),
            ("encoder.layer.0.attention.self.value_x.weight", false),
            ("encoder.layer.0.attention.self.query.weight", false),
            ("encoder.layer.0.output.dense.weight", true),
            ("encoder.layer.0.output.nodense.weight", false),
        ] {
            assert_eq!(is_float_layer(name, &layers), want, "{name}");
        }
        assert!(
            !is_float_layer("a.weight", &[String::new()]),
            "an empty entry matches nothing"
        );
    }

    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(rows: usize, cols: usize) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        (0..rows * cols)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect()
    }

    fn max_err(w: &[f32], q: &QMatrix) -> f32 {
        let (rows, cols) = (q.rows(), q.cols());
        let mut row = vec![0f32; cols];
        let mut err = 0f32;
        for r in 0..rows {
            q.dequantize_row(r, &mut row);
            for c in 0..cols {
                err = err.max((row[c] - w[r * cols + c]).abs());
            }
        }
        err
    }

    #[test]
    fn q8_round_trip_error_is_within_half_a_step() {
        let w = random(33, 96);
        let q = QMatrix::quantize(&w, 33, 96, Format::Q8).unwrap();
        // |w| <= 1 so the step is <= 1/127.
        assert!(max_err(&w, &q) <= 0.5 / 127.0 + 1e-6);
        assert_eq!(q.size_bytes(), 33 * 96 + 33 * 4);
    }

    #[test]
    fn q4_round_trip_error_is_within_half_a_step() {
        let w = random(31, 64);
        let q = QMatrix::quantize(&w, 31, 64, Format::Q4).unwrap();
        // The chosen scale is at most amax / 6 (clipping at 7 levels is allowed when it lowers the
        // squared error), so every error stays within one step.
        assert!(max_err(&w, &q) <= 1.0 / 6.0 + 1e-6);
        assert_eq!(q.size_bytes(), 31 * 32 + 31 * (64 / Q4_GROUP) * 4);
    }

    #[test]
    fn q4_needs_whole_groups() {
        assert!(QMatrix::quantize(&random(2, 33), 2, 33, Format::Q4).is_err());
    }

    #[test]
    fn dequantize_transposed_matches_rows() {
        let w = random(5, 32);
        let q = QMatrix::quantize(&w, 5, 32, Format::Q8).unwrap();
        let t = q.dequantize_transposed();
        let mut row = vec![0f32; 32];
        q.dequantize_row(3, &mut row);
        for c in 0..32 {
            assert_eq!(t[c * 5 + 3], row[c]);
        }
    }
}

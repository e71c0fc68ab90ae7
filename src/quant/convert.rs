//! Offline conversion: quantizes the 2-D `*.weight` matrices of a safetensors file (linear layers and
//! embedding tables); 1-D tensors (biases, LayerNorm, normalisation) stay as they are.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Result, Tensor};

use super::{is_float_layer, Format, QMatrix, Q4_GROUP};

/// What a conversion did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Stats {
    pub quantized: usize,
    pub kept: usize,
    pub bytes_before: usize,
    pub bytes_after: usize,
}

/// Quantizes every eligible tensor of `map` but those of `float_layers` (`is_float_layer`), which
/// stay as they are.
pub fn quantize_map(
    map: HashMap<String, Tensor>,
    format: Format,
    float_layers: &[String],
) -> Result<(HashMap<String, Tensor>, Stats)> {
    let mut out = HashMap::new();
    let mut stats = Stats::default();
    for (name, t) in map {
        let bytes = t.elem_count() * t.dtype().size_in_bytes();
        stats.bytes_before += bytes;
        let eligible = t.rank() == 2
            && name.ends_with(".weight")
            && t.dtype().is_float()
            && (format == Format::Q8 || t.dim(1)? % Q4_GROUP == 0)
            && !is_float_layer(&name, float_layers);
        if !eligible {
            stats.kept += 1;
            stats.bytes_after += bytes;
            out.insert(name, t);
            continue;
        }
        let (rows, cols) = t.dims2()?;
        let values: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        // Lookup tables feed every token straight into the network: 4 bits there cost far more
        // accuracy than in the linear layers, so they stay at 8 bits (as llama.cpp's mixes do).
        let format = if name.contains("embeddings") {
            Format::Q8
        } else {
            format
        };
        let q = QMatrix::quantize(&values, rows, cols, format).map_err(candle_core::Error::Msg)?;
        stats.quantized += 1;
        stats.bytes_after += q.size_bytes();
        let key = format!("{name}.{}", format.suffix());
        let (data, scale) = match q {
            QMatrix::Q8 { q, scale, .. } => (
                Tensor::from_vec(
                    q.into_iter().map(|v| v as u8).collect::<Vec<u8>>(),
                    (rows, cols),
                    &Device::Cpu,
                )?,
                Tensor::from_vec(scale, rows, &Device::Cpu)?,
            ),
            QMatrix::Q4 { q, scale, .. } => (
                Tensor::from_vec(q, (rows, cols / 2), &Device::Cpu)?,
                Tensor::from_vec(scale, (rows, cols / Q4_GROUP), &Device::Cpu)?,
            ),
        };
        out.insert(format!("{key}_scale"), scale);
        out.insert(key, data);
    }
    Ok((out, stats))
}

/// Reads `src`, quantizes it, writes `dst`.
pub fn quantize_file(
    src: &Path,
    dst: &Path,
    format: Format,
    float_layers: &[String],
) -> Result<Stats> {
    let map = candle_core::safetensors::load(src, &Device::Cpu)?;
    let (out, stats) = quantize_map(map, format, float_layers)?;
    candle_core::safetensors::save(&out, dst)?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_map_converts_matrices_and_keeps_vectors() {
        let map = HashMap::from([
            (
                "a.weight".to_string(),
                Tensor::randn(0f32, 1.0, (4, 64), &Device::Cpu).unwrap(),
            ),
            (
                "a.bias".to_string(),
                Tensor::randn(0f32, 1.0, 4, &Device::Cpu).unwrap(),
            ),
            (
                "odd.weight".to_string(),
                Tensor::randn(0f32, 1.0, (4, 33), &Device::Cpu).unwrap(),
            ),
        ]);
        let (q4, s) = quantize_map(map.clone(), Format::Q4, &[]).unwrap();
        assert_eq!((s.quantized, s.kept), (1, 2), "33 columns cannot be q4");
        assert_eq!(q4["a.weight.q4"].dims(), &[4, 32]);
        assert_eq!(q4["a.weight.q4_scale"].dims(), &[4, 64 / Q4_GROUP]);
        let (q8, s) = quantize_map(map.clone(), Format::Q8, &[]).unwrap();
        assert_eq!((s.quantized, s.kept), (2, 1));
        assert_eq!(q8["odd.weight.q8"].dtype(), DType::U8);
        assert!(s.bytes_after < s.bytes_before);
        // A float layer stays as it is, by its name's last parts only.
        let (q8, s) = quantize_map(map, Format::Q8, &["odd".into(), "a.bias".into()]).unwrap();
        assert_eq!((s.quantized, s.kept), (1, 2));
        assert_eq!(q8["odd.weight"].dtype(), DType::F32);
        assert_eq!(q8["a.weight.q8"].dtype(), DType::U8);
    }
}

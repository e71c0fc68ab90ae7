//! `ferrite quantize`: writes a quantized copy of a model version as a new version folder, then
//! measures it against the source on the model's own reference data (digits: the held-out split's
//! accuracy; BERT: cosine to the reference embeddings) and records both in `quantization.json`.
//! A composition root like `server.rs` (models, tokenizer, conversion), so errors are `anyhow`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::Device;
use serde_json::{json, Value};

use crate::model::{self, LoadOptions, StageTimings};
use crate::preprocess;
use crate::quant::{convert, Format};
use crate::repository::present_versions;
use crate::spec::ModelConfig;
use crate::tensor::{Tensor, TensorData};

#[derive(Debug, clap::Args)]
pub struct QuantizeArgs {
    /// Model name (a folder of the repository)
    pub model: String,
    /// Source version
    #[arg(long)]
    pub version: u64,
    /// Target format
    #[arg(long = "to", value_enum)]
    pub format: Format,
    #[arg(long, env = "FERRITE_MODEL_REPOSITORY", default_value = crate::config::DEFAULT_MODEL_REPOSITORY)]
    pub model_repository: PathBuf,
    /// Version number to write [default: the highest present + 1]
    #[arg(long)]
    pub output_version: Option<u64>,
    /// Reference embeddings for text models (JSON with `sentences` and `embeddings`); the default is
    /// the repository's MiniLM fixture, relative to the working directory (the checkout's root)
    #[arg(long, default_value = "tests/fixtures/minilm-reference.json")]
    pub reference: PathBuf,
}

/// One measurement of source and quantized model.
struct Quality {
    metric: &'static str,
    source: f64,
    quantized: f64,
    /// Worst case where it matters (min cosine).
    quantized_min: Option<f64>,
}

pub fn run(a: &QuantizeArgs) -> anyhow::Result<()> {
    let dir = a.model_repository.join(&a.model);
    let mut cfg = ModelConfig::load(&dir)?;
    cfg.quantization = None;
    let src = dir.join(a.version.to_string());
    if !src.join("model.safetensors").is_file() {
        bail!("{} has no model.safetensors", src.display());
    }
    let out_version = a
        .output_version
        .unwrap_or_else(|| present_versions(&dir).into_iter().max().unwrap_or(0) + 1);
    let dst = dir.join(out_version.to_string());
    if dst.exists() {
        bail!("{} already exists", dst.display());
    }
    std::fs::create_dir_all(&dst)?;
    let result = write_version(a, &cfg, &dir, &src, &dst, out_version);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&dst);
    }
    result
}

fn write_version(
    a: &QuantizeArgs,
    cfg: &ModelConfig,
    dir: &Path,
    src: &Path,
    dst: &Path,
    out_version: u64,
) -> anyhow::Result<()> {
    // Layers kept in floating point: q8 only (q4 is for memory, where they would cost most).
    let float_layers = match a.format {
        Format::Q8 => model::float_layers(cfg.architecture, cfg.float_layers.as_deref()),
        _ => Vec::new(),
    };
    let stats = convert::quantize_file(
        &src.join("model.safetensors"),
        &dst.join("model.safetensors"),
        a.format,
        &float_layers,
    )
    .with_context(|| format!("quantizing {}", src.display()))?;
    for entry in std::fs::read_dir(src)? {
        let p = entry?.path();
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if p.is_file() && name != "model.safetensors" && name != "quantization.json" {
            std::fs::copy(&p, dst.join(&name))?;
        }
    }
    let q = evaluate(cfg, dir, src, dst, &a.reference)?;
    let report = json!({
        "source_version": a.version,
        "format": a.format,
        "tensors_quantized": stats.quantized,
        "tensors_kept": stats.kept,
        // Linear layers left in floating point (bf16 where the CPU runs it, else f32); every
        // other 2-D weight is in `format` (embedding tables at least q8).
        "float_layers": float_layers,
        "weight_bytes_source": stats.bytes_before,
        "weight_bytes_quantized": stats.bytes_after,
        "metric": q.metric,
        "source": q.source,
        "quantized": q.quantized,
        "quantized_min": q.quantized_min,
        "date": today(),
    });
    std::fs::write(
        dst.join("quantization.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!(
        "{} version {} -> {} ({:?}): weights {:.3} MB -> {:.3} MB; {} {:.4} -> {:.4}{}",
        a.model,
        a.version,
        out_version,
        a.format,
        stats.bytes_before as f64 / 1e6,
        stats.bytes_after as f64 / 1e6,
        q.metric,
        q.source,
        q.quantized,
        q.quantized_min
            .map(|m| format!(" (min {m:.4})"))
            .unwrap_or_default()
    );
    Ok(())
}

fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02}")
}

fn evaluate(
    cfg: &ModelConfig,
    dir: &Path,
    src: &Path,
    dst: &Path,
    reference: &Path,
) -> anyhow::Result<Quality> {
    let options = LoadOptions::from_config(cfg);
    let load = |p: &Path| {
        model::load(cfg.architecture, &options, p, &Device::Cpu).map_err(|e| anyhow::anyhow!("{e}"))
    };
    let (a, b) = (load(src)?, load(dst)?);
    // Text models are measured on reference embeddings; others on the held-out split.
    match a.text_input() {
        None => {
            let split = dir.join("test-split.safetensors");
            let t = candle_core::safetensors::load(&split, &Device::Cpu)
                .with_context(|| format!("reading {}", split.display()))?;
            let pixels: Vec<f32> = t["pixels"].flatten_all()?.to_vec1()?;
            let labels: Vec<i64> = t["labels"].to_vec1()?;
            let input = vec![Tensor::new(
                cfg.inputs[0].name.clone(),
                vec![labels.len(), pixels.len() / labels.len().max(1)],
                TensorData::F32(pixels),
            )];
            let acc = |m: &dyn model::Model| -> anyhow::Result<f64> {
                let out = m
                    .forward(&[&input], &mut StageTimings::default())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let TensorData::F32(p) = &out[0][0].data else {
                    bail!("the model's output is not FP32")
                };
                let classes = p.len() / labels.len();
                let correct = p
                    .chunks(classes)
                    .zip(&labels)
                    .filter(|(row, &l)| {
                        row.iter()
                            .enumerate()
                            .max_by(|x, y| x.1.total_cmp(y.1))
                            .map(|(i, _)| i as i64)
                            == Some(l)
                    })
                    .count();
                Ok(correct as f64 / labels.len() as f64)
            };
            Ok(Quality {
                metric: "held-out accuracy",
                source: acc(a.as_ref())?,
                quantized: acc(b.as_ref())?,
                quantized_min: None,
            })
        }
        Some(text) => {
            let refs: Value = serde_json::from_str(
                &std::fs::read_to_string(reference)
                    .with_context(|| format!("reading {}", reference.display()))?,
            )?;
            let sentences: Vec<String> = serde_json::from_value(refs["sentences"].clone())?;
            let want: Vec<Vec<f32>> = serde_json::from_value(refs["embeddings"].clone())?;
            let max_len = model::param::<i64>(&options, "max_seq_length")
                .ok()
                .flatten()
                .map_or(text.max_positions, |v| v.max(2) as usize)
                .min(text.max_positions);
            // Tokenized and cut exactly as the server does (unpadded, right-truncated keeping [SEP]).
            let tok = preprocess::load_tokenizer(&text.tokenizer)?;
            let jobs: Vec<Vec<Tensor>> = sentences
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let ids = preprocess::encode_text(&tok, i, s, true, max_len)?;
                    Ok(vec![Tensor::new(
                        text.input.clone(),
                        vec![1, ids.len()],
                        TensorData::I64(ids.into_iter().map(i64::from).collect()),
                    )])
                })
                .collect::<anyhow::Result<_>>()?;
            let views: Vec<&[Tensor]> = jobs.iter().map(Vec::as_slice).collect();
            let cosines = |m: &dyn model::Model| -> anyhow::Result<Vec<f64>> {
                let out = m
                    .forward(&views, &mut StageTimings::default())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                Ok(out
                    .iter()
                    .zip(&want)
                    .map(|(o, w)| match &o[0].data {
                        TensorData::F32(v) => cosine(v, w),
                        _ => 0.0,
                    })
                    .collect())
            };
            let (cs, cq) = (cosines(a.as_ref())?, cosines(b.as_ref())?);
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
            Ok(Quality {
                metric: "mean cosine to reference embeddings",
                source: mean(&cs),
                quantized: mean(&cq),
                quantized_min: cq.iter().copied().reduce(f64::min),
            })
        }
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-30)
}

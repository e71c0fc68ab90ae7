//! `ferrite profile <model> --version V --sample FILE`: runs the version on its reference sample
//! (CPU) and writes `profile.json` into the version folder (`profile::Profile`). The sample is a
//! safetensors file with one tensor per numeric input, named as the input (tensor models), or, for
//! text models, a JSON file with a `sentences` list or a text file with one sentence per line.
//! Also the hidden `ferrite drift-stats` (two samples in, the sketch's statistics out), which the
//! Python tests compare against scipy and numpy. Composition roots, so errors are `anyhow`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::Device;

use crate::model::{self, LoadOptions, StageTimings};
use crate::monitor::profile::{self, layout, InputFeatures, OutputReader, Profile};
use crate::monitor::stats::{self, FeatureProfile};
use crate::preprocess;
use crate::spec::ModelConfig;
use crate::tensor::{Tensor, TensorData};

#[derive(Debug, clap::Args)]
pub struct ProfileArgs {
    /// Model name (a folder of the repository)
    pub model: String,
    #[arg(long)]
    pub version: u64,
    /// The reference sample: safetensors (tensor models) or JSON `sentences` / text lines (text
    /// models)
    #[arg(long)]
    pub sample: PathBuf,
    /// What the sample is, recorded in the profile (e.g. "training split")
    #[arg(long, default_value = "")]
    pub source: String,
    #[arg(long, env = "FERRITE_MODEL_REPOSITORY", default_value = crate::config::DEFAULT_MODEL_REPOSITORY)]
    pub model_repository: PathBuf,
    /// Random projections of an embedding output
    #[arg(long, default_value_t = profile::DEFAULT_PROJECTIONS)]
    pub projections: usize,
    /// Seed of the projections
    #[arg(long, default_value_t = profile::DEFAULT_SEED)]
    pub seed: u64,
}

/// Rows per forward pass.
const BATCH: usize = 64;

pub fn run(a: &ProfileArgs) -> anyhow::Result<()> {
    let dir = a.model_repository.join(&a.model);
    let cfg = ModelConfig::load(&dir)?;
    let vdir = dir.join(a.version.to_string());
    if !vdir.is_dir() {
        bail!("{} is not a version folder", vdir.display());
    }
    let options = LoadOptions::from_config(&cfg);
    let m = model::load(cfg.architecture, &options, &vdir, &Device::Cpu)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let text = m.text_input();
    let (inputs, outputs) = layout(&cfg, text.is_some(), (a.projections, a.seed));
    let mut r = Runner {
        model: m.as_ref(),
        reader: OutputReader::new(outputs.clone()),
        inputs: Vec::new(),
        outputs: Vec::new(),
    };
    let rows = match &text {
        None => tensor_sample(&a.sample, &inputs, &mut r)?,
        Some(spec) => text_sample(&a.sample, &options, spec, &mut r)?,
    };
    let (in_vals, out_vals) = (r.inputs, r.outputs);
    let p = Profile {
        model: a.model.clone(),
        version: a.version,
        source: if a.source.is_empty() {
            a.sample.display().to_string()
        } else {
            a.source.clone()
        },
        rows: rows as u64,
        inputs: columns(&inputs.names(), &in_vals, rows)?,
        outputs: columns(&outputs.names(), &out_vals, rows)?,
        input_features: inputs,
        output_features: outputs,
    };
    p.save(&vdir)?;
    let constant = p.inputs.iter().filter(|f| f.is_constant()).count();
    println!(
        "{}: {rows} rows, {} input features ({constant} constant), {} output features",
        vdir.join(profile::PROFILE_FILE).display(),
        p.inputs.len(),
        p.outputs.len()
    );
    Ok(())
}

/// Runs the model on the sample and keeps the feature values (row-major).
struct Runner<'a> {
    model: &'a dyn model::Model,
    reader: OutputReader,
    inputs: Vec<f64>,
    outputs: Vec<f64>,
}

impl Runner<'_> {
    /// One forward pass over `jobs`; the monitored output's features of each (L2-normalised
    /// first when `normalize`, as the server's text path does).
    fn run(&mut self, jobs: Vec<Vec<Tensor>>, normalize: bool) -> anyhow::Result<()> {
        let views: Vec<&[Tensor]> = jobs.iter().map(Vec::as_slice).collect();
        let out = self
            .model
            .forward(&views, &mut StageTimings::default())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let name = self.reader.features.output();
        for o in out {
            let found = o.iter().find(|t| Some(t.name.as_str()) == name);
            if let Some(TensorData::F32(v)) = found.map(|t| &t.data) {
                let mut v = v.clone();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if normalize && norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                }
                self.reader.extract(&v, &mut self.outputs);
            }
        }
        Ok(())
    }
}

/// A tensor model's sample: one safetensors tensor per numeric input. Returns the rows.
fn tensor_sample(path: &Path, inputs: &InputFeatures, r: &mut Runner) -> anyhow::Result<usize> {
    let t = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading {}", path.display()))?;
    let InputFeatures::Elements { inputs: names } = inputs else {
        bail!("the model takes no numeric inputs")
    };
    let mut cols = Vec::new();
    for (name, width) in names {
        let x = t
            .get(name)
            .with_context(|| format!("{} has no tensor '{name}'", path.display()))?;
        let v: Vec<f32> = x
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        if !v.len().is_multiple_of(*width) {
            bail!("tensor '{name}' is not a whole number of rows of {width}");
        }
        cols.push((name.clone(), *width, v));
    }
    let n = cols.first().map_or(0, |c| c.2.len() / c.1);
    if cols.iter().any(|c| c.2.len() / c.1 != n) || n == 0 {
        bail!("the sample's inputs have different (or no) rows");
    }
    for start in (0..n).step_by(BATCH) {
        let end = (start + BATCH).min(n);
        let job: Vec<Tensor> = cols
            .iter()
            .map(|(name, w, v)| {
                Tensor::new(
                    name.clone(),
                    vec![end - start, *w],
                    TensorData::F32(v[start * w..end * w].to_vec()),
                )
            })
            .collect();
        inputs.extract(&job, end - start, &mut r.inputs);
        r.run(vec![job], false)?;
    }
    Ok(n)
}

/// A text model's sample: tokenized and cut exactly as the server does. Returns the rows.
fn text_sample(
    path: &Path,
    options: &LoadOptions,
    spec: &model::TextSpec,
    r: &mut Runner,
) -> anyhow::Result<usize> {
    let sentences = read_sentences(path)?;
    let max_len = model::param::<i64>(options, "max_seq_length")
        .ok()
        .flatten()
        .map_or(spec.max_positions, |v| v.max(2) as usize)
        .min(spec.max_positions);
    let normalize = model::param::<bool>(options, "normalize")
        .ok()
        .flatten()
        .unwrap_or(true);
    let tok = preprocess::load_tokenizer(&spec.tokenizer)?;
    for (c, chunk) in sentences.chunks(BATCH).enumerate() {
        let mut jobs = Vec::new();
        for (i, s) in chunk.iter().enumerate() {
            let ids = preprocess::encode_text(&tok, c * BATCH + i, s, true, max_len)?;
            r.inputs.push(ids.len() as f64);
            jobs.push(vec![Tensor::new(
                spec.input.clone(),
                vec![1, ids.len()],
                TensorData::I64(ids.into_iter().map(i64::from).collect()),
            )]);
        }
        r.run(jobs, normalize)?;
    }
    Ok(sentences.len())
}

/// One profile per feature out of row-major values.
fn columns(names: &[String], vals: &[f64], rows: usize) -> anyhow::Result<Vec<FeatureProfile>> {
    let k = names.len();
    if k == 0 {
        return Ok(Vec::new());
    }
    if vals.len() != rows * k {
        bail!(
            "expected {rows} rows of {k} features, got {} values",
            vals.len()
        );
    }
    names
        .iter()
        .enumerate()
        .map(|(j, name)| {
            let mut col: Vec<f64> = (0..rows).map(|r| vals[r * k + j]).collect();
            FeatureProfile::from_values(name.clone(), &mut col).context("empty sample")
        })
        .collect()
}

fn read_sentences(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let sentences: Vec<String> = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => serde_json::from_value(v["sentences"].clone())
            .with_context(|| format!("{}: expected a `sentences` list", path.display()))?,
        Err(_) => text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
    };
    if sentences.is_empty() {
        bail!("{} holds no sentences", path.display());
    }
    Ok(sentences)
}

/// `ferrite drift-stats` (hidden): reads `{"reference": [..], "live": [..]}` on stdin, prints the
/// reference sketch's edges, deciles and error bound and the live sample's KS, PSI and JS.
pub fn drift_stats() -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct In {
        reference: Vec<f64>,
        live: Vec<f64>,
    }
    let input: In = serde_json::from_reader(std::io::stdin().lock())?;
    let p = FeatureProfile::from_values("x", &mut input.reference.clone())
        .context("empty reference")?;
    let d = stats::drift(&p, &stats::histogram(&p, &input.live)).context("empty live sample")?;
    println!(
        "{}",
        serde_json::json!({
            "ks": d.ks, "psi": d.psi, "js": d.js,
            "ks_error_bound": p.ks_error_bound,
            "edges": p.edges, "deciles": p.deciles,
            "psi_epsilon": stats::PSI_EPSILON,
        })
    );
    Ok(())
}

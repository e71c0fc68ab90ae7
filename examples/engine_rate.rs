//! Ferrite's engine alone (no HTTP, no batcher) on a text-embedding model, for issue 20's
//! comparison with ONNX Runtime's raw engine (benches/peer-ort/compare.sh): loads a version the
//! way the server's loader does (`ModelConfig` from the model folder's `config.toml`, then
//! `LoadOptions::from_config` and `model::load`, so whatever the config selects, quantization or
//! precision, applies), tokenizes with the server's tokenizer pool (`TextModel`: its
//! `max_seq_length`, truncation on), then, with the tokens ready:
//! - throughput: the sentences sorted by token count, in batches of `--batch`, run by `--instances`
//!   threads that each take the next batch (as the server's workers pull), each forward pass using
//!   `--threads-per-pass` threads (candle's `RAYON_NUM_THREADS`); `--rounds` timed rounds after a
//!   warm-up, sentences/s of each and their median, and the process's CPU time (user + system)
//!   per sentence over the timed rounds (steadier than the rate on a shared machine);
//! - latency: `--latency N` single sentences (the file's first N) one at a time on one thread,
//!   p50 and p99 of the forward pass;
//! - the embeddings of the last round (L2-normalised when the model's `normalize` is on), in the
//!   file's order, to `--out FILE.npy` (float32 `[rows, dim]`, ids in FILE.ids.jsonl) for
//!   cosines against a reference.
//!
//! Tokenization is outside the timings, as in benches/peer-ort/run_ort.py.
//! Usage: `engine_rate MODEL_DIR SENTENCES.txt [--version V] [--batch 32] [--instances 1]
//!   [--threads-per-pass 2] [--rounds 5] [--latency 200] [--out FILE.npy]`
//! Prints `key=value` lines prefixed with `engine`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use candle_core::Device;
use ferrite::jobs::output::{write_part, Columns, PartRows};
use ferrite::jobs::OutputFormat;
use ferrite::model::{self, LoadOptions, Model, StageTimings};
use ferrite::repository::{present_versions, TextModel};
use ferrite::spec::ModelConfig;
use ferrite::tensor::{Tensor, TensorData};

struct Args {
    model_dir: PathBuf,
    sentences: PathBuf,
    version: Option<u64>,
    batch: usize,
    instances: usize,
    threads_per_pass: usize,
    rounds: usize,
    latency: usize,
    out: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut pos = Vec::new();
    let mut a = Args {
        model_dir: PathBuf::new(),
        sentences: PathBuf::new(),
        version: None,
        batch: 32,
        instances: 1,
        threads_per_pass: 2,
        rounds: 5,
        latency: 200,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--version" => a.version = Some(value()?.parse()?),
            "--batch" => a.batch = value()?.parse::<usize>()?.max(1),
            "--instances" => a.instances = value()?.parse::<usize>()?.max(1),
            "--threads-per-pass" => a.threads_per_pass = value()?.parse::<usize>()?.max(1),
            "--rounds" => a.rounds = value()?.parse::<usize>()?.max(1),
            "--latency" => a.latency = value()?.parse()?,
            "--out" => a.out = Some(value()?.into()),
            s if s.starts_with("--") => bail!("unknown option {s}"),
            _ => pos.push(PathBuf::from(arg)),
        }
    }
    let [model_dir, sentences] = <[PathBuf; 2]>::try_from(pos)
        .map_err(|_| anyhow::anyhow!("usage: engine_rate MODEL_DIR SENTENCES.txt [options]"))?;
    a.model_dir = model_dir;
    a.sentences = sentences;
    Ok(a)
}

/// One job per text, as the server's text path submits them: token ids, I64 `[1, tokens]`.
fn job(input: &str, ids: &[u32]) -> Vec<Tensor> {
    vec![Tensor::new(
        input.to_string(),
        vec![1, ids.len()],
        TensorData::I64(ids.iter().map(|&i| i64::from(i)).collect()),
    )]
}

/// The first output of each job, as f32.
fn embeddings(out: Vec<Vec<Tensor>>) -> anyhow::Result<Vec<Vec<f32>>> {
    out.into_iter()
        .map(|o| match o.into_iter().next().map(|t| t.data) {
            Some(TensorData::F32(v)) => Ok(v),
            _ => bail!("the model's first output is not FP32"),
        })
        .collect()
}

fn forward(m: &dyn Model, jobs: &[Vec<Tensor>]) -> anyhow::Result<Vec<Vec<f32>>> {
    let views: Vec<&[Tensor]> = jobs.iter().map(Vec::as_slice).collect();
    let out = m
        .forward(&views, &mut StageTimings::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    embeddings(out)
}

/// Runs every batch once on `instances` threads; the outputs per batch, and the wall time.
fn round(
    m: &Arc<dyn Model>,
    batches: &Arc<Vec<Vec<Vec<Tensor>>>>,
    instances: usize,
) -> anyhow::Result<(Vec<Vec<Vec<f32>>>, Duration)> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..instances)
        .map(|_| {
            let (m, batches, next) = (m.clone(), batches.clone(), next.clone());
            std::thread::spawn(move || -> anyhow::Result<Vec<(usize, Vec<Vec<f32>>)>> {
                let mut done = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(b) = batches.get(i) else {
                        return Ok(done);
                    };
                    done.push((i, forward(m.as_ref(), b)?));
                }
            })
        })
        .collect();
    let mut outs = vec![Vec::new(); batches.len()];
    for h in handles {
        for (i, o) in h.join().expect("an engine thread panicked")? {
            outs[i] = o;
        }
    }
    Ok((outs, start.elapsed()))
}

/// User + system CPU time of this process so far, in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one `rusage` into the zeroed value it is given.
    let r = unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut r);
        r
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(r.ru_utime) + secs(r.ru_stime)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn load(a: &Args) -> anyhow::Result<(ModelConfig, u64, Arc<dyn Model>)> {
    let cfg = ModelConfig::load(&a.model_dir)?;
    let version = match a.version {
        Some(v) => v,
        None => *present_versions(&a.model_dir)
            .last()
            .with_context(|| format!("{}: no version folder", a.model_dir.display()))?,
    };
    let vdir = a.model_dir.join(version.to_string());
    let options = LoadOptions::from_config(&cfg);
    let m = model::load(cfg.architecture, &options, &vdir, &Device::Cpu)
        .map_err(|e| anyhow::anyhow!("{}: {e}", vdir.display()))?;
    Ok((cfg, version, m))
}

fn write_embeddings(path: &Path, rows: Vec<Vec<f32>>) -> anyhow::Result<()> {
    let width = rows.first().map_or(0, Vec::len);
    let cols = Columns {
        names: vec!["embedding".into()],
        widths: vec![width],
        text_model: true,
    };
    let part = PartRows {
        ids: (0..rows.len()).map(|i| i.to_string()).collect(),
        values: vec![rows.into_iter().flatten().collect()],
    };
    write_part(OutputFormat::Npy, &cols, &part, path)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    // candle sizes its thread pool from this variable on first use (as `ferrite serve` sets it
    // from --intra-op-threads).
    std::env::set_var("RAYON_NUM_THREADS", a.threads_per_pass.to_string());
    let (cfg, version, m) = load(&a)?;
    let spec = m
        .text_input()
        .with_context(|| format!("{}: not a text model", a.model_dir.display()))?;
    let name = a
        .model_dir
        .file_name()
        .map_or("model".into(), |n| n.to_string_lossy().into_owned());
    let text = TextModel::load(&name, &cfg, &spec).map_err(anyhow::Error::msg)?;
    let sentences: Vec<String> = std::fs::read_to_string(&a.sentences)
        .with_context(|| a.sentences.display().to_string())?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(String::from)
        .collect();
    let ids = futures::executor::block_on(text.pool.encode(sentences.iter().collect(), true))?;
    let n = ids.len();
    let tokens: usize = ids.iter().map(Vec::len).sum();
    println!(
        "engine model={} version={version} quantization={} sentences={n} tokens_mean={:.2} \
         max_len={} batch={} instances={} threads_per_pass={}",
        a.model_dir.display(),
        cfg.quantization.map_or("none", |q| q.suffix()),
        tokens as f64 / n as f64,
        text.pool.max_len(),
        a.batch,
        a.instances,
        a.threads_per_pass
    );

    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| ids[i].len());
    let batches: Arc<Vec<Vec<Vec<Tensor>>>> = Arc::new(
        order
            .chunks(a.batch)
            .map(|c| c.iter().map(|&i| job(&spec.input, &ids[i])).collect())
            .collect(),
    );
    // Warm-up: one round (allocations, the thread pool, page faults on the weights).
    round(&m, &batches, a.instances)?;
    let mut rates = Vec::new();
    let mut last = Vec::new();
    let cpu0 = cpu_seconds();
    for _ in 0..a.rounds {
        let (outs, dt) = round(&m, &batches, a.instances)?;
        rates.push(n as f64 / dt.as_secs_f64());
        last = outs;
    }
    let cpu_ms = (cpu_seconds() - cpu0) * 1e3 / (n * a.rounds) as f64;
    let shown: Vec<String> = rates.iter().map(|r| format!("{r:.1}")).collect();
    rates.sort_by(f64::total_cmp);
    println!(
        "engine sentences_per_s={:.1} rounds={} cpu_ms_per_sentence={cpu_ms:.3}",
        rates[rates.len() / 2],
        shown.join(",")
    );

    if a.latency > 0 {
        let mut ms = Vec::new();
        for one in ids.iter().take(a.latency) {
            let j = [job(&spec.input, one)];
            let t = Instant::now();
            forward(m.as_ref(), &j)?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        ms.sort_by(f64::total_cmp);
        println!(
            "engine batch1_p50_ms={:.3} batch1_p99_ms={:.3} n={}",
            percentile(&ms, 0.5),
            percentile(&ms, 0.99),
            ms.len()
        );
    }

    if let Some(out) = &a.out {
        let mut rows = vec![Vec::new(); n];
        for (&i, v) in order.iter().zip(last.into_iter().flatten()) {
            rows[i] = v;
        }
        if text.normalize {
            for v in &mut rows {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    v.iter_mut().for_each(|x| *x /= norm);
                }
            }
        }
        write_embeddings(out, rows)?;
        println!("engine embeddings={}", out.display());
    }
    Ok(())
}

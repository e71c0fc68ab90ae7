//! `ferrite batch`: a composition root like `server.rs`, without HTTP: discovers devices, loads the
//! one model into a `Repository` (queue, workers, warm-up: the server's own engine), runs the job
//! on its own thread with a progress bar (indicatif: rows, rate, ETA), and stops the model. Ctrl-C
//! stops at once; rerunning the same command resumes from the checkpoint.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::run::{self, Progress, RunOptions};
use super::{Engine, InputFormat, InputSpec, JobsError};
use crate::device::{self, GpuSelection};
use crate::repository::Repository;
use crate::telemetry::Metrics;

#[derive(Debug, clap::Args)]
pub struct BatchArgs {
    /// Model repository folder
    #[arg(long, env = "FERRITE_MODEL_REPOSITORY", default_value = crate::config::DEFAULT_MODEL_REPOSITORY)]
    pub model_repository: PathBuf,
    /// Model name
    #[arg(short = 'm', long)]
    pub model: String,
    /// Model version [default: the latest loaded]
    #[arg(long)]
    pub model_version: Option<u64>,
    /// Input file: JSON lines (an id and a text field, or a KServe v2 request of one row per
    /// line), CSV with a header, or plain text (one item per line)
    #[arg(long)]
    pub input: PathBuf,
    /// Output file; the format follows the extension: .parquet, .npy (ids in <stem>.ids.jsonl) or
    /// .jsonl. Rejected records go to <stem>.rejects.jsonl
    #[arg(long)]
    pub output: PathBuf,
    /// Input format: jsonl, csv or text [default: by the input's extension, .csv / .txt / else
    /// jsonl]
    #[arg(long)]
    pub input_format: Option<String>,
    /// The id field (JSON lines) or column (CSV); records without one get their record number
    #[arg(long, default_value = "id")]
    pub id_field: String,
    /// The text field (JSON lines) or column (CSV)
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// Longest input record in bytes; longer ones are rejected
    #[arg(long, default_value_t = 1 << 20)]
    pub max_record_bytes: usize,
    /// Input records per output part (and per checkpoint)
    #[arg(long, default_value_t = 10_000)]
    pub part_records: u64,
    /// Reject texts over the model's token limit instead of cutting them
    #[arg(long)]
    pub no_truncate: bool,
    /// Discard the parts of an earlier run of this output and start over
    #[arg(long)]
    pub restart: bool,
    /// GPUs to use: all, none, or ordinals like 0,1
    #[arg(long, env = "FERRITE_GPUS", default_value = "all")]
    pub gpus: GpuSelection,
    /// Threads one CPU forward pass may use
    #[arg(long, env = "FERRITE_INTRA_OP_THREADS", default_value_t = 1)]
    pub intra_op_threads: usize,
    /// No progress bar (the `part committed` log lines stay)
    #[arg(long)]
    pub no_progress: bool,
}

impl BatchArgs {
    fn input_spec(&self) -> anyhow::Result<InputSpec> {
        let format = match &self.input_format {
            None => InputFormat::of(&self.input),
            Some(f) => InputFormat::parse(f)
                .with_context(|| format!("--input-format {f}: expected jsonl, csv or text"))?,
        };
        Ok(InputSpec {
            format,
            id_field: self.id_field.clone(),
            text_field: self.text_field.clone(),
            max_record_bytes: self.max_record_bytes.max(1),
        })
    }
}

/// Exit status of an interrupted run (128 + SIGINT), as shells report Ctrl-C.
pub const INTERRUPTED: i32 = 130;

/// Runs the job to the end: `Ok(true)` done, `Ok(false)` interrupted (resumable).
pub async fn run(args: &BatchArgs) -> anyhow::Result<bool> {
    let spec = args.input_spec()?;
    super::OutputFormat::of(&args.output).map_err(anyhow::Error::msg)?;
    let devices = device::discover(&args.gpus);
    let repo = Arc::new(Repository::new(
        args.model_repository.clone(),
        devices,
        Arc::new(Metrics::new()),
    ));
    repo.load(&args.model)
        .await
        .with_context(|| format!("cannot load model '{}'", args.model))?;
    let result = run_loaded(&repo, args, spec).await;
    repo.shutdown().await;
    result
}

async fn run_loaded(repo: &Repository, args: &BatchArgs, spec: InputSpec) -> anyhow::Result<bool> {
    let lv = repo.get(&args.model, args.model_version)?;
    let engine = Engine::new(lv, !args.no_truncate)?;
    if spec.format != InputFormat::Jsonl && !engine.takes_text() {
        anyhow::bail!(
            "model '{}' takes tensors: give JSON lines of KServe v2 requests (one row each)",
            args.model
        );
    }
    let opts = RunOptions {
        input: args.input.clone(),
        output: args.output.clone(),
        input_spec: spec,
        part_records: args.part_records.max(1),
        truncate: !args.no_truncate,
        restart: args.restart,
    };
    let progress = Arc::new(Progress::default());
    let (cancel, cancel_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let job = {
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || {
            futures::executor::block_on(run::run(&engine, &opts, &progress, cancel_rx))
        })
    };
    let bar = (!args.no_progress).then(|| bar(progress.clone(), started));
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::warn!("interrupted: stopping (rerun the same command to resume)");
        cancel.send_replace(true);
        std::future::pending::<()>().await
    };
    let outcome = tokio::select! {
        r = job => r.context("the job thread panicked")?,
        _ = ctrl_c => unreachable!("ctrl_c never completes"),
    };
    if let Some((b, ticker)) = bar {
        ticker.abort();
        b.finish_and_clear();
    }
    match outcome {
        Ok(s) => {
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "{} rows written to {} ({} rejected, listed in {}; {} records resumed) in {:.1} s, {:.0} rows/s",
                s.rows,
                s.output.display(),
                s.rejected,
                s.rejects.display(),
                s.resumed,
                secs,
                (s.records - s.resumed) as f64 / secs.max(1e-9)
            );
            Ok(true)
        }
        Err(JobsError::Canceled) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// The progress bar over the input's bytes, with rows, rate and rejects, redrawn 5 times a second.
fn bar(
    progress: Arc<Progress>,
    started: Instant,
) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let b = indicatif::ProgressBar::new(0);
    b.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} ETA {eta}")
            .expect("the template is valid. This is a bug."),
    );
    let b2 = b.clone();
    let ticker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            b2.set_length(progress.bytes_total.load(Ordering::Relaxed));
            b2.set_position(progress.bytes_read.load(Ordering::Relaxed));
            let (rate, _) = run::rate_and_eta(&progress, started);
            b2.set_message(format!(
                "{} rows ({rate:.0}/s), {} rejected",
                progress.rows.load(Ordering::Relaxed),
                progress.rejected.load(Ordering::Relaxed)
            ));
        }
    });
    (b, ticker)
}

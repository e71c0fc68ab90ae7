//! One bulk job from input file to output file: records are read in chunks and run through the
//! `Engine` with a bounded number of rows in flight (so memory does not grow with the input); the
//! results, in input order, fill parts of `part_records` input records, each written with its
//! rejects and then committed to the checkpoint. A rerun after any interruption (Ctrl-C, `kill -9`,
//! cancel, restart) skips the committed records and redoes only the part in progress; at the end
//! the parts are merged into the output and the rejects file, and the parts folder is removed.
//!
//! Reads and writes files synchronously: run it on its own thread (`futures::executor::block_on`),
//! never on an async I/O thread.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::watch;

use super::checkpoint::{Checkpoint, Identity, PartDone};
use super::engine::{Engine, RowResult};
use super::input::{InputSpec, Item, Record, RecordReader};
use super::output::{self, OutputFormat, PartRows};
use super::JobsError;

/// How to run a job.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    pub input_spec: InputSpec,
    /// Input records per part (and per checkpoint).
    pub part_records: u64,
    /// Cut texts over the model's limit (else they are rejected).
    pub truncate: bool,
    /// Ignore an existing checkpoint and start over.
    pub restart: bool,
}

/// Live counters of a running job (read by the progress bar and the jobs API).
#[derive(Debug, Default)]
pub struct Progress {
    /// Input records done (rows written + rejected), committed or not.
    pub records: AtomicU64,
    pub rows: AtomicU64,
    pub rejected: AtomicU64,
    /// Records already done by earlier runs (skipped on resume).
    pub resumed: AtomicU64,
    pub bytes_read: Arc<AtomicU64>,
    /// Bytes skipped on resume (not work of this run).
    pub bytes_skipped: AtomicU64,
    pub bytes_total: AtomicU64,
    pub parts: AtomicU64,
}

/// What a finished job wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub records: u64,
    pub rows: u64,
    pub rejected: u64,
    /// Records skipped because an earlier run had done them.
    pub resumed: u64,
    pub output: PathBuf,
    pub rejects: PathBuf,
}

/// The parts folder beside an output: `out.parquet` -> `out.parquet.parts/`.
pub fn parts_dir(output: &Path) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".parts");
    PathBuf::from(s)
}

/// The rejects file beside an output: `out.parquet` -> `out.rejects.jsonl`.
pub fn rejects_path(output: &Path) -> PathBuf {
    output.with_extension("rejects.jsonl")
}

fn part_path(dir: &Path, index: usize, format: OutputFormat) -> PathBuf {
    dir.join(format!("part-{index:06}.{}", format.extension()))
}

fn part_rejects(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("rejects-{index:06}.jsonl"))
}

/// Records read for one chunk: (number, id) and the items.
struct Chunk {
    keys: Vec<(u64, String)>,
    items: Vec<Result<Item, String>>,
}

/// The part being filled.
struct Part {
    rows: PartRows,
    rejects: Vec<u8>,
    records: u64,
    rejected: u64,
    /// Rejects by reason (`RejectReason as usize`), for the metrics.
    rejected_by: [u64; 3],
}

impl Part {
    fn new(columns: usize) -> Part {
        Part {
            rows: PartRows::new(columns),
            rejects: Vec::new(),
            records: 0,
            rejected: 0,
            rejected_by: [0; 3],
        }
    }
}

/// Runs (or resumes) a job to the end. `cancel` turning true stops it within one chunk's wait:
/// queued rows are dropped, committed parts stay for a later resume.
pub async fn run(
    engine: &Engine,
    opts: &RunOptions,
    progress: &Progress,
    mut cancel: watch::Receiver<bool>,
) -> Result<Summary, JobsError> {
    let lv = engine.model();
    let format = OutputFormat::of(&opts.output).map_err(JobsError::Unsupported)?;
    if format == OutputFormat::Npy && engine.columns().names.len() != 1 {
        return Err(JobsError::Unsupported(format!(
            "model '{}' has {} outputs; .npy holds one: use .parquet or .jsonl",
            lv.name,
            engine.columns().names.len()
        )));
    }
    let (input_len, input_modified_ns) = Identity::input_stamp(&opts.input)?;
    let identity = Identity {
        input_len,
        input_modified_ns,
        model: lv.name.clone(),
        version: lv.version,
        input: opts.input_spec.clone(),
        output: format,
        part_records: opts.part_records.max(1),
        truncate: opts.truncate,
    };
    let dir = parts_dir(&opts.output);
    if opts.restart && dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    let mut ckpt = match Checkpoint::load(&dir)? {
        Some(c) if c.identity == identity => c,
        Some(_) => {
            return Err(JobsError::Checkpoint(format!(
                "{} holds the parts of a different job (input, model or settings changed); \
                 remove it or pass --restart",
                dir.display()
            )))
        }
        None => Checkpoint::new(identity),
    };
    remove_orphans(&dir, ckpt.parts.len())?;
    let mut reader =
        RecordReader::open(&opts.input, &opts.input_spec, progress.bytes_read.clone())?;
    progress
        .bytes_total
        .store(reader.bytes_total, Ordering::Relaxed);
    let done = ckpt.records();
    reader.skip(done)?;
    progress.bytes_skipped.store(
        progress.bytes_read.load(Ordering::Relaxed),
        Ordering::Relaxed,
    );
    progress.resumed.store(done, Ordering::Relaxed);
    progress.records.store(done, Ordering::Relaxed);
    progress.rows.store(ckpt.rows(), Ordering::Relaxed);
    progress.rejected.store(ckpt.rejected(), Ordering::Relaxed);
    progress
        .parts
        .store(ckpt.parts.len() as u64, Ordering::Relaxed);
    if done > 0 {
        tracing::info!(
            records = done,
            parts = ckpt.parts.len(),
            "resuming from the checkpoint"
        );
    }
    let part_records = ckpt.identity.part_records;
    let cap = engine.in_flight_rows();
    let chunk_rows = (cap / 4).clamp(1, 256);
    let columns = engine.columns().names.len();
    let mut part = Part::new(columns);
    // Records read into the current part so far (chunks never straddle two parts).
    let mut read_in_part = 0u64;
    let mut in_flight = VecDeque::<usize>::new();
    let mut pending = FuturesOrdered::new();
    let mut eof = false;
    loop {
        while !eof && in_flight.iter().sum::<usize>() < cap {
            let room = (part_records - read_in_part).min(chunk_rows as u64) as usize;
            let chunk = read_chunk(&mut reader, room)?;
            if chunk.keys.len() < room {
                eof = true;
            }
            if chunk.keys.is_empty() {
                break;
            }
            read_in_part = (read_in_part + chunk.keys.len() as u64) % part_records;
            in_flight.push_back(chunk.keys.len());
            let Chunk { keys, items } = chunk;
            pending.push_back(async move { (keys, engine.run(items).await) });
        }
        if pending.is_empty() {
            break;
        }
        let canceled = async {
            // A dropped sender is no cancel.
            if cancel.wait_for(|c| *c).await.is_err() {
                std::future::pending::<()>().await
            }
        };
        let next = tokio::select! {
            biased;
            _ = canceled => return Err(JobsError::Canceled),
            n = pending.next() => n,
        };
        let Some((keys, results)) = next else { break };
        in_flight.pop_front();
        let results = results?;
        add_results(&mut part, keys, results, progress)?;
        if part.records == part_records {
            let full = std::mem::replace(&mut part, Part::new(columns));
            commit(&dir, format, engine, &mut ckpt, full)?;
            progress
                .parts
                .store(ckpt.parts.len() as u64, Ordering::Relaxed);
        }
    }
    if part.records > 0 {
        commit(&dir, format, engine, &mut ckpt, part)?;
        progress
            .parts
            .store(ckpt.parts.len() as u64, Ordering::Relaxed);
    }
    finish(&dir, format, engine, &ckpt, &opts.output, progress)
}

fn read_chunk(reader: &mut RecordReader, n: usize) -> Result<Chunk, JobsError> {
    let mut chunk = Chunk {
        keys: Vec::with_capacity(n),
        items: Vec::with_capacity(n),
    };
    while chunk.keys.len() < n {
        let Some(Record { number, id, item }) = reader.next_record()? else {
            break;
        };
        chunk.keys.push((number, id));
        chunk.items.push(item);
    }
    Ok(chunk)
}

fn add_results(
    part: &mut Part,
    keys: Vec<(u64, String)>,
    results: Vec<RowResult>,
    progress: &Progress,
) -> Result<(), JobsError> {
    let (mut rows, mut rejected) = (0, 0);
    for ((number, id), r) in keys.into_iter().zip(results) {
        part.records += 1;
        match r {
            Ok(values) => {
                part.rows.ids.push(id);
                for (col, v) in part.rows.values.iter_mut().zip(values) {
                    col.extend_from_slice(&v);
                }
                rows += 1;
            }
            Err(reject) => {
                let line =
                    serde_json::json!({"record": number, "id": id, "reason": reject.message});
                serde_json::to_writer(&mut part.rejects, &line).map_err(std::io::Error::other)?;
                part.rejects.push(b'\n');
                part.rejected += 1;
                part.rejected_by[reject.reason as usize] += 1;
                rejected += 1;
            }
        }
    }
    progress.rows.fetch_add(rows, Ordering::Relaxed);
    progress.rejected.fetch_add(rejected, Ordering::Relaxed);
    progress
        .records
        .fetch_add(rows + rejected, Ordering::Relaxed);
    Ok(())
}

/// Writes a part and its rejects, then records it in the checkpoint (the commit point).
fn commit(
    dir: &Path,
    format: OutputFormat,
    engine: &Engine,
    ckpt: &mut Checkpoint,
    part: Part,
) -> Result<(), JobsError> {
    let index = ckpt.parts.len();
    output::write_part(
        format,
        engine.columns(),
        &part.rows,
        &part_path(dir, index, format),
    )?;
    let mut f = std::fs::File::create(part_rejects(dir, index))?;
    f.write_all(&part.rejects)?;
    f.sync_all()?;
    ckpt.parts.push(PartDone {
        records: part.records,
        rows: part.rows.ids.len() as u64,
        rejected: part.rejected,
    });
    ckpt.store(dir)?;
    engine
        .model()
        .metrics
        .jobs()
        .record_part(part.rows.ids.len() as u64, part.rejected_by);
    tracing::info!(
        part = index,
        records = ckpt.records(),
        rows = ckpt.rows(),
        rejected = ckpt.rejected(),
        "part committed"
    );
    Ok(())
}

/// Removes part files a killed run wrote but never committed.
fn remove_orphans(dir: &Path, committed: usize) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let index = name
            .strip_prefix("part-")
            .or_else(|| name.strip_prefix("rejects-"))
            .and_then(|rest| rest.get(..6))
            .and_then(|i| i.parse::<usize>().ok());
        if index.is_some_and(|i| i >= committed) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Merges the parts into the output and the rejects file, then removes the parts folder.
fn finish(
    dir: &Path,
    format: OutputFormat,
    engine: &Engine,
    ckpt: &Checkpoint,
    output: &Path,
    progress: &Progress,
) -> Result<Summary, JobsError> {
    let n = ckpt.parts.len();
    let parts: Vec<PathBuf> = (0..n).map(|i| part_path(dir, i, format)).collect();
    let rows = output::merge(format, engine.columns(), &parts, output)?;
    let rejects = rejects_path(output);
    let tmp = rejects.with_extension("jsonl.tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    for i in 0..n {
        std::io::copy(&mut std::fs::File::open(part_rejects(dir, i))?, &mut f)?;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, &rejects)?;
    std::fs::remove_dir_all(dir)?;
    Ok(Summary {
        records: ckpt.records(),
        rows,
        rejected: ckpt.rejected(),
        resumed: progress.resumed.load(Ordering::Relaxed),
        output: output.to_path_buf(),
        rejects,
    })
}

/// Rows per second and the estimated seconds left, from the counters and the start of this run.
pub fn rate_and_eta(progress: &Progress, started: Instant) -> (f64, Option<f64>) {
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let done_now =
        progress.records.load(Ordering::Relaxed) - progress.resumed.load(Ordering::Relaxed);
    let rate = done_now as f64 / secs;
    let skipped = progress.bytes_skipped.load(Ordering::Relaxed);
    let (read, total) = (
        progress.bytes_read.load(Ordering::Relaxed),
        progress.bytes_total.load(Ordering::Relaxed),
    );
    let read_now = read.saturating_sub(skipped);
    let eta = (read_now > 0 && total >= read && done_now > 0).then(|| {
        // Bytes left at this run's byte rate (records vary in size; bytes are what is known).
        let bytes_rate = read_now as f64 / secs;
        (total - read) as f64 / bytes_rate.max(1e-9)
    });
    (rate, eta)
}

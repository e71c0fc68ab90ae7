//! Versions whose model takes text (it says so through `Model::text_input`): the tokenizer pool and
//! text-serving settings, and the one path from texts to jobs — tokenize off the device threads,
//! submit one job per text (so that a request's texts can spread over batches), reassemble the
//! outputs in order. The front doors and the warm-up both go through `TextModel::run`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};

use crate::batcher::{JobError, JobOutput, Queue, SubmitOptions, Timings};
use crate::model::{self, LoadOptions, TextSpec};
use crate::preprocess::{PreprocessError, TokenizerPool};
use crate::spec::ModelConfig;
use crate::tensor::{Tensor, TensorData, Texts};

/// Text-input settings of a loaded version (config `[parameters]`, bounded by the model's
/// `TextSpec`).
#[derive(Clone)]
pub struct TextModel {
    pub pool: TokenizerPool,
    /// The input each job carries: token ids, I64 `[1, tokens]`.
    pub input: String,
    /// L2-normalise embeddings unless the request says otherwise (default true).
    pub normalize: bool,
    /// Most texts in one client request (default 256); more is a 413.
    pub max_client_batch_size: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error(transparent)]
    Job(#[from] JobError),
}

/// What `TextModel::run` returns: each text's outputs in order, the token count, and the times.
pub struct TextRun {
    pub outputs: Vec<Vec<Tensor>>,
    pub tokens: usize,
    /// Each text's tokens, in order.
    pub token_counts: Vec<usize>,
    /// Per stage, the longest over the request's jobs.
    pub timings: Timings,
    pub tokenize: Duration,
}

impl TextModel {
    /// Starts the tokenizer pool for a model with text input `spec`. Settings (config
    /// `[parameters]`): `max_seq_length` (default and cap: the model's positions),
    /// `tokenizer_threads` (the cores available), `normalize` (true), `max_client_batch_size` (256).
    pub fn load(name: &str, config: &ModelConfig, spec: &TextSpec) -> Result<TextModel, String> {
        let opts = LoadOptions::from_config(config);
        let p = |k: &str| model::param::<i64>(&opts, k).map_err(|e| e.to_string());
        let max_len = p("max_seq_length")?
            .map_or(spec.max_positions, |v| v.max(2) as usize)
            .min(spec.max_positions);
        let threads = p("tokenizer_threads")?
            .map_or_else(crate::preprocess::default_threads, |v| v.max(1) as usize);
        let pool = TokenizerPool::load(&spec.tokenizer, name, max_len, threads)
            .map_err(|e| e.to_string())?;
        Ok(TextModel {
            pool,
            input: spec.input.clone(),
            normalize: model::param::<bool>(&opts, "normalize")
                .map_err(|e| e.to_string())?
                .unwrap_or(true),
            max_client_batch_size: p("max_client_batch_size")?.unwrap_or(256).max(1) as usize,
        })
    }

    /// Tokenizes `texts` (cut at the limit when `truncate`, else refused), submits one job per
    /// text to `queue` and waits for all of them. The request is admitted whole before any text is
    /// tokenized (`Queue::reserve`: a full queue refuses it at once, and no text of it is computed
    /// and thrown away); tokenizing counts against its timeout; the first job that fails ends it
    /// and drops its other jobs from the queue. The jobs of one request share a flag so that a
    /// request whose client left counts once as canceled.
    pub async fn run(
        &self,
        queue: &Queue,
        texts: Texts,
        truncate: bool,
        mut opts: SubmitOptions,
    ) -> Result<TextRun, TextError> {
        let start = Instant::now();
        let mut permit = queue.reserve(texts.len(), &opts)?;
        let deadline = queue.timeout(&opts).map(|t| start + t);
        let ids = self.pool.encode_until(texts, truncate, deadline).await?;
        let tokenize = start.elapsed();
        if let Some(d) = deadline {
            // What is left of the timeout after tokenizing (0 expires at once, in the queue).
            opts.timeout = Some(d.saturating_duration_since(Instant::now()));
        }
        let token_counts: Vec<usize> = ids.iter().map(Vec::len).collect();
        let tokens = token_counts.iter().sum();
        let parts = (ids.len() > 1).then(|| Arc::new(AtomicBool::new(false)));
        let mut jobs: FuturesUnordered<_> = ids
            .into_iter()
            .enumerate()
            .map(|(i, ids)| {
                let cost = ids.len();
                let t = Tensor::new(
                    self.input.clone(),
                    vec![1, cost],
                    TensorData::I64(ids.into_iter().map(i64::from).collect()),
                );
                let job = permit.submit(
                    vec![t],
                    1,
                    SubmitOptions {
                        cost,
                        parts: parts.clone(),
                        ..opts.clone()
                    },
                );
                async move { (i, job.await) }
            })
            .collect();
        drop(permit);
        let mut outputs: Vec<Option<Vec<Tensor>>> = (0..jobs.len()).map(|_| None).collect();
        let mut timings = Timings::default();
        while let Some((i, r)) = jobs.next().await {
            let JobOutput {
                outputs: out,
                timings: t,
            } = match r {
                Ok(o) => o,
                Err(e) => {
                    // The request failed: its other jobs are dropped with `jobs` (the queue skips
                    // them), and not counted as a canceled request.
                    if let Some(p) = &parts {
                        p.store(true, Ordering::Relaxed);
                    }
                    return Err(e.into());
                }
            };
            timings.queue = timings.queue.max(t.queue);
            timings.compute_input = timings.compute_input.max(t.compute_input);
            timings.compute_infer = timings.compute_infer.max(t.compute_infer);
            timings.compute_output = timings.compute_output.max(t.compute_output);
            outputs[i] = Some(out);
        }
        let outputs = outputs
            .into_iter()
            .map(|o| o.expect("every job answered. This is a bug."))
            .collect();
        Ok(TextRun {
            outputs,
            tokens,
            token_counts,
            timings,
            tokenize,
        })
    }
}

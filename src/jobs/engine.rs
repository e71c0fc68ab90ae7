//! The rows of a bulk job through a loaded model version, on its queue's job lane (`Lane::Bulk`):
//! texts are tokenized on the version's tokenizer pool and submitted one job per text (the batcher
//! groups them by length), KServe v2 rows are validated as the online doors validate them. A bad
//! row is refused with its reason (the online doors' message); the others run. Same outputs as the
//! online API: embeddings L2-normalised when the model's `normalize` is on.

use std::sync::Arc;

use super::input::Item;
use super::output::Columns;
use super::JobsError;
use crate::batcher::{JobError, JobOutput, Lane, SubmitOptions};
use crate::preprocess::PreprocessError;
use crate::repository::LoadedVersion;
use crate::spec::validate_inputs;
use crate::telemetry::RejectReason;
use crate::tensor::{DataType, Tensor, TensorData, Texts};

/// One row's outputs (per column, its values) or why it was refused.
pub type RowResult = Result<Vec<Vec<f32>>, Reject>;

/// Why a row was refused: its kind (the metric's `reason` label) and the message (the rejects
/// file: the online doors' wording).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub reason: RejectReason,
    pub message: String,
}

impl Reject {
    /// The input reader could not make a record of it.
    pub fn malformed(message: String) -> Reject {
        Reject {
            reason: RejectReason::Malformed,
            message,
        }
    }

    /// The model's validation refused it.
    pub fn invalid(message: impl Into<String>) -> Reject {
        Reject {
            reason: RejectReason::Invalid,
            message: message.into(),
        }
    }

    /// The model failed on it.
    pub fn backend(message: impl Into<String>) -> Reject {
        Reject {
            reason: RejectReason::Backend,
            message: message.into(),
        }
    }
}

/// A model version ready to take a job's rows.
pub struct Engine {
    lv: Arc<LoadedVersion>,
    truncate: bool,
    columns: Columns,
}

impl Engine {
    /// `truncate`: cut texts over the model's limit (else they are refused).
    pub fn new(lv: Arc<LoadedVersion>, truncate: bool) -> Result<Engine, JobsError> {
        let cfg = &lv.config;
        let mut columns = Columns {
            names: Vec::new(),
            widths: Vec::new(),
            text_model: lv.text.is_some(),
        };
        for o in &cfg.outputs {
            if o.datatype != DataType::F32 {
                return Err(JobsError::Unsupported(format!(
                    "output '{}' of model '{}' is {}; bulk jobs write FP32 outputs",
                    o.name,
                    lv.name,
                    o.datatype.as_str()
                )));
            }
            let row_dims = if cfg.max_batch_size > 0 {
                &o.dims[1..]
            } else {
                &o.dims[..]
            };
            if row_dims.iter().any(|&d| d < 1) {
                return Err(JobsError::Unsupported(format!(
                    "output '{}' of model '{}' has a variable shape {:?}",
                    o.name, lv.name, o.dims
                )));
            }
            columns.names.push(o.name.clone());
            columns
                .widths
                .push(row_dims.iter().map(|&d| d as usize).product());
        }
        if lv.text.is_some() {
            columns.names.truncate(1);
            columns.widths.truncate(1);
        }
        Ok(Engine {
            lv,
            truncate,
            columns,
        })
    }

    pub fn columns(&self) -> &Columns {
        &self.columns
    }

    pub fn takes_text(&self) -> bool {
        self.lv.text.is_some()
    }

    pub fn model(&self) -> &LoadedVersion {
        &self.lv
    }

    /// Most rows worth having in flight on the job lane (half the queue's capacity, at most 2048):
    /// enough to keep every worker busy with full batches.
    pub fn in_flight_rows(&self) -> usize {
        (self.lv.config.dynamic_batching.max_queue_size / 2).clamp(1, 2048)
    }

    /// Runs `items` (in order), answering each with its outputs or why it was refused. `Err` only
    /// when the model cannot serve (unloaded, shutting down): the job stops and can be resumed.
    pub async fn run(&self, items: Vec<Result<Item, String>>) -> Result<Vec<RowResult>, JobsError> {
        match &self.lv.text {
            Some(_) => self.run_texts(items).await,
            None => self.run_tensors(items).await,
        }
    }

    fn bulk(cost: usize) -> SubmitOptions {
        SubmitOptions {
            cost,
            lane: Lane::Bulk,
            ..SubmitOptions::default()
        }
    }

    /// A model failure refuses the row; anything else (unloaded, draining) stops the job.
    fn job_error(&self, e: JobError) -> Result<Reject, JobsError> {
        match e {
            JobError::Model { message, .. } => {
                Ok(Reject::backend(format!("model failed: {message}")))
            }
            e => Err(JobsError::Unavailable(e.to_string())),
        }
    }

    async fn run_tensors(
        &self,
        items: Vec<Result<Item, String>>,
    ) -> Result<Vec<RowResult>, JobsError> {
        let submits = items.into_iter().map(|item| self.submit_row(item));
        let mut out = Vec::new();
        for r in futures::future::join_all(submits).await {
            out.push(match r {
                Err(reason) => Err(reason),
                Ok(Err(e)) => Err(self.job_error(e)?),
                Ok(Ok(o)) => self.row_values(o.outputs),
            });
        }
        Ok(out)
    }

    /// Validates one tensor row as the online door does and submits it on the job lane; `Err`: why
    /// the row is refused.
    async fn submit_row(
        &self,
        item: Result<Item, String>,
    ) -> Result<Result<JobOutput, JobError>, Reject> {
        let cfg = &self.lv.config;
        let inputs = match item.map_err(Reject::malformed)? {
            Item::Tensors(t) => t,
            Item::Text(_) => {
                return Err(Reject::invalid(format!(
                    "model '{}' takes tensors: give a KServe v2 request line ('inputs')",
                    self.lv.name
                )))
            }
        };
        let rows = validate_inputs(&cfg.inputs, cfg.max_batch_size, &inputs)
            .map_err(|e| Reject::invalid(e.to_string()))?;
        if rows != 1 {
            return Err(Reject::invalid(format!(
                "the line holds {rows} rows; a job line holds one"
            )));
        }
        Ok(self.lv.queue.submit(inputs, 1, Self::bulk(0)).await)
    }

    /// Submits one text's token ids on the job lane.
    async fn submit_text(
        &self,
        input: &str,
        ids: Result<Vec<u32>, Reject>,
    ) -> Result<Result<JobOutput, JobError>, Reject> {
        let ids = ids?;
        let cost = ids.len();
        let t = Tensor::new(
            input,
            vec![1, cost],
            TensorData::I64(ids.into_iter().map(i64::from).collect()),
        );
        Ok(self.lv.queue.submit(vec![t], 1, Self::bulk(cost)).await)
    }

    /// The configured outputs of one row, in column order.
    fn row_values(&self, outputs: Vec<Tensor>) -> RowResult {
        let mut row = Vec::with_capacity(self.columns.names.len());
        for (name, &w) in self.columns.names.iter().zip(&self.columns.widths) {
            match outputs.iter().find(|t| &t.name == name).map(|t| &t.data) {
                Some(TensorData::F32(v)) if v.len() == w => row.push(v.clone()),
                _ => {
                    tracing::error!(model = %self.lv.name, output = %name,
                        "model returned no FP32 row of the configured size. This is a bug.");
                    return Err(Reject::backend(
                        "internal error: the model's output has the wrong shape",
                    ));
                }
            }
        }
        Ok(row)
    }

    /// The text of an item for a text model (a KServe v2 line with one BYTES text, validated as
    /// the online door does).
    fn text_of(&self, item: Result<Item, String>) -> Result<String, Reject> {
        match item.map_err(Reject::malformed)? {
            Item::Text(t) => Ok(t),
            Item::Tensors(inputs) => {
                let cfg = &self.lv.config;
                let rows = validate_inputs(&cfg.inputs, 1, &inputs)
                    .map_err(|e| Reject::invalid(e.to_string()))?;
                match inputs.into_iter().next().map(|t| t.data) {
                    Some(TensorData::Bytes(b)) if rows == 1 && b.len() == 1 => {
                        std::str::from_utf8(&b[0])
                            .map(str::to_owned)
                            .map_err(|_| Reject::invalid("input text is not valid UTF-8"))
                    }
                    _ => Err(Reject::invalid("a job line holds one text")),
                }
            }
        }
    }

    async fn run_texts(
        &self,
        items: Vec<Result<Item, String>>,
    ) -> Result<Vec<RowResult>, JobsError> {
        let text = self
            .lv
            .text
            .as_ref()
            .expect("run_texts is only called for text models. This is a bug.");
        let texts: Vec<Result<String, Reject>> =
            items.into_iter().map(|i| self.text_of(i)).collect();
        let ids = self.tokenize(text, &texts).await?;
        let submits = ids
            .into_iter()
            .map(|ids| self.submit_text(&text.input, ids));
        let mut out = Vec::new();
        for r in futures::future::join_all(submits).await {
            out.push(match r {
                Err(reason) => Err(reason),
                Ok(Err(e)) => Err(self.job_error(e)?),
                Ok(Ok(o)) => self.row_values(o.outputs).map(|mut row| {
                    if text.normalize {
                        l2_normalize(&mut row[0]);
                    }
                    row
                }),
            });
        }
        Ok(out)
    }

    /// Token ids of each text (or why not): the whole chunk in one call to the pool, and text by
    /// text only when that call refuses one of them.
    async fn tokenize(
        &self,
        text: &crate::repository::TextModel,
        texts: &[Result<String, Reject>],
    ) -> Result<Vec<Result<Vec<u32>, Reject>>, JobsError> {
        let good: Texts = texts.iter().filter_map(|t| t.as_ref().ok()).collect();
        let closed = || JobsError::Unavailable("the tokenizer pool has stopped".into());
        let mut ids = match text.pool.encode(good, self.truncate).await {
            Ok(ids) => ids.into_iter().map(Ok).collect::<Vec<_>>().into_iter(),
            Err(PreprocessError::Closed) => return Err(closed()),
            Err(_) => {
                let mut each = Vec::new();
                for t in texts.iter().filter_map(|t| t.as_ref().ok()) {
                    each.push(
                        match text
                            .pool
                            .encode([t].into_iter().collect(), self.truncate)
                            .await
                        {
                            Ok(mut v) => Ok(v.remove(0)),
                            Err(PreprocessError::Closed) => return Err(closed()),
                            Err(e) => Err(refusal(e)),
                        },
                    );
                }
                each.into_iter()
            }
        };
        Ok(texts
            .iter()
            .map(|t| match t {
                Err(reason) => Err(reason.clone()),
                Ok(_) => ids
                    .next()
                    .expect("one result per good text. This is a bug."),
            })
            .collect())
    }
}

/// A tokenizer refusal, without the index of a one-text call.
fn refusal(e: PreprocessError) -> Reject {
    Reject::invalid(match e {
        PreprocessError::TooLong { tokens, max, .. } => format!(
            "text has {tokens} tokens, more than the model's maximum of {max} (truncation is off)"
        ),
        PreprocessError::Empty { .. } => "empty text".into(),
        PreprocessError::Tokenizer { message, .. } => format!("tokenizer failed: {message}"),
        e => e.to_string(),
    })
}

/// `v / |v|` in place (unchanged when |v| is 0), as the online doors normalise.
fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

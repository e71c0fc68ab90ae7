//! The inference core every front door shares: validate, submit to the model version's queue,
//! record metrics, and build the TEI-style timing headers.

use std::time::{Duration, Instant};

use axum::http::{HeaderName, HeaderValue};

use super::error::job_error;
use super::{ApiError, AppState};
use crate::batcher::{JobOutput, SubmitOptions, Timings};
use crate::preprocess::PreprocessError;
use crate::repository::{LoadedVersion, TextError, TextModel};
use crate::spec::validate_inputs;
use crate::telemetry::FailureReason;
use crate::tensor::{Tensor, TensorData};

/// A finished inference with its end-to-end time.
pub struct Inferred {
    pub output: JobOutput,
    pub total: Duration,
}

/// Validates `inputs` against the version's config and runs them through its queue.
pub async fn run(
    state: &AppState,
    lv: &LoadedVersion,
    inputs: Vec<Tensor>,
    opts: SubmitOptions,
) -> Result<Inferred, ApiError> {
    let start = Instant::now();
    if !state.is_accepting() {
        lv.metrics.record_failure(FailureReason::Other);
        return Err(ApiError::Unavailable(
            "server is shutting down or starting".into(),
        ));
    }
    let cfg = &lv.config;
    let max_rows = match &lv.text {
        Some(t) => t.max_client_batch_size,
        None => cfg.max_batch_size,
    };
    let rows = validate_inputs(&cfg.inputs, max_rows, &inputs).map_err(|e| {
        lv.metrics.record_failure(FailureReason::Invalid);
        ApiError::from(e)
    })?;
    if let Some(text) = &lv.text {
        let texts = texts_of(lv, inputs)?;
        let e = embed(lv, text, texts, true, text.normalize, opts).await?;
        let n = e.vectors.len();
        let dim = e.vectors.first().map_or(0, Vec::len);
        let flat = TensorData::F32(e.vectors.into_iter().flatten().collect());
        let output = JobOutput {
            outputs: vec![Tensor::new(cfg.outputs[0].name.clone(), vec![n, dim], flat)],
            timings: e.timings,
        };
        return Ok(Inferred {
            output,
            total: start.elapsed(),
        });
    }
    match lv.queue.submit(inputs, rows, opts).await {
        Ok(output) => {
            let total = start.elapsed();
            lv.metrics.record_success(total, &output.timings);
            Ok(Inferred { output, total })
        }
        Err(e) => {
            let (err, reason) = job_error(e);
            lv.metrics.record_failure(reason);
            Err(err)
        }
    }
}

/// The texts of a text model's BYTES input (already validated), as UTF-8 strings.
fn texts_of(lv: &LoadedVersion, inputs: Vec<Tensor>) -> Result<Vec<String>, ApiError> {
    let Some(TensorData::Bytes(items)) = inputs.into_iter().next().map(|t| t.data) else {
        return Err(invalid(
            lv,
            ApiError::BadRequest("expected one BYTES input of texts".into()),
        ));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            String::from_utf8(b).map_err(|_| {
                invalid(
                    lv,
                    ApiError::BadRequest(format!("input text {i} is not valid UTF-8")),
                )
            })
        })
        .collect()
}

/// Embeddings of texts, in order, with the request's token count and stage times.
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: usize,
    pub timings: Timings,
    pub tokenize: Duration,
}

/// Embeds texts through the version's text path (`TextModel::run`: tokenize off the device
/// threads, one job per text), normalising on request. Records the request's metrics.
pub async fn embed(
    lv: &LoadedVersion,
    text: &TextModel,
    texts: Vec<String>,
    truncate: bool,
    normalize: bool,
    opts: SubmitOptions,
) -> Result<Embedded, ApiError> {
    let start = Instant::now();
    let fail = |reason, e: ApiError| {
        lv.metrics.record_failure(reason);
        e
    };
    if texts.is_empty() {
        return Err(fail(
            FailureReason::Invalid,
            ApiError::BadRequest("no input text given".into()),
        ));
    }
    if texts.len() > text.max_client_batch_size {
        return Err(fail(
            FailureReason::Invalid,
            ApiError::TooLarge(format!(
                "{} inputs is more than this model's max_client_batch_size of {}",
                texts.len(),
                text.max_client_batch_size
            )),
        ));
    }
    let run = text
        .run(&lv.queue, texts, truncate, opts)
        .await
        .map_err(|e| match e {
            TextError::Preprocess(e @ PreprocessError::TooLong { .. }) => {
                fail(FailureReason::Invalid, ApiError::TooLarge(e.to_string()))
            }
            TextError::Preprocess(e @ PreprocessError::Closed) => {
                fail(FailureReason::Other, ApiError::Unavailable(e.to_string()))
            }
            TextError::Preprocess(e) => {
                fail(FailureReason::Invalid, ApiError::BadRequest(e.to_string()))
            }
            TextError::Job(e) => {
                let (err, reason) = job_error(e);
                fail(reason, err)
            }
        })?;
    let mut vectors = Vec::with_capacity(run.outputs.len());
    for out in run.outputs {
        let Some(TensorData::F32(v)) = out.into_iter().next().map(|t| t.data) else {
            return Err(fail(
                FailureReason::Backend,
                ApiError::internal(format!("model '{}' returned no FP32 embedding", lv.name)),
            ));
        };
        vectors.push(if normalize { l2_normalized(v) } else { v });
    }
    lv.metrics.record_success(start.elapsed(), &run.timings);
    Ok(Embedded {
        vectors,
        tokens: run.tokens,
        timings: run.timings,
        tokenize: run.tokenize,
    })
}

/// `v / |v|` (unchanged when |v| is 0).
pub fn l2_normalized(mut v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// Marks `resp` as served by `lv` (the access log reads it).
pub fn served(lv: &LoadedVersion, mut resp: axum::response::Response) -> axum::response::Response {
    resp.extensions_mut().insert(super::Served {
        model: lv.name.clone(),
        version: lv.version,
    });
    resp
}

/// Records an invalid request against a model version (decode failures before `run`).
pub fn invalid(lv: &LoadedVersion, e: impl Into<ApiError>) -> ApiError {
    lv.metrics.record_failure(FailureReason::Invalid);
    e.into()
}

/// Milliseconds with microsecond precision ("1.234"), without float formatting on the hot path.
pub(crate) fn ms(d: Duration) -> HeaderValue {
    let us = d.as_micros();
    HeaderValue::from_str(&format!("{}.{:03}", us / 1000, us % 1000))
        .expect("a number is a valid header value. This is a bug.")
}

/// `x-queue-time`, `x-inference-time`, `x-total-time`, in milliseconds (as TEI).
pub fn timing_headers(r: &Inferred) -> [(HeaderName, HeaderValue); 3] {
    let t = &r.output.timings;
    [
        (HeaderName::from_static("x-queue-time"), ms(t.queue)),
        (
            HeaderName::from_static("x-inference-time"),
            ms(t.compute_input + t.compute_infer + t.compute_output),
        ),
        (HeaderName::from_static("x-total-time"), ms(r.total)),
    ]
}

/// Parses a version path segment.
pub fn parse_version(model: &str, v: &str) -> Result<u64, ApiError> {
    v.parse()
        .map_err(|_| ApiError::NotFound(format!("model '{model}' has no version '{v}'")))
}

/// The outputs a request asked for, in order: name, binary form, classification count.
pub struct PickedOutputs {
    pub names: Vec<String>,
    pub binary: Vec<bool>,
    pub classes: Vec<Option<usize>>,
}

/// Checks the requested outputs against the version's declared ones (every output when none is
/// named) before anything runs: unknown names, classification of a non-numeric output or k = 0.
pub fn select_outputs(
    lv: &LoadedVersion,
    req: &crate::protocol::kserve_v2::V2Request,
) -> Result<PickedOutputs, ApiError> {
    let declared = &lv.config.outputs;
    if req.outputs.is_empty() {
        return Ok(PickedOutputs {
            names: declared.iter().map(|o| o.name.clone()).collect(),
            binary: vec![req.binary_output; declared.len()],
            classes: vec![None; declared.len()],
        });
    }
    let mut p = PickedOutputs {
        names: Vec::new(),
        binary: Vec::new(),
        classes: Vec::new(),
    };
    for o in &req.outputs {
        let Some(spec) = declared.iter().find(|d| d.name == o.name) else {
            return Err(ApiError::BadRequest(format!(
                "unknown output '{}', model '{}' has outputs {:?}",
                o.name,
                lv.name,
                declared.iter().map(|d| &d.name).collect::<Vec<_>>()
            )));
        };
        if let Some(k) = o.classification {
            let numeric = !matches!(
                spec.datatype,
                crate::tensor::DataType::Bytes | crate::tensor::DataType::Bool
            );
            if k == 0 || !numeric {
                return Err(ApiError::BadRequest(format!(
                    "output '{}': classification needs a count of at least 1 on a numeric \
                     output (got {k} on {})",
                    o.name, spec.datatype
                )));
            }
        }
        p.names.push(o.name.clone());
        p.binary.push(o.binary.unwrap_or(req.binary_output));
        p.classes.push(o.classification);
    }
    Ok(p)
}

/// The picked outputs out of a finished inference, classified where asked (top k on the host,
/// over the raw values).
pub fn pick_outputs(
    lv: &LoadedVersion,
    picked: &PickedOutputs,
    outputs: &[Tensor],
) -> Result<Vec<Tensor>, ApiError> {
    let batched = lv.config.max_batch_size > 0;
    picked
        .names
        .iter()
        .zip(&picked.classes)
        .filter_map(|(n, k)| outputs.iter().find(|t| &t.name == n).map(|t| (t, k)))
        .map(|(t, k)| match k {
            None => Ok(t.clone()),
            Some(k) => crate::protocol::classification::top_k(
                t,
                *k,
                batched,
                lv.labels.as_deref().map(Vec::as_slice),
            )
            .map_err(ApiError::from),
        })
        .collect()
}

/// A model's configuration in Triton's shape (HTTP `/config` and gRPC `ModelConfig`).
pub fn triton_config(
    state: &AppState,
    model: &str,
) -> Result<crate::protocol::grpc::pb::ModelConfig, ApiError> {
    let c = state.repo.config(model)?;
    let labels = state
        .repo
        .root()
        .join(model)
        .join(crate::repository::LABELS_FILE)
        .is_file();
    Ok(crate::protocol::grpc::triton_config(model, &c, labels))
}

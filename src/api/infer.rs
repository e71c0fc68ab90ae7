//! The inference core every front door shares: validate, look the response cache up (once the
//! serving version is known), submit to the model version's queue, fill the cache, record metrics,
//! and build the TEI-style timing headers.

use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;

use super::error::job_error;
use super::{ApiError, AppState};
use crate::auth::Principal;
use crate::batcher::{JobOutput, SubmitOptions, Timings};
use crate::cache::{self, CacheStatus, Partition, TextOptions};
use crate::monitor::Sample;
use crate::preprocess::PreprocessError;
use crate::repository::{LoadedVersion, TextError, TextModel};
use crate::spec::validate_inputs;
use crate::telemetry::FailureReason;
use crate::tensor::{Tensor, TensorData, Texts};

/// A finished inference with its end-to-end time and what the cache did.
pub struct Inferred {
    pub output: JobOutput,
    pub total: Duration,
    pub cache: Option<CacheStatus>,
    /// What the version's monitor gets once the door answered (`tap`); `None` when unmonitored.
    pub sample: Option<Sample>,
}

/// Whether a request reads and fills its version's response cache, and under which partition:
/// `None` when the version has no cache or the request asks for none (`Cache-Control: no-cache`
/// or `no-store`, KServe v2 `parameters.cache = false`). Called once the serving version is known
/// (a version router slots in before it). Shadow copies and bulk jobs (not built yet) must pass
/// `None` here: they neither read nor fill the cache.
pub fn cache_use(
    lv: &LoadedVersion,
    headers: &HeaderMap,
    principal: Option<&Principal>,
    asked: Option<bool>,
) -> Option<Partition> {
    let c = lv.cache.as_ref()?;
    let no_cache = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| {
            let d = d.trim();
            d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store")
        });
    if no_cache || asked == Some(false) {
        return None;
    }
    Some(c.partition(principal.map(|p| p.name.as_str())))
}

/// Validates `inputs` against the version's config and runs them through its queue (a tensor
/// model's request is one cache entry; a text model's texts are one entry each).
pub async fn run(
    state: &AppState,
    lv: &LoadedVersion,
    inputs: Vec<Tensor>,
    opts: SubmitOptions,
    cache: Option<Partition>,
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
        let req = EmbedRequest {
            texts,
            truncate: true,
            normalize: text.normalize,
            dimensions: None,
            opts,
            cache,
        };
        let e = embed(lv, text, req).await?;
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
            cache: e.cache,
            sample: e.sample,
        });
    }
    // Live traffic only: the rows are copied here (when sampled) and handed over by `tap`.
    let capture = lv.monitor.as_ref().map(|m| m.capture(&inputs));
    let finish = |capture: Option<crate::monitor::Capture>, outputs: &[Tensor]| {
        let m = lv.monitor.as_ref()?;
        m.finish(capture?, rows, outputs)
    };
    // A tensor request is one entry (Triton's semantics).
    let mut cached = None;
    if let (Some(c), Some(p)) = (&lv.cache, &cache) {
        let key = cache::key::tensor_key(c.fingerprint(), p, &inputs);
        let mut lookup = c.get_many(&[key]).await;
        let hit = lookup.values[0]
            .as_deref()
            .and_then(cache::value::decode_tensors);
        if let Some(outputs) = hit {
            c.fill(&lookup, Vec::new());
            let output = JobOutput {
                outputs,
                timings: Timings::default(),
            };
            let total = start.elapsed();
            lv.metrics.record_success(total, &output.timings);
            return Ok(Inferred {
                sample: finish(capture, &output.outputs),
                output,
                total,
                cache: Some(CacheStatus::Hit),
            });
        }
        lookup.values[0] = None;
        cached = Some((c, key, lookup));
    }
    match lv.queue.submit(inputs, rows, opts).await {
        Ok(output) => {
            if let Some((c, key, lookup)) = &cached {
                let value = cache::value::encode_tensors(&output.outputs);
                c.fill(lookup, vec![(*key, value)]);
            }
            let total = start.elapsed();
            lv.metrics.record_success(total, &output.timings);
            Ok(Inferred {
                sample: finish(capture, &output.outputs),
                output,
                total,
                cache: cached.map(|_| CacheStatus::Miss),
            })
        }
        Err(e) => {
            let (err, reason) = job_error(e);
            lv.metrics.record_failure(reason);
            Err(err)
        }
    }
}

/// The texts of a text model's BYTES input (already validated), checked to be UTF-8 (the same
/// buffer, read as text).
fn texts_of(lv: &LoadedVersion, inputs: Vec<Tensor>) -> Result<Texts, ApiError> {
    let Some(TensorData::Bytes(items)) = inputs.into_iter().next().map(|t| t.data) else {
        return Err(invalid(
            lv,
            ApiError::BadRequest("expected one BYTES input of texts".into()),
        ));
    };
    Texts::new(items).map_err(|i| {
        invalid(
            lv,
            ApiError::BadRequest(format!("input text {i} is not valid UTF-8")),
        )
    })
}

/// Embeddings of texts, in order, with the request's token count, stage times (of the texts
/// computed; zero when all were cached) and what the cache did.
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    /// Each vector as JSON array text, where the cache gave it or its fill made it (empty when
    /// the request did not use the cache): the JSON doors copy it instead of formatting floats.
    pub json: Vec<Option<Bytes>>,
    pub tokens: usize,
    pub timings: Timings,
    pub tokenize: Duration,
    pub cache: Option<CacheStatus>,
    /// For the version's monitor (`tap`), when monitored and sampled.
    pub sample: Option<Sample>,
}

/// What to embed and how.
pub struct EmbedRequest {
    pub texts: Texts,
    /// Cut texts at the model's limit (else a text over it is a 413).
    pub truncate: bool,
    pub normalize: bool,
    /// Keep the first `dimensions` values (renormalised when `normalize`).
    pub dimensions: Option<usize>,
    pub opts: SubmitOptions,
    /// The cache partition, or `None` to bypass the cache (see `cache_use`).
    pub cache: Option<Partition>,
}

/// Embeds texts through the version's text path (`TextModel::run`: tokenize off the device
/// threads, one job per text), normalising on request. With the cache on, each text is its own
/// entry: only the texts not cached are computed (together, as one request), and the vectors are
/// reassembled in order. Records the request's metrics.
pub async fn embed(
    lv: &LoadedVersion,
    text: &TextModel,
    req: EmbedRequest,
) -> Result<Embedded, ApiError> {
    let start = Instant::now();
    let fail = |reason, e: ApiError| {
        lv.metrics.record_failure(reason);
        e
    };
    let n = req.texts.len();
    if n == 0 {
        return Err(fail(
            FailureReason::Invalid,
            ApiError::BadRequest("no input text given".into()),
        ));
    }
    if n > text.max_client_batch_size {
        return Err(fail(
            FailureReason::Invalid,
            ApiError::TooLarge(format!(
                "{n} inputs is more than this model's max_client_batch_size of {}",
                text.max_client_batch_size
            )),
        ));
    }
    let topts = TextOptions {
        truncate: req.truncate,
        normalize: req.normalize,
        dimensions: req.dimensions,
    };
    // Per text: its tokens, final vector and (cache on) JSON text, once known.
    let mut slots: Vec<Option<cache::value::Embedding>> = vec![None; n];
    let mut cached = None;
    if let (Some(c), Some(p)) = (&lv.cache, &req.cache) {
        let keys: Vec<cache::Key> = req
            .texts
            .iter()
            .map(|t| cache::key::text_key(c.fingerprint(), p, t.as_bytes(), topts))
            .collect();
        let mut lookup = c.get_many(&keys).await;
        for (slot, v) in slots.iter_mut().zip(lookup.values.iter_mut()) {
            *slot = v.as_ref().and_then(cache::value::decode_embedding);
            if slot.is_none() {
                *v = None;
            }
        }
        cached = Some((c, keys, lookup));
    }
    let missing: Vec<usize> = (0..n).filter(|&i| slots[i].is_none()).collect();
    // All of them (the same buffer) or the ones not cached, copied together.
    let todo = if missing.len() == n {
        req.texts
    } else {
        missing.iter().map(|&i| &req.texts[i]).collect()
    };
    let (mut timings, mut tokenize) = (Timings::default(), Duration::ZERO);
    if !todo.is_empty() {
        let run = text
            .run(&lv.queue, todo, req.truncate, req.opts)
            .await
            .map_err(|e| text_error(e, &fail))?;
        (timings, tokenize) = (run.timings, run.tokenize);
        let mut fills = Vec::new();
        for ((&i, out), tokens) in missing.iter().zip(run.outputs).zip(run.token_counts) {
            let Some(TensorData::F32(v)) = out.into_iter().next().map(|t| t.data) else {
                return Err(fail(
                    FailureReason::Backend,
                    ApiError::internal(format!("model '{}' returned no FP32 embedding", lv.name)),
                ));
            };
            let v = if req.normalize { l2_normalized(v) } else { v };
            let v = dimensions(v, req.dimensions, req.normalize)
                .map_err(|e| fail(FailureReason::Invalid, e))?;
            let mut json = None;
            if let Some((_, keys, _)) = &cached {
                let (value, text) = cache::value::encode_embedding(tokens, &v);
                fills.push((keys[i], value));
                json = Some(text);
            }
            slots[i] = Some(cache::value::Embedding {
                tokens,
                vector: v,
                json,
            });
        }
        if let Some((c, _, lookup)) = &cached {
            c.fill(lookup, fills);
        }
    } else if let Some((c, _, lookup)) = &cached {
        c.fill(lookup, Vec::new());
    }
    let status = cached.map(|_| CacheStatus::of(n - missing.len(), n));
    let mut tokens = 0;
    let mut counts = Vec::new();
    let mut json = Vec::new();
    let vectors: Vec<Vec<f32>> = slots
        .into_iter()
        .map(|s| {
            let e = s.expect("every text was cached or computed. This is a bug.");
            tokens += e.tokens;
            if lv.monitor.is_some() {
                counts.push(e.tokens as u32);
            }
            if status.is_some() {
                json.push(e.json);
            }
            e.vector
        })
        .collect();
    lv.metrics.record_success(start.elapsed(), &timings);
    let sample = lv
        .monitor
        .as_ref()
        .and_then(|m| m.text_sample(&counts, &vectors));
    Ok(Embedded {
        vectors,
        json,
        tokens,
        timings,
        tokenize,
        cache: status,
        sample,
    })
}

fn text_error(e: TextError, fail: &impl Fn(FailureReason, ApiError) -> ApiError) -> ApiError {
    match e {
        TextError::Preprocess(e @ PreprocessError::TooLong { .. }) => {
            fail(FailureReason::Invalid, ApiError::TooLarge(e.to_string()))
        }
        TextError::Preprocess(e @ PreprocessError::Closed) => {
            fail(FailureReason::Other, ApiError::Unavailable(e.to_string()))
        }
        TextError::Preprocess(e @ PreprocessError::Busy { .. }) => {
            fail(FailureReason::Rejected, ApiError::Overloaded(e.to_string()))
        }
        TextError::Preprocess(e @ PreprocessError::Timeout) => {
            fail(FailureReason::Timeout, ApiError::Unavailable(e.to_string()))
        }
        TextError::Preprocess(e) => {
            fail(FailureReason::Invalid, ApiError::BadRequest(e.to_string()))
        }
        TextError::Job(e) => {
            let (err, reason) = job_error(e);
            fail(reason, err)
        }
    }
}

/// Keeps the first `dims` values of a vector (renormalised when `normalize`).
fn dimensions(mut v: Vec<f32>, dims: Option<usize>, normalize: bool) -> Result<Vec<f32>, ApiError> {
    let Some(d) = dims else { return Ok(v) };
    let full = v.len();
    if d == 0 || d > full {
        return Err(ApiError::BadRequest(format!(
            "'dimensions' must be within 1..={full}, got {d}"
        )));
    }
    v.truncate(d);
    Ok(if normalize { l2_normalized(v) } else { v })
}

pub use crate::tensor::l2_normalized;

/// Marks `resp` as served by `lv` (the access log reads it), with `x-ferrite-cache: hit|miss|partial`
/// when the request went through the cache.
pub fn served(
    lv: &LoadedVersion,
    cache: Option<CacheStatus>,
    mut resp: axum::response::Response,
) -> axum::response::Response {
    if let Some(c) = cache {
        resp.headers_mut().insert(
            HeaderName::from_static("x-ferrite-cache"),
            HeaderValue::from_static(c.as_str()),
        );
    }
    resp.headers_mut().insert(
        HeaderName::from_static(VERSION_HEADER),
        HeaderValue::from(lv.version),
    );
    resp.extensions_mut().insert(super::Served {
        model: lv.name.clone(),
        version: lv.version,
    });
    resp
}

/// The version that served a request, on every inference door.
pub const VERSION_HEADER: &str = "x-ferrite-model-version";
/// A request's routing key: the same key gets the same version for a given split.
pub const ROUTING_KEY_HEADER: &str = "x-ferrite-routing-key";

/// The routing key a request carries (header `x-ferrite-routing-key`), if any.
pub fn routing_key(headers: &HeaderMap) -> Option<&[u8]> {
    headers
        .get(ROUTING_KEY_HEADER)
        .map(|v| v.as_bytes())
        .filter(|k| !k.is_empty())
}

/// What a shadow copy of these (not yet validated) inputs runs: texts for a text model, the
/// tensors otherwise; `None` when they cannot be copied meaningfully (the live run reports why).
pub fn shadow_input(lv: &LoadedVersion, inputs: &[Tensor]) -> Option<super::shadow::ShadowInput> {
    use super::shadow::ShadowInput;
    if lv.text.is_some() {
        let TensorData::Bytes(items) = &inputs.first()?.data else {
            return None;
        };
        return Texts::new(items.clone()).ok().map(ShadowInput::Texts);
    }
    let rows = if lv.config.max_batch_size > 0 {
        *inputs.first()?.shape.first()?
    } else {
        1
    };
    Some(ShadowInput::Tensors {
        inputs: inputs.to_vec(),
        rows,
    })
}

/// Mirrors a finished request to the shadow candidate (when the router chose one).
pub fn mirror(
    state: &AppState,
    lv: &LoadedVersion,
    shadow: Option<(crate::repository::ShadowPlan, super::shadow::ShadowInput)>,
    live: impl FnOnce() -> Option<super::shadow::LiveOutput>,
) {
    let Some((plan, input)) = shadow else { return };
    if let Some(out) = live() {
        super::shadow::spawn(state.repo.rollout_metrics(), lv, plan, input, out);
    }
}

/// The monitor tap: hands a live request's sample to its version's monitor (a `try_send`; never
/// waits). Called by the doors once the answer is ready, with the id feedback will name (the KServe
/// body `id`, else the request's `x-request-id`). Shadow copies, bulk jobs and validation runs do
/// not call it.
pub fn tap(lv: &LoadedVersion, sample: Option<Sample>, id: Option<&str>) {
    if let (Some(m), Some(s)) = (&lv.monitor, sample) {
        let id = match id.filter(|id| !id.is_empty()) {
            Some(id) => id.into(),
            None => super::request_id().into_boxed_str(),
        };
        m.send(s, Some(id));
    }
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

//! Models: the synchronous `Model` trait that workers call with a (ragged) batch, in two halves
//! (`stage`: check, gather and copy the inputs to the device; `compute`: run and copy the outputs
//! back) so that a worker can stage batch N+1 while batch N computes; and `load`, which builds the
//! architecture a spec names from a narrow `LoadOptions`. A model that takes text says so through
//! `Model::text_input` (its input name, positions and tokenizer): nothing outside this module names
//! an architecture's internals. One file per architecture. No HTTP, no queues here.

mod attention;
pub mod bert;
pub mod debug;
pub mod mlp;

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::device::Transfer;
use crate::quant::{Path as PrecisionPath, WeightOptions};
use crate::spec::{Architecture, ModelConfig, Precision, QuantFormat, TensorSpec};
use crate::tensor::{Tensor, TensorError};

/// What an architecture needs from a model's spec to load: a narrow view of `spec::ModelConfig`
/// (batching, placement, versions and metadata are not the model's business).
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions<'a> {
    pub inputs: &'a [TensorSpec],
    pub outputs: &'a [TensorSpec],
    /// Quantize dense weights while loading (versions already quantized load as they are).
    pub quantization: Option<QuantFormat>,
    /// The config's `precision` (see `quant::resolve`).
    pub precision: Precision,
    pub architecture: Architecture,
    /// The bf16 kernel when the path is bf16 (`None`: the fastest the CPU runs); tests and
    /// measurements pin one.
    pub bf16_kernel: Option<crate::ops::Bf16Kernel>,
    /// On CUDA, run through the custom kernels (see `ModelConfig::cuda_fused_ops`).
    pub cuda_fused_ops: bool,
    /// The config's `[parameters]` table (architecture-specific settings).
    pub parameters: &'a toml::Table,
    /// The config's `float_layers` (`None`: the architecture's default, see `float_layers`).
    pub float_layers: Option<&'a [String]>,
}

impl<'a> LoadOptions<'a> {
    pub fn from_config(config: &'a ModelConfig) -> LoadOptions<'a> {
        LoadOptions {
            inputs: &config.inputs,
            outputs: &config.outputs,
            quantization: config.quantization,
            precision: config.precision,
            architecture: config.architecture,
            bf16_kernel: None,
            cuda_fused_ops: config.cuda_fused_ops,
            parameters: &config.parameters,
            float_layers: config.float_layers.as_deref(),
        }
    }

    /// How the linear layers keep their weights on `device` (`quant::resolve`).
    pub fn weights(&self, device: &candle_core::Device) -> WeightOptions {
        let path = match crate::quant::resolve_parts(
            self.quantization,
            self.precision,
            self.architecture,
            device.is_cpu(),
        ) {
            PrecisionPath::Bf16(detected) => {
                PrecisionPath::Bf16(self.bf16_kernel.unwrap_or(detected))
            }
            other => other,
        };
        WeightOptions::for_path(path, self.cuda_fused_ops)
    }
}

/// The layers (weight names without `.weight`, matched as suffixes) that stay in floating point
/// when a model of `architecture` is quantized to q8: `configured` when the config sets
/// `float_layers`, else the architecture's default. For bert, the attention values and the first
/// FFN layer: measured on MiniLM against sentence-transformers (64 fixture sentences, AMX int8,
/// benches/RESULTS.md issue 20), every layer int8 gives min cosine 0.9949 (mean 0.9973); values in
/// bf16 0.9974 (0.9987); values and the first FFN layer 0.9986 (0.9993); other single layers
/// (queries and keys, attention output, second FFN layer) move it by under 0.001.
pub fn float_layers(architecture: Architecture, configured: Option<&[String]>) -> Vec<String> {
    match (configured, architecture) {
        (Some(c), _) => c.to_vec(),
        (None, Architecture::Bert) => vec![
            "attention.self.value".to_string(),
            "intermediate.dense".to_string(),
        ],
        (None, _) => Vec::new(),
    }
}

/// The text-input contract of a model that embeds text: the caller tokenizes each text with
/// `tokenizer` (right-truncating or refusing at the limit) and submits one job per text holding
/// `input` as I64 `[1, tokens]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextSpec {
    /// The input name each job carries (token ids).
    pub input: String,
    /// Most tokens per text the model can take, special tokens included.
    pub max_positions: usize,
    /// The tokenizer file (Hugging Face `tokenizer.json`).
    pub tokenizer: PathBuf,
}

/// Where the worker's batch spent its compute time (Triton's compute input / infer / output split).
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimings {
    pub input: Duration,
    pub infer: Duration,
    pub output: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {message}")]
    Load { path: String, message: String },
    #[error("parameter '{name}': {message}")]
    Parameter { name: String, message: String },
    #[error("{0}")]
    Tensor(#[from] TensorError),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Failed(String),
}

/// A batch's inputs as `Model::stage` left them (on the model's device), for `Model::compute`.
/// Each architecture stages its own type.
pub struct Staged(Box<dyn Any + Send>);

impl Staged {
    pub fn new<T: Send + 'static>(inputs: T) -> Staged {
        Staged(Box::new(inputs))
    }

    /// The staged value, if it is a `T`.
    pub fn take<T: 'static>(self) -> Result<T, ModelError> {
        self.0.downcast().map(|b| *b).map_err(|_| {
            ModelError::Failed("internal error: inputs staged by another model".into())
        })
    }
}

/// A loaded model version on one device. Instances on the same device share one `Arc<dyn Model>`;
/// each worker brings its own `Transfer` (pinned host buffers on a GPU).
pub trait Model: Send + Sync {
    /// The device the weights live on.
    fn device(&self) -> &candle_core::Device;

    /// First half of a batch: checks the requests' inputs (`batch[i]` holds request i's validated
    /// inputs), gathers them and copies them to the device through `xfer`. A worker with prefetch
    /// runs this on its staging thread for batch N+1 while batch N computes, so it must not touch
    /// anything `compute` of another batch mutates.
    fn stage(&self, batch: &[&[Tensor]], xfer: &mut Transfer) -> Result<Staged, ModelError>;

    /// Second half: runs a staged batch and copies the outputs back to the host. Result i holds
    /// request i's outputs (every declared output, in config order). Sets `timings.infer` and
    /// `timings.output`.
    fn compute(
        &self,
        staged: Staged,
        xfer: &mut Transfer,
        timings: &mut StageTimings,
    ) -> Result<Vec<Vec<Tensor>>, ModelError>;

    /// Both halves on the calling thread, with a fresh `Transfer` (tests, tools; workers keep theirs).
    fn forward(
        &self,
        batch: &[&[Tensor]],
        timings: &mut StageTimings,
    ) -> Result<Vec<Vec<Tensor>>, ModelError> {
        let mut xfer = Transfer::new(self.device());
        let t0 = Instant::now();
        let staged = self.stage(batch, &mut xfer)?;
        timings.input = t0.elapsed();
        self.compute(staged, &mut xfer, timings)
    }

    /// `Some` for a model that takes text (see `TextSpec`); `None` for tensor models.
    fn text_input(&self) -> Option<TextSpec> {
        None
    }

    /// Whether a batch of sequences runs padded to its longest (it then costs rows x longest) or
    /// packed without padding (it costs its real tokens). The batcher's token budget and the
    /// padding metric follow it, per instance (as TEI's backends declare `padded_model`). Defaults
    /// to padded: the conservative budget.
    fn is_padded(&self) -> bool {
        true
    }

    /// What the linear layers run in, as loaded (reported in metadata and metrics, and part of
    /// the response cache's fingerprint). Models without weights say f32.
    fn precision(&self) -> PrecisionPath {
        PrecisionPath::F32
    }
}

/// Instances on one GPU share the model's candle `CudaDevice` and with it one cuBLAS handle, which
/// cuBLAS does not allow two host threads to use at once (its workspace is shared): their `compute`
/// calls take turns here. Staging (uploads through each worker's own pinned buffers) still overlaps.
/// Not used on the CPU, where instances compute in parallel.
pub struct SerialCompute {
    inner: Arc<dyn Model>,
    turn: std::sync::Mutex<()>,
}

impl SerialCompute {
    pub fn new(inner: Arc<dyn Model>) -> SerialCompute {
        SerialCompute {
            inner,
            turn: std::sync::Mutex::new(()),
        }
    }
}

impl Model for SerialCompute {
    fn device(&self) -> &candle_core::Device {
        self.inner.device()
    }

    fn stage(&self, batch: &[&[Tensor]], xfer: &mut Transfer) -> Result<Staged, ModelError> {
        self.inner.stage(batch, xfer)
    }

    fn compute(
        &self,
        staged: Staged,
        xfer: &mut Transfer,
        timings: &mut StageTimings,
    ) -> Result<Vec<Vec<Tensor>>, ModelError> {
        // A compute that panicked (the worker catches it) leaves the lock poisoned, not broken.
        let _turn = self.turn.lock().unwrap_or_else(|p| p.into_inner());
        self.inner.compute(staged, xfer, timings)
    }

    fn text_input(&self) -> Option<TextSpec> {
        self.inner.text_input()
    }

    fn is_padded(&self) -> bool {
        self.inner.is_padded()
    }

    fn precision(&self) -> PrecisionPath {
        self.inner.precision()
    }
}

/// Builds `architecture` from the files in `version_dir`, on `device`.
pub fn load(
    architecture: Architecture,
    options: &LoadOptions,
    version_dir: &Path,
    device: &candle_core::Device,
) -> Result<Arc<dyn Model>, ModelError> {
    Ok(match architecture {
        Architecture::Mlp => Arc::new(mlp::Mlp::load(options, version_dir, device)?),
        Architecture::Bert => Arc::new(bert::Bert::load(options, version_dir, device)?),
        Architecture::Debug => Arc::new(debug::DebugModel::load(options)?),
    })
}

/// Looks up request input `name` in each request of the batch.
pub(crate) fn gather_input<'a>(
    batch: &[&'a [Tensor]],
    name: &str,
) -> Result<Vec<&'a Tensor>, ModelError> {
    batch
        .iter()
        .map(|inputs| {
            inputs
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| ModelError::Failed(format!("input '{name}' missing from a request")))
        })
        .collect()
}

/// Reads an optional parameter from the config's `[parameters]` table.
pub fn param<T: serde::de::DeserializeOwned>(
    options: &LoadOptions,
    name: &str,
) -> Result<Option<T>, ModelError> {
    match options.parameters.get(name) {
        None => Ok(None),
        Some(v) => v
            .clone()
            .try_into()
            .map(Some)
            .map_err(|e| ModelError::Parameter {
                name: name.into(),
                message: e.to_string(),
            }),
    }
}

#[cfg(test)]
mod serial_compute_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Model, ModelError, SerialCompute, StageTimings, Staged};
    use crate::device::Transfer;
    use crate::tensor::Tensor;

    /// Records how many `compute` calls overlap; each takes 30 ms, and the first one panics.
    struct Probe {
        now: AtomicUsize,
        most: AtomicUsize,
        calls: AtomicUsize,
    }

    impl Model for Probe {
        fn device(&self) -> &candle_core::Device {
            &candle_core::Device::Cpu
        }
        fn stage(&self, _: &[&[Tensor]], _: &mut Transfer) -> Result<Staged, ModelError> {
            Ok(Staged::new(()))
        }
        fn compute(
            &self,
            _: Staged,
            _: &mut Transfer,
            _: &mut StageTimings,
        ) -> Result<Vec<Vec<Tensor>>, ModelError> {
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(n, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(30));
            self.now.fetch_sub(1, Ordering::SeqCst);
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("first compute fails");
            }
            Ok(Vec::new())
        }
    }

    fn run_four(model: Arc<dyn Model>) {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = model.clone();
                std::thread::spawn(move || {
                    let mut xfer = Transfer::new(m.device());
                    let staged = m.stage(&[], &mut xfer).unwrap();
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        m.compute(staged, &mut xfer, &mut StageTimings::default())
                    }));
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
    }

    #[test]
    fn serial_compute_takes_turns_and_survives_a_panic() {
        let probe = Arc::new(Probe {
            now: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
        });
        run_four(Arc::new(SerialCompute::new(probe.clone())));
        assert_eq!(
            probe.calls.load(Ordering::SeqCst),
            4,
            "all ran, after the panic too"
        );
        assert_eq!(probe.most.load(Ordering::SeqCst), 1, "computes overlapped");
        // Without the wrapper the same calls overlap (so the check above can fail).
        let bare = Arc::new(Probe {
            now: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
        });
        run_four(bare.clone());
        assert!(bare.most.load(Ordering::SeqCst) > 1);
    }
}

//! Models: the synchronous `Model` trait that workers call with a (ragged) batch, and `load`, which
//! builds the architecture a config names. One file per architecture. No HTTP, no queues here.

mod attention;
pub mod bert;
pub mod debug;
pub mod mlp;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::repository::config::ModelConfig;
use crate::tensor::{Tensor, TensorError};

/// Architectures a config may name.
pub const ARCHITECTURES: &[&str] = &["mlp", "bert", "debug"];

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
    #[error("unknown architecture '{0}'")]
    UnknownArchitecture(String),
    #[error("{0}")]
    Tensor(#[from] TensorError),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Failed(String),
}

/// A loaded model version on one device. Instances on the same device share one `Arc<dyn Model>`.
pub trait Model: Send + Sync {
    /// Runs one batch: `batch[i]` holds request i's validated inputs; the result holds request i's
    /// outputs at index i (every declared output, in config order).
    fn forward(
        &self,
        batch: &[&[Tensor]],
        timings: &mut StageTimings,
    ) -> Result<Vec<Vec<Tensor>>, ModelError>;
}

/// Builds the model a config describes from the files in `version_dir`, on `device`.
pub fn load(
    config: &ModelConfig,
    version_dir: &Path,
    device: &candle_core::Device,
) -> Result<Arc<dyn Model>, ModelError> {
    match config.architecture.as_str() {
        "mlp" => Ok(Arc::new(mlp::Mlp::load(config, version_dir, device)?)),
        "bert" => Ok(Arc::new(bert::Bert::load(config, version_dir, device)?)),
        "debug" => Ok(Arc::new(debug::DebugModel::load(config)?)),
        other => Err(ModelError::UnknownArchitecture(other.into())),
    }
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
pub(crate) fn param<T: serde::de::DeserializeOwned>(
    config: &ModelConfig,
    name: &str,
) -> Result<Option<T>, ModelError> {
    match config.parameters.get(name) {
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

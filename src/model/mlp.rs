//! Architecture `mlp`: input normalisation `(x - norm.mean) / norm.std`, then `layers.{i}` linear
//! layers with ReLU between them and softmax at the end. Weights come from `model.safetensors`
//! (names: `norm.mean`, `norm.std`, `layers.{i}.weight` [out, in] (or quantized, see `quant`),
//! `layers.{i}.bias` [out]).

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor as CT, D};

use super::{gather_input, Model, ModelError, StageTimings, Staged};
use crate::device::Transfer;
use crate::quant::Linear;
use crate::repository::config::ModelConfig;
use crate::tensor::{Tensor, TensorData};

pub struct Mlp {
    device: Device,
    input: String,
    output: String,
    mean: CT,
    std: CT,
    layers: Vec<Linear>,
}

impl Mlp {
    pub fn load(config: &ModelConfig, dir: &Path, device: &Device) -> Result<Mlp, ModelError> {
        let path = dir.join("model.safetensors");
        let load_err = |message: String| ModelError::Load {
            path: path.display().to_string(),
            message,
        };
        let mut w =
            candle_core::safetensors::load(&path, device).map_err(|e| load_err(e.to_string()))?;
        let mut take = |name: &str| {
            w.remove(name)
                .ok_or_else(|| load_err(format!("tensor '{name}' is missing")))
                .and_then(|t| t.to_dtype(DType::F32).map_err(|e| load_err(e.to_string())))
        };
        let mean = take("norm.mean")?;
        let std = take("norm.std")?;
        let mut layers = Vec::new();
        loop {
            let prefix = format!("layers.{}", layers.len());
            let present = ["weight", "weight.q8", "weight.q4"]
                .iter()
                .any(|s| w.contains_key(&format!("{prefix}.{s}")));
            if !present {
                break;
            }
            layers.push(
                Linear::load(&mut w, &prefix, device, config.quantization)
                    .map_err(|e| load_err(e.to_string()))?,
            );
        }
        if layers.is_empty() {
            return Err(load_err("no 'layers.0.weight' tensor".into()));
        }
        let (input, output) = match (config.inputs.as_slice(), config.outputs.as_slice()) {
            ([i], [o]) => (i.name.clone(), o.name.clone()),
            _ => {
                return Err(load_err(
                    "mlp takes exactly one input and one output".into(),
                ))
            }
        };
        Ok(Mlp {
            device: device.clone(),
            input,
            output,
            mean,
            std,
            layers,
        })
    }
}

/// An MLP batch on the device: the rows of every request, and how many each brought.
struct MlpStaged {
    x: CT,
    rows: Vec<usize>,
}

impl Model for Mlp {
    fn device(&self) -> &Device {
        &self.device
    }

    fn stage(&self, batch: &[&[Tensor]], xfer: &mut Transfer) -> Result<Staged, ModelError> {
        let parts = gather_input(batch, &self.input)?;
        let rows: Vec<usize> = parts.iter().map(|t| t.rows()).collect();
        let x = Tensor::concat_rows(&parts)?;
        let x = match x.data {
            TensorData::F32(v) => xfer.upload(v, x.shape.as_slice())?,
            _ => x.to_candle(&self.device)?,
        };
        Ok(Staged::new(MlpStaged { x, rows }))
    }

    fn compute(
        &self,
        staged: Staged,
        xfer: &mut Transfer,
        timings: &mut StageTimings,
    ) -> Result<Vec<Vec<Tensor>>, ModelError> {
        let MlpStaged { x, rows } = staged.take()?;
        let t1 = Instant::now();
        let mut z = x.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?;
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            z = layer.forward(&z)?;
            if i < last {
                z = z.relu()?;
            }
        }
        let max = z.max_keepdim(D::Minus1)?;
        let e = z.broadcast_sub(&max)?.exp()?;
        let probs = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
        let t2 = Instant::now();
        let out = xfer.download(&self.output, &probs)?.split_rows(&rows)?;
        timings.infer = t2 - t1;
        timings.output = t2.elapsed();
        Ok(out.into_iter().map(|t| vec![t]).collect())
    }
}

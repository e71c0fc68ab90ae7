//! Architecture `mlp`: input normalisation `(x - norm.mean) / norm.std`, then `layers.{i}` linear
//! layers with ReLU between them and softmax at the end. Weights come from `model.safetensors`
//! (names: `norm.mean`, `norm.std`, `layers.{i}.weight` [out, in] (or quantized, see `quant`),
//! `layers.{i}.bias` [out]).

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor as CT, D};

use super::{gather_input, LoadOptions, Model, ModelError, StageTimings, Staged};
use crate::device::Transfer;
use crate::quant::Linear;
use crate::tensor::{DataType, Tensor, TensorData};

pub struct Mlp {
    device: Device,
    input: String,
    output: String,
    mean: CT,
    std: CT,
    layers: Vec<Linear>,
}

impl Mlp {
    pub fn load(config: &LoadOptions, dir: &Path, device: &Device) -> Result<Mlp, ModelError> {
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
                Linear::load(&mut w, &prefix, device, &config.weights(device))
                    .map_err(|e| load_err(e.to_string()))?,
            );
        }
        if layers.is_empty() {
            return Err(load_err("no 'layers.0.weight' tensor".into()));
        }
        let (input, output) = match (config.inputs, config.outputs) {
            ([i], [o]) if i.datatype == DataType::F32 => (i.name.clone(), o.name.clone()),
            ([i], [_]) => {
                return Err(load_err(format!(
                    "mlp input '{}' must be FP32, not {}",
                    i.name,
                    i.datatype.as_str()
                )))
            }
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
    fn precision(&self) -> crate::quant::Path {
        self.layers[0].path()
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn stage(&self, batch: &[&[Tensor]], xfer: &mut Transfer) -> Result<Staged, ModelError> {
        let parts = gather_input(batch, &self.input)?;
        let rows: Vec<usize> = parts.iter().map(|t| t.rows()).collect();
        let x = Tensor::concat_rows(&parts)?;
        let TensorData::F32(v) = x.data else {
            return Err(ModelError::Failed(format!(
                "input '{}' must be FP32",
                self.input
            )));
        };
        let x = xfer.upload(v, x.shape.as_slice())?;
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
        // GPU kernels run asynchronously: wait for them so that infer and output time split here.
        self.device.synchronize()?;
        let t2 = Instant::now();
        let out = xfer.download(&self.output, &probs)?.split_rows(&rows)?;
        timings.infer = t2 - t1;
        timings.output = t2.elapsed();
        Ok(out.into_iter().map(|t| vec![t]).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ModelConfig;

    fn digits_config(input_datatype: &str) -> ModelConfig {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits");
        let text = std::fs::read_to_string(dir.join("config.toml")).unwrap();
        let text = text.replacen(
            "datatype = \"FP32\"",
            &format!("datatype = \"{input_datatype}\""),
            1,
        );
        ModelConfig::parse(&text, "digits").unwrap()
    }

    /// The bundled digits weights load and run with an FP32 input; an mlp declared with another
    /// input datatype fails to load with a message naming the input and datatype.
    #[test]
    fn mlp_input_must_be_fp32() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits/1");
        let m = Mlp::load(
            &LoadOptions::from_config(&digits_config("FP32")),
            &dir,
            &Device::Cpu,
        )
        .unwrap();
        let x = Tensor::new("pixels", vec![1, 64], TensorData::F32(vec![3.0; 64]));
        let out = m.forward(&[&[x]], &mut StageTimings::default()).unwrap();
        assert_eq!(out[0][0].shape, vec![1, 10]);
        let err = Mlp::load(
            &LoadOptions::from_config(&digits_config("FP16")),
            &dir,
            &Device::Cpu,
        )
        .err()
        .expect("FP16 input must not load")
        .to_string();
        assert!(err.contains("'pixels' must be FP32, not FP16"), "{err}");
        let x = Tensor::new("pixels", vec![1, 64], TensorData::I32(vec![3; 64]));
        let err = m.stage(&[&[x]], &mut Transfer::new(&Device::Cpu));
        assert!(err.is_err(), "a non-FP32 input must be refused in stage");
    }
}

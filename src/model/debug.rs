//! Architecture `debug`: a test and benchmark model. It echoes its one input as its one output and
//! can be told (config `[parameters]`) to sleep per batch in `compute` (`sleep_us`, a known service
//! time) and in `stage` (`stage_sleep_us`, a known input time), to panic (`panic_on`) or fail
//! (`fail_on`) when any input element equals a value.

use std::time::{Duration, Instant};

use super::{gather_input, param, LoadOptions, Model, ModelError, StageTimings, Staged};
use crate::device::Transfer;
use crate::tensor::{Tensor, TensorData};

pub struct DebugModel {
    input: String,
    output: String,
    sleep: Duration,
    stage_sleep: Duration,
    panic_on: Option<f64>,
    fail_on: Option<f64>,
}

impl DebugModel {
    pub fn load(config: &LoadOptions) -> Result<DebugModel, ModelError> {
        let (input, output) = match (config.inputs, config.outputs) {
            ([i], [o]) if i.datatype == o.datatype => (i.name.clone(), o.name.clone()),
            _ => {
                return Err(ModelError::Parameter {
                    name: "input/output".into(),
                    message: "debug takes one input and one output of the same datatype".into(),
                })
            }
        };
        Ok(DebugModel {
            input,
            output,
            sleep: Duration::from_micros(param::<u64>(config, "sleep_us")?.unwrap_or(0)),
            stage_sleep: Duration::from_micros(
                param::<u64>(config, "stage_sleep_us")?.unwrap_or(0),
            ),
            panic_on: param(config, "panic_on")?,
            fail_on: param(config, "fail_on")?,
        })
    }
}

fn contains(t: &Tensor, value: f64) -> bool {
    match &t.data {
        TensorData::F32(v) => v.iter().any(|&x| x as f64 == value),
        TensorData::F64(v) => v.contains(&value),
        TensorData::I32(v) => v.iter().any(|&x| x as f64 == value),
        TensorData::I64(v) => v.iter().any(|&x| x as f64 == value),
        _ => false,
    }
}

impl Model for DebugModel {
    fn device(&self) -> &candle_core::Device {
        &candle_core::Device::Cpu
    }

    fn stage(&self, batch: &[&[Tensor]], _xfer: &mut Transfer) -> Result<Staged, ModelError> {
        let inputs: Vec<Tensor> = gather_input(batch, &self.input)?
            .into_iter()
            .cloned()
            .collect();
        if !self.stage_sleep.is_zero() {
            std::thread::sleep(self.stage_sleep);
        }
        Ok(Staged::new(inputs))
    }

    fn compute(
        &self,
        staged: Staged,
        _xfer: &mut Transfer,
        timings: &mut StageTimings,
    ) -> Result<Vec<Vec<Tensor>>, ModelError> {
        let start = Instant::now();
        let inputs: Vec<Tensor> = staged.take()?;
        if let Some(v) = self.panic_on {
            if inputs.iter().any(|t| contains(t, v)) {
                panic!("debug model asked to panic on {v}");
            }
        }
        if let Some(v) = self.fail_on {
            if inputs.iter().any(|t| contains(t, v)) {
                return Err(ModelError::Failed(format!(
                    "debug model asked to fail on {v}"
                )));
            }
        }
        if !self.sleep.is_zero() {
            std::thread::sleep(self.sleep);
        }
        timings.infer = start.elapsed();
        Ok(inputs
            .into_iter()
            .map(|mut out| {
                out.name = self.output.clone();
                vec![out]
            })
            .collect())
    }
}

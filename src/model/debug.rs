//! Architecture `debug`: a test and benchmark model. It echoes its one input as its one output and,
//! like a real batched model, runs a batch of several requests as one tensor: `stage` concatenates
//! their rows (which fails, for the whole batch, when their non-batch shapes differ) and `compute`
//! splits the result back per request. It can be told (config `[parameters]`) to sleep per batch in `compute` (`sleep_us`, a known service
//! time) and in `stage` (`stage_sleep_us`, a known input time), to panic (`panic_on`) or fail
//! (`fail_on`) when any input element equals a value, or to fail a share of batches
//! (`fail_fraction`, evenly spread: a canary that fails that share of requests).

use std::time::{Duration, Instant};

use super::{gather_input, param, LoadOptions, Model, ModelError, StageTimings, Staged};
use crate::device::Transfer;
use crate::tensor::{Tensor, TensorData};

/// A staged batch: the requests' rows concatenated, and how many rows each request brought.
struct DebugStaged {
    x: Tensor,
    rows: Vec<usize>,
}

pub struct DebugModel {
    input: String,
    output: String,
    sleep: Duration,
    stage_sleep: Duration,
    panic_on: Option<f64>,
    fail_on: Option<f64>,
    /// Fail this share of batches, evenly spread (batch n fails when floor((n+1)f) > floor(nf)).
    fail_fraction: f64,
    batches: std::sync::atomic::AtomicU64,
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
            fail_fraction: param::<f64>(config, "fail_fraction")?
                .unwrap_or(0.0)
                .clamp(0.0, 1.0),
            batches: std::sync::atomic::AtomicU64::new(0),
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
        let parts = gather_input(batch, &self.input)?;
        let rows: Vec<usize> = parts.iter().map(|t| t.rows()).collect();
        let x = Tensor::concat_rows(&parts)?;
        if !self.stage_sleep.is_zero() {
            std::thread::sleep(self.stage_sleep);
        }
        Ok(Staged::new(DebugStaged { x, rows }))
    }

    fn compute(
        &self,
        staged: Staged,
        _xfer: &mut Transfer,
        timings: &mut StageTimings,
    ) -> Result<Vec<Vec<Tensor>>, ModelError> {
        let start = Instant::now();
        let DebugStaged { mut x, rows } = staged.take()?;
        if let Some(v) = self.panic_on {
            if contains(&x, v) {
                panic!("debug model asked to panic on {v}");
            }
        }
        if let Some(v) = self.fail_on {
            if contains(&x, v) {
                return Err(ModelError::Failed(format!(
                    "debug model asked to fail on {v}"
                )));
            }
        }
        if self.fail_fraction > 0.0 {
            let n = self
                .batches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed) as f64;
            let f = self.fail_fraction;
            if ((n + 1.0) * f).floor() > (n * f).floor() {
                return Err(ModelError::Failed(format!(
                    "debug model asked to fail {:.0}% of batches",
                    100.0 * f
                )));
            }
        }
        if !self.sleep.is_zero() {
            std::thread::sleep(self.sleep);
        }
        x.name = self.output.clone();
        // One request: as it came (also a tensor without a batch dimension, max_batch_size 0).
        let outputs = if rows.len() == 1 {
            vec![x]
        } else {
            x.split_rows(&rows)?
        };
        timings.infer = start.elapsed();
        Ok(outputs.into_iter().map(|t| vec![t]).collect())
    }
}

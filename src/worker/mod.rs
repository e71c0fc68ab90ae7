//! Device workers: one named OS thread per model instance per device. Each pulls its next batch from
//! the model version's queue when free, runs the model, and answers every request of the batch. A
//! panic in a forward pass fails that batch's requests and the worker keeps serving. Never sees HTTP.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::batcher::{Batch, JobError, JobOutput, Queue, Timings};
use crate::device::DeviceId;
use crate::model::{Model, StageTimings};
use crate::telemetry::ModelMetrics;

/// Identity of one worker thread.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub model: String,
    pub version: u64,
    pub device: DeviceId,
    pub index: usize,
}

impl WorkerSpec {
    /// Thread name `ferrite-w{model}-{dev}-{i}`.
    pub fn thread_name(&self) -> String {
        format!("ferrite-w{}-{}-{}", self.model, self.device, self.index)
    }
}

/// Starts one worker thread; it exits when the queue is closed and drained.
pub fn spawn(
    spec: WorkerSpec,
    model: Arc<dyn Model>,
    queue: Queue,
    metrics: ModelMetrics,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(spec.thread_name())
        .spawn(move || {
            tracing::debug!(worker = %spec.thread_name(), "worker started");
            let sequences = queue.config().max_batch_tokens.is_some();
            while let Some(batch) = queue.pull_blocking() {
                if sequences && batch.counted_rows() > 0 {
                    metrics.record_padding(batch.padding_efficiency());
                }
                run_batch(&spec, model.as_ref(), batch, &metrics);
            }
            tracing::debug!(worker = %spec.thread_name(), "worker stopped");
        })
}

/// Runs one batch and answers each of its requests.
pub fn run_batch(spec: &WorkerSpec, model: &dyn Model, batch: Batch, metrics: &ModelMetrics) {
    let started = tokio::time::Instant::now();
    let rows = batch.rows();
    let inputs: Vec<&[crate::tensor::Tensor]> =
        batch.jobs.iter().map(|j| j.inputs.as_slice()).collect();
    let mut stages = StageTimings::default();
    let result = catch_unwind(AssertUnwindSafe(|| model.forward(&inputs, &mut stages)));
    let failure = |message: String| JobError::Model {
        model: spec.model.clone(),
        message,
    };
    let outputs = match result {
        Ok(Ok(outs)) if outs.len() == batch.jobs.len() => {
            if batch.counted_rows() > 0 {
                metrics.record_execution(batch.counted_rows());
            }
            Ok(outs)
        }
        Ok(Ok(outs)) => {
            tracing::error!(model = %spec.model, got = outs.len(), want = batch.jobs.len(),
                "model returned the wrong number of results. This is a bug.");
            Err(failure("internal error: wrong number of results".into()))
        }
        Ok(Err(e)) => {
            tracing::warn!(model = %spec.model, error = %e, "forward pass failed");
            Err(failure(e.to_string()))
        }
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            tracing::error!(worker = %spec.thread_name(), panic = msg,
                "forward pass panicked; failing this batch, worker keeps serving");
            Err(failure("internal error: the forward pass panicked".into()))
        }
    };
    match outputs {
        Ok(outs) => {
            for (job, outputs) in batch.jobs.into_iter().zip(outs) {
                let timings = Timings {
                    queue: started.saturating_duration_since(job.enqueued_at),
                    compute_input: stages.input,
                    compute_infer: stages.infer,
                    compute_output: stages.output,
                    batch_rows: rows,
                };
                let _ = job.reply.send(Ok(JobOutput { outputs, timings }));
            }
        }
        Err(e) => {
            for job in batch.jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}

//! Device workers: one named OS thread per model instance per device. Each pulls its next batch from
//! the model version's queue when free, runs the model, and answers every request of the batch. A
//! panic in a forward pass fails that batch's requests and the worker keeps serving. Never sees HTTP.
//!
//! With prefetch (`repository::placement::prefetch_on`, the default on GPUs) an instance is two threads: a
//! stager (`ferrite-s..`) pulls batch N+1 and runs `Model::stage` (gather, pinned upload) while the
//! compute thread (`ferrite-w..`) runs batch N. They meet on a rendezvous channel, so the stager
//! holds at most one staged batch: depth 1. A staged batch whose clients have all left or timed out
//! while it waited is dropped before it is computed.
//!
//! Trade-off of prefetch: the stager pulls as soon as the compute thread takes a batch, so under
//! moderate load it takes what is queued at that moment, and a GPU batch may be smaller than one
//! pulled a compute time later. `benches/gpu.sh` measures prefetch off vs on on a GPU.
//!
//! A worker thread idle for `RELEASE_AFTER_IDLE` hands its allocator's freed pages and its pinned
//! buffers back (`release_thread_memory`, `Transfer::release`), so that after a burst the server's
//! RSS returns to what it holds.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::time::Instant;

use crate::batcher::{Batch, JobError, JobOutput, Lane, Layout, Queue, Timings};
use crate::device::{DeviceId, Transfer};
use crate::model::{Model, StageTimings, Staged};
use crate::telemetry::{FailureReason, ModelMetrics};

#[cfg(test)]
mod tests;

/// How long a worker thread waits with nothing to do before it releases its freed memory. Releasing
/// under load instead (after every batch, or every 100 ms) cost 6-10% throughput: the pages are
/// faulted back in by the next batch (benches/RESULTS.md, issue 4 RSS).
pub const RELEASE_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Hands the pages this thread's allocator heap holds free back to the OS. mimalloc keeps a thread's
/// freed pages for its next allocations and only looks at them again when that thread allocates, so
/// an idle thread would sit on the working memory of its last batches. Harmless when mimalloc is not
/// the global allocator (its heap on this thread is then empty).
pub fn release_thread_memory() {
    // SAFETY: mi_collect has no preconditions; it only walks the calling thread's mimalloc heap.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// What an idle worker-side thread gives back: its allocator's freed pages and its pinned buffers.
fn release_idle(xfer: &mut Transfer) {
    release_thread_memory();
    xfer.release();
}

/// The next batch for a worker-side thread, releasing its memory if it waits long. `layout` tells
/// the queue how this instance's model lays out a batch (what its token budget counts).
fn next_batch(queue: &Queue, layout: Layout, xfer: &mut Transfer) -> Option<Batch> {
    queue.pull_blocking_or_idle(layout, RELEASE_AFTER_IDLE, || release_idle(xfer))
}

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

    /// The prefetching stager's thread name `ferrite-s{model}-{dev}-{i}`.
    pub fn stager_name(&self) -> String {
        format!("ferrite-s{}-{}-{}", self.model, self.device, self.index)
    }

    fn failure(&self, message: String) -> JobError {
        JobError::Model {
            model: self.model.clone(),
            message,
        }
    }
}

/// A pulled batch with its staged inputs.
struct StagedBatch {
    batch: Batch,
    inputs: Result<Staged, JobError>,
    pulled: Instant,
    /// How long `stage` took.
    input: Duration,
    /// When staging finished (the batch then waits for the compute thread).
    ready: Instant,
}

/// Starts one worker (and its stager when `prefetch`); the returned thread exits, after its stager,
/// when the queue is closed and drained.
pub fn spawn(
    spec: WorkerSpec,
    model: Arc<dyn Model>,
    queue: Queue,
    metrics: ModelMetrics,
    prefetch: bool,
) -> std::io::Result<JoinHandle<()>> {
    // Padding is only reported for sequence (token-budget) batches of a model that pads them.
    let report_padding = queue.config().max_batch_tokens.is_some() && model.is_padded();
    let layout = Layout::of(model.is_padded());
    if !prefetch {
        return std::thread::Builder::new()
            .name(spec.thread_name())
            .spawn(move || {
                tracing::debug!(worker = %spec.thread_name(), "worker started");
                let mut xfer = Transfer::new(model.device());
                while let Some(batch) = next_batch(&queue, layout, &mut xfer) {
                    let staged = stage(&spec, model.as_ref(), &mut xfer, batch);
                    compute(
                        &spec,
                        model.as_ref(),
                        &mut xfer,
                        staged,
                        false,
                        report_padding,
                        &metrics,
                    );
                }
                tracing::debug!(worker = %spec.thread_name(), "worker stopped");
            });
    }
    // Rendezvous: `send` returns only when the compute thread takes the batch, so the stager never
    // runs more than one batch ahead.
    let (tx, rx) = flume::bounded::<StagedBatch>(0);
    let stager = {
        let (spec, model) = (spec.clone(), model.clone());
        std::thread::Builder::new()
            .name(spec.stager_name())
            .spawn(move || {
                let mut xfer = Transfer::new(model.device());
                while let Some(batch) = next_batch(&queue, layout, &mut xfer) {
                    let staged = stage(&spec, model.as_ref(), &mut xfer, batch);
                    if tx.send(staged).is_err() {
                        break; // compute thread gone: dropping the batch answers its clients
                    }
                }
            })?
    };
    std::thread::Builder::new()
        .name(spec.thread_name())
        .spawn(move || {
            tracing::debug!(worker = %spec.thread_name(), "worker started (prefetch depth 1)");
            let mut xfer = Transfer::new(model.device());
            loop {
                let staged = match rx.recv_timeout(RELEASE_AFTER_IDLE) {
                    Ok(staged) => staged,
                    Err(flume::RecvTimeoutError::Timeout) => {
                        release_idle(&mut xfer);
                        match rx.recv() {
                            Ok(staged) => staged,
                            Err(_) => break,
                        }
                    }
                    Err(flume::RecvTimeoutError::Disconnected) => break,
                };
                compute(
                    &spec,
                    model.as_ref(),
                    &mut xfer,
                    staged,
                    true,
                    report_padding,
                    &metrics,
                );
            }
            if stager.join().is_err() {
                tracing::error!(worker = %spec.thread_name(), "stager thread panicked");
            }
            tracing::debug!(worker = %spec.thread_name(), "worker stopped");
        })
}

/// Runs `Model::stage` on a pulled batch; a panic or error there fails only this batch.
fn stage(spec: &WorkerSpec, model: &dyn Model, xfer: &mut Transfer, batch: Batch) -> StagedBatch {
    let pulled = Instant::now();
    let inputs: Vec<&[crate::tensor::Tensor]> =
        batch.jobs.iter().map(|j| j.inputs.as_slice()).collect();
    let result = catch_unwind(AssertUnwindSafe(|| model.stage(&inputs, xfer)));
    let inputs = match result {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => {
            tracing::warn!(model = %spec.model, error = %e, "staging inputs failed");
            Err(spec.failure(e.to_string()))
        }
        Err(panic) => {
            tracing::error!(worker = %spec.thread_name(), panic = panic_message(&*panic),
                "staging panicked; failing this batch, worker keeps serving");
            Err(spec.failure("internal error: staging the inputs panicked".into()))
        }
    };
    let ready = Instant::now();
    StagedBatch {
        batch,
        inputs,
        pulled,
        input: ready - pulled,
        ready,
    }
}

/// Answers a batch that nobody can use any more without computing it: true when every one of its
/// clients has left (counted as canceled, once per request) or, for a batch that waited staged behind
/// another (`prefetched`), has run past its queue deadline meanwhile (answered with a timeout, as
/// the batcher does for queued requests; that wait counts as queueing).
fn drop_if_unwanted(
    spec: &WorkerSpec,
    batch: &mut Batch,
    prefetched: bool,
    metrics: &ModelMetrics,
) -> bool {
    let now = Instant::now();
    let expired = |j: &crate::batcher::Job| prefetched && j.deadline.is_some_and(|d| d <= now);
    if !batch.jobs.iter().all(|j| j.reply.is_closed() || expired(j)) {
        return false;
    }
    tracing::debug!(model = %spec.model, jobs = batch.jobs.len(),
        "every client of a staged batch left or timed out; dropped before compute");
    for job in batch.jobs.drain(..) {
        if job.reply.is_closed() {
            if job.count_canceled() {
                metrics.record_failure(FailureReason::Canceled);
            }
        } else {
            let timeout_us = job.timeout_us;
            let gone = job.answer(Err(JobError::Timeout {
                model: spec.model.clone(),
                timeout_us,
            }));
            if gone {
                metrics.record_failure(FailureReason::Canceled);
            }
        }
    }
    true
}

/// Runs `Model::compute` on a staged batch and answers each of its requests. `prefetched`: the
/// batch was staged on the stager thread and may have waited there. `report_padding`: record the
/// batch's padding efficiency (sequence batches of a model that pads them).
fn compute(
    spec: &WorkerSpec,
    model: &dyn Model,
    xfer: &mut Transfer,
    staged: StagedBatch,
    prefetched: bool,
    report_padding: bool,
    metrics: &ModelMetrics,
) {
    let started = Instant::now();
    let StagedBatch {
        mut batch,
        inputs,
        pulled,
        input,
        ready,
    } = staged;
    if drop_if_unwanted(spec, &mut batch, prefetched, metrics) {
        return;
    }
    let rows = batch.rows();
    let mut stages = StageTimings {
        input,
        ..StageTimings::default()
    };
    let outputs = inputs.and_then(|s| {
        let result = catch_unwind(AssertUnwindSafe(|| model.compute(s, xfer, &mut stages)));
        match result {
            Ok(Ok(outs)) if outs.len() == batch.jobs.len() => {
                if batch.counted_rows() > 0 {
                    metrics.record_execution(batch.counted_rows());
                    if batch.lane == Lane::Bulk {
                        metrics.jobs().record_batch();
                    }
                    metrics.record_batch_stages(
                        batch.counted_rows(),
                        stages.input,
                        stages.infer,
                        stages.output,
                    );
                    if report_padding {
                        metrics.record_padding(batch.padding_efficiency());
                    }
                }
                Ok(outs)
            }
            Ok(Ok(outs)) => {
                tracing::error!(model = %spec.model, got = outs.len(), want = batch.jobs.len(),
                    "model returned the wrong number of results. This is a bug.");
                Err(spec.failure("internal error: wrong number of results".into()))
            }
            Ok(Err(e)) => {
                tracing::warn!(model = %spec.model, error = %e, "forward pass failed");
                Err(spec.failure(e.to_string()))
            }
            Err(panic) => {
                tracing::error!(worker = %spec.thread_name(), panic = panic_message(&*panic),
                    "forward pass panicked; failing this batch, worker keeps serving");
                Err(spec.failure("internal error: the forward pass panicked".into()))
            }
        }
    });
    // Time spent staged, waiting for this thread, counts as queueing (as Triton counts it).
    let waited = started.saturating_duration_since(ready);
    // Requests whose client left while their batch ran: counted canceled here (their handlers
    // are gone, so nothing else counts them).
    let mut gone = 0usize;
    match outputs {
        Ok(outs) => {
            for (job, outputs) in batch.jobs.into_iter().zip(outs) {
                let timings = Timings {
                    queue: pulled.saturating_duration_since(job.enqueued_at) + waited,
                    compute_input: stages.input,
                    compute_infer: stages.infer,
                    compute_output: stages.output,
                    batch_rows: rows,
                };
                gone += usize::from(job.answer(Ok(JobOutput { outputs, timings })));
            }
        }
        Err(e) => {
            for job in batch.jobs {
                gone += usize::from(job.answer(Err(e.clone())));
            }
        }
    }
    for _ in 0..gone {
        metrics.record_failure(FailureReason::Canceled);
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic")
}

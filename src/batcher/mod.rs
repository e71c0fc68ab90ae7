//! The dynamic batcher: one `Queue` per model version. Request handlers `submit` a job and await its
//! answer; worker threads `pull_blocking` their next batch when they become free (pull-based). A
//! dispatcher task owns the `QueueState`, answers expired requests at once, drops requests whose
//! client has gone and applies `policy::decide`. It never runs a model and never sees HTTP.

pub mod policy;
pub mod state;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

pub use policy::{BatchConfig, Decision};
use state::QueueState;

/// Value types of the metrics the batcher and workers fill; they live in the `telemetry` leaf.
pub use crate::telemetry::metrics::{QueueMetrics, Timings};

use crate::tensor::Tensor;

/// A successful answer.
#[derive(Debug, Clone)]
pub struct JobOutput {
    pub outputs: Vec<Tensor>,
    pub timings: Timings,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    #[error(
        "queue for model '{model}' is full ({capacity} requests at priority {level}); retry later"
    )]
    QueueFull {
        model: String,
        level: u32,
        capacity: usize,
    },
    #[error(
        "request timed out in the queue of model '{model}' after its timeout of {timeout_us} us"
    )]
    Timeout { model: String, timeout_us: u64 },
    #[error("priority {got} is out of range: model '{model}' has priority levels 1..={levels} (0 = default)")]
    BadPriority {
        model: String,
        got: u32,
        levels: u32,
    },
    #[error("model '{model}' is not accepting requests: {why}")]
    Unavailable { model: String, why: String },
    #[error("model '{model}' failed: {message}")]
    Model { model: String, message: String },
}

/// One request waiting in the queue.
pub struct Job {
    pub inputs: Vec<Tensor>,
    pub rows: usize,
    /// Batching cost: tokens (padded sequence length) for sequence models, else rows.
    pub cost: usize,
    /// Priority level, 1 = first served.
    pub priority: u32,
    pub enqueued_at: Instant,
    pub deadline: Option<Instant>,
    pub timeout_us: u64,
    /// Warm-up jobs run the model but are not counted in metrics.
    pub warmup: bool,
    /// Shared by all jobs of a client request submitted as several (`SubmitOptions::parts`); set
    /// once the request has been counted as canceled.
    pub parts: Option<Arc<AtomicBool>>,
    pub reply: oneshot::Sender<Result<JobOutput, JobError>>,
}

/// What a worker gets: jobs in queue order.
pub struct Batch {
    pub jobs: Vec<Job>,
}

impl Batch {
    pub fn rows(&self) -> usize {
        self.jobs.iter().map(|j| j.rows).sum()
    }

    /// Rows of the jobs that count in metrics (all but warm-up).
    pub fn counted_rows(&self) -> usize {
        self.jobs.iter().filter(|j| !j.warmup).map(|j| j.rows).sum()
    }

    /// Real tokens over padded tokens (rows x longest), for sequence batches.
    pub fn padding_efficiency(&self) -> f64 {
        let longest = self.jobs.iter().map(|j| j.cost).max().unwrap_or(0);
        let padded = longest * self.jobs.len();
        if padded == 0 {
            return 1.0;
        }
        self.jobs.iter().map(|j| j.cost).sum::<usize>() as f64 / padded as f64
    }
}

/// Per-request options from the protocol (`parameters.priority`, `parameters.timeout`).
#[derive(Debug, Clone, Default)]
pub struct SubmitOptions {
    /// 0 = the model's default level.
    pub priority: u32,
    pub timeout: Option<Duration>,
    /// A warm-up request (not counted in metrics).
    pub warmup: bool,
    /// Batching cost (tokens for sequence models); 0 = the job's rows.
    pub cost: usize,
    /// Set when a client request is submitted as several jobs (one per text): every job of the
    /// request carries the same flag, so that the request counts once as canceled.
    pub parts: Option<Arc<AtomicBool>>,
}

impl Job {
    /// Whether dropping this job (its client has gone) adds one to the canceled requests: true for
    /// a whole request, and for the first dropped part of a split one; never for warm-up.
    pub fn count_canceled(&self) -> bool {
        match &self.parts {
            _ if self.warmup => false,
            None => true,
            Some(counted) => !counted.swap(true, Ordering::Relaxed),
        }
    }
}

/// Waits shorter than this use a precise (thread) sleep rather than tokio's millisecond timer.
const PRECISE_BELOW: Duration = Duration::from_millis(2);

enum Command {
    Submit(Job),
    /// A worker asks for its next batch; one batch is sent on this (capacity-1) channel.
    Pull(flume::Sender<Batch>),
    Close,
}

/// Cheap handle onto one model version's queue.
#[derive(Clone)]
pub struct Queue {
    tx: flume::Sender<Command>,
    cfg: Arc<BatchConfig>,
    model: Arc<str>,
}

impl Queue {
    /// Starts the dispatcher task on the current tokio runtime.
    pub fn spawn(model: &str, cfg: BatchConfig, metrics: QueueMetrics) -> Queue {
        let capacity = cfg.max_queue_size * cfg.priority_levels.max(1) as usize + 64;
        let (tx, rx) = flume::bounded(capacity.min(1 << 16));
        let cfg = Arc::new(cfg);
        let model: Arc<str> = model.into();
        let dispatcher = Dispatcher {
            state: QueueState::new(cfg.priority_levels, cfg.max_queue_size),
            idle: VecDeque::new(),
            cfg: cfg.clone(),
            model: model.clone(),
            metrics,
            closing: false,
        };
        tokio::spawn(dispatcher.run(rx));
        Queue { tx, cfg, model }
    }

    pub fn config(&self) -> &BatchConfig {
        &self.cfg
    }

    /// Queues `inputs` (already validated, `rows` batch rows) and waits for the answer. Dropping the
    /// returned future (client gone) drops the job before it is computed.
    pub async fn submit(
        &self,
        inputs: Vec<Tensor>,
        rows: usize,
        opts: SubmitOptions,
    ) -> Result<JobOutput, JobError> {
        let levels = self.cfg.priority_levels.max(1);
        if opts.priority > levels {
            return Err(JobError::BadPriority {
                model: self.model.to_string(),
                got: opts.priority,
                levels,
            });
        }
        let priority = if opts.priority == 0 {
            self.cfg.default_priority.clamp(1, levels)
        } else {
            opts.priority
        };
        let timeout = match (opts.timeout, self.cfg.default_timeout) {
            (Some(t), Some(d)) => Some(t.min(d)),
            (t, d) => t.or(d),
        };
        let now = Instant::now();
        let (reply, rx) = oneshot::channel();
        let job = Job {
            inputs,
            rows,
            cost: if opts.cost == 0 { rows } else { opts.cost },
            priority,
            enqueued_at: now,
            deadline: timeout.map(|t| now + t),
            timeout_us: timeout.map_or(0, |t| t.as_micros() as u64),
            warmup: opts.warmup,
            parts: opts.parts,
            reply,
        };
        if self.tx.send_async(Command::Submit(job)).await.is_err() {
            return Err(self.unavailable("the model is unloaded"));
        }
        rx.await
            .unwrap_or_else(|_| Err(self.unavailable("the model was unloaded")))
    }

    /// Worker side: blocks until the dispatcher hands this worker a batch; `None` once the queue is
    /// closed and drained. Call from a plain OS thread, never from async code.
    pub fn pull_blocking(&self) -> Option<Batch> {
        let (tx, rx) = flume::bounded(1);
        self.tx.send(Command::Pull(tx)).ok()?;
        rx.recv().ok()
    }

    /// `pull_blocking` that runs `on_idle` once if no batch has come after `idle_after`, then keeps
    /// waiting (its place among the idle workers is kept: nothing is re-registered or lost).
    pub fn pull_blocking_or_idle(
        &self,
        idle_after: Duration,
        on_idle: impl FnOnce(),
    ) -> Option<Batch> {
        let (tx, rx) = flume::bounded(1);
        self.tx.send(Command::Pull(tx)).ok()?;
        match rx.recv_timeout(idle_after) {
            Ok(batch) => return Some(batch),
            Err(flume::RecvTimeoutError::Disconnected) => return None,
            Err(flume::RecvTimeoutError::Timeout) => on_idle(),
        }
        rx.recv().ok()
    }

    /// Async twin of `pull_blocking`, for tests and benchmarks.
    pub async fn pull(&self) -> Option<Batch> {
        let (tx, rx) = flume::bounded(1);
        self.tx.send_async(Command::Pull(tx)).await.ok()?;
        rx.recv_async().await.ok()
    }

    /// Stops accepting; queued requests are still served, then workers see `None`.
    pub fn close(&self) {
        let _ = self.tx.send(Command::Close);
    }

    fn unavailable(&self, why: &str) -> JobError {
        JobError::Unavailable {
            model: self.model.to_string(),
            why: why.into(),
        }
    }
}

struct Dispatcher {
    state: QueueState,
    idle: VecDeque<flume::Sender<Batch>>,
    cfg: Arc<BatchConfig>,
    model: Arc<str>,
    metrics: QueueMetrics,
    closing: bool,
}

impl Dispatcher {
    async fn run(mut self, rx: flume::Receiver<Command>) {
        let mut precise: Option<(Instant, tokio::task::JoinHandle<()>)> = None;
        loop {
            let wake = self.step(Instant::now());
            if self.closing && self.state.pending_jobs() == 0 {
                break;
            }
            let remaining = wake.map(|t| t.saturating_duration_since(Instant::now()));
            let cmd = match (wake, remaining) {
                // tokio's timer rounds up to whole milliseconds: a 200 us batching delay would
                // become 1-2 ms. Short waits sleep on a blocking thread instead (one at a time).
                (Some(t), Some(r)) if r < PRECISE_BELOW && !r.is_zero() => {
                    let timer = match precise.take() {
                        Some((at, h)) if at == t && !h.is_finished() => (at, h),
                        _ => (
                            t,
                            tokio::task::spawn_blocking(move || std::thread::sleep(r)),
                        ),
                    };
                    let (at, mut h) = timer;
                    tokio::select! {
                        c = rx.recv_async() => {
                            precise = Some((at, h));
                            Some(c)
                        }
                        _ = &mut h => None,
                    }
                }
                (Some(t), _) => tokio::select! {
                    c = rx.recv_async() => Some(c),
                    _ = tokio::time::sleep_until(t) => None,
                },
                (None, _) => Some(rx.recv_async().await),
            };
            match cmd {
                None => {}
                Some(Ok(Command::Submit(job))) => self.admit(job),
                Some(Ok(Command::Pull(w))) => self.idle.push_back(w),
                Some(Ok(Command::Close)) | Some(Err(_)) => self.closing = true,
            }
        }
        // Idle workers see their sender dropped; busy ones find the channel closed on next pull.
        self.idle.clear();
        while let Ok(cmd) = rx.try_recv() {
            if let Command::Submit(job) = cmd {
                self.reject(job, "the model is being unloaded");
            }
        }
        self.metrics.pending.set(0);
    }

    fn admit(&mut self, job: Job) {
        if self.closing {
            return self.reject(job, "the model is being unloaded");
        }
        match self.state.push(job) {
            Ok(()) => self.metrics.pending.inc(),
            Err((job, full)) => {
                let _ = job.reply.send(Err(JobError::QueueFull {
                    model: self.model.to_string(),
                    level: full.level,
                    capacity: full.capacity,
                }));
            }
        }
        // A full level first drops the jobs whose clients have gone.
        self.settle_canceled();
    }

    /// Takes the queue's count of dropped canceled jobs into the metrics: the pending gauge counts
    /// jobs, the canceled counter requests.
    fn settle_canceled(&mut self) {
        let gone = self.state.take_canceled();
        self.metrics.pending.sub(gone.jobs as i64);
        self.metrics.canceled.inc_by(gone.requests as u64);
    }

    fn reject(&self, job: Job, why: &str) {
        let _ = job.reply.send(Err(JobError::Unavailable {
            model: self.model.to_string(),
            why: why.into(),
        }));
    }

    /// Expires, dispatches what the policy allows, and returns when to look again.
    fn step(&mut self, now: Instant) -> Option<Instant> {
        for job in self.state.take_expired(now) {
            self.metrics.pending.dec();
            let _ = job.reply.send(Err(JobError::Timeout {
                model: self.model.to_string(),
                timeout_us: job.timeout_us,
            }));
        }
        let mut wake = None;
        while !self.idle.is_empty() {
            let pending = policy::Pending {
                rows: self.state.pending_rows(),
                tokens: self.state.pending_tokens(),
                oldest: self.state.oldest_enqueued(),
            };
            match policy::decide(pending, now, &self.cfg) {
                Decision::Dispatch(max_rows) => {
                    self.dispatch(policy::fair_share(max_rows, pending.rows, self.idle.len()))
                }
                Decision::WaitUntil(t) => {
                    wake = Some(t);
                    break;
                }
                Decision::Idle => break,
            }
        }
        match (wake, self.state.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn dispatch(&mut self, max_rows: usize) {
        let jobs = self.state.take_batch(max_rows, self.cfg.max_batch_tokens);
        self.metrics.pending.sub(jobs.len() as i64);
        self.settle_canceled();
        if jobs.is_empty() {
            return;
        }
        let worker = self
            .idle
            .pop_front()
            .expect("dispatch is only called with an idle worker. This is a bug.");
        // Capacity 1 and one batch per request: only a departed worker makes this fail.
        if let Err(flume::TrySendError::Disconnected(batch) | flume::TrySendError::Full(batch)) =
            worker.try_send(Batch { jobs })
        {
            // That worker has gone away: keep its jobs for the next one.
            self.metrics.pending.add(batch.jobs.len() as i64);
            self.state.requeue_front(batch.jobs);
        }
    }
}

#[cfg(test)]
mod tests;

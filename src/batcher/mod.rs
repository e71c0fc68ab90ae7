//! The dynamic batcher: one `Queue` per model version. Request handlers `submit` a job and await its
//! answer; worker threads `pull_blocking` their next batch when they become free (pull-based). The
//! dispatcher (`dispatcher.rs`) owns the `QueueState` under the queue's mutex and runs inline for
//! each submit and pull; a named OS thread wakes it for timed events (deadlines, batching delays).
//! It answers expired requests at once, drops requests whose client has gone and applies
//! `policy::decide`. It never runs a model and never sees HTTP.
//!
//! Two lanes share the workers: the online lane (requests from the front doors, with priorities,
//! deadlines and the batching delay) and the job lane (`Lane::Bulk`: rows of bulk jobs, no deadline,
//! dispatched at once). A worker the online lane does not need takes a job batch, capped at a share
//! of the workers while online traffic is active (`policy::bulk_may_dispatch`).

mod dispatcher;
pub mod policy;
pub mod state;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Value types of the metrics the batcher and workers fill; they live in the `telemetry` leaf.
pub use crate::telemetry::metrics::{QueueMetrics, Timings};
use dispatcher::{Command, Dispatcher, Pull};
pub use policy::{BatchConfig, Decision, ServiceRate};

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
        "model '{model}' is overloaded: a request would wait about {expected_us} us in its queue, over its budget of {budget_us} us; retry later"
    )]
    QueueTime {
        model: String,
        expected_us: u64,
        budget_us: u64,
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
    /// Batching cost: tokens (sequence length) for sequence jobs, else rows.
    pub cost: usize,
    /// A sequence job (submitted with a token cost): it batches with sequence jobs of any length,
    /// since the model pads or packs them. Other jobs batch only with jobs whose inputs have the
    /// same non-batch shape (`state::same_shape`).
    pub ragged: bool,
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
    /// Which lane it was queued in.
    pub lane: Lane,
    pub reply: oneshot::Sender<Result<JobOutput, JobError>>,
}

/// The two lanes of a queue: online requests, and the rows of bulk jobs (`crate::jobs`), which get
/// the workers online traffic leaves (a capped share while it is active, all of them otherwise).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Lane {
    #[default]
    Online,
    Bulk,
}

/// Counts a batch as in flight (being staged or computed) until the worker drops it, and then
/// feeds its cost and time in flight to the queue's `ServiceRate`.
pub(crate) struct InFlight {
    counter: Arc<AtomicUsize>,
    rate: Arc<Mutex<ServiceRate>>,
    cost: usize,
    since: Instant,
}

impl InFlight {
    fn new(counter: &Arc<AtomicUsize>, rate: &Arc<Mutex<ServiceRate>>, cost: usize) -> InFlight {
        counter.fetch_add(1, Ordering::AcqRel);
        InFlight {
            counter: counter.clone(),
            rate: rate.clone(),
            cost,
            since: Instant::now(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
        // A short section on the worker's thread, not the queue's lock (a plain sum; a poisoned
        // lock still holds a valid estimate).
        self.rate
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(self.cost, self.since.elapsed());
    }
}

/// What a worker gets: jobs in queue order, all of one lane.
pub struct Batch {
    pub jobs: Vec<Job>,
    pub lane: Lane,
    /// Dropped with the batch (once its answers are sent): the dispatcher's count of batches in
    /// flight per lane, from which it caps the job lane.
    pub(crate) _in_flight: Option<InFlight>,
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
    /// Batching cost: the tokens of a sequence job; 0 = the job's rows. A job given a cost is a
    /// sequence job, ragged by design: it batches with sequence jobs of other lengths (the model
    /// pads or packs them), where other jobs batch only with jobs of their own non-batch shape.
    pub cost: usize,
    /// Set when a client request is submitted as several jobs (one per text): every job of the
    /// request carries the same flag, so that the request counts once as canceled.
    pub parts: Option<Arc<AtomicBool>>,
    /// `Lane::Bulk` for the rows of a bulk job: no deadline, no priority, served from the workers
    /// online traffic leaves.
    pub lane: Lane,
}

impl Job {
    /// Whether dropping this job (its client has gone) adds one to the canceled requests: true for
    /// a whole request, and for the first dropped part of a split one; never for warm-up.
    pub fn count_canceled(&self) -> bool {
        counts_once(self.warmup, &self.parts)
    }

    /// Answers the job's request. True when nobody waits for the answer any more (the request's
    /// future was dropped: its client left) and this job is the one to count as canceled: no one
    /// else will count it, so the caller adds one to the canceled requests.
    pub fn answer(self, result: Result<JobOutput, JobError>) -> bool {
        self.reply.send(result).is_err() && counts_once(self.warmup, &self.parts)
    }
}

/// `Job::count_canceled` over a job's flags (also for an `Answer`, after its job is gone).
fn counts_once(warmup: bool, parts: &Option<Arc<AtomicBool>>) -> bool {
    match parts {
        _ if warmup => false,
        None => true,
        Some(counted) => !counted.swap(true, Ordering::Relaxed),
    }
}

/// Where an online job's answer comes. Dropped with the answer unread (the request's future was
/// dropped after the worker had answered: its client left in between), it counts the request as
/// canceled, since the worker's send succeeded and so did not count it. With `Job::answer` (a send
/// that finds the request gone) and the jobs dropped before compute (dispatcher, worker), every
/// online request ends counted once: a success or a failure by its handler, or canceled here.
struct Answer {
    rx: oneshot::Receiver<Result<JobOutput, JobError>>,
    warmup: bool,
    parts: Option<Arc<AtomicBool>>,
    canceled: IntCounter,
}

impl Drop for Answer {
    fn drop(&mut self) {
        if self.rx.try_recv().is_ok() && counts_once(self.warmup, &self.parts) {
            self.canceled.inc();
        }
    }
}

/// How the pulling worker's model lays a batch of sequences out, which decides what a token budget
/// (`BatchConfig::max_batch_tokens`) counts. Instances of one model on different devices share a
/// queue and may differ (BERT pads on a GPU, packs on the CPU), so each worker says it per pull.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Layout {
    /// Padded to the longest sequence: a batch costs rows x longest.
    #[default]
    Padded,
    /// Packed without padding: a batch costs its real tokens (the sum of its jobs' costs).
    Packed,
}

impl Layout {
    /// The layout of a model that says whether it pads (`Model::is_padded`).
    pub fn of(padded: bool) -> Layout {
        if padded {
            Layout::Padded
        } else {
            Layout::Packed
        }
    }
}

/// The dispatcher and when its timer is set to look again.
struct Core {
    dispatcher: Dispatcher,
    /// The instant the timer waits for (`None`: until woken).
    timer_at: Option<Instant>,
}

/// What every handle and the timer share.
struct Shared {
    /// Entered for short sections only: one command applied and one `step` (no await, no model
    /// code, no blocking send: batches go out with `try_send` on capacity-1 channels).
    core: Mutex<Core>,
    /// The timer thread waits here.
    timer: Condvar,
    /// The test timer (a tokio task on the paused clock) waits here.
    #[cfg(test)]
    notify: tokio::sync::Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic inside a section leaves consistent state (each command is applied whole).
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one command and dispatches what the policy allows, on the caller's thread; wakes the
    /// timer only when the next timed event moved earlier (or the queue finished).
    fn apply(&self, cmd: Option<Command>) {
        let mut core = self.lock();
        core.dispatcher.handle(cmd);
        let wake = core.dispatcher.step(Instant::now());
        let finished = core.dispatcher.finished();
        if finished {
            core.dispatcher.shut_down();
        }
        let earlier = match (wake, core.timer_at) {
            (Some(w), Some(t)) => w < t,
            (Some(_), None) => true,
            (None, _) => false,
        };
        drop(core);
        if earlier || finished {
            self.wake_timer();
        }
    }

    fn wake_timer(&self) {
        self.timer.notify_one();
        #[cfg(test)]
        self.notify.notify_one();
    }

    /// The timer thread: steps at each timed event until the queue is finished.
    fn run_timer(&self) {
        // Linux rounds a sleeping thread's timeouts up by its timer slack (50 us by default),
        // which a 200 us batching delay would feel; 1 ns asks for the timer as set.
        #[cfg(target_os = "linux")]
        // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack; no memory is passed.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
        }
        let mut core = self.lock();
        loop {
            let now = Instant::now();
            let wake = core.dispatcher.step(now);
            if core.dispatcher.finished() {
                core.dispatcher.shut_down();
                return;
            }
            core.timer_at = wake;
            core = match wake {
                Some(at) => {
                    let wait = at.saturating_duration_since(now);
                    self.timer
                        .wait_timeout(core, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.timer.wait(core).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }

    /// Test timer: the same, as a tokio task on tokio's (pausable) clock.
    #[cfg(test)]
    async fn run_timer_task(&self) {
        loop {
            let wake = {
                let mut core = self.lock();
                let wake = core.dispatcher.step(Instant::now());
                if core.dispatcher.finished() {
                    core.dispatcher.shut_down();
                    return;
                }
                core.timer_at = wake;
                wake
            };
            match wake {
                Some(at) => tokio::select! {
                    _ = self.notify.notified() => {}
                    _ = tokio::time::sleep_until(at) => {}
                },
                None => self.notify.notified().await,
            }
        }
    }
}

/// Dropped with the last `Queue` handle: nobody can submit or pull any more, so the dispatcher
/// answers what is queued and stops.
struct Handles(Arc<Shared>);

impl Drop for Handles {
    fn drop(&mut self) {
        self.0.apply(None);
    }
}

/// Places held in a queue for one request's jobs (`Queue::reserve`).
pub struct Permit {
    queue: Queue,
    priority: u32,
    left: usize,
}

impl Permit {
    /// Queues one job on a held place (at the permit's priority, whatever `opts` says) and returns
    /// its answer: the job is in the queue when this returns, the future only waits. Without a
    /// place left it is an ordinary submit.
    pub fn submit(
        &mut self,
        inputs: Vec<Tensor>,
        rows: usize,
        mut opts: SubmitOptions,
    ) -> impl std::future::Future<Output = Result<JobOutput, JobError>> + 'static {
        opts.priority = self.priority;
        opts.lane = Lane::Online;
        let reserved = self.left > 0;
        self.left -= usize::from(reserved);
        let queue = self.queue.clone();
        let answer = queue.enqueue(inputs, rows, opts, reserved);
        async move { queue.answer(answer?).await }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.left > 0 {
            self.queue
                .shared
                .lock()
                .dispatcher
                .release(self.priority, self.left);
        }
    }
}

/// Cheap handle onto one model version's queue.
#[derive(Clone)]
pub struct Queue {
    shared: Arc<Shared>,
    _handles: Arc<Handles>,
    cfg: Arc<BatchConfig>,
    model: Arc<str>,
    /// The canceled-requests counter (`QueueMetrics::canceled`), for `Answer`.
    canceled: IntCounter,
}

impl Queue {
    /// Starts the queue's timer on its own OS thread, `ferrite-q-{model}`, which ends once the
    /// queue is closed and drained (or every handle is dropped). Needs no tokio runtime.
    pub fn spawn(model: &str, cfg: BatchConfig, metrics: QueueMetrics) -> std::io::Result<Queue> {
        let queue = Queue::new(model, cfg, metrics);
        let shared = queue.shared.clone();
        std::thread::Builder::new()
            .name(format!("ferrite-q-{model}"))
            .spawn(move || shared.run_timer())?;
        Ok(queue)
    }

    /// Starts the timer as a task on the current tokio runtime, on tokio's clock: queue tests run
    /// it on the paused clock at exact instants.
    #[cfg(test)]
    pub(crate) fn spawn_task(model: &str, cfg: BatchConfig, metrics: QueueMetrics) -> Queue {
        let queue = Queue::new(model, cfg, metrics);
        let shared = queue.shared.clone();
        tokio::spawn(async move { shared.run_timer_task().await });
        queue
    }

    fn new(model: &str, cfg: BatchConfig, metrics: QueueMetrics) -> Queue {
        let cfg = Arc::new(cfg);
        let model: Arc<str> = model.into();
        let canceled = metrics.canceled.clone();
        let shared = Arc::new(Shared {
            core: Mutex::new(Core {
                dispatcher: Dispatcher::new(model.clone(), cfg.clone(), metrics),
                timer_at: None,
            }),
            timer: Condvar::new(),
            #[cfg(test)]
            notify: tokio::sync::Notify::new(),
        });
        Queue {
            _handles: Arc::new(Handles(shared.clone())),
            shared,
            cfg,
            model,
            canceled,
        }
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
        if opts.lane == Lane::Bulk {
            return self.submit_bulk(inputs, rows, opts).await;
        }
        let answer = self.enqueue(inputs, rows, opts, false)?;
        self.answer(answer).await
    }

    /// The priority level a request's options ask for (0 = the model's default).
    fn level(&self, opts: &SubmitOptions) -> Result<u32, JobError> {
        let levels = self.cfg.priority_levels.max(1);
        if opts.priority > levels {
            return Err(JobError::BadPriority {
                model: self.model.to_string(),
                got: opts.priority,
                levels,
            });
        }
        Ok(if opts.priority == 0 {
            self.cfg.default_priority.clamp(1, levels)
        } else {
            opts.priority
        })
    }

    /// The request's timeout: its own, capped by the model's default, or the default.
    pub fn timeout(&self, opts: &SubmitOptions) -> Option<Duration> {
        match (opts.timeout, self.cfg.default_timeout) {
            (Some(t), Some(d)) => Some(t.min(d)),
            (t, d) => t.or(d),
        }
    }

    /// Hands an online job to the dispatcher now (synchronously) and returns where its answer
    /// comes.
    fn enqueue(
        &self,
        inputs: Vec<Tensor>,
        rows: usize,
        opts: SubmitOptions,
        reserved: bool,
    ) -> Result<Answer, JobError> {
        let priority = self.level(&opts)?;
        let timeout = self.timeout(&opts);
        let now = Instant::now();
        let (reply, rx) = oneshot::channel();
        let answer = Answer {
            rx,
            warmup: opts.warmup,
            parts: opts.parts.clone(),
            canceled: self.canceled.clone(),
        };
        let job = Job {
            inputs,
            rows,
            cost: if opts.cost == 0 { rows } else { opts.cost },
            ragged: opts.cost != 0,
            priority,
            enqueued_at: now,
            deadline: timeout.map(|t| now + t),
            timeout_us: timeout.map_or(0, |t| t.as_micros() as u64),
            warmup: opts.warmup,
            parts: opts.parts,
            lane: Lane::Online,
            reply,
        };
        self.shared.apply(Some(if reserved {
            Command::SubmitReserved(job)
        } else {
            Command::Submit(job)
        }));
        Ok(answer)
    }

    async fn answer(&self, mut answer: Answer) -> Result<JobOutput, JobError> {
        (&mut answer.rx)
            .await
            .unwrap_or_else(|_| Err(self.unavailable("the model was unloaded")))
    }

    /// Holds `n` places in the online queue at the priority `opts` asks for, for one request's `n`
    /// jobs: the request is admitted whole (`Permit::submit` then queues each job without a
    /// capacity check) or refused now with `QueueFull`, before any work is done for it. Places not
    /// used are given back when the permit is dropped.
    pub fn reserve(&self, n: usize, opts: &SubmitOptions) -> Result<Permit, JobError> {
        let priority = self.level(opts)?;
        self.shared.lock().dispatcher.reserve(priority, n)?;
        Ok(Permit {
            queue: self.clone(),
            priority,
            left: n,
        })
    }

    /// A job-lane submit: no deadline (a bulk job bounds what it has in flight itself), one level.
    async fn submit_bulk(
        &self,
        inputs: Vec<Tensor>,
        rows: usize,
        opts: SubmitOptions,
    ) -> Result<JobOutput, JobError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            inputs,
            rows,
            cost: if opts.cost == 0 { rows } else { opts.cost },
            ragged: opts.cost != 0,
            priority: 1,
            enqueued_at: Instant::now(),
            deadline: None,
            timeout_us: 0,
            warmup: false,
            parts: opts.parts,
            lane: Lane::Bulk,
            reply,
        };
        self.shared.apply(Some(Command::Submit(job)));
        rx.await
            .unwrap_or_else(|_| Err(self.unavailable("the model was unloaded")))
    }

    /// Worker side: blocks until the dispatcher hands this worker a batch; `None` once the queue is
    /// closed and drained. `layout`: how this worker's model lays out a batch (token budget). Call
    /// from a plain OS thread, never from async code.
    pub fn pull_blocking(&self, layout: Layout) -> Option<Batch> {
        let (tx, rx) = flume::bounded(1);
        self.shared.apply(Some(Command::Pull(Pull { tx, layout })));
        rx.recv().ok()
    }

    /// `pull_blocking` that runs `on_idle` once if no batch has come after `idle_after`, then keeps
    /// waiting (its place among the idle workers is kept: nothing is re-registered or lost).
    pub fn pull_blocking_or_idle(
        &self,
        layout: Layout,
        idle_after: Duration,
        on_idle: impl FnOnce(),
    ) -> Option<Batch> {
        let (tx, rx) = flume::bounded(1);
        self.shared.apply(Some(Command::Pull(Pull { tx, layout })));
        match rx.recv_timeout(idle_after) {
            Ok(batch) => return Some(batch),
            Err(flume::RecvTimeoutError::Disconnected) => return None,
            Err(flume::RecvTimeoutError::Timeout) => on_idle(),
        }
        rx.recv().ok()
    }

    /// Async twin of `pull_blocking` for a padded model, for tests and benchmarks.
    pub async fn pull(&self) -> Option<Batch> {
        self.pull_with(Layout::Padded).await
    }

    /// Async twin of `pull_blocking`, for tests and benchmarks.
    pub async fn pull_with(&self, layout: Layout) -> Option<Batch> {
        let (tx, rx) = flume::bounded(1);
        self.shared.apply(Some(Command::Pull(Pull { tx, layout })));
        rx.recv_async().await.ok()
    }

    /// Stops accepting; queued requests are still served, then workers see `None`.
    pub fn close(&self) {
        self.shared.apply(Some(Command::Close));
    }

    fn unavailable(&self, why: &str) -> JobError {
        JobError::Unavailable {
            model: self.model.to_string(),
            why: why.into(),
        }
    }
}

#[cfg(test)]
mod lane_tests;
#[cfg(test)]
mod rate_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod thread_tests;

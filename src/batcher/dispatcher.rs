//! The dispatcher: the one owner of a queue's `QueueState`. Its logic is a synchronous core,
//! `Dispatcher::handle` (one command) and `Dispatcher::step(now)` (expire, dispatch, and say when to
//! look again). It runs inline, under the queue's mutex, on the thread of whoever acts: a submitter
//! (an I/O thread) admits its job and, if a worker is idle and the policy says so, hands it a batch
//! right there; a worker that pulls takes its batch the same way. No request needs a thread hop
//! (Triton's design: the scheduler state under a mutex). A named OS thread (`ferrite-q-{model}`)
//! only waits on a condition variable for the next timed event (a deadline, `max_queue_delay`), as
//! Triton's condition-variable wait and TEI's queue thread do; it is woken only when an action moves
//! that instant earlier. Measured against the first version of this issue (every command sent to the
//! thread over a channel): one futex wake and context switch per submit cost ~15% of digits
//! throughput at 64 connections (benches/RESULTS.md, issue 13).
//!
//! The job lane (`Lane::Bulk`) is a second `QueueState` beside the online one: an idle worker the
//! online policy does not use now takes a full job batch at once if `policy::bulk_may_dispatch`
//! allows it (the batches in flight per lane are counted by the `InFlight` guard each batch
//! carries until the worker drops it).
//!
//! Queue-time budget (`BatchConfig::max_queue_time`): each batch feeds its cost and time in flight
//! to a `ServiceRate` when its worker drops it; an online submit (or a whole-request reservation)
//! whose expected wait, the queued cost ahead of it over the measured rate of all workers, exceeds
//! the budget is refused at once with `JobError::QueueTime`, as Triton's queue policy rejects a
//! request that would time out. Shedding by queue length alone lets a full queue hold hundreds of
//! milliseconds of work; this bounds the wait of what is admitted. Under a budget an online batch
//! also holds at most one budget of one worker's work (`policy::budget_limits`), so that the batch
//! running ahead of an admitted job and the job's own batch are each about one budget long too.
//!
//! It never runs a model and never sees HTTP.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::policy::{self, BatchConfig, Decision, ServiceRate};
use super::state::QueueState;
use super::{Batch, InFlight, Job, JobError, Lane, Layout, QueueMetrics};

pub(super) enum Command {
    Submit(Job),
    /// A job on a place its request reserved (`Dispatcher::reserve`).
    SubmitReserved(Job),
    /// A worker asks for its next batch.
    Pull(Pull),
    Close,
}

/// An idle worker: one batch is sent on `tx` (capacity 1); `layout` is how its model lays a batch
/// out, which decides what the token budget counts.
pub(super) struct Pull {
    pub tx: flume::Sender<Batch>,
    pub layout: Layout,
}

pub(super) struct Dispatcher {
    state: QueueState,
    /// The job lane: one level, no deadlines.
    bulk: QueueState,
    /// Batches in flight per lane (online, bulk).
    busy: [Arc<AtomicUsize>; 2],
    /// Fed by each batch's `InFlight` guard when its worker drops it (its own lock, so that a
    /// worker never takes the queue's).
    rate: Arc<Mutex<ServiceRate>>,
    /// The last online submit (online traffic is active for `bulk_quiet` after it).
    last_online: Option<Instant>,
    /// The most workers seen at once (idle + busy): a worker between two batches is neither.
    workers: usize,
    idle: VecDeque<Pull>,
    cfg: Arc<BatchConfig>,
    model: Arc<str>,
    metrics: QueueMetrics,
    closing: bool,
    /// Every `Queue` handle is gone: no worker can pull again.
    disconnected: bool,
}

impl Dispatcher {
    pub fn new(model: Arc<str>, cfg: Arc<BatchConfig>, metrics: QueueMetrics) -> Dispatcher {
        Dispatcher {
            state: QueueState::new(cfg.priority_levels, cfg.max_queue_size),
            bulk: QueueState::new(1, cfg.max_queue_size),
            busy: Default::default(),
            rate: Default::default(),
            last_online: None,
            workers: 0,
            idle: VecDeque::new(),
            cfg,
            model,
            metrics,
            closing: false,
            disconnected: false,
        }
    }

    /// One command; `None`: every handle is gone (the channel is disconnected).
    pub fn handle(&mut self, cmd: Option<Command>) {
        match cmd {
            Some(Command::Submit(job)) => self.admit(job, false),
            Some(Command::SubmitReserved(job)) => self.admit(job, true),
            Some(Command::Pull(pull)) => self.idle.push_back(pull),
            Some(Command::Close) => self.closing = true,
            None => {
                self.closing = true;
                self.disconnected = true;
            }
        }
    }

    /// Closed and drained, or no handle left to pull: the runner stops.
    pub fn finished(&self) -> bool {
        self.disconnected
            || (self.closing && self.state.pending_jobs() == 0 && self.bulk.pending_jobs() == 0)
    }

    /// Idle workers see their sender dropped (busy ones find the channel closed on their next
    /// pull); jobs nobody can pull any more and submits still in the channel are answered as
    /// unavailable.
    pub fn shut_down(&mut self) {
        self.idle.clear();
        let bulk = self.bulk.drain_all();
        for job in self.state.drain_all().into_iter().chain(bulk) {
            self.reject(job, "the model is being unloaded");
        }
        self.metrics.pending.set(0);
    }

    /// Holds `n` online places at `priority` for one request's jobs (all or none).
    pub fn reserve(&mut self, priority: u32, n: usize) -> Result<(), JobError> {
        if self.closing {
            return Err(JobError::Unavailable {
                model: self.model.to_string(),
                why: "the model is being unloaded".into(),
            });
        }
        self.check_queue_time(priority)?;
        let r = self.state.reserve(priority, n);
        self.settle_canceled();
        r.map_err(|full| JobError::QueueFull {
            model: self.model.to_string(),
            level: full.level,
            capacity: full.capacity,
        })
    }

    /// Gives back places `reserve` held that no job will use.
    pub fn release(&mut self, priority: u32, n: usize) {
        self.state.release(priority, n);
    }

    /// `QueueTime` when a job at `priority` would wait longer than the budget
    /// (`policy::over_queue_time`).
    fn check_queue_time(&self, priority: u32) -> Result<(), JobError> {
        let Some(budget) = self.cfg.max_queue_time else {
            return Ok(());
        };
        let rate = *self.rate.lock().unwrap_or_else(|e| e.into_inner());
        let ahead = self.state.cost_ahead(priority);
        match policy::over_queue_time(&rate, ahead, self.workers, Some(budget)) {
            None => Ok(()),
            Some(wait) => Err(JobError::QueueTime {
                model: self.model.to_string(),
                expected_us: wait.as_micros() as u64,
                budget_us: budget.as_micros() as u64,
            }),
        }
    }

    fn admit(&mut self, job: Job, reserved: bool) {
        if self.closing {
            return self.reject(job, "the model is being unloaded");
        }
        if job.lane == Lane::Online && !reserved && !job.warmup {
            if let Err(e) = self.check_queue_time(job.priority) {
                let _ = job.reply.send(Err(e));
                return;
            }
        }
        if reserved && job.lane == Lane::Online {
            self.last_online = Some(job.enqueued_at);
            self.state.push_reserved(job);
            self.metrics.pending.inc();
            return;
        }
        let lane = job.lane;
        let state = match lane {
            Lane::Online => {
                self.last_online = Some(job.enqueued_at);
                &mut self.state
            }
            Lane::Bulk => &mut self.bulk,
        };
        match state.push(job) {
            Ok(()) => self.metrics.pending.inc(),
            Err((job, full)) => {
                let gone = job.answer(Err(JobError::QueueFull {
                    model: self.model.to_string(),
                    level: full.level,
                    capacity: full.capacity,
                }));
                self.metrics.canceled.inc_by(u64::from(gone));
            }
        }
        // A full level first drops the jobs whose clients have gone.
        self.settle_canceled();
    }

    /// Takes the queue's count of dropped canceled jobs into the metrics: the pending gauge counts
    /// jobs, the canceled counter requests.
    fn settle_canceled(&mut self) {
        let mut gone = self.state.take_canceled();
        let bulk = self.bulk.take_canceled();
        gone.jobs += bulk.jobs;
        gone.requests += bulk.requests;
        self.metrics.pending.sub(gone.jobs as i64);
        self.metrics.canceled.inc_by(gone.requests as u64);
    }

    fn reject(&self, job: Job, why: &str) {
        let gone = job.answer(Err(JobError::Unavailable {
            model: self.model.to_string(),
            why: why.into(),
        }));
        self.metrics.canceled.inc_by(u64::from(gone));
    }

    /// Expires, dispatches what the policy allows, and returns when to look again.
    pub fn step(&mut self, now: Instant) -> Option<Instant> {
        for job in self.state.take_expired(now) {
            self.metrics.pending.dec();
            let timeout_us = job.timeout_us;
            let gone = job.answer(Err(JobError::Timeout {
                model: self.model.to_string(),
                timeout_us,
            }));
            self.metrics.canceled.inc_by(u64::from(gone));
        }
        let mut wake = None;
        let busy: usize = self.busy.iter().map(|b| b.load(Ordering::Acquire)).sum();
        self.workers = self.workers.max(self.idle.len() + busy);
        let (max_rows, max_tokens) = self.online_limits();
        while !self.idle.is_empty() {
            let pending = policy::Pending {
                rows: self.state.pending_rows(),
                tokens: self.state.pending_tokens(),
                oldest: self.state.oldest_enqueued(),
            };
            let idle = self.idle.len();
            match policy::decide_within(pending, now, &self.cfg, max_rows, max_tokens) {
                Decision::Dispatch(max_rows) => {
                    self.dispatch(policy::fair_share(max_rows, pending.rows, idle), max_tokens)
                }
                Decision::Preferred(size) => self.dispatch(
                    policy::preferred_share(
                        size,
                        pending.rows,
                        idle,
                        &self.cfg.preferred_batch_sizes,
                    ),
                    max_tokens,
                ),
                Decision::WaitUntil(t) => {
                    wake = Some(t);
                    if !self.dispatch_bulk(now) {
                        break;
                    }
                }
                Decision::Idle => {
                    if !self.dispatch_bulk(now) {
                        break;
                    }
                }
            }
        }
        // Online traffic turns quiet later: look again then if job rows wait for a worker.
        if !self.idle.is_empty() && self.bulk.pending_jobs() > 0 {
            let quiet_at = self.last_online.map(|t| t + self.cfg.bulk_quiet);
            if let Some(t) = quiet_at.filter(|&t| t > now) {
                wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
            }
        }
        match (wake, self.state.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Gives the first idle worker a full job-lane batch if there is one and the cap allows it
    /// (`policy::bulk_may_dispatch`); false when it did not (the worker stays idle).
    fn dispatch_bulk(&mut self, now: Instant) -> bool {
        if self.bulk.pending_jobs() == 0 {
            return false;
        }
        let busy_bulk = self.busy[1].load(Ordering::Acquire);
        let view = policy::BulkView {
            online_active: policy::online_active(
                self.state.pending_jobs(),
                self.last_online,
                now,
                self.cfg.bulk_quiet,
            ),
            busy_bulk,
            workers: self.workers,
        };
        if !policy::bulk_may_dispatch(view, self.cfg.bulk_share) {
            return false;
        }
        let before = self.idle.len();
        self.dispatch_lane(
            Lane::Bulk,
            self.cfg.max_batch_size.max(1),
            self.cfg.max_batch_tokens,
        );
        self.idle.len() < before
    }

    /// The online lane's batch limits now: the configured ones, capped at one budget of work under
    /// a queue-time budget (`policy::budget_limits`).
    fn online_limits(&self) -> (usize, Option<usize>) {
        let rate = *self.rate.lock().unwrap_or_else(|e| e.into_inner());
        policy::budget_limits(
            &rate,
            self.cfg.max_queue_time,
            self.cfg.max_batch_size.max(1),
            self.cfg.max_batch_tokens,
        )
    }

    /// Hands the first idle worker an online batch of at most `max_rows` rows and `max_tokens`
    /// (the limits `step` decided with: `online_limits`).
    fn dispatch(&mut self, max_rows: usize, max_tokens: Option<usize>) {
        self.dispatch_lane(Lane::Online, max_rows, max_tokens)
    }

    /// Hands the first idle worker a batch of at most `max_rows` rows and `max_tokens` from `lane`.
    fn dispatch_lane(&mut self, lane: Lane, max_rows: usize, max_tokens: Option<usize>) {
        let layout = self
            .idle
            .front()
            .expect("dispatch is only called with an idle worker. This is a bug.")
            .layout;
        let state = match lane {
            Lane::Online => &mut self.state,
            Lane::Bulk => &mut self.bulk,
        };
        let jobs = state.take_batch(max_rows, max_tokens, layout);
        self.metrics.pending.sub(jobs.len() as i64);
        self.settle_canceled();
        if jobs.is_empty() {
            return;
        }
        let worker = self
            .idle
            .pop_front()
            .expect("dispatch is only called with an idle worker. This is a bug.");
        let cost = jobs.iter().map(|j| j.cost).sum();
        let in_flight = Some(InFlight::new(
            &self.busy[(lane == Lane::Bulk) as usize],
            &self.rate,
            cost,
        ));
        // Capacity 1 and one batch per request: only a departed worker makes this fail.
        if let Err(flume::TrySendError::Disconnected(batch) | flume::TrySendError::Full(batch)) =
            worker.tx.try_send(Batch {
                jobs,
                lane,
                _in_flight: in_flight,
            })
        {
            // That worker has gone away: keep its jobs for the next one.
            self.metrics.pending.add(batch.jobs.len() as i64);
            match lane {
                Lane::Online => self.state.requeue_front(batch.jobs),
                Lane::Bulk => self.bulk.requeue_front(batch.jobs),
            }
        }
    }
}

//! Queue state owned by the dispatcher: one FIFO per priority level, bounded; deadline expiry;
//! batch extraction that skips requests whose client has gone and takes only jobs of the head job's
//! shape (`same_shape`). Pure data, no channels or timers.

use std::collections::VecDeque;
use tokio::time::Instant;

use super::{Job, Layout};

/// Whether two jobs can share a batch. Sequence jobs (`Job::ragged`) batch with each other at any
/// length: the model pads or packs them. Other jobs only when every input has the same non-batch
/// shape, as Triton batches only equal shapes for a model without ragged inputs: a variable
/// dimension (`dims = [-1, -1]`) would otherwise make the model's row concatenation fail for the
/// whole batch.
pub fn same_shape(a: &Job, b: &Job) -> bool {
    if a.ragged || b.ragged {
        return a.ragged && b.ragged;
    }
    a.inputs.len() == b.inputs.len()
        && a.inputs.iter().all(|x| {
            b.inputs
                .iter()
                .find(|y| y.name == x.name)
                .is_some_and(|y| y.shape.get(1..) == x.shape.get(1..))
        })
}

/// Jobs dropped because their client had gone, since the last `QueueState::take_canceled`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Canceled {
    pub jobs: usize,
    /// The client requests they make up (`Job::count_canceled`).
    pub requests: usize,
}

/// Why a job could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull {
    pub level: u32,
    pub capacity: usize,
}

pub struct QueueState {
    levels: Vec<VecDeque<Job>>,
    capacity: usize,
    /// Places held per level for jobs a request will submit (`reserve`): a request with several
    /// jobs is admitted whole or not at all.
    reserved: Vec<usize>,
    rows: usize,
    tokens: usize,
    /// Queued cost per level (`tokens` split by level), for the work ahead of a new job.
    level_cost: Vec<usize>,
    /// Lower bound on the earliest deadline queued (exact after `take_expired`).
    next_deadline: Option<Instant>,
    canceled: Canceled,
}

impl QueueState {
    /// `levels` priority levels (>= 1), each holding at most `capacity` jobs.
    pub fn new(levels: u32, capacity: usize) -> QueueState {
        QueueState {
            levels: (0..levels.max(1)).map(|_| VecDeque::new()).collect(),
            capacity,
            reserved: vec![0; levels.max(1) as usize],
            rows: 0,
            tokens: 0,
            level_cost: vec![0; levels.max(1) as usize],
            next_deadline: None,
            canceled: Canceled::default(),
        }
    }

    /// The canceled jobs dropped since the last call.
    pub fn take_canceled(&mut self) -> Canceled {
        std::mem::take(&mut self.canceled)
    }

    /// Removes jobs whose client has gone, counting them for `take_canceled`.
    fn drop_gone(&mut self, gone: Vec<Job>) {
        for j in &gone {
            self.removed(j);
            self.canceled.jobs += 1;
            self.canceled.requests += usize::from(j.count_canceled());
        }
    }

    /// Queued rows (requests may hold several).
    pub fn pending_rows(&self) -> usize {
        self.rows
    }

    /// Sum of queued jobs' costs (tokens for sequence models).
    pub fn pending_tokens(&self) -> usize {
        self.tokens
    }

    /// Queued cost a job at `priority` would wait behind: its level and every level above it.
    pub fn cost_ahead(&self, priority: u32) -> usize {
        self.level_cost[..=self.level_index(priority)].iter().sum()
    }

    fn added(&mut self, job: &Job) {
        self.rows += job.rows;
        self.tokens += job.cost;
        let idx = self.level_index(job.priority);
        self.level_cost[idx] += job.cost;
        if let Some(d) = job.deadline {
            self.next_deadline = Some(self.next_deadline.map_or(d, |n| n.min(d)));
        }
    }

    fn removed(&mut self, job: &Job) {
        self.rows -= job.rows;
        self.tokens -= job.cost;
        let idx = self.level_index(job.priority);
        self.level_cost[idx] -= job.cost;
    }

    pub fn pending_jobs(&self) -> usize {
        self.levels.iter().map(VecDeque::len).sum()
    }

    fn level_index(&self, priority: u32) -> usize {
        (priority.max(1) as usize - 1).min(self.levels.len() - 1)
    }

    /// Enqueues at the job's priority level (1 = first served); a full level (queued and reserved
    /// places) hands the job back.
    pub fn push(&mut self, job: Job) -> Result<(), (Job, QueueFull)> {
        let idx = self.level_index(job.priority);
        if let Err(full) = self.make_room(idx, 1) {
            return Err((job, full));
        }
        self.added(&job);
        self.levels[idx].push_back(job);
        Ok(())
    }

    /// Enqueues a job on a place `reserve` held for it.
    pub fn push_reserved(&mut self, job: Job) {
        let idx = self.level_index(job.priority);
        self.reserved[idx] = self.reserved[idx].saturating_sub(1);
        self.added(&job);
        self.levels[idx].push_back(job);
    }

    /// Holds `n` places at `priority` for one request's jobs, all or none. A request larger than
    /// the whole level is admitted only into an empty level (as a lone large job is batched).
    pub fn reserve(&mut self, priority: u32, n: usize) -> Result<(), QueueFull> {
        let idx = self.level_index(priority);
        self.make_room(idx, n)?;
        self.reserved[idx] += n;
        Ok(())
    }

    /// Gives back `n` places `reserve` held at `priority` that no job will use.
    pub fn release(&mut self, priority: u32, n: usize) {
        let idx = self.level_index(priority);
        self.reserved[idx] = self.reserved[idx].saturating_sub(n);
    }

    /// Whether `n` more jobs fit at level `idx` (dropping jobs whose client has gone first if
    /// not).
    fn make_room(&mut self, idx: usize, n: usize) -> Result<(), QueueFull> {
        let used = |s: &QueueState| s.levels[idx].len() + s.reserved[idx];
        let fits = |s: &QueueState| used(s) + n <= s.capacity || (n > 1 && used(s) == 0);
        if !fits(self) {
            self.prune_canceled();
        }
        if fits(self) {
            Ok(())
        } else {
            Err(QueueFull {
                level: idx as u32 + 1,
                capacity: self.capacity,
            })
        }
    }

    /// Puts jobs back at the front of their levels, keeping their order (a worker went away).
    pub fn requeue_front(&mut self, jobs: Vec<Job>) {
        for job in jobs.into_iter().rev() {
            let idx = self.level_index(job.priority);
            self.added(&job);
            self.levels[idx].push_front(job);
        }
    }

    /// Enqueue time of the oldest queued job, over all levels.
    pub fn oldest_enqueued(&self) -> Option<Instant> {
        self.levels
            .iter()
            .filter_map(|l| l.front().map(|j| j.enqueued_at))
            .min()
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        self.next_deadline
    }

    /// Removes and returns every job whose deadline is at or before `now`.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Job> {
        match self.next_deadline {
            Some(d) if d <= now => {}
            _ => return Vec::new(),
        }
        let mut expired = Vec::new();
        let mut next: Option<Instant> = None;
        for level in &mut self.levels {
            let mut keep = VecDeque::with_capacity(level.len());
            for job in level.drain(..) {
                match job.deadline {
                    Some(d) if d <= now => expired.push(job),
                    Some(d) => {
                        next = Some(next.map_or(d, |n| n.min(d)));
                        keep.push_back(job);
                    }
                    None => keep.push_back(job),
                }
            }
            *level = keep;
        }
        expired.iter().for_each(|j| self.removed(j));
        self.next_deadline = next;
        expired
    }

    /// Drops jobs whose client has gone (counted for `take_canceled`).
    fn prune_canceled(&mut self) {
        let mut gone = Vec::new();
        for level in &mut self.levels {
            let (keep, drop): (VecDeque<Job>, VecDeque<Job>) =
                level.drain(..).partition(|j| !j.reply.is_closed());
            *level = keep;
            gone.extend(drop);
        }
        self.drop_gone(gone)
    }

    /// Takes up to `max_rows` rows of jobs of the head job's shape (the oldest live job of the first
    /// non-empty level; `same_shape`), highest priority first and FIFO within a level. Jobs of
    /// another shape are passed over and keep their places; a job of the head's shape that does not
    /// fit ends the batch (never jumped over; a lone job larger than `max_rows` is still taken).
    /// With a token budget, see `take_by_length`. Jobs whose client has gone are dropped on the way
    /// (counted for `take_canceled`).
    pub fn take_batch(
        &mut self,
        max_rows: usize,
        max_tokens: Option<usize>,
        layout: Layout,
    ) -> Vec<Job> {
        self.drop_canceled_fronts();
        if let Some(budget) = max_tokens {
            return self.take_by_length(max_rows, budget, layout);
        }
        let mut batch: Vec<Job> = Vec::new();
        let mut gone = Vec::new();
        let mut rows = 0;
        'levels: for level in &mut self.levels {
            let mut i = 0;
            while i < level.len() {
                let job = &level[i];
                if job.reply.is_closed() {
                    gone.extend(level.remove(i));
                    continue;
                }
                if batch.first().is_some_and(|head| !same_shape(head, job)) {
                    i += 1;
                    continue;
                }
                if rows + job.rows > max_rows && !batch.is_empty() {
                    break 'levels;
                }
                let job = level.remove(i).expect("index checked. This is a bug.");
                rows += job.rows;
                batch.push(job);
                if rows >= max_rows {
                    break 'levels;
                }
            }
        }
        batch.iter().for_each(|j| self.removed(j));
        self.drop_gone(gone);
        batch
    }

    /// Drops canceled jobs at the front of every level (so that each front is live).
    fn drop_canceled_fronts(&mut self) {
        let mut gone = Vec::new();
        for level in &mut self.levels {
            while level.front().is_some_and(|j| j.reply.is_closed()) {
                gone.extend(level.pop_front());
            }
        }
        self.drop_gone(gone)
    }

    /// Token-budget batching for sequence jobs (`cost` = length). The oldest job of the first
    /// non-empty level always goes (so no job waits behind more than the jobs queued before it: the
    /// FIFO fairness bound); the rest are picked among the next `4 * max_rows` jobs of that level of
    /// the head's shape, by closeness of length to it, while rows <= `max_rows`, the batch's tokens
    /// fit `budget` (rows x longest for a `Padded` layout, the sum of lengths for `Packed`), and the
    /// longest is at most twice the shortest (padding efficiency >= 50% where the model pads). This
    /// keeps padding low without starving long requests.
    fn take_by_length(&mut self, max_rows: usize, budget: usize, layout: Layout) -> Vec<Job> {
        let Some(level) = self.levels.iter_mut().find(|l| !l.is_empty()) else {
            return Vec::new();
        };
        let window = level.len().min(4 * max_rows.max(1));
        let head = &level[0];
        let (mut rows, mut longest, mut shortest, mut tokens, mut n) =
            (head.rows, head.cost, head.cost, head.cost, 1usize);
        let mut order: Vec<usize> = (1..window)
            .filter(|&i| !level[i].reply.is_closed() && same_shape(head, &level[i]))
            .collect();
        order.sort_by_key(|&i| (level[i].cost.abs_diff(head.cost), i));
        let mut chosen = vec![0usize];
        for i in order {
            let j = &level[i];
            let (new_longest, new_shortest) = (longest.max(j.cost), shortest.min(j.cost));
            let fits = match layout {
                Layout::Padded => (n + 1) * new_longest <= budget,
                Layout::Packed => tokens + j.cost <= budget,
            };
            if rows + j.rows <= max_rows && fits && new_longest <= 2 * new_shortest.max(1) {
                rows += j.rows;
                longest = new_longest;
                shortest = new_shortest;
                tokens += j.cost;
                n += 1;
                chosen.push(i);
            }
        }
        chosen.sort_unstable();
        let mut batch: Vec<Job> = chosen
            .iter()
            .rev()
            .map(|&i| {
                level
                    .remove(i)
                    .expect("index within the window. This is a bug.")
            })
            .collect();
        batch.reverse();
        batch.iter().for_each(|j| self.removed(j));
        batch
    }

    /// Empties the queue (shutdown).
    pub fn drain_all(&mut self) -> Vec<Job> {
        self.rows = 0;
        self.tokens = 0;
        self.level_cost.iter_mut().for_each(|c| *c = 0);
        self.next_deadline = None;
        self.levels.iter_mut().flat_map(|l| l.drain(..)).collect()
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;

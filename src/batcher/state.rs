//! Queue state owned by the dispatcher task: one FIFO per priority level, bounded; deadline expiry;
//! batch extraction that skips requests whose client has gone. Pure data, no channels or timers.

use std::collections::VecDeque;
use tokio::time::Instant;

use super::Job;

/// Why a job could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull {
    pub level: u32,
    pub capacity: usize,
}

pub struct QueueState {
    levels: Vec<VecDeque<Job>>,
    capacity: usize,
    rows: usize,
    /// Lower bound on the earliest deadline queued (exact after `take_expired`).
    next_deadline: Option<Instant>,
}

impl QueueState {
    /// `levels` priority levels (>= 1), each holding at most `capacity` jobs.
    pub fn new(levels: u32, capacity: usize) -> QueueState {
        QueueState {
            levels: (0..levels.max(1)).map(|_| VecDeque::new()).collect(),
            capacity,
            rows: 0,
            next_deadline: None,
        }
    }

    /// Queued rows (requests may hold several).
    pub fn pending_rows(&self) -> usize {
        self.rows
    }

    pub fn pending_jobs(&self) -> usize {
        self.levels.iter().map(VecDeque::len).sum()
    }

    /// Enqueues at the job's priority level (1 = first served); a full level hands the job back.
    pub fn push(&mut self, job: Job) -> Result<(), (Job, QueueFull)> {
        let idx = (job.priority.max(1) as usize - 1).min(self.levels.len() - 1);
        if self.levels[idx].len() >= self.capacity {
            self.prune_canceled();
        }
        if self.levels[idx].len() >= self.capacity {
            let full = QueueFull {
                level: idx as u32 + 1,
                capacity: self.capacity,
            };
            return Err((job, full));
        }
        if let Some(d) = job.deadline {
            self.next_deadline = Some(self.next_deadline.map_or(d, |n| n.min(d)));
        }
        self.rows += job.rows;
        self.levels[idx].push_back(job);
        Ok(())
    }

    /// Puts jobs back at the front of their levels, keeping their order (a worker went away).
    pub fn requeue_front(&mut self, jobs: Vec<Job>) {
        for job in jobs.into_iter().rev() {
            let idx = (job.priority.max(1) as usize - 1).min(self.levels.len() - 1);
            if let Some(d) = job.deadline {
                self.next_deadline = Some(self.next_deadline.map_or(d, |n| n.min(d)));
            }
            self.rows += job.rows;
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
        self.rows -= expired.iter().map(|j| j.rows).sum::<usize>();
        self.next_deadline = next;
        expired
    }

    /// Drops jobs whose client has gone; returns how many.
    pub fn prune_canceled(&mut self) -> usize {
        let mut n = 0;
        for level in &mut self.levels {
            level.retain(|j| {
                let gone = j.reply.is_closed();
                if gone {
                    self.rows -= j.rows;
                    n += 1;
                }
                !gone
            });
        }
        n
    }

    /// Takes up to `max_rows` rows of jobs, highest priority first and FIFO within a level, never
    /// jumping over a job that does not fit (a lone job larger than `max_rows` is still taken).
    /// Jobs whose client has gone are dropped on the way; their count is returned.
    pub fn take_batch(&mut self, max_rows: usize) -> (Vec<Job>, usize) {
        let mut batch = Vec::new();
        let mut rows = 0;
        let mut canceled = 0;
        'levels: for level in &mut self.levels {
            while let Some(front) = level.front() {
                if front.reply.is_closed() {
                    let job = level.pop_front().expect("front exists. This is a bug.");
                    self.rows -= job.rows;
                    canceled += 1;
                    continue;
                }
                if rows + front.rows > max_rows && !batch.is_empty() {
                    break 'levels;
                }
                let job = level.pop_front().expect("front exists. This is a bug.");
                rows += job.rows;
                self.rows -= job.rows;
                batch.push(job);
                if rows >= max_rows {
                    break 'levels;
                }
            }
        }
        (batch, canceled)
    }

    /// Empties the queue (shutdown).
    pub fn drain_all(&mut self) -> Vec<Job> {
        self.rows = 0;
        self.next_deadline = None;
        self.levels.iter_mut().flat_map(|l| l.drain(..)).collect()
    }
}

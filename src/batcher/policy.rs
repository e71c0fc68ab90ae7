//! The batch decision, as a pure function: given what is queued and the time, should an idle worker
//! get a batch now (and how many rows at most), wait until a given instant, or stay idle? And, at
//! submit, would a new request wait longer than the model's queue-time budget (`ServiceRate`,
//! `over_queue_time`)?

use std::time::Duration;
use tokio::time::Instant;

/// Batching parameters of one model version (from `[dynamic_batching]` and `max_batch_size`).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchConfig {
    /// Most rows in one batch (1 for a model that does not batch).
    pub max_batch_size: usize,
    /// Longest a lone request waits for company while a worker is idle.
    pub max_queue_delay: Duration,
    /// Batch sizes that are dispatched at once when the queue can fill one (the largest it can; each
    /// <= max_batch_size). See `decide`.
    pub preferred_batch_sizes: Vec<usize>,
    /// Most queued requests per priority level; beyond it a submit is rejected.
    pub max_queue_size: usize,
    /// Upper bound on (and default for) a request's timeout; `None` = no deadline by default.
    pub default_timeout: Option<Duration>,
    /// Number of priority levels; level 1 is served first.
    pub priority_levels: u32,
    /// Level used when a request names none (priority 0).
    pub default_priority: u32,
    /// For sequence models: most tokens in one batch: rows x longest for a worker whose model pads
    /// its batch, the real tokens (sum of costs) for one that packs it (`Layout`).
    pub max_batch_tokens: Option<usize>,
    /// The job lane (bulk jobs, `Lane::Bulk`): the share of the workers its batches may hold while
    /// online traffic is active (`bulk_cap`); with no online traffic it uses every idle worker.
    pub bulk_share: f64,
    /// Online traffic counts as active while a request is queued and for this long after the last
    /// online submit (so that workers are held back for online traffic between its arrivals).
    pub bulk_quiet: Duration,
    /// Queue-time budget: an online submit whose expected wait (`ServiceRate::expected_wait`) is
    /// longer is refused at once (overload); `None` = shed by queue length only.
    pub max_queue_time: Option<Duration>,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_batch_size: 1,
            max_queue_delay: Duration::ZERO,
            preferred_batch_sizes: Vec::new(),
            max_queue_size: 1024,
            default_timeout: None,
            priority_levels: 1,
            default_priority: 1,
            max_batch_tokens: None,
            bulk_share: 0.5,
            bulk_quiet: Duration::from_millis(100),
            max_queue_time: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Give an idle worker a batch of at most this many rows now; idle workers split what is
    /// queued evenly (`fair_share`).
    Dispatch(usize),
    /// Give an idle worker a batch of this preferred size now; idle workers split the queue only
    /// into preferred sizes (`preferred_share`).
    Preferred(usize),
    /// Nothing to send yet: look again at this instant (or when something arrives).
    WaitUntil(Instant),
    /// The queue is empty.
    Idle,
}

/// What is queued, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub rows: usize,
    /// Sum of the jobs' costs (tokens for sequence models).
    pub tokens: usize,
    /// Enqueue time of the oldest queued request.
    pub oldest: Option<Instant>,
}

/// Decides for one idle worker, with Triton's semantics for preferred sizes:
/// - the oldest request has waited `max_queue_delay`: send what there is, up to `max_batch_size`;
/// - else, with preferred sizes, the largest one the queue can fill goes now (preferred [16, 32]
///   and 20 rows queued: 16; 100 queued: 32, even when `max_batch_size` is 64);
/// - else a full batch (`max_batch_size` rows, or `max_batch_tokens` queued) goes now;
/// - else wait until the oldest request's delay is up (or something arrives).
///
/// How it combines with the fair share between idle instances: a delayed or full batch is split
/// evenly over the idle workers (`fair_share`); a preferred batch is split only into preferred
/// sizes (`preferred_share`: the even share rounded down to the largest preferred size it holds,
/// or the whole preferred batch to one worker when no preferred size fits in a share).
pub fn decide(pending: Pending, now: Instant, cfg: &BatchConfig) -> Decision {
    decide_within(pending, now, cfg, cfg.max_batch_size, cfg.max_batch_tokens)
}

/// `decide` with the batch limits in effect now (`budget_limits` under a queue-time budget) in place
/// of the configured ones: a queue that holds a capped batch is full.
pub fn decide_within(
    pending: Pending,
    now: Instant,
    cfg: &BatchConfig,
    max_rows: usize,
    max_tokens: Option<usize>,
) -> Decision {
    let (pending_rows, Some(oldest)) = (pending.rows, pending.oldest) else {
        return Decision::Idle;
    };
    if pending_rows == 0 {
        return Decision::Idle;
    }
    let max = max_rows.max(1);
    let due = oldest + cfg.max_queue_delay;
    if now >= due {
        return Decision::Dispatch(max);
    }
    if let Some(best) = largest_preferred(&cfg.preferred_batch_sizes, pending_rows.min(max)) {
        return Decision::Preferred(best);
    }
    let tokens_full = max_tokens.is_some_and(|t| pending.tokens >= t);
    if pending_rows >= max || tokens_full {
        return Decision::Dispatch(max);
    }
    Decision::WaitUntil(due)
}

/// The largest preferred size at most `rows`.
fn largest_preferred(preferred: &[usize], rows: usize) -> Option<usize> {
    preferred
        .iter()
        .copied()
        .filter(|&p| p > 0 && p <= rows)
        .max()
}

/// Rows for one of `idle_workers` idle workers when the policy says dispatch `max_rows`: an even
/// share of what is queued, so that idle instances split the queue instead of one taking it all
/// while the others wait for new arrivals (with a closed loop of clients, that ping-pongs: one
/// instance busy at a time). On the CPU the GEMM rate is flat from ~20 rows up, so halves cost
/// nothing; on a GPU two half batches on two instances still finish sooner than one full batch.
pub fn fair_share(max_rows: usize, pending_rows: usize, idle_workers: usize) -> usize {
    max_rows
        .min(pending_rows.div_ceil(idle_workers.max(1)))
        .max(1)
}

/// Rows for one of `idle_workers` idle workers when the policy says send the preferred size `size`:
/// the even share rounded down to the largest preferred size it holds, so that every instance
/// still gets a size the model is tuned for; when no preferred size fits in a share, one worker
/// takes the whole `size` (and the rest wait for more arrivals or the delay).
pub fn preferred_share(
    size: usize,
    pending_rows: usize,
    idle_workers: usize,
    preferred: &[usize],
) -> usize {
    let share = fair_share(size, pending_rows, idle_workers);
    largest_preferred(preferred, share).unwrap_or(size)
}

/// What the job lane's decision looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkView {
    /// Online requests are queued, or one was submitted within `bulk_quiet`.
    pub online_active: bool,
    /// Job-lane batches being computed (or staged) now.
    pub busy_bulk: usize,
    /// Every worker of the queue: idle, busy with an online batch or with a job batch.
    pub workers: usize,
}

/// Most job-lane batches in flight while online traffic is active: `share` of the workers,
/// rounded down, at least one, but never every worker when there are several (one is always kept
/// for online traffic); 0 for a single worker (online first; the job runs in its pauses).
pub fn bulk_cap(workers: usize, share: f64) -> usize {
    let share = if share.is_finite() {
        share.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let cap = ((workers as f64) * share).floor() as usize;
    cap.max(1).min(workers.saturating_sub(1))
}

/// Whether an idle worker the online lane does not need now (its queue is empty or waiting for
/// company) may take a job-lane batch: always when online traffic is quiet (jobs use idle capacity
/// fully), else only while fewer than `bulk_cap` job batches are in flight. A running batch is never
/// interrupted: the cap only holds back new job batches.
pub fn bulk_may_dispatch(view: BulkView, share: f64) -> bool {
    !view.online_active || view.busy_bulk < bulk_cap(view.workers, share)
}

/// Whether online traffic is active at `now`: requests queued, or the last online submit within
/// `quiet`.
pub fn online_active(
    online_pending: usize,
    last_online: Option<Instant>,
    now: Instant,
    quiet: Duration,
) -> bool {
    online_pending > 0 || last_online.is_some_and(|t| now < t + quiet)
}

/// Completed batches before `ServiceRate` gives an estimate: the first batches of a model (warm-up,
/// cold caches, a lone request per batch) say little about its rate under load.
pub const RATE_MIN_BATCHES: u32 = 8;

/// Weight of the newest batch in the moving average: about the last 10 batches count, so the
/// estimate follows a changed rate (a longer text mix, a busier machine) within tens of batches.
const RATE_ALPHA: f64 = 0.2;

/// The measured service rate of one worker of a queue, in cost units (tokens for sequence models,
/// rows otherwise) per second: an exponentially weighted average over completed batches of each
/// batch's cost over the time it was in flight (pulled until dropped by its worker). Pure: the
/// dispatcher feeds it and asks it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServiceRate {
    per_worker: f64,
    batches: u32,
}

impl ServiceRate {
    /// Takes in one completed batch of `cost` units that was in flight for `busy`.
    pub fn observe(&mut self, cost: usize, busy: Duration) {
        if cost == 0 {
            return;
        }
        // A batch measured at 0 (a coarse clock) counts as 1 us rather than an infinite rate.
        let rate = cost as f64 / busy.as_secs_f64().max(1e-6);
        self.per_worker = if self.batches == 0 {
            rate
        } else {
            RATE_ALPHA * rate + (1.0 - RATE_ALPHA) * self.per_worker
        };
        self.batches = self.batches.saturating_add(1);
    }

    /// One worker's rate (units per second); `None` before `RATE_MIN_BATCHES` batches.
    pub fn per_worker(&self) -> Option<f64> {
        (self.batches >= RATE_MIN_BATCHES && self.per_worker > 0.0).then_some(self.per_worker)
    }

    /// How long `ahead` queued units take `workers` workers at the measured rate: the wait of a
    /// job queued behind them. `None` while the rate is unknown or there is no worker.
    pub fn expected_wait(&self, ahead: usize, workers: usize) -> Option<Duration> {
        let rate = self.per_worker()? * workers as f64;
        (rate > 0.0).then(|| Duration::from_secs_f64(ahead as f64 / rate))
    }
}

/// The expected wait of a job submitted now, when it is over the budget (the job is refused);
/// `None` when the job is admitted: no budget, no rate known yet, or a wait within the budget.
/// `ahead`: queued units served before it (its priority level and the levels above).
pub fn over_queue_time(
    rate: &ServiceRate,
    ahead: usize,
    workers: usize,
    budget: Option<Duration>,
) -> Option<Duration> {
    let budget = budget?;
    rate.expected_wait(ahead, workers)
        .filter(|&wait| wait > budget)
}

/// The batch limits of an online batch under a queue-time budget: with a measured rate, a batch
/// holds at most the work one worker does within the budget (`ceil(rate x budget)` cost units, at
/// least one job: the oldest job always goes). Without the cap, an overloaded queue forms full
/// batches (64 texts, ~230 ms on two CPU cores), and an admitted request waits for the batch a
/// worker is running and then for its own, each far longer than the budget that admitted it: with
/// it, queue, running batch and own batch are each about one budget long. The units are the queue's
/// cost units: tokens for a model with a token budget (the token limit shrinks), rows otherwise
/// (the row limit shrinks). No budget or no rate yet: the configured limits.
pub fn budget_limits(
    rate: &ServiceRate,
    budget: Option<Duration>,
    max_rows: usize,
    max_tokens: Option<usize>,
) -> (usize, Option<usize>) {
    let Some(units) = budget
        .zip(rate.per_worker())
        .map(|(b, r)| ((r * b.as_secs_f64()).ceil() as usize).max(1))
    else {
        return (max_rows, max_tokens);
    };
    match max_tokens {
        Some(t) => (max_rows, Some(t.min(units))),
        None => (max_rows.min(units).max(1), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(per_batch: usize, busy_ms: u64, batches: u32) -> ServiceRate {
        let mut r = ServiceRate::default();
        (0..batches).for_each(|_| r.observe(per_batch, Duration::from_millis(busy_ms)));
        r
    }

    #[test]
    fn service_rate_unknown_before_min_batches() {
        let r = measured(100, 10, RATE_MIN_BATCHES - 1);
        assert_eq!(r.per_worker(), None);
        assert_eq!(r.expected_wait(1_000_000, 2), None);
        let budget = Some(Duration::from_millis(1));
        assert_eq!(over_queue_time(&r, 1_000_000, 2, budget), None);
    }

    #[test]
    fn expected_wait_is_work_ahead_over_rate_times_workers() {
        // 100 units per 10 ms = 10,000/s per worker; 2 workers: 20,000/s.
        let r = measured(100, 10, RATE_MIN_BATCHES);
        assert_eq!(r.per_worker(), Some(10_000.0));
        assert_eq!(r.expected_wait(2_000, 2), Some(Duration::from_millis(100)));
        assert_eq!(r.expected_wait(0, 2), Some(Duration::ZERO));
        assert_eq!(r.expected_wait(2_000, 0), None);
        let budget = Some(Duration::from_millis(50));
        assert_eq!(
            over_queue_time(&r, 2_000, 2, budget),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            over_queue_time(&r, 1_000, 2, budget),
            None,
            "50 ms: at the budget"
        );
        assert_eq!(over_queue_time(&r, 2_000, 2, None), None, "no budget");
    }

    #[test]
    fn service_rate_follows_a_changed_rate() {
        let mut r = measured(100, 10, 20);
        // The model gets 4x slower: after 10 batches the estimate has moved most of the way, after
        // 30 it is within 1% of the new rate (0.8^30 of the old one is left).
        (0..10).for_each(|_| r.observe(100, Duration::from_millis(40)));
        let mid = r.per_worker().unwrap();
        assert!(mid < 3_500.0 && mid > 2_500.0, "{mid}");
        (0..20).for_each(|_| r.observe(100, Duration::from_millis(40)));
        let got = r.per_worker().unwrap();
        assert!((got - 2_500.0).abs() / 2_500.0 < 0.01, "{got}");
    }

    #[test]
    fn bulk_cap_keeps_a_worker_for_online_traffic() {
        assert_eq!(bulk_cap(1, 0.5), 0, "one worker: online first");
        assert_eq!(bulk_cap(2, 0.5), 1);
        assert_eq!(bulk_cap(2, 1.0), 1, "never every worker");
        assert_eq!(bulk_cap(4, 0.5), 2);
        assert_eq!(bulk_cap(4, 0.1), 1, "at least one with several workers");
        assert_eq!(bulk_cap(8, 0.25), 2);
        assert_eq!(bulk_cap(3, f64::NAN), 1);
        assert_eq!(bulk_cap(0, 0.5), 0);
    }

    #[test]
    fn bulk_may_dispatch_uses_every_idle_worker_when_online_is_quiet() {
        let quiet = BulkView {
            online_active: false,
            busy_bulk: 3,
            workers: 4,
        };
        assert!(bulk_may_dispatch(quiet, 0.5));
        let active = BulkView {
            online_active: true,
            ..quiet
        };
        assert!(!bulk_may_dispatch(active, 0.5));
        assert!(bulk_may_dispatch(
            BulkView {
                busy_bulk: 1,
                ..active
            },
            0.5
        ));
    }

    #[test]
    fn online_active_while_queued_or_within_quiet() {
        let t = Instant::now();
        let q = Duration::from_millis(100);
        assert!(online_active(1, None, t, q));
        assert!(!online_active(0, None, t, q));
        assert!(online_active(
            0,
            Some(t),
            t + q - Duration::from_nanos(1),
            q
        ));
        assert!(!online_active(0, Some(t), t + q, q));
    }

    fn cfg() -> BatchConfig {
        BatchConfig {
            max_batch_size: 8,
            max_queue_delay: Duration::from_micros(500),
            preferred_batch_sizes: vec![4],
            ..BatchConfig::default()
        }
    }

    fn p(rows: usize, oldest: Option<Instant>) -> Pending {
        Pending {
            rows,
            tokens: rows * 10,
            oldest,
        }
    }

    #[test]
    fn fair_share_splits_the_queue_over_idle_workers() {
        assert_eq!(fair_share(64, 64, 2), 32);
        assert_eq!(fair_share(64, 63, 2), 32);
        assert_eq!(fair_share(64, 200, 2), 64, "never above max_rows");
        assert_eq!(fair_share(64, 10, 1), 10);
        assert_eq!(fair_share(64, 1, 4), 1, "at least one row");
        assert_eq!(fair_share(8, 5, 0), 5);
    }

    #[test]
    fn decide_empty_queue_is_idle() {
        let now = Instant::now();
        assert_eq!(decide(p(0, None), now, &cfg()), Decision::Idle);
    }

    #[test]
    fn decide_token_budget_reached_dispatches_at_once() {
        let now = Instant::now();
        let c = BatchConfig {
            max_batch_tokens: Some(20),
            ..cfg()
        };
        assert_eq!(decide(p(2, Some(now)), now, &c), Decision::Dispatch(8));
        assert!(matches!(
            decide(p(1, Some(now)), now, &c),
            Decision::WaitUntil(_)
        ));
    }

    #[test]
    fn decide_within_a_capped_batch_is_full() {
        let now = Instant::now();
        let c = BatchConfig {
            preferred_batch_sizes: Vec::new(),
            max_batch_tokens: Some(1000),
            ..cfg()
        };
        // Rows capped at 3: three queued rows go now, two wait for the delay.
        assert_eq!(
            decide_within(p(3, Some(now)), now, &c, 3, None),
            Decision::Dispatch(3)
        );
        assert!(matches!(
            decide_within(p(2, Some(now)), now, &c, 3, None),
            Decision::WaitUntil(_)
        ));
        // Tokens capped at 30 (of 1,000): 30 queued tokens go now.
        assert_eq!(
            decide_within(p(3, Some(now)), now, &c, 8, Some(30)),
            Decision::Dispatch(8)
        );
        assert!(matches!(
            decide(p(3, Some(now)), now, &c),
            Decision::WaitUntil(_)
        ));
    }

    #[test]
    fn decide_full_batch_without_preferred_sizes_dispatches_max() {
        let now = Instant::now();
        let c = BatchConfig {
            preferred_batch_sizes: Vec::new(),
            ..cfg()
        };
        assert_eq!(decide(p(20, Some(now)), now, &c), Decision::Dispatch(8));
        assert_eq!(decide(p(8, Some(now)), now, &c), Decision::Dispatch(8));
    }

    #[test]
    fn decide_preferred_size_reached_dispatches_preferred() {
        let now = Instant::now();
        assert_eq!(decide(p(5, Some(now)), now, &cfg()), Decision::Preferred(4));
    }

    fn triton_cfg() -> BatchConfig {
        BatchConfig {
            max_batch_size: 64,
            max_queue_delay: Duration::from_micros(200),
            preferred_batch_sizes: vec![16, 32],
            ..BatchConfig::default()
        }
    }

    /// Triton: the largest preferred size the queue can fill goes at once, also when the queue
    /// holds a full `max_batch_size` (the batch is then the largest preferred size, not max).
    #[test]
    fn decide_preferred_sizes_dispatch_the_largest_the_queue_fills() {
        let now = Instant::now();
        let c = triton_cfg();
        assert_eq!(decide(p(20, Some(now)), now, &c), Decision::Preferred(16));
        assert_eq!(decide(p(16, Some(now)), now, &c), Decision::Preferred(16));
        assert_eq!(decide(p(31, Some(now)), now, &c), Decision::Preferred(16));
        assert_eq!(decide(p(32, Some(now)), now, &c), Decision::Preferred(32));
        assert_eq!(decide(p(100, Some(now)), now, &c), Decision::Preferred(32));
    }

    /// No preferred size can be filled: wait up to the delay, then send what there is, up to max.
    #[test]
    fn decide_preferred_sizes_none_fillable_waits_then_sends_up_to_max() {
        let now = Instant::now();
        let c = triton_cfg();
        let due = now + Duration::from_micros(200);
        assert_eq!(decide(p(15, Some(now)), now, &c), Decision::WaitUntil(due));
        let just_before = due - Duration::from_nanos(1);
        assert_eq!(
            decide(p(15, Some(now)), just_before, &c),
            Decision::WaitUntil(due)
        );
        assert_eq!(decide(p(15, Some(now)), due, &c), Decision::Dispatch(64));
    }

    /// Once the oldest request has waited the delay, the batch is no longer held to a preferred
    /// size: what is queued goes, up to max.
    #[test]
    fn decide_preferred_sizes_after_the_delay_send_up_to_max() {
        let now = Instant::now();
        let due = now + Duration::from_micros(200);
        let c = triton_cfg();
        assert_eq!(decide(p(40, Some(now)), due, &c), Decision::Dispatch(64));
        assert_eq!(decide(p(100, Some(now)), due, &c), Decision::Dispatch(64));
    }

    #[test]
    fn preferred_share_rounds_the_even_share_down_to_a_preferred_size() {
        let pref = [16, 32];
        assert_eq!(
            preferred_share(32, 64, 2, &pref),
            32,
            "two full preferred halves"
        );
        assert_eq!(preferred_share(32, 40, 2, &pref), 16, "share 20 holds 16");
        assert_eq!(preferred_share(16, 24, 1, &pref), 16);
        assert_eq!(preferred_share(32, 100, 3, &pref), 32, "share 34 holds 32");
        assert_eq!(
            preferred_share(16, 20, 2, &pref),
            16,
            "share 10 holds none: one worker takes the whole preferred batch"
        );
    }

    #[test]
    fn decide_small_batch_waits_until_oldest_delay() {
        let now = Instant::now();
        let due = now + Duration::from_micros(500);
        assert_eq!(
            decide(p(2, Some(now)), now, &cfg()),
            Decision::WaitUntil(due)
        );
        assert_eq!(decide(p(2, Some(now)), due, &cfg()), Decision::Dispatch(8));
    }

    #[test]
    fn decide_zero_delay_dispatches_at_once() {
        let now = Instant::now();
        let c = BatchConfig {
            max_queue_delay: Duration::ZERO,
            ..cfg()
        };
        assert_eq!(decide(p(1, Some(now)), now, &c), Decision::Dispatch(8));
    }

    #[test]
    fn budget_limits_cap_a_batch_at_one_budget_of_work() {
        // 2,000 units/s per worker, 20 ms budget: 40 units.
        let r = measured(200, 100, RATE_MIN_BATCHES);
        let b = Some(Duration::from_millis(20));
        assert_eq!(budget_limits(&r, b, 64, Some(8192)), (64, Some(40)));
        assert_eq!(budget_limits(&r, b, 64, None), (40, None));
        assert_eq!(
            budget_limits(&r, b, 16, None),
            (16, None),
            "never above the configured limit"
        );
        assert_eq!(budget_limits(&r, b, 64, Some(30)), (64, Some(30)));
        // A budget shorter than one unit of work still lets one job go.
        assert_eq!(
            budget_limits(&r, Some(Duration::from_micros(1)), 64, None),
            (1, None)
        );
        assert_eq!(
            budget_limits(&r, Some(Duration::from_micros(1)), 64, Some(8192)),
            (64, Some(1))
        );
    }

    #[test]
    fn budget_limits_keep_the_configured_limits_without_budget_or_rate() {
        let r = measured(200, 100, RATE_MIN_BATCHES);
        assert_eq!(budget_limits(&r, None, 64, Some(8192)), (64, Some(8192)));
        let young = measured(200, 100, RATE_MIN_BATCHES - 1);
        let b = Some(Duration::from_millis(20));
        assert_eq!(budget_limits(&young, b, 64, Some(8192)), (64, Some(8192)));
        assert_eq!(budget_limits(&young, b, 64, None), (64, None));
    }
}

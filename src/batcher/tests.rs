//! Queue behaviour under tokio's paused clock, with the dispatcher's core run as a task
//! (`Queue::spawn_task`): no sleeps, exact instants. The production thread runner is tested in
//! `thread_tests.rs`.

use super::*;
use crate::tensor::{Tensor, TensorData};

pub(super) fn metrics() -> QueueMetrics {
    QueueMetrics {
        pending: prometheus::IntGauge::new("p", "p").unwrap(),
        canceled: prometheus::IntCounter::new("c", "c").unwrap(),
    }
}

pub(super) fn row(v: f32) -> Vec<Tensor> {
    vec![Tensor::new("x", vec![1, 1], TensorData::F32(vec![v]))]
}

fn cfg() -> BatchConfig {
    BatchConfig {
        max_batch_size: 4,
        max_queue_delay: Duration::from_millis(10),
        max_queue_size: 8,
        ..BatchConfig::default()
    }
}

/// Answers every job of `batch` with its own input as output.
pub(super) fn echo(batch: Batch) -> Vec<f32> {
    let mut seen = Vec::new();
    for job in batch.jobs {
        if let TensorData::F32(v) = &job.inputs[0].data {
            seen.push(v[0]);
        }
        let _ = job.reply.send(Ok(JobOutput {
            outputs: job.inputs.clone(),
            timings: Timings::default(),
        }));
    }
    seen
}

pub(super) fn spawn_submit(
    q: &Queue,
    v: f32,
    opts: SubmitOptions,
) -> tokio::task::JoinHandle<Result<JobOutput, JobError>> {
    let q = q.clone();
    tokio::spawn(async move { q.submit(row(v), 1, opts).await })
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn lone_request_waits_max_queue_delay_then_dispatches() {
    let q = Queue::spawn_task("m", cfg(), metrics());
    let start = Instant::now();
    let h = spawn_submit(&q, 1.0, SubmitOptions::default());
    let batch = q.pull().await.unwrap();
    assert_eq!(Instant::now() - start, Duration::from_millis(10));
    assert_eq!(echo(batch), vec![1.0]);
    assert!(h.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn batch_closes_at_max_batch_size_without_waiting() {
    let q = Queue::spawn_task("m", cfg(), metrics());
    let start = Instant::now();
    let hs: Vec<_> = (0..6)
        .map(|i| spawn_submit(&q, i as f32, SubmitOptions::default()))
        .collect();
    settle().await;
    let batch = q.pull().await.unwrap();
    assert_eq!(Instant::now(), start, "a full batch must not wait");
    assert_eq!(echo(batch), vec![0.0, 1.0, 2.0, 3.0]);
    // The remaining two wait for the delay.
    let batch = q.pull().await.unwrap();
    assert_eq!(Instant::now() - start, Duration::from_millis(10));
    assert_eq!(echo(batch), vec![4.0, 5.0]);
    for h in hs {
        assert!(h.await.unwrap().is_ok());
    }
}

#[tokio::test(start_paused = true)]
async fn preferred_batch_size_dispatches_at_once() {
    let c = BatchConfig {
        preferred_batch_sizes: vec![2],
        ..cfg()
    };
    let q = Queue::spawn_task("m", c, metrics());
    let start = Instant::now();
    let _hs: Vec<_> = (0..3)
        .map(|i| spawn_submit(&q, i as f32, SubmitOptions::default()))
        .collect();
    settle().await;
    let batch = q.pull().await.unwrap();
    assert_eq!(Instant::now(), start);
    assert_eq!(echo(batch), vec![0.0, 1.0]);
}

#[tokio::test(start_paused = true)]
async fn deadline_passing_while_queued_answers_at_once_without_a_worker() {
    let q = Queue::spawn_task("m", cfg(), metrics());
    let start = Instant::now();
    let opts = SubmitOptions {
        priority: 0,
        timeout: Some(Duration::from_millis(3)),
        ..SubmitOptions::default()
    };
    // No worker ever pulls: every worker is "busy".
    let r = q.submit(row(1.0), 1, opts).await;
    assert_eq!(Instant::now() - start, Duration::from_millis(3));
    assert!(
        matches!(
            r,
            Err(JobError::Timeout {
                timeout_us: 3000,
                ..
            })
        ),
        "{r:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn request_timeout_is_capped_by_model_default() {
    let c = BatchConfig {
        default_timeout: Some(Duration::from_millis(2)),
        ..cfg()
    };
    let q = Queue::spawn_task("m", c, metrics());
    let start = Instant::now();
    let opts = SubmitOptions {
        priority: 0,
        timeout: Some(Duration::from_secs(60)),
        ..SubmitOptions::default()
    };
    let r = q.submit(row(1.0), 1, opts).await;
    assert_eq!(Instant::now() - start, Duration::from_millis(2));
    assert!(matches!(r, Err(JobError::Timeout { .. })));
}

#[tokio::test(start_paused = true)]
async fn full_queue_rejects_with_queue_full() {
    let c = BatchConfig {
        max_queue_size: 2,
        ..cfg()
    };
    let q = Queue::spawn_task("m", c, metrics());
    let _a = spawn_submit(&q, 1.0, SubmitOptions::default());
    let _b = spawn_submit(&q, 2.0, SubmitOptions::default());
    settle().await;
    let r = q.submit(row(3.0), 1, SubmitOptions::default()).await;
    assert!(
        matches!(r, Err(JobError::QueueFull { capacity: 2, .. })),
        "{r:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reservation_admits_a_request_whole_or_not_at_all() {
    let c = BatchConfig {
        max_queue_size: 4,
        ..cfg()
    };
    let q = Queue::spawn_task("m", c, metrics());
    let _a = spawn_submit(&q, 1.0, SubmitOptions::default());
    settle().await;
    // 3 places left: a request of 4 is refused before anything of it is queued.
    let r = q.reserve(4, &SubmitOptions::default());
    assert!(
        matches!(r, Err(JobError::QueueFull { capacity: 4, .. })),
        "{:?}",
        r.err()
    );
    let mut p = q.reserve(3, &SubmitOptions::default()).expect("3 places");
    // The held places count as used: an ordinary submit finds the level full.
    let r = q.submit(row(9.0), 1, SubmitOptions::default()).await;
    assert!(matches!(r, Err(JobError::QueueFull { .. })), "{r:?}");
    let first = p.submit(row(2.0), 1, SubmitOptions::default());
    drop(p); // the two places not used are given back
    let _c = spawn_submit(&q, 3.0, SubmitOptions::default());
    let _d = spawn_submit(&q, 4.0, SubmitOptions::default());
    settle().await;
    let r = q.submit(row(5.0), 1, SubmitOptions::default()).await;
    assert!(
        matches!(r, Err(JobError::QueueFull { .. })),
        "4 queued now: {r:?}"
    );
    let mut seen = Vec::new();
    while seen.len() < 4 {
        seen.extend(echo(q.pull().await.unwrap()));
    }
    seen.sort_by(f32::total_cmp);
    assert_eq!(seen, vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(
        first.await.unwrap().outputs[0].data,
        TensorData::F32(vec![2.0])
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_the_queue_is_admitted_only_into_an_empty_level() {
    let c = BatchConfig {
        max_queue_size: 2,
        ..cfg()
    };
    let q = Queue::spawn_task("m", c, metrics());
    let p = q
        .reserve(5, &SubmitOptions::default())
        .expect("empty level");
    assert!(q.reserve(2, &SubmitOptions::default()).is_err());
    drop(p);
    let _a = spawn_submit(&q, 1.0, SubmitOptions::default());
    settle().await;
    assert!(q.reserve(5, &SubmitOptions::default()).is_err());
}

#[tokio::test(start_paused = true)]
async fn higher_priority_is_served_first() {
    let c = BatchConfig {
        max_batch_size: 1,
        priority_levels: 2,
        default_priority: 2,
        ..cfg()
    };
    let q = Queue::spawn_task("m", c, metrics());
    let _low = spawn_submit(&q, 1.0, SubmitOptions::default());
    settle().await;
    let high = SubmitOptions {
        priority: 1,
        ..SubmitOptions::default()
    };
    let _high = spawn_submit(&q, 2.0, high);
    settle().await;
    assert_eq!(echo(q.pull().await.unwrap()), vec![2.0]);
    assert_eq!(echo(q.pull().await.unwrap()), vec![1.0]);
}

#[tokio::test(start_paused = true)]
async fn priority_out_of_range_is_rejected() {
    let q = Queue::spawn_task("m", cfg(), metrics());
    let opts = SubmitOptions {
        priority: 5,
        ..SubmitOptions::default()
    };
    let r = q.submit(row(1.0), 1, opts).await;
    assert!(matches!(r, Err(JobError::BadPriority { got: 5, .. })));
}

#[tokio::test(start_paused = true)]
async fn canceled_request_is_dropped_before_compute() {
    let m = metrics();
    let q = Queue::spawn_task("m", cfg(), m.clone());
    let gone = spawn_submit(&q, 1.0, SubmitOptions::default());
    let stays = spawn_submit(&q, 2.0, SubmitOptions::default());
    settle().await;
    gone.abort();
    settle().await;
    let batch = q.pull().await.unwrap();
    assert_eq!(echo(batch), vec![2.0]);
    assert_eq!(m.canceled.get(), 1);
    assert_eq!(m.pending.get(), 0);
    assert!(stays.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn close_serves_queued_requests_then_ends_pulls() {
    let q = Queue::spawn_task("m", cfg(), metrics());
    let h = spawn_submit(&q, 1.0, SubmitOptions::default());
    settle().await;
    q.close();
    settle().await;
    let r = q.submit(row(2.0), 1, SubmitOptions::default()).await;
    assert!(matches!(r, Err(JobError::Unavailable { .. })), "{r:?}");
    assert_eq!(echo(q.pull().await.unwrap()), vec![1.0]);
    assert!(h.await.unwrap().is_ok());
    assert!(q.pull().await.is_none());
}

fn seq(len: usize, tag: f32) -> (Vec<Tensor>, SubmitOptions) {
    let t = Tensor::new("x", vec![1, 1], TensorData::F32(vec![tag]));
    let opts = SubmitOptions {
        cost: len,
        ..SubmitOptions::default()
    };
    (vec![t], opts)
}

#[tokio::test(start_paused = true)]
async fn token_budget_groups_similar_lengths_and_keeps_fifo_head() {
    let c = BatchConfig {
        max_batch_size: 8,
        max_batch_tokens: Some(400),
        max_queue_delay: Duration::from_millis(10),
        ..cfg()
    };
    let q = Queue::spawn_task("m", c, metrics());
    // Lengths in arrival order; the tag is the arrival index.
    let lens = [100usize, 10, 12, 95, 11, 98, 9];
    let mut hs = Vec::new();
    for (i, &len) in lens.iter().enumerate() {
        let (x, opts) = seq(len, i as f32);
        let q = q.clone();
        hs.push(tokio::spawn(async move { q.submit(x, 1, opts).await }));
        settle().await;
    }
    // The oldest (100 tokens) goes first with the long ones: 4 x 100 = 400 <= budget.
    assert_eq!(echo(q.pull().await.unwrap()), vec![0.0, 3.0, 5.0]);
    // Then the short ones together, still in arrival order.
    assert_eq!(echo(q.pull().await.unwrap()), vec![1.0, 2.0, 4.0, 6.0]);
    for h in hs {
        assert!(h.await.unwrap().is_ok());
    }
}

#[tokio::test(start_paused = true)]
async fn token_budget_full_dispatches_without_waiting() {
    let c = BatchConfig {
        max_batch_size: 8,
        max_batch_tokens: Some(100),
        max_queue_delay: Duration::from_secs(1),
        ..cfg()
    };
    let q = Queue::spawn_task("m", c, metrics());
    let start = Instant::now();
    let mut hs = Vec::new();
    for i in 0..3 {
        let (x, opts) = seq(50, i as f32);
        let q = q.clone();
        hs.push(tokio::spawn(async move { q.submit(x, 1, opts).await }));
    }
    settle().await;
    // 150 queued tokens >= 100: dispatch now, with 2 x 50 = 100 tokens.
    assert_eq!(echo(q.pull().await.unwrap()), vec![0.0, 1.0]);
    assert_eq!(Instant::now(), start);
}

#[tokio::test(start_paused = true)]
async fn idle_workers_split_the_queue_instead_of_one_taking_all() {
    let c = BatchConfig {
        max_batch_size: 8,
        max_queue_size: 16,
        ..cfg()
    };
    let q = Queue::spawn_task("m", c, metrics());
    let (q1, q2) = (q.clone(), q.clone());
    let w1 = tokio::spawn(async move { q1.pull().await.unwrap() });
    settle().await;
    let w2 = tokio::spawn(async move { q2.pull().await.unwrap() });
    settle().await;
    let hs: Vec<_> = (0..8)
        .map(|i| spawn_submit(&q, i as f32, SubmitOptions::default()))
        .collect();
    // Checked before waiting on the second worker: without the split it would never get a batch.
    let b1 = w1.await.unwrap();
    assert_eq!(
        echo(b1),
        vec![0.0, 1.0, 2.0, 3.0],
        "oldest half to the first idle worker"
    );
    assert_eq!(echo(w2.await.unwrap()), vec![4.0, 5.0, 6.0, 7.0]);
    for h in hs {
        assert!(h.await.unwrap().is_ok());
    }
}

/// A request split into several jobs (texts) counts once as canceled when its client leaves; the
/// pending gauge counts jobs.
#[tokio::test(start_paused = true)]
async fn canceled_request_of_several_jobs_counts_once() {
    let m = metrics();
    let q = Queue::spawn_task("m", cfg(), m.clone());
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let parts: Vec<_> = (0..3)
        .map(|i| {
            let opts = SubmitOptions {
                parts: Some(flag.clone()),
                ..SubmitOptions::default()
            };
            spawn_submit(&q, i as f32, opts)
        })
        .collect();
    settle().await;
    assert_eq!(m.pending.get(), 3);
    parts.iter().for_each(|h| h.abort());
    settle().await;
    let stays = spawn_submit(&q, 9.0, SubmitOptions::default());
    settle().await;
    assert_eq!(echo(q.pull().await.unwrap()), vec![9.0]);
    assert_eq!(m.canceled.get(), 1, "one request, three jobs");
    assert_eq!(m.pending.get(), 0);
    assert!(stays.await.unwrap().is_ok());
}

/// A full level drops its canceled jobs to admit a new one; the gauge and counter follow.
#[tokio::test(start_paused = true)]
async fn full_level_prunes_canceled_jobs_and_keeps_metrics_exact() {
    let m = metrics();
    let q = Queue::spawn_task("m", cfg(), m.clone());
    let gone: Vec<_> = (0..8)
        .map(|i| spawn_submit(&q, i as f32, SubmitOptions::default()))
        .collect();
    settle().await;
    assert_eq!(m.pending.get(), 8, "the level is full");
    gone.iter().for_each(|h| h.abort());
    settle().await;
    let stays = spawn_submit(&q, 9.0, SubmitOptions::default());
    settle().await;
    assert_eq!(m.canceled.get(), 8);
    assert_eq!(m.pending.get(), 1);
    assert_eq!(echo(q.pull().await.unwrap()), vec![9.0]);
    assert_eq!(m.pending.get(), 0);
    assert!(stays.await.unwrap().is_ok());
}

fn shaped(width: usize, tag: f32) -> Vec<Tensor> {
    vec![Tensor::new(
        "x",
        vec![1, width],
        TensorData::F32(vec![tag; width]),
    )]
}

fn triton_cfg() -> BatchConfig {
    BatchConfig {
        max_batch_size: 64,
        max_queue_delay: Duration::from_millis(10),
        preferred_batch_sizes: vec![16, 32],
        max_queue_size: 128,
        ..BatchConfig::default()
    }
}

/// Triton's semantics, the README's example: preferred [16, 32] and 20 queued sends 16 now; the
/// 4 left can fill no preferred size and wait the delay, then go as they are.
#[tokio::test(start_paused = true)]
async fn preferred_sizes_twenty_queued_sends_sixteen_now_and_the_rest_after_the_delay() {
    let q = Queue::spawn_task("m", triton_cfg(), metrics());
    let start = Instant::now();
    let hs: Vec<_> = (0..20)
        .map(|i| spawn_submit(&q, i as f32, SubmitOptions::default()))
        .collect();
    settle().await;
    let first = echo(q.pull().await.unwrap());
    assert_eq!(Instant::now(), start, "a preferred size goes at once");
    assert_eq!(first, (0..16).map(|i| i as f32).collect::<Vec<_>>());
    let rest = echo(q.pull().await.unwrap());
    assert_eq!(Instant::now() - start, Duration::from_millis(10));
    assert_eq!(rest, vec![16.0, 17.0, 18.0, 19.0]);
    for h in hs {
        assert!(h.await.unwrap().is_ok());
    }
}

/// With more than the largest preferred size queued (here a full max_batch_size), the batch is
/// the largest preferred size, not max.
#[tokio::test(start_paused = true)]
async fn preferred_sizes_full_queue_sends_the_largest_preferred_size() {
    let q = Queue::spawn_task("m", triton_cfg(), metrics());
    let start = Instant::now();
    let _hs: Vec<_> = (0..70)
        .map(|i| spawn_submit(&q, i as f32, SubmitOptions::default()))
        .collect();
    settle().await;
    assert_eq!(q.pull().await.unwrap().jobs.len(), 32);
    assert_eq!(q.pull().await.unwrap().jobs.len(), 32);
    assert_eq!(Instant::now(), start);
    // 6 left: no preferred size; after the delay they go.
    assert_eq!(q.pull().await.unwrap().jobs.len(), 6);
    assert_eq!(Instant::now() - start, Duration::from_millis(10));
}

/// Two idle instances and arrivals one by one: the first preferred size the queue reaches (16)
/// goes whole to one instance (an even share of 8 would be no preferred size), the next 16 to the
/// other, and the rest wait for a worker and the delay.
#[tokio::test(start_paused = true)]
async fn preferred_sizes_with_two_idle_workers_are_not_split_below_a_preferred_size() {
    let q = Queue::spawn_task("m", triton_cfg(), metrics());
    let (q1, q2) = (q.clone(), q.clone());
    let w1 = tokio::spawn(async move { q1.pull().await.unwrap() });
    settle().await;
    let w2 = tokio::spawn(async move { q2.pull().await.unwrap() });
    settle().await;
    let start = Instant::now();
    let mut hs = Vec::new();
    for i in 0..40 {
        hs.push(spawn_submit(&q, i as f32, SubmitOptions::default()));
        settle().await;
    }
    assert_eq!(
        echo(w1.await.unwrap()),
        (0..16).map(|i| i as f32).collect::<Vec<_>>()
    );
    assert_eq!(
        echo(w2.await.unwrap()),
        (16..32).map(|i| i as f32).collect::<Vec<_>>()
    );
    assert_eq!(Instant::now(), start);
    assert_eq!(q.pull().await.unwrap().jobs.len(), 8);
    assert_eq!(Instant::now() - start, Duration::from_millis(10));
}

/// Variable dims: requests of different widths never share a batch (their rows could not be
/// concatenated); each width forms its own batch, FIFO within it.
#[tokio::test(start_paused = true)]
async fn mixed_shapes_batch_only_with_the_head_shape() {
    let c = BatchConfig {
        max_batch_size: 8,
        ..cfg()
    };
    let q = Queue::spawn_task("m", c, metrics());
    let widths = [2usize, 3, 2, 3, 2];
    let mut hs = Vec::new();
    for (i, &w) in widths.iter().enumerate() {
        let q = q.clone();
        hs.push(tokio::spawn(async move {
            q.submit(shaped(w, i as f32), 1, SubmitOptions::default())
                .await
        }));
    }
    settle().await;
    let a = q.pull().await.unwrap();
    assert!(a.jobs.iter().all(|j| j.inputs[0].shape == vec![1, 2]));
    assert_eq!(echo(a), vec![0.0, 2.0, 4.0]);
    assert_eq!(echo(q.pull().await.unwrap()), vec![1.0, 3.0]);
    for h in hs {
        assert!(h.await.unwrap().is_ok());
    }
}

/// Sequence jobs (submitted with a token cost, input [1, len]) are ragged: they keep batching
/// across lengths, as BERT's texts do.
#[tokio::test(start_paused = true)]
async fn sequence_jobs_of_different_lengths_share_a_batch() {
    let c = BatchConfig {
        max_batch_size: 8,
        ..cfg()
    };
    let q = Queue::spawn_task("m", c, metrics());
    let mut hs = Vec::new();
    for (i, len) in [3usize, 5, 4].into_iter().enumerate() {
        let q = q.clone();
        let opts = SubmitOptions {
            cost: len,
            ..SubmitOptions::default()
        };
        hs.push(tokio::spawn(async move {
            q.submit(shaped(len, i as f32), 1, opts).await
        }));
    }
    settle().await;
    assert_eq!(echo(q.pull().await.unwrap()), vec![0.0, 1.0, 2.0]);
    for h in hs {
        assert!(h.await.unwrap().is_ok());
    }
}

/// The pulling worker's layout decides what the token budget counts: with lengths 40, 30, 30 and
/// a budget of 100, a packed model takes all three (100 real tokens), a padded one two (2 x 40).
#[tokio::test(start_paused = true)]
async fn token_budget_follows_the_pulling_workers_layout() {
    for (layout, want) in [
        (Layout::Packed, vec![0.0, 1.0, 2.0]),
        (Layout::Padded, vec![0.0, 1.0]),
    ] {
        let c = BatchConfig {
            max_batch_size: 8,
            max_batch_tokens: Some(100),
            max_queue_delay: Duration::from_secs(1),
            ..cfg()
        };
        let q = Queue::spawn_task("m", c, metrics());
        let start = Instant::now();
        let mut hs = Vec::new();
        for (i, len) in [40usize, 30, 30].into_iter().enumerate() {
            let (x, opts) = seq(len, i as f32);
            let q = q.clone();
            hs.push(tokio::spawn(async move { q.submit(x, 1, opts).await }));
        }
        settle().await;
        assert_eq!(echo(q.pull_with(layout).await.unwrap()), want, "{layout:?}");
        assert_eq!(Instant::now(), start, "100 queued tokens fill the budget");
    }
}

/// A request whose client leaves after its job was pulled, while the batch runs: the worker's
/// answer finds nobody waiting, and `Job::answer` says so, once, for the worker to count.
#[tokio::test(start_paused = true)]
async fn answer_to_a_request_gone_after_pull_says_count_it_once() {
    let q = Queue::spawn_task("m", cfg(), metrics());
    let gone = spawn_submit(&q, 1.0, SubmitOptions::default());
    let stays = spawn_submit(&q, 2.0, SubmitOptions::default());
    settle().await;
    let batch = q.pull().await.unwrap();
    assert_eq!(batch.jobs.len(), 2);
    gone.abort();
    settle().await;
    let counted: Vec<bool> = batch
        .jobs
        .into_iter()
        .map(|job| {
            let outputs = job.inputs.clone();
            job.answer(Ok(JobOutput {
                outputs,
                timings: Timings::default(),
            }))
        })
        .collect();
    assert_eq!(counted, vec![true, false]);
    assert!(stays.await.unwrap().is_ok());
}

/// A request whose future is dropped after the worker answered it but before it read the answer
/// (its client left in between) is counted canceled by the answer it left unread.
#[tokio::test(start_paused = true)]
async fn answer_left_unread_counts_the_request_canceled() {
    let m = metrics();
    let q = Queue::spawn_task("m", cfg(), m.clone());
    let h = spawn_submit(&q, 1.0, SubmitOptions::default());
    let read = spawn_submit(&q, 2.0, SubmitOptions::default());
    settle().await;
    let batch = q.pull().await.unwrap();
    // Both answered (the sends succeed: both requests still wait); then, before the first request
    // runs again to read its answer, its task is dropped.
    assert_eq!(echo(batch), vec![1.0, 2.0]);
    h.abort();
    assert!(h.await.unwrap_err().is_cancelled());
    assert!(read.await.unwrap().is_ok());
    assert_eq!(m.canceled.get(), 1, "only the unread answer counts");
}

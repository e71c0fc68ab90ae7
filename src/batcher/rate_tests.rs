//! The queue-time budget (`BatchConfig::max_queue_time`) under tokio's paused clock: batches are
//! held for exact durations before their worker drops them, which is what the service rate
//! measures.

use super::tests::{echo, metrics, spawn_submit};
use super::*;
use crate::batcher::policy::RATE_MIN_BATCHES;

/// One worker, one row per batch, budget 50 ms.
fn cfg() -> BatchConfig {
    BatchConfig {
        max_batch_size: 1,
        max_queue_size: 64,
        max_queue_time: Some(Duration::from_millis(50)),
        ..BatchConfig::default()
    }
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Runs `n` one-row batches through one worker, each held `busy` before its worker drops it.
async fn serve(q: &Queue, n: u32, busy: Duration) {
    for i in 0..n {
        let answer = spawn_submit(q, i as f32, SubmitOptions::default());
        let batch = q.pull().await.expect("a batch");
        tokio::time::advance(busy).await;
        echo(batch);
        answer.await.unwrap().expect("served");
    }
}

/// Serves `n` queued batches, each held `busy`.
async fn drain(q: &Queue, n: usize, busy: Duration) {
    for _ in 0..n {
        let batch = q.pull().await.expect("a batch");
        tokio::time::advance(busy).await;
        echo(batch);
    }
}

/// Queues `n` rows nobody pulls; returns their answers.
async fn queue_rows(
    q: &Queue,
    n: usize,
) -> Vec<tokio::task::JoinHandle<Result<JobOutput, JobError>>> {
    let handles = (0..n)
        .map(|i| spawn_submit(q, 100.0 + i as f32, SubmitOptions::default()))
        .collect();
    settle().await;
    handles
}

/// Submits one row and returns its answer if it came at once (refused without waiting for a
/// worker); `None` when it was queued.
async fn answered_now(q: &Queue, v: f32) -> Option<Result<JobOutput, JobError>> {
    let h = spawn_submit(q, v, SubmitOptions::default());
    settle().await;
    if h.is_finished() {
        Some(h.await.unwrap())
    } else {
        None
    }
}

fn is_queue_time(r: &Option<Result<JobOutput, JobError>>) -> bool {
    matches!(
        r,
        Some(Err(JobError::QueueTime {
            budget_us: 50_000,
            ..
        }))
    )
}

#[tokio::test(start_paused = true)]
async fn queue_time_over_budget_refused_under_budget_admitted() {
    let q = Queue::spawn_task("m", cfg(), metrics());
    // 1 row per 10 ms: 100 rows/s on the one worker.
    serve(&q, RATE_MIN_BATCHES, Duration::from_millis(10)).await;
    let queued = queue_rows(&q, 5).await;
    // 5 rows ahead = 50 ms: at the budget, admitted (and queued: the level holds 6 now).
    let sixth = spawn_submit(&q, 6.0, SubmitOptions::default());
    settle().await;
    assert!(!sixth.is_finished(), "admitted and waiting for a worker");
    // 6 rows ahead = 60 ms: refused at once, before any worker is free.
    let r = answered_now(&q, 7.0).await;
    assert!(is_queue_time(&r), "{r:?}");
    // A whole-request reservation is refused the same way.
    let r = q.reserve(2, &SubmitOptions::default());
    assert!(
        matches!(
            &r,
            Err(JobError::QueueTime {
                expected_us: 59_000..=61_000,
                ..
            })
        ),
        "{:?}",
        r.err()
    );
    // Draining the queue lets requests in again.
    drain(&q, 6, Duration::from_millis(10)).await;
    for h in queued {
        h.await.unwrap().expect("served");
    }
    sixth.await.unwrap().expect("served");
    let r = spawn_submit(&q, 8.0, SubmitOptions::default());
    drain(&q, 1, Duration::from_millis(10)).await;
    r.await.unwrap().expect("admitted into an empty queue");
}

#[tokio::test(start_paused = true)]
async fn queue_time_not_shed_before_rate_known() {
    let q = Queue::spawn_task("m", cfg(), metrics());
    serve(&q, RATE_MIN_BATCHES - 1, Duration::from_millis(10)).await;
    // 20 rows ahead would be 200 ms at the rate seen so far: too few batches to judge; admitted.
    let queued = queue_rows(&q, 20).await;
    assert!(q.reserve(4, &SubmitOptions::default()).is_ok());
    assert!(queued.iter().all(|h| !h.is_finished()), "all queued");
}

#[tokio::test(start_paused = true)]
async fn queue_time_estimate_follows_a_slower_service_rate() {
    let q = Queue::spawn_task("m", cfg(), metrics());
    serve(&q, RATE_MIN_BATCHES, Duration::from_millis(10)).await;
    let queued = queue_rows(&q, 4).await;
    // 4 rows ahead at 10 ms each: 40 ms, admitted.
    let r = q.reserve(1, &SubmitOptions::default());
    assert!(r.is_ok(), "{:?}", r.err());
    drop(r);
    // The model slows to 20 ms a row: after 30 batches the same 4 rows ahead are ~80 ms, refused.
    drain(&q, 4, Duration::from_millis(20)).await;
    for h in queued {
        h.await.unwrap().expect("served");
    }
    serve(&q, 26, Duration::from_millis(20)).await;
    let _queued = queue_rows(&q, 4).await;
    let r = answered_now(&q, 1.0).await;
    assert!(is_queue_time(&r), "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn queue_time_off_without_budget() {
    let c = BatchConfig {
        max_queue_time: None,
        ..cfg()
    };
    let q = Queue::spawn_task("m", c, metrics());
    serve(&q, RATE_MIN_BATCHES, Duration::from_millis(10)).await;
    let queued = queue_rows(&q, 20).await;
    assert!(
        queued.iter().all(|h| !h.is_finished()),
        "all queued: 200 ms ahead, no budget"
    );
}

/// Under a budget an online batch holds at most one budget of one worker's work: at 10 ms a row
/// and 50 ms, five rows, although the model takes eight; without a budget the same queue goes as
/// one batch.
#[tokio::test(start_paused = true)]
async fn budget_caps_an_online_batch_at_one_budget_of_work() {
    for (budget, first) in [(Some(Duration::from_millis(50)), 5), (None, 6)] {
        let c = BatchConfig {
            max_batch_size: 8,
            max_queue_time: budget,
            ..cfg()
        };
        let q = Queue::spawn_task("m", c, metrics());
        serve(&q, RATE_MIN_BATCHES, Duration::from_millis(10)).await;
        // Six rows: the sixth waits 50 ms, at the budget: every one admitted.
        let queued = queue_rows(&q, 6).await;
        assert!(queued.iter().all(|h| !h.is_finished()), "all admitted");
        let batch = q.pull().await.expect("a batch");
        assert_eq!(batch.jobs.len(), first, "budget {budget:?}");
        tokio::time::advance(Duration::from_millis(10)).await;
        echo(batch);
        if first < 6 {
            let rest = q.pull().await.expect("the rest");
            assert_eq!(rest.jobs.len(), 6 - first);
            echo(rest);
        }
        for h in queued {
            h.await.unwrap().expect("served");
        }
    }
}

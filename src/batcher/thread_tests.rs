//! The production runner: the dispatcher on its own OS thread (`Queue::spawn`), in real time. No
//! sleep is used to synchronise: each test waits on the event it checks (a batch, an answer, a
//! thread's exit), bounded by `WAIT` so that a broken runner fails instead of hanging. Durations
//! are only checked as lower bounds (nothing may happen before its instant); the precision of the
//! wake-up is measured in `benches/batcher.rs`, not asserted here.

use std::sync::Arc;
use std::time::Duration;

use super::tests::{echo, metrics, row, spawn_submit};
use super::*;

/// Longest a test waits for an event before failing.
const WAIT: Duration = Duration::from_secs(20);

/// Pulls one batch on a plain OS thread, as a worker does; the batch and when it came.
fn pull_on_thread(q: &Queue) -> flume::Receiver<(Batch, std::time::Instant)> {
    let (tx, rx) = flume::bounded(1);
    let q = q.clone();
    std::thread::spawn(move || {
        if let Some(b) = q.pull_blocking(Layout::Padded) {
            let _ = tx.send((b, std::time::Instant::now()));
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_runner_lone_request_waits_its_delay_then_dispatches() {
    let delay = Duration::from_millis(20);
    let cfg = BatchConfig {
        max_batch_size: 4,
        max_queue_delay: delay,
        ..BatchConfig::default()
    };
    let q = Queue::spawn("thr-delay", cfg, metrics()).unwrap();
    let batches = pull_on_thread(&q);
    let h = spawn_submit(&q, 1.0, SubmitOptions::default());
    let (batch, at) = batches
        .recv_timeout(WAIT)
        .expect("the delay never fired: nothing else wakes the dispatcher");
    let waited = at - batch.jobs[0].enqueued_at.into_std();
    assert!(
        waited >= delay,
        "dispatched after {waited:?}, before its delay"
    );
    assert_eq!(echo(batch), vec![1.0]);
    assert!(h.await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_runner_full_batch_goes_without_waiting_for_the_delay() {
    let cfg = BatchConfig {
        max_batch_size: 2,
        max_queue_delay: Duration::from_secs(3600),
        ..BatchConfig::default()
    };
    let q = Queue::spawn("thr-full", cfg, metrics()).unwrap();
    let batches = pull_on_thread(&q);
    let hs = [1.0, 2.0].map(|v| spawn_submit(&q, v, SubmitOptions::default()));
    let (batch, _) = batches
        .recv_timeout(WAIT)
        .expect("a full batch must not wait");
    let mut seen = echo(batch);
    seen.sort_by(f32::total_cmp);
    assert_eq!(seen, vec![1.0, 2.0]);
    for h in hs {
        assert!(h.await.unwrap().is_ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_runner_deadline_passing_without_a_worker_answers_timeout() {
    let q = Queue::spawn("thr-timeout", BatchConfig::default(), metrics()).unwrap();
    let opts = SubmitOptions {
        timeout: Some(Duration::from_millis(10)),
        ..SubmitOptions::default()
    };
    let start = std::time::Instant::now();
    let r = tokio::time::timeout(WAIT, q.submit(row(1.0), 1, opts))
        .await
        .expect("the deadline never fired");
    assert!(
        matches!(
            r,
            Err(JobError::Timeout {
                timeout_us: 10_000,
                ..
            })
        ),
        "{r:?}"
    );
    assert!(start.elapsed() >= Duration::from_millis(10));
}

/// Names of this process's threads (Linux: /proc/self/task/*/comm).
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thread_runner_is_a_named_thread_that_ends_once_closed_and_drained() {
    let name = "ferrite-q-qname";
    let q = Queue::spawn("qname", BatchConfig::default(), metrics()).unwrap();
    // The thread names itself once it runs.
    let start = std::time::Instant::now();
    while !thread_names().iter().any(|n| n == name) {
        assert!(start.elapsed() < WAIT, "no {name}: {:?}", thread_names());
        std::thread::yield_now();
    }
    let h = spawn_submit(&q, 4.0, SubmitOptions::default());
    let batches = pull_on_thread(&q);
    let (batch, _) = batches.recv_timeout(WAIT).expect("a batch");
    q.close();
    assert_eq!(echo(batch), vec![4.0]);
    assert!(h.await.unwrap().is_ok());
    let start = std::time::Instant::now();
    while thread_names().iter().any(|n| n == name) {
        assert!(start.elapsed() < WAIT, "the dispatcher thread did not end");
        std::thread::yield_now();
    }
    assert!(
        pull_on_thread(&q).recv_timeout(WAIT).is_err(),
        "no batch after close"
    );
}

/// Real threads and time: the worker side blocks in `pull_blocking_or_idle` on an OS thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_or_idle_runs_on_idle_once_then_still_gets_the_batch() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let q = Queue::spawn("m", BatchConfig::default(), metrics()).unwrap();
    let idled = Arc::new(AtomicUsize::new(0));
    let (q2, idled2) = (q.clone(), idled.clone());
    let worker = std::thread::spawn(move || {
        let b = q2.pull_blocking_or_idle(Layout::Padded, Duration::from_millis(30), || {
            idled2.fetch_add(1, Ordering::SeqCst);
        });
        echo(b.expect("a batch, not None"))
    });
    tokio::time::timeout(Duration::from_secs(5), async {
        while idled.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("on_idle never ran");
    // Well past the idle point: the same registration must still receive the batch.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let h = spawn_submit(&q, 5.0, SubmitOptions::default());
    assert!(h.await.unwrap().is_ok());
    let seen = tokio::task::spawn_blocking(move || worker.join().unwrap())
        .await
        .unwrap();
    assert_eq!(seen, vec![5.0]);
    assert_eq!(
        idled.load(Ordering::SeqCst),
        1,
        "on_idle runs once per wait"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_or_idle_with_work_waiting_does_not_idle_and_closed_queue_gives_none() {
    let m = metrics();
    let pending = m.pending.clone();
    let q = Queue::spawn("m", BatchConfig::default(), m).unwrap();
    let h = spawn_submit(&q, 3.0, SubmitOptions::default());
    while pending.get() == 0 {
        tokio::task::yield_now().await;
    }
    let q2 = q.clone();
    let (seen, idled) = tokio::task::spawn_blocking(move || {
        let mut idled = false;
        let b = q2.pull_blocking_or_idle(Layout::Padded, Duration::from_secs(5), || idled = true);
        (echo(b.unwrap()), idled)
    })
    .await
    .unwrap();
    assert_eq!(seen, vec![3.0]);
    assert!(!idled);
    assert!(h.await.unwrap().is_ok());
    q.close();
    let q3 = q.clone();
    let none = tokio::task::spawn_blocking(move || {
        q3.pull_blocking_or_idle(Layout::Padded, Duration::from_secs(5), || {})
            .is_none()
    })
    .await
    .unwrap();
    assert!(none);
}

//! The job lane (`Lane::Bulk`) on tokio's paused clock: job rows take every idle worker while
//! online traffic is quiet, a capped share of them while it is active, never a running batch's
//! worker, and never delay an online batch that is due.

use super::tests::{echo, metrics, spawn_submit};
use super::*;

fn cfg() -> BatchConfig {
    BatchConfig {
        max_batch_size: 4,
        max_queue_delay: Duration::from_millis(10),
        max_queue_size: 64,
        default_timeout: Some(Duration::from_millis(50)),
        bulk_share: 0.5,
        bulk_quiet: Duration::from_millis(100),
        ..BatchConfig::default()
    }
}

fn bulk() -> SubmitOptions {
    SubmitOptions {
        lane: Lane::Bulk,
        ..SubmitOptions::default()
    }
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// A worker waiting for its next batch, as a task.
fn worker(q: &Queue) -> tokio::task::JoinHandle<Batch> {
    let q = q.clone();
    tokio::spawn(async move { q.pull().await.expect("queue open") })
}

#[tokio::test(start_paused = true)]
async fn bulk_rows_take_every_idle_worker_at_once_when_online_is_quiet() {
    let q = Queue::spawn_task("m", cfg(), metrics());
    let start = Instant::now();
    let rows: Vec<_> = (0..8).map(|i| spawn_submit(&q, i as f32, bulk())).collect();
    settle().await;
    let (w1, w2) = (worker(&q), worker(&q));
    let (b1, b2) = (w1.await.unwrap(), w2.await.unwrap());
    assert_eq!(Instant::now(), start, "no batching delay for job rows");
    assert_eq!((b1.lane, b2.lane), (Lane::Bulk, Lane::Bulk));
    assert_eq!(echo(b1), vec![0.0, 1.0, 2.0, 3.0], "full batches");
    assert_eq!(echo(b2), vec![4.0, 5.0, 6.0, 7.0]);
    for r in rows {
        assert!(r.await.unwrap().is_ok());
    }
}

#[tokio::test(start_paused = true)]
async fn online_batch_goes_before_queued_bulk_rows() {
    let q = Queue::spawn_task("m", cfg(), metrics());
    let rows: Vec<_> = (0..4).map(|i| spawn_submit(&q, i as f32, bulk())).collect();
    let online: Vec<_> = (10..14)
        .map(|i| spawn_submit(&q, i as f32, SubmitOptions::default()))
        .collect();
    settle().await;
    let b = q.pull().await.unwrap();
    assert_eq!(b.lane, Lane::Online);
    assert_eq!(echo(b), vec![10.0, 11.0, 12.0, 13.0]);
    for o in online {
        assert!(o.await.unwrap().is_ok());
    }
    let b = q.pull().await.unwrap();
    assert_eq!(echo(b), vec![0.0, 1.0, 2.0, 3.0]);
    for r in rows {
        assert!(r.await.unwrap().is_ok());
    }
}

/// Online traffic active (a request waiting for company): job batches hold at most the cap (one of
/// two workers); the other worker stays free and takes the online batch when it is due.
#[tokio::test(start_paused = true)]
async fn bulk_is_capped_while_online_requests_are_queued() {
    let q = Queue::spawn_task("m", cfg(), metrics());
    let start = Instant::now();
    let lone = spawn_submit(&q, 100.0, SubmitOptions::default());
    settle().await;
    let rows: Vec<_> = (0..8).map(|i| spawn_submit(&q, i as f32, bulk())).collect();
    settle().await;
    let (w1, w2) = (worker(&q), worker(&q));
    let b1 = w1.await.unwrap();
    assert_eq!(b1.lane, Lane::Bulk, "the capped share goes to the job");
    let b2 = w2.await.unwrap();
    assert_eq!(
        b2.lane,
        Lane::Online,
        "the second worker is kept for online"
    );
    assert_eq!(
        Instant::now(),
        start + Duration::from_millis(10),
        "at the online request's own delay, not later"
    );
    assert_eq!(echo(b2), vec![100.0]);
    assert!(lone.await.unwrap().is_ok());
    // Still within the quiet time after that online request: the cap holds while b1 runs.
    let w3 = worker(&q);
    settle().await;
    assert!(
        !w3.is_finished(),
        "cap of one job batch while online is active"
    );
    // Once online has been quiet for `bulk_quiet` (after its last submit), the job takes the idle
    // worker too.
    let b3 = w3.await.unwrap();
    assert_eq!(Instant::now(), start + Duration::from_millis(100));
    assert_eq!(b3.lane, Lane::Bulk);
    assert_eq!(echo(b1), vec![0.0, 1.0, 2.0, 3.0]);
    assert_eq!(echo(b3), vec![4.0, 5.0, 6.0, 7.0]);
    for r in rows {
        assert!(r.await.unwrap().is_ok());
    }
}

/// The cap counts job batches in flight: once a worker drops its job batch (answered), the next
/// job batch may go even while online traffic is active; the due online batch still gets a worker.
#[tokio::test(start_paused = true)]
async fn finished_bulk_batch_frees_its_share() {
    let q = Queue::spawn_task("m", cfg(), metrics());
    let start = Instant::now();
    let lone = spawn_submit(&q, 100.0, SubmitOptions::default());
    settle().await;
    let rows: Vec<_> = (0..8).map(|i| spawn_submit(&q, i as f32, bulk())).collect();
    settle().await;
    let (w1, w2) = (worker(&q), worker(&q));
    let b1 = w1.await.unwrap();
    assert_eq!(b1.lane, Lane::Bulk);
    settle().await;
    assert!(!w2.is_finished(), "cap: one job batch of two workers");
    assert_eq!(echo(b1), vec![0.0, 1.0, 2.0, 3.0]);
    let w3 = worker(&q);
    let b2 = w2.await.unwrap();
    assert_eq!(
        b2.lane,
        Lane::Bulk,
        "b1 answered and dropped: its share is free"
    );
    assert_eq!(Instant::now(), start);
    let b3 = w3.await.unwrap();
    assert_eq!(b3.lane, Lane::Online);
    assert_eq!(Instant::now(), start + Duration::from_millis(10));
    assert_eq!(echo(b3), vec![100.0]);
    assert_eq!(echo(b2), vec![4.0, 5.0, 6.0, 7.0]);
    assert!(lone.await.unwrap().is_ok());
    for r in rows {
        assert!(r.await.unwrap().is_ok());
    }
}

#[tokio::test(start_paused = true)]
async fn bulk_rows_have_no_queue_deadline() {
    let q = Queue::spawn_task("m", cfg(), metrics());
    let row = spawn_submit(&q, 1.0, bulk());
    settle().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!row.is_finished(), "past default_timeout, still queued");
    assert_eq!(echo(q.pull().await.unwrap()), vec![1.0]);
    assert!(row.await.unwrap().is_ok());
}

/// A job canceled while its rows are queued: the rows are dropped before compute.
#[tokio::test(start_paused = true)]
async fn canceled_bulk_rows_are_dropped_before_compute() {
    let m = metrics();
    let q = Queue::spawn_task("m", cfg(), m.clone());
    let gone: Vec<_> = (0..4).map(|i| spawn_submit(&q, i as f32, bulk())).collect();
    settle().await;
    assert_eq!(m.pending.get(), 4);
    gone.iter().for_each(|h| h.abort());
    settle().await;
    let stays = spawn_submit(&q, 9.0, bulk());
    settle().await;
    assert_eq!(echo(q.pull().await.unwrap()), vec![9.0]);
    assert_eq!(m.pending.get(), 0);
    assert!(stays.await.unwrap().is_ok());
}

#[tokio::test(start_paused = true)]
async fn close_serves_queued_bulk_rows_then_ends() {
    let q = Queue::spawn_task("m", cfg(), metrics());
    let row = spawn_submit(&q, 3.0, bulk());
    settle().await;
    q.close();
    assert_eq!(echo(q.pull().await.unwrap()), vec![3.0]);
    assert!(row.await.unwrap().is_ok());
    assert!(q.pull().await.is_none());
}

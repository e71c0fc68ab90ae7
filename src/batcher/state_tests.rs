//! `QueueState` on its own: plain values, no dispatcher, channels or clocks beyond fixed instants.

use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::*;
use crate::batcher::{Job, JobError, JobOutput};
use crate::tensor::{Tensor, TensorData};

type Reply = oneshot::Receiver<Result<JobOutput, JobError>>;

/// A job tagged `tag` (its input's first value) with `rows` rows of input `x` [rows, width].
fn job(tag: f32, priority: u32, rows: usize, width: usize) -> (Job, Reply) {
    let x = Tensor::new(
        "x",
        vec![rows, width],
        TensorData::F32(vec![tag; rows * width]),
    );
    make(vec![x], priority, rows, rows, false)
}

/// A sequence job (one text of `len` tokens, input [1, len], ragged) tagged `tag`.
fn seq(tag: f32, len: usize) -> (Job, Reply) {
    let mut data = vec![0.0; len];
    data[0] = tag;
    let x = Tensor::new("x", vec![1, len], TensorData::F32(data));
    make(vec![x], 1, 1, len, true)
}

fn make(
    inputs: Vec<Tensor>,
    priority: u32,
    rows: usize,
    cost: usize,
    ragged: bool,
) -> (Job, Reply) {
    let (reply, rx) = oneshot::channel();
    let job = Job {
        inputs,
        rows,
        cost,
        ragged,
        priority,
        enqueued_at: Instant::now(),
        deadline: None,
        timeout_us: 0,
        warmup: false,
        parts: None,
        lane: crate::batcher::Lane::Online,
        reply,
    };
    (job, rx)
}

fn tag(j: &Job) -> f32 {
    match &j.inputs[0].data {
        TensorData::F32(v) => v[0],
        _ => unreachable!("test jobs are FP32"),
    }
}

fn tags(jobs: &[Job]) -> Vec<f32> {
    jobs.iter().map(tag).collect()
}

/// Pushes every job, keeping their reply receivers open (a closed one means "client gone").
fn fill(q: &mut QueueState, jobs: Vec<(Job, Reply)>) -> Vec<Reply> {
    jobs.into_iter()
        .map(|(j, rx)| {
            assert!(q.push(j).is_ok(), "push");
            rx
        })
        .collect()
}

#[test]
fn push_full_level_hands_the_job_back_with_its_level() {
    let mut q = QueueState::new(2, 1);
    let _keep = fill(&mut q, vec![job(0.0, 2, 1, 1)]);
    let (j, _rx) = job(1.0, 2, 1, 1);
    let Err((back, full)) = q.push(j) else {
        panic!("level 2 is full")
    };
    assert_eq!(tag(&back), 1.0);
    assert_eq!(
        full,
        QueueFull {
            level: 2,
            capacity: 1
        }
    );
    let (j, _rx1) = job(2.0, 1, 1, 1);
    assert!(q.push(j).is_ok(), "level 1 has its own capacity");
    assert_eq!((q.pending_jobs(), q.pending_rows()), (2, 2));
}

#[test]
fn take_batch_higher_priority_first_then_fifo_within_a_level() {
    let mut q = QueueState::new(2, 8);
    let _keep = fill(
        &mut q,
        vec![
            job(0.0, 2, 1, 1),
            job(1.0, 1, 1, 1),
            job(2.0, 2, 1, 1),
            job(3.0, 1, 1, 1),
        ],
    );
    assert_eq!(
        tags(&q.take_batch(3, None, Layout::Padded)),
        vec![1.0, 3.0, 0.0]
    );
    assert_eq!(tags(&q.take_batch(3, None, Layout::Padded)), vec![2.0]);
    assert_eq!(
        (q.pending_jobs(), q.pending_rows(), q.pending_tokens()),
        (0, 0, 0)
    );
}

#[test]
fn take_batch_job_that_does_not_fit_ends_the_batch_without_being_jumped() {
    let mut q = QueueState::new(1, 8);
    let _keep = fill(
        &mut q,
        vec![job(0.0, 1, 2, 1), job(1.0, 1, 3, 1), job(2.0, 1, 1, 1)],
    );
    assert_eq!(
        tags(&q.take_batch(4, None, Layout::Padded)),
        vec![0.0],
        "2 + 3 rows > 4, and the 1-row job behind is not taken ahead of it"
    );
    assert_eq!(tags(&q.take_batch(4, None, Layout::Padded)), vec![1.0, 2.0]);
}

#[test]
fn take_batch_lone_job_larger_than_max_rows_is_still_taken() {
    let mut q = QueueState::new(1, 8);
    let _keep = fill(&mut q, vec![job(0.0, 1, 9, 1), job(1.0, 1, 1, 1)]);
    assert_eq!(tags(&q.take_batch(4, None, Layout::Padded)), vec![0.0]);
    assert_eq!(q.pending_rows(), 1);
}

/// Shape grouping: only jobs of the head's non-batch shape, in FIFO order; the others keep their
/// places and form the next batch.
#[test]
fn take_batch_mixed_shapes_takes_the_head_shape_only() {
    let mut q = QueueState::new(2, 8);
    let _keep = fill(
        &mut q,
        vec![
            job(0.0, 1, 1, 2),
            job(1.0, 1, 1, 3),
            job(2.0, 1, 2, 2),
            job(3.0, 2, 1, 3),
            job(4.0, 2, 1, 2),
        ],
    );
    assert_eq!(
        tags(&q.take_batch(8, None, Layout::Padded)),
        vec![0.0, 2.0, 4.0],
        "width 2 across both levels, by priority then FIFO"
    );
    assert_eq!(tags(&q.take_batch(8, None, Layout::Padded)), vec![1.0, 3.0]);
    assert_eq!((q.pending_jobs(), q.pending_rows()), (0, 0));
}

#[test]
fn same_shape_compares_every_input_by_name_not_position() {
    let a = Tensor::new("a", vec![1, 2], TensorData::F32(vec![0.0; 2]));
    let b = Tensor::new("b", vec![1, 5], TensorData::F32(vec![0.0; 5]));
    let b3 = Tensor::new("b", vec![3, 5], TensorData::F32(vec![0.0; 15]));
    let b4 = Tensor::new("b", vec![1, 4], TensorData::F32(vec![0.0; 4]));
    let (x, _) = make(vec![a.clone(), b.clone()], 1, 1, 1, false);
    let (y, _) = make(vec![b3, a.clone()], 1, 3, 3, false);
    let (z, _) = make(vec![a.clone(), b4], 1, 1, 1, false);
    let (only_a, _) = make(vec![a], 1, 1, 1, false);
    assert!(
        same_shape(&x, &y),
        "other batch size and order, same shapes"
    );
    assert!(!same_shape(&x, &z), "b: [_, 5] vs [_, 4]");
    assert!(!same_shape(&x, &only_a));
}

/// Sequence jobs are ragged by design: they batch across lengths (as BERT's texts always have),
/// but never with fixed-shape jobs.
#[test]
fn take_batch_sequence_jobs_batch_across_lengths_but_not_with_fixed_shapes() {
    let mut q = QueueState::new(1, 8);
    let _keep = fill(
        &mut q,
        vec![seq(0.0, 5), seq(1.0, 9), job(2.0, 1, 1, 9), seq(3.0, 7)],
    );
    assert_eq!(
        tags(&q.take_batch(8, None, Layout::Padded)),
        vec![0.0, 1.0, 3.0]
    );
    assert_eq!(tags(&q.take_batch(8, None, Layout::Padded)), vec![2.0]);
}

/// Budget 100 and lengths 40, 30, 30: padded, a third job would make 3 x 40 = 120 tokens; packed,
/// it makes 40 + 30 + 30 = 100 real tokens.
#[test]
fn take_by_length_budget_counts_padding_only_for_padded_layout() {
    let lens = [40, 30, 30];
    let mut padded = QueueState::new(1, 8);
    let _p = fill(
        &mut padded,
        lens.iter()
            .enumerate()
            .map(|(i, &l)| seq(i as f32, l))
            .collect(),
    );
    assert_eq!(
        tags(&padded.take_batch(8, Some(100), Layout::Padded)),
        vec![0.0, 1.0]
    );
    let mut packed = QueueState::new(1, 8);
    let _k = fill(
        &mut packed,
        lens.iter()
            .enumerate()
            .map(|(i, &l)| seq(i as f32, l))
            .collect(),
    );
    assert_eq!(
        tags(&packed.take_batch(8, Some(100), Layout::Packed)),
        vec![0.0, 1.0, 2.0]
    );
    assert_eq!(packed.pending_tokens(), 0);
}

/// The head goes first whatever its length (fairness); the others join by closeness of length,
/// at most twice the shortest apart, and leave in arrival order.
#[test]
fn take_by_length_head_always_goes_and_lengths_stay_within_twice() {
    let mut q = QueueState::new(1, 16);
    let _keep = fill(
        &mut q,
        vec![
            seq(0.0, 10),
            seq(1.0, 25),
            seq(2.0, 20),
            seq(3.0, 5),
            seq(4.0, 11),
        ],
    );
    assert_eq!(
        tags(&q.take_batch(8, Some(10_000), Layout::Packed)),
        vec![0.0, 2.0, 4.0],
        "20 <= 2 x 10 joins; 25 > 2 x 10 and 10 > 2 x 5 do not"
    );
    let mut q = QueueState::new(1, 16);
    let _keep = fill(&mut q, vec![seq(0.0, 100), seq(1.0, 10), seq(2.0, 12)]);
    assert_eq!(
        tags(&q.take_batch(8, Some(10_000), Layout::Padded)),
        vec![0.0],
        "the long head is not held back for the short ones"
    );
    assert_eq!(
        tags(&q.take_batch(8, Some(10_000), Layout::Padded)),
        vec![1.0, 2.0]
    );
}

/// Length grouping looks at most `4 * max_rows` jobs deep into the level.
#[test]
fn take_by_length_window_is_four_times_max_rows() {
    for (at, joined) in [(7usize, true), (8, false)] {
        let mut q = QueueState::new(1, 16);
        let mut jobs = vec![seq(0.0, 100)];
        jobs.extend((1..at).map(|i| seq(i as f32, 10)));
        jobs.push(seq(99.0, 100));
        let _keep = fill(&mut q, jobs);
        let batch = tags(&q.take_batch(2, Some(10_000), Layout::Padded));
        let want = if joined { vec![0.0, 99.0] } else { vec![0.0] };
        assert_eq!(batch, want, "a matching job at index {at}");
    }
}

#[test]
fn take_expired_removes_due_jobs_and_keeps_counts_and_next_deadline() {
    let mut q = QueueState::new(1, 8);
    let now = Instant::now();
    let mut keep = Vec::new();
    for (i, ms) in [
        (0.0, Some(5u64)),
        (1.0, None),
        (2.0, Some(3)),
        (3.0, Some(9)),
    ] {
        let (mut j, rx) = job(i, 1, 2, 1);
        j.deadline = ms.map(|m| now + Duration::from_millis(m));
        q.push(j).ok().expect("push");
        keep.push(rx);
    }
    assert_eq!(q.next_deadline(), Some(now + Duration::from_millis(3)));
    assert!(q.take_expired(now + Duration::from_millis(2)).is_empty());
    let gone = q.take_expired(now + Duration::from_millis(5));
    assert_eq!(tags(&gone), vec![0.0, 2.0]);
    assert_eq!(
        (q.pending_jobs(), q.pending_rows(), q.pending_tokens()),
        (2, 4, 4)
    );
    assert_eq!(q.next_deadline(), Some(now + Duration::from_millis(9)));
}

#[test]
fn take_batch_drops_canceled_jobs_and_counts_requests_once() {
    let mut q = QueueState::new(1, 8);
    let (a, rx_a) = job(0.0, 1, 1, 1);
    let (b, _rx_b) = job(1.0, 1, 1, 1);
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (mut c, rx_c) = job(2.0, 1, 1, 1);
    let (mut d, rx_d) = job(3.0, 1, 1, 1);
    c.parts = Some(flag.clone());
    d.parts = Some(flag);
    for j in [a, b, c, d] {
        q.push(j).ok().expect("push");
    }
    drop((rx_a, rx_c, rx_d));
    assert_eq!(tags(&q.take_batch(8, None, Layout::Padded)), vec![1.0]);
    assert_eq!(
        q.take_canceled(),
        Canceled {
            jobs: 3,
            requests: 2
        },
        "two parts of one request count once"
    );
    assert_eq!(q.take_canceled(), Canceled::default());
    assert_eq!((q.pending_jobs(), q.pending_rows()), (0, 0));
}

#[test]
fn requeue_front_puts_jobs_back_ahead_in_their_order() {
    let mut q = QueueState::new(1, 8);
    let _keep = fill(
        &mut q,
        vec![job(0.0, 1, 1, 1), job(1.0, 1, 1, 1), job(2.0, 1, 1, 1)],
    );
    let first = q.take_batch(2, None, Layout::Padded);
    q.requeue_front(first);
    assert_eq!(q.pending_rows(), 3);
    assert_eq!(
        tags(&q.take_batch(8, None, Layout::Padded)),
        vec![0.0, 1.0, 2.0]
    );
}

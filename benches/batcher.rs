//! The batcher alone: submit -> batch -> reply through a no-op model, no HTTP. Reports the wall time
//! per request with 1 and 64 concurrent submitters (target: <= 20 us median at 64), and how late a
//! 200 us `max_queue_delay` fires (target: within 100 us of its deadline at p99).

use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use ferrite::batcher::{
    BatchConfig, JobOutput, Layout, Queue, QueueMetrics, SubmitOptions, Timings,
};
use ferrite::tensor::{Tensor, TensorData};

fn queue(rt: &tokio::runtime::Runtime) -> Queue {
    let _guard = rt.enter();
    let metrics = QueueMetrics {
        pending: prometheus::IntGauge::new("p", "p").unwrap(),
        canceled: prometheus::IntCounter::new("c", "c").unwrap(),
    };
    let cfg = BatchConfig {
        max_batch_size: 64,
        max_queue_delay: Duration::ZERO,
        max_queue_size: 4096,
        ..BatchConfig::default()
    };
    let q = Queue::spawn("noop", cfg, metrics).unwrap();
    let worker = q.clone();
    std::thread::Builder::new()
        .name("ferrite-wnoop-cpu-0".into())
        .spawn(move || {
            while let Some(batch) = worker.pull_blocking(Layout::Padded) {
                for job in batch.jobs {
                    let outputs = job.inputs.clone();
                    let _ = job.reply.send(Ok(JobOutput {
                        outputs,
                        timings: Timings::default(),
                    }));
                }
            }
        })
        .unwrap();
    q
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let q = queue(&rt);
    let mut g = c.benchmark_group("batcher");
    g.throughput(Throughput::Elements(1));
    for submitters in [1usize, 64] {
        g.bench_function(format!("submit_to_reply_{submitters}_concurrent"), |b| {
            b.iter_custom(|iters| {
                let per = (iters as usize).div_ceil(submitters).max(1);
                let q = q.clone();
                rt.block_on(async move {
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..submitters)
                        .map(|_| {
                            let q = q.clone();
                            tokio::spawn(async move {
                                for _ in 0..per {
                                    let x = vec![Tensor::new(
                                        "x",
                                        vec![1, 4],
                                        TensorData::F32(vec![1.0; 4]),
                                    )];
                                    q.submit(x, 1, SubmitOptions::default()).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                    // Wall time per request, scaled to the iterations criterion asked for.
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / (per * submitters) as f64)
                })
            })
        });
    }
    g.finish();
}

/// How late a lone request's 200 us `max_queue_delay` fires: the time from its deadline (enqueue +
/// 200 us) to the worker thread holding the batch, over `N` requests sent one at a time to an idle
/// worker. Printed as percentiles; not a criterion timing, since the figure is a distribution of
/// lateness, not a cost per iteration.
fn delay_precision() {
    const N: usize = 2000;
    let delay = Duration::from_micros(200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let metrics = QueueMetrics {
        pending: prometheus::IntGauge::new("p", "p").unwrap(),
        canceled: prometheus::IntCounter::new("c", "c").unwrap(),
    };
    let cfg = BatchConfig {
        max_batch_size: 64,
        max_queue_delay: delay,
        max_queue_size: 4096,
        ..BatchConfig::default()
    };
    let q = Queue::spawn("delay", cfg, metrics).unwrap();
    let (late_tx, late_rx) = std::sync::mpsc::channel::<Duration>();
    let worker = q.clone();
    std::thread::Builder::new()
        .name("ferrite-wdelay-cpu-0".into())
        .spawn(move || {
            while let Some(batch) = worker.pull_blocking(Layout::Padded) {
                let now = Instant::now();
                for job in batch.jobs {
                    let due = job.enqueued_at.into_std() + delay;
                    let _ = late_tx.send(now.saturating_duration_since(due));
                    let _ = job.reply.send(Ok(JobOutput {
                        outputs: Vec::new(),
                        timings: Timings::default(),
                    }));
                }
            }
        })
        .unwrap();
    rt.block_on(async {
        for _ in 0..N {
            let x = vec![Tensor::new("x", vec![1, 4], TensorData::F32(vec![1.0; 4]))];
            q.submit(x, 1, SubmitOptions::default()).await.unwrap();
        }
    });
    let mut late: Vec<Duration> = late_rx.try_iter().collect();
    late.sort();
    let pct = |p: f64| late[((late.len() as f64 * p) as usize).min(late.len() - 1)];
    println!(
        "batcher/max_queue_delay_200us lateness over {} lone requests: p50 {:.1} us, p90 {:.1} us, \
         p99 {:.1} us, max {:.1} us (target p99 <= 100 us)",
        late.len(),
        pct(0.50).as_secs_f64() * 1e6,
        pct(0.90).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
        late[late.len() - 1].as_secs_f64() * 1e6,
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    delay_precision();
    Criterion::default().configure_from_args().final_summary();
}

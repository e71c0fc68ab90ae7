//! The batcher alone: submit -> batch -> reply through a no-op model, no HTTP. Reports the wall time
//! per request with 1 and 64 concurrent submitters (target: <= 20 us median at 64).

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferrite::batcher::{BatchConfig, JobOutput, Queue, QueueMetrics, SubmitOptions, Timings};
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
    let q = Queue::spawn("noop", cfg, metrics);
    let worker = q.clone();
    std::thread::Builder::new()
        .name("ferrite-wnoop-cpu-0".into())
        .spawn(move || {
            while let Some(batch) = worker.pull_blocking() {
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

criterion_group!(benches, bench);
criterion_main!(benches);

//! Measures the batcher's queue time for a lone request (no HTTP, no-op worker thread) at a given
//! `max_queue_delay_us`: `cargo run --release --example queue_probe -- 200`. Shows the cost of the
//! delay timer and of the two thread hand-offs on this machine.

use ferrite::batcher::*;
use ferrite::tensor::{Tensor, TensorData};
use std::time::{Duration, Instant};
fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _g = rt.enter();
    let m = QueueMetrics {
        pending: prometheus::IntGauge::new("p", "p").unwrap(),
        canceled: prometheus::IntCounter::new("c", "c").unwrap(),
    };
    let delay: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let q = Queue::spawn(
        "m",
        BatchConfig {
            max_batch_size: 64,
            max_queue_delay: Duration::from_micros(delay),
            ..BatchConfig::default()
        },
        m,
    )
    .unwrap();
    let w = q.clone();
    std::thread::spawn(move || {
        while let Some(b) = w.pull_blocking(Layout::Padded) {
            for j in b.jobs {
                let _ = j.reply.send(Ok(JobOutput {
                    outputs: vec![],
                    timings: Timings {
                        queue: j.enqueued_at.elapsed(),
                        ..Default::default()
                    },
                }));
            }
        }
    });
    rt.block_on(async {
        let mut tot = Duration::ZERO;
        let mut qt = Duration::ZERO;
        for _ in 0..50 {
            let t = Instant::now();
            let r = q
                .submit(
                    vec![Tensor::new("x", vec![1, 1], TensorData::F32(vec![1.0]))],
                    1,
                    SubmitOptions::default(),
                )
                .await
                .unwrap();
            tot += t.elapsed();
            qt += r.timings.queue;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        println!(
            "delay {delay}us: round trip avg {:?}, queue avg {:?}",
            tot / 50,
            qt / 50
        );
    });
}

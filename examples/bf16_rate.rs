//! Measures `ops::bf16_matmul` alone on MiniLM's packed shapes (m tokens x k -> n: q/k/v 384 ->
//! 384, the fused q+k+v 384 -> 1152, attention output 384 -> 384, intermediate 384 -> 1536, output
//! 1536 -> 384), one thread, with each bf16 kernel this CPU runs: the time per call and GFLOP/s
//! (best of REPS after a warm-up), for issue 20's kernel work (benches/RESULTS.md). The time is the
//! calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`, page faults included), so that on a
//! shared machine the time the thread waits for a core does not count.
//! Usage: `bf16_rate [M=256] [REPS=200] [KERNELS=amx,avx512]`. Prints `bf16 kernel=.. m=.. k=.. n=.. us=.. gflops=..`.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use ferrite::ops::{bf16_matmul_with, Bf16Kernel, Bf16Weights};

/// CPU time of the calling thread, in seconds.
fn thread_cpu_seconds() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `t`.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn main() -> candle_core::Result<()> {
    // One thread per call: the rate of the kernel itself, not of the row split.
    std::env::set_var("RAYON_NUM_THREADS", "1");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: usize| {
        args.get(i)
            .map_or(default, |a| a.parse().expect("M and REPS are numbers"))
    };
    let (m, reps) = (number(0, 256), number(1, 200));
    let wanted = args.get(2).map_or("amx,avx512", String::as_str);
    let dev = Device::Cpu;
    for kernel in [Bf16Kernel::Amx, Bf16Kernel::Avx512] {
        if !wanted.split(',').any(|k| k == kernel.as_str()) {
            continue;
        }
        if !kernel.available() {
            println!("bf16 kernel={} skipped (not on this CPU)", kernel.as_str());
            continue;
        }
        for (k, n) in [(384, 384), (384, 1152), (384, 1536), (1536, 384)] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
            let w: Vec<f32> = Tensor::randn(0f32, 1.0, (n, k), &dev)?
                .flatten_all()?
                .to_vec1()?;
            let w = Arc::new(Bf16Weights::pack(&w, n, k));
            for _ in 0..10 {
                bf16_matmul_with(&x, &w, kernel)?;
            }
            let mut best = f64::MAX;
            for _ in 0..reps {
                let t = thread_cpu_seconds();
                let y = bf16_matmul_with(&x, &w, kernel)?;
                best = best.min(thread_cpu_seconds() - t);
                std::hint::black_box(y);
            }
            println!(
                "bf16 kernel={} m={m} k={k} n={n} us={:.1} gflops={:.0}",
                kernel.as_str(),
                best * 1e6,
                2.0 * (m * k * n) as f64 / best / 1e9
            );
        }
    }
    Ok(())
}

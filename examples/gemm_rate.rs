//! Measures this CPU's f32 GEMM rate with candle's CPU matmul (the kernel Ferrite's BERT uses): the
//! roofline `benches/embed_load.sh` divides the embedding throughput by. Prints one line per thread
//! count: `threads=N m=.. k=.. n=.. gflops=..` (best of several timed repetitions after a warm-up).
//! Usage: `gemm_rate [M K N [REPS]]` (default 512 384 1536, 20). Thread counts 1 and 2 unless
//! RAYON_NUM_THREADS is set; candle reads that variable, so each count runs in a child process.

use std::time::Instant;

use candle_core::{Device, Tensor};

fn measure(m: usize, k: usize, n: usize, reps: usize) -> candle_core::Result<f64> {
    let dev = Device::Cpu;
    let a = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
    let b = Tensor::randn(0f32, 1.0, (k, n), &dev)?;
    for _ in 0..3 {
        a.matmul(&b)?;
    }
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        let c = a.matmul(&b)?;
        let dt = t.elapsed().as_secs_f64();
        std::hint::black_box(c);
        best = best.min(dt);
    }
    Ok(2.0 * (m * k * n) as f64 / best / 1e9)
}

fn main() -> candle_core::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("arguments are integers: M K N [REPS]"))
        .collect();
    let (m, k, n) = match args.as_slice() {
        [m, k, n, ..] => (*m, *k, *n),
        _ => (512, 384, 1536),
    };
    let reps = args.get(3).copied().unwrap_or(20);
    if let Ok(t) = std::env::var("RAYON_NUM_THREADS") {
        let g = measure(m, k, n, reps)?;
        println!("threads={t} m={m} k={k} n={n} gflops={g:.1}");
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    for t in ["1", "2"] {
        let status = std::process::Command::new(&exe)
            .args(std::env::args().skip(1))
            .env("RAYON_NUM_THREADS", t)
            .status()?;
        if !status.success() {
            std::process::exit(1);
        }
    }
    Ok(())
}

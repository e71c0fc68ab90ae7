//! Times the custom ops' CUDA kernels (feature `cuda`) at the shapes of kernels/README.md and prints
//! achieved DRAM bandwidth next to the README's floor (minimum bytes / 3.35 TB/s, H100 SXM HBM3).
//! Each figure is the median over 31 samples, each the device time of 20 back-to-back calls between
//! two CUDA events on the device's stream, divided by 20, after a warm-up (which also compiles the
//! kernels with NVRTC). A call is the whole public op: output allocation and, for add_layer_norm,
//! stacking gamma and beta (one small extra kernel).
//! Usage: `cargo run --release --features cuda --example ops_gpu [DEVICE_ORDINAL]`.

use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
use candle_core::{DType, Device, Result, Tensor};
use ferrite::ops;

const HBM_BYTES_PER_S: f64 = 3.35e12;
const SAMPLES: usize = 31;
const CALLS: usize = 20;

/// Median seconds per call of `f` on `dev`, timed with CUDA events.
fn time(dev: &Device, f: &dyn Fn() -> Result<Tensor>) -> Result<f64> {
    for _ in 0..10 {
        f()?;
    }
    dev.synchronize()?;
    let stream = dev.as_cuda_device()?.cuda_stream();
    let event = || {
        stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(candle_core::Error::wrap)
    };
    let mut per_call = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let start = event()?;
        for _ in 0..CALLS {
            std::hint::black_box(f()?);
        }
        let end = event()?;
        let ms = start.elapsed_ms(&end).map_err(candle_core::Error::wrap)?;
        per_call.push(f64::from(ms) / 1e3 / CALLS as f64);
    }
    per_call.sort_by(f64::total_cmp);
    Ok(per_call[SAMPLES / 2])
}

fn report(name: &str, dtype: DType, bytes: usize, secs: f64) {
    let floor = bytes as f64 / HBM_BYTES_PER_S;
    println!(
        "{name:<34} {:<5} {:>8.1} us {:>8.1} GB/s   floor {:>6.1} us ({:.0}% of HBM)",
        format!("{dtype:?}").to_lowercase(),
        secs * 1e6,
        bytes as f64 / secs / 1e9,
        floor * 1e6,
        100.0 * floor / secs
    );
}

fn randn(shape: &[usize], dtype: DType, dev: &Device) -> Result<Tensor> {
    Tensor::randn(0f32, 1.0, shape, dev)?.to_dtype(dtype)
}

fn main() -> Result<()> {
    let ordinal = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("usage: ops_gpu [DEVICE_ORDINAL]"))
        .unwrap_or(0);
    let dev = match Device::new_cuda(ordinal) {
        Ok(dev) => dev,
        Err(e) => {
            eprintln!("ops_gpu: no CUDA device {ordinal}: {e}");
            std::process::exit(2);
        }
    };
    let name = dev.as_cuda_device()?.cuda_stream().context().name();
    println!("device {ordinal}: {name:?}; {SAMPLES} samples x {CALLS} calls, median");
    let (b, l, h, i) = (32usize, 128usize, 384usize, 1536usize);
    let rows = b * l;
    for dtype in [DType::F32, DType::BF16] {
        let s = dtype.size_in_bytes();

        let (x, bias) = (randn(&[rows, i], dtype, &dev)?, randn(&[i], dtype, &dev)?);
        let t = time(&dev, &|| ops::gelu_bias(&x, &bias))?;
        report("gelu_bias 4096x1536", dtype, (2 * rows * i + i) * s, t);

        let (x, r) = (
            randn(&[rows, h], dtype, &dev)?,
            randn(&[rows, h], dtype, &dev)?,
        );
        let (g, bt) = (randn(&[h], dtype, &dev)?, randn(&[h], dtype, &dev)?);
        let t = time(&dev, &|| ops::add_layer_norm(&x, &r, &g, &bt, 1e-12))?;
        report(
            "add_layer_norm 4096x384",
            dtype,
            (3 * rows * h + 2 * h) * s,
            t,
        );

        let hidden = randn(&[b, l, h], dtype, &dev)?;
        let mask = Tensor::ones((b, l), dtype, &dev)?;
        let t = time(&dev, &|| ops::mean_pool_l2(&hidden, &mask, true))?;
        report(
            "mean_pool_l2 32x128x384",
            dtype,
            (b * l * h + b * l + b * h) * s,
            t,
        );

        for (rows, n, k) in [(64usize, 10usize, 5usize), (64, 32000, 5)] {
            let logits = randn(&[rows, n], dtype, &dev)?;
            let t = time(&dev, &|| ops::softmax_topk(&logits, k))?;
            let what = format!("softmax_topk {rows}x{n} k={k}");
            report(&what, dtype, (rows * n + 2 * rows * k) * s, t);
        }

        // MiniLM's FFN weight as int8 [n, k] + f32 scales: m = 1 (GEMV kernel, memory-bound: the
        // floor is the bytes) and m = 4096 (tiled kernel, compute-bound: also printed in TFLOP/s).
        let (k, n) = (h, i);
        let q = Tensor::rand(0f32, 255.0, (n, k), &dev)?.to_dtype(DType::U8)?;
        let scale = Tensor::rand(0.001f32, 0.02, n, &dev)?;
        for m in [1usize, 4096] {
            let x = randn(&[m, k], dtype, &dev)?;
            let t = time(&dev, &|| ops::q8_matmul(&x, &q, &scale))?;
            let what = format!("q8_matmul m={m} k={k} n={n}");
            report(&what, dtype, n * k + 4 * n + (m * k + m * n) * s, t);
            println!(
                "{:<34} {:<5} {:>8.2} TFLOP/s",
                "",
                "",
                2.0 * (m * k * n) as f64 / t / 1e12
            );
        }
    }
    Ok(())
}

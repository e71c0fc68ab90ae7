//! CPU paths of the custom ops at the embedding model's shape (batch 32 x seq 128 x hidden 384,
//! intermediate 1536), fast vs `_ref`, with throughput in bytes moved (criterion's GB/s) next to a
//! plain memory copy of the same size as this machine's measured limit. `q8_matmul` (MiniLM's FFN
//! weight, k = 384 x n = 1536) is set next to candle's f32 matmul of the same shape, in FLOP/s
//! (criterion's elements/s with 2·m·k·n elements), so the q8 / f32 ratio reads straight off.

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferrite::ops;

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu).unwrap()
}

fn bench(c: &mut Criterion) {
    let (b, l, h, i) = (32usize, 128usize, 384usize, 1536usize);
    let rows = b * l;
    let mut g = c.benchmark_group("ops_cpu");
    g.sample_size(20);

    // The limit: reading and writing the same bytes once (memcpy).
    let src = vec![1f32; rows * i];
    g.throughput(Throughput::Bytes((2 * rows * i * 4) as u64));
    g.bench_function("memcpy_limit_4096x1536", |bn| {
        bn.iter(|| {
            let v = src.clone();
            std::hint::black_box(v)
        })
    });

    let (x, bias) = (randn(&[rows, i]), randn(&[i]));
    g.throughput(Throughput::Bytes(((2 * rows * i + i) * 4) as u64));
    g.bench_function("gelu_bias_4096x1536", |bn| {
        bn.iter(|| ops::gelu_bias(&x, &bias).unwrap())
    });
    g.bench_function("gelu_bias_ref_4096x1536", |bn| {
        bn.iter(|| ops::gelu_bias_ref(&x, &bias).unwrap())
    });

    let (x, r, gm, bt) = (
        randn(&[rows, h]),
        randn(&[rows, h]),
        randn(&[h]),
        randn(&[h]),
    );
    g.throughput(Throughput::Bytes(((3 * rows * h + 2 * h) * 4) as u64));
    g.bench_function("add_layer_norm_4096x384", |bn| {
        bn.iter(|| ops::add_layer_norm(&x, &r, &gm, &bt, 1e-12).unwrap())
    });
    g.bench_function("add_layer_norm_ref_4096x384", |bn| {
        bn.iter(|| ops::add_layer_norm_ref(&x, &r, &gm, &bt, 1e-12).unwrap())
    });
    g.bench_function("candle_nn_layer_norm_of_sum_4096x384", |bn| {
        bn.iter(|| candle_nn::ops::layer_norm(&(&x + &r).unwrap(), &gm, &bt, 1e-12).unwrap())
    });

    let hidden = randn(&[b, l, h]);
    let mask = Tensor::ones((b, l), DType::F32, &Device::Cpu).unwrap();
    g.throughput(Throughput::Bytes(((b * l * h + b * l + b * h) * 4) as u64));
    g.bench_function("mean_pool_l2_32x128x384", |bn| {
        bn.iter(|| ops::mean_pool_l2(&hidden, &mask, true).unwrap())
    });
    g.bench_function("mean_pool_l2_ref_32x128x384", |bn| {
        bn.iter(|| ops::mean_pool_l2_ref(&hidden, &mask, true).unwrap())
    });

    let logits = randn(&[64, 1000]);
    g.throughput(Throughput::Bytes((64 * 1000 * 4) as u64));
    g.bench_function("softmax_topk5_64x1000", |bn| {
        bn.iter(|| ops::softmax_topk(&logits, 5).unwrap())
    });
    g.bench_function("softmax_topk5_ref_64x1000", |bn| {
        bn.iter(|| ops::softmax_topk_ref(&logits, 5).unwrap())
    });
    g.finish();

    // q8_matmul: m = 1 takes the GEMV path; 512 and 4096 the VNNI int8 path where the CPU has
    // AVX-512 VNNI, the tiled f32 one otherwise. bf16_matmul with each bf16 kernel the CPU runs.
    let mut g = c.benchmark_group("q8_matmul_cpu");
    g.sample_size(10);
    let (k, n) = (h, i);
    let w = randn(&[n, k]);
    let w_t = w.t().unwrap().contiguous().unwrap();
    let rows: Vec<Vec<f32>> = w.to_vec2().unwrap();
    let scales: Vec<f32> = rows
        .iter()
        .map(|r| r.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0)
        .collect();
    let bytes: Vec<u8> = rows
        .iter()
        .zip(&scales)
        .flat_map(|(r, s)| r.iter().map(move |v| (v / s).round() as i8 as u8))
        .collect();
    let q = Tensor::from_vec(bytes, (n, k), &Device::Cpu).unwrap();
    let wb = std::sync::Arc::new(ops::Bf16Weights::pack(&rows.concat(), n, k));
    let scale = Tensor::from_vec(scales, n, &Device::Cpu).unwrap();
    for m in [1usize, 512, 4096] {
        let x = randn(&[m, k]);
        g.throughput(Throughput::Elements((2 * m * k * n) as u64));
        g.bench_function(format!("q8_matmul_{m}x{k}x{n}"), |bn| {
            bn.iter(|| ops::q8_matmul(&x, &q, &scale).unwrap())
        });
        g.bench_function(format!("f32_matmul_{m}x{k}x{n}"), |bn| {
            bn.iter(|| x.matmul(&w_t).unwrap())
        });
        for kernel in [ops::Bf16Kernel::Amx, ops::Bf16Kernel::Avx512] {
            if kernel.available() {
                g.bench_function(format!("bf16_{}_{m}x{k}x{n}", kernel.as_str()), |bn| {
                    bn.iter(|| ops::bf16_matmul_with(&x, &wb, kernel).unwrap())
                });
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! `y = x · (diag(scale) · Q)ᵀ` with Q int8 per output channel (the `q8` format of `quant`):
//! x [m, k] float, q [n, k] U8 holding the i8 bit patterns, scale [n] f32, y [m, n] in x's dtype.
//! The weights stay int8 in memory; no call dequantizes the whole matrix.
//!
//! CPU: few rows (m ≤ `GEMV_MAX_ROWS` = 32) take dot products straight over the int8 weights (`q8_gemv`,
//! memory-bound, a quarter of the f32 weight bytes); more rows dequantize one panel of W at a time
//! into an L2-sized f32 scratch and run `gemm`'s f32 kernel on it (compute-bound, so the panel
//! conversion is a small overhead next to the matmul).

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::q8_gemv;
use super::simd::dispatch;
use super::{check_float, f32_view, in_f64, storage_of};

/// Up to this many rows of x the GEMV path is used. Measured at k = 384, n = 1536, one thread, AMD
/// EPYC (AVX-512): GEMV costs ~7 µs per row (m = 1: 15 µs, 4: 29, 16: 112, 32: 225, 64: 462), the
/// tiled path 160 µs at m = 4, 214 at 16, 290 at 32, 383 at 48, 501 at 64: they cross at ~50 rows;
/// 32 keeps a margin (the GEMV's x rows must also stay in cache).
pub(crate) const GEMV_MAX_ROWS: usize = 32;

/// Target size of the dequantized f32 panel of W (rows x k); the panel has at least 16 rows.
const PANEL_BYTES: usize = 256 * 1024;

/// `x · (diag(scale) · Q)ᵀ`: x [m, k] (f32, f16 or bf16), q [n, k] U8 (i8 bit patterns),
/// scale [n] F32. Returns [m, n] in x's dtype.
pub fn q8_matmul(x: &Tensor, q: &Tensor, scale: &Tensor) -> Result<Tensor> {
    check_float(x, "q8_matmul x")?;
    let (_, k) = x.dims2().map_err(|_| {
        candle_core::Error::Msg(format!("q8_matmul: x must be [m, k], got {:?}", x.dims()))
    })?;
    if q.dtype() != DType::U8 || q.rank() != 2 || q.dim(1)? != k {
        bail!(
            "q8_matmul: q must be [n, {k}] U8 (i8 bit patterns), got {:?} {:?}",
            q.dims(),
            q.dtype()
        )
    }
    let n = q.dim(0)?;
    if scale.dims() != [n] || scale.dtype() != DType::F32 {
        bail!(
            "q8_matmul: scale must be [{n}] F32, got {:?} {:?}",
            scale.dims(),
            scale.dtype()
        )
    }
    x.contiguous()?
        .apply_op3_no_bwd(&q.contiguous()?, &scale.contiguous()?, &Q8Matmul)
}

/// Reference: plain candle ops in f64 (the i8 values recovered from the U8 bit patterns).
pub fn q8_matmul_ref(x: &Tensor, q: &Tensor, scale: &Tensor) -> Result<Tensor> {
    in_f64(x.dtype(), || {
        let f = DType::F64;
        let u = q.to_dtype(f)?;
        // Bytes >= 128 are negative: v - 256.
        let i = (&u - (u.ge(128f64)?.to_dtype(f)? * 256f64)?)?;
        let w = i.broadcast_mul(&scale.to_dtype(f)?.unsqueeze(1)?)?;
        x.to_dtype(f)?.matmul(&w.t()?)
    })
}

struct Q8Matmul;

/// Rows of W per dequantized panel: about `PANEL_BYTES` of f32, a multiple of 16, at least 16.
fn panel_rows(k: usize, n: usize) -> usize {
    let rows = (PANEL_BYTES / (4 * k.max(1))) / 16 * 16;
    rows.max(16).min(n.max(1))
}

#[inline(always)]
fn dequantize_rows(q: &[i8], scale: &[f32], k: usize, out: &mut [f32]) {
    for ((o, w), &s) in out.chunks_exact_mut(k).zip(q.chunks_exact(k)).zip(scale) {
        for (o, &v) in o.iter_mut().zip(w) {
            *o = v as f32 * s;
        }
    }
}

/// The tiled path: y [m, n] = x [m, k] · Wᵀ, one dequantized panel of W's rows at a time.
fn tiled(x: &[f32], q: &[i8], scale: &[f32], k: usize, y: &mut [f32]) {
    let n = scale.len();
    let m = x.len() / k;
    assert!(
        k > 0 && x.len() == m * k && q.len() == n * k && y.len() == m * n,
        "q8 tiled: inconsistent sizes. This is a bug."
    );
    let nb = panel_rows(k, n);
    let mut panel = vec![0f32; nb * k];
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    for j0 in (0..n).step_by(nb) {
        let rows = nb.min(n - j0);
        let p = &mut panel[..rows * k];
        dispatch!(dequantize_rows(
            &q[j0 * k..(j0 + rows) * k],
            &scale[j0..j0 + rows],
            k,
            p
        ));
        // SAFETY: dst is y's columns j0..j0+rows ([m, rows] with row stride n, inside y since
        // j0 + rows <= n and y.len() == m * n); lhs is x [m, k] row-major; rhs is the panel read as
        // [k, rows] (element (c, j) at j * k + c, inside p). gemm computes
        // dst := alpha·dst + beta·lhs·rhs and, with read_dst = false, never reads dst.
        unsafe {
            gemm::gemm(
                m,
                rows,
                k,
                y.as_mut_ptr().add(j0),
                1,
                n as isize,
                false,
                x.as_ptr(),
                1,
                k as isize,
                p.as_ptr(),
                k as isize,
                1,
                0f32,
                1f32,
                false,
                false,
                false,
                parallelism,
            )
        }
    }
}

impl CustomOp3 for Q8Matmul {
    fn name(&self) -> &'static str {
        "q8_matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_view(s1, l1, "q8_matmul x")?;
        let (m, k) = l1.shape().dims2()?;
        let n = l2.shape().dims()[0];
        let (CpuStorage::U8(q), Some((q0, q1))) = (s2, l2.contiguous_offsets()) else {
            bail!("q8_matmul: q must be contiguous U8")
        };
        let (CpuStorage::F32(scale), Some((s0, s1e))) = (s3, l3.contiguous_offsets()) else {
            bail!("q8_matmul: scale must be contiguous F32")
        };
        let q: &[i8] = bytemuck::cast_slice(&q[q0..q1]);
        let scale = &scale[s0..s1e];
        let mut y = vec![0f32; m * n];
        if k > 0 && m > 0 && n > 0 {
            if m <= GEMV_MAX_ROWS {
                q8_gemv::gemv(&x, q, scale, k, &mut y);
            } else {
                tiled(&x, q, scale, k, &mut y);
            }
        }
        Ok((storage_of(y, s1.dtype())?, Shape::from((m, n))))
    }

    // cuda_fwd: not yet. The launcher needs the NVRTC/cudarc loader another engineer is writing in
    // src/ops/cuda.rs (another branch); the kernels are in kernels/q8_matmul.cu (q8_gemv_* for
    // m <= 4, q8_matmul_* otherwise; the GPU threshold is its own, to be measured there). Until then candle reports "no cuda implementation"
    // and `quant::Linear` dequantizes q8 weights at load on CUDA devices.
}

/// Both CPU paths, for tests and benches: `gemv` forces the GEMV path, otherwise the tiled one.
#[cfg(test)]
fn q8_matmul_path(x: &Tensor, q: &Tensor, scale: &Tensor, path: Path) -> Result<Tensor> {
    let (m, k) = x.dims2()?;
    let n = q.dim(0)?;
    let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let qs: Vec<u8> = q.flatten_all()?.to_vec1()?;
    let qs: &[i8] = bytemuck::cast_slice(&qs);
    let ss: Vec<f32> = scale.to_vec1()?;
    let mut y = vec![0f32; m * n];
    match path {
        Path::Gemv => q8_gemv::gemv(&xs, qs, &ss, k, &mut y),
        Path::Portable => q8_gemv::gemv_portable(&xs, qs, &ss, k, &mut y),
        Path::Tiled => tiled(&xs, qs, &ss, k, &mut y),
    }
    Tensor::from_vec(y, (m, n), x.device())?.to_dtype(x.dtype())
}

#[cfg(test)]
#[derive(Debug, Clone, Copy)]
enum Path {
    Gemv,
    Portable,
    Tiled,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::Device;
    use rand::{Rng, SeedableRng};

    /// Random i8 weights over the full range (-128 included) as U8, and scales in [0.001, 0.02].
    fn weights(seed: u64, n: usize, k: usize) -> (Tensor, Tensor) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let q: Vec<u8> = (0..n * k).map(|_| rng.random()).collect();
        let s: Vec<f32> = (0..n).map(|_| rng.random_range(0.001f32..0.02)).collect();
        (
            Tensor::from_vec(q, (n, k), &Device::Cpu).unwrap(),
            Tensor::from_vec(s, n, &Device::Cpu).unwrap(),
        )
    }

    /// f32: 1e-5 relative, with an absolute floor of k·ε·Σ_c |x_c·w_c| per element: the textbook
    /// bound (γ_k ≈ k·u) on the rounding error of an f32 dot product of length k in any order.
    /// Without the floor, outputs near zero (cancellation) fail a pure relative test although the
    /// sum is as exact as f32 accumulation allows. f16 / bf16: `assert_close` (1e-2).
    fn check(got: &Tensor, x: &Tensor, q: &Tensor, scale: &Tensor, what: &str) {
        let dtype = x.dtype();
        let want = q8_matmul_ref(x, q, scale).unwrap();
        if dtype != DType::F32 {
            return assert_close(got, &want, dtype, what);
        }
        let k = x.dim(1).unwrap();
        let w_abs = q8_matmul_ref(&x.abs().unwrap(), &abs_q(q), scale).unwrap();
        let (g, w, b): (Vec<f32>, Vec<f32>, Vec<f32>) = (
            got.flatten_all().unwrap().to_vec1().unwrap(),
            want.flatten_all().unwrap().to_vec1().unwrap(),
            w_abs.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert_eq!(got.dims(), want.dims(), "{what}: shape");
        for (i, ((a, b), bound)) in g.iter().zip(&w).zip(&b).enumerate() {
            let tol = 1e-5 * b.abs().max(1e-1) + k as f32 * f32::EPSILON * bound;
            assert!(
                (a - b).abs() <= tol,
                "{what}: element {i}: {a} vs {b} (tolerance {tol})"
            );
        }
    }

    /// |q| as U8 bit patterns (|-128| = 128 is not an i8, but the ref reads bytes < 128 as
    /// themselves; 128 would read as -128, so cap at 127: the bound stays within 1%).
    fn abs_q(q: &Tensor) -> Tensor {
        let v: Vec<u8> = q.flatten_all().unwrap().to_vec1().unwrap();
        let a: Vec<u8> = v
            .iter()
            .map(|&b| (b as i8).unsigned_abs().min(127))
            .collect();
        Tensor::from_vec(a, q.dims(), &Device::Cpu).unwrap()
    }

    const MS: [usize; 6] = [1, 3, 5, 32, 33, 1000];
    const KN: [usize; 4] = [1, 31, 33, 384];

    #[test]
    fn q8_matmul_matches_ref_on_odd_sizes_and_dtypes() {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for (a, m) in MS.into_iter().enumerate() {
                for (b, k) in KN.into_iter().enumerate() {
                    for (c, n) in KN.into_iter().enumerate() {
                        if m * k * n > 20_000_000 {
                            continue;
                        }
                        let seed = (100 * a + 10 * b + c) as u64;
                        let x = randn(seed, &[m, k], dtype);
                        let (q, s) = weights(seed + 1000, n, k);
                        let got = q8_matmul(&x, &q, &s).unwrap();
                        check(
                            &got,
                            &x,
                            &q,
                            &s,
                            &format!("q8_matmul {dtype:?} m={m} k={k} n={n}"),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn q8_matmul_each_cpu_path_matches_ref() {
        for path in [Path::Gemv, Path::Portable, Path::Tiled] {
            for dtype in [DType::F32, DType::BF16] {
                for m in [1, 2, 3, 4, 5, 31, 33] {
                    for (k, n) in [
                        (1, 1),
                        (31, 33),
                        (33, 31),
                        (384, 33),
                        (1000, 17),
                        (17, 1000),
                    ] {
                        let seed = (m * 7 + k * 3 + n) as u64;
                        let x = randn(seed, &[m, k], dtype);
                        let (q, s) = weights(seed + 1, n, k);
                        let got = q8_matmul_path(&x, &q, &s, path).unwrap();
                        let what = format!("{path:?} {dtype:?} m={m} k={k} n={n}");
                        check(&got, &x, &q, &s, &what);
                    }
                }
            }
        }
    }

    #[test]
    fn q8_matmul_tiled_spans_several_panels() {
        // k = 384 gives 160-row panels: n = 1000 is six full panels and a partial one.
        assert_eq!(panel_rows(384, 1000), 160);
        let x = randn(5, &[37, 384], DType::F32);
        let (q, s) = weights(6, 1000, 384);
        check(&q8_matmul(&x, &q, &s).unwrap(), &x, &q, &s, "tiled panels");
    }

    #[test]
    fn q8_matmul_empty_dims_give_zeros_or_empty() {
        let x = randn(1, &[3, 0], DType::F32);
        let (q, s) = weights(2, 5, 0);
        let y = q8_matmul(&x, &q, &s).unwrap();
        assert_eq!(y.dims(), [3, 5]);
        assert_eq!(y.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn q8_matmul_bad_shapes_and_dtypes_are_errors() {
        let x = randn(1, &[2, 8], DType::F32);
        let (q, s) = weights(2, 4, 8);
        let (q7, _) = weights(3, 4, 7);
        assert!(q8_matmul(&x, &q7, &s).is_err(), "k mismatch");
        assert!(
            q8_matmul(&x, &q.to_dtype(DType::F32).unwrap(), &s).is_err(),
            "q not U8"
        );
        assert!(
            q8_matmul(&x, &q, &s.narrow(0, 0, 3).unwrap()).is_err(),
            "scale length"
        );
        assert!(
            q8_matmul(&x, &q, &s.to_dtype(DType::F16).unwrap()).is_err(),
            "scale dtype"
        );
        assert!(
            q8_matmul(&x.unsqueeze(0).unwrap(), &q, &s).is_err(),
            "x rank"
        );
        assert!(
            q8_matmul(&x.to_dtype(DType::U8).unwrap(), &q, &s).is_err(),
            "x dtype"
        );
    }
}

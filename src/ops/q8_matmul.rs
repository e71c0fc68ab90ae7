//! `y = x · (diag(scale) · Q)ᵀ` with Q int8 per output channel (the `q8` format of `quant`):
//! x [m, k] float, q [n, k] U8 holding the i8 bit patterns, scale [n] f32, y [m, n] in x's dtype.
//! The weights stay int8 in memory; no call dequantizes the whole matrix.
//!
//! CPU paths (`forward` picks): with AVX-512 VNNI, int8 x int8 (`q8_vnni`: x quantized per row on
//! the fly, which adds its rounding error to the weights'; MiniLM q8 mean cosine 0.9995 -> 0.9973).
//! Without it, up to `GEMV_MAX_ROWS` rows take f32 dot products straight over the int8 weights
//! (`q8_gemv`, a quarter of the f32 weight bytes); more rows dequantize one panel of W at a time
//! into an L2-sized f32 scratch and run `gemm`'s f32 kernel on it.

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use super::simd::dispatch;
use super::{check_float, f32_view, in_f64, storage_of};
use super::{q8_gemv, q8_vnni};

/// Up to this many rows of x the GEMV path is used. Measured at k = 384, n = 1536, one thread, AMD
/// EPYC (AVX-512): GEMV costs ~7 µs per row (m = 1: 15 µs, 4: 29, 16: 112, 32: 225, 64: 462), the
/// tiled path 160 µs at m = 4, 214 at 16, 290 at 32, 383 at 48, 501 at 64: they cross at ~50 rows;
/// 32 keeps a margin (the GEMV's x rows must also stay in cache).
pub(crate) const GEMV_MAX_ROWS: usize = 32;

/// Longest row the VNNI path takes (its i32 accumulators must not overflow).
const VNNI_MAX_K: usize = 65_536;

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

/// Picks the CPU path. With AVX-512 VNNI: int8 x int8 for every m (x quantized per row). Measured
/// at k = 384, n = 1536, one thread (µs, VNNI / f32-activation GEMV / tiled): m = 1: 12.3 / 14.8 /
/// 44; 2: 14.7 / 19.6 / 142; 4: 17.4 / 28.4 / 160; 16: 44 / 116 / 218; 32: 83 / 231 / 295; 64:
/// 158 / 458 / 448; 512 and 4096: 1.48 / - / 2.7 ms and 12.3 / - / 20.4 ms. One path for every m
/// also keeps a row's result independent of the batch around it (the i32 sums are exact and the
/// activation scale is per row). Without VNNI: the GEMV up to `GEMV_MAX_ROWS`, tiled above.
fn forward(x: &[f32], q: &[i8], scale: &[f32], k: usize, y: &mut [f32]) {
    let m = x.len() / k;
    #[cfg(target_arch = "x86_64")]
    // The i32 sums hold 255 * 128 * k exactly only up to k = 65 793; longer rows take the f32 paths.
    if k <= VNNI_MAX_K && q8_vnni::avx512::available() {
        // SAFETY: the CPU has the features `matmul` is compiled for.
        unsafe { q8_vnni::avx512::matmul(x, q, scale, k, y) };
        return;
    }
    if m <= GEMV_MAX_ROWS {
        q8_gemv::gemv(x, q, scale, k, y);
    } else {
        tiled(x, q, scale, k, y);
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
            forward(&x, q, scale, k, &mut y);
        }
        Ok((storage_of(y, s1.dtype())?, Shape::from((m, n))))
    }

    /// kernels/q8_matmul.cu: `q8_gemv_<t>` for m <= 4 (one warp per output column, 8 warps per
    /// block, grid ceil(n / 8)), `q8_matmul_<t>` otherwise (64 x 64 output tiles, 256 threads,
    /// grid (ceil(n / 64), ceil(m / 64)), static shared memory). Compile-checked, not yet run on
    /// a GPU (benches/gpu.sh runs the parity test when one is lent).
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{self, BLOCK};
        use candle_core::cuda_backend::cudarc::driver::{
            CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
        };
        use candle_core::cuda_backend::{CudaDevice, Map1, WrapErr};
        use candle_core::WithDType;

        const GEMV_MAX_M: usize = 4;
        struct Launch<'a> {
            q: &'a CudaSlice<u8>,
            lq: &'a Layout,
            scale: &'a CudaSlice<f32>,
            ls: &'a Layout,
        }
        impl Map1 for Launch<'_> {
            fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
                &self,
                x: &CudaSlice<T>,
                dev: &CudaDevice,
                lx: &Layout,
            ) -> Result<CudaSlice<T>> {
                let (m, k) = lx.shape().dims2()?;
                let n = self.lq.shape().dims()[0];
                let x = cuda::contiguous(x, lx, "q8_matmul x")?;
                let q = cuda::contiguous(self.q, self.lq, "q8_matmul q")?;
                let scale = cuda::contiguous(self.scale, self.ls, "q8_matmul scale")?;
                // SAFETY: every element is written by the kernel below (or there are none).
                let mut y = unsafe { dev.alloc::<T>(m * n)? };
                if m == 0 || n == 0 {
                    return Ok(y);
                }
                let (name, cfg) = if m <= GEMV_MAX_M {
                    (
                        "q8_gemv",
                        LaunchConfig {
                            grid_dim: (cuda::u32_arg(n.div_ceil(8), "q8_matmul n / 8")?, 1, 1),
                            block_dim: (BLOCK, 1, 1),
                            shared_mem_bytes: 0,
                        },
                    )
                } else {
                    (
                        "q8_matmul",
                        LaunchConfig {
                            grid_dim: (
                                cuda::u32_arg(n.div_ceil(64), "q8_matmul n / 64")?,
                                cuda::u32_arg(m.div_ceil(64), "q8_matmul m / 64")?,
                                1,
                            ),
                            block_dim: (BLOCK, 1, 1),
                            shared_mem_bytes: 0,
                        },
                    )
                };
                let func = cuda::func_named(dev, &cuda::Q8_MATMUL, name, T::DTYPE)?;
                let (m, n, k) = (
                    cuda::u32_arg(m, "q8_matmul m")?,
                    cuda::u32_arg(n, "q8_matmul n")?,
                    cuda::u32_arg(k, "q8_matmul k")?,
                );
                let stream = dev.cuda_stream();
                let mut args = stream.launch_builder(&func);
                args.arg(&x)
                    .arg(&q)
                    .arg(&scale)
                    .arg(&mut y)
                    .arg(&m)
                    .arg(&n)
                    .arg(&k);
                // SAFETY: the arguments match q8_{matmul,gemv}_<t>(const T* x, const signed char*
                // q, const float* scale, T* y, unsigned m, unsigned n, unsigned k); x holds m*k
                // elements, q n*k bytes, scale n, y m*n.
                unsafe { args.launch(cfg) }.w()?;
                Ok(y)
            }
        }
        let dev = s1.device();
        let launch = Launch {
            q: s2.as_cuda_slice::<u8>()?,
            lq: l2,
            scale: s3.as_cuda_slice::<f32>()?,
            ls: l3,
        };
        let slice = launch.map(&s1.slice, dev, l1)?;
        let (m, n) = (l1.shape().dims2()?.0, l2.shape().dims()[0]);
        Ok((
            candle_core::CudaStorage {
                slice,
                device: dev.clone(),
            },
            Shape::from((m, n)),
        ))
    }
}

/// One CPU path forced, for the tests.
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
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the tests pick this path only where `available()`.
        Path::Vnni => unsafe { q8_vnni::avx512::matmul(&xs, qs, &ss, k, &mut y) },
    }
    Tensor::from_vec(y, (m, n), x.device())?.to_dtype(x.dtype())
}

#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq)]
enum Path {
    Gemv,
    Portable,
    Tiled,
    #[cfg(target_arch = "x86_64")]
    Vnni,
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

    /// The path `q8_matmul` takes for m rows on this CPU.
    fn path_for(m: usize) -> Path {
        #[cfg(target_arch = "x86_64")]
        if q8_vnni::avx512::available() {
            return Path::Vnni;
        }
        if m <= GEMV_MAX_ROWS {
            Path::Gemv
        } else {
            Path::Tiled
        }
    }

    /// Tolerance per element, on top of the dtype's (`tolerance(dtype)` relative, floor 0.1):
    /// - f32 accumulation: k·ε·Σ_c |x_c·w_c|, the textbook bound (γ_k ≈ k·u) on the rounding error
    ///   of an f32 dot product of length k in any order. Without it, outputs near zero
    ///   (cancellation) fail a pure 1e-5 relative test although the sum is as exact as f32 allows.
    /// - the VNNI path also rounds x per row to 8 bits (step s_x = amax / 127): each output may move
    ///   by up to (s_x / 2)·Σ_c |w_c|.
    fn check(got: &Tensor, x: &Tensor, q: &Tensor, scale: &Tensor, path: Path, what: &str) {
        let dtype = x.dtype();
        assert_eq!(got.dtype(), dtype, "{what}: dtype");
        let want = q8_matmul_ref(x, q, scale).unwrap();
        assert_eq!(got.dims(), want.dims(), "{what}: shape");
        let (m, k) = x.dims2().unwrap();
        let n = q.dim(0).unwrap();
        let (g, w, xs) = (vec1(got), vec1(&want), vec1(x));
        let qs: Vec<u8> = q.flatten_all().unwrap().to_vec1().unwrap();
        let ss: Vec<f32> = scale.to_vec1().unwrap();
        let ss = &ss;
        let wrow = |j: usize| {
            qs[j * k..(j + 1) * k]
                .iter()
                .map(move |&b| b as i8 as f32 * ss[j])
        };
        let tol = tolerance(dtype);
        for i in 0..m {
            let xr = &xs[i * k..(i + 1) * k];
            let sx = xr.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0;
            for j in 0..n {
                let abs_dot: f32 = xr.iter().zip(wrow(j)).map(|(a, b)| (a * b).abs()).sum();
                let mut t = tol * w[i * n + j].abs().max(1e-1) + k as f32 * f32::EPSILON * abs_dot;
                #[cfg(target_arch = "x86_64")]
                if path == Path::Vnni {
                    t += 0.5 * sx * wrow(j).map(f32::abs).sum::<f32>() * 1.0001;
                }
                let (a, b) = (g[i * n + j], w[i * n + j]);
                assert!(
                    (a - b).abs() <= t,
                    "{what}: ({i}, {j}): {a} vs {b} (tolerance {t})"
                );
            }
        }
    }

    /// `q` [n, k] as a contiguous view that starts `off` bytes into its storage (a misaligned start
    /// for the kernels' 4- and 16-byte weight loads).
    fn offset_view(q: &Tensor, off: usize) -> Tensor {
        let (n, k) = q.dims2().unwrap();
        let pad = Tensor::zeros(off, DType::U8, q.device()).unwrap();
        let v = Tensor::cat(&[&pad, &q.flatten_all().unwrap()], 0)
            .unwrap()
            .narrow(0, off, n * k)
            .unwrap()
            .reshape((n, k))
            .unwrap();
        assert_eq!(v.layout().start_offset(), off);
        assert!(v.is_contiguous());
        v
    }

    /// Weights that start at any byte of their storage, m = 1, 2 (GEMV) and 5 (tiled); k = 32 and 384
    /// (16-byte loads where aligned), 36 (4-byte loads where aligned).
    fn unaligned_cases(dev: &Device, what: &str, path: impl Fn(usize) -> Path) {
        for off in [1usize, 4, 8] {
            for k in [32usize, 36, 384] {
                for m in [1usize, 2, 5] {
                    let seed = (1000 * off + 10 * k + m) as u64;
                    let x = randn(seed, &[m, k], DType::F32);
                    let (q, s) = weights(seed + 1, 33, k);
                    let qv = offset_view(&on(dev, &q), off);
                    let got = cpu(q8_matmul(&on(dev, &x), &qv, &on(dev, &s)).unwrap());
                    let what = format!("{what} q at byte {off}, m={m} k={k} n=33");
                    check(&got, &x, &q, &s, path(m), &what);
                }
            }
        }
    }

    #[test]
    fn q8_matmul_on_weights_at_unaligned_offsets() {
        unaligned_cases(&Device::Cpu, "q8_matmul", path_for);
    }

    const MS: [usize; 6] = [1, 3, 5, 32, 33, 1000];
    const KN: [usize; 4] = [1, 31, 33, 384];

    /// The CUDA launcher (GEMV kernel for m <= 4, tiled above) against the reference, with the
    /// f32-accumulation tolerance of the CPU paths (the kernels do not quantize x).
    #[cfg(feature = "cuda")]
    #[test]
    fn q8_matmul_cuda_matches_ref_on_odd_sizes_and_dtypes() {
        let Some(dev) = cuda_device("q8_matmul_cuda") else {
            return;
        };
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for (a, m) in [1usize, 2, 3, 4, 5, 33, 1000].into_iter().enumerate() {
                for (b, k) in KN.into_iter().enumerate() {
                    for (c, n) in KN.into_iter().enumerate() {
                        let seed = (100 * a + 10 * b + c) as u64;
                        let x = randn(seed, &[m, k], dtype);
                        let (q, s) = weights(seed + 1000, n, k);
                        let got =
                            cpu(q8_matmul(&on(&dev, &x), &on(&dev, &q), &on(&dev, &s)).unwrap());
                        let what = format!("cuda q8_matmul {dtype:?} m={m} k={k} n={n}");
                        check(&got, &x, &q, &s, Path::Tiled, &what);
                    }
                }
            }
        }
        unaligned_cases(&dev, "cuda q8_matmul", |_| Path::Tiled);
    }

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
                        let what = format!("q8_matmul {dtype:?} m={m} k={k} n={n}");
                        check(&got, &x, &q, &s, path_for(m), &what);
                    }
                }
            }
        }
    }

    #[test]
    fn q8_matmul_each_cpu_path_matches_ref() {
        #[allow(unused_mut)]
        let mut paths = vec![Path::Gemv, Path::Portable, Path::Tiled];
        #[cfg(target_arch = "x86_64")]
        if q8_vnni::avx512::available() {
            paths.push(Path::Vnni);
        } else {
            eprintln!("no AVX-512 VNNI on this CPU: the VNNI path is not tested");
        }
        for path in paths {
            for dtype in [DType::F32, DType::BF16] {
                for m in [1, 2, 3, 4, 5, 31, 33, 300] {
                    for (k, n) in [
                        (1, 1),
                        (31, 33),
                        (33, 31),
                        (64, 5),
                        (384, 33),
                        (1000, 17),
                        (17, 1000),
                    ] {
                        let seed = (m * 7 + k * 3 + n) as u64;
                        let x = randn(seed, &[m, k], dtype);
                        let (q, s) = weights(seed + 1, n, k);
                        let got = q8_matmul_path(&x, &q, &s, path).unwrap();
                        let what = format!("{path:?} {dtype:?} m={m} k={k} n={n}");
                        check(&got, &x, &q, &s, path, &what);
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
        let got = q8_matmul_path(&x, &q, &s, Path::Tiled).unwrap();
        check(&got, &x, &q, &s, Path::Tiled, "tiled panels");
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

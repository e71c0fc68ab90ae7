//! Fused bias + GELU (erf form, as BERT uses): `y = gelu(x + bias)`, bias broadcast over the last
//! dimension. One pass instead of two (and one temporary fewer).

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::simd::{self, dispatch_fma, MulAdd};
use super::{check_float, f32_view, in_f64, storage_of};

/// `gelu_erf(x + bias)`; `x` [.., n], `bias` [n], same float dtype.
pub fn gelu_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    check_float(x, "gelu_bias x")?;
    let n = x.dim(candle_core::D::Minus1)?;
    if bias.dims() != [n] || bias.dtype() != x.dtype() {
        bail!(
            "gelu_bias: bias must be [{n}] {:?}, got {:?} {:?}",
            x.dtype(),
            bias.dims(),
            bias.dtype()
        )
    }
    x.contiguous()?
        .apply_op2_no_bwd(&bias.contiguous()?, &GeluBias)
}

/// Reference: plain candle ops, in f64.
pub fn gelu_bias_ref(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    in_f64(x.dtype(), || {
        let f = candle_core::DType::F64;
        x.to_dtype(f)?.broadcast_add(&bias.to_dtype(f)?)?.gelu_erf()
    })
}

struct GeluBias;

/// `0.5 v erfc(-v / sqrt 2)`, which equals `0.5 v (1 + erf(v / sqrt 2))`, with erfc from Numerical
/// Recipes' Chebyshev fit (fractional error < 1.2e-7 everywhere, so the result keeps its relative
/// accuracy also for large negative v). One `exp` (the branch-free one in `simd`) and ten FMAs,
/// no calls and no branches, so the loop vectorises.
#[inline(always)]
fn gelu<M: MulAdd>(v: f32) -> f32 {
    const C: [f32; 10] = [
        -1.265_512_2,
        1.000_023_7,
        0.374_091_96,
        0.096_784_18,
        -0.186_288_06,
        0.278_868_07,
        -1.135_204,
        1.488_515_9,
        -0.822_152_23,
        0.170_872_77,
    ];
    let x = -v * std::f32::consts::FRAC_1_SQRT_2;
    let z = x.abs();
    let t = 1.0 / M::mul_add(0.5, z, 1.0);
    let mut poly = C[9];
    for &c in C[..9].iter().rev() {
        poly = M::mul_add(t, poly, c);
    }
    let r = t * simd::exp_with::<M>(M::mul_add(-z, z, poly));
    let erfc = if x >= 0.0 { r } else { 2.0 - r };
    0.5 * v * erfc
}

/// `out[i] = gelu(x[i] + b[i % n])`, writing every element of `out` (x.len() of them).
#[inline(always)]
pub(crate) fn gelu_rows<M: MulAdd>(x: &[f32], b: &[f32], out: &mut [std::mem::MaybeUninit<f32>]) {
    for (o, row) in out.chunks_exact_mut(b.len()).zip(x.chunks_exact(b.len())) {
        for ((o, &v), &bi) in o.iter_mut().zip(row).zip(b) {
            o.write(gelu::<M>(v + bi));
        }
    }
}

impl CustomOp2 for GeluBias {
    fn name(&self) -> &'static str {
        "gelu_bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_view(s1, l1, "gelu_bias x")?;
        let b = f32_view(s2, l2, "gelu_bias bias")?;
        let n = x.len();
        if b.is_empty() && n == 0 {
            return Ok((storage_of(Vec::new(), s1.dtype())?, l1.shape().clone()));
        }
        if b.is_empty() || !n.is_multiple_of(b.len()) {
            bail!(
                "gelu_bias: {n} values are not whole rows of the bias' {}",
                b.len()
            );
        }
        let mut out: Vec<f32> = Vec::with_capacity(n);
        dispatch_fma!(gelu_rows(&x, &b, &mut out.spare_capacity_mut()[..n]));
        // SAFETY: `gelu_rows` wrote all n elements: x is n / b.len() whole rows.
        unsafe { out.set_len(n) };
        Ok((storage_of(out, s1.dtype())?, l1.shape().clone()))
    }

    /// kernels/gelu_bias.cu: 1-D grid-stride, 256 threads, grid = min(ceil(rows*n / 256), 65535).
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{self, BLOCK};
        use candle_core::cuda_backend::cudarc::driver::{
            CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
        };
        use candle_core::cuda_backend::{CudaDevice, Map2, WrapErr};
        use candle_core::WithDType;

        struct Launch;
        impl Map2 for Launch {
            fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
                &self,
                x: &CudaSlice<T>,
                lx: &Layout,
                b: &CudaSlice<T>,
                lb: &Layout,
                dev: &CudaDevice,
            ) -> Result<CudaSlice<T>> {
                let func = cuda::func(dev, &cuda::GELU_BIAS, T::DTYPE)?;
                let x = cuda::contiguous(x, lx, "gelu_bias x")?;
                let b = cuda::contiguous(b, lb, "gelu_bias bias")?;
                let (total, n) = (x.len(), b.len());
                // SAFETY: every element is written by the kernel below (or there are none).
                let mut y = unsafe { dev.alloc::<T>(total)? };
                if total == 0 {
                    return Ok(y);
                }
                let rows = cuda::u32_arg(total / n, "gelu_bias rows")?;
                let n = cuda::u32_arg(n, "gelu_bias n")?;
                let cfg = LaunchConfig {
                    grid_dim: (total.div_ceil(BLOCK as usize).min(65535) as u32, 1, 1),
                    block_dim: (BLOCK, 1, 1),
                    shared_mem_bytes: 0,
                };
                let stream = dev.cuda_stream();
                let mut args = stream.launch_builder(&func);
                args.arg(&x).arg(&b).arg(&mut y).arg(&rows).arg(&n);
                // SAFETY: the arguments match gelu_bias_<t>(const T*, const T*, T*, unsigned,
                // unsigned); x and y hold rows*n elements, bias n.
                unsafe { args.launch(cfg) }.w()?;
                Ok(y)
            }
        }
        let dev = s1.device();
        let slice = Launch.map(&s1.slice, l1, &s2.slice, l2, dev)?;
        let y = candle_core::CudaStorage {
            slice,
            device: dev.clone(),
        };
        Ok((y, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::DType;

    #[test]
    fn gelu_bias_matches_ref_on_odd_sizes_and_dtypes() {
        crate::ops::simd::for_each_level(|level| {
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                for (i, n) in ODD_SIZES.into_iter().enumerate() {
                    let x = randn(i as u64, &[3, n], dtype);
                    let b = randn(100 + i as u64, &[n], dtype);
                    let got = gelu_bias(&x, &b).unwrap();
                    assert_close(
                        &got,
                        &gelu_bias_ref(&x, &b).unwrap(),
                        dtype,
                        &format!("gelu_bias {level} {dtype:?} n={n}"),
                    );
                }
            }
        });
    }

    #[test]
    fn gelu_bias_wrong_bias_shape_is_error() {
        let x = randn(1, &[2, 8], DType::F32);
        assert!(gelu_bias(&x, &randn(2, &[7], DType::F32)).is_err());
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn gelu_bias_cuda_matches_ref_on_odd_sizes_and_dtypes() {
        let Some(dev) = cuda_device("gelu_bias_cuda") else {
            return;
        };
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for (i, n) in ODD_SIZES.into_iter().enumerate() {
                let x = randn(i as u64, &[3, n], dtype);
                let b = randn(100 + i as u64, &[n], dtype);
                let got = cpu(gelu_bias(&on(&dev, &x), &on(&dev, &b)).unwrap());
                let want = gelu_bias_ref(&x, &b).unwrap();
                assert_close(
                    &got,
                    &want,
                    dtype,
                    &format!("cuda gelu_bias {dtype:?} n={n}"),
                );
                // Rows 1..3: a view with a start offset.
                let got =
                    cpu(gelu_bias(&on(&dev, &x).narrow(0, 1, 2).unwrap(), &on(&dev, &b)).unwrap());
                let want = gelu_bias_ref(&x.narrow(0, 1, 2).unwrap(), &b).unwrap();
                assert_close(
                    &got,
                    &want,
                    dtype,
                    &format!("cuda gelu_bias offset {dtype:?} n={n}"),
                );
            }
        }
        // More elements than one grid of 65535 x 256 threads covers: the grid-stride loop.
        let (x, b) = (
            randn(7, &[16385, 1025], DType::F32),
            randn(8, &[1025], DType::F32),
        );
        let got = cpu(gelu_bias(&on(&dev, &x), &on(&dev, &b)).unwrap());
        assert_close(
            &got,
            &gelu_bias_ref(&x, &b).unwrap(),
            DType::F32,
            "cuda gelu_bias grid-stride",
        );
    }
}

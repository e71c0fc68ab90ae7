//! Fused residual add + LayerNorm: `y = layer_norm(x + residual) * gamma + beta` over the last
//! dimension, in one pass per row (the sum is not written out).

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};

use super::{check_float, f32_view, in_f64, storage_of};

/// `x`, `residual` [.., n]; `gamma`, `beta` [n]; all the same float dtype.
pub fn add_layer_norm(
    x: &Tensor,
    residual: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    check_float(x, "add_layer_norm x")?;
    let n = x.dim(D::Minus1)?;
    if residual.dims() != x.dims() || residual.dtype() != x.dtype() {
        bail!(
            "add_layer_norm: residual must match x {:?} {:?}",
            x.dims(),
            x.dtype()
        )
    }
    for (t, what) in [(gamma, "gamma"), (beta, "beta")] {
        if t.dims() != [n] || t.dtype() != x.dtype() {
            bail!(
                "add_layer_norm: {what} must be [{n}] {:?}, got {:?} {:?}",
                x.dtype(),
                t.dims(),
                t.dtype()
            )
        }
    }
    let gb = Tensor::stack(&[gamma, beta], 0)?;
    x.contiguous()?
        .apply_op3_no_bwd(&residual.contiguous()?, &gb, &AddLayerNorm { eps })
}

/// Reference: plain candle ops, in f64.
pub fn add_layer_norm_ref(
    x: &Tensor,
    residual: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    in_f64(x.dtype(), || {
        let f = DType::F64;
        let h = (x.to_dtype(f)? + residual.to_dtype(f)?)?;
        let centered = h.broadcast_sub(&h.mean_keepdim(D::Minus1)?)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        centered
            .broadcast_div(&(var + eps as f64)?.sqrt()?)?
            .broadcast_mul(&gamma.to_dtype(f)?)?
            .broadcast_add(&beta.to_dtype(f)?)
    })
}

/// Sum of `f(v)` over `v` in 8 independent lanes: vectorises, and is more accurate than one
/// running f32 sum over long rows.
#[inline]
fn lane_sum(v: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let chunks = v.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    for c in chunks {
        for k in 0..8 {
            lanes[k] += f(c[k]);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

struct AddLayerNorm {
    eps: f32,
}

impl CustomOp3 for AddLayerNorm {
    fn name(&self) -> &'static str {
        "add_layer_norm"
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
        let x = f32_view(s1, l1, "add_layer_norm x")?;
        let r = f32_view(s2, l2, "add_layer_norm residual")?;
        let gb = f32_view(s3, l3, "add_layer_norm gamma/beta")?;
        let n = gb.len() / 2;
        let (gamma, beta) = gb.split_at(n);
        let mut out = vec![0f32; x.len()];
        let mut h = vec![0f32; n];
        for ((xr, rr), or) in x
            .chunks_exact(n)
            .zip(r.chunks_exact(n))
            .zip(out.chunks_exact_mut(n))
        {
            h.iter_mut()
                .zip(xr.iter().zip(rr))
                .for_each(|(h, (a, b))| *h = a + b);
            let mean = lane_sum(&h, |v| v) / n as f32;
            let var = lane_sum(&h, |v| (v - mean) * (v - mean)) / n as f32;
            let inv = 1.0 / (var + self.eps).sqrt();
            for (((o, &hv), &g), &b) in or.iter_mut().zip(h.iter()).zip(gamma).zip(beta) {
                *o = (hv - mean) * inv * g + b;
            }
        }
        Ok((storage_of(out, s1.dtype())?, l1.shape().clone()))
    }

    /// kernels/add_layer_norm.cu: one block of 256 threads per row.
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
        use super::cuda;
        use candle_core::cuda_backend::cudarc::driver::{
            CudaSlice, DeviceRepr, PushKernelArg, ValidAsZeroBits,
        };
        use candle_core::cuda_backend::{CudaDevice, Map3, WrapErr};
        use candle_core::WithDType;

        struct Launch {
            eps: f32,
        }
        impl Map3 for Launch {
            fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
                &self,
                x: &CudaSlice<T>,
                lx: &Layout,
                r: &CudaSlice<T>,
                lr: &Layout,
                gb: &CudaSlice<T>,
                lgb: &Layout,
                dev: &CudaDevice,
            ) -> Result<CudaSlice<T>> {
                let func = cuda::func(dev, &cuda::ADD_LAYER_NORM, T::DTYPE)?;
                let x = cuda::contiguous(x, lx, "add_layer_norm x")?;
                let r = cuda::contiguous(r, lr, "add_layer_norm residual")?;
                let gb = cuda::contiguous(gb, lgb, "add_layer_norm gamma/beta")?;
                let (total, n) = (x.len(), gb.len() / 2);
                // SAFETY: every element is written by the kernel below (or there are none).
                let mut y = unsafe { dev.alloc::<T>(total)? };
                if total == 0 {
                    return Ok(y);
                }
                let rows = cuda::u32_arg(total / n, "add_layer_norm rows")?;
                let n = cuda::u32_arg(n, "add_layer_norm n")?;
                let stream = dev.cuda_stream();
                let mut args = stream.launch_builder(&func);
                args.arg(&x)
                    .arg(&r)
                    .arg(&gb)
                    .arg(&mut y)
                    .arg(&n)
                    .arg(&self.eps);
                // SAFETY: the arguments match add_layer_norm_<t>(const T* x, const T* r,
                // const T* gamma_beta, T* y, unsigned n, float eps); x, r and y hold rows*n
                // elements, gamma_beta 2n; one block per row.
                unsafe { args.launch(cuda::per_row(rows)) }.w()?;
                Ok(y)
            }
        }
        let dev = s1.device();
        let launch = Launch { eps: self.eps };
        let slice = launch.map(&s1.slice, l1, &s2.slice, l2, &s3.slice, l3, dev)?;
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

    #[test]
    fn add_layer_norm_matches_ref_on_odd_sizes_and_dtypes() {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for (i, n) in ODD_SIZES.into_iter().enumerate() {
                let s = 10 * i as u64;
                let (x, r) = (randn(s, &[4, n], dtype), randn(s + 1, &[4, n], dtype));
                let (g, b) = (randn(s + 2, &[n], dtype), randn(s + 3, &[n], dtype));
                let got = add_layer_norm(&x, &r, &g, &b, 1e-12).unwrap();
                let want = add_layer_norm_ref(&x, &r, &g, &b, 1e-12).unwrap();
                assert_close(
                    &got,
                    &want,
                    dtype,
                    &format!("add_layer_norm {dtype:?} n={n}"),
                );
            }
        }
    }

    #[test]
    fn add_layer_norm_mismatched_residual_is_error() {
        let x = randn(1, &[2, 8], DType::F32);
        let g = randn(2, &[8], DType::F32);
        assert!(add_layer_norm(&x, &randn(3, &[2, 7], DType::F32), &g, &g, 1e-5).is_err());
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn add_layer_norm_cuda_matches_ref_on_odd_sizes_and_dtypes() {
        let Some(dev) = cuda_device("add_layer_norm_cuda") else {
            return;
        };
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for (i, n) in ODD_SIZES.into_iter().enumerate() {
                let s = 10 * i as u64;
                let (x, r) = (randn(s, &[4, n], dtype), randn(s + 1, &[4, n], dtype));
                let (g, b) = (randn(s + 2, &[n], dtype), randn(s + 3, &[n], dtype));
                let got = add_layer_norm(
                    &on(&dev, &x),
                    &on(&dev, &r),
                    &on(&dev, &g),
                    &on(&dev, &b),
                    1e-12,
                )
                .unwrap();
                let want = add_layer_norm_ref(&x, &r, &g, &b, 1e-12).unwrap();
                let what = format!("cuda add_layer_norm {dtype:?} n={n}");
                assert_close(&cpu(got), &want, dtype, &what);
            }
        }
    }
}

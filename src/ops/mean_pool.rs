//! The embedding head: masked mean pooling over the sequence, then (optionally) L2 normalisation,
//! in one pass: `hidden` [b, l, h] and `mask` [b, l] (1 = real token) -> [b, h].

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

use super::{check_float, f32_view, in_f64, storage_of};

/// Mean of `hidden` over positions where `mask` is 1, L2-normalised when `normalize`.
pub fn mean_pool_l2(hidden: &Tensor, mask: &Tensor, normalize: bool) -> Result<Tensor> {
    check_float(hidden, "mean_pool_l2 hidden")?;
    let (b, l, _) = hidden.dims3()?;
    if mask.dims() != [b, l] || mask.dtype() != hidden.dtype() {
        bail!(
            "mean_pool_l2: mask must be [{b}, {l}] {:?}, got {:?} {:?}",
            hidden.dtype(),
            mask.dims(),
            mask.dtype()
        )
    }
    hidden
        .contiguous()?
        .apply_op2_no_bwd(&mask.contiguous()?, &MeanPool { normalize })
}

/// Reference: plain candle ops, in f64.
pub fn mean_pool_l2_ref(hidden: &Tensor, mask: &Tensor, normalize: bool) -> Result<Tensor> {
    in_f64(hidden.dtype(), || {
        let (h, m) = (hidden.to_dtype(DType::F64)?, mask.to_dtype(DType::F64)?);
        let summed = h.broadcast_mul(&m.unsqueeze(D::Minus1)?)?.sum(1)?;
        let pooled = summed.broadcast_div(&m.sum_keepdim(1)?.clamp(1e-9, f64::MAX)?)?;
        if !normalize {
            return Ok(pooled);
        }
        let norm = pooled
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        pooled.broadcast_div(&norm)
    })
}

struct MeanPool {
    normalize: bool,
}

impl CustomOp2 for MeanPool {
    fn name(&self) -> &'static str {
        "mean_pool_l2"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, l, h) = l1.shape().dims3()?;
        let x = f32_view(s1, l1, "mean_pool_l2 hidden")?;
        let m = f32_view(s2, l2, "mean_pool_l2 mask")?;
        let mut out = vec![0f32; b * h];
        for (i, o) in out.chunks_exact_mut(h).enumerate() {
            let mut count = 0f32;
            for j in 0..l {
                let w = m[i * l + j];
                if w != 0.0 {
                    count += w;
                    let row = &x[(i * l + j) * h..(i * l + j + 1) * h];
                    o.iter_mut().zip(row).for_each(|(a, v)| *a += w * v);
                }
            }
            let inv = 1.0 / count.max(1e-9);
            o.iter_mut().for_each(|a| *a *= inv);
            if self.normalize {
                let norm = o.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
                o.iter_mut().for_each(|a| *a /= norm);
            }
        }
        Ok((storage_of(out, s1.dtype())?, Shape::from((b, h))))
    }

    /// kernels/mean_pool_l2.cu: one block of 256 threads per batch row, h <= 256 * 16.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda;
        use candle_core::cuda_backend::cudarc::driver::{
            CudaSlice, DeviceRepr, PushKernelArg, ValidAsZeroBits,
        };
        use candle_core::cuda_backend::{CudaDevice, Map2, WrapErr};
        use candle_core::WithDType;

        struct Launch {
            normalize: bool,
        }
        impl Map2 for Launch {
            fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
                &self,
                x: &CudaSlice<T>,
                lx: &Layout,
                m: &CudaSlice<T>,
                lm: &Layout,
                dev: &CudaDevice,
            ) -> Result<CudaSlice<T>> {
                let func = cuda::func(dev, &cuda::MEAN_POOL_L2, T::DTYPE)?;
                let (b, l, h) = lx.shape().dims3()?;
                if h > MAX_HIDDEN_CUDA {
                    bail!("mean_pool_l2 on CUDA: hidden size {h} exceeds {MAX_HIDDEN_CUDA}")
                }
                let x = cuda::contiguous(x, lx, "mean_pool_l2 hidden")?;
                let m = cuda::contiguous(m, lm, "mean_pool_l2 mask")?;
                // SAFETY: every element is written by the kernel below (or there are none).
                let mut y = unsafe { dev.alloc::<T>(b * h)? };
                if b * h == 0 {
                    return Ok(y);
                }
                let rows = cuda::u32_arg(b, "mean_pool_l2 batch")?;
                let l = cuda::u32_arg(l, "mean_pool_l2 seq len")?;
                let h = cuda::u32_arg(h, "mean_pool_l2 hidden")?;
                let normalize = i32::from(self.normalize);
                let stream = dev.cuda_stream();
                let mut args = stream.launch_builder(&func);
                args.arg(&x)
                    .arg(&m)
                    .arg(&mut y)
                    .arg(&l)
                    .arg(&h)
                    .arg(&normalize);
                // SAFETY: the arguments match mean_pool_l2_<t>(const T* hidden, const T* mask,
                // T* y, unsigned l, unsigned h, int normalize); hidden is [b, l, h], mask [b, l],
                // y [b, h], h <= 256 * MAX_COLS_PER_THREAD (checked above); one block per row.
                unsafe { args.launch(cuda::per_row(rows)) }.w()?;
                Ok(y)
            }
        }
        let (b, _, h) = l1.shape().dims3()?;
        let dev = s1.device();
        let launch = Launch {
            normalize: self.normalize,
        };
        let slice = launch.map(&s1.slice, l1, &s2.slice, l2, dev)?;
        let y = candle_core::CudaStorage {
            slice,
            device: dev.clone(),
        };
        Ok((y, Shape::from((b, h))))
    }
}

/// The CUDA kernel keeps 16 columns per thread in registers, 256 threads per block.
#[cfg(feature = "cuda")]
const MAX_HIDDEN_CUDA: usize = 256 * 16;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::Device;

    fn mask(b: usize, l: usize, dtype: DType) -> Tensor {
        // Row i has (i * 7 % l) + 1 real tokens.
        let v: Vec<f32> = (0..b * l)
            .map(|k| ((k % l) <= (k / l * 7) % l) as u8 as f32)
            .collect();
        Tensor::from_vec(v, (b, l), &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    #[test]
    fn mean_pool_l2_matches_ref_on_odd_sizes_and_dtypes() {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for (i, h) in ODD_SIZES.into_iter().enumerate() {
                for l in [1usize, 33] {
                    let x = randn(i as u64, &[3, l, h], dtype);
                    let m = mask(3, l, dtype);
                    for normalize in [false, true] {
                        let got = mean_pool_l2(&x, &m, normalize).unwrap();
                        let want = mean_pool_l2_ref(&x, &m, normalize).unwrap();
                        assert_close(
                            &got,
                            &want,
                            dtype,
                            &format!("mean_pool {dtype:?} l={l} h={h} norm={normalize}"),
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn mean_pool_l2_wrong_mask_is_error() {
        let x = randn(1, &[2, 4, 8], DType::F32);
        assert!(mean_pool_l2(&x, &mask(2, 5, DType::F32), true).is_err());
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn mean_pool_l2_cuda_matches_ref_on_odd_sizes_and_dtypes() {
        let Some(dev) = cuda_device("mean_pool_l2_cuda") else {
            return;
        };
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            // 4096: the most columns the kernel keeps in registers (256 threads x 16).
            for (i, h) in ODD_SIZES.into_iter().chain([4096]).enumerate() {
                for l in [1usize, 33] {
                    let x = randn(i as u64, &[3, l, h], dtype);
                    let m = mask(3, l, dtype);
                    for normalize in [false, true] {
                        let got = mean_pool_l2(&on(&dev, &x), &on(&dev, &m), normalize).unwrap();
                        let want = mean_pool_l2_ref(&x, &m, normalize).unwrap();
                        let what = format!("cuda mean_pool {dtype:?} l={l} h={h} norm={normalize}");
                        assert_close(&cpu(got), &want, dtype, &what);
                    }
                }
            }
        }
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn mean_pool_l2_cuda_hidden_over_4096_is_error() {
        let Some(dev) = cuda_device("mean_pool_l2_cuda_hidden_over_4096") else {
            return;
        };
        let x = on(&dev, &randn(1, &[1, 2, 4097], DType::F32));
        assert!(mean_pool_l2(&x, &on(&dev, &mask(1, 2, DType::F32)), true).is_err());
    }
}

//! Softmax + top-k for classifier outputs, so that only k values leave the device: `logits` [b, n]
//! -> [b, k, 2] pairs of (probability, class index as a float in the logits' dtype), sorted by
//! probability, highest first. The index must be exact in that dtype: up to 2^24 classes in f32,
//! 2048 in f16, 256 in bf16 (more is an error: pass f32 logits).

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};

use super::{check_float, f32_view, storage_of};

/// Top `k` softmax probabilities of each row with their class indices.
pub fn softmax_topk(logits: &Tensor, k: usize) -> Result<Tensor> {
    check_float(logits, "softmax_topk logits")?;
    let (_, n) = logits.dims2()?;
    if k == 0 || k > n {
        bail!("softmax_topk: k must be within 1..={n}, got {k}")
    }
    let exact = max_classes(logits.dtype());
    if n > exact {
        bail!(
            "softmax_topk: {n} classes, but {:?} holds class indices exactly only up to {exact} \
             classes; pass F32 logits",
            logits.dtype()
        )
    }
    logits.contiguous()?.apply_op1_no_bwd(&SoftmaxTopk { k })
}

/// Most classes whose indices (0..n) the dtype represents exactly (consecutive integers).
fn max_classes(dtype: DType) -> usize {
    match dtype {
        DType::F16 => 2049,
        DType::BF16 => 257,
        _ => 1 << 24,
    }
}

/// Reference: plain candle ops (softmax, arg-sort, gather), in f64.
pub fn softmax_topk_ref(logits: &Tensor, k: usize) -> Result<Tensor> {
    let x = logits.to_dtype(DType::F64)?;
    let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
    let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    let idx = p.arg_sort_last_dim(false)?.narrow(1, 0, k)?.contiguous()?;
    let vals = p.gather(&idx, 1)?;
    Tensor::stack(&[vals, idx.to_dtype(DType::F64)?], 2)?.to_dtype(logits.dtype())
}

struct SoftmaxTopk {
    k: usize,
}

impl CustomOp1 for SoftmaxTopk {
    fn name(&self) -> &'static str {
        "softmax_topk"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, n) = l.shape().dims2()?;
        let x = f32_view(s, l, "softmax_topk logits")?;
        let k = self.k;
        let mut out = Vec::with_capacity(b * k * 2);
        let mut idx: Vec<usize> = Vec::with_capacity(n);
        for row in x.chunks_exact(n) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
            idx.clear();
            idx.extend(0..n);
            // Highest first; ties keep the lower index first.
            let by_value = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
            if k < n {
                idx.select_nth_unstable_by(k - 1, by_value);
            }
            idx[..k].sort_unstable_by(by_value);
            for &i in &idx[..k] {
                out.push((row[i] - max).exp() / sum);
                out.push(i as f32);
            }
        }
        Ok((storage_of(out, s.dtype())?, Shape::from((b, k, 2))))
    }

    /// kernels/softmax_topk.cu: one block of 256 threads per row, k <= 64.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda;
        use candle_core::cuda_backend::cudarc::driver::{
            CudaSlice, DeviceRepr, PushKernelArg, ValidAsZeroBits,
        };
        use candle_core::cuda_backend::{CudaDevice, Map1, WrapErr};
        use candle_core::WithDType;

        struct Launch {
            k: usize,
        }
        impl Map1 for Launch {
            fn f<T: DeviceRepr + WithDType + ValidAsZeroBits>(
                &self,
                x: &CudaSlice<T>,
                dev: &CudaDevice,
                lx: &Layout,
            ) -> Result<CudaSlice<T>> {
                let func = cuda::func(dev, &cuda::SOFTMAX_TOPK, T::DTYPE)?;
                let (b, n) = lx.shape().dims2()?;
                if self.k > MAX_K_CUDA {
                    bail!("softmax_topk on CUDA: k = {} exceeds {MAX_K_CUDA}", self.k)
                }
                let x = cuda::contiguous(x, lx, "softmax_topk logits")?;
                // SAFETY: every element is written by the kernel below (or there are none).
                let mut y = unsafe { dev.alloc::<T>(b * self.k * 2)? };
                if b == 0 {
                    return Ok(y);
                }
                let rows = cuda::u32_arg(b, "softmax_topk batch")?;
                let n = cuda::u32_arg(n, "softmax_topk n")?;
                let k = cuda::u32_arg(self.k, "softmax_topk k")?;
                let stream = dev.cuda_stream();
                let mut args = stream.launch_builder(&func);
                args.arg(&x).arg(&mut y).arg(&n).arg(&k);
                // SAFETY: the arguments match softmax_topk_<t>(const T* logits, T* y, unsigned n,
                // unsigned k); logits is [b, n], y [b, k, 2], 1 <= k <= min(n, MAX_K) (checked
                // here and in softmax_topk); one block per row.
                unsafe { args.launch(cuda::per_row(rows)) }.w()?;
                Ok(y)
            }
        }
        let (b, _) = l.shape().dims2()?;
        let dev = s.device();
        let slice = Launch { k: self.k }.map(&s.slice, dev, l)?;
        let y = candle_core::CudaStorage {
            slice,
            device: dev.clone(),
        };
        Ok((y, Shape::from((b, self.k, 2))))
    }
}

/// The CUDA kernel's `MAX_K` (rounds of block arg-max, indices kept in shared memory).
#[cfg(feature = "cuda")]
const MAX_K_CUDA: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    #[test]
    fn softmax_topk_matches_ref_on_odd_sizes() {
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for (i, n) in ODD_SIZES.into_iter().enumerate() {
                // Distinct logits (no ties), so the order is well defined in every dtype.
                let mut v: Vec<f32> = (0..2 * n).map(|j| (j % n) as f32 * 0.01).collect();
                let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(i as u64);
                use rand::seq::SliceRandom;
                v[..n].shuffle(&mut rng);
                v[n..].shuffle(&mut rng);
                let x = Tensor::from_vec(v, (2, n), &candle_core::Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                if n > max_classes(dtype) {
                    assert!(
                        softmax_topk(&x, 1).is_err(),
                        "{dtype:?} n={n}: not an error"
                    );
                    continue;
                }
                for k in [1, n.min(5), n] {
                    let got = softmax_topk(&x, k).unwrap();
                    let want = softmax_topk_ref(&x, k).unwrap();
                    let what = format!("softmax_topk {dtype:?} n={n} k={k}");
                    assert_close(&got, &want, dtype, &what);
                    assert_same_indices(&got, &want, &what);
                }
            }
        }
    }

    /// The class indices ([.., .., 1]) equal, exactly (assert_close's relative tolerance would let
    /// 678 pass for 680).
    fn assert_same_indices(got: &Tensor, want: &Tensor, what: &str) {
        let idx = |t: &Tensor| -> Vec<f32> {
            t.narrow(2, 1, 1)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        assert_eq!(idx(got), idx(want), "{what}: class indices");
    }

    #[test]
    fn softmax_topk_bad_k_is_error() {
        let x = randn(1, &[2, 4], DType::F32);
        assert!(softmax_topk(&x, 0).is_err());
        assert!(softmax_topk(&x, 5).is_err());
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn softmax_topk_cuda_matches_ref_on_odd_sizes() {
        let Some(dev) = cuda_device("softmax_topk_cuda") else {
            return;
        };
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for (i, n) in ODD_SIZES.into_iter().enumerate() {
                // Distinct logits (no ties), as in the CPU test.
                let mut v: Vec<f32> = (0..2 * n).map(|j| (j % n) as f32 * 0.01).collect();
                let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(i as u64);
                use rand::seq::SliceRandom;
                v[..n].shuffle(&mut rng);
                v[n..].shuffle(&mut rng);
                let x = Tensor::from_vec(v, (2, n), &candle_core::Device::Cpu)
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                if n > max_classes(dtype) {
                    continue;
                }
                // k <= 64 on CUDA (the kernel's MAX_K).
                for k in [1, n.min(5), n.min(MAX_K_CUDA)] {
                    let got = cpu(softmax_topk(&on(&dev, &x), k).unwrap());
                    let want = softmax_topk_ref(&x, k).unwrap();
                    let what = format!("cuda softmax_topk {dtype:?} n={n} k={k}");
                    assert_close(&got, &want, dtype, &what);
                    assert_same_indices(&got, &want, &what);
                }
            }
        }
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn softmax_topk_cuda_k_over_64_is_error() {
        let Some(dev) = cuda_device("softmax_topk_cuda_k_over_64") else {
            return;
        };
        let x = on(&dev, &randn(1, &[2, 100], DType::F32));
        assert!(softmax_topk(&x, MAX_K_CUDA + 1).is_err());
    }
}

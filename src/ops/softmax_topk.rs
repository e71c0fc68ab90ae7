//! Softmax + top-k for classifier outputs, so that only k values leave the device: `logits` [b, n]
//! -> [b, k, 2] pairs of (probability, class index as a float; exact below 2^24 classes), sorted by
//! probability, highest first.

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
    logits.contiguous()?.apply_op1_no_bwd(&SoftmaxTopk { k })
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
}

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
                for k in [1, n.min(5), n] {
                    let got = softmax_topk(&x, k).unwrap();
                    let want = softmax_topk_ref(&x, k).unwrap();
                    assert_close(
                        &got,
                        &want,
                        dtype,
                        &format!("softmax_topk {dtype:?} n={n} k={k}"),
                    );
                }
            }
        }
    }

    #[test]
    fn softmax_topk_bad_k_is_error() {
        let x = randn(1, &[2, 4], DType::F32);
        assert!(softmax_topk(&x, 0).is_err());
        assert!(softmax_topk(&x, 5).is_err());
    }
}

//! Multi-head self-attention over packed sequences on the CPU: `q`, `k`, `v` are [tokens, hidden]
//! with rows `ld` elements apart (the sequences' rows one after another, heads side by side in the
//! columns; `ld` = hidden for separate matrices, 3 · hidden for q, k and v side by side in one
//! [tokens, 3 · hidden] matrix, where q, k and v are its slices from 0, hidden and 2 · hidden); each
//! sequence
//! attends only to its own rows. Runs the two products per (sequence, head) straight on the
//! strided columns with the `gemm` crate, and the softmax vectorised, so there are no per-head
//! transposing copies and no temporaries besides one scores buffer.

use crate::ops::simd::{self, dispatch};

/// The shape of one packed attention call.
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    /// Tokens of each sequence, in order.
    pub lens: &'a [usize],
    pub hidden: usize,
    pub heads: usize,
    /// Elements from one row of q (k, v) to the next, at least `hidden`.
    pub ld: usize,
}

/// Context [tokens, hidden] (rows `hidden` apart) for packed sequences of `shape.lens` (summing to
/// tokens).
pub fn packed(q: &[f32], k: &[f32], v: &[f32], shape: Shape) -> Vec<f32> {
    dispatch!(packed_all(q, k, v, shape))
}

#[inline(always)]
fn packed_all(q: &[f32], k: &[f32], v: &[f32], shape: Shape) -> Vec<f32> {
    let Shape {
        lens,
        hidden,
        heads,
        ld,
    } = shape;
    let tokens: usize = lens.iter().sum();
    // Every row's `hidden` columns are inside each slice.
    let need = if tokens == 0 {
        0
    } else {
        (tokens - 1) * ld + hidden
    };
    assert!(ld >= hidden && q.len() >= need && k.len() >= need && v.len() >= need);
    assert!(heads > 0 && hidden.is_multiple_of(heads));
    let d = hidden / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let mut ctx = vec![0f32; tokens * hidden];
    let longest = lens.iter().copied().max().unwrap_or(0);
    let mut scores = vec![0f32; longest * longest];
    let (hs, lds) = (hidden as isize, ld as isize);
    let mut off = 0;
    for &len in lens {
        let s = &mut scores[..len * len];
        for head in 0..heads {
            let (at, at_in) = (off * hidden + head * d, off * ld + head * d);
            // SAFETY: every access stays inside the slices: rows off..off+len, columns
            // head*d..head*d+d of ctx [tokens, hidden] and of q, k, v (rows ld apart, checked
            // above), and the len x len scores.
            unsafe {
                // scores (len x len) = Q_h (len x d) . K_h^T (d x len), times 1/sqrt(d)
                gemm::gemm(
                    len,
                    len,
                    d,
                    s.as_mut_ptr(),
                    1,
                    len as isize,
                    false,
                    q.as_ptr().add(at_in),
                    1,
                    lds,
                    k.as_ptr().add(at_in),
                    lds,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            softmax_rows(s, len);
            unsafe {
                // ctx_h (len x d) = P (len x len) . V_h (len x d)
                gemm::gemm(
                    len,
                    d,
                    len,
                    ctx.as_mut_ptr().add(at),
                    1,
                    hs,
                    false,
                    s.as_ptr(),
                    1,
                    len as isize,
                    v.as_ptr().add(at_in),
                    1,
                    lds,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
        off += len;
    }
    ctx
}

/// Softmax of each row of `s` (rows of `n`), in place.
#[inline(always)]
fn softmax_rows(s: &mut [f32], n: usize) {
    for row in s.chunks_exact_mut(n) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let mut sum = 0.0;
        for x in row.iter_mut() {
            *x = simd::exp(*x - max);
            sum += *x;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|x| *x *= inv);
    }
}

#[cfg(test)]
mod tests {
    use super::Shape;
    use candle_core::{Device, Tensor};
    use rand::{Rng, SeedableRng};

    /// Reference from plain candle ops in f64, one sequence and head at a time.
    fn reference(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        lens: &[usize],
        h: usize,
        heads: usize,
    ) -> Vec<f32> {
        let d = h / heads;
        let t: usize = lens.iter().sum();
        let mk = |x: &[f32]| {
            Tensor::from_slice(x, (t, h), &Device::Cpu)
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap()
        };
        let (q, k, v) = (mk(q), mk(k), mk(v));
        let mut rows = Vec::new();
        let mut off = 0;
        for &len in lens {
            let mut per_head = Vec::new();
            for head in 0..heads {
                let sl = |x: &Tensor| {
                    x.narrow(0, off, len)
                        .unwrap()
                        .narrow(1, head * d, d)
                        .unwrap()
                };
                let s = (sl(&q).matmul(&sl(&k).t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
                let p = candle_nn::ops::softmax_last_dim(&s).unwrap();
                per_head.push(p.matmul(&sl(&v)).unwrap());
            }
            rows.push(Tensor::cat(&per_head, 1).unwrap());
            off += len;
        }
        Tensor::cat(&rows, 0)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn packed_attention_matches_per_sequence_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for (lens, h, heads) in [
            (vec![1usize], 8, 2),
            (vec![5, 1, 31, 33], 64, 4),
            (vec![22, 7, 40], 384, 12),
        ] {
            let t: usize = lens.iter().sum();
            let mut gen =
                || -> Vec<f32> { (0..t * h).map(|_| rng.random_range(-2.0f32..2.0)).collect() };
            let (q, k, v) = (gen(), gen(), gen());
            let want = reference(&q, &k, &v, &lens, h, heads);
            // q, k and v side by side in one [t, 3h] matrix, as the fused projection gives them.
            let qkv: Vec<f32> = (0..t)
                .flat_map(|r| [&q, &k, &v].map(|m| &m[r * h..(r + 1) * h]).concat())
                .collect();
            crate::ops::simd::for_each_level(|level| {
                let shape = |ld| Shape {
                    lens: &lens,
                    hidden: h,
                    heads,
                    ld,
                };
                let got = super::packed(&q, &k, &v, shape(h));
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-5 * b.abs().max(0.1),
                        "{level}: lens {lens:?} h {h}: element {i}: {a} vs {b}"
                    );
                }
                let side = super::packed(&qkv, &qkv[h..], &qkv[2 * h..], shape(3 * h));
                assert_eq!(
                    side, got,
                    "{level}: lens {lens:?} h {h}: q, k, v side by side"
                );
            });
        }
    }
}

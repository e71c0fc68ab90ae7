//! Multi-head self-attention over packed sequences on the CPU: `q`, `k`, `v` are [tokens, hidden]
//! with rows `ld` elements apart (the sequences' rows one after another, heads side by side in the
//! columns; `ld` = hidden for separate matrices, 3 · hidden for q, k and v side by side in one
//! [tokens, 3 · hidden] matrix, where q, k and v are its slices from 0, hidden and 2 · hidden); each
//! sequence
//! attends only to its own rows. With AVX-512 and a head width that is a multiple of 16 (up to 64;
//! MiniLM's is 32) each (sequence, head) runs in one kernel of its own (`x86`): K's head transposed
//! into a small buffer, scores, softmax and the product with V with every partial sum in
//! registers. Elsewhere the two products run straight on the strided columns with the `gemm` crate
//! (a call costs more than these small products: the kernel is several times faster at BERT's
//! sizes), and the softmax vectorised. No per-head copies of q or v, and no temporaries besides
//! the scores (and K's transpose).

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
    #[cfg(target_arch = "x86_64")]
    if simd::level_cap() >= 2 && x86::applies(shape) {
        // SAFETY: `applies` checked the CPU features the kernel is compiled for.
        return unsafe { x86::packed(q, k, v, shape) };
    }
    dispatch!(packed_all(q, k, v, shape))
}

/// Checks the slices hold every row of `shape` and returns (tokens, head width).
fn check(q: &[f32], k: &[f32], v: &[f32], shape: Shape) -> (usize, usize) {
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
    (tokens, hidden / heads)
}

#[inline(always)]
fn packed_all(q: &[f32], k: &[f32], v: &[f32], shape: Shape) -> Vec<f32> {
    let Shape {
        lens,
        hidden,
        heads,
        ld,
    } = shape;
    let (tokens, d) = check(q, k, v, shape);
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

/// Softmax of each row of `s` (rows of `n`), in place. The exponentials run as one loop over the
/// whole matrix (after each row's maximum is subtracted), which vectorises; a row's sum stays a
/// sequential loop of its own, so the result is the same as one pass per row.
#[inline(always)]
fn softmax_rows(s: &mut [f32], n: usize) {
    for row in s.chunks_exact_mut(n) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        row.iter_mut().for_each(|x| *x -= max);
    }
    s.iter_mut().for_each(|x| *x = simd::exp(*x));
    for row in s.chunks_exact_mut(n) {
        let sum: f32 = row.iter().sum();
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|x| *x *= inv);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Shape;
    use crate::ops::simd::exp512;

    /// Widest head the kernel keeps in registers (4 vectors of 16).
    const MAX_D: usize = 64;
    /// Query rows per block of the scores (8 accumulators of 16 keys).
    const QR: usize = 8;
    /// Query rows per block of the context (4 × d / 16 accumulators).
    const PR: usize = 4;

    /// Whether the kernel runs this shape on this CPU.
    pub(super) fn applies(shape: Shape) -> bool {
        let d = shape.hidden / shape.heads.max(1);
        shape.heads > 0
            && shape.hidden.is_multiple_of(shape.heads)
            && d > 0
            && d.is_multiple_of(16)
            && d <= MAX_D
            && is_x86_feature_detected!("avx512f")
    }

    /// As `super::packed`.
    ///
    /// # Safety
    /// `applies(shape)`.
    pub(super) unsafe fn packed(q: &[f32], k: &[f32], v: &[f32], shape: Shape) -> Vec<f32> {
        let (tokens, d) = super::check(q, k, v, shape);
        let Shape {
            lens,
            hidden,
            heads,
            ld,
        } = shape;
        let scale = 1.0 / (d as f32).sqrt();
        let mut ctx: Vec<f32> = Vec::with_capacity(tokens * hidden);
        let longest = lens.iter().copied().max().unwrap_or(0);
        let lp_max = longest.next_multiple_of(16);
        // K's head transposed [d, lp] and the scores [len, lp] (lp: len rounded up to 16).
        let mut kt = vec![0f32; d * lp_max];
        let mut s = vec![0f32; longest * lp_max];
        let out = ctx.spare_capacity_mut().as_mut_ptr().cast::<f32>();
        let mut off = 0;
        for &len in lens {
            let lp = len.next_multiple_of(16);
            for head in 0..heads {
                let at_in = off * ld + head * d;
                // SAFETY: rows off..off+len, columns head*d..head*d+d of q, k, v (rows ld apart,
                // `check`ed) and of ctx [tokens, hidden] (capacity tokens * hidden); kt holds d * lp
                // and s len * lp. Every element of ctx is written once: each (sequence, head)
                // writes its rows' d columns.
                unsafe {
                    head_kernel(
                        q.as_ptr().add(at_in),
                        k.as_ptr().add(at_in),
                        v.as_ptr().add(at_in),
                        ld,
                        len,
                        d,
                        scale,
                        &mut kt[..d * lp],
                        &mut s[..len * lp],
                        out.add(off * hidden + head * d),
                        hidden,
                    )
                };
            }
            off += len;
        }
        // SAFETY: every element was written above (the sequences cover all tokens rows, the heads
        // all hidden columns).
        unsafe { ctx.set_len(tokens * hidden) };
        ctx
    }

    /// One (sequence, head): q, k, v point at its first row's head columns (rows `ld` apart, `len`
    /// rows, `d` columns); writes ctx rows `ldo` apart.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn head_kernel(
        q: *const f32,
        k: *const f32,
        v: *const f32,
        ld: usize,
        len: usize,
        d: usize,
        scale: f32,
        kt: &mut [f32],
        s: &mut [f32],
        ctx: *mut f32,
        ldo: usize,
    ) {
        let lp = len.next_multiple_of(16);
        // K transposed in 16 × 16 blocks, padding keys zero.
        for j in (0..lp).step_by(16) {
            let keys = (len - j.min(len)).min(16);
            for c in (0..d).step_by(16) {
                // SAFETY: rows j..j + keys < len of k, columns c..c + 16 <= d; kt rows c..c + 16
                // (of d), columns j..j + 16 (of lp).
                unsafe {
                    transpose16(
                        k.add(j * ld + c),
                        ld,
                        keys,
                        kt.as_mut_ptr().add(c * lp + j),
                        lp,
                    )
                };
            }
        }
        // Scores, scaled; padding keys -inf. Blocks of QR rows; the last block's rows past len
        // read the last row again and are not stored.
        let sp = s.as_mut_ptr();
        for i in (0..len).step_by(QR) {
            let rows = (len - i).min(QR);
            // SAFETY: rows i..i + rows < len of q and s (the others clamped to row len - 1), kt
            // [d, lp].
            unsafe {
                scores(
                    q.add(i * ld),
                    ld,
                    rows,
                    kt.as_ptr(),
                    lp,
                    len,
                    d,
                    scale,
                    sp.add(i * lp),
                )
            };
        }
        for row in s.chunks_exact_mut(lp) {
            // SAFETY: lp is a multiple of 16.
            unsafe { softmax_row(row) };
        }
        // SAFETY: rows < len of s and ctx, v [len, d]; d / 16 is 1 to 4 (`applies`).
        unsafe {
            match d / 16 {
                1 => context_rows::<1>(sp, lp, v, ld, len, ctx, ldo),
                2 => context_rows::<2>(sp, lp, v, ld, len, ctx, ldo),
                3 => context_rows::<3>(sp, lp, v, ld, len, ctx, ldo),
                _ => context_rows::<4>(sp, lp, v, ld, len, ctx, ldo),
            }
        }
    }

    /// dst[c][j] = src[j][c] for a 16 × 16 block: `rows` (≤ 16) source rows `lds` apart (the rest
    /// read as zeros), 16 columns; destination rows `ldd` apart.
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose16(src: *const f32, lds: usize, rows: usize, dst: *mut f32, ldd: usize) {
        // SAFETY: rows r < `rows` of src, 16 columns each.
        let mut r: [__m512; 16] = std::array::from_fn(|i| {
            if i < rows {
                unsafe { _mm512_loadu_ps(src.add(i * lds)) }
            } else {
                _mm512_setzero_ps()
            }
        });
        // Pairs of rows interleaved, then pairs of pairs, then 128-bit lanes across four and
        // eight rows: row c of the result holds column c.
        let mut t = [_mm512_setzero_ps(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
        }
        for i in 0..4 {
            let (a, b, c, e) = (t[4 * i], t[4 * i + 1], t[4 * i + 2], t[4 * i + 3]);
            r[4 * i] = _mm512_shuffle_ps::<0x44>(a, c);
            r[4 * i + 1] = _mm512_shuffle_ps::<0xEE>(a, c);
            r[4 * i + 2] = _mm512_shuffle_ps::<0x44>(b, e);
            r[4 * i + 3] = _mm512_shuffle_ps::<0xEE>(b, e);
        }
        for i in 0..2 {
            for j in 0..4 {
                let (a, b) = (r[8 * i + j], r[8 * i + 4 + j]);
                t[8 * i + j] = _mm512_shuffle_f32x4::<0x88>(a, b);
                t[8 * i + 4 + j] = _mm512_shuffle_f32x4::<0xDD>(a, b);
            }
        }
        for j in 0..8 {
            r[j] = _mm512_shuffle_f32x4::<0x88>(t[j], t[8 + j]);
            r[8 + j] = _mm512_shuffle_f32x4::<0xDD>(t[j], t[8 + j]);
        }
        for (c, x) in r.iter().enumerate() {
            // SAFETY: destination row c, 16 columns.
            unsafe { _mm512_storeu_ps(dst.add(c * ldd), *x) };
        }
    }

    /// Scores of `rows` (≤ QR) query rows (q rows `ld` apart) against every key: s rows `lp` apart,
    /// the keys past `len` set to -inf.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn scores(
        q: *const f32,
        ld: usize,
        rows: usize,
        kt: *const f32,
        lp: usize,
        len: usize,
        d: usize,
        scale: f32,
        s: *mut f32,
    ) {
        let sc = _mm512_set1_ps(scale);
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        // SAFETY: rows past `rows` read row rows - 1 (inside q).
        let qr: [*const f32; QR] = std::array::from_fn(|r| unsafe { q.add(r.min(rows - 1) * ld) });
        for jc in (0..lp).step_by(16) {
            let mut acc = [_mm512_setzero_ps(); QR];
            for c in 0..d {
                // SAFETY: kt row c, keys jc..jc+16 < lp; q rows' column c < d.
                let kv = unsafe { _mm512_loadu_ps(kt.add(c * lp + jc)) };
                for (a, &qp) in acc.iter_mut().zip(&qr) {
                    let qb = _mm512_set1_ps(unsafe { *qp.add(c) });
                    *a = _mm512_fmadd_ps(qb, kv, *a);
                }
            }
            let left = len.saturating_sub(jc).min(16);
            let valid: __mmask16 = if left == 16 { !0 } else { (1u16 << left) - 1 };
            for (r, a) in acc.iter().enumerate().take(rows) {
                let x = _mm512_mask_blend_ps(valid, ninf, _mm512_mul_ps(*a, sc));
                // SAFETY: row r < rows of s, columns jc..jc+16 < lp.
                unsafe { _mm512_storeu_ps(s.add(r * lp + jc), x) };
            }
        }
    }

    /// Softmax of one row in place (a multiple of 16 long; -inf entries become 0).
    #[target_feature(enable = "avx512f")]
    unsafe fn softmax_row(row: &mut [f32]) {
        let p = row.as_mut_ptr();
        let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
        for c in (0..row.len()).step_by(16) {
            // SAFETY: c + 16 <= row.len().
            m = _mm512_max_ps(m, unsafe { _mm512_loadu_ps(p.add(c)) });
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(m));
        let mut sum = _mm512_setzero_ps();
        for c in (0..row.len()).step_by(16) {
            // SAFETY: as above.
            unsafe {
                let e = exp512(_mm512_sub_ps(_mm512_loadu_ps(p.add(c)), max));
                sum = _mm512_add_ps(sum, e);
                _mm512_storeu_ps(p.add(c), e);
            }
        }
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
        for c in (0..row.len()).step_by(16) {
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(p.add(c), _mm512_mul_ps(_mm512_loadu_ps(p.add(c)), inv)) };
        }
    }

    /// `context` over all `len` rows, `PR` at a time (the last block's rows past len read the
    /// last row again and are not stored), with d = 16 · DV.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn context_rows<const DV: usize>(
        p: *const f32,
        lp: usize,
        v: *const f32,
        ld: usize,
        len: usize,
        ctx: *mut f32,
        ldo: usize,
    ) {
        for i in (0..len).step_by(PR) {
            let rows = (len - i).min(PR);
            // SAFETY: rows i..i + rows < len of p and ctx.
            unsafe { context::<DV>(p.add(i * lp), lp, rows, v, ld, len, ctx.add(i * ldo), ldo) };
        }
    }

    /// Context of `rows` (≤ PR) rows: ctx[r] = Σ_j p[r][j] · v[j] over j < len (p rows `lp` apart,
    /// v rows `ld` apart, d = 16 · DV columns); rows `ldo` apart.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn context<const DV: usize>(
        p: *const f32,
        lp: usize,
        rows: usize,
        v: *const f32,
        ld: usize,
        len: usize,
        ctx: *mut f32,
        ldo: usize,
    ) {
        // SAFETY: rows past `rows` read row rows - 1 (inside p).
        let pr: [*const f32; PR] = std::array::from_fn(|r| unsafe { p.add(r.min(rows - 1) * lp) });
        let mut acc = [[_mm512_setzero_ps(); DV]; PR];
        for j in 0..len {
            // SAFETY: row j < len, columns < d of v.
            let vv: [__m512; DV] =
                std::array::from_fn(|c| unsafe { _mm512_loadu_ps(v.add(j * ld + 16 * c)) });
            for (a, &pp) in acc.iter_mut().zip(&pr) {
                // SAFETY: column j < len of a row of p.
                let pb = _mm512_set1_ps(unsafe { *pp.add(j) });
                for (a, x) in a.iter_mut().zip(&vv) {
                    *a = _mm512_fmadd_ps(pb, *x, *a);
                }
            }
        }
        for (r, a) in acc.iter().enumerate().take(rows) {
            for (c, a) in a.iter().enumerate() {
                // SAFETY: row r < rows of ctx, columns 16c..16c+16 <= d.
                unsafe { _mm512_storeu_ps(ctx.add(r * ldo + 16 * c), *a) };
            }
        }
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
            // Head widths 64 and 48 (the AVX-512 kernel's 4 and 3 vectors), lengths at its block
            // edges (8 query rows, 16 keys).
            (vec![16, 17, 8, 9], 128, 2),
            (vec![3, 12, 4], 96, 2),
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

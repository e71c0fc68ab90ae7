//! The GEMV path of `q8_matmul` (few rows of x): dot products read the int8 weights directly
//! (i8 -> f32 convert + FMA), so the weight bytes a call streams are a quarter of an f32 matmul's.
//! Four weight rows at a time against up to four rows of x (16 independent accumulators hide the
//! FMA latency); the weights stream from memory once per call. Pure slices in, slices out: no tensors.
//!
//! Two implementations with the same contract: AVX-512 intrinsics (F + BW + VL, masked tails, what
//! the serving CPUs have) and a portable lane-array loop that `dispatch!` compiles for AVX2+FMA or
//! baseline x86-64 (and other targets).

use super::simd::dispatch;

/// Rows of x sharing one pass over the weights.
const MB: usize = 4;

/// `y[i, j] = scale[j] * sum_c x[i, c] * q[j, c]` for x [m, k], q [n, k] (row-major), y [m, n];
/// k > 0.
pub(super) fn gemv(x: &[f32], q: &[i8], scale: &[f32], k: usize, y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx512::available() {
        // SAFETY: the CPU has the features `avx512::gemv` is compiled for.
        unsafe { avx512::gemv(x, q, scale, k, y) };
        return;
    }
    dispatch!(gemv_portable(x, q, scale, k, y))
}

/// Checks the slice lengths every implementation relies on.
#[inline(always)]
fn dims(x: &[f32], q: &[i8], scale: &[f32], k: usize, y: &[f32]) -> (usize, usize) {
    let n = scale.len();
    assert!(k > 0, "q8 gemv: k = 0 (the op handles it). This is a bug.");
    let m = x.len() / k;
    assert!(
        x.len() == m * k && q.len() == n * k && y.len() == m * n,
        "q8 gemv: x {} q {} scale {n} y {} for k = {k}. This is a bug.",
        x.len(),
        q.len(),
        y.len()
    );
    (m, n)
}

/// The portable implementation: 16 independent f32 lanes per dot product, which LLVM turns into
/// one vector register (no reassociation needed), summed at the end.
#[inline(always)]
pub(super) fn gemv_portable(x: &[f32], q: &[i8], scale: &[f32], k: usize, y: &mut [f32]) {
    const L: usize = 16;
    let (m, n) = dims(x, q, scale, k, y);
    for i0 in (0..m).step_by(MB) {
        let rows = MB.min(m - i0);
        for j in 0..n {
            let w = &q[j * k..(j + 1) * k];
            let mut acc = [[0f32; L]; MB];
            for (c0, wc) in w.chunks_exact(L).enumerate() {
                let mut wf = [0f32; L];
                for l in 0..L {
                    wf[l] = wc[l] as f32;
                }
                for (i, a) in acc.iter_mut().enumerate().take(rows) {
                    let xc = &x[(i0 + i) * k + c0 * L..][..L];
                    for l in 0..L {
                        a[l] += xc[l] * wf[l];
                    }
                }
            }
            let tail = k - k % L;
            for (i, a) in acc.iter().enumerate().take(rows) {
                let xr = &x[(i0 + i) * k..(i0 + i + 1) * k];
                let mut s: f32 = a.iter().sum();
                for c in tail..k {
                    s += xr[c] * w[c] as f32;
                }
                y[(i0 + i) * n + j] = s * scale[j];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    /// Weight rows per block.
    const NB: usize = 4;

    pub(in crate::ops) fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
    }

    /// See [`super::gemv`].
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VL ([`available`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(in crate::ops) unsafe fn gemv(x: &[f32], q: &[i8], scale: &[f32], k: usize, y: &mut [f32]) {
        let (m, n) = super::dims(x, q, scale, k, y);
        // Weight blocks outside, x rows inside: the weights stream once (x, m·k floats, stays in
        // L1/L2 for the m this path takes).
        let mut j = 0;
        while j < n {
            if j + NB <= n {
                columns::<NB>(x, q, scale, k, m, n, j, y);
                j += NB;
            } else {
                columns::<1>(x, q, scale, k, m, n, j, y);
                j += 1;
            }
        }
    }

    /// Columns `j..j + R` of y, all m rows, `super::MB` rows at a time.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    fn columns<const R: usize>(
        x: &[f32],
        q: &[i8],
        scale: &[f32],
        k: usize,
        m: usize,
        n: usize,
        j: usize,
        y: &mut [f32],
    ) {
        let mut i0 = 0;
        while i0 < m {
            match m - i0 {
                1 => block::<1, R>(x, q, scale, k, n, i0, j, y),
                2 => block::<2, R>(x, q, scale, k, n, i0, j, y),
                3 => block::<3, R>(x, q, scale, k, n, i0, j, y),
                _ => block::<4, R>(x, q, scale, k, n, i0, j, y),
            }
            i0 += super::MB.min(m - i0);
        }
    }

    /// y[i0..i0+M, j..j+R]: M x R accumulators of 16 lanes, the k tail through masked loads.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn block<const M: usize, const R: usize>(
        x: &[f32],
        q: &[i8],
        scale: &[f32],
        k: usize,
        n: usize,
        i0: usize,
        j: usize,
        y: &mut [f32],
    ) {
        // Bounds: rows i0..i0+M of x and j..j+R of q exist (callers), so every pointer below stays
        // inside its slice; the masked loads touch only the in-range lanes.
        assert!(
            (i0 + M) * k <= x.len()
                && (j + R) * k <= q.len()
                && (i0 + M - 1) * n + j + R <= y.len()
        );
        let xp = x.as_ptr();
        let qp = q.as_ptr();
        let mut acc = [[_mm512_setzero_ps(); R]; M];
        let mut c = 0;
        while c < k {
            let left = k - c;
            let mask: __mmask16 = if left >= 16 {
                0xffff
            } else {
                (1u16 << left) - 1
            };
            let mut w = [_mm512_setzero_ps(); R];
            for (r, wr) in w.iter_mut().enumerate() {
                // SAFETY: lanes < min(16, k - c) of row j + r, in bounds by the assert above.
                let b = unsafe { _mm_maskz_loadu_epi8(mask, qp.add((j + r) * k + c)) };
                *wr = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
            }
            for (i, ai) in acc.iter_mut().enumerate() {
                // SAFETY: as above, for row i0 + i of x.
                let xv = unsafe { _mm512_maskz_loadu_ps(mask, xp.add((i0 + i) * k + c)) };
                for (a, wr) in ai.iter_mut().zip(&w) {
                    *a = _mm512_fmadd_ps(xv, *wr, *a);
                }
            }
            c += 16;
        }
        for (i, ai) in acc.iter().enumerate() {
            for (r, a) in ai.iter().enumerate() {
                y[(i0 + i) * n + j + r] = _mm512_reduce_add_ps(*a) * scale[j + r];
            }
        }
    }
}

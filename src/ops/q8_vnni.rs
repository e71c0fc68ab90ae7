//! The int8 x int8 path of `q8_matmul` (AVX-512 VNNI `vpdpbusd`; the default where the CPU has
//! it, see `q8_matmul::forward`): each row of x is quantized on the fly to 8 bits (symmetric, scale
//! amax / 127, stored offset by +128 as u8 because `vpdpbusd` multiplies u8 by i8), and 64 products
//! per instruction accumulate in i32. The offset is taken back exactly with the weight row sums:
//! Σ (x'+128)·w = Σ x'·w + 128·Σ w. Adds the activation rounding error (≤ scale_x / 2 per element)
//! to the q8 weight error. Unlike the f32 paths, a NaN in x does not propagate (it quantizes to 0),
//! and an infinite x makes its whole output row non-finite.

#[cfg(target_arch = "x86_64")]
pub(super) mod avx512 {
    use std::arch::x86_64::*;

    /// Rows of x kept hot in L2 while all weight blocks stream past them.
    const XB: usize = 256;
    /// Weight rows per block.
    const NB: usize = 4;

    pub(in crate::ops) fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }

    /// Row-wise quantization of x [m, k]: (u8 values offset by 128, per-row scale).
    pub(in crate::ops) fn quantize_rows(x: &[f32], k: usize) -> (Vec<u8>, Vec<f32>) {
        let mut xq = vec![0u8; x.len()];
        let mut sx = Vec::with_capacity(x.len() / k.max(1));
        for (row, out) in x.chunks_exact(k).zip(xq.chunks_exact_mut(k)) {
            let amax = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
            let inv = 1.0 / s;
            for (o, &v) in out.iter_mut().zip(row) {
                *o = ((v * inv).round().clamp(-127.0, 127.0) as i32 + 128) as u8;
            }
            sx.push(s);
        }
        (xq, sx)
    }

    /// `y = x · (diag(scale) · Q)ᵀ` with x quantized per row; same contract as `q8_gemv::gemv`.
    ///
    /// # Safety
    /// The CPU must support AVX-512 F, BW and VNNI ([`available`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
    pub(in crate::ops) unsafe fn matmul(
        x: &[f32],
        q: &[i8],
        scale: &[f32],
        k: usize,
        y: &mut [f32],
    ) {
        let n = scale.len();
        assert!(
            k > 0 && x.len().is_multiple_of(k),
            "q8 vnni: x length. This is a bug."
        );
        let m = x.len() / k;
        assert!(
            q.len() == n * k && y.len() == m * n,
            "q8 vnni: sizes. This is a bug."
        );
        let (xq, sx) = quantize_rows(x, k);
        let a = Operands {
            xq: &xq,
            sx: &sx,
            q,
            scale,
            k,
            n,
        };
        for ib in (0..m).step_by(XB) {
            let ie = (ib + XB).min(m);
            let mut j = 0;
            while j < n {
                if j + NB <= n {
                    columns::<NB>(&a, ib, ie, j, y);
                    j += NB;
                } else {
                    columns::<1>(&a, ib, ie, j, y);
                    j += 1;
                }
            }
        }
    }

    struct Operands<'a> {
        xq: &'a [u8],
        sx: &'a [f32],
        q: &'a [i8],
        scale: &'a [f32],
        k: usize,
        n: usize,
    }

    #[inline(always)]
    fn mask(left: usize) -> __mmask64 {
        if left >= 64 {
            !0
        } else {
            (1u64 << left) - 1
        }
    }

    /// y[ib..ie, j..j+R].
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
    fn columns<const R: usize>(a: &Operands, ib: usize, ie: usize, j: usize, y: &mut [f32]) {
        let k = a.k;
        assert!((j + R) * k <= a.q.len());
        // 128 · Σ w per weight row, the offset's share of every dot product.
        let mut corr = [0i32; R];
        let ones = _mm512_set1_epi8(1);
        for (r, c) in corr.iter_mut().enumerate() {
            let mut acc = _mm512_setzero_si512();
            for c0 in (0..k).step_by(64) {
                // SAFETY: lanes < min(64, k - c0) of weight row j + r, in bounds (assert above).
                let w = unsafe {
                    _mm512_maskz_loadu_epi8(mask(k - c0), a.q.as_ptr().add((j + r) * k + c0))
                };
                acc = _mm512_dpbusd_epi32(acc, ones, w);
            }
            *c = 128 * _mm512_reduce_add_epi32(acc);
        }
        let mut i0 = ib;
        while i0 < ie {
            match ie - i0 {
                1 => block::<1, R>(a, i0, j, &corr, y),
                2 => block::<2, R>(a, i0, j, &corr, y),
                3 => block::<3, R>(a, i0, j, &corr, y),
                _ => block::<4, R>(a, i0, j, &corr, y),
            }
            i0 += 4.min(ie - i0);
        }
    }

    /// y[i0..i0+M, j..j+R]: M x R i32 accumulators, 64 products per `vpdpbusd`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2")]
    #[inline]
    fn block<const M: usize, const R: usize>(
        a: &Operands,
        i0: usize,
        j: usize,
        corr: &[i32; R],
        y: &mut [f32],
    ) {
        let (k, n) = (a.k, a.n);
        assert!((i0 + M) * k <= a.xq.len() && (j + R) * k <= a.q.len());
        assert!((i0 + M - 1) * n + j + R <= y.len());
        let mut acc = [[_mm512_setzero_si512(); R]; M];
        let mut c = 0;
        while c < k {
            let mk = mask(k - c);
            let mut w = [_mm512_setzero_si512(); R];
            for (r, wr) in w.iter_mut().enumerate() {
                // SAFETY: lanes < min(64, k - c) of weight row j + r (assert above).
                *wr = unsafe { _mm512_maskz_loadu_epi8(mk, a.q.as_ptr().add((j + r) * k + c)) };
            }
            for (i, ai) in acc.iter_mut().enumerate() {
                // SAFETY: as above, row i0 + i of xq. Masked lanes read as 0 and add nothing.
                let xv = unsafe {
                    _mm512_maskz_loadu_epi8(mk, a.xq.as_ptr().add((i0 + i) * k + c) as *const i8)
                };
                for (s, wr) in ai.iter_mut().zip(&w) {
                    *s = _mm512_dpbusd_epi32(*s, xv, *wr);
                }
            }
            c += 64;
        }
        for (i, ai) in acc.iter().enumerate() {
            let (row, sx) = ((i0 + i) * n + j, a.sx[i0 + i]);
            if let ([a0, a1, a2, a3], [c0, c1, c2, c3]) = (&ai[..], &corr[..]) {
                // Four outputs at once: one transposing reduction instead of four horizontal ones.
                let dot = _mm_sub_epi32(
                    hsum4(*a0, *a1, *a2, *a3),
                    _mm_setr_epi32(*c0, *c1, *c2, *c3),
                );
                let sc = &a.scale[j..j + 4];
                let out = &mut y[row..row + 4];
                // SAFETY: `sc` and `out` are 4 elements long.
                unsafe {
                    let v = _mm_mul_ps(_mm_cvtepi32_ps(dot), _mm_set1_ps(sx));
                    _mm_storeu_ps(out.as_mut_ptr(), _mm_mul_ps(v, _mm_loadu_ps(sc.as_ptr())));
                }
                continue;
            }
            for (r, s) in ai.iter().enumerate() {
                let dot = _mm512_reduce_add_epi32(*s) - corr[r];
                y[row + r] = dot as f32 * sx * a.scale[j + r];
            }
        }
    }

    /// Lane sums of four vectors: [Σa, Σb, Σc, Σd].
    #[target_feature(enable = "avx512f,avx2")]
    #[inline]
    fn hsum4(a: __m512i, b: __m512i, c: __m512i, d: __m512i) -> __m128i {
        let half = |v: __m512i| {
            _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
        };
        let ab = _mm256_hadd_epi32(half(a), half(b));
        let cd = _mm256_hadd_epi32(half(c), half(d));
        let abcd = _mm256_hadd_epi32(ab, cd);
        _mm_add_epi32(
            _mm256_castsi256_si128(abcd),
            _mm256_extracti128_si256::<1>(abcd),
        )
    }
}

//! Vectorisable elementwise math for the CPU paths: a branch-free `exp` (libm's `expf` is a call per
//! element, which stops the loop from vectorising) and `dispatch!`, which runs a loop compiled for
//! AVX-512 or AVX2+FMA when the CPU has them (the crate itself targets baseline x86-64).

/// `exp`'s range reduction (shared by `exp_with` and `exp512`): 1.5 · 2^23, whose addition rounds to
/// an integer in the low bits, and ln 2 split in a high and a low part.
const MAGIC: f32 = 12_582_912.0;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// e^x for finite x, relative error < 4e-7 (a few ulp) on [-87, 88]; x is clamped to that range (e^-87 ≈ 1.6e-38
/// is the smallest normal result; the callers only need e^x → 0 there). Range reduction
/// x = n ln2 + r with |r| ≤ ln2/2, then a degree-6 Taylor polynomial and 2^n built from bits.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    exp_with::<Split>(x)
}

/// `a · b + c`: fused (one rounding, one instruction) in the copies `dispatch_fma!` compiles with
/// FMA, split into a multiply and an add in the baseline copy (where a fused one would be a libm
/// call per element).
pub(crate) trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// `a.mul_add(b, c)`: only where FMA is enabled.
pub(crate) struct Fused;
/// `a * b + c`.
pub(crate) struct Split;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

impl MulAdd for Split {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// `exp` with its polynomial evaluated by `M`'s multiply-add.
#[inline(always)]
pub(crate) fn exp_with<M: MulAdd>(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let f = M::mul_add;
    let p = f(
        r,
        f(
            r,
            f(
                r,
                f(
                    r,
                    f(r, f(r, 1.0 / 720.0, 1.0 / 120.0), 1.0 / 24.0),
                    1.0 / 6.0,
                ),
                0.5,
            ),
            1.0,
        ),
        1.0,
    );
    let n_i = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    p * f32::from_bits(((n_i + 127) << 23) as u32)
}

/// `exp` on 16 lanes for kernels written with AVX-512 intrinsics: the same range reduction and
/// polynomial, with fused multiply-adds; lanes under -87 give 0 (e^-87 ≈ 1.6e-38: the callers only
/// need e^x → 0 there; -inf gives 0).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn exp512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(-87.0));
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-87.0)),
        _mm512_set1_ps(88.0),
    );
    let t = _mm512_fmadd_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
        _mm512_set1_ps(MAGIC),
    );
    let n = _mm512_sub_ps(t, _mm512_set1_ps(MAGIC));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(c));
    }
    let n_i = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(0x4B40_0000));
    let two_n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
        n_i,
        _mm512_set1_epi32(127),
    )));
    _mm512_maskz_mul_ps(!under, p, two_n)
}

/// `dispatch!(f(args..))` calls `f` (an `#[inline(always)]` fn) from a copy compiled with AVX-512F
/// or AVX2+FMA when the CPU supports it, so that its loops vectorise; otherwise calls it as is.
macro_rules! dispatch {
    ($f:ident($($arg:expr),* $(,)?)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512<T>(g: impl FnOnce() -> T) -> T { g() }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<T>(g: impl FnOnce() -> T) -> T { g() }
            let cap = $crate::ops::simd::level_cap();
            if cap >= 2 && std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports the features the copy was compiled for.
                unsafe { avx512(|| $f($($arg),*)) }
            } else if cap >= 1
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: as above.
                unsafe { avx2(|| $f($($arg),*)) }
            } else {
                $f($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $f($($arg),*)
        }
    }};
}
pub(crate) use dispatch;

/// `dispatch!` for a function generic over `MulAdd`: `f::<Fused>` in the AVX-512 and AVX2+FMA
/// copies, `f::<Split>` in the baseline one.
macro_rules! dispatch_fma {
    ($f:ident($($arg:expr),* $(,)?)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            use $crate::ops::simd::{Fused, Split};
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512<T>(g: impl FnOnce() -> T) -> T { g() }
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2<T>(g: impl FnOnce() -> T) -> T { g() }
            let cap = $crate::ops::simd::level_cap();
            if cap >= 2 && std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU supports the features the copy was compiled for.
                unsafe { avx512(|| $f::<Fused>($($arg),*)) }
            } else if cap >= 1
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: as above.
                unsafe { avx2(|| $f::<Fused>($($arg),*)) }
            } else {
                $f::<Split>($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $f::<$crate::ops::simd::Split>($($arg),*)
        }
    }};
}
pub(crate) use dispatch_fma;

#[cfg(test)]
thread_local! {
    static LEVEL_CAP: std::cell::Cell<u8> = const { std::cell::Cell::new(2) };
}

/// Highest copy `dispatch!` may pick on this thread: 2 = AVX-512, 1 = AVX2+FMA, 0 = baseline.
/// Always 2 outside tests; tests lower it to check every copy against the reference.
#[inline(always)]
pub(crate) fn level_cap() -> u8 {
    #[cfg(test)]
    return LEVEL_CAP.with(|c| c.get());
    #[cfg(not(test))]
    2
}

/// Runs `f` once per copy `dispatch!` can pick (AVX-512, AVX2+FMA, baseline), on this thread.
#[cfg(test)]
pub(crate) fn for_each_level(mut f: impl FnMut(&str)) {
    for (cap, name) in [(2u8, "avx512"), (1, "avx2"), (0, "baseline")] {
        LEVEL_CAP.with(|c| c.set(cap));
        f(name);
    }
    LEVEL_CAP.with(|c| c.set(2));
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    #[test]
    fn exp_matches_std_within_4e7_relative() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200_000 {
            let x: f32 = rng.random_range(-87.0..88.0);
            let want = (x as f64).exp();
            let got = super::exp(x) as f64;
            assert!(
                ((got - want) / want).abs() < 4e-7,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(super::exp(-1000.0), super::exp(-87.0));
        assert!(super::exp(0.0) == 1.0);
    }
}

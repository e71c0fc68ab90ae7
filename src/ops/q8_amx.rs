//! The q8 matmul on Intel AMX: `y = x · (diag(scale) · Q)ᵀ` with Q int8 per output channel (the
//! `q8` format) and x quantized per row to int8 on the fly (symmetric, scale amax / 127), the same
//! arithmetic as the VNNI path (`q8_vnni`): exact i32 dot products, then `dot · sx · scale`. Only
//! the instruction differs: `tdpbssd` does 16 × 16 × 64 int8 products at once, about seven times
//! the int8 rate of `vpdpbusd` on the Xeon measured in benches/RESULTS.md (issue 20), and twice
//! that of AMX's bf16 `tdpbf16ps`. The two paths agree to the rounding of x's quantization (this
//! one rounds halves to even, the VNNI one away from zero: a tie moves one value by one step).
//!
//! AMX reads the weights in its own B-tile order, so they are packed once at load (`Q8Packed`,
//! kept by `quant::Linear` when this path is available). Packed layout: Q padded with zeros to
//! `n_pad` rows (a multiple of 32) and `k_pad` columns (a multiple of 64) and cut into blocks of 16
//! output columns × 64 steps of k (1 KiB). Block (jb, kb) starts at byte `(jb · k_pad / 64 + kb) ·
//! 1024`; its row p holds, for each of its 16 columns, the four values at k = 64·kb + 4p .. 4p + 3.
//!
//! Per call: x is quantized into a zero-padded [m_pad, k_pad] int8 matrix (a quarter of x's bytes),
//! 32 × 32 outputs at a time are summed in four i32 tiles and written to y scaled, so y is written
//! once and never zeroed first. Large products split their rows over threads as `bf16_matmul`
//! does. A leaf: no I/O.
//!
//! On a CPU without AMX but with AVX-512 VNNI (`Q8Kernel::Vnni`) the same packed layout runs on
//! `vpdpbusd`: a packed row (16 columns × 4 steps of k) times 4 bytes of x broadcast, x offset by
//! 128 to u8 and 128 · Σ_k Q taken back per column, giving the same 32 × 32 blocks of exact sums as
//! the tiles: the same outputs, bit for bit, at several times the rate of `q8_vnni` (whose dot
//! products along k end in horizontal reductions).

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::{check_float, f32_view, storage_of, Ends};

/// Output columns per packed block (and per tile).
const COLS: usize = 16;
/// Steps of k per packed block (64 int8 values: one 64-byte tile row of x).
const DEPTH: usize = 64;
/// Bytes in one packed block.
const BLOCK: usize = COLS * DEPTH;
/// Rows of x and columns of W handled per step: two tiles each way.
const TWO: usize = 32;

/// Q [n, k] int8 with its per-row scales, in AMX's B-tile order (module docs).
pub struct Q8Packed {
    n: usize,
    k: usize,
    n_pad: usize,
    k_pad: usize,
    packed: Vec<i8>,
    scale: Vec<f32>,
    /// 128 · Σ_k Q[j, k] per column j (n_pad, zero past n): the VNNI kernel's offset (it multiplies
    /// x + 128 as u8 by Q as i8).
    colsum128: Vec<i32>,
}

/// The instruction a packed q8 layer runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Q8Kernel {
    /// AMX int8 tiles (`tdpbssd`).
    Amx,
    /// AVX-512 VNNI (`vpdpbusd`) over the same packed layout.
    Vnni,
}

impl Q8Packed {
    /// Packs Q [n, k] (row-major int8) and its `scale` [n].
    pub fn pack(q: &[i8], scale: &[f32], k: usize) -> Q8Packed {
        let n = scale.len();
        assert_eq!(q.len(), n * k, "q8 amx pack: sizes. This is a bug.");
        let (n_pad, k_pad) = (n.next_multiple_of(TWO), k.next_multiple_of(DEPTH));
        let kblocks = k_pad / DEPTH;
        let mut packed = vec![0i8; n_pad * k_pad];
        for (j, row) in q.chunks_exact(k).enumerate() {
            let (jb, c) = (j / COLS, j % COLS);
            for (kk, &v) in row.iter().enumerate() {
                let (kb, p, t) = (kk / DEPTH, (kk % DEPTH) / 4, kk % 4);
                packed[(jb * kblocks + kb) * BLOCK + p * 64 + c * 4 + t] = v;
            }
        }
        let mut colsum128 = vec![0i32; n_pad];
        for (s, row) in colsum128.iter_mut().zip(q.chunks_exact(k)) {
            *s = 128 * row.iter().map(|&v| i32::from(v)).sum::<i32>();
        }
        Q8Packed {
            n,
            k,
            n_pad,
            k_pad,
            packed,
            scale: scale.to_vec(),
            colsum128,
        }
    }

    /// (n, k): output and input widths.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes held (packed weights and scales).
    pub fn bytes(&self) -> usize {
        self.packed.len() + 4 * self.scale.len()
    }

    /// Whether q8 layers loaded now are packed (for `Q8Packed::kernel()`).
    pub fn selected() -> bool {
        Q8Packed::kernel().is_some()
    }

    /// The kernel packed q8 layers run on: AMX int8 where the CPU and OS have it (unless
    /// `FERRITE_CPU_Q8=vnni` pins VNNI, for measurements), else AVX-512 VNNI, else none (q8 layers
    /// then run `q8_matmul`'s other paths). Read once.
    pub fn kernel() -> Option<Q8Kernel> {
        static KERNEL: std::sync::OnceLock<Option<Q8Kernel>> = std::sync::OnceLock::new();
        *KERNEL.get_or_init(|| {
            let pinned = std::env::var("FERRITE_CPU_Q8").is_ok_and(|v| v == "vnni");
            if Q8Packed::available() && !pinned {
                Some(Q8Kernel::Amx)
            } else if Q8Kernel::Vnni.runs() {
                Some(Q8Kernel::Vnni)
            } else {
                None
            }
        })
    }

    /// Whether this CPU and OS run the AMX int8 kernel.
    pub fn available() -> bool {
        #[cfg(target_arch = "x86_64")]
        return x86::amx_int8();
        #[cfg(not(target_arch = "x86_64"))]
        false
    }
}

impl Q8Kernel {
    /// Whether this CPU (and OS) runs the kernel.
    pub fn runs(self) -> bool {
        match self {
            Q8Kernel::Amx => Q8Packed::available(),
            #[cfg(target_arch = "x86_64")]
            Q8Kernel::Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            Q8Kernel::Vnni => false,
        }
    }
}

/// `x · (diag(scale) · Q)ᵀ` on AMX: x [m, k] (f32, f16 or bf16) on the CPU; [m, n] in x's dtype.
pub fn q8_amx_matmul(x: &Tensor, w: &Arc<Q8Packed>) -> Result<Tensor> {
    q8_amx_matmul_bias(x, w, None)
}

/// `q8_amx_matmul` plus `bias` [n] on every row, added (in f32) as each block of outputs is
/// scaled: the same sums as a separate add, without its pass over y.
pub fn q8_amx_matmul_bias(
    x: &Tensor,
    w: &Arc<Q8Packed>,
    bias: Option<&Arc<[f32]>>,
) -> Result<Tensor> {
    q8_amx_op(x, w, bias, None)
}

/// `q8_amx_matmul_bias` of `gelu(pre + gelu_bias)` (`ops::gelu_bias`), with the GELU computed row
/// by row as x is quantized (the activation never stored as a whole in f32): BERT's feed-forward
/// output layer after its GELU. The same result as the two ops one after the other, bit for bit.
pub fn q8_amx_matmul_gelu(
    pre: &Tensor,
    gelu_bias: &Arc<[f32]>,
    w: &Arc<Q8Packed>,
    bias: Option<&Arc<[f32]>>,
) -> Result<Tensor> {
    if gelu_bias.len() != w.k {
        bail!(
            "q8_amx_matmul_gelu: the GELU bias has {} values, W has {} columns",
            gelu_bias.len(),
            w.k
        )
    }
    q8_amx_op(pre, w, bias, Some(gelu_bias))
}

fn q8_amx_op(
    x: &Tensor,
    w: &Arc<Q8Packed>,
    bias: Option<&Arc<[f32]>>,
    gelu_bias: Option<&Arc<[f32]>>,
) -> Result<Tensor> {
    let Some(kernel) = Q8Packed::kernel() else {
        bail!("q8_amx_matmul: this CPU has neither AMX int8 nor AVX-512 VNNI")
    };
    q8_packed_op(x, w, bias, gelu_bias, kernel)
}

fn q8_packed_op(
    x: &Tensor,
    w: &Arc<Q8Packed>,
    bias: Option<&Arc<[f32]>>,
    gelu_bias: Option<&Arc<[f32]>>,
    kernel: Q8Kernel,
) -> Result<Tensor> {
    check_float(x, "q8_amx_matmul x")?;
    let (_, k) = x.dims2().map_err(|_| {
        candle_core::Error::Msg(format!(
            "q8_amx_matmul: x must be [m, k], got {:?}",
            x.dims()
        ))
    })?;
    if k != w.k {
        bail!("q8_amx_matmul: x has {k} columns, W has {}", w.k)
    }
    if !x.device().is_cpu() {
        bail!("q8_amx_matmul runs on the CPU only")
    }
    if !kernel.runs() {
        bail!("q8_amx_matmul: this CPU does not run the {kernel:?} kernel")
    }
    if let Some(b) = bias.filter(|b| b.len() != w.n) {
        bail!(
            "q8_amx_matmul: bias has {} values, W has {} rows",
            b.len(),
            w.n
        )
    }
    x.contiguous()?.apply_op1_no_bwd(&Q8AmxMatmul {
        w: Arc::clone(w),
        bias: bias.cloned(),
        gelu_bias: gelu_bias.cloned(),
        kernel,
    })
}

struct Q8AmxMatmul {
    w: Arc<Q8Packed>,
    kernel: Q8Kernel,
    bias: Option<Arc<[f32]>>,
    /// Set: x is the pre-activation, quantized as `gelu(x + gelu_bias)`.
    gelu_bias: Option<Arc<[f32]>>,
}

impl CustomOp1 for Q8AmxMatmul {
    fn name(&self) -> &'static str {
        "q8_amx_matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_view(s, l, "q8_amx_matmul x")?;
        let (m, k) = l.shape().dims2()?;
        let n = self.w.n;
        let y = if m == 0 || n == 0 || k == 0 {
            vec![0f32; m * n]
        } else {
            let ends = Ends {
                bias: self.bias.as_deref(),
                gelu_bias: self.gelu_bias.as_deref(),
            };
            forward(&x, m, &self.w, ends, self.kernel)
        };
        Ok((storage_of(y, s.dtype())?, Shape::from((m, n))))
    }
}

/// Least work (m_pad · n_pad · k_pad products) split over threads (as in `bf16_matmul`).
const PARALLEL_MIN_WORK: usize = 1 << 24;

#[cfg(target_arch = "x86_64")]
fn forward(x: &[f32], m: usize, w: &Q8Packed, ends: Ends, kernel: Q8Kernel) -> Vec<f32> {
    let n = w.n;
    let m_pad = m.next_multiple_of(TWO);
    let mut y: Vec<f32> = Vec::with_capacity(m * n);
    let threads = candle_core::utils::get_num_threads()
        .min(m_pad / TWO)
        .max(1);
    {
        let out = &mut y.spare_capacity_mut()[..m * n];
        if threads > 1 && m_pad * w.n_pad * w.k_pad >= PARALLEL_MIN_WORK {
            let rows = (m_pad / threads).next_multiple_of(TWO);
            std::thread::scope(|s| {
                for (x, out) in x.chunks(rows * w.k).zip(out.chunks_mut(rows * n)) {
                    // SAFETY: `kernel.runs()` was checked by `q8_packed_op`.
                    s.spawn(move || unsafe { x86::rows(x, w, ends, kernel, out) });
                }
            });
        } else {
            // SAFETY: as above.
            unsafe { x86::rows(x, w, ends, kernel, out) };
        }
    }
    // SAFETY: `x86::rows` wrote every one of the m · n outputs (its tiles cover m_pad × n_pad).
    unsafe { y.set_len(m * n) };
    y
}

#[cfg(not(target_arch = "x86_64"))]
fn forward(_: &[f32], _: usize, _: &Q8Packed, _: Ends, _: Q8Kernel) -> Vec<f32> {
    unreachable!("q8_amx_matmul checks `kernel.runs()`, false off x86_64")
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;
    use std::sync::OnceLock;

    use super::super::bf16_matmul::x86::{request_tile_state, TileConfig};
    use super::{Ends, Q8Kernel, Q8Packed, BLOCK, COLS, DEPTH, TWO};

    /// AMX-TILE and AMX-INT8 on the CPU (CPUID leaf 7: EDX bits 24 and 25), AVX-512 F/BW for the
    /// quantization, and Linux granting this process the tile data state.
    pub(super) fn amx_int8() -> bool {
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            let leaf7 = __cpuid_count(7, 0);
            let cpu = leaf7.edx & (1 << 24) != 0 && leaf7.edx & (1 << 25) != 0;
            cpu && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && request_tile_state()
        })
    }

    /// x rows quantized to int8 into `a` [_, k_pad] (zero past k), their scales into `sx`.
    #[target_feature(enable = "avx512f,avx512bw")]
    fn quantize_rows(x: &[f32], k: usize, k_pad: usize, a: &mut [i8], sx: &mut [f32]) {
        for ((row, out), s) in x.chunks_exact(k).zip(a.chunks_exact_mut(k_pad)).zip(sx) {
            let mask = |c: usize| -> u16 {
                let left = (k - c).min(16);
                if left == 16 {
                    !0
                } else {
                    (1u16 << left) - 1
                }
            };
            let mut amax = _mm512_setzero_ps();
            for c in (0..k).step_by(16) {
                // SAFETY: lanes < min(16, k - c) of the row.
                let v = unsafe { _mm512_maskz_loadu_ps(mask(c), row.as_ptr().add(c)) };
                amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
            }
            let amax = _mm512_reduce_max_ps(amax);
            let scale = if amax > 0.0 { amax / 127.0 } else { 1.0 };
            *s = scale;
            let inv = _mm512_set1_ps(1.0 / scale);
            let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
            for c in (0..k).step_by(16) {
                // SAFETY: as above; `out` has k_pad >= k bytes.
                unsafe {
                    let v = _mm512_maskz_loadu_ps(mask(c), row.as_ptr().add(c));
                    // Nearest, halves to even (the default rounding mode).
                    let q = _mm512_cvtps_epi32(_mm512_mul_ps(v, inv));
                    let q = _mm512_min_epi32(_mm512_max_epi32(q, lo), hi);
                    _mm512_mask_cvtepi32_storeu_epi8(out.as_mut_ptr().add(c) as *mut _, mask(c), q);
                }
            }
            out[k..].fill(0);
        }
    }

    /// `quantize_rows` of `gelu(x + b)` (b [k]), one row at a time through a buffer of k floats:
    /// the GELU as `ops::gelu_bias` computes it (the same function, compiled as its AVX-512 copy).
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma")]
    fn gelu_quantize_rows(x: &[f32], b: &[f32], k_pad: usize, a: &mut [i8], sx: &mut [f32]) {
        let k = b.len();
        let mut g = vec![MaybeUninit::<f32>::uninit(); k];
        for ((row, out), s) in x.chunks_exact(k).zip(a.chunks_exact_mut(k_pad)).zip(sx) {
            crate::ops::gelu_bias::gelu_rows::<crate::ops::simd::Fused>(row, b, &mut g);
            // SAFETY: `gelu_rows` wrote all k elements.
            let g = unsafe { &*(g.as_slice() as *const [MaybeUninit<f32>] as *const [f32]) };
            quantize_rows(g, k, k_pad, out, std::slice::from_mut(s));
        }
    }

    /// y for the rows of x: `out` [r, n] (r = x.len() / k), every element written.
    ///
    /// # Safety
    /// `kernel.runs()`.
    pub(super) unsafe fn rows(
        x: &[f32],
        w: &Q8Packed,
        ends: Ends,
        kernel: Q8Kernel,
        out: &mut [MaybeUninit<f32>],
    ) {
        let Ends { bias, gelu_bias } = ends;
        let (k, k_pad) = (w.k, w.k_pad);
        let r = x.len() / k;
        let r_pad = r.next_multiple_of(TWO);
        assert!(out.len() == r * w.n, "q8 amx: sizes. This is a bug.");
        // x quantized: this thread's buffer from its last call when there is one (no allocation,
        // no zeroing: the quantization writes every element of rows < r, padding included, and
        // the rows past r are zeroed here).
        let mut a_buf = A_BUF.with_borrow_mut(std::mem::take);
        if a_buf.len() < r_pad * k_pad {
            a_buf.resize(r_pad * k_pad, 0);
        }
        let a = &mut a_buf[..r_pad * k_pad];
        a[r * k_pad..].fill(0);
        let mut sx = vec![0f32; r_pad];
        // SAFETY: the caller checked the CPU features.
        match gelu_bias {
            None => unsafe { quantize_rows(x, k, k_pad, a, &mut sx) },
            Some(b) => unsafe { gelu_quantize_rows(x, b, k_pad, a, &mut sx) },
        }
        if kernel == Q8Kernel::Vnni {
            // SAFETY: the caller checked VNNI.
            unsafe { vnni_rows(a, &sx[..r], w, bias, out) };
        } else {
            // SAFETY: the caller checked AMX.
            unsafe { amx_rows(a, &sx[..r], w, bias, out) };
        }
        if a_buf.len() <= KEEP_A_BYTES {
            A_BUF.with_borrow_mut(|b| *b = a_buf);
        }
    }

    /// The AMX part of `rows`: a [r_pad, k_pad] quantized, sx the scales of its r real rows.
    ///
    /// # Safety
    /// `amx_int8()` is true.
    unsafe fn amx_rows(
        a: &[i8],
        sx: &[f32],
        w: &Q8Packed,
        bias: Option<&[f32]>,
        out: &mut [MaybeUninit<f32>],
    ) {
        let (k_pad, n_pad) = (w.k_pad, w.n_pad);
        let r_pad = sx.len().next_multiple_of(TWO);
        let kblocks = k_pad / DEPTH;
        let lda = k_pad;
        // One 32 × 32 block of i32 sums, 128 bytes a row.
        let mut sums = Sums([0; TWO * TWO]);
        let cfg = TileConfig::all_16x64();
        // SAFETY (all asm below): the tiles read 16 rows of 64 bytes: rows ib..ib+32 of `a` (k
        // columns kb*64..+64, inside k_pad; ib + 32 <= r_pad) and packed blocks (jb, kb), (jb+1,
        // kb) (1 KiB each, inside `packed`: jb + 32 <= n_pad), and write 16 rows of 16 i32 into
        // `sums` (32 rows of 128 bytes). The tmm registers are unknown to the compiler, so values
        // kept in them between asm blocks are not disturbed.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
            for jb in (0..n_pad).step_by(TWO) {
                let b0 = w.packed.as_ptr().add((jb / COLS) * kblocks * BLOCK);
                let b1 = b0.add(kblocks * BLOCK);
                for ib in (0..r_pad).step_by(TWO) {
                    let a0 = a.as_ptr().add(ib * k_pad);
                    let a1 = a0.add(16 * k_pad);
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nomem, nostack)
                    );
                    for kb in 0..kblocks {
                        asm!(
                            "tileloadd tmm4, [{a0} + {lda}*1]",
                            "tileloadd tmm5, [{a1} + {lda}*1]",
                            "tileloadd tmm6, [{b0} + {s64}*1]",
                            "tileloadd tmm7, [{b1} + {s64}*1]",
                            "tdpbssd tmm0, tmm4, tmm6",
                            "tdpbssd tmm1, tmm4, tmm7",
                            "tdpbssd tmm2, tmm5, tmm6",
                            "tdpbssd tmm3, tmm5, tmm7",
                            a0 = in(reg) a0.add(kb * DEPTH),
                            a1 = in(reg) a1.add(kb * DEPTH),
                            lda = in(reg) lda,
                            b0 = in(reg) b0.add(kb * BLOCK),
                            b1 = in(reg) b1.add(kb * BLOCK),
                            s64 = in(reg) 64usize,
                            options(nostack, readonly)
                        );
                    }
                    let sp = sums.0.as_mut_ptr();
                    asm!(
                        "tilestored [{c0} + {ld}*1], tmm0",
                        "tilestored [{c1} + {ld}*1], tmm1",
                        "tilestored [{c2} + {ld}*1], tmm2",
                        "tilestored [{c3} + {ld}*1], tmm3",
                        c0 = in(reg) sp,
                        c1 = in(reg) sp.add(COLS),
                        c2 = in(reg) sp.add(16 * TWO),
                        c3 = in(reg) sp.add(16 * TWO + COLS),
                        ld = in(reg) TWO * 4,
                        options(nostack)
                    );
                    write_block(&sums.0, ib, jb, sx, w, bias, out);
                }
            }
            asm!("tilerelease", options(nomem, nostack));
        }
    }

    /// `amx_rows` with VNNI `vpdpbusd` over the same packed layout and the same 32 × 32 blocks of
    /// exact i32 sums (so the same outputs, bit for bit): x's bytes offset by 128 to u8 (one pass
    /// over a), each packed row of 16 columns × 4 depths multiplied by 4 bytes of x broadcast, and
    /// 128 · Σ_k Q taken back per column.
    ///
    /// # Safety
    /// The CPU has AVX-512 F, BW and VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn vnni_rows(
        a: &mut [i8],
        sx: &[f32],
        w: &Q8Packed,
        bias: Option<&[f32]>,
        out: &mut [MaybeUninit<f32>],
    ) {
        let (k_pad, n_pad) = (w.k_pad, w.n_pad);
        let r_pad = sx.len().next_multiple_of(TWO);
        a.iter_mut().for_each(|v| *v = (*v as u8 ^ 0x80) as i8);
        let kblocks = k_pad / DEPTH;
        let mut sums = Sums([0; TWO * TWO]);
        for jb in (0..n_pad).step_by(TWO) {
            let b0 = w.packed[(jb / COLS) * kblocks * BLOCK..].as_ptr();
            // SAFETY: jb + 32 <= n_pad: the second column block exists.
            let b1 = unsafe { b0.add(kblocks * BLOCK) };
            // SAFETY: colsum128 has n_pad >= jb + 32 entries.
            let (c0, c1) = unsafe {
                (
                    _mm512_loadu_si512(w.colsum128.as_ptr().add(jb).cast()),
                    _mm512_loadu_si512(w.colsum128.as_ptr().add(jb + COLS).cast()),
                )
            };
            for ib in (0..r_pad).step_by(TWO) {
                for rr in (0..TWO).step_by(RB) {
                    let mut acc = [[_mm512_setzero_si512(); 2]; RB];
                    let rows: [*const i8; RB] =
                        std::array::from_fn(|i| a[(ib + rr + i) * k_pad..].as_ptr());
                    for kb in 0..kblocks {
                        for p in 0..DEPTH / 4 {
                            let off = kb * BLOCK + p * 64;
                            // SAFETY: packed blocks (jb, kb), (jb + 1, kb) hold BLOCK bytes each;
                            // rows ib + rr + i < r_pad of a, bytes kb * 64 + 4p..+4 < k_pad.
                            unsafe {
                                let w0 = _mm512_loadu_si512(b0.add(off).cast());
                                let w1 = _mm512_loadu_si512(b1.add(off).cast());
                                for (acc, &row) in acc.iter_mut().zip(&rows) {
                                    let xv = _mm512_set1_epi32(
                                        row.add(kb * DEPTH + 4 * p).cast::<i32>().read_unaligned(),
                                    );
                                    acc[0] = _mm512_dpbusd_epi32(acc[0], xv, w0);
                                    acc[1] = _mm512_dpbusd_epi32(acc[1], xv, w1);
                                }
                            }
                        }
                    }
                    for (i, acc) in acc.iter().enumerate() {
                        let at = (rr + i) * TWO;
                        // SAFETY: row rr + i < 32 of the block, 32 columns.
                        unsafe {
                            let s = sums.0.as_mut_ptr().add(at);
                            _mm512_storeu_si512(s.cast(), _mm512_sub_epi32(acc[0], c0));
                            _mm512_storeu_si512(s.add(COLS).cast(), _mm512_sub_epi32(acc[1], c1));
                        }
                    }
                }
                write_block(&sums.0, ib, jb, sx, w, bias, out);
            }
        }
    }

    /// Rows of x per VNNI sub-block (8 rows × 2 vectors of 16 columns: 16 accumulators).
    const RB: usize = 8;

    /// Largest quantized x (bytes) a thread keeps between calls (MiniLM's largest, 256 tokens ×
    /// 1536, is 384 KiB).
    const KEEP_A_BYTES: usize = 4 << 20;

    thread_local! {
        /// This thread's buffer for x quantized, reused by its next call.
        static A_BUF: std::cell::RefCell<Vec<i8>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// The 32 × 32 block of sums at rows ib.., columns jb.. into y (`out` [r, n], r = sx.len()),
    /// its rows and columns inside y only, scaled as the VNNI path computes it plus the bias:
    /// `out[i · n + j] = sums[i][j] · sx[i] · scale[j] (+ bias[j])`; vectorised with AVX-512 (the
    /// kernels' callers checked it).
    #[target_feature(enable = "avx512f")]
    fn write_block(
        sums: &[i32; TWO * TWO],
        ib: usize,
        jb: usize,
        sx: &[f32],
        w: &Q8Packed,
        bias: Option<&[f32]>,
        out: &mut [MaybeUninit<f32>],
    ) {
        let n = w.n;
        let cols = n.min(jb + TWO).saturating_sub(jb);
        let rows = TWO.min(sx.len().saturating_sub(ib));
        let (sx, scale) = (&sx[ib..ib + rows], &w.scale[jb..jb + cols]);
        let bias = bias.map(|b| &b[jb..jb + cols]);
        let out = &mut out[ib * n + jb..];
        for (i, &s) in sx.iter().enumerate() {
            let dst = &mut out[i * n..i * n + cols];
            let src = &sums[i * TWO..i * TWO + cols];
            match bias {
                Some(b) => {
                    for (((o, &d), &sc), &b) in dst.iter_mut().zip(src).zip(scale).zip(b) {
                        o.write(d as f32 * s * sc + b);
                    }
                }
                None => {
                    for ((o, &d), &sc) in dst.iter_mut().zip(src).zip(scale) {
                        o.write(d as f32 * s * sc);
                    }
                }
            }
        }
    }

    /// A 32 × 32 block of sums, aligned for the tile stores.
    #[repr(C, align(64))]
    struct Sums([i32; TWO * TWO]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::q8_matmul_ref;
    use candle_core::{DType, Device};
    use rand::{Rng, SeedableRng};

    /// Random int8 weights with scales like a quantized layer's, as Q8Packed and as tensors.
    fn weights(seed: u64, n: usize, k: usize) -> (Arc<Q8Packed>, Tensor, Tensor) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let q: Vec<i8> = (0..n * k).map(|_| rng.random_range(-127i8..=127)).collect();
        let scale: Vec<f32> = (0..n).map(|_| rng.random_range(0.001f32..0.01)).collect();
        let packed = Arc::new(Q8Packed::pack(&q, &scale, k));
        let qt = Tensor::from_vec(bytemuck::cast_vec::<i8, u8>(q), (n, k), &Device::Cpu).unwrap();
        let st = Tensor::from_vec(scale, n, &Device::Cpu).unwrap();
        (packed, qt, st)
    }

    fn randn(seed: u64, shape: &[usize]) -> Tensor {
        crate::ops::testing::randn(seed, shape, DType::F32)
    }

    /// Against the f64 reference with x unquantized: the difference is x's quantization error, at
    /// most half a step (amax / 254) per element, so per output at most amax / 254 · Σ_k |q| · scale
    /// (plus f32 rounding).
    fn check(x: &Tensor, qt: &Tensor, st: &Tensor, got: &Tensor, what: &str) {
        let want = q8_matmul_ref(x, qt, st)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let got = got.to_dtype(DType::F32).unwrap();
        assert_eq!(got.dims(), want.dims(), "{what}");
        let (m, n) = want.dims2().unwrap();
        let (got, want) = (
            got.to_vec2::<f32>().unwrap(),
            want.to_vec2::<f32>().unwrap(),
        );
        let xs = x.to_vec2::<f32>().unwrap();
        let q: Vec<Vec<u8>> = qt.to_vec2().unwrap();
        let s: Vec<f32> = st.to_vec1().unwrap();
        for i in 0..m {
            let amax = xs[i].iter().fold(0f32, |a, v| a.max(v.abs()));
            for j in 0..n {
                let wsum = q[j]
                    .iter()
                    .map(|&b| f32::from((b as i8).unsigned_abs()))
                    .sum::<f32>()
                    * s[j];
                let tol = wsum * amax / 254.0 * 1.001 + 1e-5 * want[i][j].abs() + 1e-6;
                assert!(
                    (got[i][j] - want[i][j]).abs() <= tol,
                    "{what}: [{i}, {j}] got {} want {} tol {tol}",
                    got[i][j],
                    want[i][j]
                );
            }
        }
    }

    #[test]
    fn q8_amx_matches_the_reference_within_the_activation_rounding() {
        if !Q8Packed::available() {
            eprintln!("skipped: no AMX int8 on this CPU");
            return;
        }
        for (a, m) in [1usize, 2, 17, 31, 32, 33, 100].into_iter().enumerate() {
            for (b, (n, k)) in [(1, 1), (15, 63), (16, 64), (33, 65), (70, 130), (384, 384)]
                .into_iter()
                .enumerate()
            {
                let (packed, qt, st) = weights((a * 10 + b) as u64, n, k);
                let x = randn(100 + (a * 10 + b) as u64, &[m, k]);
                let got = q8_amx_matmul(&x, &packed).unwrap();
                check(&x, &qt, &st, &got, &format!("m {m} n {n} k {k}"));
                // f16 and bf16 inputs come back in their own dtype.
                for dt in [DType::F16, DType::BF16] {
                    let y = q8_amx_matmul(&x.to_dtype(dt).unwrap(), &packed).unwrap();
                    assert_eq!(y.dtype(), dt);
                }
            }
        }
    }

    #[test]
    fn q8_amx_row_alone_equals_row_in_batch() {
        if !Q8Packed::available() {
            eprintln!("skipped: no AMX int8 on this CPU");
            return;
        }
        let (packed, _, _) = weights(7, 96, 384);
        let x = randn(8, &[45, 384]);
        let all = q8_amx_matmul(&x, &packed)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for i in [0, 31, 32, 44] {
            let one = q8_amx_matmul(&x.narrow(0, i, 1).unwrap(), &packed)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert_eq!(one[0], all[i], "row {i}");
        }
    }

    /// The VNNI kernel over the packed layout computes the same exact sums as the AMX tiles: within
    /// the activation rounding of the reference, and equal to AMX bit for bit where both run, with
    /// the fused bias and GELU too.
    #[test]
    fn q8_packed_vnni_matches_the_reference_and_amx() {
        let kernels: Vec<Q8Kernel> = [Q8Kernel::Amx, Q8Kernel::Vnni]
            .into_iter()
            .filter(|k| k.runs())
            .collect();
        if !kernels.contains(&Q8Kernel::Vnni) {
            eprintln!("skipped: no AVX-512 VNNI on this CPU");
            return;
        }
        for (a, m) in [1usize, 17, 33, 100].into_iter().enumerate() {
            for (b, (n, k)) in [(1, 1), (15, 63), (33, 65), (70, 130), (384, 384)]
                .into_iter()
                .enumerate()
            {
                let (packed, qt, st) = weights((a * 10 + b) as u64 + 500, n, k);
                let x = randn(600 + (a * 10 + b) as u64, &[m, k]);
                let bias: Arc<[f32]> = (0..n).map(|j| j as f32 * 0.25 - 1.0).collect();
                let gb: Arc<[f32]> = (0..k).map(|j| 0.5 - j as f32 * 0.01).collect();
                let run = |kernel, bias, gelu| {
                    vec2(&q8_packed_op(&x, &packed, bias, gelu, kernel).unwrap())
                };
                let got = q8_packed_op(&x, &packed, None, None, Q8Kernel::Vnni).unwrap();
                check(&x, &qt, &st, &got, &format!("vnni m {m} n {n} k {k}"));
                if kernels.contains(&Q8Kernel::Amx) {
                    for (bias, gelu) in
                        [(None, None), (Some(&bias), None), (Some(&bias), Some(&gb))]
                    {
                        assert_eq!(
                            run(Q8Kernel::Vnni, bias, gelu),
                            run(Q8Kernel::Amx, bias, gelu),
                            "m {m} n {n} k {k} bias {} gelu {}",
                            bias.is_some(),
                            gelu.is_some()
                        );
                    }
                }
            }
        }
    }

    /// The bias added as blocks are scaled, and the GELU taken into the quantization of x, give
    /// exactly what the separate ops give (odd sizes; threads on and off).
    #[test]
    fn q8_amx_bias_and_gelu_equal_the_separate_ops_bit_for_bit() {
        if !Q8Packed::available() {
            eprintln!("skipped: no AMX int8 on this CPU");
            return;
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for (i, (m, n, k)) in [(1, 8, 16), (33, 70, 130), (100, 384, 1536)]
            .into_iter()
            .enumerate()
        {
            let (packed, _, _) = weights(40 + i as u64, n, k);
            let pre = randn(50 + i as u64, &[m, k]);
            let b: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let gb: Vec<f32> = (0..k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let (bt, gbt) = (
                Tensor::from_slice(&b, n, &Device::Cpu).unwrap(),
                Tensor::from_slice(&gb, k, &Device::Cpu).unwrap(),
            );
            let (b, gb): (Arc<[f32]>, Arc<[f32]>) = (b.into(), gb.into());
            let want = q8_amx_matmul(&pre, &packed)
                .unwrap()
                .broadcast_add(&bt)
                .unwrap();
            let got = q8_amx_matmul_bias(&pre, &packed, Some(&b)).unwrap();
            assert_eq!(vec2(&got), vec2(&want), "bias: m {m} n {n} k {k}");
            let g = crate::ops::gelu_bias(&pre, &gbt).unwrap();
            for with_bias in [None, Some(&b)] {
                let want = q8_amx_matmul_bias(&g, &packed, with_bias).unwrap();
                let got = q8_amx_matmul_gelu(&pre, &gb, &packed, with_bias).unwrap();
                assert_eq!(vec2(&got), vec2(&want), "gelu: m {m} n {n} k {k}");
            }
        }
        let (packed, _, _) = weights(1, 8, 16);
        let x = randn(2, &[3, 16]);
        let short: Arc<[f32]> = vec![0.0; 7].into();
        assert!(q8_amx_matmul_bias(&x, &packed, Some(&short)).is_err());
        assert!(q8_amx_matmul_gelu(&x, &short, &packed, None).is_err());
    }

    fn vec2(t: &Tensor) -> Vec<Vec<f32>> {
        t.to_vec2().unwrap()
    }

    #[test]
    fn q8_amx_bad_shapes_are_errors_and_empty_gives_empty() {
        if !Q8Packed::available() {
            eprintln!("skipped: no AMX int8 on this CPU");
            return;
        }
        let (packed, _, _) = weights(1, 8, 16);
        let x = randn(2, &[3, 15]);
        assert!(q8_amx_matmul(&x, &packed).is_err());
        let e = Tensor::zeros((0, 16), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(q8_amx_matmul(&e, &packed).unwrap().dims(), [0, 8]);
    }
}

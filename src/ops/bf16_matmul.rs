//! `y = x · Wᵀ` in bf16: W [n, k] stored as bf16 (packed once at load, `Bf16Weights::pack`), x
//! [m, k] rounded to bf16 per call, every product exact in f32 and summed in f32; y [m, n] in x's
//! dtype. The CPU's `bf16` precision path (`precision = "bf16"`, see `quant::resolve`).
//!
//! Packed layout, one for every kernel: W padded with zeros to `n_pad` rows and `k_pad` columns
//! (both multiples of 32) and cut into blocks of 16 output columns × 32 steps of k (1 KiB). Block
//! (jb, kb) starts at element `(jb · k_pad / 32 + kb) · 512`; its row p holds, for each of its 16
//! columns, the two values at k = 32·kb + 2p and 2p + 1 side by side. That is the order AMX's
//! `tdpbf16ps` reads a B tile in (16 rows of 64 bytes) and the one `vdpbf16ps` reads a vector in.
//!
//! Kernels (`Kernel::detect`; `FERRITE_CPU_BF16=amx|avx512|portable` picks a lower one, for
//! measurements):
//! - `Amx`: Intel AMX, 32 × 32 outputs in four 16 × 16 f32 tiles, 16 × 16 × 32 products per
//!   `tdpbf16ps`; x is converted into tile order (each 16 × 32 A tile one contiguous KiB). The
//!   process asks Linux for the tile state once (`arch_prctl`); each call loads the tile
//!   configuration and releases the tiles when it is done.
//! - `Avx512`: AVX512_BF16 without AMX (e.g. AMD Zen 4): 8 × 32 outputs, `vdpbf16ps` with one x
//!   pair broadcast against a packed row. Measured on the Xeon that has both (dev-2c, per core):
//!   `vdpbf16ps` ~80 GFLOP/s, f32 FMA ~170, AMX bf16 ~2,200; so there AMX is the only bf16 gain.
//! - `Portable`: the same arithmetic in plain f32 on any CPU (slow; pinned `bf16` on an old CPU,
//!   and the tests).
//!
//! Rounding: x and W round to nearest even; products of two bf16 values are exact in f32; sums are
//! f32 in a kernel-specific order, so kernels agree with each other and with `bf16_matmul_ref`
//! (f64) to f32 summation error (bounded in the tests), not bit for bit. An output's sum does not
//! depend on its row's neighbours or on which block of columns it is in (so stacked weights,
//! `Bf16Weights::stack`, give the separate products exactly).
//!
//! Memory per call: the output is written straight into its (uninitialised) buffer, every element
//! by the kernel; x's bf16 copy goes into a buffer the thread keeps between calls (`A_BUF`), and
//! the conversion writes all of it (padding zero), so nothing is zeroed twice or allocated anew.
//! A leaf: no I/O; threads only for the row split of large products (`forward`).

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::{Arc, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use half::bf16;

use super::gelu_bias::gelu_rows;
use super::simd::{dispatch, dispatch_fma};
use super::{check_float, f32_view, in_f64, storage_of, Ends};

/// Output columns per packed block (and rows per AMX tile).
const COLS: usize = 16;
/// Steps of k per packed block.
const DEPTH: usize = 32;
/// Elements in one packed block.
const BLOCK: usize = COLS * DEPTH;
/// n and k are padded to multiples of this.
const PAD: usize = 32;

/// W [n, k] as bf16 in the packed layout (module docs).
pub struct Bf16Weights {
    n: usize,
    k: usize,
    n_pad: usize,
    k_pad: usize,
    packed: Vec<u16>,
}

impl Bf16Weights {
    /// Packs W [n, k] (row-major f32), rounding each value to bf16 (nearest even).
    pub fn pack(w: &[f32], n: usize, k: usize) -> Bf16Weights {
        assert_eq!(w.len(), n * k, "bf16 pack: W is not [n, k]. This is a bug.");
        let n_pad = n.next_multiple_of(PAD);
        let k_pad = k.next_multiple_of(PAD);
        let kblocks = k_pad / DEPTH;
        let mut packed = vec![0u16; n_pad * k_pad];
        for (j, row) in w.chunks_exact(k.max(1)).enumerate().take(n) {
            let (jb, col) = (j / COLS, j % COLS);
            for (c, &v) in row.iter().enumerate() {
                let (kb, kk) = (c / DEPTH, c % DEPTH);
                let at = (jb * kblocks + kb) * BLOCK + (kk / 2) * (2 * COLS) + col * 2 + kk % 2;
                packed[at] = bf16::from_f32(v).to_bits();
            }
        }
        Bf16Weights {
            n,
            k,
            n_pad,
            k_pad,
            packed,
        }
    }

    /// The weights of `parts` one under another: [Σ n, k] (their outputs side by side, in order),
    /// exactly (the values are already bf16). `None` when the parts' k differ or there are none.
    pub fn stack(parts: &[&Bf16Weights]) -> Option<Bf16Weights> {
        let k = parts.first()?.k;
        if parts.iter().any(|p| p.k != k) {
            return None;
        }
        let w: Vec<f32> = parts.iter().flat_map(|p| p.to_f32()).collect();
        let n = parts.iter().map(|p| p.n).sum();
        Some(Bf16Weights::pack(&w, n, k))
    }

    /// (n, k).
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes the packed weights hold.
    pub fn bytes(&self) -> usize {
        self.packed.len() * 2
    }

    /// W as f32 [n, k]: the bf16 values, exactly (the reference and the tests use it).
    pub fn to_f32(&self) -> Vec<f32> {
        let kblocks = self.k_pad / DEPTH;
        let mut w = vec![0f32; self.n * self.k];
        for j in 0..self.n {
            let (jb, col) = (j / COLS, j % COLS);
            for c in 0..self.k {
                let (kb, kk) = (c / DEPTH, c % DEPTH);
                let at = (jb * kblocks + kb) * BLOCK + (kk / 2) * (2 * COLS) + col * 2 + kk % 2;
                w[j * self.k + c] = widen(self.packed[at]);
            }
        }
        w
    }
}

#[inline(always)]
fn widen(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Which instructions run the products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Amx,
    Avx512,
    Portable,
}

impl Kernel {
    pub fn as_str(self) -> &'static str {
        match self {
            Kernel::Amx => "amx",
            Kernel::Avx512 => "avx512",
            Kernel::Portable => "portable",
        }
    }

    /// Whether this CPU (and OS, for AMX) runs the kernel.
    pub fn available(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => x86::avx512_bf16(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => x86::amx_bf16(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest available kernel, or the one `FERRITE_CPU_BF16` names when it is available
    /// (read once per process).
    pub fn detect() -> Kernel {
        static KERNEL: OnceLock<Kernel> = OnceLock::new();
        *KERNEL.get_or_init(|| {
            let best = [Kernel::Amx, Kernel::Avx512, Kernel::Portable]
                .into_iter()
                .find(|k| k.available())
                .unwrap_or(Kernel::Portable);
            let Ok(want) = std::env::var("FERRITE_CPU_BF16") else {
                return best;
            };
            match [Kernel::Amx, Kernel::Avx512, Kernel::Portable]
                .into_iter()
                .find(|k| k.as_str() == want)
            {
                Some(k) if k.available() => k,
                _ => {
                    tracing::warn!(
                        requested = %want,
                        using = best.as_str(),
                        "FERRITE_CPU_BF16 names no kernel this CPU runs (amx, avx512, portable)"
                    );
                    best
                }
            }
        })
    }

    /// Whether the CPU does bf16 products in hardware (then `precision = "auto"` may pick bf16).
    pub fn hardware() -> bool {
        Kernel::detect() != Kernel::Portable
    }

    /// Rows of x are padded to a multiple of this.
    fn row_block(self) -> usize {
        match self {
            Kernel::Amx => 32,
            Kernel::Avx512 => x86::MR,
            Kernel::Portable => 1,
        }
    }
}

/// `x · Wᵀ` with the detected kernel: x [m, k] (f32, f16 or bf16) on the CPU. Returns [m, n] in
/// x's dtype.
pub fn bf16_matmul(x: &Tensor, w: &Arc<Bf16Weights>) -> Result<Tensor> {
    bf16_matmul_with(x, w, Kernel::detect())
}

/// `bf16_matmul` with a chosen kernel (the caller checks `kernel.available()`).
pub fn bf16_matmul_with(x: &Tensor, w: &Arc<Bf16Weights>, kernel: Kernel) -> Result<Tensor> {
    bf16_matmul_bias(x, w, kernel, None)
}

/// `bf16_matmul_with` plus `bias` [n] on every row, added (in f32) to each thread's rows right
/// after its kernel: the same sums as a separate add, without a new tensor and its pass.
pub fn bf16_matmul_bias(
    x: &Tensor,
    w: &Arc<Bf16Weights>,
    kernel: Kernel,
    bias: Option<&Arc<[f32]>>,
) -> Result<Tensor> {
    bf16_op(x, w, kernel, bias, None)
}

/// `bf16_matmul_bias` of `gelu(pre + gelu_bias)` (`ops::gelu_bias`): on AMX the GELU is computed
/// row by row as x is converted to bf16 tiles (the activation never stored as a whole in f32);
/// the other kernels compute it first. The same result as the two ops, bit for bit.
pub fn bf16_matmul_gelu(
    pre: &Tensor,
    gelu_bias: &Arc<[f32]>,
    w: &Arc<Bf16Weights>,
    kernel: Kernel,
    bias: Option<&Arc<[f32]>>,
) -> Result<Tensor> {
    if gelu_bias.len() != w.k {
        bail!(
            "bf16_matmul_gelu: the GELU bias has {} values, W has {} columns",
            gelu_bias.len(),
            w.k
        )
    }
    bf16_op(pre, w, kernel, bias, Some(gelu_bias))
}

fn bf16_op(
    x: &Tensor,
    w: &Arc<Bf16Weights>,
    kernel: Kernel,
    bias: Option<&Arc<[f32]>>,
    gelu_bias: Option<&Arc<[f32]>>,
) -> Result<Tensor> {
    check_float(x, "bf16_matmul x")?;
    let (_, k) = x.dims2().map_err(|_| {
        candle_core::Error::Msg(format!("bf16_matmul: x must be [m, k], got {:?}", x.dims()))
    })?;
    if k != w.k {
        bail!("bf16_matmul: x has {k} columns, W has {}", w.k)
    }
    if !x.device().is_cpu() {
        bail!("bf16_matmul runs on the CPU only")
    }
    if !kernel.available() {
        bail!("bf16_matmul: this CPU has no {} kernel", kernel.as_str())
    }
    if let Some(b) = bias.filter(|b| b.len() != w.n) {
        bail!(
            "bf16_matmul: bias has {} values, W has {} rows",
            b.len(),
            w.n
        )
    }
    x.contiguous()?.apply_op1_no_bwd(&Bf16Matmul {
        w: Arc::clone(w),
        kernel,
        bias: bias.cloned(),
        gelu_bias: gelu_bias.cloned(),
    })
}

/// Reference: x rounded to bf16, times the bf16 weights, in f64 (plain candle ops).
pub fn bf16_matmul_ref(x: &Tensor, w: &Bf16Weights) -> Result<Tensor> {
    in_f64(x.dtype(), || {
        let xr = x.to_dtype(DType::BF16)?.to_dtype(DType::F64)?;
        let wt = Tensor::from_vec(w.to_f32(), (w.n, w.k), x.device())?.to_dtype(DType::F64)?;
        xr.matmul(&wt.t()?)
    })
}

struct Bf16Matmul {
    w: Arc<Bf16Weights>,
    kernel: Kernel,
    bias: Option<Arc<[f32]>>,
    /// Set: x is the pre-activation, multiplied as `gelu(x + gelu_bias)`.
    gelu_bias: Option<Arc<[f32]>>,
}

impl CustomOp1 for Bf16Matmul {
    fn name(&self) -> &'static str {
        "bf16_matmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_view(s, l, "bf16_matmul x")?;
        let (m, k) = l.shape().dims2()?;
        let n = self.w.n;
        let y = if m == 0 || n == 0 || k == 0 {
            vec![0f32; m * n]
        } else {
            let ends = Ends {
                bias: self.bias.as_deref(),
                gelu_bias: self.gelu_bias.as_deref(),
            };
            forward(&x, m, &self.w, self.kernel, ends)
        };
        Ok((storage_of(y, s.dtype())?, Shape::from((m, n))))
    }
}

/// Least work (m_pad · n_pad · k_pad products) split over threads: below it a thread's start
/// (~20-50 µs) costs more than it saves.
const PARALLEL_MIN_WORK: usize = 1 << 24;

/// Largest bf16 copy of x (bytes) a thread keeps between calls (MiniLM's largest, 256 tokens x
/// 1536, is 0.75 MiB); a larger one is allocated for its call and freed.
const KEEP_A_BYTES: usize = 8 << 20;

thread_local! {
    /// This thread's buffer for x as bf16, reused by its next call: no allocation, no page faults
    /// and no zeroing per call (the conversion writes every element the kernel reads).
    static A_BUF: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a bf16 buffer of `len` elements with unspecified contents (this thread's kept one
/// when it is small enough).
fn with_a_buffer<R>(len: usize, f: impl FnOnce(&mut [u16]) -> R) -> R {
    if len * 2 > KEEP_A_BYTES {
        return f(&mut vec![0u16; len]);
    }
    A_BUF.with_borrow_mut(|a| {
        if a.len() < len {
            a.resize(len, 0);
        }
        f(&mut a[..len])
    })
}

/// y [m, n] = x [m, k] · Wᵀ. With more than one CPU thread per forward pass (candle's
/// `get_num_threads`, set by `--intra-op-threads`), large products split their rows over scoped
/// threads: each runs the kernel on its own rows of x and y (the weights are shared, read-only).
fn forward(x: &[f32], m: usize, w: &Bf16Weights, kernel: Kernel, ends: Ends) -> Vec<f32> {
    let rb = kernel.row_block();
    let m_pad = m.next_multiple_of(rb);
    let mut c: Vec<f32> = Vec::with_capacity(m_pad * w.n_pad);
    let threads = candle_core::utils::get_num_threads().min(m_pad / rb).max(1);
    with_a_buffer(m_pad * w.k_pad, |a| {
        let cu = &mut c.spare_capacity_mut()[..m_pad * w.n_pad];
        if threads > 1 && m_pad * w.n_pad * w.k_pad >= PARALLEL_MIN_WORK {
            let rows = (m_pad / threads).next_multiple_of(rb);
            // As many chunks of x as of a and c (rows is a multiple of rb, m_pad - m < rb), so
            // every row of c is written.
            std::thread::scope(|s| {
                let chunks = x
                    .chunks(rows * w.k)
                    .zip(a.chunks_mut(rows * w.k_pad))
                    .zip(cu.chunks_mut(rows * w.n_pad));
                for ((x, a), c) in chunks {
                    s.spawn(move || rows_of(x, a, w, c, kernel, ends));
                }
            });
        } else {
            rows_of(x, a, w, cu, kernel, ends);
        }
    });
    // SAFETY: `rows_of` wrote all m_pad · n_pad elements (each kernel writes every element of
    // its c; the chunks above cover all rows), which are within the capacity.
    unsafe { c.set_len(m_pad * w.n_pad) };
    if w.n_pad == w.n {
        c.truncate(m * w.n);
        return c;
    }
    let mut y = Vec::with_capacity(m * w.n);
    for row in c.chunks_exact(w.n_pad).take(m) {
        y.extend_from_slice(&row[..w.n]);
    }
    y
}

/// c = a · Wᵀ for the rows of one chunk: x [r, k] converted into a [r_pad, k_pad] (r_pad a
/// multiple of the kernel's row block; every element written: the padding columns and the rows
/// past r are zero), c [r_pad, n_pad], every element written.
fn rows_of(
    x: &[f32],
    a: &mut [u16],
    w: &Bf16Weights,
    c: &mut [MaybeUninit<f32>],
    kernel: Kernel,
    ends: Ends,
) {
    let r_pad = a.len() / w.k_pad.max(1);
    match ends.gelu_bias {
        #[cfg(target_arch = "x86_64")]
        Some(gb) if kernel == Kernel::Amx => {
            // SAFETY: `bf16_matmul_with` checked `available()`; `forward` sized a and c.
            unsafe {
                x86::to_bf16_tiles_gelu(x, gb, w.k_pad, a);
                x86::amx(a, r_pad, w, c);
            }
        }
        Some(gb) => {
            let mut g = Vec::with_capacity(x.len());
            dispatch_fma!(gelu_rows(x, gb, &mut g.spare_capacity_mut()[..x.len()]));
            // SAFETY: `gelu_rows` wrote all x.len() elements.
            unsafe { g.set_len(x.len()) };
            kernel_rows(&g, a, r_pad, w, c, kernel);
        }
        None => kernel_rows(x, a, r_pad, w, c, kernel),
    }
    if let Some(b) = ends.bias {
        // SAFETY: the kernel wrote every element of c (its contract above).
        let c = unsafe { &mut *(c as *mut [MaybeUninit<f32>] as *mut [f32]) };
        dispatch!(add_bias_rows(c, w.n_pad, b));
    }
}

/// `row[j] += bias[j]` for the first bias.len() values of every row (rows `ld` apart).
#[inline(always)]
fn add_bias_rows(c: &mut [f32], ld: usize, bias: &[f32]) {
    for row in c.chunks_exact_mut(ld) {
        for (v, &b) in row.iter_mut().zip(bias) {
            *v += b;
        }
    }
}

/// The kernel's part of `rows_of`.
fn kernel_rows(
    x: &[f32],
    a: &mut [u16],
    r_pad: usize,
    w: &Bf16Weights,
    c: &mut [MaybeUninit<f32>],
    kernel: Kernel,
) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Amx => {
            // SAFETY: `bf16_matmul_with` checked `available()`; `forward` sized a and c.
            unsafe {
                x86::to_bf16_tiles(x, w.k, w.k_pad, a);
                x86::amx(a, r_pad, w, c);
            }
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512 => {
            // SAFETY: as above.
            unsafe {
                x86::to_bf16_rows(x, w.k, w.k_pad, a);
                x86::avx512(a, r_pad, w, c);
            }
        }
        _ => {
            portable_to_bf16_rows(x, w.k, w.k_pad, a);
            portable(a, r_pad, w, c);
        }
    }
}

/// Rows of x [r, k] as bf16 into a [r_pad, k_pad] (row-major), every element written: the padding
/// columns and rows are zero, so that they add nothing (the padding rows' outputs are dropped).
fn portable_to_bf16_rows(x: &[f32], k: usize, k_pad: usize, a: &mut [u16]) {
    for (row, out) in x.chunks_exact(k).zip(a.chunks_exact_mut(k_pad)) {
        for (o, &v) in out.iter_mut().zip(row) {
            *o = bf16::from_f32(v).to_bits();
        }
        out[k..].fill(0);
    }
    a[x.len() / k * k_pad..].fill(0);
}

/// One row of output at a time, 16 columns per block.
fn portable(a: &[u16], m_pad: usize, w: &Bf16Weights, c: &mut [MaybeUninit<f32>]) {
    let kblocks = w.k_pad / DEPTH;
    for i in 0..m_pad {
        let arow = &a[i * w.k_pad..(i + 1) * w.k_pad];
        for jb in 0..w.n_pad / COLS {
            let mut acc = [0f32; COLS];
            for kb in 0..kblocks {
                let block = &w.packed[(jb * kblocks + kb) * BLOCK..][..BLOCK];
                for (p, prow) in block.chunks_exact(2 * COLS).enumerate() {
                    let x0 = widen(arow[kb * DEPTH + 2 * p]);
                    let x1 = widen(arow[kb * DEPTH + 2 * p + 1]);
                    for (s, pair) in acc.iter_mut().zip(prow.chunks_exact(2)) {
                        *s += x0 * widen(pair[0]) + x1 * widen(pair[1]);
                    }
                }
            }
            for (o, v) in c[i * w.n_pad + jb * COLS..][..COLS].iter_mut().zip(acc) {
                o.write(v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;
    use std::sync::OnceLock;

    use super::{Bf16Weights, BLOCK, COLS, DEPTH};

    /// Rows per `vdpbf16ps` block.
    pub(super) const MR: usize = 8;

    pub(super) fn avx512_bf16() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
    }

    /// AMX-TILE and AMX-BF16 on the CPU (CPUID leaf 7: EDX bits 24 and 22), AVX512_BF16 for the
    /// conversions, and Linux granting this process the tile data state.
    pub(super) fn amx_bf16() -> bool {
        static OK: OnceLock<bool> = OnceLock::new();
        *OK.get_or_init(|| {
            let leaf7 = __cpuid_count(7, 0);
            let cpu = leaf7.edx & (1 << 24) != 0 && leaf7.edx & (1 << 22) != 0;
            cpu && avx512_bf16() && request_tile_state()
        })
    }

    #[cfg(target_os = "linux")]
    pub(in crate::ops) fn request_tile_state() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM) only changes which XSAVE states this process may
        // use; it reads no memory of ours.
        let r = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        };
        r == 0
    }

    #[cfg(not(target_os = "linux"))]
    pub(in crate::ops) fn request_tile_state() -> bool {
        false
    }

    /// Rows of x [r, k] rounded to bf16 (nearest even) into a [r_pad, k_pad] (row-major), every
    /// element written (padding columns and rows zero), as `portable_to_bf16_rows`.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and BF16; `a` holds at least r rows of `k_pad`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn to_bf16_rows(x: &[f32], k: usize, k_pad: usize, a: &mut [u16]) {
        for (row, out) in x.chunks_exact(k).zip(a.chunks_exact_mut(k_pad)) {
            let mut c = 0;
            while c < k {
                let left = (k - c).min(16);
                let mask: u16 = if left == 16 { !0 } else { (1u16 << left) - 1 };
                // SAFETY: lanes < left of row[c..] and out[c..] are in bounds (k <= k_pad).
                unsafe {
                    let v = _mm512_maskz_loadu_ps(mask, row.as_ptr().add(c));
                    let b = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v));
                    _mm256_mask_storeu_epi16(out.as_mut_ptr().add(c) as *mut i16, mask, b);
                }
                c += 16;
            }
            out[k..].fill(0);
        }
        a[x.len() / k * k_pad..].fill(0);
    }

    /// Rows of x [r, k] rounded to bf16 (nearest even) into a [r_pad, k_pad] in AMX's tile order:
    /// strips of 16 rows, each cut into 16 × 32 tiles (1 KiB, rows of 64 bytes) one after another,
    /// so element (i, c) is at `((i / 16) · k_pad / 32 + c / 32) · 512 + (i % 16) · 32 + c % 32`.
    /// Every element written (padding columns and rows zero). An A tile is then one contiguous
    /// KiB, which the kernel streams (1.1-1.16× faster on MiniLM's shapes than rows `k_pad` apart:
    /// benches/RESULTS.md, issue 20).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn to_bf16_tiles(x: &[f32], k: usize, k_pad: usize, a: &mut [u16]) {
        let r = x.len() / k;
        let r_pad = a.len() / k_pad;
        check_tiles(r, k, k_pad, r_pad);
        for i in 0..r_pad {
            // SAFETY: i < r_pad; row i of x has k elements.
            unsafe { tile_row((i < r).then(|| &x[i * k..(i + 1) * k]), i, k_pad, a) };
        }
    }

    /// `to_bf16_tiles` of `gelu(x + b)` (b [k]), one row at a time through a buffer of k floats:
    /// the GELU as `ops::gelu_bias` computes it (the same function, compiled as its AVX-512 copy).
    ///
    /// # Safety
    /// As `to_bf16_tiles`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16,avx2,fma")]
    pub(super) unsafe fn to_bf16_tiles_gelu(x: &[f32], b: &[f32], k_pad: usize, a: &mut [u16]) {
        let k = b.len();
        let r = x.len() / k;
        let r_pad = a.len() / k_pad;
        check_tiles(r, k, k_pad, r_pad);
        let mut g = vec![MaybeUninit::<f32>::uninit(); k];
        for i in 0..r_pad {
            let row = if i < r {
                super::gelu_rows::<crate::ops::simd::Fused>(&x[i * k..(i + 1) * k], b, &mut g);
                // SAFETY: `gelu_rows` wrote all k elements.
                Some(unsafe { &*(g.as_slice() as *const [MaybeUninit<f32>] as *const [f32]) })
            } else {
                None
            };
            // SAFETY: i < r_pad.
            unsafe { tile_row(row, i, k_pad, a) };
        }
    }

    fn check_tiles(r: usize, k: usize, k_pad: usize, r_pad: usize) {
        assert!(
            r <= r_pad && r_pad.is_multiple_of(16) && k <= k_pad && k_pad.is_multiple_of(DEPTH),
            "bf16 tiles: sizes. This is a bug."
        );
    }

    /// Row i of a (tile order, see `to_bf16_tiles`) from `row` (k values; `None`: a padding row),
    /// every one of its k_pad elements written (zeros past k).
    ///
    /// # Safety
    /// AVX-512 F, BW and BF16; i < a.len() / k_pad.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn tile_row(row: Option<&[f32]>, i: usize, k_pad: usize, a: &mut [u16]) {
        let kblocks = k_pad / DEPTH;
        let k = row.map_or(0, <[f32]>::len);
        let base = (i / 16) * kblocks * BLOCK + (i % 16) * DEPTH;
        let mut c = 0;
        while c < k_pad {
            let left = k.saturating_sub(c).min(16);
            let at = base + (c / DEPTH) * BLOCK + c % DEPTH;
            // SAFETY: lanes < left of row[c..] are in the row; the 16 elements at `at` are inside
            // a (i < r_pad, c + 16 <= k_pad).
            unsafe {
                let b = match row {
                    Some(x) if left > 0 => {
                        let mask: u16 = if left == 16 { !0 } else { (1u16 << left) - 1 };
                        let v = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(c));
                        std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v))
                    }
                    _ => _mm256_setzero_si256(),
                };
                _mm256_storeu_si256(a.as_mut_ptr().add(at).cast(), b);
            }
            c += 16;
        }
    }

    /// c [m_pad, n_pad] = a · Wᵀ, a [m_pad, k_pad] in tile order (`to_bf16_tiles`); m_pad a
    /// multiple of 32. Writes every element of c[..m_pad · n_pad].
    ///
    /// Each 32 × 32 block of c is four accumulator tiles (all 8 tiles in use: 4 for c, 2 for A, 2
    /// for W). The blocks run row strip by row strip: a 32-row strip of A stays in L1 while W
    /// streams past it, and c is written row after row. Measured on MiniLM's shapes against
    /// column strip by column strip (W's strip kept, A streamed): 1.3-1.4× faster where W is
    /// wider than deep (q+k+v, intermediate), within ±8% on the others (benches/RESULTS.md,
    /// issue 20).
    ///
    /// # Safety
    /// `Kernel::Amx.available()`; `a` and `c` have the sizes above.
    pub(super) unsafe fn amx(a: &[u16], m_pad: usize, w: &Bf16Weights, c: &mut [MaybeUninit<f32>]) {
        let (k_pad, n_pad) = (w.k_pad, w.n_pad);
        assert!(
            m_pad.is_multiple_of(32) && a.len() >= m_pad * k_pad && c.len() >= m_pad * n_pad,
            "bf16 amx: sizes. This is a bug."
        );
        let kblocks = k_pad / DEPTH;
        let ldc = n_pad * 4;
        let cfg = TileConfig::all_16x64();
        let cbase = c.as_mut_ptr().cast::<f32>();
        // One 32 × 32 block of c; called only with the ib, jb of the loop below.
        // SAFETY (the asm here): the tiles read 16 rows of 64 bytes, 64 bytes apart: A tiles
        // (strips ib / 16 and ib / 16 + 1, which start at ib · k_pad and 16 rows later; k block
        // kb; inside a: ib + 32 <= m_pad) and packed blocks (jb, kb) and (jb + 1, kb) of W (inside
        // `packed`: jb + 32 <= n_pad); they write 16 rows of 16 f32 at c[ib.., jb..] with rows n_pad
        // apart (inside c). The tmm registers are not known to the compiler, so values kept in
        // them between asm blocks are not disturbed.
        let block = |ib: usize, jb: usize| unsafe {
            let b0 = w.packed.as_ptr().add((jb / COLS) * kblocks * BLOCK);
            let b1 = b0.add(kblocks * BLOCK);
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
                    "tileloadd tmm4, [{a0} + {s64}*1]",
                    "tileloadd tmm5, [{a1} + {s64}*1]",
                    "tileloadd tmm6, [{b0} + {s64}*1]",
                    "tileloadd tmm7, [{b1} + {s64}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0.add(kb * BLOCK),
                    a1 = in(reg) a1.add(kb * BLOCK),
                    b0 = in(reg) b0.add(kb * BLOCK),
                    b1 = in(reg) b1.add(kb * BLOCK),
                    s64 = in(reg) 64usize,
                    options(nostack, readonly)
                );
            }
            let cp = cbase.add(ib * n_pad + jb);
            asm!(
                "tilestored [{c0} + {ldc}*1], tmm0",
                "tilestored [{c1} + {ldc}*1], tmm1",
                "tilestored [{c2} + {ldc}*1], tmm2",
                "tilestored [{c3} + {ldc}*1], tmm3",
                c0 = in(reg) cp,
                c1 = in(reg) cp.add(COLS),
                c2 = in(reg) cp.add(16 * n_pad),
                c3 = in(reg) cp.add(16 * n_pad + COLS),
                ldc = in(reg) ldc,
                options(nostack)
            );
        };
        // SAFETY: loads the tile configuration (64 bytes of `cfg`), runs the blocks that cover c,
        // and releases the tiles.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
            for ib in (0..m_pad).step_by(32) {
                for jb in (0..n_pad).step_by(2 * COLS) {
                    block(ib, jb);
                }
            }
            asm!("tilerelease", options(nomem, nostack));
        }
    }

    /// The tile configuration: palette 1, tiles 0-7 all 16 rows of 64 bytes.
    #[repr(C, align(64))]
    pub(in crate::ops) struct TileConfig(pub(in crate::ops) [u8; 64]);

    impl TileConfig {
        pub(in crate::ops) fn all_16x64() -> TileConfig {
            let mut b = [0u8; 64];
            b[0] = 1;
            for t in 0..8 {
                b[16 + 2 * t] = 64; // bytes per row (u16, little-endian)
                b[48 + t] = 16; // rows
            }
            TileConfig(b)
        }
    }

    /// 32 bf16 bit patterns as the type `vdpbf16ps` takes.
    #[inline(always)]
    fn as_bh(v: __m512i) -> __m512bh {
        // SAFETY: both are 64-byte vectors of plain bits.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }

    /// c [m_pad, n_pad] = a [m_pad, k_pad] · Wᵀ with `vdpbf16ps`; m_pad a multiple of `MR`.
    ///
    /// # Safety
    /// `Kernel::Avx512.available()`; `a` and `c` have the sizes above.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn avx512(
        a: &[u16],
        m_pad: usize,
        w: &Bf16Weights,
        c: &mut [MaybeUninit<f32>],
    ) {
        let (k_pad, n_pad) = (w.k_pad, w.n_pad);
        assert!(
            m_pad.is_multiple_of(MR) && a.len() >= m_pad * k_pad && c.len() >= m_pad * n_pad,
            "bf16 avx512: sizes. This is a bug."
        );
        let kblocks = k_pad / DEPTH;
        for jb in (0..n_pad).step_by(2 * COLS) {
            let b0 = &w.packed[(jb / COLS) * kblocks * BLOCK..][..kblocks * BLOCK];
            let b1 = &w.packed[(jb / COLS + 1) * kblocks * BLOCK..][..kblocks * BLOCK];
            for ib in (0..m_pad).step_by(MR) {
                let mut acc = [[_mm512_setzero_ps(); 2]; MR];
                for p in 0..k_pad / 2 {
                    // Pair p of k: row p % 16 of block p / 16 (32 bf16 = one vector).
                    let off = (p / 16) * BLOCK + (p % 16) * 2 * COLS;
                    // SAFETY: off + 32 <= kblocks * BLOCK, the length of b0 and b1.
                    let (w0, w1) = unsafe {
                        (
                            as_bh(_mm512_loadu_si512(b0.as_ptr().add(off).cast())),
                            as_bh(_mm512_loadu_si512(b1.as_ptr().add(off).cast())),
                        )
                    };
                    for (r, acc_r) in acc.iter_mut().enumerate() {
                        // SAFETY: elements 2p, 2p + 1 of row ib + r < m_pad of `a`.
                        let pair = unsafe {
                            a.as_ptr()
                                .add((ib + r) * k_pad + 2 * p)
                                .cast::<i32>()
                                .read_unaligned()
                        };
                        let xv = as_bh(_mm512_set1_epi32(pair));
                        acc_r[0] = _mm512_dpbf16_ps(acc_r[0], xv, w0);
                        acc_r[1] = _mm512_dpbf16_ps(acc_r[1], xv, w1);
                    }
                }
                for (r, acc_r) in acc.iter().enumerate() {
                    let out = &mut c[(ib + r) * n_pad + jb..][..2 * COLS];
                    // SAFETY: `out` holds 32 f32.
                    unsafe {
                        _mm512_storeu_ps(out.as_mut_ptr().cast(), acc_r[0]);
                        _mm512_storeu_ps(out.as_mut_ptr().add(COLS).cast(), acc_r[1]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::Device;

    fn weights(seed: u64, n: usize, k: usize) -> Arc<Bf16Weights> {
        let w = vec1(&randn(seed, &[n, k], DType::F32));
        Arc::new(Bf16Weights::pack(&w, n, k))
    }

    /// Every element within f32 summation error of the f64 reference over the same bf16 values:
    /// |got - want| ≤ (k + 2) · ε · Σ|x_i w_i| + 1e-6 (the sum of k products in any order, each
    /// exact, plus the rounding of the result).
    fn check(got: &Tensor, x: &Tensor, w: &Bf16Weights, what: &str) {
        let want = bf16_matmul_ref(x, w).unwrap();
        assert_eq!(got.dims(), want.dims(), "{what}: shape");
        assert_eq!(got.dtype(), x.dtype(), "{what}: dtype");
        let (m, k) = x.dims2().unwrap();
        let n = w.n;
        let xs = vec1(&x.to_dtype(DType::BF16).unwrap());
        let ws = w.to_f32();
        let (g, e) = (vec1(got), vec1(&want));
        let out_tol = if x.dtype() == DType::F32 { 0.0 } else { 1e-2 };
        for i in 0..m {
            for j in 0..n {
                let abs: f32 = (0..k).map(|c| (xs[i * k + c] * ws[j * k + c]).abs()).sum();
                let (a, b) = (g[i * n + j], e[i * n + j]);
                let t = (k + 2) as f32 * f32::EPSILON * abs + 1e-6 + out_tol * b.abs();
                assert!(
                    (a - b).abs() <= t,
                    "{what}: ({i}, {j}): {a} vs {b} (tolerance {t})"
                );
            }
        }
    }

    fn kernels() -> Vec<Kernel> {
        let all = [Kernel::Amx, Kernel::Avx512, Kernel::Portable];
        for k in all.iter().filter(|k| !k.available()) {
            eprintln!(
                "bf16 kernel {}: SKIPPED, this CPU does not run it",
                k.as_str()
            );
        }
        all.into_iter().filter(|k| k.available()).collect()
    }

    #[test]
    fn bf16_matmul_each_kernel_matches_ref_on_odd_sizes() {
        let sizes = [1usize, 31, 33, 70];
        for kernel in kernels() {
            for (s, &m) in sizes.iter().enumerate() {
                for &n in &sizes {
                    for &k in &[1usize, 33, 64, 100] {
                        let x = randn(100 + s as u64, &[m, k], DType::F32);
                        let w = weights(7 + n as u64 + k as u64, n, k);
                        let got = bf16_matmul_with(&x, &w, kernel).unwrap();
                        check(&got, &x, &w, &format!("{kernel:?} m={m} n={n} k={k}"));
                    }
                }
            }
        }
    }

    /// MiniLM's shapes (k = 384 and 1536, n = 384 and 1536) over a packed batch of many tokens; big
    /// enough to split over threads when candle runs more than one (`forward`).
    #[test]
    fn bf16_matmul_each_kernel_matches_ref_on_model_shapes() {
        for kernel in kernels() {
            for (m, n, k) in [(77, 1536, 384), (45, 384, 1536)] {
                let x = randn(3, &[m, k], DType::F32);
                let w = weights(4, n, k);
                let got = bf16_matmul_with(&x, &w, kernel).unwrap();
                check(&got, &x, &w, &format!("{kernel:?} {m}x{n}x{k}"));
            }
        }
    }

    #[test]
    fn bf16_matmul_keeps_f16_and_bf16_inputs_dtype() {
        for dtype in [DType::F16, DType::BF16] {
            let x = randn(9, &[5, 40], dtype);
            let w = weights(10, 17, 40);
            let got = bf16_matmul(&x, &w).unwrap();
            check(&got, &x, &w, &format!("{dtype:?}"));
        }
    }

    /// A row's result does not depend on the rows around it (alone vs inside a batch), bit for bit.
    #[test]
    fn bf16_matmul_row_alone_equals_row_in_batch() {
        for kernel in kernels() {
            let x = randn(11, &[40, 384], DType::F32);
            let w = weights(12, 96, 384);
            let all = vec1(&bf16_matmul_with(&x, &w, kernel).unwrap());
            let one = vec1(&bf16_matmul_with(&x.narrow(0, 37, 1).unwrap(), &w, kernel).unwrap());
            assert_eq!(&all[37 * 96..38 * 96], &one[..], "{kernel:?}");
        }
    }

    /// The bf16 copy of x is reused between calls without zeroing: after a call that leaves large
    /// values everywhere in it, a call whose k and m need padding still matches the reference.
    #[test]
    fn bf16_matmul_reused_buffer_keeps_padding_zero() {
        for kernel in kernels() {
            let big = Tensor::full(1e4f32, (70, 160), &Device::Cpu).unwrap();
            bf16_matmul_with(&big, &weights(20, 64, 160), kernel).unwrap();
            let x = randn(21, &[33, 33], DType::F32);
            let w = weights(22, 40, 33);
            let got = bf16_matmul_with(&x, &w, kernel).unwrap();
            check(&got, &x, &w, &format!("{kernel:?} after a larger call"));
        }
    }

    /// Stacked weights give each part's outputs side by side, bit for bit: every output's sum runs
    /// in the same order whichever block of columns it is in.
    #[test]
    fn bf16_weights_stacked_equal_separate_matmuls() {
        let parts = [
            weights(30, 40, 100),
            weights(31, 33, 100),
            weights(32, 7, 100),
        ];
        let refs: Vec<&Bf16Weights> = parts.iter().map(Arc::as_ref).collect();
        let stacked = Arc::new(Bf16Weights::stack(&refs).unwrap());
        assert_eq!(stacked.dims(), (80, 100));
        for kernel in kernels() {
            for m in [1usize, 31, 77] {
                let x = randn(33 + m as u64, &[m, 100], DType::F32);
                let all = bf16_matmul_with(&x, &stacked, kernel).unwrap();
                let mut col = 0;
                for p in &parts {
                    let one = vec1(&bf16_matmul_with(&x, p, kernel).unwrap());
                    let part = vec1(&all.narrow(1, col, p.n).unwrap().contiguous().unwrap());
                    assert_eq!(part, one, "{kernel:?} m={m} columns {col}..");
                    col += p.n;
                }
            }
        }
        let other_k = weights(34, 8, 99);
        assert!(Bf16Weights::stack(&[&parts[0], &other_k]).is_none());
        assert!(Bf16Weights::stack(&[]).is_none());
    }

    /// The bias added right after each kernel gives what a separate add gives, bit for bit.
    #[test]
    fn bf16_matmul_bias_equals_a_separate_add() {
        let w = weights(60, 40, 100);
        let b = randn(61, &[40], DType::F32);
        let bv: Arc<[f32]> = vec1(&b).into();
        for kernel in kernels() {
            for m in [1usize, 31, 77] {
                let x = randn(62 + m as u64, &[m, 100], DType::F32);
                let want = bf16_matmul_with(&x, &w, kernel)
                    .unwrap()
                    .broadcast_add(&b)
                    .unwrap();
                let got = bf16_matmul_bias(&x, &w, kernel, Some(&bv)).unwrap();
                assert_eq!(vec1(&got), vec1(&want), "{kernel:?} m={m}");
            }
            let x = randn(63, &[2, 100], DType::F32);
            let short: Arc<[f32]> = vec![0.0; 39].into();
            assert!(bf16_matmul_bias(&x, &w, kernel, Some(&short)).is_err());
            assert!(bf16_matmul_gelu(&x, &short, &w, kernel, None).is_err());
        }
    }

    /// The GELU taken into the conversion of x gives what `gelu_bias` then the matmul give, bit
    /// for bit, on every kernel (with and without the output bias).
    #[test]
    fn bf16_matmul_gelu_equals_gelu_then_matmul() {
        let w = weights(64, 40, 100);
        let gb = randn(65, &[100], DType::F32);
        let b = randn(66, &[40], DType::F32);
        let (gbv, bv): (Arc<[f32]>, Arc<[f32]>) = (vec1(&gb).into(), vec1(&b).into());
        for kernel in kernels() {
            for m in [1usize, 31, 77] {
                let pre = randn(67 + m as u64, &[m, 100], DType::F32);
                let g = crate::ops::gelu_bias(&pre, &gb).unwrap();
                for bias in [None, Some(&bv)] {
                    let want = bf16_matmul_bias(&g, &w, kernel, bias).unwrap();
                    let got = bf16_matmul_gelu(&pre, &gbv, &w, kernel, bias).unwrap();
                    assert_eq!(vec1(&got), vec1(&want), "{kernel:?} m={m}");
                }
            }
        }
    }

    #[test]
    fn bf16_weights_round_to_nearest_even_and_back() {
        let w: Vec<f32> = vec![1.0, 1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0, -2.5, 0.0, 1e-3];
        let p = Bf16Weights::pack(&w, 2, 3);
        let want: Vec<f32> = w.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        assert_eq!(p.to_f32(), want);
        assert_eq!(p.dims(), (2, 3));
        assert_eq!((p.n_pad, p.k_pad), (32, 32));
        // 1 + 1/256 is halfway between two bf16 values: to even (1.0); 1 + 3/256 rounds up.
        assert_eq!(want[1], 1.0);
        assert_eq!(want[2], 1.0 + 4.0 / 256.0);
    }

    #[test]
    fn bf16_matmul_empty_and_bad_shapes() {
        let w = weights(1, 8, 16);
        let x = Tensor::zeros((0, 16), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(bf16_matmul(&x, &w).unwrap().dims(), [0, 8]);
        let x = Tensor::zeros((3, 15), DType::F32, &Device::Cpu).unwrap();
        assert!(bf16_matmul(&x, &w).is_err());
        let w0 = Arc::new(Bf16Weights::pack(&[], 5, 0));
        let x = Tensor::zeros((3, 0), DType::F32, &Device::Cpu).unwrap();
        let y = vec1(&bf16_matmul(&x, &w0).unwrap());
        assert_eq!(y, vec![0f32; 15]);
        let x = Tensor::zeros((2, 3, 16), DType::F32, &Device::Cpu).unwrap();
        assert!(bf16_matmul(&x, &w).is_err());
        let x = Tensor::zeros((2, 16), DType::U8, &Device::Cpu).unwrap();
        assert!(bf16_matmul(&x, &w).is_err());
    }
}

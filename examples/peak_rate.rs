//! Measures this CPU's peak rate of the three instructions a MiniLM forward pass can be built on
//! (issue 20): f32 FMA (`_mm512_fmadd_ps`, GFLOP/s, 2 flops per lane), bf16 dot
//! (`_mm512_dpbf16_ps`, GFLOP/s, 2 flops per bf16 product: 64 per instruction) and int8 dot
//! (`_mm512_dpbusd_epi32`, GOP/s, 2 ops per u8 x i8 product: 128 per instruction), and Intel AMX's
//! bf16 tile product (`tdpbf16ps`, 16 x 16 x 32 products: 16,384 flops per instruction; what
//! `ops::bf16_matmul` runs where the CPU has it) and int8 tile product (`tdpbssd`, 16 x 16 x 64
//! products: 32,768 ops per instruction; what `ops::q8_amx_matmul` runs). Each loop keeps
//! 16 independent accumulators in registers (latency 4-6 cycles, 1-2 ports: 16 hides it) and no
//! memory traffic, so the figure is the instruction's issue limit at the clock the CPU holds under
//! that load, the ceiling a GEMM built on it cannot pass. Best of several timed repetitions after a
//! warm-up, on 1 thread and on 2 threads (each running the same loop; the rate is the sum).
//! Features are detected at run time; an instruction the CPU lacks prints `n/a`.
//! Output, one line per instruction and thread count:
//! `peak f32_fma threads=1 gflops=123.4` (or `gops=` for int8, or `n/a`).
//! Usage: `peak_rate [MILLISECONDS_PER_REPETITION=300] [REPETITIONS=5]`.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::Instant;

/// Independent accumulators per loop.
const ACC: usize = 16;

#[derive(Clone, Copy)]
enum Kind {
    F32Fma,
    Bf16Dot,
    Int8Dot,
    AmxBf16,
    AmxInt8,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::F32Fma => "f32_fma",
            Kind::Bf16Dot => "bf16_dot",
            Kind::Int8Dot => "int8_dot",
            Kind::AmxBf16 => "amx_bf16",
            Kind::AmxInt8 => "amx_int8",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Kind::Int8Dot | Kind::AmxInt8 => "gops",
            _ => "gflops",
        }
    }

    /// Flops (or integer ops) one instruction does on a 512-bit register.
    fn ops_per_instruction(self) -> f64 {
        match self {
            Kind::F32Fma => 16.0 * 2.0,
            Kind::Bf16Dot => 16.0 * 2.0 * 2.0,
            Kind::Int8Dot => 16.0 * 4.0 * 2.0,
            // tdpbf16ps: a 16 x 16 f32 tile += 16 x 32 bf16 times 32 x 16 bf16.
            Kind::AmxBf16 => 16.0 * 16.0 * 32.0 * 2.0,
            // tdpbssd: a 16 x 16 i32 tile += 16 x 64 i8 times 64 x 16 i8.
            Kind::AmxInt8 => 16.0 * 16.0 * 64.0 * 2.0,
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn supported(self) -> bool {
        match self {
            Kind::F32Fma => std::is_x86_feature_detected!("avx512f"),
            Kind::Bf16Dot => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bf16")
            }
            Kind::Int8Dot => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512vnni")
            }
            // CPU, and Linux granting the tile state (what `ops::bf16_matmul` checks).
            Kind::AmxBf16 => ferrite::ops::Bf16Kernel::Amx.available(),
            Kind::AmxInt8 => ferrite::ops::Q8Packed::available(),
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn supported(self) -> bool {
        false
    }

    /// Runs `iters` iterations of `ACC` instructions; returns a value that depends on all of them.
    #[cfg(target_arch = "x86_64")]
    fn run(self, iters: u64) -> f64 {
        // SAFETY: `supported()` checked the CPU features each loop is compiled for before any
        // call reaches here (main only measures supported kinds).
        unsafe {
            match self {
                Kind::F32Fma => x86::fma(iters),
                Kind::Bf16Dot => x86::bf16(iters),
                Kind::Int8Dot => x86::int8(iters),
                Kind::AmxBf16 => x86::amx_bf16(iters),
                Kind::AmxInt8 => x86::amx_int8(iters),
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn run(self, _iters: u64) -> f64 {
        unreachable!("no kind is supported off x86_64. This is a bug.")
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// `ACC` (16) `tdpbf16ps` per iteration into four accumulator tiles (tmm0-3) from four
    /// operand tiles (tmm4-7) of zeros.
    ///
    /// # Safety
    /// The CPU has AMX-BF16 and the process may use the tile state (`Kind::supported`).
    pub unsafe fn amx_bf16(iters: u64) -> f64 {
        // SAFETY: as `amx`'s contract.
        unsafe { amx(iters, false) }
    }

    /// As `amx_bf16` with `tdpbssd` (int8 tiles, i32 sums).
    ///
    /// # Safety
    /// The CPU has AMX-INT8 and the process may use the tile state (`Kind::supported`).
    pub unsafe fn amx_int8(iters: u64) -> f64 {
        // SAFETY: as `amx`'s contract.
        unsafe { amx(iters, true) }
    }

    /// The AMX loop: `tdpbssd` when `int8`, else `tdpbf16ps`.
    ///
    /// # Safety
    /// The CPU has AMX-TILE and the instruction's AMX extension, and the process may use the tile
    /// state.
    unsafe fn amx(iters: u64, int8: bool) -> f64 {
        #[repr(C, align(64))]
        struct Cfg([u8; 64]);
        let mut cfg = Cfg([0; 64]);
        cfg.0[0] = 1;
        for t in 0..8 {
            cfg.0[16 + 2 * t] = 64;
            cfg.0[48 + t] = 16;
        }
        let mut out = [0f32; 256];
        // SAFETY: the caller checked AMX; the tiles are 16 rows of 64 bytes and `out` holds one
        // (16 x 16 f32) at a row stride of 64 bytes.
        unsafe {
            asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "tilezero tmm4",
                "tilezero tmm5",
                "tilezero tmm6",
                "tilezero tmm7",
                options(nomem, nostack)
            );
            for _ in 0..iters {
                for _ in 0..ACC / 4 {
                    if int8 {
                        asm!(
                            "tdpbssd tmm0, tmm4, tmm6",
                            "tdpbssd tmm1, tmm4, tmm7",
                            "tdpbssd tmm2, tmm5, tmm6",
                            "tdpbssd tmm3, tmm5, tmm7",
                            options(nomem, nostack)
                        );
                    } else {
                        asm!(
                            "tdpbf16ps tmm0, tmm4, tmm6",
                            "tdpbf16ps tmm1, tmm4, tmm7",
                            "tdpbf16ps tmm2, tmm5, tmm6",
                            "tdpbf16ps tmm3, tmm5, tmm7",
                            options(nomem, nostack)
                        );
                    }
                }
            }
            asm!("tilestored [{0} + {1}*1], tmm0", in(reg) out.as_mut_ptr(), in(reg) 64usize, options(nostack));
            asm!("tilerelease", options(nomem, nostack));
        }
        out[0] as f64
    }

    use super::ACC;

    /// `ACC` chains of `acc += a * b` on 16 f32 lanes.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma(iters: u64) -> f64 {
        let a = _mm512_set1_ps(1.0e-3);
        let b = _mm512_set1_ps(0.5);
        let mut acc = [_mm512_setzero_ps(); ACC];
        for _ in 0..iters {
            for r in acc.iter_mut() {
                *r = _mm512_fmadd_ps(a, b, *r);
            }
        }
        let mut s = _mm512_setzero_ps();
        for r in acc {
            s = _mm512_add_ps(s, r);
        }
        _mm512_reduce_add_ps(s) as f64
    }

    /// `ACC` chains of `acc += a[2i] * b[2i] + a[2i+1] * b[2i+1]` on 16 f32 lanes (32 bf16 pairs).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn bf16(iters: u64) -> f64 {
        // bf16 0.5 is 0x3f00, 1/1024 is 0x3a80.
        let a: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3f00));
        let b: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3a80));
        let mut acc = [_mm512_setzero_ps(); ACC];
        for _ in 0..iters {
            for r in acc.iter_mut() {
                *r = _mm512_dpbf16_ps(*r, a, b);
            }
        }
        let mut s = _mm512_setzero_ps();
        for r in acc {
            s = _mm512_add_ps(s, r);
        }
        _mm512_reduce_add_ps(s) as f64
    }

    /// `ACC` chains of `acc += sum of 4 u8 x i8 products` on 16 i32 lanes (wrapping).
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub unsafe fn int8(iters: u64) -> f64 {
        let a = _mm512_set1_epi8(3);
        let b = _mm512_set1_epi8(-2);
        let mut acc = [_mm512_setzero_si512(); ACC];
        for _ in 0..iters {
            for r in acc.iter_mut() {
                *r = _mm512_dpbusd_epi32(*r, a, b);
            }
        }
        let mut s = _mm512_setzero_si512();
        for r in acc {
            s = _mm512_add_epi32(s, r);
        }
        _mm512_reduce_add_epi32(s) as f64
    }
}

/// Seconds `threads` threads take to run `iters` iterations each (started together).
fn timed(kind: Kind, iters: u64, threads: usize) -> f64 {
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                black_box(kind.run(black_box(iters)))
            })
        })
        .collect();
    start.wait();
    let t = Instant::now();
    for h in handles {
        h.join()
            .expect("a measuring thread panicked. This is a bug.");
    }
    t.elapsed().as_secs_f64()
}

/// Best rate (ops/s over all threads) of `reps` repetitions of about `ms` milliseconds each.
fn measure(kind: Kind, threads: usize, ms: u64, reps: usize) -> f64 {
    // Calibrate on one thread: iterations for about `ms` milliseconds.
    let mut iters = 1u64 << 16;
    loop {
        let dt = timed(kind, iters, 1);
        if dt > 0.05 {
            iters = ((iters as f64) * (ms as f64 / 1000.0) / dt).max(1.0) as u64;
            break;
        }
        iters *= 4;
    }
    let ops = kind.ops_per_instruction() * ACC as f64 * iters as f64 * threads as f64;
    let best = (0..reps)
        .map(|_| timed(kind, iters, threads))
        .fold(f64::MAX, f64::min);
    ops / best
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .expect("arguments are integers: [MILLISECONDS] [REPETITIONS]")
        })
        .collect();
    let ms = args.first().copied().unwrap_or(300).max(10);
    let reps = args.get(1).copied().unwrap_or(5).max(1) as usize;
    for kind in [
        Kind::F32Fma,
        Kind::Bf16Dot,
        Kind::Int8Dot,
        Kind::AmxBf16,
        Kind::AmxInt8,
    ] {
        for threads in [1, 2] {
            let (name, unit) = (kind.name(), kind.unit());
            if kind.supported() {
                let rate = measure(kind, threads, ms, reps) / 1e9;
                println!("peak {name} threads={threads} {unit}={rate:.1}");
            } else {
                println!("peak {name} threads={threads} {unit}=n/a");
            }
        }
    }
}

//! Custom ops, each in the candle four-part form: a public fn with shape/dtype checks, a `*_ref`
//! built from plain candle ops, a private `CustomOpN` whose `cpu_fwd` is a real single-pass
//! implementation (what runs on CPU), and a CUDA kernel in `kernels/<op>.cu` with entry points
//! `<op>_f32`, `<op>_f16`, `<op>_bf16` (compile-checked for sm_80/sm_90 by scripts/check-kernels.sh).
//! With feature `cuda`, each op's `cuda_fwd` launches that kernel; `cuda.rs` compiles the kernels at
//! first use with the machine's NVRTC. Those launchers are compile-verified only, never run on a GPU
//! yet: the GPU parity tests skip without a device, and fail instead under FERRITE_REQUIRE_GPU=1
//! (benches/gpu.sh sets it where a GPU is).
//! A leaf module: no HTTP, no queues.
//!
//! CPU paths compute in f32 whatever the storage dtype (f32, f16, bf16) and round once at the end.

mod add_layer_norm;
mod bf16_matmul;
#[cfg(feature = "cuda")]
mod cuda;
mod gelu_bias;
mod mean_pool;
mod q8_amx;
mod q8_gemv;
mod q8_matmul;
mod q8_vnni;
pub(crate) mod simd;
mod softmax_topk;

pub use add_layer_norm::{add_layer_norm, add_layer_norm_ref};
pub use bf16_matmul::{
    bf16_matmul, bf16_matmul_bias, bf16_matmul_gelu, bf16_matmul_ref, bf16_matmul_with,
    Bf16Weights, Kernel as Bf16Kernel,
};
pub use gelu_bias::{gelu_bias, gelu_bias_ref};
pub use mean_pool::{mean_pool_l2, mean_pool_l2_ref};
pub use q8_amx::{q8_amx_matmul, q8_amx_matmul_bias, q8_amx_matmul_gelu, Q8Packed};
pub use q8_matmul::{q8_matmul, q8_matmul_ref};
pub use softmax_topk::{softmax_topk, softmax_topk_ref};

use std::borrow::Cow;

use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, DType, Layout, Result, Tensor};

/// What a matmul call adds around the product (`bf16_matmul_*`, `q8_amx_matmul_*`): the GELU of
/// x's rows (with this bias) before, the bias after.
#[derive(Clone, Copy)]
pub(crate) struct Ends<'a> {
    pub bias: Option<&'a [f32]>,
    pub gelu_bias: Option<&'a [f32]>,
}

/// The contiguous elements of a float storage as f32 (borrowed when already f32).
pub(crate) fn f32_view<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<Cow<'a, [f32]>> {
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("{what} must be contiguous")
    };
    Ok(match s {
        CpuStorage::F32(v) => Cow::Borrowed(&v[start..end]),
        CpuStorage::F16(v) => Cow::Owned(v[start..end].iter().map(|x| x.to_f32()).collect()),
        CpuStorage::BF16(v) => Cow::Owned(v[start..end].iter().map(|x| x.to_f32()).collect()),
        other => bail!(
            "{what}: dtype {:?} is not supported (f32, f16, bf16)",
            other.dtype()
        ),
    })
}

/// f32 results stored in `dtype`.
pub(crate) fn storage_of(v: Vec<f32>, dtype: DType) -> Result<CpuStorage> {
    Ok(match dtype {
        DType::F32 => CpuStorage::F32(v),
        DType::F16 => CpuStorage::F16(v.into_iter().map(half::f16::from_f32).collect()),
        DType::BF16 => CpuStorage::BF16(v.into_iter().map(half::bf16::from_f32).collect()),
        other => bail!("dtype {other:?} is not supported (f32, f16, bf16)"),
    })
}

pub(crate) fn check_float(t: &Tensor, what: &str) -> Result<()> {
    match t.dtype() {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        other => bail!("{what}: dtype {other:?} is not supported (f32, f16, bf16)"),
    }
}

/// Runs `f` (a reference computed in f64) and rounds its result to `dtype` once.
pub(crate) fn in_f64(dtype: DType, f: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
    f()?.to_dtype(dtype)
}

#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{DType, Device, Tensor};
    use rand::{Rng, SeedableRng};

    /// Sizes that are not multiples of a warp or block.
    pub const ODD_SIZES: [usize; 4] = [1, 31, 33, 1000];

    pub fn randn(seed: u64, shape: &[usize], dtype: DType) -> Tensor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-3.0f32..3.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(dtype)
            .unwrap()
    }

    /// Whether GPU tests must run rather than skip: `FERRITE_REQUIRE_GPU=1` (benches/gpu.sh sets it
    /// where a GPU is present).
    pub fn gpu_required() -> bool {
        std::env::var("FERRITE_REQUIRE_GPU").is_ok_and(|v| v == "1")
    }

    /// CUDA device 0, or `None` with a printed SKIPPED note (the GPU parity test then checks
    /// nothing). Under `FERRITE_REQUIRE_GPU=1` a missing device panics instead: a GPU run cannot
    /// pass by skipping.
    #[cfg(feature = "cuda")]
    pub fn cuda_device(test: &str) -> Option<Device> {
        match Device::new_cuda(0) {
            Ok(d) => Some(d),
            Err(e) => {
                assert!(
                    !gpu_required(),
                    "{test}: no CUDA device ({e}), and FERRITE_REQUIRE_GPU=1 requires one"
                );
                eprintln!(
                    "{test}: SKIPPED, no CUDA device ({e}; with FERRITE_REQUIRE_GPU=1 this fails)"
                );
                None
            }
        }
    }

    /// Without the `cuda` feature there are no GPU parity tests: under `FERRITE_REQUIRE_GPU=1`
    /// (benches/gpu.sh runs the `ops::` tests) that is a failure, not a run that checked nothing.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn gpu_parity_tests_exist_when_a_gpu_is_required() {
        assert!(
            !gpu_required(),
            "FERRITE_REQUIRE_GPU=1 but this test binary was built without the cuda feature"
        );
    }

    /// `t` copied to `dev`.
    pub fn on(dev: &Device, t: &Tensor) -> Tensor {
        t.to_device(dev).unwrap()
    }

    /// `t` copied back to the CPU.
    pub fn cpu(t: Tensor) -> Tensor {
        t.to_device(&Device::Cpu).unwrap()
    }

    /// Tolerance per dtype: relative, with an absolute floor for values near zero.
    pub fn tolerance(dtype: DType) -> f32 {
        match dtype {
            DType::F32 => 1e-5,
            _ => 1e-2,
        }
    }

    /// All elements as f32.
    pub fn vec1(t: &Tensor) -> Vec<f32> {
        t.to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    pub fn assert_close(got: &Tensor, want: &Tensor, dtype: DType, what: &str) {
        assert_eq!(got.dims(), want.dims(), "{what}: shape");
        assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
        let (g, w) = (vec1(got), vec1(want));
        let tol = tolerance(dtype);
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            let err = (a - b).abs();
            assert!(
                err <= tol * b.abs().max(1e-1),
                "{what}: element {i}: {a} vs {b} (tolerance {tol})"
            );
        }
    }
}

//! Loads the kernels of `kernels/` onto a CUDA device (feature `cuda` only). The sources are embedded
//! with `include_str!` and compiled at first use with the machine's own NVRTC for the device's
//! compute capability (`compute_XY` PTX, JIT-assembled by the driver), so the PTX version always
//! matches the installed driver (kernels/README.md). `common.cuh` is inlined in place of its
//! `#include`, and the kernels need no toolkit header, so NVRTC needs no include path. PTX is cached
//! per device and module here; candle's `CudaDevice` caches the loaded module by name.
//! Also the small launch helpers the ops' `cuda_fwd` share. Must not: launch anything itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, CudaView, LaunchConfig};
use candle_core::cuda_backend::cudarc::nvrtc::{
    compile_ptx_with_opts, CompileError, CompileOptions,
};
use candle_core::cuda_backend::{CudaDevice, DeviceId, WrapErr};
use candle_core::{bail, DType, Layout, Result};

/// One kernel file: `kernels/<name>.cu` with entry points `<name>_f32`, `<name>_f16`, `<name>_bf16`.
pub(crate) struct Module {
    pub name: &'static str,
    src: &'static str,
}

pub(crate) const GELU_BIAS: Module = Module {
    name: "gelu_bias",
    src: include_str!("../../kernels/gelu_bias.cu"),
};
pub(crate) const ADD_LAYER_NORM: Module = Module {
    name: "add_layer_norm",
    src: include_str!("../../kernels/add_layer_norm.cu"),
};
pub(crate) const MEAN_POOL_L2: Module = Module {
    name: "mean_pool_l2",
    src: include_str!("../../kernels/mean_pool_l2.cu"),
};
pub(crate) const SOFTMAX_TOPK: Module = Module {
    name: "softmax_topk",
    src: include_str!("../../kernels/softmax_topk.cu"),
};
pub(crate) const Q8_MATMUL: Module = Module {
    name: "q8_matmul",
    src: include_str!("../../kernels/q8_matmul.cu"),
};
#[cfg(test)]
pub(crate) const ALL: [&Module; 5] = [
    &GELU_BIAS,
    &ADD_LAYER_NORM,
    &MEAN_POOL_L2,
    &SOFTMAX_TOPK,
    &Q8_MATMUL,
];

const COMMON: &str = include_str!("../../kernels/common.cuh");
const INCLUDE_COMMON: &str = "#include \"common.cuh\"";

/// Threads per block of every kernel here (kernels/README.md).
pub(crate) const BLOCK: u32 = 256;

/// The module's source with `common.cuh` inlined (NVRTC has no file system include path).
pub(crate) fn source(m: &Module) -> String {
    let common = COMMON.replace("#pragma once", "");
    m.src.replacen(INCLUDE_COMMON, &common, 1)
}

/// PTX for compute capability `cc` (major, minor).
pub(crate) fn compile(m: &Module, cc: (i32, i32)) -> Result<String> {
    let opts = CompileOptions {
        name: Some(format!("{}.cu", m.name)),
        options: vec![
            format!("--gpu-architecture=compute_{}{}", cc.0, cc.1),
            "--std=c++17".to_string(),
        ],
        ..Default::default()
    };
    match compile_ptx_with_opts(source(m), opts) {
        Ok(ptx) => Ok(ptx.to_src()),
        Err(CompileError::CompileError { nvrtc, log, .. }) => bail!(
            "NVRTC could not compile kernels/{}.cu for compute_{}{}: {nvrtc:?}\n{}",
            m.name,
            cc.0,
            cc.1,
            log.to_string_lossy()
        ),
        Err(e) => bail!("NVRTC failed on kernels/{}.cu: {e}", m.name),
    }
}

type PtxCache = HashMap<(DeviceId, &'static str), Arc<str>>;

fn ptx_for(dev: &CudaDevice, m: &Module) -> Result<Arc<str>> {
    static CACHE: OnceLock<Mutex<PtxCache>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (dev.id(), m.name);
    // Short critical sections only: the compile (tens of ms) runs unlocked, so a first use on one
    // device does not stall launches on another; a race compiles twice and keeps one.
    if let Some(ptx) = cache
        .lock()
        .expect("ptx cache poisoned. This is a bug.")
        .get(&key)
    {
        return Ok(ptx.clone());
    }
    let cc = dev.cuda_stream().context().compute_capability().w()?;
    let ptx: Arc<str> = compile(m, cc)?.into();
    let mut cache = cache.lock().expect("ptx cache poisoned. This is a bug.");
    Ok(cache.entry(key).or_insert(ptx).clone())
}

/// The entry point `<module>_<dtype>` on `dev`, compiling and loading the module at first use.
/// Launch it on the device's stream: `dev.cuda_stream().launch_builder(&func)`.
pub(crate) fn func(dev: &CudaDevice, m: &Module, dtype: DType) -> Result<CudaFunction> {
    func_named(dev, m, m.name, dtype)
}

/// Entry point `<entry>_<dtype>` of module `m` (a module may hold more than its namesake kernel).
pub(crate) fn func_named(
    dev: &CudaDevice,
    m: &Module,
    entry: &str,
    dtype: DType,
) -> Result<CudaFunction> {
    let suffix = match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        other => bail!(
            "{}: dtype {other:?} is not supported on CUDA (f32, f16, bf16)",
            m.name
        ),
    };
    let ptx = ptx_for(dev, m)?;
    let func = dev.get_or_load_custom_func(
        &format!("{entry}_{suffix}"),
        &format!("ferrite_{}", m.name),
        &ptx,
    )?;
    Ok(func.into_cuda_function())
}

/// The contiguous elements of `s` under `l`, or an error naming the input.
pub(crate) fn contiguous<'a, T>(
    s: &'a CudaSlice<T>,
    l: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(s.slice(start..end)),
        None => bail!(
            "{what} must be contiguous on CUDA (got strides {:?})",
            l.stride()
        ),
    }
}

/// A size as the kernels' `unsigned` parameter.
pub(crate) fn u32_arg(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("{what} = {v} exceeds u32")))
}

/// One block of `BLOCK` threads per row.
pub(crate) fn per_row(rows: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_inlines_common_once() {
        for m in ALL {
            let s = source(m);
            let directive = |d: &str| s.lines().any(|l| l.trim_start().starts_with(d));
            assert!(!directive("#include"), "{}: must need no header", m.name);
            assert!(!directive("#pragma once"), "{}", m.name);
            assert_eq!(
                s.matches("float warp_sum(float v)").count(),
                1,
                "{}",
                m.name
            );
        }
    }

    /// Needs libnvrtc only (the `cuda` build links it), no GPU or driver: the loader's own compile
    /// path gives PTX with the three entry points (per kernel the launchers use) for sm_80 and sm_90.
    #[test]
    fn kernels_compile_with_nvrtc_for_sm80_and_sm90() {
        for m in ALL {
            // q8_matmul.cu also holds the GEMV kernel (launched by name from ops::q8_matmul).
            let kernels: &[&str] = match m.name {
                "q8_matmul" => &["q8_matmul", "q8_gemv"],
                name => &[name],
            };
            for cc in [(8, 0), (9, 0)] {
                let ptx = compile(m, cc).unwrap_or_else(|e| panic!("{e}"));
                for t in kernels
                    .iter()
                    .flat_map(|k| ["f32", "f16", "bf16"].map(|t| format!("{k}_{t}")))
                {
                    let entry = format!(".entry {t}(");
                    assert!(
                        ptx.contains(&entry),
                        "{} sm_{}{}: no {entry}",
                        m.name,
                        cc.0,
                        cc.1
                    );
                }
            }
        }
    }
}

//! Device discovery and the single CPU-fallback decision. With feature `cuda`, GPUs are enumerated
//! through cudarc (name, UUID, compute capability, memory; `CUDA_VISIBLE_DEVICES` applies as the driver
//! applies it, `--gpus` then picks among the visible ordinals); without it (or with no usable GPU)
//! there is only the CPU, and one log line says so. Where a model's instances go is the
//! repository's decision (`repository::placement`), not this module's.

mod transfer;

pub use transfer::{Transfer, Upload};

pub use crate::config::GpuSelection;

/// Where a model instance runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceId {
    Cpu,
    Gpu(usize),
}

impl std::fmt::Display for DeviceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceId::Cpu => f.write_str("cpu"),
            DeviceId::Gpu(i) => write!(f, "gpu{i}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeviceInfo {
    #[serde(skip)]
    pub id: DeviceId,
    pub name: String,
    pub kind: &'static str,
    /// `GPU-xxxxxxxx-...` as NVML writes it (GPUs only): the `gpu_uuid` metric label.
    pub uuid: Option<String>,
    /// `major.minor` (GPUs only).
    pub compute_capability: Option<String>,
    /// Device memory (GPUs only; the host's comes from telemetry).
    pub memory_total_bytes: Option<u64>,
}

impl DeviceInfo {
    /// The CPU device.
    pub fn cpu(name: String) -> DeviceInfo {
        DeviceInfo {
            id: DeviceId::Cpu,
            name,
            kind: "cpu",
            uuid: None,
            compute_capability: None,
            memory_total_bytes: None,
        }
    }
}

/// Finds the devices to use. The CPU is always present; GPUs only with feature `cuda` and a driver.
pub fn discover(selection: &GpuSelection) -> Vec<DeviceInfo> {
    let mut devices = vec![DeviceInfo::cpu(cpu_name())];
    let gpus = probe_gpus(selection);
    if gpus.is_empty() {
        tracing::info!(
            reason = no_gpu_reason(selection),
            "no GPU in use: every model instance runs on the CPU (candle::Device::Cpu)"
        );
    }
    devices.extend(gpus);
    devices
}

fn no_gpu_reason(selection: &GpuSelection) -> &'static str {
    if !cfg!(feature = "cuda") {
        "built without the 'cuda' feature"
    } else if *selection == GpuSelection::None {
        "--gpus none"
    } else {
        "no usable CUDA device found"
    }
}

/// Whether `--gpus` keeps the visible CUDA ordinal `i`.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn selected(selection: &GpuSelection, i: usize) -> bool {
    match selection {
        GpuSelection::All => true,
        GpuSelection::None => false,
        GpuSelection::List(l) => l.contains(&i),
    }
}

/// NVML's spelling of a device UUID: `GPU-` then 8-4-4-4-12 hex digits.
pub fn format_uuid(bytes: &[u8; 16]) -> String {
    let h: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Compiled only with feature `cuda` (candle forces cudarc's dynamic linking there, so libcuda is
/// present or the binary would not have started; a stub or a driver with no GPU gives an `Err`).
#[cfg(feature = "cuda")]
fn probe_gpus(selection: &GpuSelection) -> Vec<DeviceInfo> {
    use candle_core::cuda_backend::cudarc::driver::CudaContext;
    if *selection == GpuSelection::None {
        return Vec::new();
    }
    let count = match CudaContext::device_count() {
        Ok(n) => usize::try_from(n).unwrap_or(0),
        Err(e) => {
            tracing::info!(error = %e, "CUDA driver reports no usable device");
            return Vec::new();
        }
    };
    (0..count)
        .filter(|&i| selected(selection, i))
        .filter_map(|i| match CudaContext::new(i) {
            Ok(ctx) => Some(DeviceInfo {
                id: DeviceId::Gpu(i),
                name: ctx.name().unwrap_or_else(|_| format!("cuda:{i}")),
                kind: "gpu",
                uuid: ctx
                    .uuid()
                    .ok()
                    .map(|u| format_uuid(&u.bytes.map(|b| b as u8))),
                compute_capability: ctx
                    .compute_capability()
                    .ok()
                    .map(|(a, b)| format!("{a}.{b}")),
                memory_total_bytes: ctx.total_mem().ok().map(|m| m as u64),
            }),
            Err(e) => {
                tracing::warn!(gpu = i, error = %e, "cannot open CUDA device; skipping it");
                None
            }
        })
        .collect()
}

#[cfg(not(feature = "cuda"))]
fn probe_gpus(_selection: &GpuSelection) -> Vec<DeviceInfo> {
    Vec::new()
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "cpu".into())
}

/// The candle device for an id.
pub fn candle_device(id: DeviceId) -> candle_core::Result<candle_core::Device> {
    match id {
        DeviceId::Cpu => Ok(candle_core::Device::Cpu),
        DeviceId::Gpu(i) => candle_core::Device::new_cuda(i),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_without_cuda_or_with_gpus_none_is_cpu_only() {
        let d = discover(&GpuSelection::None);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].id, DeviceId::Cpu);
        assert_eq!(d[0].kind, "cpu");
        if !cfg!(feature = "cuda") {
            assert_eq!(discover(&GpuSelection::All).len(), 1);
        }
    }

    #[test]
    fn gpu_selection_picks_listed_ordinals() {
        assert!(selected(&GpuSelection::All, 3));
        assert!(!selected(&GpuSelection::None, 0));
        assert!(selected(&GpuSelection::List(vec![0, 2]), 2));
        assert!(!selected(&GpuSelection::List(vec![0, 2]), 1));
    }

    #[test]
    fn format_uuid_matches_nvml_spelling() {
        let b: [u8; 16] = core::array::from_fn(|i| i as u8 * 17);
        assert_eq!(format_uuid(&b), "GPU-00112233-4455-6677-8899-aabbccddeeff");
    }
}

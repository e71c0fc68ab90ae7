//! Device discovery and the single CPU-fallback decision. With feature `cuda`, GPUs are enumerated
//! through cudarc (name, UUID, compute capability, memory; `CUDA_VISIBLE_DEVICES` applies as the driver
//! applies it, `--gpus` then picks among the visible ordinals); without it (or with no usable GPU)
//! there is only the CPU, and one log line says so. Also the placement of a model's instance groups
//! onto devices.

mod transfer;

pub use transfer::{Transfer, Upload};

use crate::repository::config::{InstanceGroup, InstanceKind};

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

/// Which GPUs the operator allows (`--gpus`): all visible ones, none, or a list of ordinals.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum GpuSelection {
    #[default]
    All,
    None,
    List(Vec<usize>),
}

impl std::str::FromStr for GpuSelection {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "all" | "" => Ok(GpuSelection::All),
            "none" => Ok(GpuSelection::None),
            list => list
                .split(',')
                .map(|p| {
                    p.trim().parse::<usize>().map_err(|_| {
                        format!("'{p}' is not a GPU ordinal (expected all, none or e.g. 0,1)")
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(GpuSelection::List),
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

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlacementError {
    #[error("instance_group {group}: kind = \"gpu\" but no GPU is available")]
    NoGpu { group: usize },
    #[error("instance_group {group}: GPU {gpu} is not available (available: {available:?})")]
    MissingGpu {
        group: usize,
        gpu: usize,
        available: Vec<usize>,
    },
}

/// Places instance groups onto devices: `(device, instance count)` pairs, one per device used.
/// `auto` means every available GPU, else the CPU.
pub fn place(
    groups: &[InstanceGroup],
    devices: &[DeviceInfo],
) -> Result<Vec<(DeviceId, usize)>, PlacementError> {
    let gpus: Vec<usize> = devices
        .iter()
        .filter_map(|d| match d.id {
            DeviceId::Gpu(i) => Some(i),
            DeviceId::Cpu => None,
        })
        .collect();
    let mut out: Vec<(DeviceId, usize)> = Vec::new();
    let mut add = |id: DeviceId, n: usize| match out.iter_mut().find(|(d, _)| *d == id) {
        Some((_, c)) => *c += n,
        None => out.push((id, n)),
    };
    for (gi, g) in groups.iter().enumerate() {
        let on_gpus = |list: &Option<Vec<usize>>| -> Result<Vec<usize>, PlacementError> {
            match list {
                None => Ok(gpus.clone()),
                Some(l) => l
                    .iter()
                    .map(|&i| {
                        if gpus.contains(&i) {
                            Ok(i)
                        } else {
                            Err(PlacementError::MissingGpu {
                                group: gi,
                                gpu: i,
                                available: gpus.clone(),
                            })
                        }
                    })
                    .collect(),
            }
        };
        match g.kind {
            InstanceKind::Cpu => add(DeviceId::Cpu, g.count),
            InstanceKind::Gpu => {
                let l = on_gpus(&g.gpus)?;
                if l.is_empty() {
                    return Err(PlacementError::NoGpu { group: gi });
                }
                l.into_iter().for_each(|i| add(DeviceId::Gpu(i), g.count));
            }
            InstanceKind::Auto => {
                let l = if gpus.is_empty() {
                    Vec::new()
                } else {
                    on_gpus(&g.gpus)?
                };
                if l.is_empty() {
                    add(DeviceId::Cpu, g.count);
                }
                l.into_iter().for_each(|i| add(DeviceId::Gpu(i), g.count));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(kind: InstanceKind, count: usize, gpus: Option<Vec<usize>>) -> InstanceGroup {
        InstanceGroup { count, kind, gpus }
    }

    fn devs(n_gpus: usize) -> Vec<DeviceInfo> {
        let mut d = vec![DeviceInfo::cpu("cpu".into())];
        d.extend((0..n_gpus).map(|i| DeviceInfo {
            id: DeviceId::Gpu(i),
            name: format!("cuda:{i}"),
            kind: "gpu",
            uuid: Some(format!("GPU-{i}")),
            compute_capability: Some("9.0".into()),
            memory_total_bytes: Some(80 << 30),
        }));
        d
    }

    #[test]
    fn place_auto_without_gpu_falls_back_to_cpu() {
        let p = place(&[group(InstanceKind::Auto, 2, None)], &devs(0)).unwrap();
        assert_eq!(p, vec![(DeviceId::Cpu, 2)]);
    }

    #[test]
    fn place_auto_with_gpus_uses_each_gpu() {
        let p = place(&[group(InstanceKind::Auto, 2, None)], &devs(2)).unwrap();
        assert_eq!(p, vec![(DeviceId::Gpu(0), 2), (DeviceId::Gpu(1), 2)]);
    }

    #[test]
    fn place_gpu_kind_without_gpu_is_error() {
        let e = place(&[group(InstanceKind::Gpu, 1, None)], &devs(0)).unwrap_err();
        assert_eq!(e, PlacementError::NoGpu { group: 0 });
    }

    #[test]
    fn place_listed_missing_gpu_is_error() {
        let e = place(&[group(InstanceKind::Gpu, 1, Some(vec![3]))], &devs(2)).unwrap_err();
        assert!(matches!(e, PlacementError::MissingGpu { gpu: 3, .. }));
    }

    #[test]
    fn place_groups_on_same_device_add_up() {
        let g = [
            group(InstanceKind::Cpu, 1, None),
            group(InstanceKind::Cpu, 2, None),
        ];
        assert_eq!(place(&g, &devs(1)).unwrap(), vec![(DeviceId::Cpu, 3)]);
    }

    #[test]
    fn place_two_instances_on_each_of_two_gpus_plus_cpu_group() {
        let g = [
            group(InstanceKind::Gpu, 2, None),
            group(InstanceKind::Cpu, 1, None),
        ];
        assert_eq!(
            place(&g, &devs(2)).unwrap(),
            vec![
                (DeviceId::Gpu(0), 2),
                (DeviceId::Gpu(1), 2),
                (DeviceId::Cpu, 1)
            ]
        );
    }

    #[test]
    fn place_listed_gpus_only_on_those() {
        let g = [group(InstanceKind::Auto, 3, Some(vec![1]))];
        assert_eq!(place(&g, &devs(2)).unwrap(), vec![(DeviceId::Gpu(1), 3)]);
    }

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

    #[test]
    fn gpu_selection_parses_lists() {
        assert_eq!("0,2".parse(), Ok(GpuSelection::List(vec![0, 2])));
        assert_eq!("none".parse(), Ok(GpuSelection::None));
        assert!("x".parse::<GpuSelection>().is_err());
    }
}

//! Where a model version's instances run and how its queue batches: instance groups placed onto the
//! discovered devices, prefetch per device, and the batcher's view of the config. Pure decisions
//! over the spec and the device list; no threads or I/O.

use std::time::Duration;

use crate::batcher::BatchConfig;
use crate::device::{DeviceId, DeviceInfo};
use crate::spec::{InstanceGroup, InstanceKind, ModelConfig};

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

/// Whether instances on `device` prefetch (config `prefetch`; default: on GPUs, off on the CPU).
pub fn prefetch_on(config: &ModelConfig, device: DeviceId) -> bool {
    config
        .prefetch
        .unwrap_or(matches!(device, DeviceId::Gpu(_)))
}

/// The batcher's view of a config.
pub fn batch_config(config: &ModelConfig) -> BatchConfig {
    let db = &config.dynamic_batching;
    let mut preferred = db.preferred_batch_sizes.clone();
    preferred.sort_unstable();
    preferred.dedup();
    BatchConfig {
        max_batch_size: config.max_batch_size.max(1),
        max_queue_delay: Duration::from_micros(db.max_queue_delay_us),
        preferred_batch_sizes: preferred,
        max_queue_size: db.max_queue_size,
        default_timeout: (db.default_timeout_us > 0)
            .then(|| Duration::from_micros(db.default_timeout_us)),
        priority_levels: db.priority_levels,
        default_priority: match db.default_priority_level {
            0 => db.priority_levels,
            p => p,
        },
        max_batch_tokens: (db.max_batch_tokens > 0).then_some(db.max_batch_tokens),
        bulk_share: f64::from(db.job_share_percent) / 100.0,
        bulk_quiet: Duration::from_millis(db.job_quiet_ms),
        max_queue_time: (db.max_queue_time_us > 0)
            .then(|| Duration::from_micros(db.max_queue_time_us)),
    }
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
    fn prefetch_defaults_on_for_gpus_only_and_config_wins() {
        let mut c = ModelConfig::parse(CONFIG, "m").unwrap();
        assert!(!prefetch_on(&c, DeviceId::Cpu));
        assert!(prefetch_on(&c, DeviceId::Gpu(0)));
        c.prefetch = Some(true);
        assert!(prefetch_on(&c, DeviceId::Cpu));
    }

    #[test]
    fn batch_config_sorts_preferred_and_maps_default_priority() {
        let c = ModelConfig::parse(CONFIG, "m").unwrap();
        let b = batch_config(&c);
        assert_eq!(b.preferred_batch_sizes, vec![2, 4]);
        assert_eq!(b.max_queue_delay, Duration::from_micros(100));
        assert_eq!(b.default_priority, 3, "level 0 = the lowest of 3");
        assert_eq!(b.max_batch_tokens, None);
    }

    const CONFIG: &str = r#"
architecture = "mlp"
max_batch_size = 8
[[input]]
name = "x"
datatype = "FP32"
dims = [-1, 4]
[[output]]
name = "y"
datatype = "FP32"
dims = [-1, 2]
[dynamic_batching]
max_queue_delay_us = 100
preferred_batch_sizes = [4, 2, 4]
priority_levels = 3
"#;
}

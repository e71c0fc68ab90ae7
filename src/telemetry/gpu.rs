//! GPU readings behind one trait, `GpuSource`: the real one is NVML through nvml-wrapper, which
//! dlopens `libnvidia-ml.so.1` at run time (so the binary never links it and starts on any host);
//! `SimulatedSource` stands in for tests. Units are converted here to the ones Triton exports:
//! utilisation 0–1, bytes, watts, joules, hertz. Which GPUs count follows `CUDA_VISIBLE_DEVICES`.

use std::ffi::OsStr;

use nvml_wrapper::enum_wrappers::device::{Clock, TemperatureSensor};
use nvml_wrapper::Nvml;

/// One reading of one GPU. Fields a GPU or driver does not support are `None` and not exported.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GpuSample {
    /// CUDA ordinal as this process sees it (position among the visible GPUs).
    pub ordinal: usize,
    /// NVML's UUID, `GPU-xxxxxxxx-...`: the `gpu_uuid` label.
    pub uuid: String,
    pub name: String,
    pub utilization: Option<f64>,
    pub memory_total_bytes: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    pub power_usage_watts: Option<f64>,
    pub power_limit_watts: Option<f64>,
    /// Energy since the driver was loaded, joules (the exporter turns it into "since start").
    pub energy_joules: Option<f64>,
    pub temperature_celsius: Option<f64>,
    pub sm_clock_hz: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GpuError {
    #[error("NVML is not available ({0}); GPU metrics are off")]
    Unavailable(String),
    #[error("NVML query failed: {0}")]
    Query(String),
}

/// Where GPU readings come from. Called from the sampler thread only.
pub trait GpuSource: Send {
    /// Every visible GPU, in CUDA ordinal order.
    fn sample(&mut self) -> Result<Vec<GpuSample>, GpuError>;
}

/// One entry of `CUDA_VISIBLE_DEVICES`: an ordinal or a (prefix of a) UUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visible {
    Index(u32),
    Uuid(String),
}

/// Parses `CUDA_VISIBLE_DEVICES` as CUDA does: entries up to the first invalid one (so `""` and
/// `"-1"` hide every GPU). `None` (unset) means every GPU is visible.
pub fn parse_visible(var: Option<&str>) -> Option<Vec<Visible>> {
    let var = var?;
    let mut out = Vec::new();
    for e in var.split(',').map(str::trim) {
        if let Ok(i) = e.parse::<u32>() {
            out.push(Visible::Index(i));
        } else if e.starts_with("GPU-") || e.starts_with("MIG-") {
            out.push(Visible::Uuid(e.to_string()));
        } else {
            break;
        }
    }
    Some(out)
}

/// The NVML indices visible to CUDA, in CUDA ordinal order. `devices` are `(nvml index, uuid)`.
/// Index entries are NVML (PCI bus) indices: exact when `CUDA_DEVICE_ORDER=PCI_BUS_ID`.
pub fn visible_indices(visible: Option<&[Visible]>, devices: &[(u32, String)]) -> Vec<u32> {
    let Some(visible) = visible else {
        return devices.iter().map(|(i, _)| *i).collect();
    };
    let mut out: Vec<u32> = Vec::new();
    for v in visible {
        let found = devices.iter().find(|(i, uuid)| match v {
            Visible::Index(n) => i == n,
            Visible::Uuid(p) => uuid.starts_with(p.as_str()),
        });
        match found {
            Some((i, _)) if !out.contains(i) => out.push(*i),
            _ => break, // CUDA stops at an unknown or repeated entry too
        }
    }
    out
}

/// NVML, loaded at run time.
pub struct NvmlSource {
    nvml: Nvml,
    /// NVML indices in CUDA ordinal order.
    indices: Vec<u32>,
}

fn query<E: std::fmt::Display>(e: E) -> GpuError {
    GpuError::Query(e.to_string())
}

impl NvmlSource {
    /// Loads `libnvidia-ml.so.1` (then `libnvidia-ml.so`) and lists the visible GPUs.
    pub fn open() -> Result<NvmlSource, GpuError> {
        let nvml = Nvml::builder()
            .lib_path(OsStr::new("libnvidia-ml.so.1"))
            .init()
            .or_else(|_| Nvml::init())
            .map_err(|e| GpuError::Unavailable(e.to_string()))?;
        let count = nvml.device_count().map_err(query)?;
        let mut all = Vec::new();
        for i in 0..count {
            // A device NVML cannot read keeps its place (CUDA ordinals follow the order) under a
            // name no CUDA_VISIBLE_DEVICES entry matches; `sample` then leaves it out.
            let uuid = nvml.device_by_index(i).and_then(|d| d.uuid());
            let uuid = uuid.unwrap_or_else(|e| {
                tracing::warn!(nvml_index = i, error = %e, "NVML cannot read this GPU's UUID");
                format!("unreadable-nvml-device-{i}")
            });
            all.push((i, uuid));
        }
        let var = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        let visible = parse_visible(var.as_deref());
        let indices = visible_indices(visible.as_deref(), &all);
        Ok(NvmlSource { nvml, indices })
    }
}

impl GpuSource for NvmlSource {
    fn sample(&mut self) -> Result<Vec<GpuSample>, GpuError> {
        let mut out = Vec::with_capacity(self.indices.len());
        for (ordinal, &i) in self.indices.iter().enumerate() {
            // One GPU that stops answering (fallen off the bus, ...) is left out of this sample;
            // the others are still read (the exporter drops the missing one's series).
            let Ok((d, uuid)) = self
                .nvml
                .device_by_index(i)
                .and_then(|d| d.uuid().map(|u| (d, u)))
            else {
                continue;
            };
            let mem = d.memory_info().ok();
            out.push(GpuSample {
                ordinal,
                uuid,
                name: d.name().unwrap_or_default(),
                utilization: d.utilization_rates().ok().map(|u| f64::from(u.gpu) / 100.0),
                memory_total_bytes: mem.as_ref().map(|m| m.total),
                memory_used_bytes: mem.as_ref().map(|m| m.used),
                power_usage_watts: d.power_usage().ok().map(|mw| f64::from(mw) / 1e3),
                power_limit_watts: d.enforced_power_limit().ok().map(|mw| f64::from(mw) / 1e3),
                energy_joules: d.total_energy_consumption().ok().map(|mj| mj as f64 / 1e3),
                temperature_celsius: d.temperature(TemperatureSensor::Gpu).ok().map(f64::from),
                sm_clock_hz: d.clock_info(Clock::SM).ok().map(|mhz| f64::from(mhz) * 1e6),
            });
        }
        Ok(out)
    }
}

/// A fake source for tests: fixed GPUs whose energy grows by `energy_step_joules` per sample.
#[derive(Debug, Clone)]
pub struct SimulatedSource {
    pub gpus: Vec<GpuSample>,
    pub energy_step_joules: f64,
}

impl SimulatedSource {
    /// `n` GPUs with plausible readings (an 80 GB card at 50% utilisation, 300 of 700 W).
    pub fn new(n: usize) -> SimulatedSource {
        let gpus = (0..n)
            .map(|i| GpuSample {
                ordinal: i,
                uuid: format!("GPU-00000000-0000-0000-0000-00000000000{i}"),
                name: "Simulated H100".into(),
                utilization: Some(0.5),
                memory_total_bytes: Some(80 << 30),
                memory_used_bytes: Some(20 << 30),
                power_usage_watts: Some(300.0),
                power_limit_watts: Some(700.0),
                energy_joules: Some(1000.0),
                temperature_celsius: Some(55.0),
                sm_clock_hz: Some(1.98e9),
            })
            .collect();
        SimulatedSource {
            gpus,
            energy_step_joules: 300.0,
        }
    }
}

impl GpuSource for SimulatedSource {
    fn sample(&mut self) -> Result<Vec<GpuSample>, GpuError> {
        for g in &mut self.gpus {
            g.energy_joules = g.energy_joules.map(|e| e + self.energy_step_joules);
        }
        Ok(self.gpus.clone())
    }
}

/// The source the server uses: NVML, or `Err` (logged once by the caller) where it is missing.
pub fn open_default() -> Result<Box<dyn GpuSource>, GpuError> {
    NvmlSource::open().map(|s| Box::new(s) as Box<dyn GpuSource>)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devs() -> Vec<(u32, String)> {
        (0..4).map(|i| (i, format!("GPU-aaaa{i}-uuid"))).collect()
    }

    #[test]
    fn visible_unset_means_every_gpu() {
        assert_eq!(
            visible_indices(parse_visible(None).as_deref(), &devs()),
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn visible_list_reorders_and_stops_at_invalid() {
        let v = parse_visible(Some("2,0,x,1"));
        assert_eq!(visible_indices(v.as_deref(), &devs()), [2, 0]);
        let v = parse_visible(Some("GPU-aaaa3,1"));
        assert_eq!(visible_indices(v.as_deref(), &devs()), [3, 1]);
    }

    #[test]
    fn visible_empty_or_minus_one_hides_all() {
        for s in ["", "-1", "7"] {
            let v = parse_visible(Some(s));
            assert!(visible_indices(v.as_deref(), &devs()).is_empty(), "{s}");
        }
    }

    #[test]
    fn nvml_open_without_library_is_unavailable_not_panic() {
        // Here (no NVIDIA driver) this is the missing-library path; on a GPU host it succeeds.
        match NvmlSource::open() {
            Err(GpuError::Unavailable(m)) => assert!(!m.is_empty()),
            Err(GpuError::Query(m)) => panic!("query error without a GPU: {m}"),
            Ok(mut s) => assert!(s.sample().is_ok()),
        }
    }

    #[test]
    fn simulated_source_energy_grows() {
        let mut s = SimulatedSource::new(1);
        let a = s.sample().unwrap()[0].energy_joules.unwrap();
        let b = s.sample().unwrap()[0].energy_joules.unwrap();
        assert_eq!(b - a, 300.0);
    }
}

//! GPU readings behind one trait, `GpuSource`: the real one is NVML through nvml-wrapper, which
//! dlopens `libnvidia-ml.so.1` at run time (so the binary never links it and starts on any host);
//! `SimulatedSource` stands in for tests (a test can steer it one sample at a time). Units are
//! converted here to the ones Triton exports: utilisation 0–1, bytes, watts, joules, hertz. Which
//! GPUs count follows `CUDA_VISIBLE_DEVICES`.

use std::ffi::OsStr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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

/// The libraries `NvmlSource::open` tries, in order: the driver's soname, then the dev symlink.
const NVML_LIBRARIES: [&str; 2] = ["libnvidia-ml.so.1", "libnvidia-ml.so"];

/// What NVML reports for one GPU, in NVML's units; `None` where the GPU or driver does not support
/// a field. `sample` converts it to Triton's units.
#[derive(Debug, Clone, Default, PartialEq)]
struct NvmlReading {
    utilization_percent: Option<u32>,
    /// (total, used) bytes.
    memory_bytes: Option<(u64, u64)>,
    power_usage_mw: Option<u32>,
    power_limit_mw: Option<u32>,
    /// Since the driver was loaded.
    energy_mj: Option<u64>,
    temperature_c: Option<u32>,
    sm_clock_mhz: Option<u32>,
}

impl NvmlReading {
    /// Triton's units: utilisation 0–1, bytes, watts, joules, hertz.
    fn to_sample(&self, ordinal: usize, uuid: String, name: String) -> GpuSample {
        GpuSample {
            ordinal,
            uuid,
            name,
            utilization: self.utilization_percent.map(|p| f64::from(p) / 100.0),
            memory_total_bytes: self.memory_bytes.map(|(total, _)| total),
            memory_used_bytes: self.memory_bytes.map(|(_, used)| used),
            power_usage_watts: self.power_usage_mw.map(|mw| f64::from(mw) / 1e3),
            power_limit_watts: self.power_limit_mw.map(|mw| f64::from(mw) / 1e3),
            energy_joules: self.energy_mj.map(|mj| mj as f64 / 1e3),
            temperature_celsius: self.temperature_c.map(f64::from),
            sm_clock_hz: self.sm_clock_mhz.map(|mhz| f64::from(mhz) * 1e6),
        }
    }
}

impl NvmlSource {
    /// Loads `libnvidia-ml.so.1` (then `libnvidia-ml.so`) and lists the visible GPUs.
    pub fn open() -> Result<NvmlSource, GpuError> {
        Self::open_from(&NVML_LIBRARIES)
    }

    /// Loads the first of `libraries` that loads; `Unavailable`, naming each failure, if none does.
    fn open_from(libraries: &[&str]) -> Result<NvmlSource, GpuError> {
        let mut failures = Vec::new();
        let nvml = libraries
            .iter()
            .find_map(
                |lib| match Nvml::builder().lib_path(OsStr::new(lib)).init() {
                    Ok(n) => Some(n),
                    Err(e) => {
                        failures.push(format!("{lib}: {e}"));
                        None
                    }
                },
            )
            .ok_or_else(|| GpuError::Unavailable(failures.join("; ")))?;
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
            let reading = NvmlReading {
                utilization_percent: d.utilization_rates().ok().map(|u| u.gpu),
                memory_bytes: d.memory_info().ok().map(|m| (m.total, m.used)),
                power_usage_mw: d.power_usage().ok(),
                power_limit_mw: d.enforced_power_limit().ok(),
                energy_mj: d.total_energy_consumption().ok(),
                temperature_c: d.temperature(TemperatureSensor::Gpu).ok(),
                sm_clock_mhz: d.clock_info(Clock::SM).ok(),
            };
            out.push(reading.to_sample(ordinal, uuid, d.name().unwrap_or_default()));
        }
        Ok(out)
    }
}

/// A fake source for tests, behind the same trait as NVML: fixed GPUs whose energy grows by 300 J
/// per sample. A test steers it through `SimulatedGpus` (from `SimulatedSource::stepped`): change a
/// reading, make a GPU unreadable or the whole query fail, and let the sampler take exactly one
/// more sample, so that what `/metrics` shows is known without sleeping.
#[derive(Debug)]
pub struct SimulatedSource {
    shared: Arc<Simulated>,
}

/// The test's side of a stepped `SimulatedSource`. Dropping it lets the sampler run freely again.
#[derive(Debug)]
pub struct SimulatedGpus {
    shared: Arc<Simulated>,
}

#[derive(Debug)]
struct Simulated {
    /// Shared by the sampler thread and the test; held for a few field updates, never across a
    /// wait (the condvar releases it).
    state: Mutex<SimState>,
    changed: Condvar,
}

#[derive(Debug)]
struct SimState {
    gpus: Vec<GpuSample>,
    /// Left out of readings, as `NvmlSource` leaves out a GPU that stopped answering.
    unreadable: Vec<bool>,
    /// Returned by the next samples instead of readings while set.
    failure: Option<GpuError>,
    energy_step_joules: f64,
    /// Stepped mode: `sample` waits for a pass before reading.
    stepped: bool,
    passes: u64,
    /// Samples that have returned.
    completed: u64,
    /// A `sample` call is waiting for a pass.
    waiting: bool,
}

/// How long either side waits for the other before giving up (a test bug, never a normal wait).
const SIM_WAIT: Duration = Duration::from_secs(20);

impl SimulatedSource {
    /// `n` GPUs with plausible readings (an 80 GB card at 50% utilisation, 300 of 700 W), sampled
    /// freely.
    pub fn new(n: usize) -> SimulatedSource {
        Self::with_mode(n, false)
    }

    /// As `new`, but each sample after the first waits until the test lets it through with
    /// `SimulatedGpus::step` (the sampler takes its first reading while the server starts).
    pub fn stepped(n: usize) -> (SimulatedSource, SimulatedGpus) {
        let src = Self::with_mode(n, true);
        let gpus = SimulatedGpus {
            shared: src.shared.clone(),
        };
        (src, gpus)
    }

    fn with_mode(n: usize, stepped: bool) -> SimulatedSource {
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
            shared: Arc::new(Simulated {
                state: Mutex::new(SimState {
                    gpus,
                    unreadable: vec![false; n],
                    failure: None,
                    energy_step_joules: 300.0,
                    stepped,
                    passes: 1,
                    completed: 0,
                    waiting: false,
                }),
                changed: Condvar::new(),
            }),
        }
    }
}

impl Simulated {
    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A test that panicked while holding the lock must not hide its own failure behind ours.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl GpuSource for SimulatedSource {
    fn sample(&mut self) -> Result<Vec<GpuSample>, GpuError> {
        let sim = &self.shared;
        let mut st = sim.lock();
        if st.stepped {
            st.waiting = true;
            sim.changed.notify_all();
            let deadline = Instant::now() + SIM_WAIT;
            while st.stepped && st.passes == 0 && Instant::now() < deadline {
                st = sim
                    .changed
                    .wait_timeout(st, deadline.saturating_duration_since(Instant::now()))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            st.waiting = false;
            st.passes = st.passes.saturating_sub(1);
        }
        let step = st.energy_step_joules;
        for g in &mut st.gpus {
            g.energy_joules = g.energy_joules.map(|e| e + step);
        }
        let out = match &st.failure {
            Some(e) => Err(e.clone()),
            None => Ok(st
                .gpus
                .iter()
                .zip(&st.unreadable)
                .filter(|(_, unreadable)| !**unreadable)
                .map(|(g, _)| g.clone())
                .collect()),
        };
        st.completed += 1;
        sim.changed.notify_all();
        out
    }
}

impl SimulatedGpus {
    /// Waits until the sampler has exported every sample taken so far and is waiting for the next
    /// one; returns how many samples it has taken. From here until `step`, `/metrics` is stable.
    pub fn settled(&self) -> u64 {
        let sim = &self.shared;
        let mut st = sim.lock();
        let deadline = Instant::now() + SIM_WAIT;
        // `waiting` is set by the next `sample` call, which the sampler makes only after it has
        // exported the previous reading.
        while !(st.waiting && st.passes == 0) {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("the sampler did not ask for a GPU reading"));
            st = sim
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        st.completed
    }

    /// Lets exactly one more sample through and waits until the sampler has exported it; returns
    /// how many samples it has taken.
    pub fn step(&self) -> u64 {
        let before = self.settled();
        self.shared.lock().passes += 1;
        self.shared.changed.notify_all();
        let after = self.settled();
        assert_eq!(after, before + 1, "one step is one sample");
        after
    }

    /// Changes GPU `ordinal`'s next readings.
    pub fn update(&self, ordinal: usize, f: impl FnOnce(&mut GpuSample)) {
        f(&mut self.shared.lock().gpus[ordinal]);
    }

    /// Makes GPU `ordinal` missing from the next readings (NVML stopped answering for it), or back.
    pub fn set_unreadable(&self, ordinal: usize, unreadable: bool) {
        self.shared.lock().unreadable[ordinal] = unreadable;
    }

    /// Makes the next samples fail as a whole with `e` (a failed NVML query), or succeed again.
    pub fn set_failure(&self, e: Option<GpuError>) {
        self.shared.lock().failure = e;
    }
}

impl Drop for SimulatedGpus {
    fn drop(&mut self) {
        self.shared.lock().stepped = false;
        self.shared.changed.notify_all();
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

    /// NVML's units become Triton's (percent -> 0-1, mW -> W, mJ -> J, MHz -> Hz); what the driver
    /// does not support stays `None` (and is not exported).
    #[test]
    fn nvml_reading_converts_to_triton_units_and_keeps_unsupported_fields_out() {
        let r = NvmlReading {
            utilization_percent: Some(37),
            memory_bytes: Some((80 << 30, 3 << 30)),
            power_usage_mw: Some(123_456),
            power_limit_mw: Some(700_000),
            energy_mj: Some(5_000_250),
            temperature_c: Some(61),
            sm_clock_mhz: Some(1980),
        };
        let s = r.to_sample(1, "GPU-x".into(), "H200".into());
        assert_eq!(
            s,
            GpuSample {
                ordinal: 1,
                uuid: "GPU-x".into(),
                name: "H200".into(),
                utilization: Some(0.37),
                memory_total_bytes: Some(80 << 30),
                memory_used_bytes: Some(3 << 30),
                power_usage_watts: Some(123.456),
                power_limit_watts: Some(700.0),
                energy_joules: Some(5000.25),
                temperature_celsius: Some(61.0),
                sm_clock_hz: Some(1.98e9),
            }
        );
        let none = NvmlReading::default().to_sample(0, "GPU-y".into(), String::new());
        assert_eq!(
            (
                none.utilization,
                none.memory_total_bytes,
                none.power_usage_watts
            ),
            (None, None, None)
        );
        assert_eq!(
            (
                none.energy_joules,
                none.temperature_celsius,
                none.sm_clock_hz
            ),
            (None, None, None)
        );
    }

    /// A host without the NVIDIA driver: `open` reports every library it tried, as `Unavailable`
    /// (the server then logs once and exports no GPU gauges), never a panic or a query error.
    #[test]
    fn nvml_missing_library_is_unavailable_naming_each_library_tried() {
        let libs = [
            "/nonexistent/libnvidia-ml.so.1",
            "/nonexistent/libnvidia-ml.so",
        ];
        match NvmlSource::open_from(&libs) {
            Err(GpuError::Unavailable(m)) => {
                for lib in libs {
                    assert!(m.contains(lib), "{m}");
                }
            }
            Err(e) => panic!("expected Unavailable, got {e}"),
            Ok(_) => panic!("a library that does not exist loaded"),
        }
    }

    /// The real NVML on this host. With `FERRITE_REQUIRE_GPU=1` (benches/gpu.sh on a GPU machine)
    /// it must load and read every visible GPU with sane values; elsewhere a host without the
    /// driver is `Unavailable` (said as SKIPPED), and a host with it is checked the same way.
    #[test]
    fn nvml_on_this_host_reads_each_visible_gpu_in_triton_units() {
        let required = std::env::var("FERRITE_REQUIRE_GPU").is_ok_and(|v| v == "1");
        let mut src = match NvmlSource::open() {
            Ok(s) => s,
            Err(GpuError::Unavailable(m)) if !required => {
                eprintln!("nvml_on_this_host: SKIPPED, no NVML ({m}; with FERRITE_REQUIRE_GPU=1 this fails)");
                return;
            }
            Err(e) => panic!("NVML on this host: {e}"),
        };
        let gpus = src.sample().expect("sample");
        if required {
            assert!(
                !gpus.is_empty(),
                "FERRITE_REQUIRE_GPU=1 but NVML lists no GPU"
            );
        }
        for (i, g) in gpus.iter().enumerate() {
            assert_eq!(g.ordinal, i);
            assert!(g.uuid.starts_with("GPU-"), "{g:?}");
            let u = g.utilization.expect("utilization");
            assert!((0.0..=1.0).contains(&u), "{g:?}");
            let (total, used) = (g.memory_total_bytes.unwrap(), g.memory_used_bytes.unwrap());
            assert!(total >= 1 << 30 && used <= total, "{g:?}");
            if let Some(w) = g.power_usage_watts {
                assert!(w > 0.0 && w < 5000.0, "{g:?}");
            }
        }
    }
}

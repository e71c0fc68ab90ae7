//! The telemetry sampler: one named OS thread (`ferrite-telemetry`) that reads the host (`/proc`)
//! and, when a `GpuSource` opened, every GPU at an interval (default 1 s), exports the readings as
//! gauges and keeps the latest ones for `GET /v2/devices`. Stopped by a channel signal and joined.
//! NVML calls block for milliseconds, so they never run on the async side.

use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::gpu::{GpuError, GpuSample, GpuSource};
use super::system::{CpuReader, CpuSample};
use super::Metrics;

/// The latest readings.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Snapshot {
    /// Milliseconds since the Unix epoch of this reading (0: none yet).
    pub unix_ms: u64,
    pub cpu: Option<CpuSample>,
    pub gpus: Vec<GpuSample>,
    /// Why there are no GPU readings, if a source was expected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_error: Option<String>,
}

/// Cheap handle on the latest snapshot; what the API reads.
#[derive(Clone, Default)]
pub struct Telemetry {
    /// Written once per interval by the sampler, read by `/v2/devices`; short sections only.
    latest: Arc<RwLock<Snapshot>>,
}

impl Telemetry {
    pub fn latest(&self) -> Snapshot {
        self.latest
            .read()
            .expect("telemetry lock poisoned. This is a bug.")
            .clone()
    }

    fn store(&self, s: Snapshot) {
        *self
            .latest
            .write()
            .expect("telemetry lock poisoned. This is a bug.") = s;
    }
}

/// The running sampler thread; dropping it stops and joins the thread.
pub struct Sampler {
    telemetry: Telemetry,
    stop: Option<flume::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

struct State {
    gpu: Option<Box<dyn GpuSource>>,
    gpu_error: Option<String>,
    cpu: CpuReader,
    metrics: Arc<Metrics>,
    telemetry: Telemetry,
}

impl State {
    fn tick(&mut self) {
        let cpu = self.cpu.sample();
        if let Some(c) = &cpu {
            self.metrics.record_cpu(c);
        }
        let gpus = match self.gpu.as_mut().map(|g| g.sample()) {
            Some(Ok(g)) => {
                if self.gpu_error.take().is_some() {
                    tracing::info!("GPU readings are back");
                }
                self.metrics.record_gpus(&g);
                g
            }
            Some(Err(e)) => {
                if self.gpu_error.is_none() {
                    tracing::warn!(error = %e, "GPU sampling failed; keeping the last GPU gauges");
                }
                self.gpu_error = Some(e.to_string());
                Vec::new()
            }
            None => Vec::new(),
        };
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.telemetry.store(Snapshot {
            unix_ms,
            cpu,
            gpus,
            gpu_error: self.gpu_error.clone(),
        });
    }
}

impl Sampler {
    /// Takes a first reading now (so `/metrics` has CPU gauges from the start), then starts the
    /// thread. `gpu` is the opened source, or why there is none: that is logged once, as a warning.
    pub fn spawn(
        gpu: Result<Box<dyn GpuSource>, GpuError>,
        interval: Duration,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Sampler> {
        let (gpu, gpu_error) = match gpu {
            Ok(g) => (Some(g), None),
            Err(e) => {
                tracing::warn!(error = %e, "no GPU telemetry: NVML could not be loaded; nv_gpu_* metrics are not exported");
                (None, Some(e.to_string()))
            }
        };
        let telemetry = Telemetry::default();
        let mut state = State {
            gpu,
            gpu_error,
            cpu: CpuReader::default(),
            metrics,
            telemetry: telemetry.clone(),
        };
        state.tick();
        let (stop, stopped) = flume::bounded::<()>(1);
        let thread = std::thread::Builder::new()
            .name("ferrite-telemetry".into())
            .spawn(move || {
                while let Err(flume::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    state.tick();
                }
            })?;
        Ok(Sampler {
            telemetry,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn telemetry(&self) -> Telemetry {
        self.telemetry.clone()
    }

    /// Signals the thread and joins it (at most one NVML sample late).
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::gpu::SimulatedSource;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn sampler_with_simulated_gpu_exports_triton_names_and_units() {
        let m = Arc::new(Metrics::new());
        let (src, gpus) = SimulatedSource::stepped(2);
        let mut s =
            Sampler::spawn(Ok(Box::new(src)), Duration::from_millis(10), m.clone()).unwrap();
        // The first reading is taken in `spawn`; one more, exported before `step` returns.
        assert_eq!(gpus.step(), 2);
        let text = m.encode();
        let uuid = "gpu_uuid=\"GPU-00000000-0000-0000-0000-000000000001\"";
        for (name, value) in [
            ("nv_gpu_utilization", "0.5"),
            ("nv_gpu_memory_total_bytes", "85899345920"),
            ("nv_gpu_memory_used_bytes", "21474836480"),
            ("nv_gpu_power_usage", "300"),
            ("nv_gpu_power_limit", "700"),
            ("ferrite_gpu_temperature_celsius", "55"),
            ("ferrite_gpu_sm_clock_hz", "1980000000"),
        ] {
            let series = format!("{name}{{{uuid}}} {value}");
            assert!(text.contains(&series), "missing {series} in\n{text}");
        }
        // Energy since the first reading: one 300 J step, not NVML's since-driver-load 1600 J.
        let energy = line(&text, &format!("nv_energy_consumption{{{uuid}}}")).unwrap();
        assert_eq!(energy.rsplit(' ').next(), Some("300"), "{energy}");
        assert!(text.contains("# TYPE nv_energy_consumption counter"));
        assert!(line(&text, "nv_cpu_utilization ").is_some(), "{text}");
        let snap = s.telemetry().latest();
        assert_eq!(snap.gpus.len(), 2);
        assert!(snap.unix_ms > 0);
        drop(gpus);
        s.stop();
    }

    #[test]
    fn sampler_without_nvml_exports_cpu_but_no_gpu_gauges() {
        let m = Arc::new(Metrics::new());
        let s = Sampler::spawn(
            Err(GpuError::Unavailable("libnvidia-ml.so.1: not found".into())),
            Duration::from_secs(3600),
            m.clone(),
        )
        .unwrap();
        let text = m.encode();
        assert!(!text.contains("nv_gpu_"), "{text}");
        assert!(!text.contains("nv_energy_consumption"), "{text}");
        assert!(
            line(&text, "nv_cpu_memory_total_bytes ").is_some(),
            "{text}"
        );
        assert!(line(&text, "ferrite_process_resident_memory_bytes ").is_some());
        let snap = s.telemetry().latest();
        assert!(snap.gpus.is_empty());
        assert!(snap.gpu_error.unwrap().contains("libnvidia-ml"));
    }

    #[test]
    fn sampler_stop_joins_promptly_with_long_interval() {
        let m = Arc::new(Metrics::new());
        let t = std::time::Instant::now();
        let s = Sampler::spawn(
            Ok(Box::new(SimulatedSource::new(1))),
            Duration::from_secs(3600),
            m,
        )
        .unwrap();
        drop(s);
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}

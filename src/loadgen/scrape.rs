//! Server-side numbers from the target's Prometheus text: Triton's `nv_inference_*` counters for
//! one model (summed over versions), differenced across a step into the perf_analyzer split (queue,
//! compute input / infer / output per request, average batch size), and `nv_gpu_*` gauges
//! (utilisation, power, memory) when the server exports them. Pure parsing; fetching is the caller's.

use serde::Serialize;

/// The model's cumulative counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub success: f64,
    pub queue_us: f64,
    pub input_us: f64,
    pub infer_us: f64,
    pub output_us: f64,
    pub inference_count: f64,
    pub exec_count: f64,
}

/// Average server time per successful request over a step, in microseconds, and batch size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ServerSplit {
    pub requests: f64,
    pub queue_us: f64,
    pub compute_input_us: f64,
    pub compute_infer_us: f64,
    pub compute_output_us: f64,
    pub avg_batch: f64,
}

/// GPU gauges at one instant, over every GPU the server reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct GpuSample {
    pub gpus: usize,
    /// Mean utilisation over GPUs, 0..1.
    pub utilization: f64,
    /// Total power, watts.
    pub power_w: f64,
    /// Total memory used, bytes.
    pub memory_used_bytes: f64,
}

/// One sample line: name, labels as written, value. Comments and malformed lines are skipped.
fn samples(text: &str) -> impl Iterator<Item = (&str, &str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value: f64 = value.trim().parse().ok()?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            Some((name.trim(), labels, value))
        })
}

/// The value of label `key` in a `k="v",k2="v2"` list (values without escaped quotes).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// The model's counters, summed over its versions.
pub fn counters(text: &str, model: &str) -> Counters {
    let mut c = Counters::default();
    for (name, labels, v) in samples(text) {
        if label(labels, "model") != Some(model) {
            continue;
        }
        let slot = match name {
            "nv_inference_request_success" => &mut c.success,
            "nv_inference_queue_duration_us" => &mut c.queue_us,
            "nv_inference_compute_input_duration_us" => &mut c.input_us,
            "nv_inference_compute_infer_duration_us" => &mut c.infer_us,
            "nv_inference_compute_output_duration_us" => &mut c.output_us,
            "nv_inference_count" => &mut c.inference_count,
            "nv_inference_exec_count" => &mut c.exec_count,
            _ => continue,
        };
        *slot += v;
    }
    c
}

/// The split between two scrapes; `None` when no request succeeded in between.
pub fn split(before: &Counters, after: &Counters) -> Option<ServerSplit> {
    let n = after.success - before.success;
    if n <= 0.0 {
        return None;
    }
    let per = |a: f64, b: f64| (a - b) / n;
    let execs = after.exec_count - before.exec_count;
    Some(ServerSplit {
        requests: n,
        queue_us: per(after.queue_us, before.queue_us),
        compute_input_us: per(after.input_us, before.input_us),
        compute_infer_us: per(after.infer_us, before.infer_us),
        compute_output_us: per(after.output_us, before.output_us),
        avg_batch: if execs > 0.0 {
            (after.inference_count - before.inference_count) / execs
        } else {
            0.0
        },
    })
}

/// Triton's GPU gauges (`nv_gpu_utilization`, `nv_gpu_power_usage`, `nv_gpu_memory_used_bytes`,
/// one series per GPU); `None` when the server exports none.
pub fn gpu(text: &str) -> Option<GpuSample> {
    let mut s = GpuSample::default();
    let mut util = 0.0;
    for (name, _, v) in samples(text) {
        match name {
            "nv_gpu_utilization" => {
                s.gpus += 1;
                util += v;
            }
            "nv_gpu_power_usage" => s.power_w += v,
            "nv_gpu_memory_used_bytes" => s.memory_used_bytes += v,
            _ => {}
        }
    }
    (s.gpus > 0).then(|| GpuSample {
        utilization: util / s.gpus as f64,
        ..s
    })
}

/// Mean of several GPU samples (one per measurement window); the memory figure is the maximum.
pub fn mean_gpu(samples: &[GpuSample]) -> Option<GpuSample> {
    let n = samples.len() as f64;
    (!samples.is_empty()).then(|| GpuSample {
        gpus: samples.iter().map(|s| s.gpus).max().unwrap_or(0),
        utilization: samples.iter().map(|s| s.utilization).sum::<f64>() / n,
        power_w: samples.iter().map(|s| s.power_w).sum::<f64>() / n,
        memory_used_bytes: samples
            .iter()
            .map(|s| s.memory_used_bytes)
            .fold(0.0, f64::max),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# HELP nv_inference_request_success x
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="digits",version="1"} 100
nv_inference_request_success{model="other",version="1"} 7
nv_inference_queue_duration_us{model="digits",version="1"} 1000
nv_inference_compute_infer_duration_us{model="digits",version="1"} 5000
nv_inference_count{model="digits",version="1"} 100
nv_inference_exec_count{model="digits",version="1"} 50
"#;
    const AFTER: &str = r#"nv_inference_request_success{model="digits",version="1"} 300
nv_inference_request_success{model="digits",version="2"} 100
nv_inference_queue_duration_us{model="digits",version="1"} 9000
nv_inference_compute_infer_duration_us{model="digits",version="1"} 25000
nv_inference_compute_input_duration_us{model="digits",version="1"} 300
nv_inference_count{model="digits",version="1"} 400
nv_inference_exec_count{model="digits",version="1"} 80
nv_gpu_utilization{gpu_uuid="GPU-a"} 0.5
nv_gpu_utilization{gpu_uuid="GPU-b"} 1
nv_gpu_power_usage{gpu_uuid="GPU-a"} 100
nv_gpu_power_usage{gpu_uuid="GPU-b"} 150.5
nv_gpu_memory_used_bytes{gpu_uuid="GPU-a"} 1000
"#;

    #[test]
    fn split_between_scrapes_per_request_averages() {
        let s = split(&counters(BEFORE, "digits"), &counters(AFTER, "digits")).unwrap();
        assert_eq!(s.requests, 300.0); // versions summed, other model ignored
        assert_eq!(s.queue_us, 8000.0 / 300.0);
        assert_eq!(s.compute_infer_us, 20000.0 / 300.0);
        assert_eq!(s.compute_input_us, 1.0);
        assert_eq!(s.avg_batch, 10.0);
    }

    #[test]
    fn split_no_new_requests_none() {
        let c = counters(BEFORE, "digits");
        assert_eq!(split(&c, &c), None);
    }

    #[test]
    fn gpu_gauges_summed_and_averaged() {
        let g = gpu(AFTER).unwrap();
        assert_eq!(g.gpus, 2);
        assert_eq!(g.utilization, 0.75);
        assert_eq!(g.power_w, 250.5);
        assert_eq!(g.memory_used_bytes, 1000.0);
        assert_eq!(gpu(BEFORE), None);
        let m = mean_gpu(&[
            g,
            GpuSample {
                utilization: 0.25,
                memory_used_bytes: 5.0,
                ..g
            },
        ])
        .unwrap();
        assert_eq!((m.utilization, m.memory_used_bytes), (0.5, 1000.0));
    }
}

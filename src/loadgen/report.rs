//! Report formats of `ferrite bench`: the terminal table, perf_analyzer-compatible CSV (same column
//! names, microseconds; ferrite's extra columns at the end) and JSON. Pure: strings and bytes out.

use serde_json::json;

use super::args::BenchArgs;
use super::runner::{Load, StepResult};
use super::LoadgenError;

/// "concurrency 8" / "120 req/s poisson".
pub fn load_label(load: &Load) -> String {
    match load {
        Load::Concurrency { concurrency } => format!("concurrency {concurrency}"),
        Load::Rate { rate, arrivals } => format!("{rate:.0} req/s {arrivals:?}").to_lowercase(),
    }
}

fn errors_text(s: &StepResult) -> String {
    if s.errors.is_empty() {
        return "0".into();
    }
    s.errors
        .iter()
        .map(|(k, v)| format!("{v}x{k}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The terminal table, one row per step (latencies in ms).
pub fn table(steps: &[StepResult], batch: usize) -> String {
    let mut out = format!(
        "{:>18} {:>10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>6} {:>7} {:>6}  errors\n",
        "step",
        "infer/s",
        "req/s",
        "p50",
        "p90",
        "p95",
        "p99",
        "p99.9",
        "srv queue",
        "srv comp",
        "batch",
        "cli CPU",
        "stable"
    );
    let ms = |us: f64| format!("{:.2}", us / 1000.0);
    for s in steps {
        let (q, c, b) = match &s.server {
            Some(v) => (
                ms(v.queue_us),
                ms(v.compute_input_us + v.compute_infer_us + v.compute_output_us),
                format!("{:.1}", v.avg_batch),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let l = &s.latency;
        out += &format!(
            "{:>18} {:>10.1} {:>9.1} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>6} {:>6.0}% {:>6}  {}\n",
            load_label(&s.load),
            s.throughput * batch as f64,
            s.throughput,
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p95_us),
            ms(l.p99_us),
            ms(l.p999_us),
            q,
            c,
            b,
            s.client_cpu_cores * 100.0,
            if s.stable { "yes" } else { "no" },
            errors_text(s),
        );
        if let Some(g) = &s.gpu {
            out += &format!(
                "{:>18} GPU: {} device(s), utilisation {:.0}%, power {:.0} W, memory {:.0} MiB\n",
                "",
                g.gpus,
                g.utilization * 100.0,
                g.power_w,
                g.memory_used_bytes / (1 << 20) as f64
            );
        }
    }
    out += "latencies in ms; srv = server-side averages per request from nv_inference_* metrics\n";
    out
}

/// perf_analyzer's CSV columns, in its order.
pub const PERF_ANALYZER_COLUMNS: [&str; 15] = [
    "Inferences/Second",
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Client Recv",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
    "Avg latency",
    "request/response",
    "response wait",
];
/// perf_analyzer's GPU columns (written when the server reports `nv_gpu_*`).
pub const GPU_COLUMNS: [&str; 3] = [
    "Avg GPU Utilization",
    "Avg GPU Power Usage",
    "Max GPU Memory Usage",
];
/// Ferrite's own columns, after perf_analyzer's.
pub const EXTRA_COLUMNS: [&str; 5] = [
    "p99.9 latency",
    "Requests/Second",
    "Errors",
    "Client CPU",
    "Stable",
];

/// CSV with perf_analyzer's header: first column `Concurrency` or `Request Rate`, latencies in µs.
/// The client does not time send and receive apart: `Client Send`, `Client Recv` and
/// `request/response` are 0, `response wait` is the mean latency, and `Network+Server Send/Recv` is
/// the mean latency minus the server's queue and compute time.
pub fn csv(steps: &[StepResult], batch: usize) -> Result<Vec<u8>, LoadgenError> {
    let rate = matches!(steps.first().map(|s| s.load), Some(Load::Rate { .. }));
    let gpu = steps.iter().any(|s| s.gpu.is_some());
    let mut w = csv::Writer::from_writer(Vec::new());
    let mut header = vec![if rate { "Request Rate" } else { "Concurrency" }];
    header.extend(PERF_ANALYZER_COLUMNS);
    if gpu {
        header.extend(GPU_COLUMNS);
    }
    header.extend(EXTRA_COLUMNS);
    let err = |e: csv::Error| LoadgenError::Args(format!("CSV: {e}"));
    w.write_record(&header).map_err(err)?;
    for s in steps {
        let l = &s.latency;
        let sv = s.server.unwrap_or_default();
        let server_total =
            sv.queue_us + sv.compute_input_us + sv.compute_infer_us + sv.compute_output_us;
        let n = |x: f64| format!("{}", x.round() as i64);
        let mut row = vec![
            format!("{}", s.load.value()),
            format!("{:.2}", s.throughput * batch as f64),
            "0".into(),
            n((l.mean_us - server_total).max(0.0)),
            n(sv.queue_us),
            n(sv.compute_input_us),
            n(sv.compute_infer_us),
            n(sv.compute_output_us),
            "0".into(),
            n(l.p50_us),
            n(l.p90_us),
            n(l.p95_us),
            n(l.p99_us),
            n(l.mean_us),
            "0".into(),
            n(l.mean_us),
        ];
        if gpu {
            let g = s.gpu.unwrap_or_default();
            row.extend([
                format!("{:.3}", g.utilization),
                format!("{:.1}", g.power_w),
                n(g.memory_used_bytes),
            ]);
        }
        row.extend([
            n(l.p999_us),
            format!("{:.2}", s.throughput),
            s.errors.values().sum::<u64>().to_string(),
            format!("{:.2}", s.client_cpu_cores),
            s.stable.to_string(),
        ]);
        w.write_record(&row).map_err(err)?;
    }
    w.into_inner()
        .map_err(|e| LoadgenError::Args(format!("CSV: {e}")))
}

/// Everything, as pretty JSON: the target, the plan, and each step in full.
pub fn json(args: &BenchArgs, steps: &[StepResult]) -> String {
    let v = json!({
        "url": args.url,
        "model": args.model,
        "protocol": args.protocol,
        "batch_size": args.batch_size,
        "measurement_interval_ms": args.measurement_interval_ms,
        "stability_percentage": args.stability_percentage,
        "steps": steps,
    });
    serde_json::to_string_pretty(&v).expect("serialisable report. This is a bug.")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::scrape::ServerSplit;
    use crate::loadgen::stats::Percentiles;

    fn step(concurrency: usize) -> StepResult {
        StepResult {
            load: Load::Concurrency { concurrency },
            throughput: 100.0,
            latency: Percentiles {
                p50_us: 9000.0,
                p90_us: 9500.0,
                p95_us: 9700.0,
                p99_us: 9900.0,
                p999_us: 9990.0,
                mean_us: 9100.0,
                max_us: 10000.0,
            },
            ok: 300,
            errors: [("503".to_string(), 2)].into(),
            windows: vec![],
            stable: true,
            send_lag_p99_us: None,
            server: Some(ServerSplit {
                requests: 300.0,
                queue_us: 1000.0,
                compute_input_us: 10.0,
                compute_infer_us: 8000.0,
                compute_output_us: 20.0,
                avg_batch: 1.0,
            }),
            gpu: None,
            client_cpu_cores: 0.05,
            warnings: vec![],
        }
    }

    #[test]
    fn csv_header_matches_perf_analyzer_then_extras() {
        let text = String::from_utf8(csv(&[step(1), step(2)], 4).unwrap()).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,\
             Server Compute Input,Server Compute Infer,Server Compute Output,Client Recv,\
             p50 latency,p90 latency,p95 latency,p99 latency,Avg latency,request/response,\
             response wait,p99.9 latency,Requests/Second,Errors,Client CPU,Stable"
        );
        assert_eq!(
            lines.next().unwrap(),
            "1,400.00,0,70,1000,10,8000,20,0,9000,9500,9700,9900,9100,0,9100,9990,100.00,2,0.05,true"
        );
        assert_eq!(lines.count(), 1);
    }

    #[test]
    fn csv_rate_steps_and_gpu_columns() {
        let mut s = step(1);
        s.load = Load::Rate {
            rate: 50.0,
            arrivals: crate::loadgen::schedule::Arrivals::Poisson,
        };
        s.gpu = Some(crate::loadgen::scrape::GpuSample {
            gpus: 1,
            utilization: 0.5,
            power_w: 70.0,
            memory_used_bytes: 1e9,
        });
        let text = String::from_utf8(csv(&[s], 1).unwrap()).unwrap();
        let header = text.lines().next().unwrap();
        assert!(header.starts_with("Request Rate,Inferences/Second,"));
        assert!(header.contains(
            "response wait,Avg GPU Utilization,Avg GPU Power Usage,Max GPU Memory Usage,p99.9"
        ));
    }

    #[test]
    fn table_has_one_row_per_step_and_errors() {
        let t = table(&[step(1), step(8)], 1);
        assert_eq!(t.lines().count(), 4);
        assert!(t.contains("concurrency 8") && t.contains("2x503"), "{t}");
    }
}

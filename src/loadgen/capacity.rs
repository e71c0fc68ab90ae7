//! `ferrite capacity`: sweeps the load (optionally once per server config, each served by a fresh
//! child `ferrite serve`), finds the highest throughput whose p99 meets the SLO with no errors, and
//! sizes a fleet for a target load with a **linear model**: replicas = ceil(target / (throughput
//! per device x (1 - headroom))). Linear scaling assumes devices do not share a bottleneck (network,
//! CPU preprocessing, a load balancer); measure two replicas before trusting large counts.

use std::path::{Path, PathBuf};

use clap::Args;

use super::args::BenchArgs;
use super::bench::{prepare, sweep};
use super::child::{grid, ChildServer, ServerConfig};
use super::plot::{latency_throughput_slo, Curve};
use super::report::load_label;
use super::runner::StepResult;
use super::schedule::RangeSpec;
use super::LoadgenError;

#[derive(Debug, Clone, Args)]
pub struct CapacityArgs {
    #[command(flatten)]
    pub bench: BenchArgs,
    /// Latency objective: p99 end-to-end latency at most this
    #[arg(long)]
    pub slo_p99_ms: f64,
    /// Load to plan for, in inferences/s (rows/s; requests/s when the batch size is 1)
    #[arg(long)]
    pub target_qps: Option<f64>,
    /// Fraction of each device's SLO throughput kept free (0.3 = plan at 70%)
    #[arg(long, default_value_t = 0.3)]
    pub headroom: f64,
    /// Start a child `ferrite serve` per config on a copy of this repository (else: bench --url as is)
    #[arg(long)]
    pub model_repository: Option<PathBuf>,
    /// Max batch sizes to try (with --model-repository), e.g. 1,8,64
    #[arg(long, value_delimiter = ',')]
    pub max_batch_sizes: Vec<usize>,
    /// Instance counts to try (with --model-repository), e.g. 1,2
    #[arg(long, value_delimiter = ',')]
    pub instance_counts: Vec<usize>,
    /// Markdown report; plots are written beside it
    #[arg(long, default_value = "capacity.md")]
    pub report: PathBuf,
}

/// One config's sweep and its best point under the SLO.
#[derive(Debug, Clone)]
pub struct ConfigResult {
    pub config: ServerConfig,
    pub steps: Vec<StepResult>,
    pub best: Option<usize>,
    /// GPUs the server reported (`nv_gpu_*`), else 1 (the CPU host counts as one device).
    pub devices: usize,
}

/// Index of the step with the highest throughput whose p99 meets the SLO and that had no errors.
pub fn best_under_slo(steps: &[StepResult], slo_p99_ms: f64) -> Option<usize> {
    steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.latency.p99_us <= slo_p99_ms * 1000.0 && s.errors.is_empty() && s.ok > 0)
        .max_by(|a, b| a.1.throughput.total_cmp(&b.1.throughput))
        .map(|(i, _)| i)
}

/// Devices needed for `target` at `per_device` each, keeping `headroom` free (linear model).
pub fn devices_needed(target: f64, per_device: f64, headroom: f64) -> Option<u64> {
    let usable = per_device * (1.0 - headroom.clamp(0.0, 0.99));
    (usable > 0.0).then(|| (target / usable).ceil().max(1.0) as u64)
}

fn devices_of(steps: &[StepResult]) -> usize {
    steps
        .iter()
        .filter_map(|s| s.gpu.map(|g| g.gpus))
        .max()
        .unwrap_or(1)
        .max(1)
}

/// Runs the capacity sweep(s) and writes the report; returns the Markdown.
pub async fn run(args: &CapacityArgs) -> Result<String, LoadgenError> {
    let mut bench = args.bench.clone();
    if bench.concurrency_range.is_none() && bench.request_rate_range.is_none() {
        bench.concurrency_range = Some("1:256".parse::<RangeSpec>()?);
    }
    let configs = match &args.model_repository {
        Some(_) => grid(&args.max_batch_sizes, &args.instance_counts),
        None if args.max_batch_sizes.is_empty() && args.instance_counts.is_empty() => {
            vec![ServerConfig::default()]
        }
        None => {
            return Err(LoadgenError::Args(
                "--max-batch-sizes/--instance-counts need --model-repository".into(),
            ))
        }
    };
    let exe = std::env::current_exe().map_err(|e| LoadgenError::io("current_exe", e))?;
    let mut results = Vec::new();
    for config in configs {
        eprintln!("== config: {config}");
        let mut b = bench.clone();
        let _child = match &args.model_repository {
            Some(repo) => {
                let c = ChildServer::start(&exe, repo, &b.model, &config).await?;
                b.url = c.url.clone();
                b.metrics_url = Some(c.metrics_url.clone());
                Some(c)
            }
            None => None,
        };
        let target = prepare(&b).await?;
        let steps = sweep(&target, &b, Some(args.slo_p99_ms)).await?;
        let best = best_under_slo(&steps, args.slo_p99_ms);
        let devices = devices_of(&steps);
        results.push(ConfigResult {
            config,
            steps,
            best,
            devices,
        });
    }
    let md = write_report(args, &results)?;
    Ok(md)
}

fn write_report(args: &CapacityArgs, results: &[ConfigResult]) -> Result<String, LoadgenError> {
    let stem = args
        .report
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("capacity")
        .to_string();
    let dir = args
        .report
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let plot_name = format!("{stem}.svg");
    let batch = args.bench.batch_size;
    let curves: Vec<Curve> = results
        .iter()
        .map(|r| Curve::of(&r.config.to_string(), &r.steps, batch))
        .collect();
    latency_throughput_slo(
        &dir.join(&plot_name),
        &format!("{}: latency vs throughput", args.bench.model),
        &curves,
        Some(args.slo_p99_ms),
    )?;
    let md = markdown(args, results, &plot_name);
    std::fs::write(&args.report, &md).map_err(|e| LoadgenError::io(&args.report, e))?;
    Ok(md)
}

/// The Markdown report (pure, given the results).
pub fn markdown(args: &CapacityArgs, results: &[ConfigResult], plot: &str) -> String {
    let batch = args.bench.batch_size as f64;
    let mut md = format!(
        "# Capacity: model `{}`\n\nSLO: p99 ≤ {} ms, no errors. Load: {} (batch size {}), windows of {} ms until the last 3 are within ±{}%.\n\n![latency vs throughput]({plot})\n\n",
        args.bench.model, args.slo_p99_ms,
        if args.bench.request_rate_range.is_some() { "open loop" } else { "closed loop" },
        args.bench.batch_size, args.bench.measurement_interval_ms, args.bench.stability_percentage
    );
    md += "| server config | best step | inferences/s | p99 ms | devices | per device | GPU util | GPU memory |";
    if args.target_qps.is_some() {
        md += " devices for target |";
    }
    md += "\n|---|---|---|---|---|---|---|---|";
    md += if args.target_qps.is_some() {
        "---|\n"
    } else {
        "\n"
    };
    let mut overall: Option<(f64, &ConfigResult)> = None;
    for r in results {
        let Some(s) = r.best.map(|i| &r.steps[i]) else {
            md += &format!(
                "| {} | none meets the SLO | - | - | {} | - | - | - |{}\n",
                r.config,
                r.devices,
                if args.target_qps.is_some() {
                    " - |"
                } else {
                    ""
                }
            );
            continue;
        };
        let tput = s.throughput * batch;
        let per = tput / r.devices as f64;
        if overall.is_none_or(|(b, _)| per > b) {
            overall = Some((per, r));
        }
        let (util, mem) = s
            .gpu
            .map_or(("n/a (no nv_gpu_*)".to_string(), "n/a".to_string()), |g| {
                (
                    format!("{:.0}%", g.utilization * 100.0),
                    format!("{:.0} MiB", g.memory_used_bytes / (1 << 20) as f64),
                )
            });
        md += &format!(
            "| {} | {} | {tput:.0} | {:.2} | {} | {per:.0} | {util} | {mem} |",
            r.config,
            load_label(&s.load),
            s.latency.p99_us / 1000.0,
            r.devices
        );
        if let Some(t) = args.target_qps {
            md += &format!(
                " {} |",
                devices_needed(t, per, args.headroom).map_or("-".into(), |n| n.to_string())
            );
        }
        md += "\n";
    }
    md += "\n## Answer\n\n";
    match overall {
        None => md +=
            "No step of any config met the SLO: lower the load range's start, or relax the SLO.\n",
        Some((per, r)) => {
            md += &format!(
                "Best config: **{}**, {per:.0} inferences/s per device at p99 ≤ {} ms.\n",
                r.config, args.slo_p99_ms
            );
            if let Some(t) = args.target_qps {
                let n = devices_needed(t, per, args.headroom).unwrap_or(0);
                md += &format!(
                    "For {t:.0} inferences/s with {:.0}% headroom: **{n} device(s)/replica(s)** (linear model: ceil({t:.0} / ({per:.0} × {:.2}))).\n",
                    args.headroom * 100.0, 1.0 - args.headroom
                );
            }
        }
    }
    md += "\nThe linear model assumes replicas share no bottleneck; one device here is one GPU, or the whole host when the server reports no GPU. Server configs were swept by restarting `ferrite serve` on an edited copy of the model repository.\n\n## Sweeps\n";
    for r in results {
        md += &format!(
            "\n### {}\n\n```\n{}```\n",
            r.config,
            super::report::table(&r.steps, args.bench.batch_size)
        );
        for s in &r.steps {
            for w in &s.warnings {
                md += &format!("- {}: {w}\n", load_label(&s.load));
            }
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::runner::Load;
    use crate::loadgen::stats::Percentiles;

    fn step(c: usize, tput: f64, p99_ms: f64, errors: u64) -> StepResult {
        StepResult {
            load: Load::Concurrency { concurrency: c },
            throughput: tput,
            latency: Percentiles {
                p99_us: p99_ms * 1000.0,
                ..Default::default()
            },
            ok: 10,
            errors: if errors > 0 {
                [("503".to_string(), errors)].into()
            } else {
                Default::default()
            },
            windows: vec![],
            stable: true,
            send_lag_p99_us: None,
            server: None,
            gpu: None,
            client_cpu_cores: 0.1,
            warnings: vec![],
        }
    }

    #[test]
    fn best_under_slo_highest_throughput_meeting_p99_without_errors() {
        let s = [
            step(1, 100.0, 5.0, 0),
            step(2, 190.0, 9.0, 0),
            step(4, 260.0, 12.0, 0),
            step(8, 200.0, 8.0, 3),
        ];
        assert_eq!(best_under_slo(&s, 10.0), Some(1));
        assert_eq!(best_under_slo(&s, 4.0), None);
    }

    #[test]
    fn devices_needed_ceil_with_headroom() {
        assert_eq!(devices_needed(1000.0, 500.0, 0.0), Some(2));
        assert_eq!(devices_needed(1000.0, 500.0, 0.3), Some(3)); // 1000 / 350 = 2.86
        assert_eq!(devices_needed(10.0, 500.0, 0.3), Some(1));
        assert_eq!(devices_needed(10.0, 0.0, 0.3), None);
    }
}

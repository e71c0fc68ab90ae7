//! The command line: `ferrite serve`, `ferrite models` (models, their placement, and the devices),
//! `ferrite bench`, `ferrite capacity`, `ferrite quantize`, `ferrite profile` and `ferrite keygen`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{ServeArgs, Settings, DEFAULT_MODEL_REPOSITORY};
use crate::device::{self, DeviceInfo, GpuSelection};
use crate::loadgen::args::BenchArgs;
use crate::loadgen::capacity::CapacityArgs;
use crate::repository::{model_names, placement, present_versions};
use crate::server::Server;
use crate::spec::ModelConfig;
use crate::telemetry::logging;

#[derive(Debug, Parser)]
#[command(
    name = "ferrite",
    version,
    about = "High-throughput model inference server (KServe v2 / Triton-compatible)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve every model in the repository over HTTP.
    Serve(ServeArgs),
    /// List the devices, the models in a repository, whether each config is valid and where its
    /// instances would run on this machine.
    Models {
        /// Model repository folder
        #[arg(long, env = "FERRITE_MODEL_REPOSITORY", default_value = DEFAULT_MODEL_REPOSITORY)]
        model_repository: PathBuf,
        /// GPUs to use: all, none, or ordinals like 0,1
        #[arg(long, env = "FERRITE_GPUS", default_value = "all")]
        gpus: GpuSelection,
    },
    /// Load-test a KServe v2, OpenAI embeddings or TEI server: latency percentiles, throughput,
    /// server-side split, over a concurrency or request-rate sweep.
    Bench(BenchArgs),
    /// Find the max throughput under a p99 SLO (optionally across server configs) and how many
    /// devices a target load needs; writes a Markdown report with plots.
    Capacity(CapacityArgs),
    /// Write a quantized copy of a model version (q8 or q4) as a new version, with its measured
    /// quality against the source in quantization.json.
    Quantize(crate::quantize::QuantizeArgs),
    /// Run a model version's validation gate (`[validation]` in its config, its validation set)
    /// in this process: prints a table, writes the JSON report with --json, exits 1 when it fails.
    Validate {
        /// The model (a folder of the repository)
        model: String,
        /// The version folder to validate
        #[arg(long)]
        version: u64,
        /// Model repository folder
        #[arg(long, env = "FERRITE_MODEL_REPOSITORY", default_value = DEFAULT_MODEL_REPOSITORY)]
        model_repository: PathBuf,
        /// GPUs to use: all, none, or ordinals like 0,1
        #[arg(long, env = "FERRITE_GPUS", default_value = "all")]
        gpus: GpuSelection,
        /// Also write the report as JSON to this file ("-" for stdout, after the table)
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Write a model version's reference profile (`profile.json` in the version folder) from a
    /// reference sample: per-feature sketches of its inputs and outputs that `[monitoring]`
    /// compares live traffic against (drift: KS, PSI, JS).
    Profile(crate::profile::ProfileArgs),
    /// Drift statistics of two samples through the monitor's sketch (JSON on stdin and stdout;
    /// for tests against independent implementations).
    #[command(hide = true)]
    DriftStats,
    /// Embed or score a whole input file offline with the server's engine (in-process, no HTTP):
    /// streaming, with a progress bar, rejects file and resume after any interruption.
    Batch(crate::jobs::cli::BatchArgs),
    /// Make a new random API key: prints the key once, alone on the first line of stdout, then the
    /// `[[auth.api_keys]]` stanza (its SHA-256, never the key) to paste into the file given to
    /// `ferrite serve --config`.
    Keygen {
        /// The key's name (logged as the principal; not a secret)
        #[arg(long)]
        name: String,
        /// Scopes, comma-separated: infer, infer:<model>, admin, feedback, jobs, metrics
        #[arg(long, value_delimiter = ',', default_value = "infer")]
        scopes: Vec<String>,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Models {
            model_repository,
            gpus,
        } => models(&model_repository, &gpus),
        Command::Bench(args) => bench(args),
        Command::Capacity(args) => capacity(args),
        Command::Quantize(args) => crate::quantize::run(&args),
        Command::Validate {
            model,
            version,
            model_repository,
            gpus,
            json,
        } => validate(&model, version, &model_repository, &gpus, json.as_deref()),
        Command::Profile(args) => crate::profile::run(&args),
        Command::DriftStats => crate::profile::drift_stats(),
        Command::Batch(args) => batch(args),
        Command::Keygen { name, scopes } => {
            print!("{}", keygen(&name, &scopes)?);
            Ok(())
        }
    }
}

/// `ferrite validate`: the gate of one version, offline.
fn validate(
    model: &str,
    version: u64,
    root: &std::path::Path,
    gpus: &GpuSelection,
    json: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(async {
        let devices = device::discover(gpus);
        let metrics = std::sync::Arc::new(crate::telemetry::Metrics::new());
        let repo = crate::repository::Repository::new(root.to_path_buf(), devices, metrics);
        repo.validate_offline(model, version).await
    })?;
    let fig = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.6}"));
    println!("model {model} version {version}: {}", report.summary());
    println!("{:<16} {}", "set", report.set.as_deref().unwrap_or("-"));
    println!("{:<16} {}", "rows", report.rows);
    println!("{:<16} {}", "accuracy", fig(report.accuracy));
    println!("{:<16} {}", "min cosine", fig(report.min_cosine));
    println!("{:<16} {}", "mean abs diff", fig(report.mean_abs_diff));
    println!(
        "{:<16} {}",
        "compared to",
        report.compared_to.as_deref().unwrap_or("-")
    );
    println!("{:<16} {}", "p99 ms", fig(report.p99_ms));
    for f in &report.failures {
        println!("FAILED: {f}");
    }
    let text = serde_json::to_string_pretty(&report)?;
    match json {
        Some(p) if p.as_os_str() == "-" => println!("{text}"),
        Some(p) => {
            std::fs::write(p, text + "\n").with_context(|| format!("writing {}", p.display()))?
        }
        None => {}
    }
    if !report.passed {
        std::process::exit(1);
    }
    Ok(())
}

/// The key (first line) and the TOML stanza for it.
fn keygen(name: &str, scopes: &[String]) -> anyhow::Result<String> {
    if let Some(bad) = scopes
        .iter()
        .find(|s| crate::auth::Scope::parse(s).is_none())
    {
        anyhow::bail!(
            "unknown scope '{bad}' (expected infer, infer:<model>, admin, feedback, jobs, metrics)"
        );
    }
    let key = crate::auth::generate_key();
    let quoted: Vec<String> = scopes.iter().map(|s| format!("{s:?}")).collect();
    Ok(format!(
        "{key}\n\n# Paste into the settings file given to `ferrite serve --config`; the key above is\n\
         # shown once and stored nowhere (only its SHA-256 below).\n\
         [[auth.api_keys]]\nname = {name:?}\nsha256 = \"{}\"\nscopes = [{}]\n",
        crate::auth::sha256_hex(&key),
        quoted.join(", ")
    ))
}

/// The bench's own runtime: `--client-threads` workers, so its CPU use is bounded and measurable.
fn client_runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .thread_name("ferrite-bench")
        .build()?)
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    client_runtime(args.client_threads())?.block_on(async {
        let target = crate::loadgen::bench::prepare(&args).await?;
        let steps = crate::loadgen::bench::sweep(&target, &args, args.latency_threshold_ms).await?;
        crate::loadgen::bench::write_outputs(&args, &steps)?;
        anyhow::Ok(())
    })
}

fn capacity(args: CapacityArgs) -> anyhow::Result<()> {
    client_runtime(args.bench.client_threads())?.block_on(async {
        let md = crate::loadgen::capacity::run(&args).await?;
        println!("{md}");
        eprintln!("report written to {}", args.report.display());
        anyhow::Ok(())
    })
}

/// `ferrite batch`: exits 130 when interrupted (rerun to resume).
fn batch(args: crate::jobs::cli::BatchArgs) -> anyhow::Result<()> {
    logging::init(crate::config::LogFormat::Text);
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", args.intra_op_threads.to_string());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ferrite-io")
        .build()?;
    let done = rt.block_on(crate::jobs::cli::run(&args));
    logging::flush();
    if !done? {
        std::process::exit(crate::jobs::cli::INTERRUPTED);
    }
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings = Settings::resolve(&args)?;
    logging::init(settings.log_format);
    // candle sizes its CPU thread pool from RAYON_NUM_THREADS and, when it is unset, re-reads
    // /proc/cpuinfo on every matmul (measured: 35% fewer requests/s). Set it while this process is
    // still single-threaded.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", settings.intra_op_threads.to_string());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("ferrite-io")
        .build()?;
    let served = rt.block_on(async {
        let server = Server::start(&settings).await?;
        crate::shutdown::signal().await;
        server.shutdown().await;
        anyhow::Ok(())
    });
    // The last buffered log lines (the drain's), before the process exits.
    logging::flush();
    served
}

fn print_devices(devices: &[DeviceInfo]) {
    println!(
        "{:<6} {:<5} {:<16} {:<6} NAME",
        "DEVICE", "KIND", "MEMORY", "CC"
    );
    for d in devices {
        let mem = d
            .memory_total_bytes
            .map(|b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64))
            .unwrap_or_else(|| "-".into());
        let cc = d.compute_capability.as_deref().unwrap_or("-");
        println!(
            "{:<6} {:<5} {mem:<16} {cc:<6} {}",
            d.id.to_string(),
            d.kind,
            d.name
        );
    }
    println!();
}

/// `gpu0×2,cpu×1`, or why the model cannot be placed here.
fn placement_text(config: &ModelConfig, devices: &[DeviceInfo]) -> String {
    match placement::place(&config.instance_group, devices) {
        Ok(p) => p
            .iter()
            .map(|(d, n)| format!("{d}x{n}"))
            .collect::<Vec<_>>()
            .join(","),
        Err(e) => format!("not placeable here: {e}"),
    }
}

fn models(root: &std::path::Path, gpus: &GpuSelection) -> anyhow::Result<()> {
    let names = model_names(root);
    if names.is_empty() {
        anyhow::bail!(
            "no model folders with a config.toml under '{}'",
            root.display()
        );
    }
    let devices = device::discover(gpus);
    print_devices(&devices);
    println!(
        "{:<20} {:<12} {:<10} {:<16} STATUS",
        "MODEL", "VERSIONS", "ARCH", "PLACEMENT"
    );
    let mut bad = 0;
    for name in names {
        let dir = root.join(&name);
        let versions = present_versions(&dir);
        let vs = versions
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        match ModelConfig::load(&dir) {
            Ok(c) => {
                let served = c.version_policy.select(&versions);
                let status = if served.is_empty() {
                    bad += 1;
                    format!("invalid: no version folder matches {:?}", c.version_policy)
                } else {
                    format!("ok (serves {served:?})")
                };
                let place = placement_text(&c, &devices);
                println!(
                    "{name:<20} {vs:<12} {:<10} {place:<16} {status}",
                    c.architecture
                );
            }
            Err(e) => {
                bad += 1;
                println!("{name:<20} {vs:<12} {:<10} {:<16} invalid: {e}", "-", "-");
            }
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} model(s) have an invalid configuration");
    }
    Ok(())
}

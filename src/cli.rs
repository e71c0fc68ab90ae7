//! The command line: `ferrite serve` and `ferrite models`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{ServeArgs, Settings, DEFAULT_MODEL_REPOSITORY};
use crate::repository::{model_names, present_versions, ModelConfig};
use crate::server::Server;
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
    /// List the models in a repository and whether each config is valid.
    Models {
        /// Model repository folder
        #[arg(long, env = "FERRITE_MODEL_REPOSITORY", default_value = DEFAULT_MODEL_REPOSITORY)]
        model_repository: PathBuf,
    },
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Models { model_repository } => models(&model_repository),
    }
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
    rt.block_on(async {
        let server = Server::start(&settings).await?;
        crate::shutdown::signal().await;
        server.shutdown().await;
        anyhow::Ok(())
    })
}

fn models(root: &std::path::Path) -> anyhow::Result<()> {
    let names = model_names(root);
    if names.is_empty() {
        anyhow::bail!(
            "no model folders with a config.toml under '{}'",
            root.display()
        );
    }
    println!("{:<20} {:<12} {:<10} STATUS", "MODEL", "VERSIONS", "ARCH");
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
                println!("{name:<20} {vs:<12} {:<10} {status}", c.architecture);
            }
            Err(e) => {
                bad += 1;
                println!("{name:<20} {vs:<12} {:<10} invalid: {e}", "-");
            }
        }
    }
    if bad > 0 {
        anyhow::bail!("{bad} model(s) have an invalid configuration");
    }
    Ok(())
}

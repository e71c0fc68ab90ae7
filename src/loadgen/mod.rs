//! The load generator and capacity planner behind `ferrite bench` and `ferrite capacity`.
//!
//! `bench` drives any KServe v2 (JSON or binary), OpenAI `/v1/embeddings` or TEI `/embed` server over
//! a sweep of closed-loop concurrencies or open-loop request rates, measures each step in windows
//! until stable, and reports latency percentiles (HDR histograms), throughput, errors by status,
//! the server-side split from Triton-named metrics, GPU gauges, and its own CPU use. `capacity` runs
//! such sweeps (optionally across server configs, each served by a child `ferrite serve`) and turns
//! them into an SLO-bound throughput and a replica count.
//!
//! This module is a client: it never touches the server's internals, only HTTP. Pure parts (stats,
//! schedule, request building, metrics parsing, capacity math, report formats) hold no sockets.
//!
//! It lives in the binary but apart: it imports only `protocol` (wire formats) and `tensor` (and,
//! through `protocol`, the `spec` leaf), never the server's modules (`api`, `batcher`, `repository`,
//! `model`, ...), so that it can move to its own crate later without a cycle;
//! `scripts/module-deps.py` lists the arrows.

pub mod args;
pub mod bench;
pub mod capacity;
pub mod child;
pub mod client;
pub mod plot;
pub mod report;
pub mod request;
pub mod runner;
pub mod schedule;
pub mod scrape;
pub mod stats;

/// Everything that can go wrong in the bench and the planner.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("{0}")]
    Args(String),
    #[error("model metadata: {0}")]
    Metadata(String),
    #[error("input file, line {line}: {message}")]
    InputFile { line: usize, message: String },
    #[error("GET {url}: {message}")]
    Http { url: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("plot: {0}")]
    Plot(String),
    #[error("child server: {0}")]
    Child(String),
}

impl LoadgenError {
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> LoadgenError {
        LoadgenError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

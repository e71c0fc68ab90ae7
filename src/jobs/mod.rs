//! Bulk jobs: embed or score a whole corpus on the job lane of a model's queue, offline from the
//! CLI (`ferrite batch`, `cli.rs`) or asynchronously over HTTP (`manager.rs`, routes in
//! `api/jobs.rs`). `input` reads records as a stream, `engine` runs them through a loaded version
//! (the online doors' validation and outputs), `output` writes parts and merges them, `checkpoint`
//! and `run` make a job resumable after any interruption. Nothing here speaks HTTP.

pub mod checkpoint;
pub mod cli;
pub mod engine;
pub mod input;
pub mod manager;
pub mod output;
pub mod run;

pub use engine::Engine;
pub use input::{InputFormat, InputSpec};
pub use manager::{JobState, JobsConfig, Manager};
pub use output::OutputFormat;
pub use run::{Progress, RunOptions, Summary};

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Checkpoint(String),
    /// The model cannot serve now (unloaded, draining): the job stops and resumes later.
    #[error("model unavailable: {0}")]
    Unavailable(String),
    #[error("canceled")]
    Canceled,
}

//! The `ferrite` binary: parses the command line and runs it.

use clap::Parser;

/// mimalloc: the server allocates small buffers on many threads; glibc's malloc showed up as ~10%
/// of CPU time (with arena lock contention) in the digits load test.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    ferrite::cli::run(ferrite::cli::Cli::parse())
}

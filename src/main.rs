//! The `ferrite` binary: parses the command line and runs it.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    ferrite::cli::run(ferrite::cli::Cli::parse())
}

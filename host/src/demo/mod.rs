//! `legsync demo` (placeholder wiring; see demo scenarios).
pub mod harness;
use clap::Args;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct DemoArgs {}

pub async fn run(_args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}

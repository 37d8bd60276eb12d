//! `legsync demo`: the reference scenarios of ARCHITECTURE.md, end to end.
//!
//! A real `engine-sim` process, a host in this process with the example
//! plugins (accept-all, rules, nap-cap) on loopback, four scenarios plus a
//! refusal and the billing trap. Each step prints the callbacks and CDRs it
//! produced and is checked against the expected outcome; any mismatch makes
//! the demo exit non-zero.
//!
//! - [`harness`]: a host running in this process, observable.
//! - [`host_process`]: a host as a child process, to crash and restart.
//! - `script`: the scenarios.

pub mod harness;
pub mod host_process;
mod script;

use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Grace time for the demo, in seconds (short, so it runs quickly).
    #[arg(long, default_value_t = 2.0)]
    grace: f64,
    /// Keep the demo's files (state, CDRs, events, plugins) in this directory.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// A directory of built plugins to use instead of the ones carried in
    /// this binary (accept_all.wasm, rules.wasm, nap_cap.wasm).
    #[arg(long)]
    plugins: Option<PathBuf>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let temp = tempfile::tempdir()?;
    let dir = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => temp.path().to_path_buf(),
    };
    let built = match args.plugins.clone() {
        Some(dir) => dir,
        None => {
            // The examples carried in the binary, under the names a build
            // folder has.
            let built = dir.join("built");
            std::fs::create_dir_all(&built)?;
            for (name, wasm) in legsync::embedded::PLUGINS {
                std::fs::write(built.join(format!("{}.wasm", name.replace('-', "_"))), wasm)?;
            }
            built
        }
    };
    let mut demo = script::Demo::new(&dir, &built, args.grace).await?;
    let outcome = demo.play().await;
    demo.finish().await;
    let failures = outcome?;
    if failures == 0 {
        println!("\nAll checks passed.");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("\n{failures} check(s) FAILED.");
        Ok(ExitCode::FAILURE)
    }
}

//! `legsync man DIR` and `legsync completions SHELL`: the man pages and
//! shell completions the package installs, generated from the command
//! line's own definitions so they never drift from it.

use clap::{Args, CommandFactory};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Where to write `legsync.1` and one page per subcommand
    /// (`legsync-run.1`, ...); created if missing.
    dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

pub fn man(args: ManArgs) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&args.dir)?;
    let command = super::Cli::command();
    clap_mangen::generate_to(command, &args.dir)?;
    let written = std::fs::read_dir(&args.dir)?.count();
    println!("{written} man pages in {}", args.dir.display());
    Ok(ExitCode::SUCCESS)
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut command = super::Cli::command();
    clap_complete::generate(args.shell, &mut command, "legsync", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

//! `legsync check [--config FILE]`: everything `legsync run` would load at
//! start (the config, every plugin with its rules), loaded the same way,
//! every problem named. The command to run before a restart or a reload.

use crate::config::HostConfig;
use crate::policy::loader;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The config file `legsync run` would read.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The plugin directory (overrides `policy.plugin_dir`, as for `run`).
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let mut problems: Vec<String> = Vec::new();
    let mut config = match &args.config {
        Some(path) => match HostConfig::load(path) {
            Ok(config) => {
                println!("ok   config {}", path.display());
                config
            }
            Err(e) => {
                problems.push(format!("{e:#}"));
                // Go on with the defaults: the plugins can still be checked.
                HostConfig::default()
            }
        },
        None => HostConfig::default(),
    };
    if let Some(dir) = &args.plugin_dir {
        config.policy.plugin_dir = Some(dir.clone());
    }
    match &config.policy.plugin_dir {
        None => println!("--   no plugin directory: every unknown leg would be rebuilt"),
        Some(dir) => check_plugins(&config, dir, &mut problems),
    }
    if problems.is_empty() {
        println!("everything loads: `legsync run` would start with this");
        return Ok(ExitCode::SUCCESS);
    }
    for problem in &problems {
        println!("FAIL {}", problem.replace('\n', " "));
    }
    println!(
        "{} problem(s): `legsync run` would not start, a reload would be rejected",
        problems.len()
    );
    Ok(ExitCode::FAILURE)
}

fn check_plugins(config: &HostConfig, dir: &std::path::Path, problems: &mut Vec<String>) {
    if let Err(e) = config.policy.validate() {
        problems.push(e);
        return;
    }
    let files = match loader::scan(dir) {
        Ok(files) => files,
        Err(e) => return problems.push(e.to_string()),
    };
    if files.is_empty() {
        println!(
            "--   {} holds no plugin: every unknown leg would be rebuilt",
            dir.display()
        );
    }
    for configured in config.policy.plugins.keys() {
        if !files.iter().any(|f| &f.name == configured) {
            println!(
                "warn the config has settings for `{configured}`, which is not in {}",
                dir.display()
            );
        }
    }
    let runtime = match crate::app::policy_runtime(config) {
        Ok(runtime) => runtime,
        Err(e) => return problems.push(format!("{e:#}")),
    };
    for file in &files {
        match loader::load_plugin(&runtime, file, &config.policy) {
            Ok(plugin) => {
                let rules = match (&file.rules, plugin.rules_hash()) {
                    (Some(path), Some(hash)) => {
                        format!(" with {} (rules@{})", path.display(), &hash[..12])
                    }
                    _ => String::new(),
                };
                println!(
                    "ok   plugin {}@{}{rules}",
                    plugin.name(),
                    &plugin.hash()[..12]
                );
            }
            Err(e) => problems.push(format!("plugin {}: {e}", file.name)),
        }
    }
}

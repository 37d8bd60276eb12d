//! Several runs of `legsync bench`, each in a child process with its own
//! engine-sim (peak RSS is per process, and each run starts from a fresh
//! engine), and their medians.
//!
//! `--policy both` alternates native and WASM runs so that both see the
//! same slow and fast phases of a shared machine; the ratio is given both as
//! the ratio of the medians and as the median of each round's ratio (runs
//! next to each other in time), with its quartiles.

use super::report::BenchReport;
use super::{BenchArgs, Mode, PolicyKind};
use anyhow::Context;
use clap::ValueEnum;
use std::process::ExitCode;

pub async fn run(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    let policies = match (args.policy, args.mode) {
        (_, Mode::Transfer) => vec![PolicyKind::Wasm], // no policy runs
        (_, Mode::Takeover) => vec![PolicyKind::Wasm], // hosts run plugins
        (PolicyKind::Both, _) => vec![PolicyKind::Native, PolicyKind::Wasm],
        (policy, _) => vec![policy],
    };
    let mut runs: Vec<Vec<BenchReport>> = vec![Vec::new(); policies.len()];
    for round in 1..=args.repeat {
        for (index, &policy) in policies.iter().enumerate() {
            if args.repeat > 1 {
                eprintln!("round {round}/{}: {}", args.repeat, arg_name(policy));
            }
            let report = run_child(args, policy, args.legs).await?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else if args.repeat == 1 {
                print!("{report}");
                println!();
            }
            runs[index].push(report);
        }
    }
    if !args.json {
        print_summary(args, &runs);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(args: &BenchArgs, runs: &[Vec<BenchReport>]) {
    if args.repeat > 1 {
        for reports in runs {
            let walls: Vec<f64> = reports.iter().map(|r| r.wall_seconds).collect();
            let peak = reports.iter().map(|r| r.peak_rss_bytes).max().unwrap_or(0);
            println!(
                "{} {}, {} runs: wall median {:.3} s (min {:.3}, max {:.3}), peak RSS up to {:.0} B/leg",
                reports[0].mode,
                reports[0].policy,
                reports.len(),
                median(&walls),
                walls.iter().copied().fold(f64::INFINITY, f64::min),
                walls.iter().copied().fold(0.0, f64::max),
                peak as f64 / args.legs.max(1) as f64,
            );
        }
    }
    if let [native, wasm] = runs {
        let median_wall = |reports: &[BenchReport]| {
            median(&reports.iter().map(|r| r.wall_seconds).collect::<Vec<_>>())
        };
        let (n, w) = (median_wall(native), median_wall(wasm));
        let extra_ns = (w - n) * 1e9 / args.legs.max(1) as f64;
        println!(
            "WASM / native: {:.2}x wall ({extra_ns:+.0} ns per leg for the plugin boundary)",
            w / n.max(1e-9)
        );
        if native.len() > 1 {
            let mut ratios: Vec<f64> = native
                .iter()
                .zip(wasm)
                .map(|(n, w)| w.wall_seconds / n.wall_seconds.max(1e-9))
                .collect();
            ratios.sort_by(f64::total_cmp);
            let quartile = |q: usize| ratios[(ratios.len() - 1) * q / 4];
            println!(
                "  per round: median {:.2}x (quartiles {:.2}x - {:.2}x)",
                median(&ratios),
                quartile(1),
                quartile(3)
            );
        }
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// One run of `legsync bench --json` with `policy` over `legs`, in a child
/// process.
pub(super) async fn run_child(
    args: &BenchArgs,
    policy: PolicyKind,
    legs: u64,
) -> anyhow::Result<BenchReport> {
    let (legs, mode, name) = (legs.to_string(), arg_name(args.mode), arg_name(policy));
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command.args(["bench", "--json", "--legs", &legs]);
    command.args(["--mode", &mode, "--policy", &name]);
    command.args(["--loss", &arg_name(args.loss)]);
    if args.ascending {
        command.arg("--ascending");
    }
    if args.mixers > 0 {
        command.arg("--mixers").arg(args.mixers.to_string());
    }
    if let Some(dir) = &args.datasets {
        command.arg("--datasets").arg(dir);
    }
    if args.crafted_ids {
        command.arg("--crafted-ids");
    }
    if let Some(plugin) = &args.plugin {
        command.arg("--plugin").arg(plugin);
    }
    if let Some(rules) = &args.rules {
        command.arg("--rules").arg(rules);
    }
    if let Some(instances) = args.instances {
        command.arg("--instances").arg(instances.to_string());
    }
    let output = command
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .context("cannot run the bench child process")?;
    anyhow::ensure!(
        output.status.success(),
        "the {name} run failed ({})",
        output.status
    );
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("the {name} run printed no report"))
}

/// How a value is spelled on the command line (what clap parses it from).
fn arg_name(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .expect("bench values are never skipped")
        .get_name()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}

//! `legsync replay RECORDING --plugin-dir DIR [--against DIR2]`: a recorded
//! resync decided again with a plugin set, and how its decisions differ
//! from those made then (or from another set's).
//!
//! Deterministic: the plugins see the recording's start time as `now-ms`,
//! and get the legs and links the resync offered, in the order it did.

use anyhow::Context;
use clap::Args;
use legsync::policy::{PolicyChain, PolicyRuntime, loader};
use legsync::recording::{Recording, Replayed, Verdicts};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A recording (`resync-<ms>.lsrec`, from `[recording]`).
    recording: PathBuf,
    /// The plugin set to decide it with (a drop-in directory, as
    /// `policy.plugin_dir`).
    #[arg(long)]
    plugin_dir: PathBuf,
    /// Compare with this set's decisions instead of those made then.
    #[arg(long, value_name = "DIR")]
    against: Option<PathBuf>,
    /// Differences listed (all are counted).
    #[arg(long, default_value_t = 20)]
    show: usize,
    /// One JSON object: the counts and every difference.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    datasets: super::plugin::DatasetArgs,
    #[command(flatten)]
    cache: super::plugin::CacheArgs,
}

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let recording = Recording::read(&args.recording)?;
    let header = recording.header.clone().expect("read checks the header");
    let runtime = args.cache.runtime()?;
    // Before any plugin starts: `init` may read the clock too.
    runtime.fix_clock(header.started_ms);
    let data = args.datasets.dir();
    let chain = load(&runtime, &args.plugin_dir, data)?;
    let started = Instant::now();
    let now = recording.replay(&chain);
    let took = started.elapsed();
    let (reference, against) = match &args.against {
        Some(dir) => (
            recording.replay(&load(&runtime, dir, data)?),
            dir.display().to_string(),
        ),
        None => (
            recording.then.clone(),
            "the decisions made then".to_string(),
        ),
    };
    let differences = reference.diff(&now);
    if args.json {
        let json = serde_json::json!({
            "recording": args.recording,
            "complete": recording.complete,
            "host": header.host,
            "started_ms": header.started_ms,
            "decided_then_by": header.plugins,
            "offered_legs": now.legs.len(),
            "offered_links": now.links.len(),
            "counts": counts(&now),
            "against": against,
            "against_counts": counts(&reference),
            "differences": differences.iter().map(|d| serde_json::json!({
                "item": d.item,
                "id": d.id,
                "before": d.before.as_ref().map(|(decision, by)| serde_json::json!({"decision": decision.as_str(), "plugin": by})),
                "after": d.after.as_ref().map(|(decision, by)| serde_json::json!({"decision": decision.as_str(), "plugin": by})),
            })).collect::<Vec<_>>(),
            "micros": took.as_micros() as u64,
        });
        println!("{json}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{}: host {}, started at {} ms, decided then by {}{}",
        args.recording.display(),
        header.host,
        header.started_ms,
        header.plugins.join(", "),
        if recording.complete {
            ""
        } else {
            " (CUT SHORT: the resync did not finish; what was recorded is replayed)"
        }
    );
    println!(
        "held at the start: {} legs; offered: {} legs, {} links",
        recording.held.len(),
        now.legs.len(),
        now.links.len()
    );
    let per_second = now.legs.len() as f64 / took.as_secs_f64().max(1e-9);
    println!(
        "{}: {}, in {:.3} s ({:.0} legs a second)",
        args.plugin_dir.display(),
        describe(&now),
        took.as_secs_f64(),
        per_second
    );
    println!("{against}: {}", describe(&reference));
    println!("{} decisions differ", differences.len());
    for difference in differences.iter().take(args.show) {
        println!("  {}", line(difference));
    }
    if differences.len() > args.show {
        println!(
            "  ... and {} more (--show N, or --json)",
            differences.len() - args.show
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The plugin set of `dir`, granted every dataset of `data` (if given).
fn load(runtime: &PolicyRuntime, dir: &Path, data: Option<&Path>) -> anyhow::Result<PolicyChain> {
    let names = loader::scan(dir)?.into_iter().map(|file| file.name);
    let config = super::plugin::granting_all(data, names)?;
    loader::load_dir(runtime, dir, &config)
        .with_context(|| format!("cannot load the plugins in {}", dir.display()))
}

fn counts(verdicts: &Verdicts) -> serde_json::Value {
    let [(legs_rebuilt, legs_refused), (links_rebuilt, links_refused)] = verdicts.counts();
    serde_json::json!({
        "legs_rebuilt": legs_rebuilt, "legs_refused": legs_refused,
        "links_rebuilt": links_rebuilt, "links_refused": links_refused,
    })
}

fn describe(verdicts: &Verdicts) -> String {
    let [(legs_rebuilt, legs_refused), (links_rebuilt, links_refused)] = verdicts.counts();
    format!(
        "{legs_rebuilt} legs rebuilt, {legs_refused} refused; {links_rebuilt} links rebuilt, {links_refused} refused"
    )
}

fn line(difference: &Replayed) -> String {
    let side = |v: &Option<(legsync::model::Decision, String)>| match v {
        Some((decision, by)) => format!("{} by {by}", decision.as_str()),
        None => "not offered".to_string(),
    };
    format!(
        "{} {}: {} -> {}",
        difference.item,
        difference.id,
        side(&difference.before),
        side(&difference.after)
    )
}

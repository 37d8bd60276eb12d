//! `legsync plugin check` and `legsync plugin eval`: the plugin author's loop.

use crate::model::{CallLeg, Link};
use crate::policy::{PolicyChain, PolicyConfig, PolicyRuntime, Verdict, loader};
use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Load a plugin, check it against the contract, run its init.
    Check(CheckArgs),
    /// Run a plugin (or a plugin directory, as a chain) over legs and links
    /// from JSON files; print one JSON line per decision.
    Eval(EvalArgs),
    /// Write an example plugin carried in this binary (accept-all, rules,
    /// nap-cap) to DIR as NAME.wasm.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// accept-all, rules or nap-cap.
    name: String,
    /// Where to write it (created if missing).
    dir: PathBuf,
    /// The file stem (default: NAME), e.g. `20-rules` for chain order.
    #[arg(long = "as")]
    stem: Option<String>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The component (`.wasm`).
    plugin: PathBuf,
    /// Its rules text (default: the `NAME.rules` sidecar, if any).
    #[arg(long)]
    rules: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The component (`.wasm`), or a plugin directory for the whole chain.
    plugin: PathBuf,
    /// Its rules text (single plugin only; default: the sidecar).
    #[arg(long)]
    rules: Option<PathBuf>,
    /// A JSON array of legs (see docs/plugin-guide.md).
    #[arg(long)]
    legs: PathBuf,
    /// A JSON array of links.
    #[arg(long)]
    links: Option<PathBuf>,
}

pub fn run(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::Check(args) => check(args),
        PluginCommand::Eval(args) => eval(args),
        PluginCommand::Export(args) => export(args),
    }
}

fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let wasm = crate::embedded::plugin(&args.name)?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let path = args.dir.join(format!(
        "{}.wasm",
        args.stem.as_deref().unwrap_or(&args.name)
    ));
    std::fs::write(&path, wasm).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {} ({} bytes)", path.display(), wasm.len());
    Ok(ExitCode::SUCCESS)
}

fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let chain = load(&args.plugin, args.rules.as_deref())?;
    let plugin = &chain.plugins()[0];
    println!(
        "ok: {} loads, matches the contract and accepts its rules",
        args.plugin.display()
    );
    println!("name: {}", plugin.name());
    println!("contract: legsync:policy@{}", plugin.contract().version);
    println!("sha256: {}", plugin.hash());
    println!("imports:");
    for import in &plugin.contract().imports {
        println!("  {import}");
    }
    // Each export once, with sample data: a plugin that would fail live
    // fails here.
    let problems = exercise(&chain);
    if problems.is_empty() {
        println!("exercised: on-call-leg-sync, on-link-sync, on-call-leg-terminated: ok");
        Ok(ExitCode::SUCCESS)
    } else {
        for problem in &problems {
            println!("FAIL {problem}");
        }
        println!("the plugin loads but fails when called: it would fail live (see the log above)");
        Ok(ExitCode::FAILURE)
    }
}

/// Calls every export of a chain of one plugin once with sample legs (one
/// with a non-ASCII NAP) and a link; returns what failed.
fn exercise(chain: &PolicyChain) -> Vec<String> {
    let now = crate::model::now_ms();
    let sample = |id: u64, nap: &str, protocol| CallLeg {
        id,
        session_id: id,
        direction: crate::model::Direction::Inbound,
        protocol,
        nap: nap.into(),
        calling: "15145550100".into(),
        called: "19005550100".into(),
        offered_at_ms: now - 60_000,
        answered_at_ms: Some(now - 50_000),
        linked_to: None,
        state: crate::model::LegState::Answered,
    };
    let legs = [
        sample(1, "SIP_CARRIER_A", crate::model::Protocol::Sip),
        sample(2, "ISDN_ŁÓDŹ", crate::model::Protocol::Isdn),
    ];
    let mut problems = Vec::new();
    for (export, verdicts) in [
        ("on-call-leg-sync", chain.decide_legs(&legs)),
        (
            "on-link-sync",
            chain.decide_links(&[Link {
                id: 1,
                leg_a: 1,
                leg_b: 2,
            }]),
        ),
    ] {
        if let Some(kind) = verdicts.iter().find_map(|v| v.failure) {
            problems.push(format!("{export}: {}", kind.as_str()));
        }
    }
    let plugin = &chain.plugins()[0];
    let before = plugin.stats().failures;
    chain.notify_terminated(&legs, crate::model::TerminationReason::Released);
    if plugin.stats().failures > before {
        problems.push("on-call-leg-terminated: failed".to_string());
    }
    problems
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    leg: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    link: Option<u64>,
    decision: crate::model::Decision,
    plugin: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<crate::policy::FailureKind>,
}

fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let chain = if args.plugin.is_dir() {
        anyhow::ensure!(
            args.rules.is_none(),
            "--rules applies to a single plugin; a directory uses its sidecars"
        );
        let runtime = PolicyRuntime::new(None)?;
        loader::load_dir(&runtime, &args.plugin, &PolicyConfig::default())?
    } else {
        load(&args.plugin, args.rules.as_deref())?
    };
    let legs: Vec<CallLeg> = read_json(&args.legs)?;
    let links: Vec<Link> = match &args.links {
        Some(path) => read_json(path)?,
        None => Vec::new(),
    };
    let print = |leg: Option<u64>, link: Option<u64>, v: &Verdict| -> anyhow::Result<()> {
        let line = Line {
            leg,
            link,
            decision: v.decision,
            plugin: &v.plugin,
            failure: v.failure,
        };
        println!("{}", serde_json::to_string(&line)?);
        Ok(())
    };
    let mut refused = crate::model::IdSet::default();
    let mut rebuilt = crate::model::IdSet::default();
    for (leg, verdict) in legs.iter().zip(chain.decide_legs(&legs)) {
        print(Some(leg.id), None, &verdict)?;
        match verdict.decision {
            crate::model::Decision::Refuse => refused.insert(leg.id),
            crate::model::Decision::Rebuild => rebuilt.insert(leg.id),
        };
    }
    // Links as the host sorts them: those of a refused leg are dropped
    // without a decision, those of legs not given are ignored.
    let plan = crate::resync::sort_links(links, &refused, |leg| rebuilt.contains(&leg), |_| false);
    for link in &plan.drop {
        println!(
            "{}",
            serde_json::json!({"link": link.id, "decision": "refuse", "dropped": "a leg of the link was refused"})
        );
    }
    let ignored = [
        (&plan.ignored, "a leg of the link is not in --legs"),
        (&plan.self_links, "a link from a leg to itself"),
        (
            &plan.doubly_linked,
            "a leg of the link is already in another link",
        ),
    ];
    for (links, why) in ignored {
        for link in links {
            println!("{}", serde_json::json!({"link": link.id, "ignored": why}));
        }
    }
    for (link, verdict) in plan.offer.iter().zip(chain.decide_links(&plan.offer)) {
        print(None, Some(link.id), &verdict)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads one plugin file as a chain of one.
fn load(path: &Path, rules: Option<&Path>) -> anyhow::Result<PolicyChain> {
    anyhow::ensure!(path.is_file(), "{} is not a file", path.display());
    let runtime = PolicyRuntime::new(None)?;
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin")
        .to_string();
    let sidecar = path.with_extension("rules");
    let rules = rules
        .map(Path::to_path_buf)
        .or_else(|| sidecar.is_file().then_some(sidecar));
    let file = loader::PluginFile {
        name,
        wasm: path.to_path_buf(),
        rules,
    };
    let config = PolicyConfig::default();
    let plugin = loader::load_plugin(&runtime, &file, &config)?;
    Ok(PolicyChain::new(vec![plugin], config.batch_size))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not valid: expected a JSON array as in docs/plugin-guide.md",
            path.display()
        )
    })
}

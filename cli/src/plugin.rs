//! `legsync plugin check` and `legsync plugin eval`: the plugin author's loop.

use anyhow::Context;
use clap::{Args, Subcommand};
use legsync::model::{CallLeg, Decision, Link};
use legsync::policy::Export;
use legsync::policy::{
    CacheOutcome, CompileCache, PolicyChain, PolicyConfig, PolicyRuntime, Verdict, loader,
};
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
    /// Decide the legs (and links) of test files and compare with the
    /// decisions they expect; exit 1 on any difference.
    Test(super::plugin_test::TestArgs),
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

/// Where compiled plugins are kept between runs: a big component (a
/// Python or JavaScript plugin is 10-20 MB) takes many seconds to compile.
#[derive(Debug, Args)]
pub(crate) struct CacheArgs {
    /// The compile cache (default: as `legsync run`'s,
    /// `$XDG_CACHE_HOME/legsync` or `~/.cache/legsync`).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Compile without the cache.
    #[arg(long, conflicts_with = "cache_dir")]
    no_cache: bool,
}

impl CacheArgs {
    pub(crate) fn runtime(&self) -> anyhow::Result<PolicyRuntime> {
        let dir = if self.no_cache {
            None
        } else {
            self.cache_dir
                .clone()
                .or_else(legsync::app::default_cache_dir)
        };
        PolicyRuntime::new(dir.map(CompileCache::new))
            .context("cannot start the WebAssembly runtime")
    }
}

/// Reference data for the plugin under test.
#[derive(Debug, Args)]
pub(crate) struct DatasetArgs {
    /// A dataset directory (`NAME.set`, `NAME.map`, `NAME.prefix`): every
    /// dataset in it is granted to the plugin (to every plugin of a
    /// directory).
    #[arg(long)]
    datasets: Option<PathBuf>,
}

impl DatasetArgs {
    pub(crate) fn dir(&self) -> Option<&Path> {
        self.datasets.as_deref()
    }
}

/// A config that grants every dataset of `dir` (if any) to each of `plugins`.
pub(crate) fn granting_all(
    dir: Option<&Path>,
    plugins: impl IntoIterator<Item = String>,
) -> anyhow::Result<PolicyConfig> {
    let mut config = PolicyConfig::default();
    let Some(dir) = dir else {
        return Ok(config);
    };
    let names = legsync::policy::datasets::names_in(dir)?;
    anyhow::ensure!(
        !names.is_empty(),
        "{} holds no dataset (NAME.set, NAME.map or NAME.prefix)",
        dir.display()
    );
    config.dataset_dir = Some(dir.to_path_buf());
    for plugin in plugins {
        config.plugins.insert(
            plugin,
            legsync::policy::config::PluginConfig {
                datasets: Some(names.clone()),
                ..Default::default()
            },
        );
    }
    Ok(config)
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The component (`.wasm`).
    plugin: PathBuf,
    /// Its rules text (default: the `NAME.rules` sidecar, if any).
    #[arg(long)]
    rules: Option<PathBuf>,
    /// The resync's time for decisions to hold the plugin to (the host's
    /// `link.decision_budget_ms`; default its default).
    #[arg(long, default_value_t = DEFAULT_DECISION_BUDGET_MS)]
    decision_budget_ms: u64,
    /// The legs of the largest resync the plugin must decide within that
    /// budget: the engine's size.
    #[arg(long = "resync-legs", default_value_t = 1_000_000)]
    resync_legs: usize,
    #[command(flatten)]
    datasets: DatasetArgs,
    #[command(flatten)]
    cache: CacheArgs,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The component (`.wasm`), or a plugin directory for the whole chain.
    plugin: PathBuf,
    /// Its rules text (single plugin only; default: the sidecar).
    #[arg(long)]
    rules: Option<PathBuf>,
    /// A JSON array of legs (see docs/plugin-guide.md), or a page of
    /// `legsync legs --json`.
    #[arg(long)]
    legs: PathBuf,
    /// A JSON array of links.
    #[arg(long)]
    links: Option<PathBuf>,
    /// A JSON array of conference mixers, each with its joins:
    /// `{"id": 1, "name": "sales", "joins": [{"leg": 3, "role": "listener"}]}`.
    #[arg(long)]
    mixers: Option<PathBuf>,
    #[command(flatten)]
    datasets: DatasetArgs,
    #[command(flatten)]
    cache: CacheArgs,
}

pub fn run(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::Check(args) => check(args),
        PluginCommand::Eval(args) => eval(args),
        PluginCommand::Test(args) => super::plugin_test::run(args),
        PluginCommand::Export(args) => export(args),
    }
}

fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let wasm = legsync::embedded::plugin(&args.name)?;
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
    let started = std::time::Instant::now();
    let chain = load(
        &args.cache.runtime()?,
        &args.plugin,
        args.rules.as_deref(),
        args.datasets.dir(),
    )?;
    let plugin = &chain.plugins()[0];
    println!(
        "ok: {} loads, matches the contract and accepts its rules",
        args.plugin.display()
    );
    println!("name: {}", plugin.name());
    println!(
        "loaded in {:.2} s ({})",
        started.elapsed().as_secs_f64(),
        match plugin.cache_outcome() {
            CacheOutcome::Hit => "compiled code from the cache".to_string(),
            CacheOutcome::Miss => "compiled, and kept in the cache".to_string(),
            CacheOutcome::Rebuilt { reason } => format!("compiled again: {reason}"),
            CacheOutcome::Disabled => "compiled; no cache".to_string(),
        }
    );
    println!(
        "contract: legsync:policy@{}",
        plugin.contract().contract.version()
    );
    println!("sha256: {}", plugin.hash());
    println!("imports:");
    let imports = &plugin.contract().imports;
    let width = imports.iter().map(String::len).max().unwrap_or(0);
    for import in imports {
        let grant = legsync::policy::imports::classify(import).describe();
        println!("  {import:<width$}  {grant}");
    }
    let datasets = plugin.datasets().infos();
    if !datasets.is_empty() {
        println!("datasets granted:");
    }
    for dataset in datasets {
        println!(
            "  {}@{}  {}, {} keys, {:.1} MB in memory (file {:.1} MB)",
            dataset.name,
            dataset.version,
            dataset.kind.as_str(),
            legsync::supervisor::group_thousands(dataset.entries),
            dataset.bytes as f64 / 1e6,
            dataset.file_bytes as f64 / 1e6,
        );
    }
    // Each export once, with sample data: a plugin that would fail live
    // fails here.
    let mut problems = exercise(&chain);
    if problems.is_empty() {
        // Fresh instances of the same compiled plugin (`init` run again),
        // not another load and compile.
        let fresh = || Ok(chain.fork()?);
        problems.extend(consistency(fresh)?);
    }
    if problems.is_empty() {
        let exports: Vec<&str> = Export::ALL
            .into_iter()
            .filter(|export| {
                plugin.has_mixer_exports()
                    || !matches!(export, Export::MixerSync | Export::MixerTerminated)
            })
            .map(Export::name)
            .collect();
        println!("exercised: {}: ok", exports.join(", "));
        let plugin = &chain.plugins()[0];
        let calls_before = plugin.stats().calls;
        let (_, timing) =
            timed_decisions(&chain, &legsync::policy::sample::legs(chain.batch_size()));
        println!("measured: {timing}");
        println!(
            "  in {} plugin calls (sized to the plugin's measured cost per call and per leg)",
            plugin.stats().calls - calls_before
        );
        let cap = plugin.settings().limits.memory_bytes;
        let mb = |bytes: u64| bytes as f64 / f64::from(1 << 20);
        println!(
            "memory: {:.1} MB after a full batch, of a {:.0} MB cap (memory_mb; an instance is replaced by a fresh one past {:.0} MB)",
            mb(plugin.stats().peak_memory_bytes),
            mb(cap as u64),
            mb(cap as u64 / 4 * 3),
        );
        // As the host would call it once its batches have settled.
        let legs = args.resync_legs;
        let predicted = plugin.predict(Export::LegSync, legs, chain.batch_size());
        let budget = std::time::Duration::from_millis(args.decision_budget_ms);
        println!(
            "a resync of {} legs: ~{:.1} s in this plugin, of a decision budget of {:.0} s",
            legsync::supervisor::group_thousands(legs as u64),
            predicted.as_secs_f64(),
            budget.as_secs_f64()
        );
        if predicted > budget {
            println!(
                "FAIL a resync of {} legs would spend ~{:.0} s in this plugin, past the decision budget (link.decision_budget_ms, {:.0} s): the legs after it would be decided by the failure policy, not by the plugin. Give it `instances = 2` (two chunks of a resync decided at once), a larger budget, or check against your engine's size (--resync-legs)",
                legsync::supervisor::group_thousands(legs as u64),
                predicted.as_secs_f64(),
                budget.as_secs_f64()
            );
            return Ok(ExitCode::FAILURE);
        }
        Ok(ExitCode::SUCCESS)
    } else {
        for problem in &problems {
            println!("FAIL {problem}");
        }
        println!("the plugin loads, but would fail or misdecide live (see above)");
        Ok(ExitCode::FAILURE)
    }
}

/// The default `link.decision_budget_ms`: what `check` compares a
/// million-leg resync's decisions with, unless told another.
const DEFAULT_DECISION_BUDGET_MS: u64 = legsync::config::DEFAULT_DECISION_BUDGET_MS;

/// Decides the same legs three ways, each on a fresh instance (so a
/// plugin's state starts equal): in one batch of plain ASCII legs, after
/// legs with non-ASCII text in the same batch, and one leg per call. A
/// plugin that reads its batch right decides each leg the same way every
/// time; one that takes the spans (byte offsets into UTF-8) for character
/// offsets misreads every leg after non-ASCII text. The problems found.
fn consistency(fresh: impl Fn() -> anyhow::Result<PolicyChain>) -> anyhow::Result<Vec<String>> {
    use legsync::model::Protocol;
    use legsync::policy::sample::leg;
    let called = [
        "19005550100",
        "15145550101",
        "18005550102",
        "19005550103",
        "4420755501",
    ];
    let ascii: Vec<CallLeg> = (0..40u64)
        .map(|i| {
            let nap = if i % 3 == 0 {
                "SIP_CARRIER_A"
            } else {
                "SIP_CARRIER_B"
            };
            let number = called[i as usize % called.len()];
            leg(
                1_000 + i,
                nap,
                Protocol::Sip,
                &format!("1514555{i:04}"),
                number,
            )
        })
        .collect();
    let wide: Vec<CallLeg> = (0..8u64)
        .map(|i| {
            leg(
                i + 1,
                "ISDN_ŁÓDŹ_ŻÓŁW",
                Protocol::Isdn,
                "+48 42 ☎ 555",
                "１９００５５５０１００",
            )
        })
        .collect();
    let decisions = |verdicts: &[Verdict]| -> Option<Vec<Decision>> {
        // A failure is reported by the other checks, not compared.
        verdicts
            .iter()
            .map(|v| v.failure.is_none().then_some(v.decision))
            .collect()
    };
    let alone = decisions(&fresh()?.decide_legs(&ascii));
    let after_wide = {
        let mixed: Vec<CallLeg> = wide.iter().chain(&ascii).cloned().collect();
        decisions(&fresh()?.decide_legs(&mixed)[wide.len()..])
    };
    let one_by_one = {
        let chain = fresh()?;
        let verdicts: Vec<Verdict> = ascii
            .iter()
            .flat_map(|leg| chain.decide_legs(std::slice::from_ref(leg)))
            .collect();
        decisions(&verdicts)
    };
    let (Some(alone), Some(after_wide), Some(one_by_one)) = (alone, after_wide, one_by_one) else {
        return Ok(Vec::new());
    };
    let mut problems = Vec::new();
    for (how, other) in [
        (
            "after legs with non-ASCII text in the same batch",
            &after_wide,
        ),
        ("one leg per call", &one_by_one),
    ] {
        let differ: Vec<String> = ascii
            .iter()
            .zip(alone.iter().zip(other))
            .filter(|(_, (a, b))| a != b)
            .map(|(leg, (a, b))| {
                format!(
                    "leg {} ({} in a batch, {} {how})",
                    leg.id,
                    a.as_str(),
                    b.as_str()
                )
            })
            .collect();
        if !differ.is_empty() {
            problems.push(format!(
                "decisions depend on the batch: {} of {} legs decided differently {how}, e.g. {}. The plugin misreads its batch (a leg's spans are byte offsets into the batch's UTF-8 text, not character offsets: docs/plugin-guide.md) or keeps state across legs it should not",
                differ.len(),
                ascii.len(),
                differ[0]
            ));
        }
    }
    Ok(problems)
}

/// Calls every export of a chain of one plugin once with the sample legs
/// (one with non-ASCII text) and a link, as a reload does; returns what
/// failed.
fn exercise(chain: &PolicyChain) -> Vec<String> {
    legsync::policy::sample::failures(chain)
        .into_iter()
        .map(|failure| {
            let how = failure.kind.map_or("failed", |kind| kind.as_str());
            format!("{}: {how}", failure.export)
        })
        .collect()
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    leg: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    link: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mixer: Option<u64>,
    decision: legsync::model::Decision,
    plugin: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure: Option<legsync::policy::FailureKind>,
    /// Why, in the plugin's words (`explain`).
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    /// The deciding plugin's datasets, `name@version,...`.
    #[serde(skip_serializing_if = "Option::is_none")]
    datasets: Option<&'static str>,
}

fn eval(args: EvalArgs) -> anyhow::Result<ExitCode> {
    let chain = if args.plugin.is_dir() {
        anyhow::ensure!(
            args.rules.is_none(),
            "--rules applies to a single plugin; a directory uses its sidecars"
        );
        let names = loader::scan(&args.plugin)?
            .into_iter()
            .map(|file| file.name);
        let config = granting_all(args.datasets.dir(), names)?;
        loader::load_dir(&args.cache.runtime()?, &args.plugin, &config)?
    } else {
        load(
            &args.cache.runtime()?,
            &args.plugin,
            args.rules.as_deref(),
            args.datasets.dir(),
        )?
    };
    let legs =
        super::plugin_test::legs_from(read_json(&args.legs)?, &args.legs.display().to_string())?;
    let links: Vec<Link> = match &args.links {
        Some(path) => read_json(path)?,
        None => Vec::new(),
    };
    let (mixers, joins) = match &args.mixers {
        Some(path) => {
            super::plugin_test::mixers_from(read_json(path)?, &path.display().to_string())?
        }
        None => Default::default(),
    };
    let print = |item: Item, v: &Verdict| -> anyhow::Result<()> {
        let (leg, link, mixer) = match item {
            Item::Leg(id) => (Some(id), None, None),
            Item::Link(id) => (None, Some(id), None),
            Item::Mixer(id) => (None, None, Some(id)),
        };
        let line = Line {
            leg,
            link,
            mixer,
            decision: v.decision,
            plugin: &v.plugin,
            failure: v.failure,
            reason: v.reason.map(|r| r.as_str()),
            datasets: v.data.map(|d| d.as_str()),
        };
        println!("{}", serde_json::to_string(&line)?);
        Ok(())
    };
    let mut refused = legsync::model::IdSet::default();
    let mut rebuilt = legsync::model::IdSet::default();
    let (verdicts, timing) = timed_decisions(&chain, &legs);
    if !legs.is_empty() {
        eprintln!("{timing}");
    }
    for (leg, verdict) in legs.iter().zip(verdicts) {
        print(Item::Leg(leg.id), &verdict)?;
        match verdict.decision {
            legsync::model::Decision::Refuse => refused.insert(leg.id),
            legsync::model::Decision::Rebuild => rebuilt.insert(leg.id),
        };
    }
    // Links as the host sorts them: those of a refused leg are dropped
    // without a decision, those of legs not given are ignored.
    // Mixers as the host offers them: joins of held legs only.
    let offered = super::plugin_test::offered_mixers(mixers, joins, &rebuilt, &refused);
    let mut sides = EvalSides {
        rebuilt,
        claimed: legsync::model::IdSet::default(),
    };
    let plan = legsync::internals::sort_links(&links, &refused, &mut sides);
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
        print(Item::Link(link.id), &verdict)?;
    }
    for (held, verdict) in offered.iter().zip(chain.decide_mixers(&offered)) {
        print(Item::Mixer(held.mixer.id), &verdict)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What a line of `plugin eval` decides.
#[derive(Debug, Clone, Copy)]
enum Item {
    Leg(u64),
    Link(u64),
    Mixer(u64),
}

/// The legs as `plugin eval` sees them: rebuilt ones are held, none linked
/// before this run.
struct EvalSides {
    rebuilt: legsync::model::IdSet<u64>,
    claimed: legsync::model::IdSet<u64>,
}

impl legsync::internals::LinkSides for EvalSides {
    fn side(&self, leg: u64) -> Option<(bool, legsync::internals::SlotHint)> {
        self.rebuilt
            .contains(&leg)
            .then(|| (self.claimed.contains(&leg), Default::default()))
    }
    fn claim(&mut self, leg: u64) {
        self.claimed.insert(leg);
    }
}

/// `OnCallLegSync` over `legs` one batch at a time (as the host batches),
/// each batch timed: the plugin author sees how close a batch comes to the
/// deadline.
fn timed_decisions(chain: &PolicyChain, legs: &[CallLeg]) -> (Vec<Verdict>, BatchTiming) {
    let mut verdicts = Vec::with_capacity(legs.len());
    let mut timing = BatchTiming {
        legs: legs.len(),
        batch_size: chain.batch_size(),
        batches: 0,
        total: std::time::Duration::ZERO,
        slowest: std::time::Duration::ZERO,
        deadline: chain
            .plugins()
            .iter()
            .map(|p| p.settings().limits.call_deadline)
            .min()
            .unwrap_or_default(),
    };
    for batch in legs.chunks(chain.batch_size()) {
        let started = std::time::Instant::now();
        verdicts.extend(chain.decide_legs(batch));
        let took = started.elapsed();
        timing.batches += 1;
        timing.total += took;
        timing.slowest = timing.slowest.max(took);
    }
    (verdicts, timing)
}

/// How long a plugin chain took to decide, batch by batch.
struct BatchTiming {
    legs: usize,
    batch_size: usize,
    batches: usize,
    total: std::time::Duration,
    slowest: std::time::Duration,
    /// The tightest deadline of the chain's plugins.
    deadline: std::time::Duration,
}

impl BatchTiming {
    fn per_leg(&self) -> std::time::Duration {
        self.total / self.legs.max(1) as u32
    }
}

impl std::fmt::Display for BatchTiming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "on-call-leg-sync: {} legs in {} batch(es) of up to {}; slowest batch {:.1} ms against a deadline of {:.0} ms; {:.1} us per leg",
            self.legs,
            self.batches,
            self.batch_size,
            ms(self.slowest),
            ms(self.deadline),
            self.per_leg().as_secs_f64() * 1e6,
        )?;
        // A handful of legs is mostly the first call's warm-up: scaled up,
        // it would warn about plugins that are fine.
        if self.legs < legsync::policy::plugin::PROBE_ITEMS {
            return write!(
                f,
                " (too few legs to extrapolate; `plugin check` times a full batch)"
            );
        }
        write!(
            f,
            " (a full batch: ~{:.1} ms; a million legs: ~{:.1} s)",
            ms(self.per_leg() * self.batch_size as u32),
            self.per_leg().as_secs_f64() * 1e6,
        )?;
        if self.per_leg() * self.batch_size as u32 * 2 > self.deadline {
            write!(
                f,
                "\nWARNING: a full batch would take over half the deadline: raise deadline_ms or lower batch_size (docs/plugin-guide.md), or an overrun decides the whole batch by the failure policy"
            )?;
        }
        Ok(())
    }
}

/// Loads one plugin file as a chain of one, granted every dataset of
/// `datasets` (if given).
pub(crate) fn load(
    runtime: &PolicyRuntime,
    path: &Path,
    rules: Option<&Path>,
    datasets: Option<&Path>,
) -> anyhow::Result<PolicyChain> {
    anyhow::ensure!(path.is_file(), "{} is not a file", path.display());
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("plugin")
        .to_string();
    let sidecar = path.with_extension("rules");
    let rules = rules
        .map(Path::to_path_buf)
        .or_else(|| sidecar.is_file().then_some(sidecar));
    let config = granting_all(datasets, [name.clone()])?;
    let file = loader::PluginFile {
        name,
        wasm: path.to_path_buf(),
        rules,
    };
    let dataset_dir = datasets.map_or_else(PathBuf::new, Path::to_path_buf);
    let plugin = loader::load_plugin(runtime, &file, &config, &dataset_dir)?;
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

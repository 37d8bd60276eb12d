//! `legsync bench`: how fast a host re-adopts every call, measured end to end
//! against a real engine-sim process on loopback.
//!
//! - `cold`: a host with no contexts connects and resyncs everything (every
//!   leg and link decided, refusals dropped at the engine, CDRs written);
//! - `warm`: a host that knows every leg comes back after a short drop during
//!   which 1 % of the legs were released and 1 % new ones answered;
//! - `transfer`: only streaming and decoding the snapshot: the floor;
//! - `live`: generated answers and releases at steady rates and in a burst,
//!   each timed from the engine to its durable record (see [`live`]);
//! - `takeover`: a standby taking over from a lost active (see
//!   [`takeover`]).

mod datasets;
mod live;
mod report;
mod series;
pub mod ship;
mod sweep;
mod takeover;

use crate::demo::harness::RunningHost;
use crate::native_rules::NativeRules;
use crate::sim::process::SimProcess;
use anyhow::Context;
use clap::{Args, ValueEnum};
use legsync::config::HostConfig;
use legsync::engine::{Connection, LinkOptions};
use legsync::events::{HostEvent, LinkState, ResyncSummary};
use legsync::policy::{Decider, PolicyChain, PolicyConfig, PolicyRuntime, loader};
use legsync::protocol::EngineMessage;
use report::BenchReport;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The rules both policies run: refuse premium-rate numbers (1 % of the
/// simulator's preloaded calls).
pub const BENCH_RULES: &str = "[[rule]]\nname = \"no premium\"\naction = \"refuse\"\ncalled_prefix = [\"1900\"]\n\n[[mixer_rule]]\nname = \"no test conferences\"\naction = \"refuse\"\nname_prefix = [\"test-\"]\n";

const LONG: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyKind {
    /// The `rules` plugin (or `--plugin`), through wasmtime.
    Wasm,
    /// The same rules compiled into the host.
    Native,
    /// Native, then WASM, side by side: each run in its own process with
    /// its own engine-sim, so peak RSS and the engine's state stay per run.
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Cold,
    Warm,
    Transfer,
    /// After a cold resync, engine-sim generates answers and releases at
    /// each of `--rates` for `--seconds`, then `--burst` releases at once;
    /// reports each event's latency to its durable record and the host's
    /// heartbeat gaps (see `bench/live.rs`).
    Live,
    /// Two `legsync run` processes, active and standby; the active is lost
    /// (`--loss`) and the time until the standby's resync is done is the
    /// figure (see `bench/takeover.rs`).
    Takeover,
    /// Reference data: a 10M-number block list and a 1M-prefix rate table,
    /// their build time, memory and look-up cost, and decisions' latency
    /// while one is rebuilt (see `bench/datasets.rs`).
    Datasets,
    /// The fleet stream: `--hosts` shippers, each on a ledger of
    /// `--fleet-records` records, publishing into one local JetStream
    /// cluster at once (see `bench/ship.rs`).
    ShipFleet,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Legs preloaded in the engine (in N/2 links).
    #[arg(long, default_value_t = 1_000_000)]
    legs: u64,
    #[arg(long, value_enum, default_value = "wasm")]
    policy: PolicyKind,
    /// The plugin for `--policy wasm` (default: the built `rules` plugin).
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// Rules text for the policy (default: refuse called numbers 1900*).
    #[arg(long)]
    rules: Option<PathBuf>,
    /// A dataset directory: every dataset in it is granted to the plugin
    /// (`--policy wasm`), for rules that read reference data.
    #[arg(long)]
    datasets: Option<PathBuf>,
    /// Plugin instances deciding at once (the `instances` setting). Default:
    /// 2 for the built `rules` plugin (it keeps no state across calls), 1
    /// for a `--plugin`, which may.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=legsync::policy::MAX_INSTANCES as i64))]
    instances: Option<u32>,
    #[arg(long, value_enum, default_value = "cold")]
    mode: Mode,
    /// Print one JSON object instead of text (one line per run with
    /// `--policy both` or `--repeat`).
    #[arg(long)]
    json: bool,
    /// Runs the measurement this many times, each in its own process with
    /// its own engine-sim, alternating the policies of `--policy both` (or
    /// the sizes of `--sweep`), and prints medians: on a shared or noisy
    /// machine one run proves little.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// How the active host is lost in `--mode takeover`.
    #[arg(long, value_enum, default_value = "kill")]
    loss: takeover::Loss,
    /// Cold resyncs at each of these sizes, native and WASM, each in its own
    /// process: cost and memory per leg as the table grows.
    #[arg(long, value_delimiter = ',')]
    sweep: Option<Vec<u64>>,
    /// With `--sweep`: draw time and memory per leg against legs (SVG).
    #[arg(long, requires = "sweep")]
    plot: Option<PathBuf>,
    /// The preloaded legs get ids crafted to collide under FxHash (a
    /// hostile engine's hash flooding).
    #[arg(long, hide = true)]
    crafted_ids: bool,
    /// engine-sim streams its snapshot in ascending leg id order (a neutral
    /// order) instead of its table's hash order.
    #[arg(long)]
    ascending: bool,
    /// Conference mixers in the engine, each with 5 legs joined (the first
    /// 5 x N answered legs): the rules plugin decides them at a resync.
    #[arg(long, default_value_t = 0)]
    mixers: u64,
    /// `--mode live`: steady traffic at each of these rates (call events
    /// per second, answers and releases alternating), one phase each.
    #[arg(long, value_delimiter = ',', default_value = "10000,50000")]
    rates: Vec<u64>,
    /// `--mode live`: how long each steady phase lasts.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    seconds: u64,
    /// `--mode live`: then this many releases at once (0: no burst).
    #[arg(long, default_value_t = 100_000)]
    burst: u64,
    /// The engine link over mutual TLS (a trial PKI is generated for the
    /// run): what encryption costs (cold, warm, live).
    #[arg(long)]
    tls: bool,
    /// The host ships its ledger to a local JetStream cluster of
    /// `nats-server` processes (`--mode cold`: until every START is in
    /// the stream; `--mode live`: the stream's lag).
    #[arg(long)]
    ship: bool,
    /// Nodes of the local cluster (the stream's replicas: as many).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
    ship_nodes: u8,
    /// `ship.linger_ms` of the shipping host (default: the host's).
    #[arg(long)]
    ship_linger_ms: Option<u64>,
    /// `--mode ship-fleet`: hosts shipping at once.
    #[arg(long, default_value_t = 50)]
    hosts: usize,
    /// `--mode ship-fleet`: records in each host's ledger.
    #[arg(long, default_value_t = 20_000)]
    fleet_records: u64,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let Some(sizes) = &args.sweep {
        return sweep::run(&args, sizes).await;
    }
    if args.mode == Mode::Datasets {
        return datasets::run(&args).await;
    }
    if args.mode == Mode::ShipFleet {
        let dir = tempfile::tempdir()?;
        let report = ship::fleet(&args, dir.path()).await?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print!("{report}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let one_policy = matches!(args.mode, Mode::Transfer | Mode::Takeover | Mode::Live);
    anyhow::ensure!(
        args.mode != Mode::Live || (args.repeat == 1 && args.policy != PolicyKind::Both),
        "--mode live runs one policy once (its report is a series of phases already)"
    );
    if args.repeat > 1 || (args.policy == PolicyKind::Both && !one_policy) {
        return series::run(&args).await;
    }
    let dir = tempfile::tempdir()?;
    let exe = std::env::current_exe()?;
    eprintln!("preloading {} legs in engine-sim...", args.legs);
    let mut sim_args = match args.mode {
        Mode::Takeover => takeover::sim_args(),
        Mode::Live => live::sim_args(&live::traffic_log(dir.path())),
        _ => vec!["--heartbeat-timeout-ms".into(), "600000".into()],
    };
    if args.crafted_ids {
        sim_args.push("--crafted-ids".into());
    }
    if args.ascending {
        sim_args.push("--ascending".into());
    }
    if args.mixers > 0 {
        sim_args.push("--preload-mixers".into());
        sim_args.push(args.mixers.to_string());
    }
    if args.tls {
        anyhow::ensure!(
            matches!(args.mode, Mode::Cold | Mode::Warm | Mode::Live),
            "--tls applies to --mode cold, warm and live"
        );
        // engine-sim listens on loopback: its certificate names that.
        let pki = legsync::tls::generate(&dir.path().join("pki"), &["127.0.0.1".into()])?;
        for (flag, path) in [
            ("--tls-cert", &pki.engine.cert),
            ("--tls-key", &pki.engine.key),
            ("--tls-client-ca", &pki.engine.ca),
        ] {
            sim_args.push(flag.into());
            sim_args.push(path.display().to_string());
        }
    }
    let sim_args: Vec<&str> = sim_args.iter().map(String::as_str).collect();
    let sim = SimProcess::spawn(
        &exe,
        &dir.path().join("engine.state"),
        Some(args.legs),
        &sim_args,
    )
    .await?;
    let rules = match &args.rules {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => BENCH_RULES.to_string(),
    };
    if args.mode == Mode::Live {
        let report = live::run(&sim, &args, &rules, dir.path()).await?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            print!("{report}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = match args.mode {
        Mode::Transfer => transfer(&sim, &args).await?,
        Mode::Takeover => takeover::run(&sim, &args, &rules, dir.path()).await?,
        Mode::Cold | Mode::Warm | Mode::Live => resync(&sim, &args, &rules, dir.path()).await?,
        Mode::Datasets | Mode::ShipFleet => unreachable!("measured before the engine starts"),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}

fn link_options(sim: &SimProcess) -> LinkOptions {
    LinkOptions {
        engine: sim.listen.to_string(),
        connect_timeout: Duration::from_secs(10),
        heartbeat: Duration::from_secs(1),
        heartbeat_timeout: Duration::from_secs(600),
        max_frame: legsync::protocol::DEFAULT_MAX_FRAME,
        protocol: legsync::protocol::PROTOCOL_VERSION,
        host_name: "legsync bench".into(),
        tls: None,
        heartbeat_gaps: Default::default(),
    }
}

/// Streams and decodes the snapshot, nothing else.
async fn transfer(sim: &SimProcess, args: &BenchArgs) -> anyhow::Result<BenchReport> {
    let started = Instant::now();
    let tasks = tokio_util::task::TaskTracker::new();
    let mut connection = Connection::open(&link_options(sim), &tasks).await?;
    let mut legs = 0u64;
    loop {
        match connection.next().await? {
            EngineMessage::SnapshotLegs(chunk) => legs += chunk.len() as u64,
            EngineMessage::SnapshotEnd => break,
            _ => {}
        }
    }
    let wall = started.elapsed();
    // Its reader and writer end with it.
    drop(connection);
    tasks.close();
    tasks.wait().await;
    anyhow::ensure!(
        legs == args.legs,
        "received {legs} legs, expected {}",
        args.legs
    );
    let summary = ResyncSummary {
        known: 0,
        ..ResyncSummary::default()
    };
    Ok(BenchReport::new(
        "transfer", "none", args.legs, wall, summary,
    ))
}

async fn resync(
    sim: &SimProcess,
    args: &BenchArgs,
    rules: &str,
    dir: &std::path::Path,
) -> anyhow::Result<BenchReport> {
    let config = host_config(sim, args, dir);
    let (decider, policy_name) = decider(args, rules, dir).await?;
    let cluster = match args.ship {
        true => Some(ship::cluster(args).await?),
        false => None,
    };
    let started = Instant::now();
    let mut host = RunningHost::start_summaries(&config, decider)?;
    let mut shipping =
        ship::ShipProbe::for_host(cluster.as_ref(), args.ship_linger_ms, &host, &config)?;
    let progress = show_progress(&host);
    let first = next_summary(&mut host).await?;
    let ship_figures = match &mut shipping {
        Some(probe) => {
            let resynced = started.elapsed();
            let last = host.ledger.durable_marks().borrow().record;
            probe.wait_shipped(last).await?;
            let shipped = started.elapsed();
            Some(ship::ShipFigures {
                nodes: usize::from(args.ship_nodes),
                records: last,
                shipped_seconds: shipped.as_secs_f64(),
                after_resync_seconds: (shipped - resynced).as_secs_f64(),
                records_per_second: last as f64 / shipped.as_secs_f64(),
            })
        }
        None => None,
    };
    let summary = match args.mode {
        Mode::Warm => {
            sim.ok("partition 3600000").await?;
            host.wait_status(LONG, |s| s.link == Some(LinkState::Disconnected))
                .await?;
            let churn = (args.legs / 100).max(2) / 2 * 2;
            sim.ok(&format!("churn {churn} {churn}")).await?;
            sim.ok("partition 0").await?;
            next_summary(&mut host).await?
        }
        _ => first,
    };
    if let Some(progress) = progress {
        progress.abort();
        eprint!("\r\x1b[K");
    }
    let mode = if args.mode == Mode::Warm {
        "warm"
    } else {
        "cold"
    };
    let wall = Duration::from_millis(summary.millis);
    // Measured while the host still holds every context.
    let mut report = BenchReport::new(mode, &policy_name, args.legs, wall, summary);
    report.ship = ship_figures;
    host.stop().await?;
    if let Some(probe) = shipping {
        probe.stop().await;
    }
    Ok(report)
}

async fn next_summary(host: &mut RunningHost) -> anyhow::Result<ResyncSummary> {
    let events = host
        .events_until(LONG, |e| matches!(e, HostEvent::ResyncDone(_)))
        .await?;
    match events.last() {
        Some(HostEvent::ResyncDone(summary)) => Ok(**summary),
        _ => anyhow::bail!("no resync summary"),
    }
}

/// The bench plugin's rules sidecar: the bench's rules for the `rules`
/// plugin or with `--rules`; none for a `--plugin` alone, whose `init` gets
/// an empty config (a plugin that rejects unknown config can be benched).
fn write_rules(plugins: &std::path::Path, args: &BenchArgs, rules: &str) -> anyhow::Result<()> {
    if args.plugin.is_none() || args.rules.is_some() {
        std::fs::write(plugins.join("10-bench.rules"), rules)?;
    }
    Ok(())
}

/// The in-process host's config: its ledger in `dir`, timers that never
/// fire during a run, and, with `--tls`, the PKI `run` wrote in `dir`.
fn host_config(sim: &SimProcess, args: &BenchArgs, dir: &std::path::Path) -> HostConfig {
    let mut config = HostConfig {
        engine: Some(sim.listen.to_string()),
        grace_secs: 3600.0,
        ..HostConfig::default()
    };
    config.cdr = dir.join("cdr.jsonl");
    config.link.heartbeat_timeout_ms = 600_000;
    config.link.connect_timeout_ms = 10_000;
    if args.tls {
        let pki = dir.join("pki");
        config.tls = Some(legsync::config::TlsConfig {
            ca: pki.join("ca.pem"),
            cert: pki.join("host.pem"),
            key: pki.join("host.key"),
            server_name: None,
        });
    }
    config
}

async fn decider(
    args: &BenchArgs,
    rules: &str,
    dir: &std::path::Path,
) -> anyhow::Result<(Decider, String)> {
    match args.policy {
        PolicyKind::Both => anyhow::bail!("--policy both runs each policy in its own process"),
        PolicyKind::Native => {
            let set = legsync_rules::RuleSet::parse(rules)?;
            anyhow::ensure!(
                set.lookups().is_empty(),
                "these rules read datasets, which only the WebAssembly policy serves: use --policy wasm"
            );
            Ok((
                Decider::Native(Arc::new(NativeRules::new(set))),
                "native".into(),
            ))
        }
        PolicyKind::Wasm => {
            let plugin = args
                .plugin
                .clone()
                .unwrap_or_else(|| PathBuf::from(legsync::BUILT_PLUGINS_DIR).join("rules.wasm"));
            let plugins = dir.join("plugins.d");
            std::fs::create_dir_all(&plugins)?;
            std::fs::copy(&plugin, plugins.join("10-bench.wasm"))
                .with_context(|| format!("cannot copy {}", plugin.display()))?;
            write_rules(&plugins, args, rules)?;
            let runtime = PolicyRuntime::new(None)?;
            let mut config = PolicyConfig::default();
            if let Some(dir) = &args.datasets {
                config.dataset_dir = Some(dir.clone());
                config.plugins.insert(
                    "10-bench".into(),
                    legsync::policy::config::PluginConfig {
                        datasets: Some(legsync::policy::datasets::names_in(dir)?),
                        ..Default::default()
                    },
                );
            }
            config.defaults.instances = Some(args.instances.unwrap_or(match args.plugin {
                None => 2,
                Some(_) => 1,
            }));
            // Off the runtime's threads, as `legsync run` loads: a plugin's
            // WASI calls in `init` block on tokio.
            let chain: PolicyChain =
                tokio::task::spawn_blocking(move || loader::load_dir(&runtime, &plugins, &config))
                    .await??;
            let name = format!(
                "wasm ({})",
                plugin
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("plugin")
            );
            Ok((Decider::Chain(Arc::new(chain)), name))
        }
    }
}

/// A one-line progress display on a terminal for runs over a second.
fn show_progress(host: &RunningHost) -> Option<tokio::task::JoinHandle<()>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let mut status = host.status_receiver();
    Some(tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        loop {
            let line = {
                let s = status.borrow_and_update();
                let total = s.snapshot_expected.max(1);
                let filled = (s.snapshot_received * 30 / total) as usize;
                format!(
                    "\r\x1b[K[{}{}] {}/{} legs received, {} held ({:?})",
                    "#".repeat(filled.min(30)),
                    " ".repeat(30 - filled.min(30)),
                    s.snapshot_received,
                    s.snapshot_expected,
                    s.legs,
                    s.link,
                )
            };
            eprint!("{line}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }))
}

//! `legsync bench --mode datasets`: what reference data costs. A
//! 10,000,000-number block list and a 1,000,000-prefix rate table
//! (generated into `--datasets DIR` unless there already, scrambled as
//! exports come): each one's build time and memory against its file; a
//! look-up's cost per key in the host and from the `rules` plugin deciding
//! `--legs` legs in batches (rules that consult both datasets, against the
//! same rules without them, alternated); and the latency of a plugin's
//! batch decisions while the 10M list is rebuilt and a new set loaded
//! beside them, against the same decisions with nothing else running.

use super::BenchArgs;
use anyhow::Context;
use legsync::policy::datasets::{DatasetStore, Granted};
use legsync::policy::{PolicyChain, PolicyConfig, PolicyRuntime, loader};
use std::path::Path;
use std::time::{Duration, Instant};

/// Numbers in the block list.
const BLOCKED: u64 = 10_000_000;
/// Prefixes in the rate table.
const PREFIXES: u64 = 1_000_000;

/// Rules that consult both datasets (and refuse what the bench's default
/// rules refuse: the rate table classes `1900555` as premium).
const DATASET_RULES: &str = "[[rule]]\nname = \"blocked\"\naction = \"refuse\"\ncalled_in = [\"blocked\"]\n\
[[rule]]\nname = \"no premium\"\naction = \"refuse\"\ncalled_value = { dataset = \"rates\", one_of = [\"premium\"] }\n";

pub async fn run(args: &BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    let scratch = tempfile::tempdir()?;
    let data = args
        .datasets
        .clone()
        .unwrap_or_else(|| scratch.path().join("datasets"));
    generate(&data)?;
    let data2 = data.clone();
    let report = tokio::task::spawn_blocking(move || measure(&data2, scratch.path()))
        .await
        .context("the datasets bench panicked")??;
    print!("{report}");
    Ok(std::process::ExitCode::SUCCESS)
}

/// A well-mixed 64-bit function of `i` (splitmix64): numbers spread as
/// real ones are, not a range an index would compress to nothing.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Writes `blocked.set` and `rates.prefix` into `dir` unless there.
fn generate(dir: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let blocked = dir.join("blocked.set");
    if !blocked.is_file() {
        eprintln!("writing {} ({BLOCKED} numbers)...", blocked.display());
        let mut out = std::io::BufWriter::new(std::fs::File::create(&blocked)?);
        // 11-digit numbers starting with 1, spread over the whole space
        // (a bijection of 0..9e9, so none twice), unsorted as exports
        // are: about 1 in 900 of the preloaded legs' numbers is on it.
        for i in 0..BLOCKED {
            let n = (i.wrapping_mul(2_654_435_761)) % 9_000_000_000;
            writeln!(out, "1{:010}", 1_000_000_000 + n)?;
        }
        out.flush()?;
    }
    let rates = dir.join("rates.prefix");
    if !rates.is_file() {
        eprintln!("writing {} ({PREFIXES} prefixes)...", rates.display());
        let mut out = std::io::BufWriter::new(std::fs::File::create(&rates)?);
        let mut seen = std::collections::HashSet::new();
        // The premium destinations the bench's rules refuse, then random
        // prefixes of 3 to 8 digits (overlapping, as real tables do).
        seen.insert("1900555".to_string());
        writeln!(out, "1900555,premium")?;
        let mut i = 0u64;
        while (seen.len() as u64) < PREFIXES {
            let h = mix(i);
            i += 1;
            let digits = 2 + (h % 6) as u32;
            let prefix = format!(
                "1{:0width$}",
                (h >> 8) % 10u64.pow(digits),
                width = digits as usize
            );
            if prefix.starts_with("1900") || !seen.insert(prefix.clone()) {
                continue;
            }
            let class = ["standard", "mobile", "international", "tollfree"][(h >> 60) as usize % 4];
            writeln!(out, "{prefix},{class}")?;
        }
        out.flush()?;
    }
    Ok(())
}

/// Resident memory of this process, in bytes (`/proc/self/statm`).
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn measure(data: &Path, scratch: &Path) -> anyhow::Result<String> {
    let mut report = String::new();
    let mb = |bytes: u64| bytes as f64 / 1e6;
    let store = DatasetStore::default();
    let mut granted = Vec::new();
    for name in ["blocked", "rates"] {
        let before = resident();
        let started = Instant::now();
        let one = store.grant(data, "bench", &[name.to_string()])?;
        let took = started.elapsed();
        let info = &one.infos()[0];
        report += &format!(
            "{name}: {} keys, built in {:.2} s; index {:.1} MB for a {:.1} MB file ({:.2}x); resident +{:.1} MB\n",
            info.entries,
            took.as_secs_f64(),
            mb(info.bytes),
            mb(info.file_bytes),
            info.bytes as f64 / info.file_bytes as f64,
            mb(resident().saturating_sub(before)),
        );
        granted.push(one);
    }
    report += &host_lookups(&granted, data)?;
    let runtime = PolicyRuntime::new(None)?;
    let (legs, _) = {
        let mut state = crate::sim::state::EngineState::default();
        state.preload(1_000_000, legsync::model::now_ms());
        state.snapshot()
    };
    let with = plugin_set(&runtime, scratch, "with", Some(data), DATASET_RULES)?;
    let without = plugin_set(&runtime, scratch, "without", None, super::BENCH_RULES)?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let refused = |v: &[legsync::policy::Verdict]| {
        v.iter()
            .filter(|v| v.decision == legsync::model::Decision::Refuse)
            .count()
    };
    let mut refusals = (0, 0);
    for _ in 0..3 {
        let started = Instant::now();
        let with_verdicts = with.decide_legs(&legs);
        a.push(started.elapsed());
        let started = Instant::now();
        let without_verdicts = without.decide_legs(&legs);
        b.push(started.elapsed());
        refusals = (refused(&with_verdicts), refused(&without_verdicts));
    }
    let (a, b) = (median(&mut a), median(&mut b));
    let per_key = a.saturating_sub(b).as_nanos() as f64 / (legs.len() as f64 * 2.0);
    report += &format!(
        "rules plugin, {} legs in batches of 1024: {:.3} s consulting both datasets ({} refused), {:.3} s without ({} refused) (medians of 3, alternated): {:.0} ns per look-up from WASM\n",
        legs.len(),
        a.as_secs_f64(),
        refusals.0,
        b.as_secs_f64(),
        refusals.1,
        per_key
    );
    report += &stall(&runtime, &with, &legs, data, scratch)?;
    Ok(report)
}

/// A look-up's cost in the host: every key of a million, one at a time.
fn host_lookups(granted: &[Granted], _data: &Path) -> anyhow::Result<String> {
    let keys: Vec<String> = (0..1_000_000u64)
        .map(|i| format!("1514{:07}", (i * 104_729) % 10_000_000))
        .collect();
    let blocked = granted[0].get(0).context("blocked")?;
    let rates = granted[1].get(0).context("rates")?;
    let started = Instant::now();
    let found = keys
        .iter()
        .filter(|k| blocked.contains(k.as_bytes()))
        .count();
    let contains = started.elapsed();
    let started = Instant::now();
    let classed = keys
        .iter()
        .filter(|k| rates.longest_prefix(k.as_bytes()).is_some())
        .count();
    let prefix = started.elapsed();
    Ok(format!(
        "in the host: contains {:.0} ns per key ({found} of {} found), longest-prefix {:.0} ns per key ({classed} found)\n",
        contains.as_nanos() as f64 / keys.len() as f64,
        keys.len(),
        prefix.as_nanos() as f64 / keys.len() as f64,
    ))
}

/// The `rules` plugin with `rules`, granted every dataset of `data`.
fn plugin_set(
    runtime: &PolicyRuntime,
    scratch: &Path,
    name: &str,
    data: Option<&Path>,
    rules: &str,
) -> anyhow::Result<PolicyChain> {
    let dir = scratch.join(name);
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(
        Path::new(legsync::BUILT_PLUGINS_DIR).join("rules.wasm"),
        dir.join("10-rules.wasm"),
    )?;
    std::fs::write(dir.join("10-rules.rules"), rules)?;
    let mut config = PolicyConfig::default();
    config.defaults.instances = Some(1);
    if let Some(data) = data {
        config.dataset_dir = Some(data.to_path_buf());
        config.plugins.insert(
            "10-rules".into(),
            legsync::policy::config::PluginConfig {
                datasets: Some(vec!["blocked".into(), "rates".into()]),
                ..Default::default()
            },
        );
    }
    Ok(loader::load_dir(runtime, &dir, &config)?)
}

/// Batch decisions' latency (p50, p99) for `seconds`, alone and then while
/// another thread rebuilds the 10M block list and loads a new set with it.
fn stall(
    runtime: &PolicyRuntime,
    chain: &PolicyChain,
    legs: &[legsync::model::CallLeg],
    data: &Path,
    scratch: &Path,
) -> anyhow::Result<String> {
    let batch = &legs[..1024];
    let sample = |until: &dyn Fn() -> bool| {
        let mut took = Vec::new();
        while !until() {
            let started = Instant::now();
            chain.decide_legs(batch);
            took.push(started.elapsed());
        }
        took
    };
    let quiet_until = Instant::now() + Duration::from_secs(5);
    let mut quiet = sample(&|| Instant::now() >= quiet_until);
    // A new version of the block list (another file, so nothing is
    // reused), built and loaded by a set beside the one deciding.
    let fresh = scratch.join("fresh");
    std::fs::create_dir_all(&fresh)?;
    std::fs::copy(data.join("rates.prefix"), fresh.join("rates.prefix"))?;
    let mut text = std::fs::read(data.join("blocked.set"))?;
    text.extend_from_slice(b"99999999999\n");
    std::fs::write(fresh.join("blocked.set"), text)?;
    let done = std::sync::atomic::AtomicBool::new(false);
    let (busy, built) = std::thread::scope(|scope| {
        let builder = scope.spawn(|| {
            let started = Instant::now();
            let set = plugin_set(runtime, scratch, "swap", Some(&fresh), DATASET_RULES);
            done.store(true, std::sync::atomic::Ordering::Release);
            set.map(|_| started.elapsed())
        });
        let busy = sample(&|| done.load(std::sync::atomic::Ordering::Acquire));
        (busy, builder.join())
    });
    let built = built.map_err(|_| anyhow::anyhow!("the build thread panicked"))??;
    let (q50, q99) = percentiles(&mut quiet);
    let (b50, b99) = percentiles(&mut busy.clone());
    Ok(format!(
        "decisions of 1024 legs while nothing else runs: p50 {:.2} ms, p99 {:.2} ms ({} batches); while the 10M list is rebuilt and a new set loaded ({:.2} s): p50 {:.2} ms, p99 {:.2} ms ({} batches)\n",
        q50,
        q99,
        quiet.len(),
        built.as_secs_f64(),
        b50,
        b99,
        busy.len()
    ))
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// p50 and p99 of `samples`, in milliseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * q) as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    (at(0.5), at(0.99))
}

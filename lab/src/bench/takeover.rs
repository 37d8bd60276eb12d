//! `legsync bench --mode takeover`: how long an engine goes without call
//! control when the active host of a pair is lost.
//!
//! A preloaded engine-sim and two real `legsync run` processes (`pri`, then
//! `alt`, with the same plugin set, each with its own ledger and event log,
//! as an operator runs them). Once `pri` is active and in sync and `alt`
//! stands by, `pri` is lost (`--loss`: SIGKILL, SIGSTOP, or cut off alone by
//! engine-sim's `isolate`), and the bench reports the time from that moment
//! to `alt`'s resync done (the `time_ms` of its `resync-done` event), with
//! `alt`'s resync summary and peak RSS.

use super::report::{BenchReport, proc_status_bytes_of};
use super::{BenchArgs, LONG};
use crate::demo::host_process::HostProcess;
use crate::sim::process::SimProcess;
use anyhow::{Context, bail};
use clap::ValueEnum;
use legsync::events::ResyncSummary;
use legsync::model::now_ms;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How the active host is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Loss {
    /// SIGKILL: the engine sees the connection close at once.
    Kill,
    /// SIGSTOP: the engine notices at its heartbeat timeout.
    Freeze,
    /// Only the active is cut off from the engine (engine-sim `isolate`):
    /// noticed at the engine's heartbeat timeout too.
    Isolate,
}

impl Loss {
    fn as_str(self) -> &'static str {
        match self {
            Loss::Kill => "kill",
            Loss::Freeze => "freeze",
            Loss::Isolate => "isolate",
        }
    }
}

/// The engine's heartbeat timeout in this bench (the engine's own default).
const ENGINE_HEARTBEAT_TIMEOUT_MS: u64 = 3_000;

pub async fn run(
    sim: &SimProcess,
    args: &BenchArgs,
    rules: &str,
    dir: &Path,
) -> anyhow::Result<BenchReport> {
    let exe = std::env::current_exe()?;
    let plugins = dir.join("plugins.d");
    std::fs::create_dir_all(&plugins)?;
    let plugin = args
        .plugin
        .clone()
        .unwrap_or_else(|| PathBuf::from(legsync::BUILT_PLUGINS_DIR).join("rules.wasm"));
    std::fs::copy(&plugin, plugins.join("10-bench.wasm"))
        .with_context(|| format!("cannot copy {}", plugin.display()))?;
    super::write_rules(&plugins, args, rules)?;
    // Ledgers and event logs apart from the configs, as `legsync init` lays
    // them out: the hosts watch their config's directory, and with the
    // files beside it every write woke both watchers (~15 % of the
    // standby's time in a takeover).
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let spawn = |name: &str| -> anyhow::Result<HostProcess> {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "engine = \"{}\"\nname = \"{name}\"\nadmin = \"127.0.0.1:0\"\ngrace_secs = 3600\ncdr = \"{}\"\nevents = \"{}\"\n\
                 [link]\nconnect_timeout_ms = 10000\n\
                 [policy]\nplugin_dir = \"{}\"\ncache_dir = \"{}\"\n",
                sim.listen,
                data.join(format!("cdr-{name}.jsonl")).display(),
                data.join(format!("events-{name}.jsonl")).display(),
                plugins.display(),
                dir.join("cache").display(),
            ),
        )?;
        HostProcess::spawn(&exe, &config, &dir.join(format!("{name}.log")))
    };
    let mut active = spawn("pri")?;
    let mut pri_events = EventTail::new(data.join("events-pri.jsonl"));
    pri_events
        .wait_for("\"kind\":\"resync-done\"", LONG)
        .await
        .context("the first host never finished its resync")?;
    let standby = spawn("alt")?;
    let mut alt_events = EventTail::new(data.join("events-alt.jsonl"));
    alt_events
        .wait_for("\"role\":\"standby\"", LONG)
        .await
        .context("the second host never became standby")?;
    eprintln!(
        "pri active with {} legs, alt standing by; losing pri ({})",
        args.legs,
        args.loss.as_str()
    );
    let lost_at = now_ms();
    match args.loss {
        Loss::Kill => active.crash().await?,
        Loss::Freeze => active.freeze()?,
        Loss::Isolate => {
            sim.ok(&format!("isolate {}", 3_600_000)).await?;
        }
    }
    let line = alt_events
        .wait_for("\"kind\":\"resync-done\"", LONG)
        .await
        .context("the standby never finished its resync")?;
    let done: serde_json::Value = serde_json::from_str(&line)?;
    let done_ms = done["time_ms"].as_u64().context("no time_ms")?;
    let summary: ResyncSummary = serde_json::from_value(done.clone())?;
    let peak = proc_status_bytes_of(standby.pid()?, "VmHWM:");
    let wall = Duration::from_millis(done_ms.saturating_sub(lost_at));
    let mut report = BenchReport::new(
        &format!("takeover-{}", args.loss.as_str()),
        "wasm (rules.wasm), 2 processes",
        args.legs,
        wall,
        summary,
    );
    report.peak_rss_bytes = peak;
    report.rss_bytes_per_leg = peak as f64 / args.legs.max(1) as f64;
    report.final_rss_bytes = proc_status_bytes_of(standby.pid()?, "VmRSS:");
    eprintln!(
        "standby resync {} ms of the {} ms (engine heartbeat timeout {} ms)",
        summary.millis,
        wall.as_millis(),
        ENGINE_HEARTBEAT_TIMEOUT_MS
    );
    if args.loss == Loss::Freeze {
        active.thaw()?;
    }
    Ok(report)
}

/// Arguments engine-sim needs for this mode.
pub fn sim_args() -> Vec<String> {
    vec![
        "--heartbeat-timeout-ms".into(),
        ENGINE_HEARTBEAT_TIMEOUT_MS.to_string(),
    ]
}

/// Follows a host's event log, reading only what was appended.
struct EventTail {
    path: PathBuf,
    file: Option<std::fs::File>,
    /// Whole lines read and not yet searched, then a partial last line.
    pending: Vec<u8>,
}

impl EventTail {
    fn new(path: PathBuf) -> EventTail {
        EventTail {
            path,
            file: None,
            pending: Vec::new(),
        }
    }

    /// Waits for the next whole line containing `needle`; returns it.
    async fn wait_for(&mut self, needle: &str, within: Duration) -> anyhow::Result<String> {
        use std::io::Read;
        let deadline = Instant::now() + within;
        loop {
            if self.file.is_none() {
                self.file = std::fs::File::open(&self.path).ok();
            }
            if let Some(file) = &mut self.file {
                file.read_to_end(&mut self.pending)?;
            }
            let whole = self
                .pending
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let text = String::from_utf8_lossy(&self.pending[..whole]);
            if let Some(at) = text.find(needle) {
                let begin = text[..at].rfind('\n').map_or(0, |i| i + 1);
                let end = at + text[at..].find('\n').unwrap_or(text.len() - at);
                let line = text[begin..end].to_string();
                let consumed = end + 1;
                self.pending.drain(..consumed.min(self.pending.len()));
                return Ok(line);
            }
            self.pending.drain(..whole);
            if Instant::now() > deadline {
                bail!("no `{needle}` in {} in time", self.path.display());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

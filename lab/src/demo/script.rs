//! The demo's scenarios, narrated and checked.

use super::harness::{
    RunningHost, links_synced, mixers_synced, mixers_terminated, synced, terminated,
};
use super::host_process::{HostProcess, count_lines, wait_for_count};
use crate::sim::process::SimProcess;
use anyhow::Context;
use legsync::cdr::CdrWriter;
use legsync::cdr::bill;
use legsync::cdr::record::{CdrRecord, RecordKind};
use legsync::config::HostConfig;
use legsync::events::HostEvent;
use legsync::model::{Decision, TerminationReason};
use legsync::policy::{CompileCache, Decider, PolicyRuntime, loader};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const RULES: &str = "# Refuse premium-rate calls when they are offered for resync.\n[[rule]]\nname = \"no premium\"\naction = \"refuse\"\ncalled_prefix = [\"1900\"]\n\n# And test conferences.\n[[mixer_rule]]\nname = \"no test conferences\"\naction = \"refuse\"\nname_prefix = [\"test-\"]\n";

pub struct Demo {
    dir: PathBuf,
    sim: SimProcess,
    host: Option<RunningHost>,
    config: HostConfig,
    runtime: PolicyRuntime,
    /// Leg ids by the names the narration uses (A, B, C...).
    names: BTreeMap<u64, String>,
    /// Mixer ids by their names (Mixer-1).
    mixer_names: BTreeMap<u64, String>,
    failures: std::cell::Cell<usize>,
    cdrs_seen: std::cell::Cell<usize>,
}

impl Demo {
    pub async fn new(dir: &Path, built: &Path, grace: f64) -> anyhow::Result<Demo> {
        let plugins = dir.join("plugins.d");
        std::fs::create_dir_all(&plugins)?;
        for (stem, file) in [
            ("10-accept-all", "accept_all"),
            ("20-rules", "rules"),
            ("30-nap-cap", "nap_cap"),
        ] {
            let source = built.join(format!("{file}.wasm"));
            std::fs::copy(&source, plugins.join(format!("{stem}.wasm")))
                .with_context(|| format!("cannot copy the built plugin {}", source.display()))?;
        }
        std::fs::write(plugins.join("20-rules.rules"), RULES)?;
        std::fs::write(plugins.join("30-nap-cap.rules"), "default_max = 1000\n")?;
        for stale in [
            "cdr.jsonl",
            "events.jsonl",
            "engine.state",
            "engine.state.epoch",
            "cdr-alt.jsonl",
            "events-alt.jsonl",
        ] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        let exe = std::env::current_exe()?;
        let sim = SimProcess::spawn(
            &exe,
            &dir.join("engine.state"),
            None,
            &["--heartbeat-ms", "200", "--heartbeat-timeout-ms", "1500"],
        )
        .await?;
        let mut config = HostConfig {
            engine: Some(sim.listen.to_string()),
            name: "pri".into(),
            grace_secs: grace,
            ..HostConfig::default()
        };
        config.cdr = dir.join("cdr.jsonl");
        config.events = Some(dir.join("events.jsonl"));
        config.link.heartbeat_ms = 200;
        config.link.heartbeat_timeout_ms = 1000;
        config.link.backoff_base_ms = 50;
        config.link.backoff_max_ms = 500;
        config.policy.plugin_dir = Some(plugins);
        config.policy.cache_dir = Some(dir.join("cache"));
        let runtime = PolicyRuntime::new(config.policy.cache_dir.clone().map(CompileCache::new))?;
        Ok(Demo {
            dir: dir.to_path_buf(),
            sim,
            host: None,
            config,
            runtime,
            names: BTreeMap::new(),
            mixer_names: BTreeMap::new(),
            failures: Default::default(),
            cdrs_seen: Default::default(),
        })
    }

    pub async fn play(&mut self) -> anyhow::Result<usize> {
        println!(
            "legsync demo: engine-sim pid {} on {}, files in {}",
            self.sim
                .pid()
                .map_or("-".to_string(), |pid| pid.to_string()),
            self.sim.listen,
            self.dir.display()
        );
        println!(
            "plugin chain: 10-accept-all -> 20-rules (refuse called 1900*, and test- conferences) -> 30-nap-cap; grace {} s",
            self.config.grace_secs
        );
        self.start_host().await?;
        self.host()?.next_resync(WAIT).await?;
        self.scenario_1().await?;
        self.scenario_2().await?;
        self.scenario_3().await?;
        self.scenario_4().await?;
        self.refusal().await?;
        self.billing_trap().await?;
        self.crash_mid_purge().await?;
        self.takeover().await?;
        Ok(self.failures.get())
    }

    pub async fn finish(&mut self) {
        if let Some(host) = self.host.take() {
            let _ = host.stop().await;
        }
    }

    async fn start_host(&mut self) -> anyhow::Result<()> {
        let runtime = self.runtime.clone();
        let dir = self.config.policy.plugin_dir.clone().expect("set");
        let policy = self.config.policy.clone();
        // Off the runtime's threads, as `legsync run` loads: a plugin's WASI
        // calls in `init` block on tokio.
        let chain = tokio::task::spawn_blocking(move || loader::load_dir(&runtime, &dir, &policy))
            .await??;
        self.host = Some(RunningHost::start(
            &self.config,
            Decider::Chain(Arc::new(chain)),
        )?);
        Ok(())
    }

    fn status(&self) -> legsync::supervisor::HostStatus {
        self.host.as_ref().map(|h| h.status()).unwrap_or_default()
    }

    fn host(&mut self) -> anyhow::Result<&mut RunningHost> {
        self.host.as_mut().context("no host running")
    }

    /// A ringing A and a terminating B (never answered), as each scenario starts.
    async fn transient_legs(&mut self) -> anyhow::Result<(u64, u64)> {
        let a = self
            .sim
            .ok_id("ring SIP_CARRIER_A 15145550001 15145559001")
            .await?;
        let b = self
            .sim
            .ok_id("ring SIP_CARRIER_A 15145550002 15145559002 out")
            .await?;
        self.sim.ok(&format!("terminate {b}")).await?;
        self.names.insert(a, "A".into());
        self.names.insert(b, "B".into());
        Ok((a, b))
    }

    async fn answered(&mut self, name: &str, nap: &str, called: &str) -> anyhow::Result<u64> {
        let id = self
            .sim
            .ok_id(&format!(
                "call {nap} 1438555{:04} {called}",
                self.names.len()
            ))
            .await?;
        self.names.insert(id, name.into());
        Ok(id)
    }

    async fn scenario_1(&mut self) -> anyhow::Result<()> {
        heading("Scenario 1: the engine restarts quickly (back within the grace time)");
        let (a, b) = self.transient_legs().await?;
        let c = self.answered("C", "ISDN_SPAN_1", "15145551003").await?;
        let d = self.answered("D", "SIP_CARRIER_B", "15145551004").await?;
        let e = self.answered("E", "SIP_CARRIER_B", "15145551005").await?;
        self.sim.ok(&format!("link {c} {d}")).await?;
        let mixer = self.sim.ok_id("mixer Mixer-1").await?;
        self.mixer_names.insert(mixer, "Mixer-1".into());
        self.sim.ok(&format!("join {e} {mixer} both")).await?;
        self.host()?
            .wait_status(WAIT, |s| {
                s.legs == 5 && s.links == 1 && s.mixers == 1 && s.joins == 1
            })
            .await?;
        step(
            "A ringing, B terminating, C D E answered, C-D linked, Mixer-1 ready with E joined. Restarting the engine (kill -9, start).",
        );
        self.sim.restart().await?;
        let events = self.host()?.next_resync(WAIT).await?;
        self.narrate(&events);
        self.check(
            "Mixer-1 and E's join stay valid with no mixer decision",
            mixers_synced(&events).is_empty()
                && self.status().mixers == 1
                && self.status().joins == 1,
        );
        self.check(
            "A and B end with OnCallLegTerminated",
            terminated(&events)
                == [
                    (a, TerminationReason::AbsentAfterResync),
                    (b, TerminationReason::AbsentAfterResync),
                ],
        );
        self.check(
            "C, D, E and the C-D link stay valid with no callback",
            synced(&events).is_empty() && self.status().legs == 3 && self.status().links == 1,
        );
        let cdrs = self.new_cdrs();
        self.check(
            "a START for each answered call (C, D, E) as it was answered, and no END",
            legs_of(&cdrs, RecordKind::Start) == sorted([c, d, e])
                && legs_of(&cdrs, RecordKind::End).is_empty(),
        );
        Ok(())
    }

    async fn scenario_2(&mut self) -> anyhow::Result<()> {
        heading("Scenario 2: the engine is down longer than the grace time");
        let (a, b) = self.transient_legs().await?;
        self.host()?.wait_status(WAIT, |s| s.legs == 5).await?;
        let [c, d, e] = self.ids(["C", "D", "E"]);
        step("Killing the engine and leaving it down past the grace timer.");
        self.sim.kill().await?;
        let events = self.host()?.wait_purged(WAIT).await?;
        self.narrate(&events);
        let mut expected: Vec<_> = [a, b, c, d, e]
            .into_iter()
            .map(|l| (l, TerminationReason::GraceExpired))
            .collect();
        expected.sort();
        self.check(
            "at the deadline A-E all end with OnCallLegTerminated",
            terminated(&events) == expected,
        );
        let [mixer] = self.mixer_ids(["Mixer-1"]);
        self.check(
            "Mixer-1 is destroyed locally with them (its termination notice to the plugins)",
            mixers_terminated(&events) == [(mixer, TerminationReason::GraceExpired)]
                && self.status().mixers == 0,
        );
        let cdrs = self.new_cdrs();
        self.check(
            "a CDR END for C, D and E",
            legs_of(&cdrs, RecordKind::End) == sorted([c, d, e]),
        );
        step("Starting the engine again.");
        self.sim.start_again().await?;
        let events = self.host()?.next_resync(WAIT).await?;
        self.narrate(&events);
        self.check(
            "C, D, E come back through OnCallLegSync (rebuild)",
            synced(&events) == all_rebuilt([c, d, e]),
        );
        self.check(
            "Mixer-1 comes back through the mixer decision, with E joined",
            mixers_synced(&events) == [(mixer, 1, Decision::Rebuild)] && self.status().joins == 1,
        );
        self.check(
            "C-D comes back through OnLinkSync",
            links_synced(&events)
                .iter()
                .any(|(_, d)| *d == Decision::Rebuild),
        );
        let cdrs = self.new_cdrs();
        self.check(
            "each re-adopted call gets a RESUME naming its END",
            legs_of(&cdrs, RecordKind::Resume) == sorted([c, d, e])
                && cdrs
                    .iter()
                    .filter(|r| r.kind.is_call())
                    .all(|r| r.resumes.is_some()),
        );
        Ok(())
    }

    async fn scenario_3(&mut self) -> anyhow::Result<()> {
        heading("Scenario 3: the application (host) restarts cold");
        self.transient_legs().await?;
        self.host()?.wait_status(WAIT, |s| s.legs == 5).await?;
        step("Stopping the host and starting a new one with no contexts.");
        self.host.take().context("no host")?.stop().await?;
        self.start_host().await?;
        let events = self.host()?.next_resync(WAIT).await?;
        self.narrate(&events);
        let [c, d, e] = self.ids(["C", "D", "E"]);
        self.check(
            "C, D, E come through OnCallLegSync",
            synced(&events) == all_rebuilt([c, d, e]),
        );
        let [mixer] = self.mixer_ids(["Mixer-1"]);
        self.check(
            "Mixer-1 comes through the mixer decision, E's join restored",
            mixers_synced(&events) == [(mixer, 1, Decision::Rebuild)] && self.status().joins == 1,
        );
        self.check(
            "C-D comes through OnLinkSync",
            links_synced(&events)
                .iter()
                .any(|(_, d)| *d == Decision::Rebuild),
        );
        let cdrs = self.new_cdrs();
        self.check(
            "no START or END written (the calls go on), one CARRY of the 3 open calls under the new epoch",
            cdrs.len() == 1 && cdrs[0].kind == RecordKind::Carry && cdrs[0].calls == Some(3),
        );
        Ok(())
    }

    async fn scenario_4(&mut self) -> anyhow::Result<()> {
        heading("Scenario 4: the network drops for less than the grace time");
        let (a, b) = self.transient_legs().await?;
        self.host()?.wait_status(WAIT, |s| s.legs == 5).await?;
        let [e] = self.ids(["E"]);
        let [mixer] = self.mixer_ids(["Mixer-1"]);
        step(
            "Cutting the host off; E hangs up and Mixer-1 is freed meanwhile; the network comes back.",
        );
        self.sim.ok("partition 60000").await?;
        self.host()?.wait_disconnected(WAIT).await?;
        self.sim.ok(&format!("release {e}")).await?;
        self.sim.ok(&format!("free-mixer {mixer}")).await?;
        self.sim.ok("partition 0").await?;
        let events = self.host()?.next_resync(WAIT).await?;
        self.narrate(&events);
        let mut expected: Vec<_> = [a, b, e]
            .into_iter()
            .map(|l| (l, TerminationReason::AbsentAfterResync))
            .collect();
        expected.sort();
        self.check(
            "legs that ended meanwhile (A, B, E) end with OnCallLegTerminated",
            terminated(&events) == expected,
        );
        self.check(
            "C and D stay valid with no callback",
            synced(&events).is_empty() && self.status().legs == 2,
        );
        self.check(
            "Mixer-1, freed meanwhile, is terminated",
            mixers_terminated(&events) == [(mixer, TerminationReason::AbsentAfterResync)]
                && mixers_synced(&events).is_empty()
                && self.status().mixers == 0,
        );
        let cdrs = self.new_cdrs();
        self.check("a CDR END for E", legs_of(&cdrs, RecordKind::End) == [e]);
        Ok(())
    }

    async fn refusal(&mut self) -> anyhow::Result<()> {
        heading("A refusal by the rules plugin");
        step("While the host is cut off, F (called 1900...) and G are answered and linked.");
        self.sim.ok("partition 60000").await?;
        self.host()?.wait_disconnected(WAIT).await?;
        let f = self.answered("F", "SIP_CARRIER_A", "19005550123").await?;
        let g = self.answered("G", "SIP_CARRIER_A", "15145550124").await?;
        self.sim.ok(&format!("link {f} {g}")).await?;
        self.sim.ok("partition 0").await?;
        let events = self.host()?.next_resync(WAIT).await?;
        self.narrate(&events);
        let refused_by = events.iter().find_map(|e| match e {
            HostEvent::CallLegSync {
                leg,
                decision: Decision::Refuse,
                plugin,
                ..
            } if *leg == f => Some(plugin.to_string()),
            _ => None,
        });
        self.check(
            "F is refused by 20-rules",
            refused_by.as_deref() == Some("20-rules"),
        );
        self.check(
            "G is rebuilt",
            synced(&events).contains(&(g, Decision::Rebuild)),
        );
        self.check(
            "the F-G link is dropped",
            events
                .iter()
                .any(|e| matches!(e, HostEvent::LinkDropped { .. })),
        );
        let list = self.sim.control("list").await?;
        self.check(
            "the engine no longer has F",
            !list.contains(&format!("leg {f} ")),
        );
        Ok(())
    }

    async fn billing_trap(&mut self) -> anyhow::Result<()> {
        heading("The billing trap: C was ended at a grace deadline, re-adopted, and now hangs up");
        let [c] = self.ids(["C"]);
        self.sim.ok(&format!("release {c}")).await?;
        let events = self
            .host()?
            .events_until(
                WAIT,
                |e| matches!(e, HostEvent::CallLegTerminated { leg, .. } if *leg == c),
            )
            .await?;
        self.narrate(&events);
        let cdrs = self.new_cdrs();
        let all = CdrWriter::read_all(&self.config.cdr)?;
        let first_end = all
            .iter()
            .find(|r| r.leg == c && r.kind == RecordKind::End)
            .map(|r| r.record);
        let last = cdrs.iter().find(|r| r.leg == c);
        self.check(
            "the final END supersedes the first, so C is billed once",
            last.is_some_and(|r| r.supersedes == first_end && first_end.is_some()),
        );
        self.check(
            "and is billed from its original answer time",
            last.is_some_and(|r| {
                all.iter().any(|x| {
                    x.record == first_end.unwrap_or(0) && x.answer_time_ms == r.answer_time_ms
                })
            }),
        );
        Ok(())
    }

    async fn crash_mid_purge(&mut self) -> anyhow::Result<()> {
        heading("A host crash in the middle of a grace purge, recovered by the ledger");
        step("The host now runs as its own process (`legsync run`), to be killed for real.");
        if let Some(host) = self.host.take() {
            host.stop().await?;
        }
        let config = self.config_dir()?.join("legsync.toml");
        std::fs::write(&config, self.config_toml())?;
        let exe = std::env::current_exe()?;
        let events = self.config.events.clone().context("the demo logs events")?;
        let mut host = HostProcess::spawn(&exe, &config, &self.dir.join("host.log"))?;
        wait_for_line(&events, "resync-done").await?;
        let [d, g] = self.ids(["D", "G"]);
        step("The network drops; G hangs up meanwhile; the grace time runs out, and the");
        step("host is killed (SIGKILL) the moment it starts purging.");
        self.sim.ok("partition 600000").await?;
        self.sim.ok(&format!("release {g}")).await?;
        let deadline = tokio::time::Instant::now() + WAIT;
        while !host.log().contains("grace timer expired") {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the host never purged"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        host.crash().await?;
        let before_crash = self.new_cdrs();
        step(if before_crash.is_empty() {
            "  (killed before the purge wrote an END: the calls are open in the ledger)"
        } else {
            "  (the purge's ENDs above were durable before the kill; the rest of it was lost)"
        });
        step("The network comes back and the host restarts: it reads its ledger first.");
        self.sim.ok("partition 0").await?;
        host.start()?;
        wait_for_line(&events, "resync-done").await?;
        host.stop().await?;
        self.new_cdrs();
        let ledgers = bill::read_ledgers(&[&self.config.cdr])?;
        let problems = bill::check(&ledgers);
        let calls = bill::bill(&bill::records(&ledgers));
        for call in &calls {
            let end = call.duration_ms.map_or("still up".to_string(), |ms| {
                format!("{}.{:03} s", ms / 1000, ms % 1000)
            });
            println!(
                "    bill  {:<14} {} -> {}  {end}",
                self.name(call.leg),
                call.calling,
                call.called
            );
        }
        let rows = |leg: u64| calls.iter().filter(|c| c.leg == leg).count();
        self.check(
            "`legsync cdr check`: every rule of the ledger holds",
            problems.is_empty(),
        );
        self.check(
            "G, which hung up during the cut, is billed once and closed",
            rows(g) == 1
                && calls
                    .iter()
                    .any(|c| c.leg == g && c.state == bill::CallState::Closed),
        );
        self.check(
            "D, still up, is open in the bill (re-adopted after the crash), never lost",
            calls
                .iter()
                .any(|c| c.leg == d && c.state == bill::CallState::Open),
        );
        self.check(
            "every answered call appears exactly once",
            calls.iter().all(|c| rows(c.leg) == 1),
        );
        Ok(())
    }

    async fn takeover(&mut self) -> anyhow::Result<()> {
        heading("High availability: the active host is killed, the standby takes over, one bill");
        step("Two hosts now serve the engine: pri (the host so far, its ledger) and alt, with");
        step("the same plugins and its own ledger. The engine accepts one controller; the");
        step("other gets Busy and stands by, asking again every 100 ms.");
        let exe = std::env::current_exe()?;
        let pri_config = self.config_dir()?.join("legsync.toml");
        std::fs::write(&pri_config, self.config_toml())?;
        let mut alt = self.config.clone();
        alt.name = "alt".into();
        alt.cdr = self.dir.join("cdr-alt.jsonl");
        alt.events = Some(self.dir.join("events-alt.jsonl"));
        let alt_config = self.config_dir()?.join("legsync-alt.toml");
        std::fs::write(&alt_config, config_toml(&alt, self.sim.listen))?;
        let pri_events = self.config.events.clone().context("the demo logs events")?;
        let alt_events = alt.events.clone().context("set above")?;
        let active = "\"role\":\"active\"";
        let standby = "\"role\":\"standby\"";
        let pri_active = count_lines(&pri_events, active);
        let mut pri = HostProcess::spawn(&exe, &pri_config, &self.dir.join("host.log"))?;
        wait_for_count(&pri_events, active, pri_active + 1, WAIT).await?;
        let mut alt_host = HostProcess::spawn(&exe, &alt_config, &self.dir.join("host-alt.log"))?;
        wait_for_count(&alt_events, standby, 1, WAIT).await?;
        step(&format!(
            "engine-sim `controller`: {}; alt is standby",
            self.sim.ok("controller").await?
        ));
        let h = self.answered("H", "SIP_CARRIER_B", "15145559040").await?;
        wait_for_count(&self.config.cdr, &format!("\"leg\":{h},"), 1, WAIT).await?;
        step("H is answered (pri writes its START). pri is killed (SIGKILL); K is answered");
        step("while no host controls the engine.");
        pri.crash().await?;
        let k = self.answered("K", "SIP_CARRIER_A", "15145559041").await?;
        wait_for_count(&alt_events, active, 1, WAIT).await?;
        wait_for_count(&alt_events, "resync-done", 1, WAIT).await?;
        step(&format!(
            "alt took over: `controller` says {}, and it re-adopted every call",
            self.sim.ok("controller").await?
        ));
        step("H hangs up under alt; pri restarts, finds alt in control and stands by.");
        self.sim.ok(&format!("release {h}")).await?;
        wait_for_count(&alt.cdr, "\"kind\":\"end\"", 1, WAIT).await?;
        let pri_standby = count_lines(&pri_events, standby);
        pri.start()?;
        wait_for_count(&pri_events, standby, pri_standby + 1, WAIT).await?;
        pri.stop().await?;
        alt_host.stop().await?;
        step("`legsync cdr bill cdr.jsonl cdr-alt.jsonl` (the two ledgers, merged by epoch):");
        let ledgers = bill::read_ledgers(&[&self.config.cdr, &alt.cdr])?;
        let problems = bill::check(&ledgers);
        let calls = bill::bill(&bill::records(&ledgers));
        for call in &calls {
            let end = call.duration_ms.map_or("still up".to_string(), |ms| {
                format!("{}.{:03} s", ms / 1000, ms % 1000)
            });
            println!("    bill  {:<14} {end}", self.name(call.leg));
        }
        let rows = |leg: u64| calls.iter().filter(|c| c.leg == leg).count();
        let state = |leg: u64| calls.iter().find(|c| c.leg == leg).map(|c| c.state);
        self.check(
            "`legsync cdr check` on both ledgers: every rule holds, no epoch has two writers",
            problems.is_empty(),
        );
        self.check(
            "H is billed once, ended by alt (pri never saw it end)",
            rows(h) == 1 && state(h) == Some(bill::CallState::Closed),
        );
        self.check(
            "K, answered with no host in control, is billed once and still up",
            rows(k) == 1 && state(k) == Some(bill::CallState::Open),
        );
        self.check(
            "every answered call appears exactly once across the pair",
            calls.iter().all(|c| rows(c.leg) == 1),
        );
        Ok(())
    }

    /// Where the config files of `legsync run` go: apart from the ledgers
    /// and event logs, as `legsync init` lays them out (the host watches its
    /// config's directory).
    fn config_dir(&self) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join("etc");
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The demo's host config as a file, for `legsync run`.
    fn config_toml(&self) -> String {
        config_toml(&self.config, self.sim.listen)
    }

    fn ids<const N: usize>(&self, names: [&str; N]) -> [u64; N] {
        names.map(|n| {
            self.names
                .iter()
                .find(|(_, v)| v.as_str() == n)
                .map(|(k, _)| *k)
                .unwrap_or(0)
        })
    }

    fn mixer_ids<const N: usize>(&self, names: [&str; N]) -> [u64; N] {
        names.map(|n| {
            self.mixer_names
                .iter()
                .find(|(_, v)| v.as_str() == n)
                .map_or(0, |(k, _)| *k)
        })
    }

    fn mixer_name(&self, mixer: u64) -> String {
        self.mixer_names
            .get(&mixer)
            .map_or(format!("mixer {mixer}"), |n| format!("{n} (mixer {mixer})"))
    }

    fn name(&self, leg: u64) -> String {
        self.names
            .get(&leg)
            .map_or(format!("leg {leg}"), |n| format!("{n} (leg {leg})"))
    }

    fn narrate(&self, events: &[HostEvent]) {
        for event in events {
            let line = match event {
                HostEvent::CallLegSync {
                    leg,
                    decision,
                    plugin,
                    ..
                } => format!(
                    "OnCallLegSync      {:<12} -> {} by {plugin}",
                    self.name(*leg),
                    decision.as_str()
                ),
                HostEvent::LinkSync {
                    legs,
                    decision,
                    plugin,
                    ..
                } => format!(
                    "OnLinkSync         {}-{} -> {} by {plugin}",
                    self.name(legs[0]),
                    self.name(legs[1]),
                    decision.as_str()
                ),
                HostEvent::LinkDropped { legs, .. } => format!(
                    "link dropped       {}-{} (a leg was refused)",
                    self.name(legs[0]),
                    self.name(legs[1])
                ),
                HostEvent::CallLegTerminated { leg, reason } => {
                    format!(
                        "OnCallLegTerminated {:<11} ({})",
                        self.name(*leg),
                        reason.as_str()
                    )
                }
                HostEvent::MixerSync {
                    mixer,
                    legs,
                    decision,
                    plugin,
                    ..
                } => format!(
                    "mixer decision     {} ({legs} leg(s) joined) -> {} by {plugin}",
                    self.mixer_name(*mixer),
                    decision.as_str()
                ),
                HostEvent::MixerTerminated { mixer, reason } => format!(
                    "mixer terminated   {} ({})",
                    self.mixer_name(*mixer),
                    reason.as_str()
                ),
                HostEvent::LegJoined { leg, mixer, role } => format!(
                    "joined             {} to {} as {}",
                    self.name(*leg),
                    self.mixer_name(*mixer),
                    role.as_str()
                ),
                HostEvent::LegUnjoined { leg, mixer } => format!(
                    "unjoined           {} from {}",
                    self.name(*leg),
                    self.mixer_name(*mixer)
                ),
                HostEvent::Link { state, .. } => format!("link               {}", state.as_str()),
                HostEvent::ResyncDone(s) => format!(
                    "resync done        known {} rebuilt {} refused {} absent {} (engine restarted: {})",
                    s.known, s.rebuilt, s.refused, s.absent, s.engine_restarted
                ),
                HostEvent::Role { role, epoch, .. } => match epoch {
                    Some(epoch) => format!("role               {} (epoch {epoch})", role.as_str()),
                    None => format!("role               {}", role.as_str()),
                },
                HostEvent::Reload(_) | HostEvent::Enforced(_) | HostEvent::Shadow(_) => continue,
            };
            println!("    {line}");
        }
    }

    /// CDR records written since the last call, printed.
    fn new_cdrs(&self) -> Vec<CdrRecord> {
        let all = CdrWriter::read_all(&self.config.cdr).unwrap_or_default();
        let fresh: Vec<CdrRecord> = all.into_iter().skip(self.cdrs_seen.get()).collect();
        self.cdrs_seen.set(self.cdrs_seen.get() + fresh.len());
        for r in &fresh {
            let extra = match (r.resumes, r.supersedes) {
                (Some(end), _) => format!(" resumes END #{end}"),
                (_, Some(end)) => format!(" supersedes END #{end}"),
                _ => String::new(),
            };
            let what = match (r.kind, r.end_reason, r.duration_ms) {
                (RecordKind::End, Some(reason), Some(ms)) => format!(
                    "END    {} {}, {}.{:03} s",
                    self.name(r.leg),
                    reason.as_str(),
                    ms / 1000,
                    ms % 1000
                ),
                (RecordKind::Resume, ..) => format!("RESUME {}", self.name(r.leg)),
                (RecordKind::Carry, ..) => format!(
                    "{:<6} {} open call(s), epoch {}",
                    r.kind.as_str().to_uppercase(),
                    r.calls.unwrap_or_default(),
                    r.epoch
                ),
                _ => format!("START  {}", self.name(r.leg)),
            };
            println!("    CDR #{} {what}{extra}", r.record);
        }
        fresh
    }

    fn check(&self, what: &str, ok: bool) {
        if ok {
            println!("  ✓ {what}");
        } else {
            println!("  ✗ {what}");
            self.failures.set(self.failures.get() + 1);
        }
    }
}

/// Waits until `path` gains a line containing `needle` after its current
/// end.
async fn wait_for_line(path: &Path, needle: &str) -> anyhow::Result<()> {
    let start = std::fs::metadata(path).map_or(0, |m| m.len()) as usize;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = std::fs::read(path).unwrap_or_default();
        if text
            .get(start..)
            .is_some_and(|new| String::from_utf8_lossy(new).contains(needle))
        {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no `{needle}` in {} within {WAIT:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `c` as a config file for `legsync run`, pointed at `engine`.
fn config_toml(c: &HostConfig, engine: std::net::SocketAddr) -> String {
    let path = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    format!(
        "engine = \"{}\"\nname = \"{}\"\nadmin = \"127.0.0.1:0\"\ngrace_secs = {}\ncdr = \"{}\"\nevents = \"{}\"\n\
         [link]\nheartbeat_ms = {}\nheartbeat_timeout_ms = {}\nbackoff_base_ms = {}\nbackoff_max_ms = {}\n\
         [policy]\nplugin_dir = \"{}\"\ncache_dir = \"{}\"\n",
        engine,
        c.name,
        c.grace_secs,
        c.cdr.display(),
        path(&c.events),
        c.link.heartbeat_ms,
        c.link.heartbeat_timeout_ms,
        c.link.backoff_base_ms,
        c.link.backoff_max_ms,
        path(&c.policy.plugin_dir),
        path(&c.policy.cache_dir),
    )
}

fn heading(text: &str) {
    println!("\n== {text}");
}

fn step(text: &str) {
    println!("  {text}");
}

fn legs_of(records: &[CdrRecord], kind: RecordKind) -> Vec<u64> {
    let mut legs: Vec<u64> = records
        .iter()
        .filter(|r| r.kind == kind)
        .map(|r| r.leg)
        .collect();
    legs.sort();
    legs
}

/// What `synced` gives when every one of `legs` was rebuilt.
fn all_rebuilt<const N: usize>(legs: [u64; N]) -> Vec<(u64, Decision)> {
    sorted(legs)
        .into_iter()
        .map(|leg| (leg, Decision::Rebuild))
        .collect()
}

fn sorted<const N: usize>(mut ids: [u64; N]) -> Vec<u64> {
    ids.sort();
    ids.to_vec()
}

//! Hot reload with real files and a real running host: rules edits, bad
//! sets rejected while the old set keeps deciding, a swap in the middle of a
//! million-leg resync, and SIGHUP on the real binary.

mod common;

use common::world::{WAIT, World};
use legsync::config::HostConfig;
use legsync::events::{HostEvent, LinkState, ReloadOutcome, ReloadReport};
use legsync::model::Decision;
use legsync::policy::{CompileCache, PolicyRuntime};
use legsync::reload::{PolicySource, Reloader};
use legsync_lab::demo::harness::RunningHost;
use legsync_lab::demo::harness::synced;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const REFUSE_PREMIUM: &str = "[[rule]]\naction = \"refuse\"\ncalled_prefix = [\"1900\"]\n";

/// A reloader for `host`, reading its settings from `config_file` (or
/// from `config` when there is none), compiling through `config`'s cache.
fn reloader_for(
    host: &RunningHost,
    config: &HostConfig,
    config_file: Option<PathBuf>,
) -> Arc<Reloader> {
    let runtime =
        PolicyRuntime::new(config.policy.cache_dir.clone().map(CompileCache::new)).unwrap();
    let source = PolicySource {
        config_file,
        plugin_dir_override: None,
        fallback: config.policy.clone(),
        started: Some(config.clone()),
    };
    Arc::new(Reloader::new(
        runtime,
        source,
        host.policy.clone(),
        host.sink.clone(),
    ))
}

/// A host plus a reloader watching the world's plugin directory.
async fn watched_host(world: &World) -> (RunningHost, CancellationToken) {
    let config = world.config(10.0);
    let mut host = RunningHost::start(&config, world.decider(&config)).unwrap();
    host.next_resync(WAIT).await.unwrap();
    let stop = CancellationToken::new();
    reloader_for(&host, &config, None)
        .spawn(stop.clone())
        .unwrap();
    (host, stop)
}

fn reload_report(event: &HostEvent) -> Option<ReloadReport> {
    match event {
        HostEvent::Reload(report) if report.outcome != ReloadOutcome::RejectedWillRetry => {
            Some((**report).clone())
        }
        _ => None,
    }
}

async fn next_reload(host: &mut RunningHost) -> ReloadReport {
    let events = host
        .events_until(WAIT, |e| reload_report(e).is_some())
        .await
        .unwrap();
    events.iter().rev().find_map(reload_report).unwrap()
}

/// Cuts the host off, answers a leg calling `called` meanwhile, and returns
/// the decision the next resync made for it.
async fn decision_for_new_leg(
    world: &World,
    host: &mut RunningHost,
    called: &str,
) -> (Decision, String) {
    world.sim.ok("partition 60000").await.unwrap();
    host.wait_disconnected(WAIT).await.unwrap();
    let leg = world
        .sim
        .ok_id(&format!("call SIP_CARRIER_A 15145550000 {called}"))
        .await
        .unwrap();
    world.sim.ok("partition 0").await.unwrap();
    let events = host.next_resync(WAIT).await.unwrap();
    assert_eq!(synced(&events).len(), 1, "{events:#?}");
    events
        .iter()
        .find_map(|e| match e {
            HostEvent::CallLegSync {
                leg: l,
                decision,
                plugin,
                ..
            } if *l == leg => Some((*decision, plugin.to_string())),
            _ => None,
        })
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_edit_flips_the_decision_of_the_next_resync() {
    let world = World::new(None, &[("20-rules", "rules", None)]).await;
    let (mut host, stop) = watched_host(&world).await;
    assert_eq!(
        decision_for_new_leg(&world, &mut host, "19005550001")
            .await
            .0,
        Decision::Rebuild
    );

    std::fs::write(world.plugins.join("20-rules.rules"), REFUSE_PREMIUM).unwrap();
    let report = next_reload(&mut host).await;
    assert_eq!(report.outcome, ReloadOutcome::Applied, "{report:?}");
    assert_eq!(report.trigger, "watch");
    assert!(report.plugins[0].starts_with("20-rules@"), "{report:?}");

    assert_eq!(
        decision_for_new_leg(&world, &mut host, "19005550002").await,
        (Decision::Refuse, "20-rules".into())
    );
    stop.cancel();
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_sets_are_rejected_and_the_old_set_keeps_deciding() {
    let world = World::new(None, &[("20-rules", "rules", Some(REFUSE_PREMIUM))]).await;
    let (mut host, stop) = watched_host(&world).await;

    // A corrupt plugin next to the good one.
    std::fs::write(
        world.plugins.join("40-broken.wasm"),
        b"\0asm\x0d\0\x01\0 half a component",
    )
    .unwrap();
    let report = next_reload(&mut host).await;
    assert_eq!(report.outcome, ReloadOutcome::Rejected);
    assert!(
        report.error.as_deref().unwrap().contains("40-broken.wasm"),
        "{report:?}"
    );
    assert_eq!(
        decision_for_new_leg(&world, &mut host, "19005550003").await,
        (Decision::Refuse, "20-rules".into())
    );

    std::fs::remove_file(world.plugins.join("40-broken.wasm")).unwrap();
    assert_eq!(next_reload(&mut host).await.outcome, ReloadOutcome::Applied);

    // Rules that init refuses.
    std::fs::write(
        world.plugins.join("20-rules.rules"),
        "[[rule]]\naction = \"sometimes\"\n",
    )
    .unwrap();
    let report = next_reload(&mut host).await;
    assert_eq!(report.outcome, ReloadOutcome::Rejected);
    let error = report.error.unwrap();
    assert!(
        error.contains("20-rules") && error.contains("invalid TOML rules"),
        "{error}"
    );
    assert_eq!(
        decision_for_new_leg(&world, &mut host, "19005550004")
            .await
            .0,
        Decision::Refuse,
        "old rules still apply"
    );
    std::fs::write(world.plugins.join("20-rules.rules"), REFUSE_PREMIUM).unwrap();
    assert_eq!(next_reload(&mut host).await.outcome, ReloadOutcome::Applied);

    // A plugin that loads but traps when it decides: tried on a sample
    // batch first, it is named and the set is refused.
    std::fs::copy(
        common::built_plugin("fixture-panic"),
        world.plugins.join("40-panic.wasm"),
    )
    .unwrap();
    let report = next_reload(&mut host).await;
    assert_eq!(report.outcome, ReloadOutcome::Rejected);
    let error = report.error.unwrap();
    assert!(
        error.contains("plugin 40-panic fails on a sample batch")
            && error.contains("on-call-leg-sync ends in trap"),
        "{error}"
    );
    assert_eq!(
        decision_for_new_leg(&world, &mut host, "19005550005").await,
        (Decision::Refuse, "20-rules".into()),
        "the working set still decides"
    );
    stop.cancel();
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_during_a_million_leg_resync_leaves_that_resync_on_the_old_set() {
    const LEGS: u64 = 1_000_000;
    // engine-sim's preload sends 1 call in 100 to a 1900 number: 10,000 legs.
    const PREMIUM_LEGS: u64 = 10_000;
    let world = World::with_sim_timeout(
        Some(LEGS),
        &[("10-policy", "rules", Some(REFUSE_PREMIUM))],
        60_000,
    )
    .await;
    // Long grace: in a debug build, saving a million-leg state file for each
    // control command takes seconds.
    let mut config = world.config(600.0);
    config.events = None;
    config.link.heartbeat_timeout_ms = 60_000;
    let mut host = RunningHost::start_summaries(&config, world.decider(&config)).unwrap();
    let reloader = reloader_for(&host, &config, None);

    host.wait_status(WAIT, |s| s.link == Some(LinkState::Resyncing))
        .await
        .unwrap();
    // Replace the plugin by one that accepts everything, mid-resync.
    common::install(&world.plugins, "10-policy", "accept-all", None);
    std::fs::remove_file(world.plugins.join("10-policy.rules")).unwrap();
    let report = tokio::task::spawn_blocking({
        let reloader = reloader.clone();
        move || reloader.reload("api", false)
    })
    .await
    .unwrap();
    assert_eq!(report.outcome, ReloadOutcome::Applied, "{report:?}");
    assert!(
        report.swap_micros < 1_000,
        "the swap itself paused decisions for {} µs",
        report.swap_micros
    );

    let events = host
        .events_until(Duration::from_secs(600), |e| {
            matches!(e, HostEvent::ResyncDone(_))
        })
        .await
        .unwrap();
    assert!(
        events.iter().any(|e| matches!(e, HostEvent::Reload(_))),
        "the swap happened during the resync"
    );
    assert!(
        !events.iter().any(|e| matches!(
            e,
            HostEvent::Link {
                state: LinkState::Disconnected,
                ..
            }
        )),
        "one uninterrupted resync: {events:?}"
    );
    let HostEvent::ResyncDone(first) = events.last().unwrap() else {
        unreachable!()
    };
    assert_eq!(first.rebuilt + first.refused, LEGS);
    assert_eq!(
        first.refused, PREMIUM_LEGS,
        "every premium leg was refused: the whole resync ran on the old set"
    );

    // The next resync decides on the new set: a premium call is rebuilt.
    world.sim.ok("partition 60000").await.unwrap();
    host.wait_status(WAIT, |s| s.link == Some(LinkState::Disconnected))
        .await
        .unwrap();
    world
        .sim
        .ok_id("call SIP_CARRIER_A 15145550000 19005550009")
        .await
        .unwrap();
    world.sim.ok("partition 0").await.unwrap();
    let events = host
        .events_until(Duration::from_secs(600), |e| {
            matches!(e, HostEvent::ResyncDone(_))
        })
        .await
        .unwrap();
    let HostEvent::ResyncDone(second) = events.last().unwrap() else {
        unreachable!()
    };
    assert_eq!((second.rebuilt, second.refused), (1, 0), "{second:?}");
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_running_legsync() {
    let world = World::new(None, &[("20-rules", "rules", Some(REFUSE_PREMIUM))]).await;
    let events = world.events_path();
    let mut child = run_legsync(&world);
    wait_for_line(&events, "\"kind\":\"resync-done\"").await;

    // SAFETY: kill(2) on our own child with a valid signal.
    assert_eq!(
        unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGHUP) },
        0
    );
    let line = wait_for_line(&events, "\"trigger\":\"SIGHUP\"").await;
    assert!(line.contains("\"outcome\":\"applied\""), "{line}");
    assert!(line.contains("20-rules@"), "{line}");
    child.kill().await.unwrap();
}

/// `legsync run` as a child process on `world`'s engine, plugins and files.
fn run_legsync(world: &World) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_legsync"))
        .args(["run", "--admin", "off", "--grace", "10"])
        .args(["--engine", &world.sim.listen.to_string()])
        .arg("--plugin-dir")
        .arg(&world.plugins)
        .arg("--cdr")
        .arg(world.cdr_path())
        .arg("--events")
        .arg(world.events_path())
        .env("XDG_CACHE_HOME", world.dir.path().join("cache"))
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits for a line containing `needle` in a file another process appends to.
async fn wait_for_line(path: &std::path::Path, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Some(line) = text.lines().find(|l| l.contains(needle))
        {
            return line.to_string();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{needle}` in {}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reports up to and including the first final outcome (not a will-retry).
async fn reports_until_final(host: &mut RunningHost) -> Vec<ReloadReport> {
    let events = host
        .events_until(WAIT, |e| reload_report(e).is_some())
        .await
        .unwrap();
    events
        .into_iter()
        .filter_map(|e| match e {
            HostEvent::Reload(report) => Some(*report),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_files_reorders_the_chain() {
    let world = World::new(
        None,
        &[
            ("10-accept-all", "accept-all", None),
            ("20-rules", "rules", Some(REFUSE_PREMIUM)),
        ],
    )
    .await;
    let (mut host, stop) = watched_host(&world).await;
    std::fs::rename(
        world.plugins.join("10-accept-all.wasm"),
        world.plugins.join("30-accept-all.wasm"),
    )
    .unwrap();
    let report = reports_until_final(&mut host).await.pop().unwrap();
    assert_eq!(report.outcome, ReloadOutcome::Applied, "{report:?}");
    let order: Vec<&str> = report
        .plugins
        .iter()
        .map(|p| p.split('@').next().unwrap())
        .collect();
    assert_eq!(order, ["20-rules", "30-accept-all"]);
    assert_eq!(
        decision_for_new_leg(&world, &mut host, "15145550001").await,
        (Decision::Rebuild, "30-accept-all".into())
    );
    stop.cancel();
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_edit_reloads_the_policy() {
    let world = World::new(None, &[("20-rules", "rules", Some(REFUSE_PREMIUM))]).await;
    let other = world.dir.path().join("other.d");
    std::fs::create_dir(&other).unwrap();
    common::install(&other, "10-accept-all", "accept-all", None);
    let config_file = world.dir.path().join("legsync.toml");
    let write_config = |dir: &std::path::Path| {
        std::fs::write(
            &config_file,
            format!("[policy]\nplugin_dir = {:?}\n", dir.to_str().unwrap()),
        )
        .unwrap();
    };
    write_config(&world.plugins);

    let config = world.config(10.0);
    let mut host = RunningHost::start(&config, world.decider(&config)).unwrap();
    host.next_resync(WAIT).await.unwrap();
    let stop = CancellationToken::new();
    reloader_for(&host, &config, Some(config_file.clone()))
        .spawn(stop.clone())
        .unwrap();

    write_config(&other);
    let report = reports_until_final(&mut host).await.pop().unwrap();
    assert_eq!(report.outcome, ReloadOutcome::Applied, "{report:?}");
    assert!(
        report.plugins.len() == 1 && report.plugins[0].starts_with("10-accept-all@"),
        "{report:?}"
    );

    std::fs::write(&config_file, "[policy]\nplugin_dri = \"typo\"\n").unwrap();
    let report = reports_until_final(&mut host).await.pop().unwrap();
    assert_eq!(report.outcome, ReloadOutcome::Rejected);
    assert!(
        report.error.as_deref().unwrap().contains("plugin_dri"),
        "{report:?}"
    );
    assert!(
        report.plugins[0].starts_with("10-accept-all@"),
        "the working set stays"
    );
    stop.cancel();
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_copied_in_two_writes_loads_without_a_failure_storm() {
    let world = World::new(None, &[("20-rules", "rules", Some(REFUSE_PREMIUM))]).await;
    let (mut host, stop) = watched_host(&world).await;
    let bytes = std::fs::read(common::built_plugin("accept-all")).unwrap();
    let target = world.plugins.join("30-late.wasm");
    // A slow copy: half the file, a pause shorter than the debounce, the rest.
    std::fs::write(&target, &bytes[..bytes.len() / 2]).unwrap();
    tokio::time::sleep(legsync::reload::DEBOUNCE / 3).await;
    std::fs::write(&target, &bytes).unwrap();
    let reports = reports_until_final(&mut host).await;
    let last = reports.last().unwrap();
    assert_eq!(last.outcome, ReloadOutcome::Applied, "{reports:?}");
    assert!(
        reports.len() <= 2,
        "at most one failed attempt before it loads: {reports:?}"
    );
    assert!(
        last.plugins.iter().any(|p| p.starts_with("30-late@")),
        "{last:?}"
    );
    stop.cancel();
    host.stop().await.unwrap();
}

/// `legsync run --config legsync.toml`, a relative path: an edit of the
/// file is seen (it used to be missed), and a changed setting that needs a
/// restart is named, not reported as applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_config_is_watched_and_restart_only_settings_are_named() {
    let world = World::new(None, &[("20-rules", "rules", Some(REFUSE_PREMIUM))]).await;
    let dir = world.dir.path();
    let events = world.events_path();
    let config = |grace: u32| {
        format!(
            "engine = \"{}\"\nadmin = \"off\"\ngrace_secs = {grace}\ncdr = \"{}\"\nevents = \"{}\"\n\
             [policy]\nplugin_dir = \"{}\"\n",
            world.sim.listen,
            world.cdr_path().display(),
            events.display(),
            world.plugins.display()
        )
    };
    std::fs::write(dir.join("legsync.toml"), config(10)).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_legsync"))
        // A flag overrides the file: not a change of the file.
        .args(["run", "--config", "legsync.toml", "--name", "cc-7a"])
        .current_dir(dir)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_for_line(&events, "\"kind\":\"resync-done\"").await;
    // Atomically, as an editor or a config manager does.
    std::fs::write(dir.join("legsync.toml.new"), config(30)).unwrap();
    std::fs::rename(dir.join("legsync.toml.new"), dir.join("legsync.toml")).unwrap();
    let line = wait_for_line(&events, "\"trigger\":\"watch\"").await;
    assert!(line.contains("\"outcome\":\"applied\""), "{line}");
    assert!(
        line.contains("\"needs_restart\":[\"grace_secs\"]"),
        "{line}"
    );
    child.kill().await.unwrap();
}

/// A plugin that binds a UDP socket in `init` used to crash `legsync run`
/// at start (`Cannot start a runtime from within a runtime`, exit 101) while
/// `plugin check` passed it; a start now goes through, and resyncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_making_wasi_socket_calls_in_init_does_not_crash_the_host() {
    let world = World::new(None, &[("50-udp", "fixture-udp-init", None)]).await;
    let events = world.events_path();
    let mut child = run_legsync(&world);
    wait_for_line(&events, "\"kind\":\"resync-done\"").await;
    assert!(child.try_wait().unwrap().is_none(), "the host is running");
    child.kill().await.unwrap();
}

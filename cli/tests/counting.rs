//! A counting policy over real processes: `nap-cap`, in Rust, Python and
//! JavaScript, holds its cap exactly across two resyncs, a reload and
//! instance recycles, against a real engine-sim and a real `legsync run`.
//!
//! Before contract 0.4.0 the cap drifted: every plugin hears of every leg
//! that ends (legs it refused, legs another plugin refused, legs it never
//! saw), and a fresh instance (after a reload, a recycle, a failure)
//! started from zero. Now a termination notice says whether the host held
//! the leg, and a fresh instance rebuilds its counts from `held-legs`.
//!
//! The plugin runs with `max_calls_per_instance = 2`, so its instances are
//! replaced all along the test; the reload swaps the whole set. Its
//! deadline is 1 s, as the guide advises for interpreted plugins: a Python
//! instance's start and `init` take ~50 ms alone, more on a busy machine.

mod common;

use common::host_trial::{HostTrial, add_calls};
use common::languages::{Build, built};
use common::world::WAIT;
use common::{built_plugin, legsync};
use legsync_lab::sim::process::SimProcess;
use std::path::Path;
use std::time::Duration;

const CAP: usize = 3;
const RULES: &str = "[max]\nSIP_A = 3\n";

/// The host with `plugin` as `30-nap-cap` (each instance good for two
/// calls), after its first resync of the engine's `before` calls.
async fn start(plugin: &Path, before: &[(&str, usize)]) -> HostTrial {
    HostTrial::start(None, before, "", |dir| {
        let plugins = dir.join("plugins.d");
        std::fs::copy(plugin, plugins.join("30-nap-cap.wasm")).unwrap();
        std::fs::write(plugins.join("30-nap-cap.rules"), RULES).unwrap();
        "[policy.plugins.30-nap-cap]\nmax_calls_per_instance = 2\ndeadline_ms = 1000\n".into()
    })
    .await
}

/// The legs the host holds on `nap`, by id.
async fn held(trial: &HostTrial, nap: &str) -> Vec<u64> {
    let page = trial.get(&format!("/legs?nap={nap}&limit=1000")).await;
    page["legs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|leg| leg["id"].as_u64().unwrap())
        .collect()
}

/// Waits until the host holds `count` legs on `nap`.
async fn wait_held(trial: &HostTrial, nap: &str, count: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let held = held(trial, nap).await;
        if held.len() == count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{nap}: {held:?}, not {count}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Cuts the host off, answers `calls` meanwhile, and lets it back: the
/// next resync (`resync`-th in all) offers them to the plugins.
async fn blip_with(trial: &HostTrial, calls: &[(&str, usize)], resync: usize) {
    let answer = async |sim: &SimProcess| {
        for &(nap, count) in calls {
            add_calls(sim, nap, count).await;
        }
    };
    trial
        .cut_off("\"state\":\"disconnected\"", answer, resync)
        .await;
}

/// `legsync plugin test` with the example's own test file (`tests` in
/// the repository): held calls counted as the host lists them.
fn passes_its_tests(plugin: &Path, tests: &str) {
    let tests = common::languages::repo().join(tests);
    let out = legsync(&[
        "plugin",
        "test",
        plugin.to_str().unwrap(),
        tests.to_str().unwrap(),
    ]);
    let stdout = common::text(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        common::text(&out.stderr)
    );
    assert!(stdout.contains("4 decisions as expected"), "{stdout}");
}

/// The whole trial for one build of `nap-cap`.
async fn the_cap_holds(plugin: &Path) {
    // Resync 1 (a cold start): 5 calls on the capped NAP, 3 adopted.
    let trial = start(plugin, &[("SIP_A", 5), ("SIP_B", 2)]).await;
    assert_eq!(held(&trial, "SIP_A").await.len(), CAP);
    assert_eq!(held(&trial, "SIP_B").await.len(), 2, "SIP_B has no cap");

    // One counted call ends: one slot frees (and only one, although the
    // plugin also heard of the two legs it refused).
    let first = held(&trial, "SIP_A").await[0];
    trial.sim.ok(&format!("release {first}")).await.unwrap();
    wait_held(&trial, "SIP_A", CAP - 1).await;

    // Resync 2 (a blip): three new calls, one slot: one adopted.
    blip_with(&trial, &[("SIP_A", 3)], 2).await;
    assert_eq!(held(&trial, "SIP_A").await.len(), CAP, "after resync 2");

    // A reload (the rules file edited: a new set, fresh instances that
    // start from the host's table), then resync 3: no slot is free.
    std::fs::write(
        trial.dir.path().join("plugins.d/30-nap-cap.rules"),
        format!("{RULES}# reloaded\n"),
    )
    .unwrap();
    let (code, said) = trial.command("reload", &[]);
    assert_eq!(code, Some(0), "{said}");
    blip_with(&trial, &[("SIP_A", 2), ("SIP_B", 1)], 3).await;
    assert_eq!(held(&trial, "SIP_A").await.len(), CAP, "after the reload");
    assert_eq!(held(&trial, "SIP_B").await.len(), 3);

    // The engine dropped what was refused: it carries exactly what is held.
    let list = trial.sim.control("list").await.unwrap();
    let on_a = list.lines().filter(|l| l.contains(" SIP_A ")).count();
    assert_eq!(on_a, CAP, "{list}");

    let plugin_series = |name: &str| format!("{name}{{plugin=\"30-nap-cap\"}}");
    assert!(
        trial
            .metric(&plugin_series("legsync_plugin_recycles_total"))
            .await
            >= 2.0,
        "instances were replaced along the way"
    );
    assert_eq!(
        trial
            .metric(
                "legsync_plugin_counter_total{plugin=\"30-nap-cap\",counter=\"refused_over_cap\"}"
            )
            .await,
        (2 + 2 + 2) as f64,
        "the plugin's own counter: refusals of resyncs 1, 2 and 3"
    );
    trial.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_nap_cap_holds_its_cap_across_resyncs_a_reload_and_recycles() {
    let plugin = built_plugin("nap-cap");
    passes_its_tests(&plugin, "plugins/nap-cap/tests.json");
    the_cap_holds(&plugin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_nap_cap_holds_its_cap_across_resyncs_a_reload_and_recycles() {
    let Some(plugin) = built(Build::Python, "nap-cap") else {
        return;
    };
    passes_its_tests(&plugin, "plugins/python/nap-cap/tests.json");
    the_cap_holds(&plugin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_nap_cap_holds_its_cap_across_resyncs_a_reload_and_recycles() {
    let Some(plugin) = built(Build::JavaScript, "nap-cap") else {
        return;
    };
    passes_its_tests(&plugin, "plugins/js/nap-cap/tests.json");
    the_cap_holds(&plugin).await;
}

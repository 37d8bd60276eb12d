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

use common::languages::{Build, built};
use common::world::WAIT;
use common::{built_plugin, legsync};
use hyper::Method;
use legsync::admin::client::request;
use legsync::admin::token::AdminToken;
use legsync_lab::demo::host_process::{HostProcess, wait_for_count};
use legsync_lab::sim::process::SimProcess;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const CAP: usize = 3;
const RULES: &str = "[max]\nSIP_A = 3\n";

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_legsync"))
}

/// One engine-sim and one host running `plugin` as `30-nap-cap`.
struct Trial {
    dir: tempfile::TempDir,
    sim: SimProcess,
    host: HostProcess,
    admin: SocketAddr,
}

impl Trial {
    /// Starts the engine with `before` calls on each NAP, then the host,
    /// and waits for its first resync.
    async fn start(plugin: &Path, before: &[(&str, usize)]) -> Trial {
        let dir = tempfile::tempdir().unwrap();
        let sim = SimProcess::spawn(
            exe(),
            &dir.path().join("engine.state"),
            None,
            &["--heartbeat-ms", "100", "--heartbeat-timeout-ms", "1000"],
        )
        .await
        .unwrap();
        for &(nap, calls) in before {
            add_calls(&sim, nap, calls).await;
        }
        let plugins = dir.path().join("plugins.d");
        std::fs::create_dir(&plugins).unwrap();
        std::fs::copy(plugin, plugins.join("30-nap-cap.wasm")).unwrap();
        std::fs::write(plugins.join("30-nap-cap.rules"), RULES).unwrap();
        let config = dir.path().join("host.toml");
        std::fs::write(
            &config,
            format!(
                "engine = \"{}\"\nname = \"pri\"\nadmin = \"127.0.0.1:0\"\ncdr = \"{}\"\nevents = \"{}\"\n\
                 [link]\nheartbeat_ms = 100\nheartbeat_timeout_ms = 600\nbackoff_base_ms = 50\nbackoff_max_ms = 200\n\
                 [policy]\nplugin_dir = \"{}\"\ncache_dir = \"{}\"\n\
                 [policy.plugins.30-nap-cap]\nmax_calls_per_instance = 2\ndeadline_ms = 1000\n",
                sim.listen,
                dir.path().join("cdr.jsonl").display(),
                dir.path().join("events.jsonl").display(),
                plugins.display(),
                PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                    .join("compile-cache")
                    .display(),
            ),
        )
        .unwrap();
        let host = HostProcess::spawn(exe(), &config, &dir.path().join("host.log")).unwrap();
        let admin = host.admin_addr().await.unwrap();
        let trial = Trial {
            dir,
            sim,
            host,
            admin,
        };
        trial.resyncs(1).await;
        trial
    }

    fn events(&self) -> PathBuf {
        self.dir.path().join("events.jsonl")
    }

    /// Waits until the host has finished `n` resyncs in all.
    async fn resyncs(&self, n: usize) {
        wait_for_count(&self.events(), "\"kind\":\"resync-done\"", n, WAIT)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.host.log()));
    }

    async fn admin(&self, method: Method, path: &str) -> String {
        let token = AdminToken::read(&self.dir.path().join("admin.token")).unwrap();
        let (code, body) = request(&self.admin.to_string(), method, path, Some(&token))
            .await
            .unwrap();
        assert!(code.is_success(), "{path}: {code} {body}");
        body
    }

    /// The legs the host holds on `nap`, by id.
    async fn held(&self, nap: &str) -> Vec<u64> {
        let body = self
            .admin(Method::GET, &format!("/legs?nap={nap}&limit=1000"))
            .await;
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        page["legs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|leg| leg["id"].as_u64().unwrap())
            .collect()
    }

    /// Waits until the host holds `count` legs on `nap`.
    async fn wait_held(&self, nap: &str, count: usize) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let held = self.held(nap).await;
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
    async fn blip_with(&self, calls: &[(&str, usize)], resync: usize) {
        let cut = 1 + std::fs::read_to_string(self.events())
            .unwrap_or_default()
            .matches("\"state\":\"disconnected\"")
            .count();
        self.sim.ok("partition 60000").await.unwrap();
        wait_for_count(&self.events(), "\"state\":\"disconnected\"", cut, WAIT)
            .await
            .unwrap();
        for &(nap, count) in calls {
            add_calls(&self.sim, nap, count).await;
        }
        self.sim.ok("partition 0").await.unwrap();
        self.resyncs(resync).await;
    }

    async fn metric(&self, series: &str) -> f64 {
        let body = self.admin(Method::GET, "/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}

async fn add_calls(sim: &SimProcess, nap: &str, count: usize) {
    for n in 0..count {
        sim.ok_id(&format!("call {nap} 1514555{n:04} 1514556{n:04}"))
            .await
            .unwrap();
    }
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
    let trial = Trial::start(plugin, &[("SIP_A", 5), ("SIP_B", 2)]).await;
    assert_eq!(trial.held("SIP_A").await.len(), CAP);
    assert_eq!(trial.held("SIP_B").await.len(), 2, "SIP_B has no cap");

    // One counted call ends: one slot frees (and only one, although the
    // plugin also heard of the two legs it refused).
    let first = trial.held("SIP_A").await[0];
    trial.sim.ok(&format!("release {first}")).await.unwrap();
    trial.wait_held("SIP_A", CAP - 1).await;

    // Resync 2 (a blip): three new calls, one slot: one adopted.
    trial.blip_with(&[("SIP_A", 3)], 2).await;
    assert_eq!(trial.held("SIP_A").await.len(), CAP, "after resync 2");

    // A reload (the rules file edited: a new set, fresh instances that
    // start from the host's table), then resync 3: no slot is free.
    std::fs::write(
        trial.dir.path().join("plugins.d/30-nap-cap.rules"),
        format!("{RULES}# reloaded\n"),
    )
    .unwrap();
    let out = legsync(&[
        "reload",
        "--admin",
        &trial.admin.to_string(),
        "--token-file",
        trial.dir.path().join("admin.token").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        common::text(&out.stdout),
        common::text(&out.stderr)
    );
    trial.blip_with(&[("SIP_A", 2), ("SIP_B", 1)], 3).await;
    assert_eq!(trial.held("SIP_A").await.len(), CAP, "after the reload");
    assert_eq!(trial.held("SIP_B").await.len(), 3);

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
    let mut host = trial.host;
    host.stop().await.unwrap();
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

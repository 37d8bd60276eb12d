//! Helpers shared by the integration tests: real plugins built from
//! `plugins/`, copied into drop-in directories the way an operator would.
#![allow(dead_code)] // each test binary uses its own subset

pub mod host_trial;
pub mod languages;
pub mod world;

use legsync::model::{CallLeg, Direction, LegState, Protocol};
use std::path::{Path, PathBuf};

/// Runs the real `legsync` binary with `args` (the plugin tools' default
/// compile cache kept out of $HOME) and waits for it.
pub fn legsync(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_legsync"))
        .args(args)
        .env(
            "XDG_CACHE_HOME",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("xdg-cache"),
        )
        .output()
        .expect("legsync runs")
}

/// A system tool a test runs because the docs promise it works with it
/// (logrotate, systemd-analyze): the first of `paths` that exists. Without
/// it the test says SKIPPED (`None`); under `CI=true` it fails, since
/// `.ci/run` installs `package`.
pub fn system_tool(paths: &[&str], package: &str) -> Option<PathBuf> {
    if let Some(found) = paths.iter().map(PathBuf::from).find(|p| p.is_file()) {
        return Some(found);
    }
    unavailable(&format!(
        "{} is not installed (Debian package `{package}`; .ci/run installs it)",
        paths[0]
    ));
    None
}

/// Something a test needs is not there: under `CI=true` (where `.ci/run`
/// provides it) the test fails; elsewhere it says SKIPPED, and why, and the
/// caller returns.
pub fn unavailable(why: &str) {
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!("{why}: it is required under CI");
    }
    eprintln!("SKIPPED: {why}");
}

/// A process's output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The built component of the plugin crate `crate_name` (e.g. `nap-cap`).
pub fn built_plugin(crate_name: &str) -> PathBuf {
    let path = Path::new(legsync::BUILT_PLUGINS_DIR)
        .join(format!("{}.wasm", crate_name.replace('-', "_")));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// A plugin directory holding `(file stem, plugin crate, rules text)` entries.
pub fn plugin_dir(entries: &[(&str, &str, Option<&str>)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (stem, crate_name, rules) in entries {
        install(dir.path(), stem, crate_name, *rules);
    }
    dir
}

/// Copies a built plugin into `dir` as `STEM.wasm`, with its rules sidecar.
pub fn install(dir: &Path, stem: &str, crate_name: &str, rules: Option<&str>) {
    std::fs::copy(built_plugin(crate_name), dir.join(format!("{stem}.wasm"))).unwrap();
    if let Some(rules) = rules {
        std::fs::write(dir.join(format!("{stem}.rules")), rules).unwrap();
    }
}

/// The hello of a scripted engine named `engine`: boot `boot`, which is
/// also its controller epoch.
pub fn engine_hello(engine: &str, boot: u64) -> legsync::protocol::EngineMessage {
    legsync::protocol::EngineMessage::Hello {
        protocol: legsync::protocol::PROTOCOL_VERSION,
        boot_id: boot,
        engine: engine.into(),
        epoch: boot,
    }
}

/// A listener for an engine scripted by the test (on 127.0.0.1), and a host
/// config pointed at it, with its ledger in `dir`.
pub async fn scripted_engine_config(
    dir: &Path,
) -> (tokio::net::TcpListener, legsync::config::HostConfig) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = legsync::config::HostConfig {
        engine: Some(listener.local_addr().unwrap().to_string()),
        ..legsync::config::HostConfig::default()
    };
    config.cdr = dir.join("cdr.jsonl");
    (listener, config)
}

/// An answered SIP leg with the given id, NAP and called number.
pub fn leg(id: u64, nap: &str, called: &str) -> CallLeg {
    CallLeg {
        id,
        session_id: id / 2,
        direction: Direction::Inbound,
        protocol: Protocol::Sip,
        nap: nap.into(),
        calling: "5145550100".into(),
        called: called.into(),
        offered_at_ms: legsync::model::now_ms() - 120_000,
        answered_at_ms: Some(legsync::model::now_ms() - 110_000),
        linked_to: None,
        state: LegState::Answered,
    }
}

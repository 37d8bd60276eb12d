//! The shipped logrotate snippet (`dist/legsync.logrotate`, the one
//! docs/operations.md shows) run by the real `logrotate` against a real
//! `legsync run` process and engine-sim: two forced rotations on one day
//! each get their own piece, the postrotate `legsync reopen --config`
//! reaches the host, and the pieces bill every call once.
//!
//! Needs `logrotate` (Debian package `logrotate`, installed by `.ci/run`):
//! without it the test says SKIPPED; under `CI=true` it fails instead.

mod common;

use common::world::WAIT;
use legsync::cdr::bill::{self, CallState};
use legsync_lab::demo::host_process::{HostProcess, wait_for_count};
use legsync_lab::sim::process::SimProcess;
use std::path::{Path, PathBuf};

const SNIPPET: &str = include_str!("../../dist/legsync.logrotate");

/// Runs `logrotate -f` on `config` with its own state file.
fn rotate(logrotate: &Path, config: &Path, state: &Path) {
    let out = std::process::Command::new(logrotate)
        .arg("-f")
        .arg("-s")
        .arg(state)
        .arg(config)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "logrotate failed: {}{}",
        common::text(&out.stdout),
        common::text(&out.stderr)
    );
}

/// The rotated pieces of `ledger` (`cdr.jsonl-DATE-SECONDS`), in name order.
fn pieces(ledger: &Path) -> Vec<PathBuf> {
    let name = ledger.file_name().unwrap().to_str().unwrap();
    let mut pieces: Vec<PathBuf> = std::fs::read_dir(ledger.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{name}-")))
        })
        .collect();
    pieces.sort();
    pieces
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_logrotate_snippet_rotates_twice_a_day_and_loses_nothing() {
    let Some(logrotate) =
        common::system_tool(&["/usr/sbin/logrotate", "/usr/bin/logrotate"], "logrotate")
    else {
        return;
    };
    let docs = include_str!("../../docs/operations.md");
    assert!(
        docs.contains(SNIPPET),
        "operations.md shows the shipped snippet"
    );
    let dir = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_legsync"));
    let sim = SimProcess::spawn(exe, &dir.path().join("engine.state"), None, &[])
        .await
        .unwrap();
    let plugins = dir.path().join("plugins.d");
    std::fs::create_dir(&plugins).unwrap();
    common::install(&plugins, "20-rules", "rules", None);
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let ledger = data.join("cdr.jsonl");
    let events = data.join("events.jsonl");
    // A fixed admin port: `reopen --config` reads it from the config.
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = dir.path().join("legsync.toml");
    std::fs::write(
        &config,
        format!(
            "engine = \"{}\"\nname = \"cc-1a\"\nadmin = \"{admin}\"\ncdr = \"{}\"\nevents = \"{}\"\n\
             [policy]\nplugin_dir = \"{}\"\ncache_dir = \"{}\"\n",
            sim.listen,
            ledger.display(),
            events.display(),
            plugins.display(),
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join("compile-cache")
                .display(),
        ),
    )
    .unwrap();
    let mut host = HostProcess::spawn(exe, &config, &dir.path().join("host.log")).unwrap();
    host.admin_addr().await.unwrap();
    wait_for_count(&events, "\"kind\":\"resync-done\"", 1, WAIT)
        .await
        .unwrap();

    let rules = dir.path().join("legsync.logrotate");
    std::fs::write(
        &rules,
        SNIPPET
            .replace("/var/lib/legsync/cdr.jsonl", ledger.to_str().unwrap())
            .replace("/var/log/legsync/events.jsonl", events.to_str().unwrap())
            .replace("/usr/bin/legsync", exe.to_str().unwrap())
            .replace("/etc/legsync/legsync.toml", config.to_str().unwrap()),
    )
    .unwrap();
    let state = dir.path().join("logrotate.state");

    let mut calls = Vec::new();
    for n in 0..6 {
        calls.push(
            sim.ok_id(&format!("call SIP_A 15145550{n}00 14385550{n}00"))
                .await
                .unwrap(),
        );
    }
    wait_for_count(&ledger, "\"kind\":\"start\"", 6, WAIT)
        .await
        .unwrap();
    rotate(&logrotate, &rules, &state);
    assert_eq!(pieces(&ledger).len(), 1);
    // The host reopened: what follows goes to a new file at the path.
    for id in &calls[..3] {
        sim.ok(&format!("release {id}")).await.unwrap();
    }
    wait_for_count(&ledger, "\"kind\":\"end\"", 3, WAIT)
        .await
        .unwrap();
    // The same day again (the date alone would name the same piece). The
    // pieces are named to the second: the next one starts in a new second.
    let second = legsync::model::now_ms() / 1000;
    tokio::time::sleep(std::time::Duration::from_millis(
        (second + 1) * 1000 - legsync::model::now_ms() + 10,
    ))
    .await;
    rotate(&logrotate, &rules, &state);
    assert_eq!(pieces(&ledger).len(), 2, "{:?}", pieces(&ledger));
    for id in &calls[3..] {
        sim.ok(&format!("release {id}")).await.unwrap();
    }
    wait_for_count(&ledger, "\"kind\":\"end\"", 3, WAIT)
        .await
        .unwrap();
    host.stop().await.unwrap();

    let mut files = pieces(&ledger);
    files.push(ledger.clone());
    let ledgers = bill::read_ledgers(&files).unwrap();
    assert_eq!(bill::check(&ledgers), Vec::<String>::new());
    let billed = bill::bill(&bill::records(&ledgers));
    assert_eq!(billed.len(), 6, "every call once");
    assert!(billed.iter().all(|c| c.state == CallState::Closed));
    // The events were rotated with the ledger.
    assert_eq!(pieces(&events).len(), 2);
}

//! Shadow plugins over real processes (engine-sim, `legsync run`, the
//! `legsync shadow` command): a second plugin set sees every decision the
//! live set sees, its differences are counted by plugin and NAP, and its
//! failures (a plugin that loops, one that traps) change no live decision.

mod common;

use common::world::WAIT;
use common::{legsync, text};
use hyper::Method;
use legsync::admin::client::request;
use legsync::admin::token::AdminToken;
use legsync_lab::demo::host_process::{HostProcess, wait_for_count};
use legsync_lab::sim::process::SimProcess;
use std::path::{Path, PathBuf};

/// Calls the engine carries; 1 % go to premium numbers (`1900...`).
const CALLS: u64 = 2_000;
const PREMIUM: u64 = CALLS / 100;
const REFUSE_PREMIUM: &str =
    "[[rule]]\nname = \"no premium\"\naction = \"refuse\"\ncalled_prefix = [\"1900\"]\n";

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_legsync"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_set_is_compared_never_enforced_and_its_failures_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProcess::spawn(
        exe(),
        &dir.path().join("engine.state"),
        Some(CALLS),
        &["--heartbeat-ms", "100", "--heartbeat-timeout-ms", "1000"],
    )
    .await
    .unwrap();
    let live = dir.path().join("plugins.d");
    let shadow = dir.path().join("shadow.d");
    std::fs::create_dir(&live).unwrap();
    std::fs::create_dir(&shadow).unwrap();
    common::install(&live, "20-rules", "rules", Some(REFUSE_PREMIUM));
    // The candidate: premium and a whole carrier off; then a plugin that
    // loops until its deadline and one that traps, both in the shadow set.
    common::install(
        &shadow,
        "20-rules",
        "rules",
        Some(&format!(
            "{REFUSE_PREMIUM}[[rule]]\nname = \"carrier B off\"\naction = \"refuse\"\nnap = [\"SIP_CARRIER_B\"]\n"
        )),
    );
    common::install(&shadow, "40-spin", "fixture-spin", None);
    common::install(&shadow, "50-panic", "fixture-panic", None);
    let config = dir.path().join("host.toml");
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &config,
        format!(
            "engine = \"{}\"\nname = \"pri\"\nadmin = \"127.0.0.1:0\"\ncdr = \"{}\"\nevents = \"{}\"\n\
             [link]\nheartbeat_ms = 100\nheartbeat_timeout_ms = 600\nbackoff_base_ms = 50\nbackoff_max_ms = 200\n\
             [policy]\nplugin_dir = \"{}\"\nshadow_dir = \"{}\"\ncache_dir = \"{}\"\n",
            sim.listen,
            dir.path().join("cdr.jsonl").display(),
            events.display(),
            live.display(),
            shadow.display(),
            PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join("compile-cache")
                .display(),
        ),
    )
    .unwrap();
    let mut host = HostProcess::spawn(exe(), &config, &dir.path().join("host.log")).unwrap();
    let admin = host.admin_addr().await.unwrap();
    // The shadow's line comes once it has caught up with the resync.
    wait_for_count(&events, "\"kind\":\"shadow\"", 1, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", host.log()));

    let token = AdminToken::read(&dir.path().join("admin.token")).unwrap();
    let get = |path: &'static str| {
        let (admin, token) = (admin.to_string(), token.clone());
        async move {
            let (_, body) = request(&admin, Method::GET, path, Some(&token))
                .await
                .unwrap();
            body
        }
    };
    // The live set alone decided: premium refused, everything else held.
    let status: serde_json::Value = serde_json::from_str(&get("/status").await).unwrap();
    assert_eq!(status["legs"], CALLS - PREMIUM, "{status}");
    let log = std::fs::read_to_string(&events).unwrap();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("\"kind\":\"call-leg-sync\"") && l.contains("\"decision\":\"refuse\"")
        })
        .collect();
    assert_eq!(refusals.len() as u64, PREMIUM);
    assert!(
        refusals
            .iter()
            .all(|l| l.contains("\"plugin\":\"20-rules\""))
    );
    let legs: serde_json::Value =
        serde_json::from_str(&get("/legs?nap=SIP_CARRIER_B&limit=10").await).unwrap();
    let on_b = legs["matched"].as_u64().unwrap();
    assert!(on_b > 100, "{legs}");

    // The shadow set saw every leg, and would have refused carrier B's.
    let line = log
        .lines()
        .find(|l| l.contains("\"kind\":\"shadow\""))
        .unwrap();
    let summary: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(summary["compared_legs"], CALLS, "{summary}");
    assert_eq!(summary["skipped"], 0, "{summary}");
    assert_eq!(summary["shadow_refuses"], on_b, "{summary}");
    assert_eq!(summary["shadow_rebuilds"], 0, "{summary}");
    assert!(
        summary["shadow_failures"].as_u64().unwrap() > 0,
        "the looping and trapping plugins' verdicts came from their failure policy: {summary}"
    );
    let first = &summary["differences"][0];
    assert_eq!(first["kind"], "shadow-refuses");
    assert_eq!(first["item"], "leg");
    assert_eq!(first["plugin"], "20-rules");
    assert_eq!(first["nap"], "SIP_CARRIER_B");
    assert_eq!(first["count"], on_b);

    let (_, metrics) = request(&admin.to_string(), Method::GET, "/metrics", None)
        .await
        .unwrap();
    let series = "legsync_shadow_differences_total{kind=\"shadow-refuses\",item=\"leg\",plugin=\"20-rules\",nap=\"SIP_CARRIER_B\"}";
    assert!(
        metrics.contains(&format!("{series} {on_b}")),
        "{series} in:\n{metrics}"
    );

    // `legsync shadow`, as an operator reads it.
    let token_file = dir.path().join("admin.token");
    let out = legsync(&[
        "shadow",
        "--admin",
        &admin.to_string(),
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "the shadow set would refuse {on_b} the live set rebuilt, and rebuild 0 it refused"
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "{on_b} leg shadow-refuses by 20-rules on SIP_CARRIER_B"
        )),
        "{said}"
    );
    host.stop().await.unwrap();
}

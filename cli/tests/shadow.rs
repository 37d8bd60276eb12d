//! Shadow plugins over real processes (engine-sim, `legsync run`, the
//! `legsync shadow` command): a second plugin set sees every decision the
//! live set sees, its differences are counted by plugin and NAP, and its
//! failures (a plugin that loops, one that traps) change no live decision.

mod common;

use common::host_trial::HostTrial;
use hyper::Method;

/// Calls the engine carries; 1 % go to premium numbers (`1900...`).
const CALLS: u64 = 2_000;
const PREMIUM: u64 = CALLS / 100;
const REFUSE_PREMIUM: &str =
    "[[rule]]\nname = \"no premium\"\naction = \"refuse\"\ncalled_prefix = [\"1900\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_set_is_compared_never_enforced_and_its_failures_change_nothing() {
    let trial = HostTrial::start(Some(CALLS), &[], "", |dir| {
        common::install(&dir.join("plugins.d"), "20-rules", "rules", Some(REFUSE_PREMIUM));
        // The candidate: premium and a whole carrier off; then a plugin
        // that loops until its deadline and one that traps.
        let shadow = dir.join("shadow.d");
        std::fs::create_dir(&shadow).unwrap();
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
        format!("shadow_dir = \"{}\"\n", shadow.display())
    })
    .await;

    // The shadow's line comes once it has caught up with the resync.
    trial.wait_events("\"kind\":\"shadow\"", 1).await;

    // The live set alone decided: premium refused, everything else held.
    let status = trial.get("/status").await;
    assert_eq!(status["legs"], CALLS - PREMIUM, "{status}");
    let log = std::fs::read_to_string(trial.events()).unwrap();
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
    let legs = trial.get("/legs?nap=SIP_CARRIER_B&limit=10").await;
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

    let metrics = trial.admin(Method::GET, "/metrics").await;
    let series = "legsync_shadow_differences_total{kind=\"shadow-refuses\",item=\"leg\",plugin=\"20-rules\",nap=\"SIP_CARRIER_B\"}";
    assert!(
        metrics.contains(&format!("{series} {on_b}")),
        "{series} in:\n{metrics}"
    );

    // `legsync shadow`, as an operator reads it.
    let (code, said) = trial.command("shadow", &[]);
    assert_eq!(code, Some(0), "{said}");
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
    trial.stop().await;
}

//! Changing policy safely, over real processes (engine-sim, `legsync run`,
//! the `legsync reload | enforce | replay` commands): every reload reports
//! its blast radius; a set that would refuse far more of the held calls
//! than the guard allows is held back, and the calls stay up through a
//! following outage past the grace time; accepting it takes its exact
//! hash; enforcing the working set refuses exactly its blast radius; a
//! recorded resync replays deterministically, as it was decided.

mod common;

use common::host_trial::HostTrial;
use common::world::WAIT;
use common::{legsync, text};
use hyper::Method;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Calls the engine carries before the host starts; 1 % go to premium
/// numbers (`1900...`), which the starting rules refuse.
const CALLS: u64 = 2_000;
const PREMIUM: u64 = CALLS / 100;
const REFUSE_PREMIUM: &str =
    "[[rule]]\nname = \"no premium\"\naction = \"refuse\"\ncalled_prefix = [\"1900\"]\n";

/// The engine with [`CALLS`] calls, then the host (its config's
/// `[policy]` followed by `extra`), after its first resync; a grace time of
/// 1 s, for the outages past it.
async fn start(extra: &str) -> HostTrial {
    HostTrial::start(Some(CALLS), &[], "grace_secs = 1.0\n", |dir| {
        let plugins = dir.join("plugins.d");
        common::install(&plugins, "20-rules", "rules", Some(REFUSE_PREMIUM));
        extra.to_string()
    })
    .await
}

/// The legs the host holds.
async fn held(trial: &HostTrial) -> u64 {
    trial.get("/status").await["legs"].as_u64().unwrap()
}

fn write_rules(trial: &HostTrial, rules: &str) {
    std::fs::write(trial.dir.path().join("plugins.d/20-rules.rules"), rules).unwrap();
}

/// The engine away past the grace time and back: every context is
/// destroyed, and the next resync decides every call again with the set
/// that is live.
async fn outage_past_grace(trial: &HostTrial, resync: usize) {
    trial
        .cut_off("\"state\":\"purged\"", async |_| {}, resync)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_over_the_guard_is_held_back_until_accepted_by_its_hash() {
    let trial = start("").await;
    let kept = CALLS - PREMIUM;
    assert_eq!(held(&trial).await, kept);

    // Within the guard: a rule for one more destination applies, and says
    // what it would refuse (nothing held goes to 1901).
    write_rules(
        &trial,
        &format!(
            "{REFUSE_PREMIUM}[[rule]]\nname = \"fraud\"\naction = \"refuse\"\ncalled_prefix = [\"1901\"]\n"
        ),
    );
    let (code, said) = trial.command("reload", &[]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!("would refuse 0 of {kept} held legs")),
        "{said}"
    );

    // A typo that refuses everything: held back, loudly, with its hash.
    write_rules(&trial, "default = \"refuse\"\n");
    let (code, said) = trial.command("reload", &[]);
    assert_eq!(code, Some(2), "held back: exit 2\n{said}");
    assert!(said.contains("reload HELD BACK"), "{said}");
    assert!(
        said.contains(&format!("would refuse {kept} of {kept} held legs")),
        "{said}"
    );
    let hash = said
        .lines()
        .find_map(|l| l.strip_prefix("to apply this set anyway: legsync reload --accept "))
        .unwrap_or_else(|| panic!("no hash in: {said}"))
        .trim()
        .to_string();
    let status = trial.get("/status").await;
    assert_eq!(status["last_reload"]["outcome"], "held-back", "{status}");
    assert_eq!(
        status["last_reload"]["blast_radius"]["refused_legs"], kept,
        "{status}"
    );
    let metrics = trial.admin(Method::GET, "/metrics").await;
    assert!(
        metrics.contains(&format!("legsync_reload_blast_radius_legs {kept}")),
        "{metrics}"
    );
    assert!(
        metrics.contains("legsync_reloads_total{outcome=\"held-back\"} 1"),
        "{metrics}"
    );

    // The running set stays: after an outage past the grace time, the
    // resync decides every call again, and keeps them.
    outage_past_grace(&trial, 2).await;
    assert_eq!(held(&trial).await, kept, "{}", trial.host.log());

    // An acceptance names one set: another hash is refused.
    let (code, said) = trial.command("reload", &["--accept", "0123456789abcdef"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "the set on disk is {hash}, not the set 0123456789abcdef"
        )),
        "{said}"
    );
    let (code, said) = trial.command("reload", &["--accept", &hash]);
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("reload applied"), "{said}");

    // Now the accepted set decides: the next full resync refuses all.
    outage_past_grace(&trial, 3).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while held(&trial).await != 0 {
        assert!(tokio::time::Instant::now() < deadline, "calls still held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    trial.stop().await;
}

/// `legsync enforce` applies the working set to the calls held now, on
/// purpose: it shows the blast radius and changes nothing; confirmed by the
/// set's hash, it refuses exactly those calls through the normal path: an
/// END for each answered one (once), the audit naming the plugin, the drop
/// at the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforce_refuses_exactly_the_blast_radius_once_confirmed() {
    // No guard: this set is meant to refuse a whole NAP.
    let trial = start("[policy.guard]\nrefused_share = 1.0\n").await;
    let kept = CALLS - PREMIUM;
    let on_b = trial.get("/legs?nap=SIP_CARRIER_B&limit=10000").await["matched"]
        .as_u64()
        .unwrap();
    assert!(on_b > 100, "{on_b} calls on SIP_CARRIER_B");
    write_rules(
        &trial,
        &format!(
            "{REFUSE_PREMIUM}[[rule]]\nname = \"carrier B off\"\naction = \"refuse\"\nnap = [\"SIP_CARRIER_B\"]\n"
        ),
    );
    let (code, said) = trial.command("reload", &[]);
    assert_eq!(code, Some(0), "{said}");
    assert_eq!(held(&trial).await, kept, "a reload ends no held call");

    // The preview: the radius, the hash, nothing changed.
    let (code, said) = trial.command("enforce", &[]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!(
            "would refuse {on_b} of {kept} held legs ({on_b} answered)"
        )),
        "{said}"
    );
    // Grouped by the rule that refuses, as the plugin named it.
    assert!(
        said.contains("refused by 20-rules on SIP_CARRIER_B (carrier B off)"),
        "{said}"
    );
    let hash = said
        .lines()
        .find_map(|l| {
            l.strip_prefix("nothing changed; to refuse these calls now: legsync enforce --confirm ")
        })
        .unwrap_or_else(|| panic!("no hash in: {said}"))
        .trim()
        .to_string();
    assert_eq!(held(&trial).await, kept);

    // Confirmed with another hash: refused, nothing done.
    let (code, said) = trial.command("enforce", &["--confirm", "0123456789abcdef"]);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(&format!("the working set is {hash}")),
        "{said}"
    );
    assert_eq!(held(&trial).await, kept);

    let links_before = trial.get("/status").await["links"].as_u64().unwrap();
    let dropped_before = trial.event_lines("\"kind\":\"link-dropped\"");
    let (code, said) = trial.command("enforce", &["--confirm", &hash]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!(
            "enforced: {on_b} legs refused, ended and dropped ({on_b} answered"
        )),
        "{said}"
    );
    assert_eq!(held(&trial).await, kept - on_b);
    // The links of the refused legs went with them, each said once.
    let links_after = trial.get("/status").await["links"].as_u64().unwrap();
    assert!(
        links_after < links_before,
        "{links_before} -> {links_after}"
    );
    assert_eq!(
        (trial.event_lines("\"kind\":\"link-dropped\"") - dropped_before) as u64,
        links_before - links_after
    );
    assert_eq!(trial.get("/legs?nap=SIP_CARRIER_B").await["matched"], 0);

    // The engine dropped them.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = trial.sim.control("list").await.unwrap();
        let on_b_at_engine = list
            .lines()
            .filter(|l| l.contains(" SIP_CARRIER_B "))
            .count();
        if on_b_at_engine == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{on_b_at_engine} still at the engine"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Billed once each: one END, refused by policy, per enforced call; the
    // audit names the plugin; the ledger's rules hold.
    let ledger = std::fs::read_to_string(trial.dir.path().join("cdr.jsonl")).unwrap();
    let ends: Vec<&str> = ledger
        .lines()
        .filter(|l| l.contains("\"END\"") || l.contains("\"end\""))
        .filter(|l| l.contains("refused-by-policy"))
        .collect();
    // The first resync's refused premium calls (answered: billed too), and
    // the enforced ones, once each.
    assert_eq!(
        ends.len() as u64,
        PREMIUM + on_b,
        "one END per refused call"
    );
    let legs: std::collections::HashSet<u64> = ends
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["leg"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(legs.len(), ends.len(), "no call ended twice");
    let events = std::fs::read_to_string(trial.events()).unwrap();
    assert_eq!(
        events
            .lines()
            .filter(|l| l.contains("\"kind\":\"call-leg-sync\"")
                && l.contains("\"decision\":\"refuse\"")
                && l.contains("\"plugin\":\"20-rules\""))
            .count() as u64,
        PREMIUM + on_b,
        "the first resync's refusals and the enforced ones, each naming the plugin"
    );
    assert_eq!(
        events.matches("\"kind\":\"enforced\"").count(),
        1,
        "{events}"
    );
    for (rule, count) in [("no premium", PREMIUM), ("carrier B off", on_b)] {
        let audit = events
            .lines()
            .filter(|l| l.contains("\"kind\":\"call-leg-sync\""))
            .filter(|l| l.contains(&format!("\"reason\":\"{rule}\"")))
            .count();
        assert_eq!(audit as u64, count, "the audit names the rule");
    }
    let out = legsync(&[
        "cdr",
        "check",
        trial.dir.path().join("cdr.jsonl").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    trial.stop().await;
}

/// `legsync replay RECORDING --plugin-dir DIR --json [extra]`, without
/// its timing.
fn replay(recording: &Path, plugin_dir: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "replay",
        recording.to_str().unwrap(),
        "--plugin-dir",
        plugin_dir.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = legsync(&args);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let mut json: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    json.as_object_mut().unwrap().remove("micros");
    json
}

/// Every resync recorded (bounded); a replay with the set that decided
/// then gives the same decisions, twice the same; against a candidate set
/// it names exactly what would change; a warm resync offers only what the
/// host did not hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_resyncs_replay_deterministically_as_decided() {
    let trial = start("[recording]\nenabled = true\nmax_files = 2\n").await;
    let recordings = trial.dir.path().join("recordings");
    let files = || {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&recordings)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    };
    // The cold resync's recording is closed once the resync is over.
    let deadline = tokio::time::Instant::now() + WAIT;
    while files().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no recording");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cold = files()[0].clone();
    let live = trial.dir.path().join("plugins.d");
    let first = replay(&cold, &live, &[]);
    assert_eq!(first["complete"], true, "{first}");
    assert_eq!(first["offered_legs"], CALLS, "{first}");
    assert_eq!(first["counts"]["legs_refused"], PREMIUM, "{first}");
    assert_eq!(first["counts"], first["against_counts"], "{first}");
    assert_eq!(
        first["differences"],
        serde_json::json!([]),
        "as decided then"
    );
    assert_eq!(replay(&cold, &live, &[]), first, "deterministic");

    // A candidate set: one more NAP refused.
    let candidate = trial.dir.path().join("candidate.d");
    std::fs::create_dir(&candidate).unwrap();
    common::install(
        &candidate,
        "20-rules",
        "rules",
        Some(&format!(
            "{REFUSE_PREMIUM}[[rule]]\nname = \"carrier B off\"\naction = \"refuse\"\nnap = [\"SIP_CARRIER_B\"]\n"
        )),
    );
    let on_b = trial.get("/legs?nap=SIP_CARRIER_B&limit=10").await["matched"]
        .as_u64()
        .unwrap();
    let against = replay(&cold, &live, &["--against", candidate.to_str().unwrap()]);
    let differences = against["differences"].as_array().unwrap();
    // Legs of carrier B, and the links they are in.
    let legs = differences.iter().filter(|d| d["item"] == "leg").count() as u64;
    assert_eq!(legs, on_b, "{against}");
    assert!(
        differences
            .iter()
            .all(|d| d["before"]["decision"] == "refuse" || d["item"] == "link")
    );

    // Warm resyncs: what the host held is not offered again. Three in all:
    // the oldest recording goes (max_files = 2).
    for resync in [2, 3] {
        let one_more = async |sim: &legsync_lab::sim::process::SimProcess| {
            sim.ok_id("call SIP_CARRIER_A 15145550000 15145559999")
                .await
                .unwrap();
        };
        trial
            .cut_off("\"state\":\"disconnected\"", one_more, resync)
            .await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while files().contains(&cold) {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", files());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(files().len(), 2, "{:?}", files());
    let warm = replay(files().last().unwrap(), &live, &[]);
    assert_eq!(warm["offered_legs"], 1, "{warm}");
    assert_eq!(warm["differences"], serde_json::json!([]), "{warm}");
    trial.stop().await;
}

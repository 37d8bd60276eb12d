//! Reference data for plugins, over real processes and files: the `rules`
//! plugin (a real component) reading datasets the host built from files
//! (`legsync plugin eval`, `legsync run` against engine-sim). Exact answers
//! on keys that are not ASCII and on overlapping prefixes; a dataset a
//! plugin was not granted rejects it, named; a new version swapped in
//! while resyncs decide, with every decision naming the one version it was
//! decided with; a broken file kept out, its line named.

mod common;

use common::host_trial::HostTrial;
use common::{legsync, text};
use std::collections::HashMap;
use std::path::Path;

const RULES: &str =
    "[[rule]]\nname = \"blocked\"\naction = \"refuse\"\ncalled_in = [\"blocked\"]\n";

fn rules_wasm() -> std::path::PathBuf {
    common::built_plugin("rules")
}

/// `legsync plugin eval` of the `rules` plugin with `rules` over `legs`,
/// granted the datasets of `datasets`.
fn eval(rules: &Path, legs: &Path, datasets: Option<&Path>) -> std::process::Output {
    let mut args = vec![
        "plugin".to_string(),
        "eval".into(),
        rules_wasm().display().to_string(),
        "--rules".into(),
        rules.display().to_string(),
        "--legs".into(),
        legs.display().to_string(),
        "--no-cache".into(),
    ];
    if let Some(datasets) = datasets {
        args.extend(["--datasets".into(), datasets.display().to_string()]);
    }
    legsync(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Writes `text` to `path` as an operator's export lands: a temporary
/// file renamed over the old one.
fn replace(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

#[test]
fn the_rules_plugin_answers_exactly_from_sets_and_prefix_tables() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("datasets");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(
        data.join("blocked.set"),
        "# fraud list\n+81 3 1234\nÉcole-1\n19005550100\n",
    )
    .unwrap();
    std::fs::write(
        data.join("rates.prefix"),
        "1,nanp\n1900,premium\n19005,standard\n44,uk\n447,mobile-premium\n日本,premium\n",
    )
    .unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            "{RULES}[[rule]]\nname = \"premium destinations\"\naction = \"refuse\"\ncalled_value = {{ dataset = \"rates\", one_of = [\"premium\", \"mobile-premium\"] }}\n"
        ),
    )
    .unwrap();
    // Called number -> the rule that must refuse it (none: rebuilt).
    let cases: [(&str, Option<&str>); 11] = [
        ("+81 3 1234", Some("blocked")),
        ("École-1", Some("blocked")),
        ("École-12", None),
        ("Ecole-1", None),
        ("19005550100", Some("blocked")),
        ("19005550101", None),
        ("19001234", Some("premium destinations")),
        ("190", None),
        ("447700900123", Some("premium destinations")),
        ("442079460000", None),
        ("日本橋", Some("premium destinations")),
    ];
    let legs: Vec<serde_json::Value> = cases
        .iter()
        .enumerate()
        .map(|(i, (called, _))| {
            serde_json::json!({
                "id": i + 1, "session_id": i + 1, "direction": "inbound", "protocol": "sip",
                "nap": "SIP_A", "calling": "5145550100", "called": called,
                "offered_at_ms": 1, "answered_at_ms": 2
            })
        })
        .collect();
    let legs_file = dir.path().join("legs.json");
    std::fs::write(&legs_file, serde_json::to_string(&legs).unwrap()).unwrap();
    let out = eval(&rules, &legs_file, Some(&data));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), cases.len());
    for (line, (called, refused_by)) in lines.iter().zip(cases) {
        let expected = if refused_by.is_some() {
            "refuse"
        } else {
            "rebuild"
        };
        assert_eq!(line["decision"], expected, "{called}: {line}");
        assert_eq!(line["reason"].as_str(), refused_by, "{called}: {line}");
        let named = line["datasets"].as_str().unwrap();
        assert!(
            named.starts_with("blocked@") && named.contains(",rates@"),
            "{named}"
        );
    }
}

#[test]
fn a_plugin_that_asks_for_a_dataset_it_was_not_granted_is_rejected_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, RULES).unwrap();
    std::fs::write(dir.path().join("legs.json"), "[]").unwrap();
    let out = eval(&rules, &dir.path().join("legs.json"), None);
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(
        said.contains(
            "plugin rules asked for dataset blocked in init, which its config does not grant"
        ),
        "{said}"
    );
}

/// Called numbers of round `round`: blocked by version 1, by version 2,
/// and by neither.
fn numbers(round: usize) -> [Vec<String>; 3] {
    let make = |prefix: &str| {
        (0..20)
            .map(|n| format!("{prefix}{round:02}{n:02}"))
            .collect()
    };
    [make("1800555"), make("1900555"), make("1514555")]
}

/// Version `v`'s block list: every round's numbers of its kind.
fn block_list(blocked_kind: usize) -> String {
    (0..8)
        .flat_map(|round| numbers(round)[blocked_kind].clone())
        .map(|n| n + "\n")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_swaps_in_whole_while_resyncs_decide_and_a_broken_one_stays_out() {
    let trial = HostTrial::start(None, &[], "", |dir| {
        let plugins = dir.join("plugins.d");
        common::install(&plugins, "20-rules", "rules", Some(RULES));
        std::fs::create_dir(plugins.join("datasets")).unwrap();
        std::fs::write(plugins.join("datasets/blocked.set"), block_list(0)).unwrap();
        std::fs::write(plugins.join("datasets/fraud.set"), "1\n").unwrap();
        "[policy.plugins.20-rules]\ndatasets = [\"blocked\"]\n".into()
    })
    .await;
    let data = trial.dir.path().join("plugins.d/datasets/blocked.set");
    let version_of = |text: &str| {
        use sha2::Digest;
        let hash = sha2::Sha256::digest(text.as_bytes());
        hash.iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let (v1, v2) = (version_of(&block_list(0)), version_of(&block_list(1)));
    let mut called: HashMap<u64, String> = HashMap::new();
    let applied = "\"outcome\":\"applied\"";
    let mut applied_before = 0;
    for round in 0..6 {
        let mut added = Vec::new();
        let swap = round == 3;
        if swap {
            applied_before = trial.event_lines(applied);
        }
        trial
            .cut_off(
                "\"state\":\"disconnected\"",
                async |sim| {
                    for number in numbers(round).concat() {
                        let id = sim
                            .ok_id(&format!("call SIP_A 5145550100 {number}"))
                            .await
                            .unwrap();
                        added.push((id, number));
                    }
                    if swap {
                        // The watcher reloads while the resync that
                        // follows decides: either may come first.
                        replace(&data, &block_list(1));
                    }
                },
                round + 2,
            )
            .await;
        called.extend(added);
        if swap {
            trial.wait_events(applied, applied_before + 1).await;
        }
    }

    // Every decision names one version of `blocked` and was decided by it.
    let events = std::fs::read_to_string(trial.events()).unwrap();
    let mut seen = HashMap::new();
    for line in events.lines().filter(|l| l.contains("call-leg-sync")) {
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        let leg = event["leg"].as_u64().unwrap();
        let number = &called[&leg];
        let named = event["datasets"].as_str().unwrap();
        let version = named.strip_prefix("blocked@").unwrap();
        assert!(version == v1 || version == v2, "{named}");
        let blocked = if version == v1 {
            number.starts_with("1800555")
        } else {
            number.starts_with("1900555")
        };
        let expected = if blocked { "refuse" } else { "rebuild" };
        assert_eq!(event["decision"], expected, "{number} under {named}");
        let round: usize = number[7..9].parse().unwrap();
        *seen.entry((round, version.to_string())).or_insert(0) += 1;
    }
    for round in 0..3 {
        assert_eq!(seen.get(&(round, v1.clone())), Some(&60), "{seen:?}");
    }
    for round in 4..6 {
        assert_eq!(seen.get(&(round, v2.clone())), Some(&60), "{seen:?}");
    }
    let reload = events
        .lines()
        .filter(|l| l.contains(applied))
        .nth(applied_before)
        .unwrap();
    let reload: serde_json::Value = serde_json::from_str(reload).unwrap();
    assert_eq!(reload["datasets"][0]["name"], "blocked");
    assert_eq!(reload["datasets"][0]["version"], v2.as_str());
    // The held calls to numbers version 2 blocks: rounds 0-2's (and
    // round 3's, if it was decided first).
    let radius = reload["blast_radius"]["refused_legs"].as_u64().unwrap();
    assert!(radius == 60 || radius == 80, "{reload}");

    // A broken file: the reload is refused with the file and line, and
    // the working version keeps deciding.
    replace(&data, &format!("{}1,2\n", block_list(0)));
    let broken_line = block_list(0).lines().count() + 1;
    let (code, said) = trial.command("reload", &[]);
    assert_ne!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!("blocked.set:{broken_line}: expected 1 field")),
        "{said}"
    );
    // Asking for a dataset the config does not grant: refused, named.
    std::fs::write(
        trial.dir.path().join("plugins.d/20-rules.rules"),
        RULES.replace("[\"blocked\"]", "[\"blocked\", \"fraud\"]"),
    )
    .unwrap();
    replace(&data, &block_list(1));
    let (code, said) = trial.command("reload", &[]);
    assert_ne!(code, Some(0), "{said}");
    assert!(
        said.contains(
            "plugin 20-rules asked for dataset fraud in init, which its config does not grant"
        ),
        "{said}"
    );
    let status = trial.get("/status").await;
    assert_eq!(status["datasets"][0]["version"], v2.as_str(), "{status}");
    let before = trial.event_lines(&format!("blocked@{v2}"));
    trial
        .cut_off(
            "\"state\":\"disconnected\"",
            async |sim| {
                sim.ok_id("call SIP_A 5145550100 19005559999")
                    .await
                    .unwrap();
            },
            8,
        )
        .await;
    assert_eq!(trial.event_lines(&format!("blocked@{v2}")), before + 1);
    trial.stop().await;
}

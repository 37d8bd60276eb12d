//! The shipped alerting rules and dashboard (`dist/legsync-alerts.yml`,
//! `dist/legsync-alerts.test.yml`, `dist/legsync-dashboard.json`): the
//! real `promtool` checks the rules and runs their tests, first events
//! included; every series they use is one the host exports; every alert
//! has its runbook entry in docs/operations.md.
//!
//! `promtool` comes with Debian's `prometheus` package (`.ci/run` installs
//! it): without it the promtool tests say SKIPPED; under `CI=true` they fail.

mod common;

use std::path::{Path, PathBuf};

fn dist(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../dist")
        .join(file)
}

fn promtool() -> Option<PathBuf> {
    common::system_tool(
        &["/usr/bin/promtool", "/usr/local/bin/promtool"],
        "prometheus",
    )
}

#[test]
fn promtool_accepts_the_rules_and_their_tests_pass() {
    let Some(promtool) = promtool() else {
        return;
    };
    let out = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(dist("legsync-alerts.yml"))
        .output()
        .unwrap();
    let said = common::text(&out.stdout) + &common::text(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("SUCCESS: 18 rules found"), "{said}");
    let out = std::process::Command::new(&promtool)
        .args(["test", "rules"])
        .arg(dist("legsync-alerts.test.yml"))
        .output()
        .unwrap();
    let said = common::text(&out.stdout) + &common::text(&out.stderr);
    assert!(out.status.success(), "{said}");
}

/// The tests see a first event because the host shows its counters at 0
/// from the start: the same test against a counter that appears only with
/// its first count fails. (If it passed, the tests would not prove the
/// first event is caught.)
#[test]
fn the_first_event_is_caught_only_because_counters_start_at_zero() {
    let Some(promtool) = promtool() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        dist("legsync-alerts.yml"),
        dir.path().join("legsync-alerts.yml"),
    )
    .unwrap();
    let tests = std::fs::read_to_string(dist("legsync-alerts.test.yml")).unwrap();
    let zeroed = "values: '0x4 1x20'";
    assert!(
        tests.contains(zeroed),
        "the grace expiry series starts at 0"
    );
    let absent = tests.replace(zeroed, "values: '_x4 1x20'");
    let file = dir.path().join("absent.test.yml");
    std::fs::write(&file, absent).unwrap();
    let out = std::process::Command::new(&promtool)
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    let said = common::text(&out.stdout) + &common::text(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("LegsyncGraceExpired"), "{said}");
}

/// The `legsync_*` names in `text` (histogram series reduced to their
/// metric).
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("legsync_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].trim_end_matches("_bucket").to_string();
        rest = &tail[end..];
        // `job="legsync"` and anchors such as `#legsyncdown` are not names.
        if name.len() > "legsync_".len() && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

#[test]
fn rules_and_dashboard_use_only_series_the_host_exports() {
    let declared: Vec<&str> = legsync::metrics::ALL
        .iter()
        .map(|(name, _, _)| *name)
        .collect();
    let rules = std::fs::read_to_string(dist("legsync-alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(dist("legsync-dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let panels = parsed["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(
            targets
                .iter()
                .all(|t| t["expr"].as_str().is_some_and(|e| !e.is_empty())),
            "{}",
            panel["title"]
        );
    }
    for (file, text) in [("rules", &rules), ("dashboard", &dashboard)] {
        let used = metric_names(text);
        assert!(used.len() >= 10, "{file}: {used:?}");
        for name in used {
            assert!(
                declared.contains(&name.as_str()),
                "the {file} use `{name}`, which the host does not export"
            );
        }
    }
}

#[test]
fn every_alert_has_its_runbook_entry() {
    let rules = std::fs::read_to_string(dist("legsync-alerts.yml")).unwrap();
    let runbook = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md"),
    )
    .unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 18);
    for alert in alerts {
        assert!(
            runbook.contains(&format!("\n#### {alert}\n")),
            "docs/operations.md has no runbook entry for {alert}"
        );
        let anchor = format!("runbook: \"docs/operations.md#{}\"", alert.to_lowercase());
        assert!(rules.contains(&anchor), "{alert} points to its entry");
    }
}

//! The plugin author's tools, run as the real `legsync` binary.

mod common;

use common::{built_plugin, legsync, text};

#[test]
fn plugin_check_reports_the_contract_and_imports() {
    let plugin = built_plugin("rules");
    let out = legsync(&["plugin", "check", plugin.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("contract: legsync:policy@0.4.0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("legsync:policy/host@0.4.0"),
        "the host import is listed: {stdout}"
    );
    assert!(
        stdout.contains("wasi:"),
        "WASI imports are listed: {stdout}"
    );
    assert!(
        stdout.contains("MB after a full batch, of a 64 MB cap"),
        "memory against the cap: {stdout}"
    );
}

#[test]
fn plugin_check_fails_a_plugin_that_misreads_its_batch() {
    // Raw bindings that take the spans for character offsets: right on an
    // ASCII batch, wrong after non-ASCII text.
    let slicer = built_plugin("fixture-char-slicer");
    let out = legsync(&["plugin", "check", slicer.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL decisions depend on the batch")
            && stdout.contains("after legs with non-ASCII text in the same batch")
            && stdout.contains("byte offsets"),
        "{stdout}"
    );
    // The shipped examples read their batches right, stateful or not.
    let dir = tempfile::tempdir().unwrap();
    for name in ["rules", "nap-cap"] {
        let out = legsync(&["plugin", "export", name, dir.path().to_str().unwrap()]);
        assert!(out.status.success());
    }
    std::fs::write(
        dir.path().join("rules.rules"),
        "[[rule]]\naction = \"refuse\"\ncalled_prefix = [\"1900\"]\n",
    )
    .unwrap();
    for name in ["rules", "nap-cap"] {
        let path = dir.path().join(format!("{name}.wasm"));
        let out = legsync(&["plugin", "check", path.to_str().unwrap()]);
        let stdout = text(&out.stdout);
        assert!(out.status.success(), "{name}: {stdout}");
        assert!(!stdout.contains("depend on the batch"), "{stdout}");
    }
}

/// `plugin test`: the shipped example's tests pass; a wrong expectation
/// is named with the leg's fields and fails; a page of `legsync legs
/// --json` serves as legs, as it does for `plugin eval`.
#[test]
fn plugin_test_compares_decisions_with_expectations() {
    let rules = built_plugin("rules");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let shipped = root.join("plugins/rules/tests.json");
    let out = legsync(&[
        "plugin",
        "test",
        rules.to_str().unwrap(),
        shipped.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("7 decisions as expected"));

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.toml"),
        "[[rule]]\naction = \"refuse\"\ncalled_prefix = [\"1900\"]\n",
    )
    .unwrap();
    // A page of `legsync legs --json`, with the host's own fields.
    std::fs::write(
        dir.path().join("page.json"),
        r#"{"legs": [
            {"id": 1, "nap": "SIP_A", "calling": "1", "called": "19005550001", "state": "answered", "adopted_by": "20-rules"},
            {"id": 2, "nap": "SIP_A", "calling": "1", "called": "5145550002", "state": "answered", "adopted_by": "20-rules"}
        ], "matched": 2, "held": 2, "next_after": null}"#,
    )
    .unwrap();
    let tests = dir.path().join("wrong.tests.json");
    std::fs::write(
        &tests,
        r#"{"rules": "rules.toml", "legs": "page.json", "expect": {"1": "rebuild", "2": "rebuild"},
            "links": [{"id": 7, "leg_a": 1, "leg_b": 2}], "expect_links": {"7": "rebuild"}}"#,
    )
    .unwrap();
    let out = legsync(&[
        "plugin",
        "test",
        rules.to_str().unwrap(),
        tests.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains(
            "leg 1 (nap SIP_A, calling 1, called 19005550001): expected rebuild, got refuse"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("link 7: expected rebuild, but it was not offered"),
        "{stdout}"
    );
    assert!(stdout.contains("2 of 3 decisions differ"), "{stdout}");
    let out = legsync(&[
        "plugin",
        "eval",
        rules.to_str().unwrap(),
        "--rules",
        dir.path().join("rules.toml").to_str().unwrap(),
        "--legs",
        dir.path().join("page.json").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(r#""leg":1,"decision":"refuse""#));
}

#[test]
fn plugin_check_fails_precisely() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"not wasm at all").unwrap();
    let out = legsync(&["plugin", "check", garbage.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is not a valid WebAssembly component"),
        "{}",
        text(&out.stderr)
    );

    let future = built_plugin("fixture-future-contract");
    let out = legsync(&["plugin", "check", future.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("legsync:policy@0.5.0") && stderr.contains("legsync:policy@0.4.0"),
        "{stderr}"
    );

    let rules = dir.path().join("bad.rules");
    std::fs::write(&rules, "[[rule]]\naction = \"refuse\"\nnap = 3\n").unwrap();
    let plugin = built_plugin("rules");
    let out = legsync(&[
        "plugin",
        "check",
        plugin.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("rejected its rules: invalid TOML rules"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn plugin_eval_prints_one_json_line_per_leg_and_link() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("no-premium.rules");
    std::fs::write(
        &rules,
        "[[rule]]\naction = \"refuse\"\ncalled_prefix = [\"1900\"]\n",
    )
    .unwrap();
    let legs = dir.path().join("legs.json");
    std::fs::write(
        &legs,
        r#"[{"id": 1, "nap": "SIP_A", "called": "19005550100", "answered_at_ms": 1795800000000},
            {"id": 2, "nap": "ISDN_1", "called": "15145550199", "protocol": "isdn"},
            {"id": 3, "nap": "ISDN_1", "called": "15145550123"},
            {"id": 4, "nap": "ISDN_1", "called": "15145550124"}]"#,
    )
    .unwrap();
    let links = dir.path().join("links.json");
    std::fs::write(
        &links,
        r#"[{"id": 10, "leg_a": 1, "leg_b": 2}, {"id": 11, "leg_a": 3, "leg_b": 4},
            {"id": 12, "leg_a": 98, "leg_b": 99}, {"id": 13, "leg_a": 2, "leg_b": 2}]"#,
    )
    .unwrap();
    let plugin = built_plugin("rules");
    let out = legsync(&[
        "plugin",
        "eval",
        plugin.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
        "--legs",
        legs.to_str().unwrap(),
        "--links",
        links.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8, "{lines:?}");
    // The time per batch, against the deadline, on stderr.
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("on-call-leg-sync: 4 legs in 1 batch(es) of up to 1024; slowest batch")
            && stderr.contains("against a deadline of 100 ms"),
        "{stderr}"
    );
    let leg = |i: usize| (lines[i]["leg"].as_u64(), lines[i]["decision"].as_str());
    assert_eq!(leg(0), (Some(1), Some("refuse")));
    assert_eq!(leg(1), (Some(2), Some("rebuild")));
    assert_eq!(leg(2), (Some(3), Some("rebuild")));
    assert_eq!(leg(3), (Some(4), Some("rebuild")));
    // As the host does: the link of a refused leg is dropped undecided,
    // links to legs not given and self-links are ignored, the rest decided.
    assert_eq!(
        (lines[4]["link"].as_u64(), lines[4]["decision"].as_str()),
        (Some(10), Some("refuse"))
    );
    assert!(lines[4]["dropped"].is_string(), "{}", lines[4]);
    assert_eq!(lines[5]["link"].as_u64(), Some(12));
    assert!(lines[5]["ignored"].is_string(), "{}", lines[5]);
    assert_eq!(lines[6]["link"].as_u64(), Some(13));
    assert_eq!(lines[6]["ignored"], "a link from a leg to itself");
    assert_eq!(
        (lines[7]["link"].as_u64(), lines[7]["decision"].as_str()),
        (Some(11), Some("rebuild"))
    );
    assert_eq!(lines[0]["plugin"], "rules");

    std::fs::write(&legs, "{\"not\": \"an array\"}").unwrap();
    let out = legsync(&[
        "plugin",
        "eval",
        plugin.to_str().unwrap(),
        "--legs",
        legs.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("legs.json: expected a JSON array of legs"),
        "{}",
        text(&out.stderr)
    );
}

fn bench_json(args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["bench", "--json"];
    all.extend_from_slice(args);
    let out = legsync(&all);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

#[test]
fn bench_cold_runs_both_policies_side_by_side() {
    let runs = bench_json(&["--legs", "2000", "--mode", "cold", "--policy", "both"]);
    let policies: Vec<&str> = runs.iter().map(|r| r["policy"].as_str().unwrap()).collect();
    assert_eq!(policies, ["native", "wasm (rules.wasm)"]);
    for run in &runs {
        assert_eq!(run["mode"], "cold");
        assert_eq!(run["legs"], 2000);
        // The bench rules refuse the 1 % premium-rate calls (both legs).
        assert_eq!(
            (run["rebuilt"].as_u64(), run["refused"].as_u64()),
            (Some(1980), Some(20))
        );
        assert_eq!(run["links_rebuilt"], 990);
        for key in ["wall_seconds", "legs_per_second"] {
            assert!(run[key].as_f64().unwrap() > 0.0, "{key}: {run}");
        }
        assert!(run["peak_rss_bytes"].as_u64().unwrap() > 0);
        assert!(run["phases_seconds"]["decisions"].as_f64().is_some());
    }
}

#[test]
fn bench_warm_and_transfer_report_what_they_measured() {
    let warm = bench_json(&["--legs", "2000", "--mode", "warm", "--policy", "native"]);
    let [warm] = &warm[..] else {
        panic!("one report: {warm:?}")
    };
    // The host held the 1,980 legs its first resync kept; 1 % of the calls
    // were released and 1 % answered while it was away.
    assert_eq!(warm["absent"], 20);
    assert_eq!(warm["known"].as_u64().unwrap() + 20, 1980);
    let unknown = warm["rebuilt"].as_u64().unwrap() + warm["refused"].as_u64().unwrap();
    assert_eq!(unknown, 20);

    let transfer = bench_json(&["--legs", "2000", "--mode", "transfer"]);
    assert_eq!(transfer.len(), 1);
    assert_eq!(transfer[0]["mode"], "transfer");
    assert_eq!(transfer[0]["legs"], 2000);
}

/// The README's main command: every scene, every check, against real
/// processes (the last scene kills the active host of a pair).
#[test]
fn the_demo_passes_every_check() {
    let out = legsync(&["demo"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("All checks passed."), "{stdout}");
    assert!(!stdout.contains('✗'), "{stdout}");
    assert!(
        stdout.contains("alt took over: `controller` says alt epoch"),
        "{stdout}"
    );
    // Debug names of the model's enums would show as CamelCase words; the
    // documented words are kebab-case.
    for debug in [
        "Some(",
        "None",
        "(AbsentAfterResync)",
        "(GraceExpired)",
        "-> Rebuild",
        "-> Refuse",
        "link               Connected",
        "link               Purged",
    ] {
        assert!(
            !stdout.contains(debug),
            "Debug output in the demo ({debug}): {stdout}"
        );
    }
    for word in [
        "(absent-after-resync)",
        "(grace-expired)",
        "-> rebuild by",
        "link               purged",
    ] {
        assert!(
            stdout.contains(word),
            "the demo speaks the documented words ({word}): {stdout}"
        );
    }
}

#[test]
fn bench_takeover_times_the_standby_taking_over_every_call() {
    let runs = bench_json(&["--legs", "2000", "--mode", "takeover", "--loss", "kill"]);
    let [run] = &runs[..] else {
        panic!("one report: {runs:?}")
    };
    assert_eq!(run["mode"], "takeover-kill");
    // The active refused the 1 % premium calls at its own resync; the
    // standby re-adopts every call left, and every link.
    assert_eq!(
        (run["known"].as_u64(), run["rebuilt"].as_u64()),
        (Some(0), Some(1980))
    );
    assert_eq!(run["links_rebuilt"], 990);
    assert!(run["wall_seconds"].as_f64().unwrap() > 0.0, "{run}");
    assert!(
        run["peak_rss_bytes"].as_u64().unwrap() > 0,
        "the standby's RSS"
    );
}

#[test]
fn bench_repeat_alternates_policies_and_prints_medians() {
    let out = legsync(&[
        "bench", "--legs", "2000", "--policy", "both", "--repeat", "2",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("cold native, 2 runs: wall median")
            && stdout.contains("cold wasm (rules.wasm), 2 runs: wall median"),
        "{stdout}"
    );
    assert!(stdout.contains("WASM / native: "), "{stdout}");
    assert!(stdout.contains("per round: median "), "{stdout}");
    // The rounds alternate: native, wasm, native, wasm.
    let stderr = text(&out.stderr);
    let rounds: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("round "))
        .map(|l| l.rsplit(' ').next().unwrap())
        .collect();
    assert_eq!(rounds, ["native", "wasm", "native", "wasm"]);
}

/// A ledger written by the host's own index: the grace trap (END, RESUME,
/// END superseding) and a call still up.
fn sample_ledger(dir: &std::path::Path) -> std::path::PathBuf {
    use legsync::cdr::index::LedgerIndex;
    use legsync::cdr::record::StartReason;
    use legsync::model::TerminationReason;
    let mut index = LedgerIndex::default();
    let call = common::leg(7, "SIP_CARRIER_A", "15145559007");
    let up = common::leg(9, "ISDN_SPAN_1", "15145559009");
    let answer = call.answered_at_ms.unwrap();
    let mut records = Vec::new();
    records.extend(index.open(&call, StartReason::Answered, answer));
    records.extend(index.open(&up, StartReason::Answered, answer));
    records.extend(index.close(
        &call,
        TerminationReason::GraceExpired,
        answer + 10_000,
        answer + 10_000,
    ));
    records.extend(index.open(&call, StartReason::Found, answer + 20_000));
    records.extend(index.close(
        &call,
        TerminationReason::Released,
        answer + 61_000,
        answer + 61_000,
    ));
    let text: String = records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    let path = dir.join("cdr.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn cdr_bill_prints_each_call_once_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = sample_ledger(dir.path());
    let ledger = ledger.to_str().unwrap();
    let out = legsync(&["cdr", "bill", "--json", ledger]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "one row per call: {rows:?}");
    let billed = rows.iter().find(|r| r["leg"] == 7).unwrap();
    assert_eq!(billed["duration_ms"], 61_000, "from the original answer");
    assert_eq!(billed["state"], "closed");
    assert_eq!(billed["nap"], "SIP_CARRIER_A");
    let open = rows.iter().find(|r| r["leg"] == 9).unwrap();
    assert_eq!(
        (open["state"].as_str(), open["end_time_ms"].is_null()),
        (Some("open"), true)
    );

    let csv = text(&legsync(&["cdr", "bill", "--csv", ledger]).stdout);
    assert!(csv.starts_with("leg,session,nap,calling,called,answer_ms,end_ms,duration_s,state\n"));
    assert!(csv.contains(",61.000,closed\n"), "{csv}");
    let table = text(&legsync(&["cdr", "bill", ledger]).stdout);
    assert_eq!(table.lines().count(), 3, "{table}");
}

#[test]
fn cdr_check_passes_a_good_ledger_and_names_each_violation() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = sample_ledger(dir.path());
    let out = legsync(&["cdr", "check", ledger.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok: 5 records"));

    // Double-bill: the superseding END loses its `supersedes`.
    let doctored = std::fs::read_to_string(&ledger)
        .unwrap()
        .replace(",\"supersedes\":3", "");
    std::fs::write(&ledger, doctored + "{\"record\":9").unwrap();
    let out = legsync(&["cdr", "check", ledger.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("2 billable ENDs"), "{stderr}");
    assert!(stderr.contains("line 6: torn last line"), "{stderr}");
    assert!(stderr.contains("2 violation(s)"), "{stderr}");
}

/// `cdr bill` and `cdr check` refuse what is not a ledger piece (a sidecar,
/// any other file) and a bill with a piece left out, naming each, with a
/// non-zero exit; `--partial` bills anyway with the gap on stderr.
#[test]
fn the_cdr_tools_refuse_sidecars_other_files_and_missing_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = sample_ledger(dir.path());
    let sidecar = dir.path().join("cdr.jsonl.alive");
    std::fs::write(&sidecar, "1700000000000 5\n").unwrap();
    let other = dir.path().join("hostname");
    std::fs::write(&other, "gw-host-1\n").unwrap();
    for tool in ["bill", "check"] {
        for (file, expected) in [
            (&sidecar, "is the ledger's `.alive` file"),
            (&other, "is not a ledger: line 1 is not a CDR record"),
        ] {
            let out = legsync(&[
                "cdr",
                tool,
                ledger.to_str().unwrap(),
                file.to_str().unwrap(),
            ]);
            assert_eq!(out.status.code(), Some(1), "cdr {tool} {}", file.display());
            assert!(
                text(&out.stderr).contains(expected),
                "{}",
                text(&out.stderr)
            );
        }
    }
    // The first two records moved to a piece that is left out.
    let whole = std::fs::read_to_string(&ledger).unwrap();
    let rest: String = whole.split_inclusive('\n').skip(2).collect();
    std::fs::write(&ledger, rest).unwrap();
    let out = legsync(&["cdr", "bill", ledger.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("records 1 to 2 of host `` are missing"),
        "{stderr}"
    );
    let out = legsync(&["cdr", "bill", "--partial", ledger.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("records 1 to 2"));
    let out = legsync(&["cdr", "check", ledger.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert!(
        stderr
            .lines()
            .next()
            .unwrap()
            .contains("violation(s) in 3 records of 1 host(s) in 1 file(s)"),
        "the summary comes first: {stderr}"
    );
}

/// The admin commands read the host's config for its `admin` address, and
/// say plainly when the endpoint is off.
#[test]
fn admin_commands_take_the_address_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("legsync.toml");
    std::fs::write(&config, "engine = \"127.0.0.1:7000\"\nadmin = \"off\"\n").unwrap();
    let out = legsync(&["reload", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("the admin endpoint is off in") && stderr.contains("SIGHUP"),
        "{stderr}"
    );
    // A port nobody listens on: the error names the config's address.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(
        &config,
        format!(
            "engine = \"127.0.0.1:7000\"\nadmin = \"0.0.0.0:{}\"\n",
            free.port()
        ),
    )
    .unwrap();
    let out = legsync(&["status", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("127.0.0.1:{}", free.port())),
        "{stderr}"
    );
}

/// `--version` names the build: release, commit and its date, the plugin
/// contract and the engine protocol.
#[test]
fn version_names_the_build_and_the_contracts() {
    let out = legsync(&["--version"]);
    let said = text(&out.stdout);
    assert!(out.status.success());
    let contract = legsync::policy::contract::CONTRACT_VERSION;
    assert!(
        said.starts_with(&format!("legsync {} (commit ", env!("CARGO_PKG_VERSION")))
            && said.contains(&format!("plugin contract legsync:policy@{contract}"))
            && said.contains(&format!(
                "engine protocol {}",
                legsync::protocol::PROTOCOL_VERSION
            )),
        "{said}"
    );
    let commit = said
        .split("commit ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{said}"
    );
}

#[test]
fn bench_live_times_every_generated_event_to_its_durable_record() {
    let runs = bench_json(&[
        "--legs",
        "2000",
        "--mode",
        "live",
        "--policy",
        "wasm",
        "--rates",
        "500,1000",
        "--seconds",
        "2",
        "--burst",
        "300",
    ]);
    let [live] = &runs[..] else {
        panic!("one report: {runs:?}")
    };
    assert_eq!(live["mode"], "live");
    assert_eq!(live["held"], 1980, "the bench rules refused 1 %");
    let phases = live["phases"].as_array().unwrap();
    let shape: Vec<_> = phases
        .iter()
        .map(|p| {
            (
                p["phase"].as_str().unwrap(),
                p["offered_per_second"].as_u64(),
                p["answers"].as_u64().unwrap(),
                p["releases"].as_u64().unwrap(),
            )
        })
        .collect();
    // Every event of each phase was found in the ledger (a START per
    // answer, an END per release) and timed, or the bench fails.
    assert_eq!(
        shape,
        [
            ("steady", Some(500), 500, 500),
            ("steady", Some(1000), 1000, 1000),
            ("burst", None, 0, 300),
        ]
    );
    for phase in phases {
        let latency = &phase["latency_ms"];
        let (p50, p99, max) = (
            latency["p50"].as_f64().unwrap(),
            latency["p99"].as_f64().unwrap(),
            latency["max"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{phase}");
        assert!(phase["durable_per_second"].as_f64().unwrap() > 0.0);
    }
    // Two seconds of traffic with a heartbeat a second: the engine saw at
    // least one gap between two of the host's heartbeats.
    for key in ["heartbeat_longest_gap_ms", "host_heartbeat_longest_gap_ms"] {
        assert!(phases[0][key].as_u64().unwrap() > 0, "{key}");
    }
}

#[test]
fn check_loads_what_run_would_and_names_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins.d");
    std::fs::create_dir(&plugins).unwrap();
    common::install(&plugins, "10-accept-all", "accept-all", None);
    common::install(
        &plugins,
        "20-rules",
        "rules",
        Some("[[rule]]\nname = \"no premium\"\naction = \"refuse\"\ncalled_prefix = [\"1900\"]\n"),
    );
    let config = dir.path().join("legsync.toml");
    std::fs::write(
        &config,
        format!("[policy]\nplugin_dir = \"{}\"\n", plugins.display()),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    let out = legsync(&["check", "--config", config_arg]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("ok   plugin 20-rules@"), "{stdout}");
    assert!(stdout.contains("(rules@"), "the rules' hash: {stdout}");
    assert!(stdout.contains("everything loads"), "{stdout}");

    // Three problems at once: a config typo, broken rules, a file that is
    // not a component. Each is named; the exit status says it all failed.
    std::fs::write(
        &config,
        format!(
            "grace = 3\n[policy]\nplugin_dir = \"{}\"\n",
            plugins.display()
        ),
    )
    .unwrap();
    std::fs::write(plugins.join("20-rules.rules"), "[[rule]\n").unwrap();
    std::fs::write(plugins.join("30-broken.wasm"), b"not wasm").unwrap();
    let out = legsync(&[
        "check",
        "--config",
        config_arg,
        "--plugin-dir",
        plugins.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for expected in [
        "unknown field `grace`",
        "FAIL plugin 20-rules",
        "FAIL plugin 30-broken",
        "ok   plugin 10-accept-all@",
        "3 problem(s)",
    ] {
        assert!(
            stdout.contains(expected),
            "`{expected}` missing in:\n{stdout}"
        );
    }
}

#[test]
fn init_writes_a_setup_that_checks_and_export_writes_a_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let setup = dir.path().join("setup");
    let out = legsync(&[
        "init",
        setup.to_str().unwrap(),
        "--engine",
        "gw-1.example:7000",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config = setup.join("legsync.toml");
    let out = legsync(&["check", "--config", config.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("ok   plugin 20-rules@"), "{stdout}");
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        written.contains("allow_plain = true") && written.contains("Configure [tls]"),
        "a remote engine without TLS is allowed in so many words: {written}"
    );
    // Never over what is there.
    let again = legsync(&["init", setup.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("not overwriting"),
        "{}",
        text(&again.stderr)
    );

    let out = legsync(&[
        "plugin",
        "export",
        "nap-cap",
        dir.path().to_str().unwrap(),
        "--as",
        "30-cap",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = legsync(&[
        "plugin",
        "check",
        dir.path().join("30-cap.wasm").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let out = legsync(&["plugin", "export", "nope", dir.path().to_str().unwrap()]);
    assert!(text(&out.stderr).contains("there are: accept-all, rules, nap-cap"));
}

/// The sample config under dist/ is valid as shipped (its paths point at
/// the system folders the unit creates; only the plugins are swapped in).
#[test]
fn the_dist_config_loads() {
    let dir = tempfile::tempdir().unwrap();
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/legsync.toml"))
            .unwrap();
    let plugins = dir.path().join("plugins.d");
    let out = legsync(&["init", dir.path().join("starter").to_str().unwrap()]);
    assert!(out.status.success());
    std::fs::rename(dir.path().join("starter/plugins.d"), &plugins).unwrap();
    let tls = dir.path().join("tls");
    let out = legsync(&["tls", "init", tls.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config = dir.path().join("legsync.toml");
    std::fs::write(
        &config,
        shipped
            .replace("/etc/legsync/tls", tls.to_str().unwrap())
            // Where systemd hands the unit its key (LoadCredential).
            .replace("/run/credentials/legsync.service", tls.to_str().unwrap())
            .replace("/etc/legsync/plugins.d", plugins.to_str().unwrap())
            .replace(
                "/var/cache/legsync",
                dir.path().join("cache").to_str().unwrap(),
            )
            // The directories the unit creates (StateDirectory, LogsDirectory)
            // before its ExecStartPre check runs.
            .replace(
                "/var/lib/legsync",
                dir.path().join("state").to_str().unwrap(),
            )
            .replace(
                "/var/log/legsync",
                dir.path().join("logs").to_str().unwrap(),
            )
            // Not the default port: a host running on this machine holds it.
            .replace("127.0.0.1:9464", "127.0.0.1:0")
            .replace("0.0.0.0:9465", "127.0.0.1:0"),
    )
    .unwrap();
    let check = || {
        let out = legsync(&["check", "--config", config.to_str().unwrap()]);
        (out.status.success(), text(&out.stdout))
    };
    // Run would fail without the state directory: so does check.
    let (ok, said) = check();
    assert!(
        !ok && said.contains("cannot write in the ledger's directory"),
        "{said}"
    );
    std::fs::create_dir(dir.path().join("state")).unwrap();
    std::fs::create_dir(dir.path().join("logs")).unwrap();
    let (ok, said) = check();
    assert!(ok, "{said}");
    assert!(
        said.contains("ok   ledger") && said.contains("ok   tls"),
        "{said}"
    );
    // A key run could not use: check says so.
    let key = tls.join("host.key");
    let good_key = std::fs::read(&key).unwrap();
    std::fs::write(&key, "not a key\n").unwrap();
    let (ok, said) = check();
    assert!(!ok && said.contains("cannot set up [tls]"), "{said}");
    std::fs::write(&key, good_key).unwrap();
    // An admin address another program holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let with_admin = std::fs::read_to_string(&config)
        .unwrap()
        .replace("127.0.0.1:0", &taken.local_addr().unwrap().to_string());
    std::fs::write(&config, with_admin).unwrap();
    let (ok, said) = check();
    assert!(!ok && said.contains("cannot be bound"), "{said}");
    drop(taken);
    // Without [tls], a remote engine needs an explicit `allow_plain`.
    let plain: String = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .filter(|l| {
            !l.starts_with("ca =")
                && !l.starts_with("cert =")
                && !l.starts_with("key =")
                && *l != "[tls]"
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&config, &plain).unwrap();
    let out = legsync(&["check", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(
        said.contains("is not on this machine and the link has no [tls]"),
        "{said}"
    );
    std::fs::write(
        &config,
        plain.replace("[link]\n", "[link]\nallow_plain = true\n"),
    )
    .unwrap();
    let out = legsync(&["check", "--config", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../dist/legsync.service"
    ))
    .unwrap();
    for needed in [
        "StateDirectory=legsync",
        "LogsDirectory=legsync",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ExecReload=/usr/bin/legsync reload --config /etc/legsync/legsync.toml",
    ] {
        assert!(unit.contains(needed), "{needed}");
    }
}

/// With `--repeat`, rounds take the sizes in turn and each row is a median;
/// the last column compares time per leg with the first size's.
#[test]
fn bench_sweep_tabulates_and_plots_cost_per_leg() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("sweep.svg");
    let out = legsync(&[
        "bench",
        "--sweep",
        "2000,6000",
        "--repeat",
        "2",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    let rounds: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("sweep: round "))
        .collect();
    assert_eq!(
        rounds,
        [
            "1/2, 2000 legs, native then wasm",
            "1/2, 6000 legs, native then wasm",
            "2/2, 2000 legs, native then wasm",
            "2/2, 6000 legs, native then wasm"
        ],
        "{stderr}"
    );
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("medians of 2 rounds"), "{stdout}");
    let rows: Vec<&str> = lines.skip(1).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(rows[0].trim_start().starts_with("2000 ") && rows[1].trim_start().starts_with("6000 "));
    assert!(rows[0].ends_with(" 1.00x"), "{stdout}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("native") && svg.contains("wasm"));
    assert!(svg.contains("time per leg") && svg.contains("peak RSS per leg"));
}

/// A rules file too large for the plugin's memory is named as such (it used
/// to fail with a memory-cap trap's backtrace).
#[test]
fn a_rules_file_too_large_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins.d");
    std::fs::create_dir(&plugins).unwrap();
    common::install(&plugins, "20-rules", "rules", None);
    let big = format!("# {}\n", "x".repeat(17 << 20));
    std::fs::write(plugins.join("20-rules.rules"), big).unwrap();
    let out = legsync(&["check", "--plugin-dir", plugins.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("a rules file may hold at most 16777216"),
        "{stdout}"
    );
    assert!(
        stdout.lines().all(|l| l.len() < 2_000),
        "one short line each"
    );
}

/// `plugin check` calls every export once with sample data: a plugin that
/// loads but traps when called is failed here, not live.
#[test]
fn plugin_check_exercises_every_export() {
    let out = legsync(&["plugin", "check", built_plugin("rules").to_str().unwrap()]);
    assert!(out.status.success());
    assert!(
        text(&out.stdout).contains(
            "exercised: on-call-leg-sync, on-link-sync, on-call-leg-terminated, on-mixer-sync, on-mixer-terminated: ok"
        )
    );
    for (fixture, export) in [
        ("fixture-notify-trap", "on-call-leg-terminated"),
        ("fixture-panic", "on-call-leg-sync"),
    ] {
        let out = legsync(&["plugin", "check", built_plugin(fixture).to_str().unwrap()]);
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{fixture}: {stdout}");
        assert!(
            stdout.contains(&format!("FAIL {export}")),
            "{fixture}: {stdout}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let trap = dir.path().join("trap.rules");
    std::fs::write(&trap, "trap").unwrap();
    let plugin = built_plugin("fixture-mixer-counter");
    let out = legsync(&[
        "plugin",
        "check",
        plugin.to_str().unwrap(),
        "--rules",
        trap.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL on-mixer-sync: trap"), "{stdout}");
}

#[test]
fn plugin_check_lists_what_each_import_gets() {
    let dir = tempfile::tempdir().unwrap();
    common::install(dir.path(), "10-extra", "fixture-extra-import", None);
    let out = legsync(&[
        "plugin",
        "check",
        dir.path().join("10-extra.wasm").to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no import {name} in:\n{stdout}"))
            .to_string()
    };
    assert!(line("fixture:extra/lookup").ends_with("not granted by the host: a call to it traps"));
    assert!(line("legsync:policy/types@0.4.0").ends_with("granted (the contract)"));
    assert!(line("wasi:io/streams@0.2.6").ends_with("granted"));
}

#[test]
fn plugin_check_keeps_compiled_plugins_in_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let plugin = built_plugin("rules");
    let check = || {
        let out = legsync(&[
            "plugin",
            "check",
            plugin.to_str().unwrap(),
            "--cache-dir",
            cache.path().to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    assert!(check().contains("(compiled, and kept in the cache)"));
    assert!(check().contains("(compiled code from the cache)"));
}

/// A plugin directory with `10-slow`: a plugin that takes a millisecond
/// to decide a leg.
fn slow_plugin_dir() -> tempfile::TempDir {
    common::plugin_dir(&[("10-slow", "fixture-slow-notify", Some("slow_decisions"))])
}

#[test]
fn plugin_check_measures_a_batch_and_warns_about_a_slow_plugin() {
    let dir = slow_plugin_dir();
    common::install(dir.path(), "20-rules", "rules", None);
    common::install(
        dir.path(),
        "30-slow-calls",
        "fixture-slow-notify",
        Some("slow_calls"),
    );
    let check = |stem: &str, rules: Option<&str>| {
        let path = dir.path().join(format!("{stem}.wasm"));
        let mut args = vec!["plugin", "check", path.to_str().unwrap()];
        let rules_path = dir.path().join(format!("{stem}.rules"));
        if rules.is_some() {
            args.extend(["--rules", rules_path.to_str().unwrap()]);
        }
        let out = legsync(&args);
        (out.status.code(), text(&out.stdout))
    };
    let (code, fast) = check("20-rules", None);
    assert_eq!(code, Some(0), "{fast}");
    assert!(
        fast.contains("measured: on-call-leg-sync: 1024 legs"),
        "{fast}"
    );
    assert!(
        !fast.contains("WARNING") && !fast.contains("FAIL"),
        "{fast}"
    );
    assert!(fast.contains("a resync of 1,000,000 legs: ~"), "{fast}");
    // A millisecond per leg: a full batch overruns the 100 ms deadline and
    // a million legs would take far past the 30 s decision budget: fails.
    let (code, slow) = check("10-slow", None);
    assert_eq!(code, Some(1), "{slow}");
    assert!(
        slow.contains("WARNING: a full batch would take over half the deadline"),
        "{slow}"
    );
    assert!(
        slow.contains("FAIL a resync of 1,000,000 legs would spend"),
        "{slow}"
    );
    // 60 ms a call whatever its size: measured in a few calls (not one per
    // leg), and ~977 calls of a million legs fail a 30 s budget but pass a
    // 100 s one.
    let (code, per_call) = check("30-slow-calls", Some("slow_calls"));
    assert_eq!(code, Some(1), "{per_call}");
    assert!(
        per_call.contains("FAIL a resync of 1,000,000 legs"),
        "{per_call}"
    );
    let calls: u64 = per_call
        .split(" plugin calls")
        .next()
        .and_then(|before| before.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no call count in {per_call}"));
    assert!(calls <= 5, "{calls} calls for one batch: {per_call}");
    let path = dir.path().join("30-slow-calls.wasm");
    let rules = dir.path().join("30-slow-calls.rules");
    let out = legsync(&[
        "plugin",
        "check",
        path.to_str().unwrap(),
        "--rules",
        rules.to_str().unwrap(),
        "--decision-budget-ms",
        "100000",
    ]);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// A few legs time mostly the first call's warm-up: `eval` reports them but
/// does not scale them up to a batch or a million legs, nor warn on them.
#[test]
fn plugin_eval_does_not_extrapolate_from_a_few_legs() {
    let dir = slow_plugin_dir();
    let legs = dir.path().join("legs.json");
    std::fs::write(&legs, r#"[{"id": 1}, {"id": 2}, {"id": 3}]"#).unwrap();
    let out = legsync(&[
        "plugin",
        "eval",
        dir.path().join("10-slow.wasm").to_str().unwrap(),
        "--legs",
        legs.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("3 legs in 1 batch(es)"), "{stderr}");
    assert!(stderr.contains("too few legs to extrapolate"), "{stderr}");
    assert!(!stderr.contains("WARNING"), "{stderr}");
}

#[test]
fn bench_loads_a_plugin_that_makes_socket_calls_in_init() {
    // Loaded on the runtime's threads, its blocking WASI call panicked the
    // bench ("Cannot start a runtime from within a runtime").
    let plugin = built_plugin("fixture-udp-init");
    let runs = bench_json(&[
        "--legs",
        "200",
        "--mode",
        "cold",
        "--policy",
        "wasm",
        "--plugin",
        plugin.to_str().unwrap(),
    ]);
    assert_eq!(runs[0]["rebuilt"], 200, "{runs:?}");
}

#[test]
fn bench_runs_the_engine_link_over_tls() {
    let runs = bench_json(&[
        "--legs", "2000", "--mode", "cold", "--policy", "native", "--tls",
    ]);
    assert_eq!(runs[0]["rebuilt"], 1980, "{runs:?}");
    let out = legsync(&["bench", "--legs", "10", "--mode", "transfer", "--tls"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--tls applies to --mode cold, warm and live"));
}

#[test]
fn bench_gives_a_plugin_of_its_own_an_empty_config() {
    // nap-cap rejects the bench's rules (`[[rule]]`): with `--plugin` and
    // no `--rules`, its `init` gets nothing to reject.
    let plugin = built_plugin("nap-cap");
    let runs = bench_json(&[
        "--legs",
        "200",
        "--mode",
        "cold",
        "--plugin",
        plugin.to_str().unwrap(),
    ]);
    assert_eq!(runs[0]["rebuilt"], 200, "{runs:?}");
}

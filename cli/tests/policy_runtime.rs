//! The policy runtime against real plugins built from `plugins/`: example
//! decisions, the chain, every hostile fixture, quarantine, load errors and
//! the compile cache.

mod common;

use common::{install, leg, plugin_dir};
use legsync::model::{
    CallLeg, Custody, Decision, Direction, EndedLeg, Link, Protocol, TerminationReason,
};
use legsync::policy::loader::load_dir;
use legsync::policy::{
    CacheOutcome, CompileCache, FailureKind, PolicyChain, PolicyConfig, PolicyError, PolicyRuntime,
};
use std::path::Path;
use std::time::{Duration, Instant};

/// `legs` as they end, each with `custody`.
fn ended(legs: &[CallLeg], custody: Custody) -> Vec<EndedLeg> {
    legs.iter()
        .map(|leg| EndedLeg {
            leg: leg.clone(),
            custody,
        })
        .collect()
}

/// Held by the host, adopted by `plugin`.
fn held_by(plugin: &str) -> Custody {
    Custody::Held {
        adopted_by: plugin.into(),
    }
}

fn runtime() -> PolicyRuntime {
    PolicyRuntime::new(None).unwrap()
}

fn load(dir: &Path, config_toml: &str) -> Result<PolicyChain, PolicyError> {
    let config: PolicyConfig = toml::from_str(config_toml).unwrap();
    load_dir(&runtime(), dir, &config)
}

fn decisions(chain: &PolicyChain, legs: &[legsync::model::CallLeg]) -> Vec<(Decision, String)> {
    chain
        .decide_legs(legs)
        .into_iter()
        .map(|v| (v.decision, v.plugin.to_string()))
        .collect()
}

#[test]
fn accept_all_rebuilds_every_leg_and_link() {
    let dir = plugin_dir(&[("10-accept-all", "accept-all", None)]);
    let chain = load(dir.path(), "").unwrap();
    let legs: Vec<_> = (1..=5).map(|i| leg(i, "SIP_A", "19005550000")).collect();
    for verdict in chain.decide_legs(&legs) {
        assert_eq!(verdict.decision, Decision::Rebuild);
        assert_eq!(&*verdict.plugin, "10-accept-all");
        assert_eq!(verdict.failure, None);
    }
    let links = [Link {
        id: 9,
        leg_a: 1,
        leg_b: 2,
    }];
    assert_eq!(chain.decide_links(&links)[0].decision, Decision::Rebuild);
}

#[test]
fn rules_plugin_decides_like_the_native_rule_engine() {
    let rules = r#"
        [[rule]]
        action = "refuse"
        called_prefix = ["1900"]
        [[rule]]
        action = "refuse"
        nap = ["ISDN_SPAN_3"]
        protocol = ["isdn"]
        [[rule]]
        action = "refuse"
        direction = "outbound"
        calling_prefix = ["999"]
        [[rule]]
        action = "refuse"
        min_age_secs = 3600
    "#;
    let dir = plugin_dir(&[("20-rules", "rules", Some(rules))]);
    let chain = load(dir.path(), "").unwrap();

    let mut legs = vec![
        leg(1, "SIP_A", "19005551234"),
        leg(2, "SIP_A", "5145551234"),
        leg(3, "ISDN_SPAN_3", "5145551234"),
        leg(4, "ISDN_SPAN_3", "5145551234"),
        leg(5, "SIP_A", "5145551234"),
        leg(6, "SIP_A", "5145551234"),
    ];
    legs[2].protocol = Protocol::Isdn;
    legs[4].direction = Direction::Outbound;
    legs[4].calling = "9991234".into();
    legs[5].answered_at_ms = Some(legsync::model::now_ms() - 2 * 3600 * 1000);
    let expected = [
        Decision::Refuse,
        Decision::Rebuild,
        Decision::Refuse,
        Decision::Rebuild,
        Decision::Refuse,
        Decision::Refuse,
    ];
    let got: Vec<_> = chain
        .decide_legs(&legs)
        .into_iter()
        .map(|v| v.decision)
        .collect();
    assert_eq!(got, expected);

    // The same rules compiled natively give the same answers.
    let native = legsync_rules::RuleSet::parse(rules).unwrap();
    let now = legsync::model::now_ms();
    for (leg, want) in legs.iter().zip(expected) {
        let view = legsync_lab::native_rules::leg_view(leg);
        let action = native.decide(&view, now);
        assert_eq!(
            legsync_lab::native_rules::decision(action),
            want,
            "leg {}",
            leg.id
        );
    }
}

#[test]
fn nap_cap_refuses_past_the_cap_and_frees_slots_on_termination() {
    let dir = plugin_dir(&[(
        "30-nap-cap",
        "nap-cap",
        Some("default_max = 5\n[max]\nSIP_A = 2\n"),
    )]);
    let chain = load(dir.path(), "").unwrap();
    let legs: Vec<_> = (1..=4).map(|i| leg(i, "SIP_A", "1")).collect();
    let got: Vec<_> = chain
        .decide_legs(&legs)
        .into_iter()
        .map(|v| v.decision)
        .collect();
    assert_eq!(
        got,
        [
            Decision::Rebuild,
            Decision::Rebuild,
            Decision::Refuse,
            Decision::Refuse
        ]
    );

    chain.notify_terminated(
        &ended(&legs[..1], held_by("30-nap-cap")),
        TerminationReason::Released,
    );
    let again = chain.decide_legs(&[leg(5, "SIP_A", "1"), leg(6, "SIP_A", "1")]);
    assert_eq!(
        again[0].decision,
        Decision::Rebuild,
        "a released call frees its slot"
    );
    assert_eq!(again[1].decision, Decision::Refuse);
}

/// The host announces every leg's end to every plugin: the end of a leg
/// nap-cap refused, or never saw, must not free a slot (it drifted toward
/// zero, and the next resync adopted every call on a full NAP).
#[test]
fn nap_cap_frees_only_slots_it_counted() {
    let dir = plugin_dir(&[("30-nap-cap", "nap-cap", Some("[max]\nSIP_A = 2\n"))]);
    let chain = load(dir.path(), "").unwrap();
    let legs: Vec<_> = (1..=3).map(|i| leg(i, "SIP_A", "1")).collect();
    let got: Vec<_> = chain
        .decide_legs(&legs)
        .into_iter()
        .map(|v| v.decision)
        .collect();
    assert_eq!(
        got,
        [Decision::Rebuild, Decision::Rebuild, Decision::Refuse]
    );
    // The refused leg's notice, and notices of legs it never decided.
    let by_cap = Custody::Refused {
        by: "30-nap-cap".into(),
    };
    chain.notify_terminated(
        &ended(&legs[2..], by_cap),
        TerminationReason::RefusedByPolicy,
    );
    let strangers: Vec<_> = (100..110).map(|i| leg(i, "SIP_A", "1")).collect();
    chain.notify_terminated(
        &ended(&strangers, held_by("live")),
        TerminationReason::Released,
    );
    assert_eq!(
        chain.decide_legs(&[leg(4, "SIP_A", "1")])[0].decision,
        Decision::Refuse,
        "the cap still holds: no counted call ended"
    );
    // A counted call offered again keeps its slot, without a second one.
    assert_eq!(chain.decide_legs(&legs[..1])[0].decision, Decision::Rebuild);
    chain.notify_terminated(
        &ended(&legs[..1], held_by("30-nap-cap")),
        TerminationReason::Released,
    );
    assert_eq!(
        chain.decide_legs(&[leg(5, "SIP_A", "1")])[0].decision,
        Decision::Rebuild,
        "a counted call's end frees its slot"
    );
    assert_eq!(
        chain.decide_legs(&[leg(6, "SIP_A", "1")])[0].decision,
        Decision::Refuse
    );
}

#[test]
fn nap_cap_rejects_bad_rules_at_load() {
    let dir = plugin_dir(&[("30-nap-cap", "nap-cap", Some("[max]\nSIP_A = lots\n"))]);
    let err = load(dir.path(), "").unwrap_err();
    assert!(
        matches!(&err, PolicyError::InitRejected { plugin, message } if plugin == "30-nap-cap" && message.contains("`lots` is not a whole number")),
        "{err}"
    );
}

#[test]
fn chain_runs_in_file_name_order_and_first_refusal_wins() {
    let dir = plugin_dir(&[
        ("10-accept-all", "accept-all", None),
        (
            "20-rules",
            "rules",
            Some("[[rule]]\naction = \"refuse\"\ncalled_prefix = [\"1900\"]\n"),
        ),
        ("30-nap-cap", "nap-cap", Some("[max]\nSIP_A = 1\n")),
    ]);
    let chain = load(dir.path(), "").unwrap();
    let names: Vec<_> = chain
        .plugins()
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    assert_eq!(names, ["10-accept-all", "20-rules", "30-nap-cap"]);

    let legs = [
        leg(1, "SIP_A", "19001"),
        leg(2, "SIP_A", "514"),
        leg(3, "SIP_A", "514"),
    ];
    assert_eq!(
        decisions(&chain, &legs),
        [
            (Decision::Refuse, "20-rules".to_string()),
            (Decision::Rebuild, "30-nap-cap".to_string()),
            (Decision::Refuse, "30-nap-cap".to_string()),
        ]
    );
    // The refused premium call never reached nap-cap, so it used no slot:
    // leg 2 got the only one.

    // Reordering the files reorders the chain: nap-cap first spends its one
    // slot on leg 1, which the rules then refuse.
    let reordered = plugin_dir(&[
        ("10-nap-cap", "nap-cap", Some("[max]\nSIP_A = 1\n")),
        (
            "20-rules",
            "rules",
            Some("[[rule]]\naction = \"refuse\"\ncalled_prefix = [\"1900\"]\n"),
        ),
    ]);
    let chain = load(reordered.path(), "").unwrap();
    assert_eq!(
        decisions(&chain, &legs),
        [
            (Decision::Refuse, "20-rules".to_string()),
            (Decision::Refuse, "10-nap-cap".to_string()),
            (Decision::Refuse, "10-nap-cap".to_string()),
        ]
    );
}

#[test]
fn an_empty_directory_rebuilds_by_default() {
    let dir = plugin_dir(&[]);
    let chain = load(dir.path(), "").unwrap();
    assert_eq!(
        decisions(&chain, &[leg(1, "A", "1")]),
        [(Decision::Rebuild, "(no plugins)".to_string())]
    );
}

/// Loads one hostile fixture with `config` and runs one batch through it;
/// returns the verdict of its first leg and how long the call took.
fn run_fixture(fixture: &str, config: &str) -> (legsync::policy::Verdict, Duration, PolicyChain) {
    let dir = plugin_dir(&[("50-hostile", fixture, None)]);
    let chain = load(dir.path(), config).unwrap();
    let started = Instant::now();
    let verdicts = chain.decide_legs(&[leg(1, "SIP_A", "1"), leg(2, "SIP_A", "2")]);
    let elapsed = started.elapsed();
    assert!(
        verdicts.iter().all(|v| v == &verdicts[0]),
        "one failure covers the batch"
    );
    (verdicts[0].clone(), elapsed, chain)
}

#[test]
fn an_endless_loop_is_stopped_at_its_deadline_and_fails_open() {
    let (verdict, elapsed, chain) =
        run_fixture("fixture-spin", "[plugins.50-hostile]\ndeadline_ms = 50\n");
    assert_eq!(
        verdict.decision,
        Decision::Rebuild,
        "fail-open is the default"
    );
    assert_eq!(verdict.failure, Some(FailureKind::Deadline));
    assert_eq!(&*verdict.plugin, "50-hostile");
    assert!(
        elapsed >= Duration::from_millis(50),
        "stopped early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(1000),
        "not stopped near its deadline: {elapsed:?}"
    );
    assert_eq!(chain.plugins()[0].stats().failures, 1);
}

#[test]
fn a_plugin_with_two_instances_decides_a_batch_while_another_is_running() {
    let dir = plugin_dir(&[("50-hostile", "fixture-spin", None)]);
    let config = "[plugins.50-hostile]\ndeadline_ms = 5000\ninstances = 2\n";
    let chain = std::sync::Arc::new(load(dir.path(), config).unwrap());
    let slow = {
        let chain = chain.clone();
        std::thread::spawn(move || chain.decide_legs(&[leg(1, "SIP_A", "1")]))
    };
    // A call is counted while its instance is held: from then on the first
    // instance is busy spinning until its deadline.
    while chain.plugins()[0].stats().calls == 0 {
        std::thread::yield_now();
    }
    let quick = chain.decide_legs(&[leg(2, "QUICK", "2")]);
    assert_eq!(quick[0].decision, Decision::Rebuild);
    assert_eq!(quick[0].failure, None, "decided by a second instance");
    assert!(
        !slow.is_finished(),
        "the second batch waited for the first instead of using another instance"
    );
    assert_eq!(chain.plugins()[0].stats().instantiations, 2);
    let slow = slow.join().unwrap();
    assert_eq!(slow[0].failure, Some(FailureKind::Deadline));
}

#[test]
fn a_fail_closed_plugin_refuses_what_it_could_not_decide() {
    let (verdict, _, _) = run_fixture(
        "fixture-spin",
        "[plugins.50-hostile]\ndeadline_ms = 20\nfailure = \"fail-closed\"\n",
    );
    assert_eq!(verdict.decision, Decision::Refuse);
    assert_eq!(verdict.failure, Some(FailureKind::Deadline));
}

#[test]
fn unbounded_memory_growth_hits_the_memory_cap() {
    let started = Instant::now();
    let (verdict, _, _) = run_fixture("fixture-memory-hog", "[defaults]\nmemory_mb = 16\n");
    assert_eq!(verdict.failure, Some(FailureKind::MemoryCap));
    assert_eq!(verdict.decision, Decision::Rebuild);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A plugin whose memory only grows (1 MiB a batch here; componentize-js's
/// heap does the same) is replaced by a fresh instance once a call leaves it
/// near its cap, so no batch ever fails on the cap and every decision is the
/// plugin's own (with a failure, a 1900 number would have been rebuilt).
#[test]
fn a_plugin_whose_memory_only_grows_is_recycled_before_its_cap() {
    let dir = plugin_dir(&[("50-leak", "fixture-memory-hog", Some("leak"))]);
    let chain = load(dir.path(), "[defaults]\nmemory_mb = 16\n").unwrap();
    for batch in 0..40 {
        let legs = [
            leg(batch * 2 + 1, "SIP_A", "19005550100"),
            leg(batch * 2 + 2, "SIP_A", "5145550100"),
        ];
        let verdicts = chain.decide_legs(&legs);
        assert!(
            verdicts.iter().all(|v| v.failure.is_none()),
            "batch {batch}: {verdicts:?}"
        );
        assert_eq!(decided(&verdicts), [Decision::Refuse, Decision::Rebuild]);
    }
    let stats = chain.plugins()[0].stats();
    assert_eq!(stats.failures, 0);
    assert!(stats.recycled >= 2, "{stats:?}");
    assert!(stats.peak_memory_bytes <= 16 << 20, "{stats:?}");
}

#[test]
fn a_panic_traps_and_the_next_call_gets_a_fresh_instance() {
    let dir = plugin_dir(&[("50-panic", "fixture-panic", Some("666"))]);
    let chain = load(dir.path(), "").unwrap();
    let first = chain.decide_legs(&[leg(1, "SIP_A", "666"), leg(2, "SIP_A", "514")]);
    assert_eq!(first[0].failure, Some(FailureKind::Trap));
    assert_eq!(
        first[1].failure,
        Some(FailureKind::Trap),
        "the whole batch gets the failure policy"
    );

    let second = chain.decide_legs(&[leg(3, "SIP_A", "514")]);
    assert_eq!(second[0].failure, None, "a fresh instance answers normally");
    assert_eq!(second[0].decision, Decision::Rebuild);
    let stats = chain.plugins()[0].stats();
    assert_eq!(stats.instantiations, 2, "the trapped instance was replaced");
    assert_eq!(stats.failures, 1);
}

#[test]
fn a_wrong_number_of_decisions_is_a_malformed_answer() {
    let (verdict, _, chain) = run_fixture("fixture-miscount", "");
    assert_eq!(verdict.failure, Some(FailureKind::Malformed));
    assert_eq!(
        verdict.decision,
        Decision::Rebuild,
        "its refusals are not trusted"
    );
    assert_eq!(
        chain.plugins()[0].stats().instantiations,
        1,
        "discarded, not yet replaced"
    );
}

#[test]
fn a_chatty_plugin_is_capped_and_stopped() {
    // A log that shows the plugin's info lines (a line it would not show is
    // not counted against the cap).
    let _log = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::sink)
            .finish(),
    );
    let (verdict, _, chain) = run_fixture("fixture-chatty", "[defaults]\ndeadline_ms = 300\n");
    assert_eq!(verdict.failure, Some(FailureKind::Deadline));
    let stats = chain.plugins()[0].stats();
    assert!(
        stats.dropped_log_lines > 0,
        "log lines over the cap are dropped: {stats:?}"
    );
    assert!(
        stats.dropped_output_bytes > 0,
        "stdout over the cap is dropped: {stats:?}"
    );
}

#[test]
fn a_plugin_that_keeps_failing_is_quarantined() {
    let dir = plugin_dir(&[("50-panic", "fixture-panic", None)]);
    let chain = load(
        dir.path(),
        "[plugins.50-panic]\nquarantine_after = 3\nquarantine_base_ms = 600000\n",
    )
    .unwrap();
    for _ in 0..3 {
        assert_eq!(
            chain.decide_legs(&[leg(1, "A", "1")])[0].failure,
            Some(FailureKind::Trap)
        );
    }
    let plugin = &chain.plugins()[0];
    assert!(plugin.is_quarantined());
    let benched = chain.decide_legs(&[leg(2, "A", "1")]);
    assert_eq!(benched[0].failure, Some(FailureKind::Quarantined));
    assert_eq!(
        benched[0].decision,
        Decision::Rebuild,
        "the host keeps deciding"
    );
    let stats = plugin.stats();
    assert_eq!(stats.calls, 3, "a quarantined plugin is not called");
    assert_eq!(stats.quarantined_skips, 1);
}

/// A fail-closed plugin whose termination handler traps: that export is
/// quarantined, its decisions are not (they used to be refused by the
/// quarantine at the next resync, dropping every call).
#[test]
fn a_failing_notification_handler_does_not_quarantine_the_decisions() {
    let dir = plugin_dir(&[("50-notify", "fixture-notify-trap", None)]);
    let chain = load(
        dir.path(),
        "[plugins.50-notify]\nfailure = \"fail-closed\"\nquarantine_after = 3\nquarantine_base_ms = 600000\n",
    )
    .unwrap();
    for _ in 0..4 {
        chain.notify_terminated(
            &ended(&[leg(1, "A", "1")], held_by("50-notify")),
            legsync::model::TerminationReason::Released,
        );
    }
    let plugin = &chain.plugins()[0];
    assert!(plugin.is_quarantined(), "the notice handler is benched");
    let verdicts = chain.decide_legs(&[leg(2, "A", "1"), leg(3, "B", "2")]);
    assert_eq!(decided(&verdicts), [Decision::Rebuild, Decision::Rebuild]);
    assert!(verdicts.iter().all(|v| v.failure.is_none()), "{verdicts:?}");
}

fn decided(verdicts: &[legsync::policy::Verdict]) -> Vec<Decision> {
    verdicts.iter().map(|v| v.decision).collect()
}

/// Renders a leg the way the `fixture-fields` plugin does.
fn render_fields(leg: &legsync::model::CallLeg) -> String {
    let direction = match leg.direction {
        Direction::Inbound => "in",
        Direction::Outbound => "out",
    };
    let protocol = match leg.protocol {
        Protocol::Sip => "sip",
        Protocol::Isdn => "isdn",
        Protocol::Ss7 => "ss7",
        Protocol::Cas => "cas",
        Protocol::MediaOnly => "media",
    };
    let option = |value: Option<u64>| value.map_or("-".to_string(), |v| v.to_string());
    format!(
        "{}|{}|{direction}|{protocol}|{}|{}|{}|{}|{}",
        leg.id,
        leg.session_id,
        leg.nap,
        leg.calling,
        leg.offered_at_ms,
        option(leg.answered_at_ms),
        option(leg.linked_to),
    )
}

#[test]
fn every_leg_field_reaches_the_plugin_intact() {
    let dir = plugin_dir(&[("50-fields", "fixture-fields", None)]);
    let chain = load(dir.path(), "").unwrap();
    let directions = [Direction::Inbound, Direction::Outbound];
    let protocols = [
        Protocol::Sip,
        Protocol::Isdn,
        Protocol::Ss7,
        Protocol::Cas,
        Protocol::MediaOnly,
    ];
    let mut legs: Vec<_> = (0..40u64)
        .map(|i| {
            let mut leg = leg(u64::MAX - i, "", "");
            leg.session_id = i << 40 | 7;
            leg.direction = directions[i as usize % 2];
            leg.protocol = protocols[i as usize % 5];
            // Empty, short, inline-sized and heap-sized strings, and UTF-8.
            leg.nap = "N".repeat(i as usize % 30).into();
            leg.calling = if i % 3 == 0 {
                ""
            } else {
                "+33 1 23 45 67 89 é"
            }
            .into();
            leg.offered_at_ms = 1_700_000_000_000 + i;
            leg.answered_at_ms = (i % 2 == 0).then_some(u64::MAX - 1);
            leg.linked_to = (i % 4 < 2).then_some(i * 1_000_003);
            leg.called = render_fields(&leg).into();
            leg
        })
        .collect();
    let verdicts = chain.decide_legs(&legs);
    let refused: Vec<_> = verdicts
        .iter()
        .zip(&legs)
        .filter(|(v, _)| v.decision != Decision::Rebuild || v.failure.is_some())
        .map(|(_, leg)| leg.called.to_string())
        .collect();
    assert!(
        refused.is_empty(),
        "fields changed on the way in: {refused:?}"
    );

    // The check can fail: one field off and the plugin sees it.
    legs[7].linked_to = Some(1);
    legs[8].offered_at_ms += 1;
    assert_eq!(
        decided(&chain.decide_legs(&legs[6..9])),
        [Decision::Rebuild, Decision::Refuse, Decision::Refuse]
    );
}

#[test]
fn every_link_field_reaches_the_plugin_intact() {
    let dir = plugin_dir(&[("50-fields", "fixture-fields", None)]);
    let chain = load(dir.path(), "").unwrap();
    let link = |leg_a: u64, leg_b: u64| Link {
        id: leg_a.wrapping_mul(3) ^ leg_b,
        leg_a,
        leg_b,
    };
    let mut links: Vec<Link> = (0..3000u64)
        .map(|i| link(u64::MAX - i * 7, i << 33 | 5))
        .collect();
    let verdicts = chain.decide_links(&links);
    assert!(
        verdicts
            .iter()
            .all(|v| v.decision == Decision::Rebuild && v.failure.is_none()),
        "link fields changed on the way in"
    );
    // Swapped legs and a wrong id are seen.
    let (a, b) = (links[1].leg_a, links[1].leg_b);
    links[1].leg_a = b;
    links[1].leg_b = a;
    links[2].id += 1;
    assert_eq!(
        decided(&chain.decide_links(&links[..3])),
        [Decision::Rebuild, Decision::Refuse, Decision::Refuse]
    );
}

#[test]
fn the_sandbox_grants_no_files_environment_or_network() {
    let dir = plugin_dir(&[("50-snoop", "fixture-snoop", None)]);
    let chain = load(dir.path(), "").unwrap();
    let verdict = &chain.decide_legs(&[leg(1, "A", "1")])[0];
    assert_eq!(verdict.failure, None);
    assert_eq!(
        verdict.decision,
        Decision::Rebuild,
        "the snoop reached something outside"
    );
}

#[test]
fn a_corrupt_wasm_file_is_rejected_with_its_path() {
    let dir = plugin_dir(&[("10-accept-all", "accept-all", None)]);
    let bad = dir.path().join("20-broken.wasm");
    std::fs::write(&bad, b"\0asm this is not a component").unwrap();
    let err = load(dir.path(), "").unwrap_err();
    assert!(matches!(err, PolicyError::NotAComponent { .. }), "{err}");
    assert!(err.to_string().contains("20-broken.wasm"), "{err}");
}

#[test]
fn a_plugin_for_another_contract_version_is_rejected_naming_both() {
    let dir = plugin_dir(&[("10-future", "fixture-future-contract", None)]);
    let err = load(dir.path(), "").unwrap_err().to_string();
    assert!(err.contains("legsync:policy@0.5.0"), "{err}");
    assert!(err.contains("legsync:policy@0.4.0"), "{err}");
    // What to rebuild with, in every language with an SDK.
    for tool in ["legsync-plugin-sdk", "componentize-py", "jco componentize"] {
        assert!(err.contains(tool), "{tool} in: {err}");
    }
}

/// Plugins built for older contracts keep loading and deciding. 0.2.0 sent
/// the batch's text as a `string`: such a plugin gets the same bytes as a
/// string. 0.3.0 had no `held` / `decided-by` in its termination notice:
/// such a plugin gets the notice in its own record (its fixture traps on a
/// notice that does not carry its leg). Both log through their own host
/// import. A non-ASCII NAP before the refused leg proves the spans still
/// point at the right bytes.
#[test]
fn plugins_built_for_contracts_0_2_and_0_3_still_load_and_decide() {
    for (fixture, version) in [
        ("fixture-contract-0-2", "0.2.0"),
        ("fixture-contract-0-3", "0.3.0"),
    ] {
        let dir = plugin_dir(&[("10-legacy", fixture, None)]);
        let chain = load(dir.path(), "").unwrap();
        let legs = [
            leg(1, "ISDN_ŁÓDŹ", "5145551234"),
            leg(2, "PREMIUM_ŻÓŁW", "19005551234"),
            leg(3, "SIP_A", "5145551234"),
            leg(4, "PREMIUM_A", "19005551234"),
        ];
        let verdicts = chain.decide_legs(&legs);
        assert!(verdicts.iter().all(|v| v.failure.is_none()), "{verdicts:?}");
        assert_eq!(
            decided(&verdicts),
            [
                Decision::Rebuild,
                Decision::Refuse,
                Decision::Rebuild,
                Decision::Refuse
            ],
            "{version}"
        );
        let links = [Link {
            id: 9,
            leg_a: 1,
            leg_b: 3,
        }];
        assert_eq!(chain.decide_links(&links)[0].decision, Decision::Rebuild);
        chain.notify_terminated(
            &ended(&legs[..1], held_by("10-legacy")),
            TerminationReason::Released,
        );
        let plugin = &chain.plugins()[0];
        assert_eq!(plugin.contract().contract.version(), version);
        assert_eq!(
            plugin.stats().failures,
            0,
            "every export of {version} answered"
        );
    }
}

#[test]
fn rules_refused_by_init_reject_the_plugin_with_the_message() {
    let dir = plugin_dir(&[("20-rules", "rules", Some("[[rule]]\naction = \"maybe\"\n"))]);
    let err = load(dir.path(), "").unwrap_err();
    let PolicyError::InitRejected { plugin, message } = &err else {
        panic!("{err}")
    };
    assert_eq!(plugin, "20-rules");
    assert!(message.contains("invalid TOML rules"), "{message}");
}

#[test]
fn the_compile_cache_survives_a_corrupt_entry() {
    let cache_dir = tempfile::tempdir().unwrap();
    let runtime = PolicyRuntime::new(Some(CompileCache::new(cache_dir.path()))).unwrap();
    let dir = plugin_dir(&[("20-rules", "rules", None)]);
    let config = PolicyConfig::default();
    let outcome = |runtime: &PolicyRuntime| {
        let chain = load_dir(runtime, dir.path(), &config).unwrap();
        assert_eq!(
            chain.decide_legs(&[leg(1, "A", "1")])[0].decision,
            Decision::Rebuild
        );
        chain.plugins()[0].cache_outcome().clone()
    };
    assert_eq!(outcome(&runtime), CacheOutcome::Miss);
    assert_eq!(outcome(&runtime), CacheOutcome::Hit);

    let entries: Vec<_> = std::fs::read_dir(cache_dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1);
    let mut bytes = std::fs::read(&entries[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&entries[0], &bytes).unwrap();
    match outcome(&runtime) {
        CacheOutcome::Rebuilt { reason } => assert!(reason.contains("checksum"), "{reason}"),
        other => panic!("a corrupt entry must be rebuilt, got {other:?}"),
    }
    assert_eq!(
        outcome(&runtime),
        CacheOutcome::Hit,
        "the rebuilt entry is valid"
    );

    std::fs::write(&entries[0], b"LSYNCC01short").unwrap();
    assert!(matches!(outcome(&runtime), CacheOutcome::Rebuilt { .. }));
}

#[test]
fn a_missing_directory_is_a_clear_error() {
    let err = load(Path::new("/nonexistent/legsync-plugins"), "").unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/legsync-plugins"),
        "{err}"
    );
}

#[test]
fn termination_notices_reach_every_plugin_without_deciding() {
    let dir = plugin_dir(&[("10-accept-all", "accept-all", None)]);
    install(
        dir.path(),
        "20-nap-cap",
        "nap-cap",
        Some("[max]\nSIP_A = 1\n"),
    );
    let chain = load(dir.path(), "").unwrap();
    let first = leg(1, "SIP_A", "1");
    assert_eq!(
        chain.decide_legs(std::slice::from_ref(&first))[0].decision,
        Decision::Rebuild
    );
    assert_eq!(
        chain.decide_legs(&[leg(2, "SIP_A", "1")])[0].decision,
        Decision::Refuse
    );
    chain.notify_terminated(
        &ended(&[first], held_by("30-nap-cap")),
        TerminationReason::GraceExpired,
    );
    assert_eq!(
        chain.decide_legs(&[leg(3, "SIP_A", "1")])[0].decision,
        Decision::Rebuild
    );
}

/// A toolchain's default imports (componentize-js imports `wasi:http`) must
/// not keep a plugin from loading: what the host does not grant is linked
/// as traps, and only a call to it fails, under the failure policy.
#[test]
fn imports_the_host_does_not_grant_load_and_trap_only_when_called() {
    let quiet = plugin_dir(&[("10-extra", "fixture-extra-import", None)]);
    let chain = load(quiet.path(), "").expect("loads despite fixture:extra/lookup");
    let legs = [leg(1, "SIP_A", "15145550000")];
    let verdict = &chain.decide_legs(&legs)[0];
    assert_eq!(
        (verdict.decision, verdict.failure),
        (Decision::Rebuild, None)
    );

    let calling = plugin_dir(&[("10-extra", "fixture-extra-import", Some("call"))]);
    let chain = load(
        calling.path(),
        "[plugins.10-extra]\nfailure = \"fail-closed\"\n",
    )
    .unwrap();
    let verdict = &chain.decide_legs(&legs)[0];
    assert_eq!(verdict.failure, Some(FailureKind::Trap), "the call traps");
    assert_eq!(verdict.decision, Decision::Refuse, "fail-closed decides");
}

/// A correct but slow plugin (a millisecond a leg, as an interpreted
/// language can be) under a 100 ms deadline: a full batch of 300 would
/// overrun and be decided by the failure policy. The host measures its
/// cost on a small first call and sizes the rest to half the deadline, so
/// every leg gets the plugin's own answer.
#[test]
fn a_slow_plugin_gets_batches_it_can_answer_within_its_deadline() {
    let dir = plugin_dir(&[("10-slow", "fixture-slow-notify", Some("slow_decisions"))]);
    let chain = load(dir.path(), "[defaults]\nfailure = \"fail-closed\"\n").unwrap();
    let legs: Vec<_> = (1..=300).map(|i| leg(i, "SIP_A", "15145550000")).collect();
    let verdicts = chain.decide_legs(&legs);
    let failures: Vec<_> = verdicts.iter().filter_map(|v| v.failure).collect();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(verdicts.iter().all(|v| v.decision == Decision::Rebuild));
    let plugin = &chain.plugins()[0];
    let limit = plugin.batch_limit(legsync::policy::Export::LegSync, 1024);
    assert!(
        (20..=60).contains(&limit),
        "about 50 legs fit half of 100 ms at 1 ms a leg: {limit}"
    );
    assert!(plugin.stats().calls >= 6, "{:?}", plugin.stats().calls);
}

/// The decision budget stops the chain between two calls: a chunk of
/// 2,048 legs at 1 ms a leg is not decided to its end once the budget has
/// passed; the rest goes to the failure policy, marked `resync-budget`.
/// The call deadline is a second, so that on a loaded machine no call
/// overruns it (a deadline failure, then a quarantine, would decide the
/// rest for another reason than the budget).
#[test]
fn the_decision_budget_stops_the_chain_between_calls() {
    let dir = plugin_dir(&[("10-slow", "fixture-slow-notify", Some("slow_decisions"))]);
    let chain = load(
        dir.path(),
        "batch_size = 4096\n[defaults]\nfailure = \"fail-closed\"\ndeadline_ms = 1000\n",
    )
    .unwrap();
    let legs: Vec<_> = (1..=2_048)
        .map(|i| leg(i, "SIP_A", "15145550000"))
        .collect();
    let until = std::time::Instant::now() + std::time::Duration::from_millis(300);
    let verdicts = chain.decide_legs_until(&legs, Some(until));
    let by_budget = verdicts
        .iter()
        .filter(|v| v.failure == Some(legsync::policy::FailureKind::ResyncBudget))
        .count();
    let by_plugin = verdicts.iter().filter(|v| v.failure.is_none()).count();
    assert!(
        by_plugin > 0 && by_budget > 1_000,
        "{by_plugin} by the plugin, {by_budget} by the budget"
    );
    assert!(
        verdicts[by_plugin..]
            .iter()
            .all(|v| v.decision == Decision::Refuse),
        "fail-closed decides the rest"
    );
}

/// What a test host holds, as `held-legs` serves it.
fn serve_held(runtime: &PolicyRuntime, legs: &[(CallLeg, &str)]) {
    let legs = legs
        .iter()
        .map(|(leg, by)| (leg.clone(), (*by).into()))
        .collect();
    runtime
        .held_legs()
        .serve(std::sync::Arc::new(legsync::policy::held::FixedHeld::new(
            legs,
        )));
}

/// A fresh nap-cap instance counts the calls the host holds that a
/// decision adopted (not those followed live from their setup), so a
/// recycled instance keeps the cap instead of starting from zero; and it
/// exports its own counter.
#[test]
fn a_fresh_nap_cap_instance_counts_the_held_calls() {
    let runtime = runtime();
    serve_held(
        &runtime,
        &[
            (leg(1, "SIP_A", "1"), "30-nap-cap"),
            (leg(2, "SIP_A", "1"), "20-rules"),
            (leg(3, "SIP_A", "1"), "live"),
        ],
    );
    let dir = plugin_dir(&[("30-nap-cap", "nap-cap", Some("[max]\nSIP_A = 3\n"))]);
    let config: PolicyConfig =
        toml::from_str("[plugins.30-nap-cap]\nmax_calls_per_instance = 2\n").unwrap();
    let chain = load_dir(&runtime, dir.path(), &config).unwrap();
    let verdicts = chain.decide_legs(&[leg(10, "SIP_A", "1"), leg(11, "SIP_A", "1")]);
    assert_eq!(
        decided(&verdicts),
        [Decision::Rebuild, Decision::Refuse],
        "two held calls adopted by decisions, and one more, fill a cap of 3"
    );
    // The second call uses the instance up: the next one starts fresh from
    // the table, which no longer holds call 1 and now holds call 10.
    chain.notify_terminated(
        &ended(&[leg(1, "SIP_A", "1")], held_by("30-nap-cap")),
        TerminationReason::Released,
    );
    serve_held(
        &runtime,
        &[
            (leg(2, "SIP_A", "1"), "20-rules"),
            (leg(3, "SIP_A", "1"), "live"),
            (leg(10, "SIP_A", "1"), "30-nap-cap"),
        ],
    );
    let verdicts = chain.decide_legs(&[leg(12, "SIP_A", "1"), leg(13, "SIP_A", "1")]);
    assert_eq!(decided(&verdicts), [Decision::Rebuild, Decision::Refuse]);
    let plugin = &chain.plugins()[0];
    assert_eq!(plugin.stats().recycled, 1, "max_calls_per_instance = 2");
    assert_eq!(plugin.stats().instantiations, 2);
    assert_eq!(plugin.own_counters()["refused_over_cap"], 2);
}

/// `held-legs` as a slow host serves it: `delay` per page.
struct SlowHeld {
    delay: Duration,
    answer: Result<(), legsync::policy::held::HeldLegsError>,
}

impl legsync::policy::held::HeldLegs for SlowHeld {
    fn page(
        &self,
        _after: u64,
        _max: usize,
    ) -> Result<legsync::policy::held::HeldLegsPage, legsync::policy::held::HeldLegsError> {
        std::thread::sleep(self.delay);
        let held = vec![(leg(1, "SIP_A", "1"), "30-nap-cap".into())];
        self.answer
            .clone()
            .map(|()| legsync::policy::held::HeldLegsPage {
                legs: held,
                next_after: None,
            })
    }
}

/// The time `init` waits for the host's `held-legs` is not the plugin's:
/// a page that takes four deadlines to come still lets `init` finish. A
/// host that cannot answer fails the instance, with the reason.
#[test]
fn waiting_for_held_legs_is_not_the_plugins_time_and_no_answer_fails_init() {
    let dir = plugin_dir(&[("30-nap-cap", "nap-cap", Some("[max]\nSIP_A = 1\n"))]);
    let config: PolicyConfig = toml::from_str("[defaults]\ndeadline_ms = 50\n").unwrap();
    let runtime = runtime();
    runtime.held_legs().serve(std::sync::Arc::new(SlowHeld {
        delay: Duration::from_millis(200),
        answer: Ok(()),
    }));
    let chain = load_dir(&runtime, dir.path(), &config).unwrap();
    assert_eq!(
        decided(&chain.decide_legs(&[leg(2, "SIP_A", "1")])),
        [Decision::Refuse],
        "the held call counted: the cap of 1 is full"
    );

    let runtime = self::runtime();
    runtime.held_legs().serve(std::sync::Arc::new(SlowHeld {
        delay: Duration::ZERO,
        answer: Err(legsync::policy::held::HeldLegsError::Unanswered(10)),
    }));
    let err = load_dir(&runtime, dir.path(), &config).unwrap_err();
    assert!(
        matches!(&err, PolicyError::InitFailed { plugin, .. } if plugin == "30-nap-cap"),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("held-legs: the host did not list its held legs within 10 s"),
        "{err}"
    );
}

/// A plugin says why it refused (`explain`; the SDK's `because`): the
/// `rules` plugin names the rule, and the verdict carries it. A leg the
/// default decides has no reason.
#[test]
fn refusals_carry_the_reason_the_plugin_gave() {
    let dir = plugin_dir(&[(
        "20-rules",
        "rules",
        Some(
            "[[rule]]\nname = \"no premium\"\naction = \"refuse\"\ncalled_prefix = [\"1900\"]\n[[rule]]\naction = \"refuse\"\nnap = [\"SIP_X\"]\n",
        ),
    )]);
    let chain = load(dir.path(), "").unwrap();
    let verdicts = chain.decide_legs(&[
        leg(1, "SIP_A", "19005550001"),
        leg(2, "SIP_A", "5145550002"),
        leg(3, "SIP_X", "5145550003"),
    ]);
    let reasons: Vec<Option<&str>> = verdicts
        .iter()
        .map(|v| v.reason.map(|r| r.as_str()))
        .collect();
    assert_eq!(reasons, [Some("no premium"), None, Some("rule 2")]);
    assert_eq!(
        decided(&verdicts),
        [Decision::Refuse, Decision::Rebuild, Decision::Refuse]
    );
}

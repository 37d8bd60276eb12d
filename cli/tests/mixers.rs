//! The vendor page's situation with its conference: Mixer-1, with leg E
//! joined to it, through the four reference scenarios, against a real
//! engine-sim process over TCP (protocol 4) with real plugins; and a
//! version 3 engine, which has no mixers.

mod common;

use common::world::{Calls, WAIT, World};
use legsync::events::HostEvent;
use legsync::model::{Decision, TerminationReason};
use legsync::policy::Decider;
use legsync_lab::demo::harness::{
    RunningHost, mixers_synced, mixers_terminated, resync_summary, synced,
};

const RULES: &str =
    "[[rule]]\nname = \"no premium\"\naction = \"refuse\"\ncalled_prefix = [\"1900\"]\n";

fn plugins() -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    vec![
        ("10-accept-all", "accept-all", None),
        ("20-rules", "rules", Some(RULES)),
    ]
}

/// Mixer-1 ("ready"), with E joined to it; waits until `host` holds both.
async fn mixer_1(world: &World, host: &mut RunningHost, calls: &Calls) -> u64 {
    let mixer = world.sim.ok_id("mixer conference-1").await.unwrap();
    world
        .sim
        .ok(&format!("join {} {mixer} both", calls.e))
        .await
        .unwrap();
    host.wait_status(WAIT, |s| s.mixers == 1 && s.joins == 1)
        .await
        .unwrap();
    mixer
}

/// Who decided each mixer, by id.
fn mixer_deciders(events: &[HostEvent]) -> Vec<(u64, String)> {
    let mut deciders: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            HostEvent::MixerSync { mixer, plugin, .. } => Some((*mixer, plugin.to_string())),
            _ => None,
        })
        .collect();
    deciders.sort_unstable();
    deciders
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_back_within_grace_keeps_mixer_1_and_its_join_with_no_decision() {
    let mut world = World::new(None, &plugins()).await;
    let (mut host, _) = world.host(10.0).await;
    let calls = world.reference_calls(&mut host).await;
    let mixer = mixer_1(&world, &mut host, &calls).await;

    world.sim.restart().await.unwrap();
    let events = host.next_resync(WAIT).await.unwrap();

    assert!(mixers_synced(&events).is_empty(), "known: no decision");
    assert!(mixers_terminated(&events).is_empty());
    let summary = resync_summary(&events).expect("a resync summary");
    assert_eq!((summary.mixers_known, summary.mixers_absent), (1, 0));
    let status = host.status();
    assert_eq!((status.mixers, status.joins), (1, 1), "E's join stays");
    // And it is live: E leaving the conference is heard.
    world
        .sim
        .ok(&format!("unjoin {} {mixer}", calls.e))
        .await
        .unwrap();
    host.wait_status(WAIT, |s| s.joins == 0).await.unwrap();
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_away_past_grace_destroys_mixer_1_then_rebuilds_it_with_its_join() {
    let mut world = World::new(None, &plugins()).await;
    let (mut host, _) = world.host(1.0).await;
    let calls = world.reference_calls(&mut host).await;
    let mixer = mixer_1(&world, &mut host, &calls).await;

    world.sim.kill().await.unwrap();
    let purge = host.wait_purged(WAIT).await.unwrap();
    assert_eq!(
        mixers_terminated(&purge),
        [(mixer, TerminationReason::GraceExpired)]
    );
    assert_eq!((host.status().mixers, host.status().joins), (0, 0));

    world.sim.start_again().await.unwrap();
    let events = host.next_resync(WAIT).await.unwrap();
    assert_eq!(mixers_synced(&events), [(mixer, 1, Decision::Rebuild)]);
    assert!(synced(&events).contains(&(calls.e, Decision::Rebuild)));
    let status = host.status();
    assert_eq!((status.mixers, status.joins), (1, 1), "E joined again");
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_host_restart_rebuilds_mixer_1_and_restores_e_in_it() {
    let world = World::new(None, &plugins()).await;
    let (mut first, _) = world.host(10.0).await;
    let calls = world.reference_calls(&mut first).await;
    let mixer = mixer_1(&world, &mut first, &calls).await;
    first.stop().await.unwrap();

    let (second, events) = world.host(10.0).await;
    assert!(synced(&events).contains(&(calls.e, Decision::Rebuild)));
    assert_eq!(mixers_synced(&events), [(mixer, 1, Decision::Rebuild)]);
    assert_eq!(
        mixer_deciders(&events),
        [(mixer, "no-mixer-policy".to_string())],
        "accept-all and rules without mixer rules abstain: nobody voted"
    );
    // The mixer is decided after its legs: E was rebuilt first.
    let position = |wanted: &dyn Fn(&HostEvent) -> bool| events.iter().position(wanted).unwrap();
    assert!(
        position(&|e| matches!(e, HostEvent::CallLegSync { leg, .. } if *leg == calls.e))
            < position(&|e| matches!(e, HostEvent::MixerSync { .. }))
    );
    let status = second.status();
    assert_eq!((status.mixers, status.joins), (1, 1));
    second.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_blip_changes_nothing_and_a_mixer_freed_meanwhile_is_terminated() {
    let world = World::new(None, &plugins()).await;
    let (mut host, _) = world.host(10.0).await;
    let calls = world.reference_calls(&mut host).await;
    let mixer = mixer_1(&world, &mut host, &calls).await;
    let second = world.sim.ok_id("mixer conference-2").await.unwrap();
    world
        .sim
        .ok(&format!("join {} {second} listener", calls.c))
        .await
        .unwrap();
    host.wait_status(WAIT, |s| s.mixers == 2 && s.joins == 2)
        .await
        .unwrap();

    world.sim.ok("partition 60000").await.unwrap();
    host.wait_disconnected(WAIT).await.unwrap();
    world.sim.ok(&format!("free-mixer {second}")).await.unwrap();
    world.sim.ok("partition 0").await.unwrap();
    let events = host.next_resync(WAIT).await.unwrap();

    assert!(mixers_synced(&events).is_empty());
    assert_eq!(
        mixers_terminated(&events),
        [(second, TerminationReason::AbsentAfterResync)]
    );
    assert!(
        !resync_summary(&events)
            .expect("a resync summary")
            .engine_restarted
    );
    let status = host.status();
    assert_eq!((status.mixers, status.joins), (1, 1));
    assert_eq!(
        status.legs, 3,
        "C, D and E stay: a freed mixer's legs live on"
    );
    // Mixer-1 is still E's: its release ends the join, not the mixer.
    world.sim.ok(&format!("release {}", calls.e)).await.unwrap();
    host.wait_status(WAIT, |s| s.legs == 2 && s.joins == 0 && s.mixers == 1)
        .await
        .unwrap();
    let list = world.sim.control("list").await.unwrap();
    assert!(list.contains(&format!("mixer {mixer} conference-1")));
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_leg_leaves_its_mixer_which_stays() {
    let world = World::new(None, &plugins()).await;
    let sim = &world.sim;
    // Answered while no host is connected: a cold start finds them.
    let premium = sim
        .ok_id("call SIP_CARRIER_B 15145550100 19005550100")
        .await
        .unwrap();
    let keep = sim
        .ok_id("call SIP_CARRIER_B 15145550101 15145550199")
        .await
        .unwrap();
    let mixer = sim.ok_id("mixer conference-9").await.unwrap();
    sim.ok(&format!("join {premium} {mixer}")).await.unwrap();
    sim.ok(&format!("join {keep} {mixer} speaker"))
        .await
        .unwrap();

    let (host, events) = world.host(10.0).await;
    assert!(synced(&events).contains(&(premium, Decision::Refuse)));
    assert_eq!(
        mixers_synced(&events),
        [(mixer, 1, Decision::Rebuild)],
        "rebuilt with the leg that stayed"
    );
    let status = host.status();
    assert_eq!((status.mixers, status.joins), (1, 1));
    // At the engine, the refused leg was dropped and so left the mixer.
    let list = sim.control("list").await.unwrap();
    let joins: Vec<&str> = list.lines().filter(|l| l.starts_with("join ")).collect();
    assert_eq!(joins, [format!("join {mixer} {keep} speaker").as_str()]);
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_3_engine_still_works_and_shows_no_mixers() {
    let mut world = World::new(None, &plugins()).await;
    world.sim.set_extra_args(&[
        "--heartbeat-ms",
        "100",
        "--heartbeat-timeout-ms",
        "1000",
        "--protocol",
        "3",
    ]);
    world.sim.restart().await.unwrap();
    let c = world
        .sim
        .ok_id("call SIP_CARRIER_B 15145550101 15145550199")
        .await
        .unwrap();
    let mixer = world.sim.ok_id("mixer conference-1").await.unwrap();
    world.sim.ok(&format!("join {c} {mixer}")).await.unwrap();

    // A host offering 4 is closed on, and says what to do.
    let options = legsync::engine::LinkOptions {
        engine: world.sim.listen.to_string(),
        connect_timeout: std::time::Duration::from_secs(5),
        heartbeat: std::time::Duration::from_millis(100),
        heartbeat_timeout: std::time::Duration::from_secs(1),
        max_frame: legsync::protocol::DEFAULT_MAX_FRAME,
        protocol: 4,
        host_name: "probe".into(),
        tls: None,
        heartbeat_gaps: Default::default(),
    };
    let tasks = tokio_util::task::TaskTracker::new();
    let refused = legsync::engine::Connection::open(&options, &tasks).await;
    let Err(error) = refused else {
        panic!("a version 3 engine closes on hello 4")
    };
    assert!(
        matches!(
            error,
            legsync::engine::LinkError::ClosedOnHello { offered: 4 }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("set link.protocol = 3"));

    let mut config = world.config(10.0);
    config.link.protocol = 3;
    let mut host = RunningHost::start(&config, world.decider(&config)).unwrap();
    let events = host.next_resync(WAIT).await.unwrap();
    assert_eq!(synced(&events), [(c, Decision::Rebuild)]);
    assert!(mixers_synced(&events).is_empty());
    // Live mixer events are not sent to a version 3 host either.
    world.sim.ok("mixer conference-2").await.unwrap();
    world.sim.ok(&format!("release {c}")).await.unwrap();
    host.wait_status(WAIT, |s| s.legs == 0).await.unwrap();
    assert_eq!(host.status().mixers, 0);
    host.stop().await.unwrap();
}

const MIXER_RULES: &str = "[[mixer_rule]]\nname = \"no test conferences\"\naction = \"refuse\"\nname_prefix = [\"test-\"]\n";

/// Two answered calls, X in `test-room` and Y listening in `sales`.
struct Conferences {
    x: u64,
    test_room: u64,
    sales: u64,
}

async fn two_conferences(sim: &legsync_lab::sim::process::SimProcess) -> Conferences {
    let x = sim
        .ok_id("call SIP_A 15145550100 15145550199")
        .await
        .unwrap();
    let y = sim
        .ok_id("call SIP_A 15145550101 15145550299")
        .await
        .unwrap();
    let test_room = sim.ok_id("mixer test-room").await.unwrap();
    let sales = sim.ok_id("mixer sales").await.unwrap();
    sim.ok(&format!("join {x} {test_room}")).await.unwrap();
    sim.ok(&format!("join {y} {sales} listener")).await.unwrap();
    Conferences {
        x,
        test_room,
        sales,
    }
}

/// The counter `name` of plugin `index` of the chain, once it reaches
/// `at_least` (termination notices arrive off the live path).
async fn plugin_counter(decider: &Decider, index: usize, name: &str, at_least: u64) -> u64 {
    let Decider::Chain(chain) = decider else {
        panic!("a plugin chain")
    };
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let value = chain.plugins()[index]
            .own_counters()
            .get(name)
            .copied()
            .unwrap_or(0);
        if value >= at_least || std::time::Instant::now() > deadline {
            return value;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rules_plugin_refuses_a_conference_by_name_and_the_engine_frees_it() {
    let world = World::new(
        None,
        &[
            ("10-counter", "fixture-mixer-counter", None),
            ("20-rules", "rules", Some(MIXER_RULES)),
            ("30-legacy", "fixture-contract-0-3", None),
        ],
    )
    .await;
    let sim = &world.sim;
    let Conferences {
        x,
        test_room,
        sales,
    } = two_conferences(sim).await;

    let config = world.config(10.0);
    let decider = world.decider(&config);
    let mut host = RunningHost::start(&config, decider.clone()).unwrap();
    let events = host.next_resync(WAIT).await.unwrap();

    assert_eq!(
        mixers_synced(&events),
        [
            (test_room, 1, Decision::Refuse),
            (sales, 1, Decision::Rebuild)
        ]
    );
    assert_eq!(
        mixer_deciders(&events),
        [
            (test_room, "20-rules".to_string()),
            // The 0.3.0 plugin has no mixer decision: it did not vote.
            (sales, "20-rules".to_string())
        ]
    );
    assert_eq!(
        synced(&events).len(),
        2,
        "both legs live on, decided on their own"
    );
    let status = host.status();
    assert_eq!((status.legs, status.mixers, status.joins), (2, 1, 1));
    let list = sim.control("list").await.unwrap();
    assert!(!list.contains("test-room"), "freed at the engine: {list}");
    assert!(
        list.contains(&format!("leg {x} ")),
        "its leg lives on: {list}"
    );
    assert_eq!(plugin_counter(&decider, 0, "mixers_decided", 2).await, 2);
    assert_eq!(plugin_counter(&decider, 0, "joins_seen", 2).await, 2);

    // A mixer the engine frees ends with a notice, once.
    sim.ok(&format!("free-mixer {sales}")).await.unwrap();
    host.wait_status(WAIT, |s| s.mixers == 0).await.unwrap();
    assert_eq!(plugin_counter(&decider, 0, "mixers_released", 1).await, 1);
    host.stop().await.unwrap();
}

/// What an operator sees of conferences on a running host (`legsync run`):
/// `/status` and `legsync status`, the `/mixers` view and `legsync
/// mixers`, the metrics, and the event log that billing groups legs by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_mixers_in_status_the_mixers_view_metrics_and_the_event_log() {
    use common::host_trial::HostTrial;
    let trial = HostTrial::start(None, &[], "", |dir| {
        common::install(&dir.join("plugins.d"), "10-accept-all", "accept-all", None);
        String::new()
    })
    .await;
    let sim = &trial.sim;
    let a = sim
        .ok_id("call SIP_A 15145550100 15145550199")
        .await
        .unwrap();
    let b = sim
        .ok_id("call SIP_A 15145550101 15145550299")
        .await
        .unwrap();
    let mixer = sim.ok_id("mixer sales-weekly").await.unwrap();
    sim.ok(&format!("join {a} {mixer}")).await.unwrap();
    sim.ok(&format!("join {b} {mixer} listener")).await.unwrap();
    trial.wait_events("\"kind\":\"leg-joined\"", 2).await;

    let page = trial.get("/mixers").await;
    assert_eq!(page["held"], 1, "{page}");
    assert_eq!(page["mixers"][0]["name"], "sales-weekly");
    assert_eq!(page["mixers"][0]["joins"][1]["role"], "listener");
    let (code, out) = trial.command("mixers", &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("sales-weekly")
            && out.contains(&format!("2 leg(s): {a} (both), {b} (listener)")),
        "{out}"
    );
    let status = trial.get("/status").await;
    assert_eq!(
        (status["mixers"].as_u64(), status["joins"].as_u64()),
        (Some(1), Some(2))
    );
    let (_, out) = trial.command("status", &[]);
    assert!(out.contains("1 mixers (2 joined legs)"), "{out}");
    assert_eq!(trial.metric("legsync_mixers").await, 1.0);
    assert_eq!(trial.metric("legsync_mixer_joins").await, 2.0);

    sim.ok(&format!("free-mixer {mixer}")).await.unwrap();
    trial.wait_events("\"kind\":\"mixer-terminated\"", 1).await;
    assert_eq!(
        trial
            .metric("legsync_mixers_terminated_total{reason=\"released\"}")
            .await,
        1.0
    );
    assert_eq!(trial.event_lines("\"kind\":\"leg-unjoined\""), 2);
    assert_eq!(trial.get("/mixers").await["held"], 0);
}

/// A plugin that fails in its mixer decision gets its failure policy, as
/// for legs: fail-closed refuses the conference (freed at the engine, its
/// legs live on), the failure named in the audit; fail-open rebuilds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_failing_in_its_mixer_decision_gets_its_failure_policy() {
    for (policy, expected) in [
        (legsync::policy::FailurePolicy::FailClosed, Decision::Refuse),
        (legsync::policy::FailurePolicy::FailOpen, Decision::Rebuild),
    ] {
        let world = World::new(
            None,
            &[("10-counter", "fixture-mixer-counter", Some("trap"))],
        )
        .await;
        let leg = world
            .sim
            .ok_id("call SIP_A 15145550100 15145550199")
            .await
            .unwrap();
        let mixer = world.sim.ok_id("mixer sales").await.unwrap();
        world.sim.ok(&format!("join {leg} {mixer}")).await.unwrap();

        let mut config = world.config(10.0);
        config.policy.plugins.insert(
            "10-counter".into(),
            legsync::policy::config::PluginConfig {
                failure: Some(policy),
                ..Default::default()
            },
        );
        let mut host = RunningHost::start(&config, world.decider(&config)).unwrap();
        let events = host.next_resync(WAIT).await.unwrap();
        let failure = events.iter().find_map(|e| match e {
            HostEvent::MixerSync { failure, .. } => Some(*failure),
            _ => None,
        });
        assert_eq!(failure, Some(Some(legsync::policy::FailureKind::Trap)));
        assert_eq!(mixers_synced(&events), [(mixer, 1, expected)], "{policy:?}");
        assert_eq!(
            synced(&events),
            [(leg, Decision::Rebuild)],
            "the leg lives on"
        );
        let list = world.sim.control("list").await.unwrap();
        assert_eq!(
            list.contains("mixer "),
            expected == Decision::Rebuild,
            "freed at the engine only when refused: {list}"
        );
        host.stop().await.unwrap();
    }
}

/// A shadow set sees the mixer decision too: its verdicts on conferences are
/// compared with the live ones (here the live set abstains and rebuilds,
/// the candidate refuses test conferences), and never enforced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_set_compares_its_mixer_decisions_with_the_live_ones() {
    use common::host_trial::HostTrial;
    let mut trial = HostTrial::start(None, &[], "", |dir| {
        common::install(&dir.join("plugins.d"), "10-accept-all", "accept-all", None);
        let shadow = dir.join("shadow.d");
        std::fs::create_dir(&shadow).unwrap();
        common::install(&shadow, "20-rules", "rules", Some(MIXER_RULES));
        format!("shadow_dir = \"{}\"\n", shadow.display())
    })
    .await;
    two_conferences(&trial.sim).await;
    trial.wait_events("\"kind\":\"leg-joined\"", 2).await;

    // A cold restart of the host: both conferences are unknown again.
    trial.host.crash().await.unwrap();
    trial.host.start().unwrap();
    trial.resyncs(2).await;
    trial.wait_events("\"kind\":\"shadow\"", 2).await;

    let log = std::fs::read_to_string(trial.events()).unwrap();
    let decided: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"kind\":\"mixer-sync\""))
        .collect();
    assert_eq!(decided.len(), 2, "{log}");
    assert!(
        decided
            .iter()
            .all(|l| l.contains("\"decision\":\"rebuild\"") && l.contains("no-mixer-policy")),
        "the live set decides alone: {decided:?}"
    );
    let line = log
        .lines()
        .rfind(|l| l.contains("\"kind\":\"shadow\""))
        .unwrap();
    let summary: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(summary["compared_mixers"], 2, "{summary}");
    assert_eq!(summary["shadow_refuses"], 1, "{summary}");
    let first = &summary["differences"][0];
    assert_eq!(
        (first["item"].as_str(), first["plugin"].as_str()),
        (Some("mixer"), Some("20-rules")),
        "{summary}"
    );
}

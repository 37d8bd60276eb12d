//! The four reference scenarios of ARCHITECTURE.md, the billing trap, and a
//! refusal, each against a real engine-sim process over TCP with real
//! plugins.

mod common;

use common::world::{WAIT, World};
use legsync::cdr::record::RecordKind;
use legsync::events::HostEvent;
use legsync::model::{Decision, TerminationReason};
use legsync_lab::demo::harness::{links_synced, resync_summary, synced, terminated};

const RULES: &str =
    "[[rule]]\nname = \"no premium\"\naction = \"refuse\"\ncalled_prefix = [\"1900\"]\n";

fn standard_plugins() -> Vec<(&'static str, &'static str, Option<&'static str>)> {
    vec![
        ("10-accept-all", "accept-all", None),
        ("20-rules", "rules", Some(RULES)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_1_engine_restart_within_grace_keeps_active_calls() {
    let mut world = World::new(None, &standard_plugins()).await;
    let (mut host, _) = world.host(10.0).await;
    let calls = world.reference_calls(&mut host).await;
    let old_boot = world.sim.boot_id;

    world.sim.restart().await.unwrap();
    assert_ne!(world.sim.boot_id, old_boot);
    let events = host.next_resync(WAIT).await.unwrap();

    assert_eq!(
        terminated(&events),
        [
            (calls.a, TerminationReason::AbsentAfterResync),
            (calls.b, TerminationReason::AbsentAfterResync)
        ]
    );
    assert!(
        synced(&events).is_empty(),
        "known calls stay valid with no callback: {events:#?}"
    );
    assert!(links_synced(&events).is_empty());
    let summary = resync_summary(&events).expect("a resync summary");
    assert!(summary.engine_restarted, "the boot id told a restart");
    assert_eq!((summary.known, summary.absent), (3, 2));
    let status = host.status();
    assert_eq!((status.legs, status.links), (3, 1));
    let cdrs = world.cdrs();
    assert!(
        cdrs.iter().all(|r| r.kind == RecordKind::Start),
        "A and B never answered, C-E go on: no END: {cdrs:#?}"
    );
    let mut started: Vec<u64> = cdrs.iter().map(|r| r.leg).collect();
    started.sort();
    assert_eq!(
        started,
        [calls.c, calls.d, calls.e],
        "a START per answer, once"
    );
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_2_engine_down_past_grace_purges_then_rebuilds() {
    let mut world = World::new(None, &standard_plugins()).await;
    let (mut host, _) = world.host(1.0).await;
    let calls = world.reference_calls(&mut host).await;

    world.sim.kill().await.unwrap();
    let purge = host.wait_purged(WAIT).await.unwrap();
    let all = [calls.a, calls.b, calls.c, calls.d, calls.e];
    assert_eq!(
        terminated(&purge),
        all.map(|leg| (leg, TerminationReason::GraceExpired))
    );
    assert_eq!(host.status().legs, 0, "every context destroyed locally");
    let ends = world.cdrs();
    let mut ended: Vec<u64> = ends
        .iter()
        .filter(|r| r.kind == RecordKind::End)
        .map(|r| r.leg)
        .collect();
    ended.sort();
    assert_eq!(
        ended,
        [calls.c, calls.d, calls.e],
        "CDR END for each answered call only"
    );
    assert!(
        ends.iter()
            .filter(|r| r.kind == RecordKind::End)
            .all(|r| r.end_reason == Some(TerminationReason::GraceExpired))
    );

    world.sim.start_again().await.unwrap();
    let events = host.next_resync(WAIT).await.unwrap();
    assert_eq!(
        synced(&events),
        [calls.c, calls.d, calls.e].map(|leg| (leg, Decision::Rebuild))
    );
    assert_eq!(links_synced(&events), [(calls.cd, Decision::Rebuild)]);
    let resumes: Vec<_> = world
        .cdrs()
        .into_iter()
        .filter(|r| r.kind == RecordKind::Resume)
        .collect();
    assert_eq!(
        resumes.len(),
        3,
        "each re-adopted call is marked as resumed"
    );
    for resume in &resumes {
        let end = ends
            .iter()
            .find(|e| e.leg == resume.leg && e.kind == RecordKind::End)
            .unwrap();
        assert_eq!(resume.resumes, Some(end.record));
        assert_eq!(resume.answer_time_ms, end.answer_time_ms);
    }
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_3_host_cold_restart_offers_every_active_call() {
    let world = World::new(None, &standard_plugins()).await;
    let (mut first, _) = world.host(10.0).await;
    let calls = world.reference_calls(&mut first).await;
    first.stop().await.unwrap();
    let before = world.cdrs();

    let (second, events) = world.host(10.0).await;
    assert_eq!(
        synced(&events),
        [calls.c, calls.d, calls.e].map(|leg| (leg, Decision::Rebuild))
    );
    assert_eq!(links_synced(&events), [(calls.cd, Decision::Rebuild)]);
    assert!(terminated(&events).is_empty());
    let plugin = events.iter().find_map(|e| match e {
        HostEvent::CallLegSync { plugin, .. } => Some(plugin.to_string()),
        _ => None,
    });
    assert_eq!(
        plugin.as_deref(),
        Some("20-rules"),
        "the last plugin of the chain agreed"
    );
    assert_eq!(
        world.cdrs(),
        before,
        "a planned host restart bills nothing: the ledger already has the calls open"
    );
    assert_eq!(before.len(), 3, "one START each for C, D, E");
    let last = world.ledger().pop().unwrap();
    assert_eq!(
        (last.kind, last.calls),
        (RecordKind::Carry, Some(3)),
        "the new host carries the three calls under its epoch"
    );
    second.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_4_short_network_drop_keeps_known_calls() {
    let world = World::new(None, &standard_plugins()).await;
    let (mut host, _) = world.host(10.0).await;
    let calls = world.reference_calls(&mut host).await;

    world.sim.ok("partition 60000").await.unwrap();
    host.wait_disconnected(WAIT).await.unwrap();
    // E hangs up while the host is cut off.
    world.sim.ok(&format!("release {}", calls.e)).await.unwrap();
    world.sim.ok("partition 0").await.unwrap();
    let events = host.next_resync(WAIT).await.unwrap();

    assert_eq!(
        terminated(&events),
        [
            (calls.a, TerminationReason::AbsentAfterResync),
            (calls.b, TerminationReason::AbsentAfterResync),
            (calls.e, TerminationReason::AbsentAfterResync),
        ]
    );
    assert!(synced(&events).is_empty());
    assert!(
        !resync_summary(&events)
            .expect("a resync summary")
            .engine_restarted,
        "same boot id: a network blip"
    );
    assert_eq!((host.status().legs, host.status().links), (2, 1));
    let ends: Vec<_> = world
        .cdrs()
        .into_iter()
        .filter(|r| r.kind == RecordKind::End)
        .collect();
    assert_eq!(ends.len(), 1);
    assert_eq!(
        (ends[0].leg, ends[0].end_reason),
        (calls.e, Some(TerminationReason::AbsentAfterResync))
    );
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_leg_and_its_link_are_dropped_at_the_engine() {
    let world = World::new(None, &standard_plugins()).await;
    let sim = &world.sim;
    // Answered while no host is connected (a cold start finds them).
    let premium = sim
        .ok_id("call SIP_CARRIER_B 15145550100 19005550100")
        .await
        .unwrap();
    let other = sim
        .ok_id("call SIP_CARRIER_B 15145550101 15145550199 out")
        .await
        .unwrap();
    let keep = sim
        .ok_id("call SIP_CARRIER_B 15145550102 15145550299")
        .await
        .unwrap();
    let link = sim.ok_id(&format!("link {premium} {other}")).await.unwrap();

    let (host, events) = world.host(10.0).await;
    assert_eq!(
        synced(&events),
        [
            (premium, Decision::Refuse),
            (other, Decision::Rebuild),
            (keep, Decision::Rebuild)
        ]
    );
    let refusal = events.iter().find_map(|e| match e {
        HostEvent::CallLegSync { leg, plugin, .. } if *leg == premium => Some(plugin.to_string()),
        _ => None,
    });
    assert_eq!(
        refusal.as_deref(),
        Some("20-rules"),
        "the refusal names its plugin"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, HostEvent::LinkDropped { link: l, .. } if *l == link))
    );
    assert_eq!(
        terminated(&events),
        [(premium, TerminationReason::RefusedByPolicy)]
    );
    // It was answered and talked: refused, it is still billed, once, from
    // its original answer to the drop.
    let premium_records: Vec<_> = world
        .cdrs()
        .into_iter()
        .filter(|r| r.leg == premium)
        .collect();
    let kinds: Vec<_> = premium_records.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [RecordKind::Start, RecordKind::End]);
    let end = &premium_records[1];
    assert_eq!(end.end_reason, Some(TerminationReason::RefusedByPolicy));
    assert_eq!(
        end.duration_ms,
        Some(end.end_time_ms.unwrap() - end.answer_time_ms)
    );

    // The drops were acknowledged before the resync finished.
    let list = sim.control("list").await.unwrap();
    assert!(!list.contains(&format!("leg {premium} ")), "{list}");
    assert!(!list.contains("link "), "{list}");
    assert!(list.contains(&format!("leg {other} Answered")), "{list}");
    assert_eq!(host.status().legs, 2);

    // The event log on disk has the same story, one JSON line per event.
    let log = std::fs::read_to_string(world.events_path()).unwrap();
    let refused_line = log
        .lines()
        .find(|l| l.contains(&format!("\"leg\":{premium},")) && l.contains("call-leg-sync"))
        .unwrap();
    let parsed: serde_json::Value = serde_json::from_str(refused_line).unwrap();
    assert_eq!(parsed["decision"], "refuse");
    assert_eq!(parsed["plugin"], "20-rules");
    assert!(parsed["time_ms"].as_u64().unwrap() > 0);
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_trap_across_a_host_restart_bills_each_call_once() {
    let mut world = World::new(None, &standard_plugins()).await;
    let (mut host, _) = world.host(1.0).await;
    let calls = world.reference_calls(&mut host).await;
    world.sim.kill().await.unwrap();
    host.wait_purged(WAIT).await.unwrap();
    // The host itself restarts while the engine is still away.
    host.stop().await.unwrap();
    let config = world.config(1.0);
    let mut host =
        legsync_lab::demo::harness::RunningHost::start(&config, world.decider(&config)).unwrap();

    world.sim.start_again().await.unwrap();
    host.next_resync(WAIT).await.unwrap();
    world.sim.ok(&format!("release {}", calls.c)).await.unwrap();
    host.events_until(
        WAIT,
        |e| matches!(e, HostEvent::CallLegTerminated { leg, .. } if *leg == calls.c),
    )
    .await
    .unwrap();

    let records: Vec<_> = world
        .cdrs()
        .into_iter()
        .filter(|r| r.leg == calls.c)
        .collect();
    let kinds: Vec<_> = records.iter().map(|r| r.kind).collect();
    assert_eq!(
        kinds,
        [
            RecordKind::Start,
            RecordKind::End,
            RecordKind::Resume,
            RecordKind::End
        ]
    );
    let (first, resume, last) = (&records[1], &records[2], &records[3]);
    assert_eq!(
        resume.resumes,
        Some(first.record),
        "the restarted host remembered the first END"
    );
    assert_eq!(
        last.supersedes,
        Some(first.record),
        "the final END replaces the first"
    );
    assert_eq!(last.answer_time_ms, first.answer_time_ms);
    assert!(
        last.duration_ms.unwrap() > first.duration_ms.unwrap(),
        "billed from the original answer"
    );
    assert_eq!(last.end_reason, Some(TerminationReason::Released));
    host.stop().await.unwrap();
}

/// Leg ids are not identities: an engine that gives a gone call's id to a
/// new call (here engine-sim's test-only `--reuse-ids`) never gets the new
/// call merged into the old one's bill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_leg_id_is_another_call_never_merged() {
    let mut world = World::new(None, &standard_plugins()).await;
    world.sim.set_extra_args(&[
        "--heartbeat-ms",
        "100",
        "--heartbeat-timeout-ms",
        "1000",
        "--reuse-ids",
    ]);
    let (mut host, _) = world.host(10.0).await;
    let keep = world
        .sim
        .ok_id("call SIP_CARRIER_A 15145550001 15145559001")
        .await
        .unwrap();
    let old = world
        .sim
        .ok_id("call SIP_CARRIER_A 15145550002 15145559002")
        .await
        .unwrap();
    host.wait_status(WAIT, |s| s.legs == 2).await.unwrap();
    host.stop().await.unwrap();
    // While no host runs, the old call ends and the engine restarts; its
    // next call takes the old call's id.
    world.sim.ok(&format!("release {old}")).await.unwrap();
    world.sim.restart().await.unwrap();
    let new = world
        .sim
        .ok_id("call ISDN_SPAN_1 15145550003 15145559003")
        .await
        .unwrap();
    assert_eq!(new, old, "the engine reused the id");

    let (host, events) = world.host(10.0).await;
    assert_eq!(
        synced(&events),
        [(keep, Decision::Rebuild), (new, Decision::Rebuild)],
        "the new call is offered like any unknown leg"
    );
    assert_eq!(
        terminated(&events),
        [(old, TerminationReason::HostLost)],
        "the old call ends"
    );
    let ledgers = legsync::cdr::bill::read_ledgers(&[world.cdr_path()]).unwrap();
    assert!(legsync::cdr::bill::check(&ledgers).is_empty());
    let calls = legsync::cdr::bill::bill(&legsync::cdr::bill::records(&ledgers));
    let on_id: Vec<_> = calls.iter().filter(|c| c.leg == old).collect();
    assert_eq!(on_id.len(), 2, "two calls on one id: {calls:#?}");
    assert_eq!(
        (on_id[0].nap.as_str(), on_id[0].state),
        ("SIP_CARRIER_A", legsync::cdr::bill::CallState::Closed)
    );
    assert_eq!(
        (on_id[1].nap.as_str(), on_id[1].state),
        ("ISDN_SPAN_1", legsync::cdr::bill::CallState::Open),
        "the new call is billed to its own NAP, from its own answer"
    );
    host.stop().await.unwrap();
}

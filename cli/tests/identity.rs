//! Leg ids are not identities: a scripted engine over real TCP reuses a
//! held leg's id for a new call, changes an answer time, answers a leg the
//! host never saw and releases another; the host never merges two calls,
//! never lets an event about one overwrite another, and drops nothing
//! silently. The ledger it writes bills each call once.

mod common;

use common::world::WAIT;
use futures_util::SinkExt;
use legsync::cdr::bill::{self, CallState};
use legsync::config::HostConfig;
use legsync::events::HostEvent;
use legsync::model::{CallLeg, Decision, LegState, TerminationReason};
use legsync::policy::{Decider, PolicyChain};
use legsync::protocol::{EngineEvent, EngineMessage, FrameCodec, HostMessage};
use legsync_lab::demo::harness::{RunningHost, synced, terminated};
use std::sync::Arc;
use tokio_util::codec::FramedWrite;

fn leg(id: u64, session: u64, offered: u64, answered: Option<u64>) -> CallLeg {
    let mut leg = common::leg(id, &format!("NAP_{session}"), "15145550000");
    leg.session_id = session;
    leg.offered_at_ms = offered;
    leg.answered_at_ms = answered;
    leg.state = if answered.is_some() {
        LegState::Answered
    } else {
        LegState::Ringing
    };
    leg
}

/// A host with no plugins, and the engine it connected to: a scripted one
/// written here, over real TCP.
async fn scripted(
    dir: &std::path::Path,
) -> (
    RunningHost,
    FramedWrite<tokio::net::TcpStream, FrameCodec<HostMessage, EngineMessage>>,
    HostConfig,
) {
    let (listener, mut config) = common::scripted_engine_config(dir).await;
    config.link.heartbeat_timeout_ms = 10_000;
    let host = RunningHost::start(
        &config,
        Decider::Chain(Arc::new(PolicyChain::new(Vec::new(), 1024))),
    )
    .unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let engine = FramedWrite::new(
        stream,
        FrameCodec::<HostMessage, EngineMessage>::new(1 << 20),
    );
    (host, engine, config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_contradict_a_held_call_end_it_and_never_merge() {
    let dir = tempfile::tempdir().unwrap();
    let (mut host, mut engine, config) = scripted(dir.path()).await;
    let first = leg(5, 5, 1_000, Some(2_000));
    for message in [
        common::engine_hello("scripted", 1),
        EngineMessage::SnapshotBegin { legs: 1, links: 0 },
        EngineMessage::SnapshotLegs(vec![first.clone()]),
        EngineMessage::SnapshotEnd,
    ] {
        engine.send(message).await.unwrap();
    }
    let resync = host.next_resync(WAIT).await.unwrap();
    assert_eq!(synced(&resync), [(5, Decision::Rebuild)]);

    let reused = leg(5, 99, 3_000, None);
    let answered = leg(5, 99, 3_000, Some(4_000));
    let reanswered = leg(5, 99, 3_000, Some(6_000));
    let stranger = leg(7, 7, 5_000, Some(5_500));
    for event in [
        // Another call under the held id.
        EngineEvent::LegOffered(reused),
        EngineEvent::LegAnswered(answered),
        // The same id and session, answered again at another time.
        EngineEvent::LegAnswered(reanswered),
        // A leg the host never saw, answered.
        EngineEvent::LegAnswered(stranger),
        // A leg the host never saw, released.
        EngineEvent::LegReleased(8),
        EngineEvent::LegReleased(5),
    ] {
        engine.send(EngineMessage::Event(event)).await.unwrap();
    }
    let events = host
        .events_until(WAIT, |e| {
            matches!(
                e,
                HostEvent::CallLegTerminated {
                    leg: 5,
                    reason: TerminationReason::Released
                }
            )
        })
        .await
        .unwrap();
    assert_eq!(
        terminated(&events),
        [
            (5, TerminationReason::Released),
            (5, TerminationReason::Replaced),
            (5, TerminationReason::Replaced),
        ],
        "each of the three calls on leg 5 ended once"
    );
    assert_eq!(
        synced(&events),
        [(5, Decision::Rebuild), (7, Decision::Rebuild)],
        "the re-answered call and the stranger were decided like unknown legs"
    );
    let status = host
        .wait_status(WAIT, |s| s.unknown_leg_events == 1)
        .await
        .unwrap();
    assert_eq!(status.legs, 1, "only the stranger is still up");

    let ledgers = bill::read_ledgers(&[&config.cdr]).unwrap();
    assert_eq!(bill::check(&ledgers), Vec::<String>::new());
    let calls = bill::bill(&bill::records(&ledgers));
    let summary: Vec<_> = calls
        .iter()
        .map(|c| (c.leg, c.session, c.answer_time_ms, c.nap.as_str(), c.state))
        .collect();
    assert_eq!(
        summary,
        [
            (5, 5, 2_000, "NAP_5", CallState::Closed),
            (5, 99, 4_000, "NAP_99", CallState::Closed),
            (7, 7, 5_500, "NAP_7", CallState::Open),
            (5, 99, 6_000, "NAP_99", CallState::Closed),
        ],
        "four calls, each billed once to its own party"
    );
    // The answer time corrected from 4,000 to 6,000: the first row ends
    // where the second begins, the call's time billed once.
    let rows: Vec<_> = calls.iter().filter(|c| c.session == 99).collect();
    assert_eq!(rows[0].end_time_ms, Some(6_000), "{rows:?}");
    assert_eq!(rows[0].duration_ms, Some(2_000));
    drop(engine);
    host.stop().await.unwrap();
}

/// An answer for a leg the host never held, refused by a plugin: the call
/// was answered, so it is billed (START and END) before the engine is told
/// to drop it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_answer_refused_by_a_plugin_is_billed_then_dropped() {
    use futures_util::StreamExt;
    use legsync::policy::{CompileCache, PolicyConfig, PolicyRuntime, loader};
    use legsync::protocol::Command;
    let dir = tempfile::tempdir().unwrap();
    let plugins = common::plugin_dir(&[(
        "20-rules",
        "rules",
        Some("[[rule]]\nname = \"no 7\"\naction = \"refuse\"\nnap = [\"NAP_7\"]\n"),
    )]);
    let runtime = PolicyRuntime::new(Some(CompileCache::new(
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compile-cache"),
    )))
    .unwrap();
    let chain = loader::load_dir(&runtime, plugins.path(), &PolicyConfig::default()).unwrap();
    let (listener, mut config) = common::scripted_engine_config(dir.path()).await;
    config.link.heartbeat_timeout_ms = 10_000;
    let mut host = RunningHost::start(&config, Decider::Chain(Arc::new(chain))).unwrap();

    let (stream, _) = listener.accept().await.unwrap();
    let mut engine = tokio_util::codec::Framed::new(
        stream,
        FrameCodec::<HostMessage, EngineMessage>::new(1 << 20),
    );
    for message in [
        common::engine_hello("scripted", 1),
        EngineMessage::SnapshotBegin { legs: 0, links: 0 },
        EngineMessage::SnapshotEnd,
        EngineMessage::Event(EngineEvent::LegAnswered(leg(7, 7, 5_000, Some(5_500)))),
    ] {
        engine.send(message).await.unwrap();
    }
    let events = host
        .events_until(WAIT, |e| {
            matches!(e, HostEvent::CallLegTerminated { leg: 7, .. })
        })
        .await
        .unwrap();
    assert_eq!(synced(&events), [(7, Decision::Refuse)]);
    assert_eq!(
        terminated(&events),
        [(7, TerminationReason::RefusedByPolicy)]
    );
    // The ledger has the call, START and END, before the drop goes out.
    let records = legsync::cdr::CdrWriter::read_all(&config.cdr).unwrap();
    use legsync::cdr::record::RecordKind;
    let kinds: Vec<_> = records
        .iter()
        .filter(|r| r.kind.is_call())
        .map(|r| (r.leg, r.kind))
        .collect();
    assert_eq!(kinds, [(7, RecordKind::Start), (7, RecordKind::End)]);
    let end = records.iter().find(|r| r.kind == RecordKind::End).unwrap();
    assert_eq!(end.duration_ms, Some(end.end_time_ms.unwrap() - 5_500));
    let dropped = tokio::time::timeout(WAIT, async {
        loop {
            match engine.next().await {
                Some(Ok(HostMessage::Command { command, .. })) => return command,
                Some(Ok(_)) => continue,
                other => panic!("the host closed the link: {other:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(dropped, Command::DropLeg(7));
    host.stop().await.unwrap();
}

/// A snapshot with duplicate legs, a self-link, a leg in two links and links
/// to legs it did not list: each has one defined outcome, is counted in the
/// resync summary, and nothing is decided twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_anomalies_have_defined_outcomes_and_are_counted() {
    use legsync::model::Link;
    let dir = tempfile::tempdir().unwrap();
    let (mut host, mut engine, config) = scripted(dir.path()).await;
    let answered = |id| leg(id, id, 1_000, Some(2_000));
    let link = |id, leg_a, leg_b| Link { id, leg_a, leg_b };
    for message in [
        common::engine_hello("scripted", 1),
        EngineMessage::SnapshotBegin { legs: 6, links: 5 },
        // Leg 2 twice, leg 3 three times.
        EngineMessage::SnapshotLegs(vec![answered(1), answered(2), answered(2), answered(3)]),
        EngineMessage::SnapshotLegs(vec![answered(3), answered(3), answered(4)]),
        EngineMessage::SnapshotLinks(vec![
            link(10, 1, 2),  // offered
            link(11, 3, 3),  // a self-link
            link(12, 2, 4),  // leg 2 is in link 10 already
            link(13, 4, 99), // leg 99 was never listed
            link(14, 3, 4),  // offered
        ]),
        EngineMessage::SnapshotEnd,
    ] {
        engine.send(message).await.unwrap();
    }
    let events = host.next_resync(WAIT).await.unwrap();
    let mut decided: Vec<u64> = synced(&events).iter().map(|(leg, _)| *leg).collect();
    decided.sort();
    assert_eq!(decided, [1, 2, 3, 4], "each listed leg decided once");
    let Some(HostEvent::ResyncDone(summary)) = events.last() else {
        panic!("no summary")
    };
    let a = summary.anomalies;
    assert_eq!(
        (
            a.duplicate_legs,
            a.self_links,
            a.legs_in_two_links,
            a.links_to_unlisted_legs
        ),
        (3, 1, 1, 1),
        "{a:?}"
    );
    assert_eq!(summary.links_rebuilt, 2, "links 10 and 14");
    let status = host.status();
    assert_eq!((status.legs, status.links), (4, 2));

    // Warm: the engine comes back listing every leg twice. The copies are
    // duplicates, not more known legs.
    drop(engine);
    let listener = tokio::net::TcpListener::bind(config.engine.as_deref().unwrap())
        .await
        .unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let mut engine = FramedWrite::new(
        stream,
        FrameCodec::<HostMessage, EngineMessage>::new(1 << 20),
    );
    for message in [
        common::engine_hello("scripted", 2),
        EngineMessage::SnapshotBegin { legs: 8, links: 0 },
        EngineMessage::SnapshotLegs((1..=4).chain(1..=4).map(answered).collect()),
        EngineMessage::SnapshotEnd,
    ] {
        engine.send(message).await.unwrap();
    }
    let events = host.next_resync(WAIT).await.unwrap();
    let Some(HostEvent::ResyncDone(summary)) = events.last() else {
        panic!("no summary")
    };
    assert_eq!(
        (summary.known, summary.anomalies.duplicate_legs),
        (4, 4),
        "{summary:?}"
    );
    host.stop().await.unwrap();
}

/// The hello of a scripted engine `scripted` under controller `epoch`.
fn hello_under(epoch: u64) -> EngineMessage {
    EngineMessage::Hello {
        protocol: legsync::protocol::PROTOCOL_VERSION,
        boot_id: 1,
        engine: "scripted".into(),
        epoch,
    }
}

/// An engine whose controller epoch goes back (a hostile engine, or one
/// restarted without its epoch store) is refused with the reason, before a
/// record is written under it, by the running host and by a host started
/// later on the same ledger; a higher epoch is accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_whose_epoch_goes_back_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (mut host, mut engine, config) = scripted(dir.path()).await;
    let call = leg(5, 5, 1_000, Some(2_000));
    for message in [
        hello_under(50),
        EngineMessage::SnapshotBegin { legs: 1, links: 0 },
        EngineMessage::SnapshotLegs(vec![call.clone()]),
        EngineMessage::SnapshotEnd,
    ] {
        engine.send(message).await.unwrap();
    }
    host.next_resync(WAIT).await.unwrap();
    drop(engine);
    let listener = tokio::net::TcpListener::bind(config.engine.as_deref().unwrap())
        .await
        .unwrap();
    let refused = async |host: &mut RunningHost, epoch: u64| {
        let (stream, _) = listener.accept().await.unwrap();
        let mut engine = FramedWrite::new(
            stream,
            FrameCodec::<HostMessage, EngineMessage>::new(1 << 20),
        );
        engine.send(hello_under(epoch)).await.unwrap();
        let events = host
            .events_until(WAIT, |e| {
                matches!(e, HostEvent::Link { detail: Some(d), .. } if d.contains("offers controller epoch"))
            })
            .await
            .unwrap();
        let detail = events
            .iter()
            .find_map(|e| match e {
                HostEvent::Link {
                    detail: Some(d), ..
                } if d.contains("epoch") => Some(d.clone()),
                _ => None,
            })
            .unwrap();
        assert!(
            detail.contains(&format!("engine `scripted` offers controller epoch {epoch}, but this ledger already has records under epoch 50")),
            "{detail}"
        );
    };
    refused(&mut host, 49).await;
    host.stop().await.unwrap();
    let records = legsync::cdr::CdrWriter::read_all(&config.cdr).unwrap();
    assert!(
        records.iter().all(|r| r.epoch == 50),
        "nothing under a lower epoch"
    );

    // A host started later on the same ledger remembers the epoch.
    let mut host = RunningHost::start(
        &config,
        Decider::Chain(Arc::new(PolicyChain::new(Vec::new(), 1024))),
    )
    .unwrap();
    refused(&mut host, 7).await;
    let (stream, _) = listener.accept().await.unwrap();
    let mut engine = FramedWrite::new(
        stream,
        FrameCodec::<HostMessage, EngineMessage>::new(1 << 20),
    );
    for message in [
        hello_under(51),
        EngineMessage::SnapshotBegin { legs: 1, links: 0 },
        EngineMessage::SnapshotLegs(vec![call]),
        EngineMessage::SnapshotEnd,
    ] {
        engine.send(message).await.unwrap();
    }
    let resync = host.next_resync(WAIT).await.unwrap();
    assert_eq!(
        synced(&resync),
        [(5, Decision::Rebuild)],
        "a cold host decides it again"
    );
    host.stop().await.unwrap();
    let last = legsync::cdr::CdrWriter::read_all(&config.cdr)
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        (last.kind, last.epoch, last.calls),
        (legsync::cdr::record::RecordKind::Carry, 51, Some(1))
    );
}

/// An answer the engine reports after releasing the leg (events out of
/// order) is not a new call: nothing is decided or billed for it, whether
/// the leg was answered before its release or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_after_the_release_bills_no_ghost_call() {
    let dir = tempfile::tempdir().unwrap();
    let (mut host, mut engine, config) = scripted(dir.path()).await;
    for message in [
        common::engine_hello("scripted", 1),
        EngineMessage::SnapshotBegin { legs: 0, links: 0 },
        EngineMessage::SnapshotEnd,
    ] {
        engine.send(message).await.unwrap();
    }
    host.next_resync(WAIT).await.unwrap();
    let ringing = leg(6, 6, 1_000, None);
    let answered = leg(7, 7, 1_000, Some(1_500));
    let marker = leg(9, 9, 1_000, Some(1_900));
    for event in [
        EngineEvent::LegOffered(ringing.clone()),
        EngineEvent::LegReleased(6),
        EngineEvent::LegAnswered(leg(6, 6, 1_000, Some(2_000))),
        EngineEvent::LegOffered(leg(7, 7, 1_000, None)),
        EngineEvent::LegAnswered(answered.clone()),
        EngineEvent::LegReleased(7),
        EngineEvent::LegAnswered(answered),
        // Then a call that is answered for real, as a marker.
        EngineEvent::LegAnswered(marker),
    ] {
        engine.send(EngineMessage::Event(event)).await.unwrap();
    }
    let events = host
        .events_until(WAIT, |e| matches!(e, HostEvent::CallLegSync { leg: 9, .. }))
        .await
        .unwrap();
    assert_eq!(
        synced(&events),
        [(9, Decision::Rebuild)],
        "only the marker was decided"
    );
    let status = host.wait_status(WAIT, |s| s.legs == 1).await.unwrap();
    assert_eq!(status.legs, 1);
    let ledgers = bill::read_ledgers(&[&config.cdr]).unwrap();
    let calls = bill::bill(&bill::records(&ledgers));
    let summary: Vec<_> = calls.iter().map(|c| (c.leg, c.state)).collect();
    assert_eq!(
        summary,
        [(7, CallState::Closed), (9, CallState::Open)],
        "7 billed once to its release; no ghost of 6 or 7"
    );
    drop(engine);
    host.stop().await.unwrap();
}

/// A real `legsync run` process (plugins from `plugins`, if any) against an
/// engine scripted here: the process, the engine's end of the link (the
/// host's hello read), the ledger and the host's log.
async fn scripted_process(
    dir: &std::path::Path,
    plugins: Option<&std::path::Path>,
) -> (
    legsync_lab::demo::host_process::HostProcess,
    tokio_util::codec::Framed<tokio::net::TcpStream, FrameCodec<HostMessage, EngineMessage>>,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    use futures_util::StreamExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ledger = dir.join("cdr.jsonl");
    let config = dir.join("legsync.toml");
    let policy = plugins.map_or(String::new(), |plugins| {
        format!(
            "[policy]\nplugin_dir = \"{}\"\ncache_dir = \"{}\"\n",
            plugins.display(),
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join("compile-cache")
                .display()
        )
    });
    std::fs::write(
        &config,
        format!(
            "engine = \"{}\"\nname = \"h\"\nadmin = \"off\"\ncdr = \"{}\"\n[link]\nheartbeat_timeout_ms = 10000\n{policy}",
            listener.local_addr().unwrap(),
            ledger.display(),
        ),
    )
    .unwrap();
    let log = dir.join("host.log");
    let host = legsync_lab::demo::host_process::HostProcess::spawn(
        std::path::Path::new(env!("CARGO_BIN_EXE_legsync")),
        &config,
        &log,
    )
    .unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let mut engine = tokio_util::codec::Framed::new(
        stream,
        FrameCodec::<HostMessage, EngineMessage>::new(1 << 20),
    );
    let _hello = engine.next().await.unwrap().unwrap();
    (host, engine, ledger, log)
}

/// A real `legsync run` against a scripted engine: the release of a leg the
/// host refused (and asked the engine to drop) is expected, not an event
/// about an unknown leg; fifty events about legs the host never held are
/// counted, and logged once with their count, not fifty times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_about_unknown_legs_are_summarized_and_refused_releases_expected() {
    use futures_util::StreamExt;
    use legsync::protocol::{Command, CommandResult};
    use legsync_lab::demo::host_process::{count_lines, wait_for_count};
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins.d");
    std::fs::create_dir(&plugins).unwrap();
    common::install(
        &plugins,
        "20-rules",
        "rules",
        Some("[[rule]]\nname = \"no bad\"\naction = \"refuse\"\nnap = [\"NAP_BAD\"]\n"),
    );
    let (mut host, mut engine, ledger, log) = scripted_process(dir.path(), Some(&plugins)).await;
    let mut bad = leg(6, 6, 1_000, Some(2_000));
    bad.nap = "NAP_BAD".into();
    for message in [
        common::engine_hello("scripted", 1),
        EngineMessage::SnapshotBegin { legs: 2, links: 0 },
        EngineMessage::SnapshotLegs(vec![leg(5, 5, 1_000, Some(2_000)), bad]),
        EngineMessage::SnapshotEnd,
    ] {
        engine.send(message).await.unwrap();
    }
    // The refused leg's drop, acknowledged, and its release.
    let id = loop {
        match tokio::time::timeout(WAIT, engine.next()).await.unwrap() {
            Some(Ok(HostMessage::Command {
                id,
                command: Command::DropLeg(6),
                ..
            })) => break id,
            Some(Ok(_)) => continue,
            other => panic!("the host closed the link: {other:?}"),
        }
    };
    engine
        .send(EngineMessage::Ack {
            command: id,
            result: CommandResult::Done,
        })
        .await
        .unwrap();
    engine
        .send(EngineMessage::Event(EngineEvent::LegReleased(6)))
        .await
        .unwrap();
    for unknown in 100..150 {
        engine
            .send(EngineMessage::Event(EngineEvent::LegReleased(unknown)))
            .await
            .unwrap();
    }
    // The held call's release, last: once its END is in, all came through.
    engine
        .send(EngineMessage::Event(EngineEvent::LegReleased(5)))
        .await
        .unwrap();
    wait_for_count(&ledger, "\"kind\":\"end\"", 2, WAIT)
        .await
        .unwrap();
    host.stop().await.unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        count_lines(&log, "legs this host does not hold"),
        1,
        "one line for fifty events: {said}"
    );
    assert!(
        said.contains("events=1 "),
        "the first is reported at once: {said}"
    );
    assert!(
        !said.contains("leg 6 released"),
        "the refused leg's release is expected: {said}"
    );
}

/// An engine name longer than a name (it would be copied into every ledger
/// record) is refused with the reason, before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_name_past_the_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut host, mut engine, ledger, log) = scripted_process(dir.path(), None).await;
    engine
        .send(EngineMessage::Hello {
            protocol: legsync::protocol::PROTOCOL_VERSION,
            boot_id: 1,
            engine: "g".repeat(100_000),
            epoch: 1,
        })
        .await
        .unwrap();
    legsync_lab::demo::host_process::wait_for_count(
        &log,
        "the engine's name is 100000 bytes long",
        1,
        WAIT,
    )
    .await
    .unwrap();
    host.stop().await.unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        !said.contains(&"g".repeat(300)),
        "the name is not logged whole"
    );
    assert!(
        legsync::cdr::CdrWriter::read_all(&ledger)
            .unwrap_or_default()
            .is_empty()
    );
}

/// The host's resident memory (VmRSS), in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// A 12-byte `SnapshotBegin` announcing four million legs (the default
/// cap) used to take the host from 20 MiB to 1.3 GiB before a single leg
/// arrived: memory now follows the legs that arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_follows_the_legs_that_arrive_not_the_count_announced() {
    use legsync_lab::demo::host_process::wait_for_count;
    let dir = tempfile::tempdir().unwrap();
    let (mut host, mut engine, _, log) = scripted_process(dir.path(), None).await;
    for message in [
        common::engine_hello("scripted", 1),
        EngineMessage::SnapshotBegin {
            legs: 4_000_000,
            links: 0,
        },
        EngineMessage::SnapshotLegs(vec![leg(5, 5, 1_000, Some(2_000))]),
        EngineMessage::SnapshotEnd,
    ] {
        engine.send(message).await.unwrap();
    }
    wait_for_count(&log, "resync done", 1, WAIT).await.unwrap();
    let pid = host.pid().unwrap();
    // Tables are populated in the background: the peak over a while.
    let mut peak = 0;
    for _ in 0..20 {
        peak = peak.max(rss_bytes(pid));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        peak < 300 << 20,
        "{} MiB resident for one leg held",
        peak >> 20
    );
    host.stop().await.unwrap();
}

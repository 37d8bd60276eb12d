//! Link faults: a frozen engine (SIGSTOP, no FIN), a peer sending garbage,
//! and reconnect backoff, all over real TCP.

mod common;

use bytes::BytesMut;
use common::world::{WAIT, World};
use futures_util::SinkExt;
use legsync::config::HostConfig;
use legsync::events::{HostEvent, LinkState};
use legsync::policy::{Decider, PolicyChain};
use legsync::protocol::{EngineMessage, FrameCodec, HostMessage, PROTOCOL_VERSION};
use legsync_lab::demo::harness::RunningHost;
use legsync_lab::demo::harness::{synced, terminated};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Encoder, FramedWrite};

fn disconnected(e: &HostEvent) -> Option<String> {
    match e {
        HostEvent::Link {
            state: LinkState::Disconnected,
            detail,
            ..
        } => Some(detail.clone().unwrap_or_default()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_engine_is_detected_by_missing_heartbeats() {
    let world = World::new(None, &[("10-accept-all", "accept-all", None)]).await;
    let (mut host, _) = world.host(10.0).await;
    let calls = world.reference_calls(&mut host).await;

    world.sim.freeze().unwrap();
    let frozen_at = Instant::now();
    let events = host
        .events_until(WAIT, |e| disconnected(e).is_some())
        .await
        .unwrap();
    let detected_after = frozen_at.elapsed();
    let detail = events.iter().find_map(disconnected).unwrap();
    assert!(detail.contains("heartbeat lost"), "{detail}");
    // The configured timeout is 600 ms.
    assert!(
        detected_after >= Duration::from_millis(500),
        "{detected_after:?}"
    );
    assert!(
        detected_after < Duration::from_secs(3),
        "{detected_after:?}"
    );
    assert_eq!(
        host.status().legs,
        5,
        "contexts stay valid during the grace time"
    );

    world.sim.thaw().unwrap();
    let events = host.next_resync(WAIT).await.unwrap();
    assert!(synced(&events).is_empty(), "C, D, E stay known");
    let ended: Vec<u64> = terminated(&events).iter().map(|(leg, _)| *leg).collect();
    assert_eq!(
        ended,
        [calls.a, calls.b],
        "the engine dropped the transient legs while cut off"
    );
    host.stop().await.unwrap();
}

/// A host with no plugins pointed at `addr`, with fast retries.
fn host_at(addr: std::net::SocketAddr, dir: &std::path::Path) -> RunningHost {
    host_with_grace(addr, dir, 10.0)
}

fn host_with_grace(addr: std::net::SocketAddr, dir: &std::path::Path, grace: f64) -> RunningHost {
    let mut config = HostConfig {
        engine: Some(addr.to_string()),
        grace_secs: grace,
        ..HostConfig::default()
    };
    config.cdr = dir.join("cdr.jsonl");
    config.link.heartbeat_ms = 100;
    config.link.heartbeat_timeout_ms = 600;
    config.link.backoff_base_ms = 50;
    config.link.backoff_max_ms = 400;
    config.link.max_frame_bytes = 64 * 1024;
    RunningHost::start(
        &config,
        Decider::Chain(Arc::new(PolicyChain::new(Vec::new(), 1024))),
    )
    .unwrap()
}

/// Accepts one host, answers its hello properly, then sends `bytes`.
async fn hello_then(listener: &TcpListener, bytes: &[u8]) -> TcpStream {
    let (mut stream, _) = listener.accept().await.unwrap();
    let mut hello = [0u8; 5];
    stream.read_exact(&mut hello).await.unwrap();
    let mut frame = BytesMut::new();
    FrameCodec::<HostMessage, EngineMessage>::new(1 << 20)
        .encode(common::engine_hello("garbage", 1), &mut frame)
        .unwrap();
    frame.extend_from_slice(bytes);
    stream.write_all(&frame).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_the_engine_closes_the_link_and_the_host_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut host = host_at(listener.local_addr().unwrap(), dir.path());

    let cases: [(&[u8], &str); 4] = [
        (
            &[0, 0, 0, 3, PROTOCOL_VERSION, 0xff, 0xff],
            "malformed frame",
        ),
        (&[0x7f, 0xff, 0xff, 0xff], "exceeds the maximum of 65536"),
        (&[0, 0, 0, 2, 9, 0], "protocol version 9"),
        (&[0, 0, 0, 0], "empty frame"),
    ];
    for (bytes, expected) in cases {
        let _peer = hello_then(&listener, bytes).await;
        let events = host
            .events_until(WAIT, |e| disconnected(e).is_some())
            .await
            .unwrap();
        let detail = events.iter().find_map(disconnected).unwrap();
        assert!(
            detail.contains(expected),
            "expected `{expected}` in `{detail}`"
        );
    }
    // And a well-behaved engine afterwards gets a normal resync.
    let (stream, _) = listener.accept().await.unwrap();
    let mut engine = FramedWrite::new(
        stream,
        FrameCodec::<HostMessage, EngineMessage>::new(1 << 20),
    );
    engine.send(common::engine_hello("good", 2)).await.unwrap();
    engine
        .send(EngineMessage::SnapshotBegin { legs: 0, links: 0 })
        .await
        .unwrap();
    engine.send(EngineMessage::SnapshotEnd).await.unwrap();
    host.next_resync(WAIT).await.unwrap();
    assert_eq!(host.status().link, Some(LinkState::Connected));
    drop(engine);
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_backoff_doubles_up_to_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = host_at(listener.local_addr().unwrap(), dir.path());
    let mut accepted = Vec::new();
    for _ in 0..8 {
        let (stream, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .unwrap()
            .unwrap();
        accepted.push(Instant::now());
        drop(stream); // closes at once: the hello goes unanswered
    }
    let gaps: Vec<u128> = accepted
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    let expected = [50u128, 100, 200, 400, 400, 400, 400];
    for (gap, want) in gaps.iter().zip(expected) {
        assert!(
            *gap >= want * 9 / 10,
            "gaps {gaps:?} should follow {expected:?}"
        );
        assert!(
            *gap < want + 300,
            "gaps {gaps:?} should follow {expected:?}"
        );
    }
    host.stop().await.unwrap();
}

/// `engine` pointed at a web server: the host names the mismatch in one
/// line and backs off instead of looping; a host name resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_speak_legsync_is_named_and_backed_off() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let config = dir.path().join("legsync.toml");
    std::fs::write(
        &config,
        format!(
            "engine = \"localhost:{port}\"\nadmin = \"off\"\ncdr = \"{}\"\n\
             [link]\nbackoff_base_ms = 100\nbackoff_max_ms = 5000\n",
            dir.path().join("cdr.jsonl").display()
        ),
    )
    .unwrap();
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_legsync"));
    let log = dir.path().join("host.log");
    let mut host = legsync_lab::demo::host_process::HostProcess::spawn(exe, &config, &log).unwrap();
    // A web server: reads the request, answers 400, closes.
    let mut arrivals = Vec::new();
    while arrivals.len() < 4 {
        let (mut stream, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("the host retries")
            .unwrap();
        arrivals.push(Instant::now());
        let mut request = [0u8; 256];
        let _ = stream.read(&mut request).await;
        let _ = stream
            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await;
    }
    // Backoff doubles from 100 ms: 100 + 200 + 400 between four attempts.
    let spread = arrivals[3] - arrivals[0];
    assert!(spread >= Duration::from_millis(650), "{spread:?}");
    host.stop().await.unwrap();
    let text = host.log();
    let named = text
        .lines()
        .find(|l| l.contains("does not speak the legsync protocol"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        named.contains("it sent `HTTP/1.1 400 Bad Request`"),
        "{named}"
    );
    assert!(!text.contains("exceeds the maximum"), "{text}");
}

/// A snapshot announcing u64::MAX legs (12 bytes on the wire) used to abort
/// the host on `capacity overflow`, and ten million to take gigabytes: the
/// count is a hint, capped by `max_legs`; past it the link is dropped with
/// the reason, and the host lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_snapshot_count_is_refused_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut host = host_at(listener.local_addr().unwrap(), dir.path());
    for legs in [u64::MAX, 1 << 40, 10_000_000] {
        let mut frame = BytesMut::new();
        FrameCodec::<HostMessage, EngineMessage>::new(1 << 20)
            .encode(EngineMessage::SnapshotBegin { legs, links: 0 }, &mut frame)
            .unwrap();
        let _peer = hello_then(&listener, &frame).await;
        let events = host
            .events_until(WAIT, |e| disconnected(e).is_some())
            .await
            .unwrap();
        let detail = events.iter().find_map(disconnected).unwrap();
        assert!(
            detail.contains(&format!("announces a snapshot of {legs} legs"))
                && detail.contains("above max_legs (4000000)"),
            "{detail}"
        );
    }
    host.stop().await.unwrap();
}

/// An engine that opens a snapshot and then only sends heartbeats (or never
/// acknowledges a drop) used to hold the host in "resyncing": the grace
/// deadline passed 17 s late and a stop took as long. The grace deadline now
/// holds through a stalled resync, and a stop is prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_resync_holds_neither_the_grace_deadline_nor_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut host = host_with_grace(listener.local_addr().unwrap(), dir.path(), 1.0);
    let hello = |boot_id| common::engine_hello("stalling", boot_id);
    // A normal first resync: two calls held.
    let (stream, _) = listener.accept().await.unwrap();
    let mut engine = FramedWrite::new(
        stream,
        FrameCodec::<HostMessage, EngineMessage>::new(1 << 20),
    );
    for message in [
        hello(1),
        EngineMessage::SnapshotBegin { legs: 2, links: 0 },
        EngineMessage::SnapshotLegs(vec![
            common::leg(1, "SIP_A", "1"),
            common::leg(2, "SIP_A", "2"),
        ]),
        EngineMessage::SnapshotEnd,
    ] {
        engine.send(message).await.unwrap();
    }
    host.next_resync(WAIT).await.unwrap();
    // The link drops: the grace timer starts now.
    drop(engine);
    let lost_at = Instant::now();
    // The engine comes back, opens a snapshot, and stalls (heartbeats only).
    let stall = |stream: TcpStream, boot_id: u64| async move {
        let mut engine = FramedWrite::new(
            stream,
            FrameCodec::<HostMessage, EngineMessage>::new(1 << 20),
        );
        engine.send(hello(boot_id)).await?;
        engine
            .send(EngineMessage::SnapshotBegin { legs: 5, links: 0 })
            .await?;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            engine.send(EngineMessage::Heartbeat).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), legsync::protocol::ProtocolError>(())
    };
    let (stream, _) = listener.accept().await.unwrap();
    let stalled = tokio::spawn(stall(stream, 2));
    let events = host.wait_purged(WAIT).await.unwrap();
    let purged_after = lost_at.elapsed();
    assert!(
        purged_after < Duration::from_millis(2_500),
        "purged {purged_after:?} after the loss, grace 1 s"
    );
    let ended: Vec<_> = terminated(&events);
    assert!(
        ended.contains(&(1, legsync::model::TerminationReason::GraceExpired)),
        "{ended:?}"
    );
    let details: Vec<String> = events.iter().filter_map(disconnected).collect();
    assert!(
        details
            .iter()
            .any(|d| d.contains("still running at the grace deadline")),
        "{details:?}"
    );
    stalled.abort();

    // Stalled again: a stop does not wait for the resync.
    let (stream, _) = listener.accept().await.unwrap();
    let _stalled = tokio::spawn(stall(stream, 3));
    host.wait_status(WAIT, |s| s.link == Some(LinkState::Resyncing))
        .await
        .unwrap();
    let stopping = Instant::now();
    host.stop().await.unwrap();
    assert!(
        stopping.elapsed() < Duration::from_secs(1),
        "{:?}",
        stopping.elapsed()
    );
}

/// A plugin that takes a second per batch to hear of endings (legal, under
/// its deadline) used to hold the purge: the grace timer's destruction of
/// 4,000 contexts waited ~4 s for its notices. The purge now completes at
/// the deadline; the notices follow, and the next resync waits for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_termination_notices_do_not_hold_up_the_purge() {
    let world = World::new(Some(4_000), &[("50-slow", "fixture-slow-notify", None)]).await;
    let mut config = world.config(1.0);
    config.policy.plugins.insert(
        "50-slow".into(),
        toml::from_str("deadline_ms = 5000").unwrap(),
    );
    let mut host = RunningHost::start(&config, world.decider(&config)).unwrap();
    host.next_resync(WAIT).await.unwrap();
    assert_eq!(host.status().legs, 4_000);
    world.sim.ok("partition 600000").await.unwrap();
    let cut = Instant::now();
    host.wait_purged(WAIT).await.unwrap();
    let purged_after = cut.elapsed();
    // Detection (600 ms) + grace (1 s) + ENDs; not + 4 s of notices.
    assert!(
        purged_after < Duration::from_millis(2_800),
        "purged {purged_after:?} after the cut"
    );
    host.stop().await.unwrap();
}

/// The summary of the last resync among `events`.
fn last_summary(events: &[HostEvent]) -> &legsync::events::ResyncSummary {
    events
        .iter()
        .rev()
        .find_map(|e| match e {
            HostEvent::ResyncDone(summary) => Some(&**summary),
            _ => None,
        })
        .expect("a resync summary")
}

/// A plugin that decides slowly but legally (1 ms a leg, under its
/// deadline) used to hold a resync for as long as it liked (85 s for a
/// million legs at 85 ms a batch). The chain's time for decisions is
/// bounded: past it, the failure policy decides the rest, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_chain_gets_a_time_budget_for_decisions() {
    let world = World::new(
        Some(6_000),
        &[("50-slow", "fixture-slow-notify", Some("slow_decisions"))],
    )
    .await;
    let mut config = world.config(10.0);
    config.link.decision_budget_ms = 500;
    config.policy.plugins.insert(
        "50-slow".into(),
        toml::from_str("deadline_ms = 5000").unwrap(),
    );
    let mut host = RunningHost::start(&config, world.decider(&config)).unwrap();
    let events = host.next_resync(WAIT).await.unwrap();
    let summary = last_summary(&events);
    assert!(summary.decided_by_budget > 0, "{summary:?}");
    assert_eq!(summary.rebuilt, 6_000, "fail-open: every call kept");
    assert!(
        summary.millis < 4_500,
        "{} ms for 6,000 legs at 1 ms each, with a 500 ms budget",
        summary.millis
    );
    let budget_verdicts = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                HostEvent::CallLegSync {
                    failure: Some(legsync::policy::FailureKind::ResyncBudget),
                    ..
                }
            )
        })
        .count() as u64;
    assert_eq!(budget_verdicts, summary.decided_by_budget);
    host.stop().await.unwrap();
}

/// A plugin that pays 60 ms a call whatever the batch (legal: under its
/// 100 ms deadline) used to be fed one leg a call (its cost per leg looked
/// huge), so a resync never ended. Its batches stay full, and the resync
/// ends at its budget with most legs decided by the plugin itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_slow_per_call_keeps_full_batches_and_the_resync_ends_at_its_budget() {
    let world = World::new(
        Some(50_000),
        &[("50-slow", "fixture-slow-notify", Some("slow_calls"))],
    )
    .await;
    let mut config = world.config(10.0);
    // From the hello: the snapshot's arrival takes part of it.
    config.link.decision_budget_ms = 2_000;
    let decider = world.decider(&config);
    let legsync::policy::Decider::Chain(chain) = &decider else {
        panic!("a plugin chain")
    };
    let chain = chain.clone();
    let mut host = RunningHost::start(&config, decider).unwrap();
    let events = host.next_resync(WAIT).await.unwrap();
    let summary = last_summary(&events);
    // 50,000 legs in full batches of 1,024 take ~49 calls (2.9 s): the
    // 2 s budget ends the plugin's part after at most 33 of them.
    assert!(summary.decided_by_budget > 0, "{summary:?}");
    assert_eq!(summary.rebuilt, 50_000, "fail-open: every call kept");
    let by_plugin = events
        .iter()
        .filter(|e| matches!(e, HostEvent::CallLegSync { failure: None, .. }))
        .count();
    // Fed one leg a call, it would have decided a few dozen legs in the
    // budget; in full batches, tens of thousands.
    assert!(
        by_plugin >= 10 * 1_024,
        "{by_plugin} legs decided by the plugin itself: its batches shrank ({:?})",
        chain.plugins()[0].stats()
    );
    host.stop().await.unwrap();
}

/// An engine that offers legs, answers legs and links them without end:
/// the table never grows past `link.max_legs` (new legs are refused at the
/// engine; an answered one is billed, as any refused call), and links past
/// one per leg replace each other instead of piling up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_never_grow_the_table_past_its_bound() {
    use futures_util::StreamExt;
    use legsync::model::{Decision, Link};
    use legsync::protocol::{Command, EngineEvent};
    let dir = tempfile::tempdir().unwrap();
    let (listener, mut config) = common::scripted_engine_config(dir.path()).await;
    config.link.max_legs = 10;
    // The scripted engine sends no heartbeats.
    config.link.heartbeat_timeout_ms = 60_000;
    let mut host = RunningHost::start(
        &config,
        Decider::Chain(Arc::new(PolicyChain::new(Vec::new(), 1024))),
    )
    .unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let mut engine = tokio_util::codec::Framed::new(
        stream,
        FrameCodec::<HostMessage, EngineMessage>::new(1 << 20),
    );
    assert!(matches!(
        engine.next().await,
        Some(Ok(HostMessage::Hello { .. }))
    ));
    let answered = |id| common::leg(id, "SIP_A", "15145550000");
    let ringing = |id| {
        let mut leg = answered(id);
        leg.answered_at_ms = None;
        leg.state = legsync::model::LegState::Ringing;
        leg
    };
    for message in [
        common::engine_hello("hostile", 1),
        EngineMessage::SnapshotBegin { legs: 2, links: 0 },
        EngineMessage::SnapshotLegs(vec![answered(1), answered(2)]),
        EngineMessage::SnapshotEnd,
    ] {
        engine.send(message).await.unwrap();
    }
    host.next_resync(WAIT).await.unwrap();
    for id in 100..120 {
        engine
            .send(EngineMessage::Event(EngineEvent::LegOffered(ringing(id))))
            .await
            .unwrap();
    }
    engine
        .send(EngineMessage::Event(EngineEvent::LegAnswered(answered(
            200,
        ))))
        .await
        .unwrap();
    for id in 1_000..2_000 {
        let link = Link {
            id,
            leg_a: 1,
            leg_b: 2,
        };
        engine
            .send(EngineMessage::Event(EngineEvent::LinkCreated(link)))
            .await
            .unwrap();
    }
    // Legs 108 to 119 and 200 come back as drops.
    let mut dropped = Vec::new();
    while dropped.len() < 13 {
        let frame = tokio::time::timeout(WAIT, engine.next()).await;
        match frame.expect("13 drops within the wait") {
            Some(Ok(HostMessage::Command {
                command: Command::DropLeg(id),
                ..
            })) => dropped.push(id),
            Some(Ok(_)) => {}
            other => panic!("the host went away: {other:?}"),
        }
    }
    let mut expected: Vec<u64> = (108..120).collect();
    expected.push(200);
    assert_eq!(dropped, expected);
    let status = host.wait_status(WAIT, |s| s.links == 1).await.unwrap();
    assert_eq!(status.legs, 10, "the table stops at max_legs");
    // The answered leg refused for room was billed: it ran.
    let records = legsync::cdr::CdrWriter::read_all(&config.cdr).unwrap();
    let billed: Vec<_> = records
        .iter()
        .filter(|r| r.leg == 200)
        .map(|r| r.kind)
        .collect();
    assert_eq!(
        billed,
        [
            legsync::cdr::record::RecordKind::Start,
            legsync::cdr::record::RecordKind::End
        ]
    );
    let decided = host
        .events_until(WAIT, |e| {
            matches!(e, HostEvent::CallLegSync { leg: 200, .. })
        })
        .await
        .unwrap();
    assert!(matches!(
        decided.last(),
        Some(HostEvent::CallLegSync {
            decision: Decision::Refuse,
            plugin,
            ..
        }) if &**plugin == "max_legs"
    ));
    host.stop().await.unwrap();
}

/// SIGTERM with a plugin slow to hear of endings (4,000 legs at a
/// millisecond each: 4 s of host-shutdown notices): the process exits
/// within about a second, not when the notices are done (the runtime used
/// to wait for them as it went down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_host_within_a_second_even_with_slow_notices() {
    let world = World::new(Some(4_000), &[("50-slow", "fixture-slow-notify", None)]).await;
    let config = world.dir.path().join("legsync.toml");
    std::fs::write(
        &config,
        format!(
            "engine = \"{}\"\nname = \"h\"\nadmin = \"off\"\ncdr = \"{}\"\nevents = \"{}\"\n\
             [policy]\nplugin_dir = \"{}\"\ncache_dir = \"{}\"\n\
             [policy.plugins.50-slow]\ndeadline_ms = 5000\n",
            world.sim.listen,
            world.cdr_path().display(),
            world.events_path().display(),
            world.plugins.display(),
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join("compile-cache")
                .display(),
        ),
    )
    .unwrap();
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_legsync"));
    let mut host = legsync_lab::demo::host_process::HostProcess::spawn(
        exe,
        &config,
        &world.dir.path().join("host.log"),
    )
    .unwrap();
    legsync_lab::demo::host_process::wait_for_count(
        &world.events_path(),
        "\"kind\":\"resync-done\"",
        1,
        WAIT,
    )
    .await
    .unwrap();
    let asked = Instant::now();
    host.stop().await.unwrap();
    let took = asked.elapsed();
    // A bound with room for a busy machine: the notices alone take 4 s.
    assert!(took < Duration::from_millis(2_000), "stopped in {took:?}");
}

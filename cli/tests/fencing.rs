//! The engine is the arbiter of a host pair: one controller at a time, each
//! accepted connection under a larger epoch, commands under any other epoch
//! refused. Against a real engine-sim process, with a client written here
//! speaking the wire protocol.

mod common;

use common::world::WAIT;
use futures_util::{SinkExt, StreamExt};
use legsync::protocol::{
    Command, CommandResult, EngineMessage, FrameCodec, HostMessage, PROTOCOL_VERSION,
};
use legsync_lab::sim::process::SimProcess;
use std::net::SocketAddr;
use std::path::Path;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

type Client = Framed<TcpStream, FrameCodec<EngineMessage, HostMessage>>;

/// Connects as host `name`; returns the client and the engine's answer.
async fn connect(engine: SocketAddr, name: &str) -> (Client, EngineMessage) {
    let stream = TcpStream::connect(engine).await.unwrap();
    let mut client = Framed::new(stream, FrameCodec::new(1 << 20));
    client
        .send(HostMessage::Hello {
            protocol: PROTOCOL_VERSION,
            host: name.into(),
        })
        .await
        .unwrap();
    let answer = tokio::time::timeout(WAIT, client.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    (client, answer)
}

fn epoch(hello: &EngineMessage) -> u64 {
    match hello {
        EngineMessage::Hello { epoch, .. } => *epoch,
        other => panic!("expected a hello, got {}", other.name()),
    }
}

/// The next acknowledgement (snapshot frames skipped).
async fn ack(client: &mut Client) -> CommandResult {
    loop {
        match tokio::time::timeout(WAIT, client.next()).await.unwrap() {
            Some(Ok(EngineMessage::Ack { result, .. })) => return result,
            Some(Ok(_)) => continue,
            other => panic!("the engine closed the link: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_controller_at_a_time_epochs_grow_and_stale_commands_are_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_legsync"));
    let mut sim = SimProcess::spawn(
        exe,
        &dir.path().join("engine.state"),
        Some(4),
        &["--name", "gw-7"],
    )
    .await
    .unwrap();

    let (first, hello) = connect(sim.listen, "pri").await;
    let first_epoch = epoch(&hello);
    assert!(
        matches!(&hello, EngineMessage::Hello { engine, .. } if engine == "gw-7"),
        "the hello names the engine"
    );
    assert_eq!(
        sim.ok("controller").await.unwrap(),
        format!("pri epoch {first_epoch}")
    );
    // A second host is told who controls the engine, and nothing else.
    let (_, busy) = connect(sim.listen, "alt").await;
    match busy {
        EngineMessage::Busy { reason } => assert!(
            reason.contains(&format!("controlled by pri (epoch {first_epoch})")),
            "{reason}"
        ),
        other => panic!("expected Busy, got {}", other.name()),
    }
    drop(first);

    // The slot frees when the controller goes; the next one gets a larger epoch.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (mut second, hello) = loop {
        let (client, answer) = connect(sim.listen, "alt").await;
        if matches!(answer, EngineMessage::Hello { .. }) {
            break (client, answer);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never freed"
        );
        tokio::task::yield_now().await;
    };
    let second_epoch = epoch(&hello);
    assert!(second_epoch > first_epoch);

    // A command under the old epoch changes nothing; under its own, it works.
    let stale = HostMessage::Command {
        id: 1,
        epoch: first_epoch,
        command: Command::DropLeg(1),
    };
    second.send(stale).await.unwrap();
    assert_eq!(ack(&mut second).await, CommandResult::Fenced);
    assert!(sim.control("list").await.unwrap().contains("leg 1 "));
    let current = HostMessage::Command {
        id: 2,
        epoch: second_epoch,
        command: Command::DropLeg(1),
    };
    second.send(current).await.unwrap();
    assert_eq!(ack(&mut second).await, CommandResult::Done);
    drop(second);

    // Epochs survive an engine restart: they only grow.
    sim.restart().await.unwrap();
    let (_third, hello) = connect(sim.listen, "pri").await;
    assert!(epoch(&hello) > second_epoch);
}

/// `kill -HUP $(pidof legsync)` meant for a host reaches engine-sim too: it
/// must not die of it (its hosts would lose every call at the grace time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_sim_shrugs_off_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_legsync"));
    let sim = SimProcess::spawn(exe, &dir.path().join("engine.state"), Some(2), &[])
        .await
        .unwrap();
    let pid = sim.pid().unwrap() as libc::pid_t;
    // SAFETY: kill(2) on our own child with a valid signal.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    // A fatal signal dooms the whole process within kill(2) itself (the
    // kernel marks the group exiting before the call returns), so a reply
    // after it proves the signal was not fatal.
    assert!(sim.ok("counts").await.unwrap().starts_with("legs=2"));
}

/// Another controller takes the slot while the host is cut off (a rogue or
/// misrouted client; a peer): at the grace deadline the host is told `Busy`,
/// so it hands its calls over instead of reporting them gone. Their ENDs say
/// `handed-over` (no grace-expired END), and when the host gets the slot
/// back it RESUMEs them, so each call is billed once from its answer to its
/// release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_loses_the_slot_hands_its_calls_over_instead_of_ending_them() {
    use legsync::cdr::bill;
    use legsync::cdr::record::RecordKind;
    use legsync::model::TerminationReason;
    let world = common::world::World::new(None, &[("20-rules", "rules", None)]).await;
    let (mut host, _) = world.host(1.0).await;
    let mut calls = Vec::new();
    for n in 0..3 {
        let id = world
            .sim
            .ok_id(&format!("call SIP_A 15145550{n}00 14385550{n}00"))
            .await
            .unwrap();
        calls.push(id);
    }
    host.wait_status(WAIT, |s| s.legs == 3).await.unwrap();
    // The host is cut off; a client that keeps no ledger takes the slot.
    let isolated = world.sim.ok("isolate 300").await.unwrap();
    assert!(!isolated.is_empty(), "the host is the controller");
    host.wait_disconnected(WAIT).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut rogue = loop {
        let (client, answer) = connect(world.sim.listen, "rogue").await;
        if matches!(answer, EngineMessage::Hello { .. }) {
            break client;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot never freed"
        );
        tokio::task::yield_now().await;
    };
    // It keeps the slot with heartbeats until the test lets it go.
    let rogue = tokio::spawn(async move {
        let mut beat = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            beat.tick().await;
            if rogue.send(HostMessage::Heartbeat).await.is_err() {
                return;
            }
        }
    });
    let events = host.wait_purged(WAIT).await.unwrap();
    let ended = legsync_lab::demo::harness::terminated(&events);
    assert_eq!(ended.len(), 3, "{ended:?}");
    assert!(
        ended
            .iter()
            .all(|(_, r)| *r == TerminationReason::HandedOver),
        "{ended:?}"
    );
    let ends: Vec<_> = world
        .cdrs()
        .into_iter()
        .filter(|r| r.kind == RecordKind::End)
        .collect();
    assert_eq!(ends.len(), 3);
    assert!(
        ends.iter()
            .all(|r| r.end_reason == Some(TerminationReason::HandedOver)),
        "no grace-expired END: the calls are not gone"
    );
    // The rogue goes; the host gets the slot back and resumes the calls.
    rogue.abort();
    let _ = rogue.await;
    host.next_resync(WAIT).await.unwrap();
    let resumed = world
        .cdrs()
        .into_iter()
        .filter(|r| r.kind == RecordKind::Resume)
        .count();
    assert_eq!(resumed, 3);
    for id in &calls {
        world.sim.ok(&format!("release {id}")).await.unwrap();
    }
    host.wait_status(WAIT, |s| s.legs == 0).await.unwrap();
    host.stop().await.unwrap();
    let ledgers = bill::read_ledgers(&[world.cdr_path()]).unwrap();
    assert!(
        bill::check(&ledgers).is_empty(),
        "{:?}",
        bill::check(&ledgers)
    );
    let billed = bill::bill(&bill::records(&ledgers));
    assert_eq!(billed.len(), 3);
    for call in &billed {
        assert_eq!(call.state, bill::CallState::Closed);
        let end = world
            .cdrs()
            .into_iter()
            .find(|r| r.record == call.end_record.unwrap())
            .unwrap();
        assert_eq!(
            end.end_reason,
            Some(TerminationReason::Released),
            "billed to the release, not to the handover"
        );
    }
}

//! The live path under a burst, against engine-sim over real TCP: the host
//! reads on while its batches' records are being made durable (see
//! `supervisor/pipeline.rs`), and still reports nothing before its record
//! is durable (a debug assertion in the host checks every batch against
//! the ledger's durable mark), in the engine's order, each call billed once.

mod common;

use common::world::{WAIT, World};
use legsync_lab::demo::host_process::wait_for_count;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_releases_is_reported_once_durable_in_the_engines_order() {
    const BURST: usize = 3_000;
    let world =
        World::with_sim_timeout(Some(4_000), &[("10-all", "accept-all", None)], 5_000).await;
    let (host, _) = world.host(60.0).await;
    let held_before = host.status().legs;
    assert_eq!(held_before, 4_000);

    // The oldest calls up are released, ascending: legs 1 to 3,000.
    world.sim.ok(&format!("burst {BURST}")).await.unwrap();
    let needle = "\"reason\":\"released\"";
    wait_for_count(&world.events_path(), needle, BURST, WAIT)
        .await
        .unwrap();

    let reported: Vec<u64> = std::fs::read_to_string(world.events_path())
        .unwrap()
        .lines()
        .filter(|line| line.contains(needle))
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(event["kind"], "call-leg-terminated");
            event["leg"].as_u64().unwrap()
        })
        .collect();
    let released: Vec<u64> = (1..=BURST as u64).collect();
    assert_eq!(
        reported, released,
        "every release, once, in the engine's order"
    );

    let mut ended: Vec<u64> = world
        .cdrs()
        .iter()
        .filter(|r| r.end_reason == Some(legsync::model::TerminationReason::Released))
        .map(|r| r.leg)
        .collect();
    ended.sort_unstable();
    assert_eq!(ended, released, "one END per released call");
    assert_eq!(host.status().legs, 4_000 - BURST);
    host.stop().await.unwrap();
}

//! The fleet stream (`[ship]`) against a real 3-node JetStream cluster of
//! `nats-server` processes on loopback, real `legsync run` hosts and
//! engine-sim: records shipped once, resumed from the cursor, caught up
//! after NATS was away, across rotation; billing from the stream equals
//! billing from the files, and a hole in the stream is named.
//!
//! Needs `nats-server` (Debian package `nats-server`, installed by
//! `.ci/run`): without it each test says SKIPPED; under `CI=true` it fails.

mod common;

use common::host_trial::{HostTrial, add_calls};
use common::world::WAIT;
use legsync_lab::nats::{NatsCluster, nats_server};
use std::path::Path;
use std::time::Instant;

/// A 3-node cluster, or `None` (SKIPPED) without `nats-server`.
async fn cluster() -> Option<NatsCluster> {
    let Some(exe) = nats_server() else {
        common::unavailable(
            "nats-server is not installed (Debian package `nats-server`; .ci/run installs it)",
        );
        return None;
    };
    Some(NatsCluster::start(&exe, 3).await.unwrap())
}

/// `[ship]` for `cluster`, with more keys.
fn ship_section(cluster: &NatsCluster, more: &str) -> String {
    format!("\n[ship]\nservers = {}\n{more}", cluster.servers_toml())
}

/// A host on its own engine (`gw-1`), shipping to `cluster`, with `calls`
/// calls answered before it starts.
async fn shipping_host(cluster: &NatsCluster, calls: usize) -> HostTrial {
    shipping_host_on(cluster, "gw-1", calls).await
}

/// [`shipping_host`] on the engine named `engine`.
async fn shipping_host_on(cluster: &NatsCluster, engine: &str, calls: usize) -> HostTrial {
    let ship = ship_section(cluster, "");
    HostTrial::start_engine(engine, None, &[("nap-a", calls)], "", move |_| ship).await
}

/// Polls the host's `/status` until `found` finds what the test waits for
/// in its `ship` part; `what` names it if it never comes.
async fn wait_ship<T>(
    trial: &HostTrial,
    what: &str,
    found: impl Fn(&serde_json::Value) -> Option<T>,
) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        let status = trial.get("/status").await;
        if let Some(found) = found(&status["ship"]) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{what} within {WAIT:?}: {}\n{}",
            status["ship"],
            trial.host.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Waits until the host's `/status` says every durable record is shipped,
/// with at least `records` of them; returns the shipping status.
async fn shipped(trial: &HostTrial, records: u64) -> serde_json::Value {
    wait_ship(trial, "not shipped", |ship| {
        let (done, durable) = (ship["shipped"].as_u64(), ship["durable"].as_u64());
        (done.is_some() && done == durable && durable >= Some(records)).then(|| ship.clone())
    })
    .await
}

/// Waits until the host's `/status` says shipping is interrupted with an
/// error that contains `needle` (others may come first: NATS coming back).
async fn shipping_error(trial: &HostTrial, needle: &str) -> String {
    let what = format!("no shipping error saying `{needle}`");
    wait_ship(trial, &what, |ship| {
        ship["error"]
            .as_str()
            .filter(|e| e.contains(needle))
            .map(str::to_string)
    })
    .await
}

/// `legsync cdr ARGS`: exit code, stdout, stderr.
fn cdr(args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["cdr"];
    all.extend_from_slice(args);
    let out = common::legsync(&all);
    (
        out.status.code(),
        common::text(&out.stdout),
        common::text(&out.stderr),
    )
}

/// The bill (JSON lines) of the ledger files given.
fn bill_files(files: &[&Path]) -> String {
    let mut args = vec!["bill", "--json"];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    let (code, out, err) = cdr(&args);
    assert_eq!(code, Some(0), "{err}");
    out
}

/// The bill (JSON lines) of the stream, with more arguments.
fn bill_stream(cluster: &NatsCluster, more: &[&str]) -> (Option<i32>, String, String) {
    let url = cluster.urls()[0].clone();
    let mut args = vec!["bill", "--json", "--nats", &url];
    args.extend_from_slice(more);
    cdr(&args)
}

fn check_stream(cluster: &NatsCluster) -> (Option<i32>, String, String) {
    let url = cluster.urls()[1].clone();
    cdr(&["check", "--nats", &url])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_shipped_and_the_stream_bills_as_the_files_do() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let trial = shipping_host(&cluster, 40).await;
    // Live traffic after the resync: answers and hang-ups.
    add_calls(&trial.sim, "nap-b", 20).await;
    for leg in 1..=10 {
        trial.sim.ok(&format!("release {leg}")).await.unwrap();
    }
    trial.wait_events("call-leg-terminated", 10).await;
    let ledger = trial.dir.path().join("cdr.jsonl");
    let records = legsync::cdr::CdrWriter::read_all(&ledger).unwrap().len() as u64;
    let ship = shipped(&trial, records).await;
    assert_eq!(ship["connected"], true, "{ship}");
    assert_eq!(ship["behind_records"], 0, "{ship}");
    assert!(ship["error"].is_null(), "{ship}");
    assert_eq!(
        trial.metric("legsync_ship_records_total").await,
        records as f64
    );
    assert_eq!(trial.metric("legsync_ship_behind_records").await, 0.0);

    let from_files = bill_files(&[&ledger]);
    assert_eq!(from_files.lines().count(), 60, "{from_files}");
    let (code, from_stream, err) = bill_stream(&cluster, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        from_stream, from_files,
        "the stream's bill differs from the files'"
    );
    let (code, out, err) = check_stream(&cluster);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(&format!("ok: {records} records of 1 host(s)")),
        "{out}"
    );

    // `legsync status` says it in words.
    let (code, said) = trial.command("status", &[]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!(
            "shipping to LEGSYNC_CDR: connected, shipped through record {records} of {records}"
        )),
        "{said}"
    );
    trial.stop().await;
}

/// How many records the ledger files hold.
fn ledger_records(trial: &HostTrial) -> u64 {
    let ledger = trial.dir.path().join("cdr.jsonl");
    legsync::cdr::CdrWriter::read_all(&ledger).unwrap().len() as u64
}

/// Waits until the ledger holds at least `records` records.
async fn wait_ledger(trial: &HostTrial, records: u64) {
    let deadline = Instant::now() + WAIT;
    while ledger_records(trial) < records {
        assert!(
            Instant::now() < deadline,
            "the ledger never reached {records} records"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_host_resumes_from_its_cursor_or_where_the_stream_stands_and_refuses_a_foreign_ledger()
 {
    let Some(cluster) = cluster().await else {
        return;
    };
    let mut trial = shipping_host(&cluster, 30).await;
    let first = ledger_records(&trial);
    shipped(&trial, first).await;
    trial.host.stop().await.unwrap();
    let cursor_file = trial.dir.path().join("cdr.jsonl.shipped");
    let cursor = std::fs::read_to_string(&cursor_file).unwrap();
    assert!(
        cursor.starts_with(&format!("{first} pri ")),
        "the cursor names the last acknowledged record, the host, its message: {cursor}"
    );
    // `legsync check` reads it as `run` would, and names a damaged one.
    let config = trial.dir.path().join("host.toml");
    let check = || {
        let out = common::legsync(&["check", "--config", config.to_str().unwrap()]);
        (out.status.code(), common::text(&out.stdout))
    };
    let (code, said) = check();
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains(&format!("shipped through record {first} of {first}")),
        "{said}"
    );
    std::fs::write(&cursor_file, "garbage\n").unwrap();
    let (code, said) = check();
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("cdr.jsonl.shipped is damaged"), "{said}");
    std::fs::write(&cursor_file, &cursor).unwrap();

    // While the host is down, calls end; the restarted host writes their
    // ENDs and ships from the record after the cursor: nothing twice.
    for leg in 1..=5 {
        trial.sim.ok(&format!("release {leg}")).await.unwrap();
    }
    trial.start_again().await;
    trial.resyncs(2).await;
    let second = ledger_records(&trial);
    assert!(second > first, "the restart wrote records");
    let ship = shipped(&trial, second).await;
    assert_eq!(
        ship["acknowledged"],
        second - first,
        "only the new records were sent: {ship}"
    );
    assert_eq!(ship["duplicates"], 0, "{ship}");

    // A lost cursor: the host finds where the stream stands (its last
    // message of this host's subject, checked against the ledger) and
    // sends nothing twice.
    trial.host.stop().await.unwrap();
    std::fs::remove_file(&cursor_file).unwrap();
    trial.start_again().await;
    trial.resyncs(3).await;
    let third = ledger_records(&trial);
    let ship = shipped(&trial, third).await;
    assert_eq!(
        ship["acknowledged"],
        third - second,
        "{ship}\n{}",
        trial.host.log()
    );
    assert_eq!(ship["duplicates"], 0, "{ship}");
    assert!(
        trial
            .host
            .log()
            .contains("the stream already holds these records")
    );

    // A ledger that is not the one the stream holds under this name (the
    // ledger replaced, the host named as another): refused, named.
    trial.host.stop().await.unwrap();
    std::fs::remove_file(&cursor_file).unwrap();
    let ledger = trial.dir.path().join("cdr.jsonl");
    let kept = trial.dir.path().join("cdr.jsonl.kept");
    std::fs::rename(&ledger, &kept).unwrap();
    for sidecar in ["cdr.jsonl.alive", "cdr.jsonl.checkpoint"] {
        let _ = std::fs::remove_file(trial.dir.path().join(sidecar));
    }
    trial.start_again().await;
    let error = shipping_error(&trial, "another ledger's").await;
    assert!(
        error.contains("another ledger's under this host's name"),
        "{error}"
    );
    trial.host.stop().await.unwrap();
    std::fs::rename(&kept, &ledger).unwrap();
    for sidecar in ["cdr.jsonl.alive", "cdr.jsonl.checkpoint"] {
        let _ = std::fs::remove_file(trial.dir.path().join(sidecar));
    }
    std::fs::write(&cursor_file, format!("{third} pri\n")).unwrap();
    trial.start_again().await;

    let ledger = trial.dir.path().join("cdr.jsonl");
    let (code, from_stream, err) = bill_stream(&cluster, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(from_stream, bill_files(&[&ledger]));
    let (code, out, err) = check_stream(&cluster);
    assert_eq!(code, Some(0), "{out}{err}");
    trial.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_away_the_host_runs_on_and_catches_up() {
    let Some(mut cluster) = cluster().await else {
        return;
    };
    let trial = shipping_host(&cluster, 10).await;
    shipped(&trial, ledger_records(&trial)).await;
    cluster.kill_all().await.unwrap();
    // Calls are answered and end while the whole cluster is away: the
    // host acts on them (durable locally) as always.
    add_calls(&trial.sim, "nap-b", 10).await;
    for leg in 1..=4 {
        trial.sim.ok(&format!("release {leg}")).await.unwrap();
    }
    trial.wait_events("call-leg-terminated", 4).await;
    let ship = wait_ship(&trial, "the lag never showed", |ship| {
        (ship["connected"] == false && ship["behind_records"].as_u64() >= Some(14))
            .then(|| ship.clone())
    })
    .await;
    assert!(ship["behind_seconds"].as_f64().unwrap() > 0.0, "{ship}");
    assert!(trial.metric("legsync_ship_behind_records").await >= 14.0);
    assert_eq!(trial.metric("legsync_ship_connected").await, 0.0);
    assert_eq!(
        trial.get("/readyz").await["ready"],
        true,
        "shipping never holds the host"
    );

    cluster.restart_all().await.unwrap();
    let records = ledger_records(&trial);
    let ship = shipped(&trial, records).await;
    assert_eq!(ship["behind_records"], 0, "{ship}");
    assert!(ship["error"].is_null(), "{ship}");
    assert!(trial.metric("legsync_ship_failures_total").await >= 1.0);
    let ledger = trial.dir.path().join("cdr.jsonl");
    let (code, from_stream, err) = bill_stream(&cluster, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(from_stream, bill_files(&[&ledger]));
    trial.stop().await;
}

/// Moves the ledger away as logrotate does and tells the host to reopen.
fn rotate(trial: &HostTrial, piece: &str) -> std::path::PathBuf {
    let ledger = trial.dir.path().join("cdr.jsonl");
    let rotated = trial.dir.path().join(piece);
    std::fs::rename(&ledger, &rotated).unwrap();
    let (code, said) = trial.command("reopen", &[]);
    assert_eq!(code, Some(0), "{said}");
    rotated
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_behind_a_rotation_ships_from_the_rotated_piece_and_waits_for_a_missing_one() {
    let Some(mut cluster) = cluster().await else {
        return;
    };
    let mut trial = shipping_host(&cluster, 20).await;
    shipped(&trial, ledger_records(&trial)).await;
    // NATS away: what follows is not shipped before the host stops.
    cluster.kill_all().await.unwrap();
    let before = ledger_records(&trial);
    add_calls(&trial.sim, "nap-b", 10).await;
    wait_ledger(&trial, before + 10).await;
    let first_piece = rotate(&trial, "cdr.jsonl-20261206-1");
    for leg in 1..=6 {
        trial.sim.ok(&format!("release {leg}")).await.unwrap();
    }
    trial.wait_events("call-leg-terminated", 6).await;
    trial.host.stop().await.unwrap();

    // The piece holding the next record to ship is compressed away: the
    // restarted host says which record it waits for, and ships nothing.
    let hidden = trial.dir.path().join("cdr.jsonl-20261206-1.gz");
    std::fs::rename(&first_piece, &hidden).unwrap();
    cluster.restart_all().await.unwrap();
    trial.start_again().await;
    trial.resyncs(2).await;
    let cursor =
        legsync::ship::cursor::read(&trial.dir.path().join("cdr.jsonl.shipped"), "pri", u64::MAX)
            .unwrap()
            .record;
    let error = shipping_error(&trial, "is in no file beside the ledger").await;
    assert!(
        error.contains(&format!(
            "record {} is in no file beside the ledger",
            cursor + 1
        )) && error.contains("cdr.jsonl-20261206-1.gz")
            && error.contains("decompress"),
        "{error}"
    );
    assert_eq!(trial.get("/status").await["ship"]["shipped"], cursor);

    // Put back, it is found (the shipper looks again) and everything ships.
    std::fs::rename(&hidden, &first_piece).unwrap();
    let ledger = trial.dir.path().join("cdr.jsonl");
    let all = legsync::cdr::CdrWriter::read_all(&first_piece)
        .unwrap()
        .len()
        + legsync::cdr::CdrWriter::read_all(&ledger).unwrap().len();
    let ship = shipped(&trial, all as u64).await;
    assert!(ship["error"].is_null(), "{ship}");
    let (code, from_stream, err) = bill_stream(&cluster, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(from_stream, bill_files(&[&first_piece, &ledger]));
    trial.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hole_in_the_stream_is_named_and_not_billed_and_engines_are_read_apart() {
    let Some(cluster) = cluster().await else {
        return;
    };
    let mut one = shipping_host_on(&cluster, "gw-1", 12).await;
    let two = shipping_host_on(&cluster, "gw.2", 7).await;
    shipped(&one, ledger_records(&one)).await;
    shipped(&two, ledger_records(&two)).await;
    let file = |trial: &HostTrial| trial.dir.path().join("cdr.jsonl");
    // The fleet, one engine, a set; both hosts are named `pri` (each in
    // its own engine's pair).
    let (code, out, err) = bill_stream(&cluster, &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, bill_files(&[&file(&one), &file(&two)]));
    let (code, out, err) = bill_stream(&cluster, &["--engine", "gw.2"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, bill_files(&[&file(&two)]));
    assert_eq!(out.lines().count(), 7);
    let (code, out, err) = bill_stream(&cluster, &["--engine", "gw-1", "--engine", "gw.2"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.lines().count(), 19, "{out}");
    // A time window: calls answered from now on (none yet, then one).
    let now = legsync::model::now_ms().to_string();
    let before = ledger_records(&two);
    add_calls(&two.sim, "nap-late", 1).await;
    shipped(&two, before + 1).await;
    let (code, out, err) = bill_stream(&cluster, &["--since", &now]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("nap-late"), "{out}");
    let (code, out, err) = bill_stream(&cluster, &["--until", &now]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.lines().count(), 19, "{out}");
    let engine_one = "gw-1";

    // A message lost from the stream (deleted by hand here): the first,
    // which the resync's records filled; live calls came in later ones.
    let before = ledger_records(&one);
    add_calls(&one.sim, "nap-c", 3).await;
    shipped(&one, before + 3).await;
    let subject = legsync::ship::subject("legsync.cdr", engine_one, "pri");
    let (first, last) = cluster
        .lose_record("LEGSYNC_CDR", &subject, 5)
        .await
        .unwrap();
    let missing = format!("records {first} to {last} of host `pri` are missing");
    let url = cluster.urls()[0].clone();
    let (code, out, err) = cdr(&["check", "--nats", &url, "--engine", engine_one]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains(&missing), "{err}");
    let (code, _, err) = bill_stream(&cluster, &["--engine", engine_one]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&missing) && err.contains("not billed"),
        "{err}"
    );
    let (code, _, err) = bill_stream(&cluster, &["--engine", engine_one, "--partial"]);
    assert_eq!(code, Some(0), "{err}");

    // The host refills the hole: with its cursor lost, it finds that the
    // stream's records of it begin after a hole, and sends from record 1
    // again (what the stream has is dropped or taken once).
    one.host.stop().await.unwrap();
    std::fs::remove_file(one.dir.path().join("cdr.jsonl.shipped")).unwrap();
    one.start_again().await;
    one.resyncs(2).await;
    shipped(&one, ledger_records(&one)).await;
    let (code, out, err) = cdr(&["check", "--nats", &url, "--engine", engine_one]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = bill_stream(&cluster, &["--engine", engine_one]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, bill_files(&[&one.dir.path().join("cdr.jsonl")]));
    one.stop().await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipping_over_mutual_tls_and_billing_with_the_hosts_config() {
    let Some(exe) = nats_server() else {
        return common::unavailable(
            "nats-server is not installed (Debian package `nats-server`; .ci/run installs it)",
        );
    };
    let pki_dir = tempfile::tempdir().unwrap();
    let pki = legsync::tls::generate(pki_dir.path(), &["127.0.0.1".into()]).unwrap();
    let cluster = NatsCluster::start_tls(&exe, 1, &pki).await.unwrap();
    let tls = format!(
        "replicas = 1\n[ship.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        pki.host.ca.display(),
        pki.host.cert.display(),
        pki.host.key.display()
    );
    let ship = ship_section(&cluster, &tls);
    let trial = HostTrial::start_engine("gw-1", None, &[("nap-a", 8)], "", move |_| ship).await;
    let records = ledger_records(&trial);
    let ship = shipped(&trial, records).await;
    assert!(ship["error"].is_null(), "{ship}");

    // Billing reads the stream as the host reaches it: its config.
    let config = trial.dir.path().join("host.toml");
    let (code, from_stream, err) = cdr(&["bill", "--json", "--config", config.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        from_stream,
        bill_files(&[&trial.dir.path().join("cdr.jsonl")])
    );
    assert_eq!(from_stream.lines().count(), 8);

    // Without a client certificate the servers refuse it: said, named.
    let url = cluster.urls()[0].clone();
    let (code, _, err) = cdr(&["check", "--nats", &url]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot connect to NATS at"), "{err}");
    trial.stop().await;
}

//! The engine link over mutual TLS, between real processes: engine-sim
//! serving TLS and asking for a client certificate, `legsync run` with
//! `[tls]`. A host whose certificate the engine does not trust, and a host
//! that does not trust the engine, never get the controller slot, and each
//! says why.

mod common;

use legsync::tls::{Pki, TlsFiles, generate};
use legsync_lab::demo::host_process::{HostProcess, wait_for_count};
use legsync_lab::sim::process::SimProcess;
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_legsync"))
}

/// engine-sim with TLS from `pki` and `legs` calls up.
async fn tls_engine(dir: &Path, pki: &Pki, legs: u64) -> SimProcess {
    let files = &pki.engine;
    let args = [
        "--tls-cert",
        files.cert.to_str().unwrap(),
        "--tls-key",
        files.key.to_str().unwrap(),
        "--tls-client-ca",
        files.ca.to_str().unwrap(),
    ];
    SimProcess::spawn(exe(), &dir.join("engine.state"), Some(legs), &args)
        .await
        .unwrap()
}

/// Starts `legsync run` named `name` against `sim` with `tls`; returns it
/// with its event log's path.
fn host(dir: &Path, name: &str, sim: &SimProcess, tls: &TlsFiles) -> (HostProcess, PathBuf) {
    let plugins = dir.join(format!("plugins-{name}"));
    std::fs::create_dir_all(&plugins).unwrap();
    common::install(&plugins, "10-all", "accept-all", None);
    let events = dir.join(format!("events-{name}.jsonl"));
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "engine = \"{}\"\nname = \"{name}\"\nadmin = \"127.0.0.1:0\"\ncdr = \"{}\"\nevents = \"{}\"\n\
             [link]\nbackoff_base_ms = 50\nbackoff_max_ms = 200\n\
             [tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
             [policy]\nplugin_dir = \"{}\"\ncache_dir = \"{}\"\n",
            sim.listen,
            dir.join(format!("cdr-{name}.jsonl")).display(),
            events.display(),
            tls.ca.display(),
            tls.cert.display(),
            tls.key.display(),
            plugins.display(),
            PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join("compile-cache")
                .display(),
        ),
    )
    .unwrap();
    let log = dir.join(format!("{name}.log"));
    (HostProcess::spawn(exe(), &config, &log).unwrap(), events)
}

/// Starts a host with `files`, waits for its second failed TLS attempt,
/// stops it; returns its log.
async fn turned_away(dir: &Path, name: &str, sim: &SimProcess, files: &TlsFiles) -> String {
    let (mut host, _) = host(dir, name, sim, files);
    let log = dir.join(format!("{name}.log"));
    wait_for_count(&log, "TLS with the engine at", 2, WAIT)
        .await
        .unwrap();
    host.stop().await.unwrap();
    std::fs::read_to_string(&log).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_link_runs_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    // The engine's certificate names the address the host dials.
    let pki = generate(&dir.path().join("pki"), &["127.0.0.1".into()]).unwrap();
    let sim = tls_engine(dir.path(), &pki, 20).await;
    let (mut host, events) = host(dir.path(), "pri", &sim, &pki.host);
    wait_for_count(&events, "\"kind\":\"resync-done\"", 1, WAIT)
        .await
        .unwrap();
    let summary = std::fs::read_to_string(&events).unwrap();
    assert!(summary.contains("\"rebuilt\":20"), "{summary}");
    // Each certificate's expiry is a metric: the host's and the engine's
    // (a year, as `generate` makes them), the CA's (ten years).
    let admin = host.admin_addr().await.unwrap();
    let (_, metrics) =
        legsync::admin::client::request(&admin.to_string(), hyper::Method::GET, "/metrics", None)
            .await
            .unwrap();
    let now = legsync::model::now_ms() as i64 / 1000;
    let days_left = |certificate: &str| {
        let series = format!(
            "legsync_tls_certificate_expiry_timestamp_seconds{{certificate=\"{certificate}\"}} "
        );
        let at: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
            .parse()
            .unwrap();
        (at as i64 - now + 3_600) / 86_400
    };
    assert_eq!(days_left("host"), legsync::tls::TRIAL_LEAF_DAYS);
    assert_eq!(days_left("engine"), legsync::tls::TRIAL_LEAF_DAYS);
    assert_eq!(days_left("ca"), legsync::tls::TRIAL_CA_DAYS);
    assert!(
        sim.ok("controller")
            .await
            .unwrap()
            .starts_with("pri epoch ")
    );
    host.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_engines_without_trusted_certificates_are_turned_away() {
    let dir = tempfile::tempdir().unwrap();
    let pki = generate(&dir.path().join("pki"), &["127.0.0.1".into()]).unwrap();
    let stranger = generate(&dir.path().join("other"), &["127.0.0.1".into()]).unwrap();
    let sim = tls_engine(dir.path(), &pki, 20).await;

    // A host that trusts the engine but holds a certificate of another CA:
    // the engine refuses it after the handshake.
    let untrusted_host = TlsFiles {
        ca: pki.host.ca.clone(),
        ..stranger.host.clone()
    };
    let log = turned_away(dir.path(), "rogue", &sim, &untrusted_host).await;
    assert!(
        log.contains("the engine refused this host's certificate"),
        "{log}"
    );

    // A host that does not trust the engine's certificate never sends it
    // anything.
    let wary = TlsFiles {
        ca: stranger.host.ca.clone(),
        ..pki.host.clone()
    };
    let log = turned_away(dir.path(), "careful", &sim, &wary).await;
    assert!(log.contains("invalid peer certificate"), "{log}");

    assert_eq!(
        sim.ok("controller").await.unwrap(),
        "none epoch 0",
        "no host ever controlled the engine"
    );
}

/// The `[tls]` section `legsync tls init --engine-name NAME` prints works
/// as printed, with `engine` an address that is not that name (it used to
/// leave `server_name` out, and the host then checked the address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_section_tls_init_prints_works_as_printed() {
    let dir = tempfile::tempdir().unwrap();
    let pki_dir = dir.path().join("pki");
    let out = common::legsync(&[
        "tls",
        "init",
        pki_dir.to_str().unwrap(),
        "--engine-name",
        "gw-1.example.net",
    ]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let printed = common::text(&out.stdout);
    let section: String = printed
        .lines()
        .skip_while(|l| *l != "[tls]")
        .take_while(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        section.contains("server_name = \"gw-1.example.net\""),
        "{printed}"
    );
    let engine = TlsFiles {
        ca: pki_dir.join("ca.pem"),
        cert: pki_dir.join("engine.pem"),
        key: pki_dir.join("engine.key"),
    };
    let args = [
        "--tls-cert",
        engine.cert.to_str().unwrap(),
        "--tls-key",
        engine.key.to_str().unwrap(),
        "--tls-client-ca",
        engine.ca.to_str().unwrap(),
    ];
    let sim = SimProcess::spawn(exe(), &dir.path().join("engine.state"), Some(2), &args)
        .await
        .unwrap();
    let events = dir.path().join("events.jsonl");
    let config = dir.path().join("host.toml");
    std::fs::write(
        &config,
        format!(
            "engine = \"{}\"\nname = \"pri\"\nadmin = \"off\"\ncdr = \"{}\"\nevents = \"{}\"\n{section}",
            sim.listen,
            dir.path().join("cdr.jsonl").display(),
            events.display(),
        ),
    )
    .unwrap();
    let mut host = HostProcess::spawn(exe(), &config, &dir.path().join("host.log")).unwrap();
    wait_for_count(&events, "\"role\":\"active\"", 1, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}: {}", host.log()));
    host.stop().await.unwrap();
}

/// A host without `[tls]` pointed at an engine that speaks TLS says so,
/// instead of reading the engine's TLS alert as a frame of 352,518,912
/// bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_host_at_a_tls_engine_is_told_to_configure_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = generate(&dir.path().join("pki"), &["127.0.0.1".into()]).unwrap();
    let sim = tls_engine(dir.path(), &pki, 20).await;
    let config = dir.path().join("plain.toml");
    std::fs::write(
        &config,
        format!(
            "engine = \"{}\"\nname = \"plain\"\nadmin = \"off\"\ncdr = \"{}\"\n[link]\nbackoff_base_ms = 50\nbackoff_max_ms = 200\n",
            sim.listen,
            dir.path().join("cdr-plain.jsonl").display(),
        ),
    )
    .unwrap();
    let log = dir.path().join("plain.log");
    let mut host = HostProcess::spawn(exe(), &config, &log).unwrap();
    wait_for_count(&log, "answers with TLS and this host has no [tls]", 2, WAIT)
        .await
        .unwrap();
    host.stop().await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("exceeds the maximum"), "{text}");
}

//! The admin endpoint over real HTTP, on a real `legsync run` process
//! against a real engine-sim: metrics that move with the host, health and
//! readiness through its states, and the `legsync status | legs | reload`
//! commands on the real binary.

mod common;

use common::world::WAIT;
use hyper::{Method, StatusCode};
use legsync::admin::client::request;
use legsync::admin::token::AdminToken;
use legsync_lab::demo::host_process::HostProcess;
use legsync_lab::sim::process::SimProcess;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

const LEGS: u64 = 100_000;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_legsync"))
}

/// A host config for `name`, its files in `dir`, admin on a free port.
fn config(dir: &Path, name: &str, engine: SocketAddr) -> std::path::PathBuf {
    let plugins = dir.join("plugins.d");
    if !plugins.exists() {
        std::fs::create_dir(&plugins).unwrap();
        common::install(
            &plugins,
            "20-rules",
            "rules",
            Some(
                "[[rule]]\nname = \"no premium\"\naction = \"refuse\"\ncalled_prefix = [\"1900\"]\n",
            ),
        );
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "engine = \"{engine}\"\nname = \"{name}\"\nadmin = \"127.0.0.1:0\"\ncdr = \"{}\"\nevents = \"{}\"\n\
             [link]\nheartbeat_ms = 100\nheartbeat_timeout_ms = 600\nbackoff_base_ms = 50\nbackoff_max_ms = 200\n\
             [policy]\nplugin_dir = \"{}\"\ncache_dir = \"{}\"\n",
            dir.join(format!("cdr-{name}.jsonl")).display(),
            dir.join(format!("events-{name}.jsonl")).display(),
            plugins.display(),
            std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join("compile-cache")
                .display(),
        ),
    )
    .unwrap();
    path
}

/// A monitoring route: no credential.
async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    request(&addr.to_string(), Method::GET, path, None)
        .await
        .unwrap()
}

/// A control route, with the token the host wrote beside its ledger in
/// `dir`.
async fn control(addr: SocketAddr, dir: &Path, method: Method, path: &str) -> (StatusCode, String) {
    let token = AdminToken::read(&dir.join("admin.token")).unwrap();
    request(&addr.to_string(), method, path, Some(&token))
        .await
        .unwrap()
}

/// The value of the sample `series` (name and labels, exactly as rendered).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn legsync(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(exe())
        .args(args)
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_follows_the_host_and_its_commands_work() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProcess::spawn(
        exe(),
        &dir.path().join("engine.state"),
        Some(LEGS),
        &["--heartbeat-ms", "100", "--heartbeat-timeout-ms", "1000"],
    )
    .await
    .unwrap();
    let mut host = HostProcess::spawn(
        exe(),
        &config(dir.path(), "pri", sim.listen),
        &dir.path().join("pri.log"),
    )
    .unwrap();
    let admin = host.admin_addr().await.unwrap();

    // Scraped while the host resyncs: the ledger's STARTs only grow, and
    // readiness goes through known states to `active`.
    let starts = "legsync_cdr_records_total{kind=\"start\"}";
    let mut last_starts = 0.0;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, body) = get(admin, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        let now = sample(&body, starts).unwrap_or(0.0);
        assert!(
            now >= last_starts,
            "{starts} went from {last_starts} to {now}"
        );
        last_starts = now;
        let (code, ready) = get(admin, "/readyz").await;
        let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
        let state = ready["state"].as_str().unwrap().to_string();
        assert!(
            ["connecting", "resyncing", "active"].contains(&state.as_str()),
            "{ready}"
        );
        if state == "active" {
            assert_eq!(code, StatusCode::OK);
            break;
        }
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The bench rules refuse the 1 % premium calls: 99 % adopted.
    let kept = LEGS - LEGS / 100;
    let (_, metrics) = get(admin, "/metrics").await;
    for (series, value) in [
        ("legsync_legs", kept as f64),
        ("legsync_resyncs_total", 1.0),
        ("legsync_connects_total", 1.0),
        ("legsync_link_state{state=\"connected\"}", 1.0),
        // Shown at 0 before their first event, so that an alert on any
        // increase sees the first one.
        ("legsync_grace_expiries_total", 0.0),
        (
            &format!(
                "legsync_build_info{{version=\"{}\",commit=\"{}\",contract=\"{}\",protocol=\"{}\"}}",
                env!("CARGO_PKG_VERSION"),
                build_commit(),
                legsync::policy::contract::CONTRACT_VERSION,
                legsync::protocol::PROTOCOL_VERSION
            ),
            1.0,
        ),
        ("legsync_handovers_total", 0.0),
        ("legsync_disconnects_total{reason=\"heartbeat\"}", 0.0),
        ("legsync_reloads_total{outcome=\"rejected\"}", 0.0),
        ("legsync_link_state{state=\"resyncing\"}", 0.0),
        ("legsync_role{role=\"active\"}", 1.0),
        ("legsync_resync_duration_seconds_count", 1.0),
        (
            "legsync_sync_decisions_total{plugin=\"20-rules\",item=\"leg\",decision=\"rebuild\"}",
            kept as f64,
        ),
        (
            "legsync_sync_decisions_total{plugin=\"20-rules\",item=\"leg\",decision=\"refuse\"}",
            (LEGS / 100) as f64,
        ),
        (starts, LEGS as f64),
    ] {
        assert_eq!(
            sample(&metrics, series),
            Some(value),
            "{series} in\n{metrics}"
        );
    }
    assert!(sample(&metrics, "legsync_cdr_fsync_duration_seconds_count").unwrap() >= 1.0);
    assert!(metrics.contains("# TYPE legsync_plugin_call_duration_seconds histogram"));
    let (code, health) = get(admin, "/healthz").await;
    assert_eq!(
        (code, health.trim()),
        (StatusCode::OK, r#"{"status":"ok"}"#)
    );

    // The commands, on the real binary.
    // `--config` names the token's file; `--admin` the port it logged.
    let addr = admin.to_string();
    let pri_config = config(dir.path(), "pri", sim.listen);
    let pri_config = pri_config.to_str().unwrap();
    let out = legsync(&["status", "--config", pri_config, "--admin", &addr]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("pri (legsync "), "{text}");
    assert!(text.contains(&format!("{kept} legs")), "{text}");
    assert!(text.contains("plugin 20-rules "), "{text}");
    let out = legsync(&["status", "--config", pri_config, "--admin", &addr, "--json"]).await;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["role"], "active");
    // A random 64-bit number: a string, so that jq reads it exactly.
    let boot_id = status["boot_id"].as_str().unwrap();
    assert_eq!(boot_id, sim.ok("boot").await.unwrap().trim());
    assert_eq!(status["legs"], kept);
    assert_eq!(status["last_resync"]["rebuilt"], kept);
    assert_eq!(
        status["plugins"][0]["rules_hash"].as_str().unwrap().len(),
        64
    );

    let out = legsync(&[
        "legs", "--config", pri_config, "--admin", &addr, "--nap", "CAS_R2_3", "--limit", "3",
        "--json",
    ])
    .await;
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let legs = page["legs"].as_array().unwrap();
    assert_eq!(legs.len(), 3);
    assert!(legs.iter().all(|l| l["nap"] == "CAS_R2_3"));
    assert!(legs[0]["id"].as_u64() < legs[1]["id"].as_u64());
    let next = page["next_after"].as_u64().unwrap();
    let more = legsync(&[
        "legs",
        "--config",
        pri_config,
        "--admin",
        &addr,
        "--after",
        &next.to_string(),
        "--limit",
        "2",
    ])
    .await;
    let text = String::from_utf8_lossy(&more.stdout);
    assert!(
        text.contains(&format!("2 of {kept} legs; more with --after")),
        "{text}"
    );

    let out = legsync(&["reload", "--config", pri_config, "--admin", &addr]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("reload applied") && text.contains("20-rules@"),
        "{text}"
    );
    let (_, metrics) = get(admin, "/metrics").await;
    assert_eq!(
        sample(&metrics, "legsync_reloads_total{outcome=\"applied\"}"),
        Some(1.0)
    );

    // Mistakes get a clear answer.
    let (code, body) = control(admin, dir.path(), Method::GET, "/legs?limit=0").await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    let (code, _) = get(admin, "/nowhere").await;
    assert_eq!(code, StatusCode::NOT_FOUND);

    // A second host stands by: not ready, and says so.
    let mut standby = HostProcess::spawn(
        exe(),
        &config(dir.path(), "alt", sim.listen),
        &dir.path().join("alt.log"),
    )
    .unwrap();
    let alt = standby.admin_addr().await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, body) = get(alt, "/readyz").await;
        if body.contains("\"standby\"") {
            assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let token_file = dir.path().join("admin.token");
    let out = legsync(&[
        "status",
        "--admin",
        &alt.to_string(),
        "--token-file",
        token_file.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(3), "not ready: exit 3");
    let (_, metrics) = get(alt, "/metrics").await;
    assert_eq!(
        sample(&metrics, "legsync_role{role=\"standby\"}"),
        Some(1.0)
    );
    assert!(sample(&metrics, "legsync_standby_busy_total").unwrap() >= 1.0);
    standby.stop().await.unwrap();

    // The engine goes away: the held calls are in grace, the host is alive.
    sim.ok("partition 600000").await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, body) = get(admin, "/readyz").await;
        if body.contains("\"in-grace\"") {
            assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, _) = get(admin, "/healthz").await;
    assert_eq!(code, StatusCode::OK);
    let (_, metrics) = get(admin, "/metrics").await;
    assert_eq!(
        sample(&metrics, "legsync_link_state{state=\"disconnected\"}"),
        Some(1.0)
    );
    let lost: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("legsync_disconnects_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(lost >= 1.0, "{metrics}");
    host.stop().await.unwrap();
}

/// The event log on a full disk (`/dev/full`): the host runs on, says so
/// once per interval (not once per line), counts the lost lines and fails
/// `/healthz`; with `events_required` it stops instead, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_event_log_is_loud_and_can_stop_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProcess::spawn(
        exe(),
        &dir.path().join("engine.state"),
        Some(2_000),
        &["--heartbeat-ms", "100", "--heartbeat-timeout-ms", "1000"],
    )
    .await
    .unwrap();
    let path = config(dir.path(), "pri", sim.listen);
    let base = std::fs::read_to_string(&path).unwrap();
    let full = |required: bool| {
        let text = base.replace(
            &format!(
                "events = \"{}\"",
                dir.path().join("events-pri.jsonl").display()
            ),
            &format!("events = \"/dev/full\"\nevents_required = {required}"),
        );
        std::fs::write(&path, text).unwrap();
    };
    full(false);
    let mut host = HostProcess::spawn(exe(), &path, &dir.path().join("pri.log")).unwrap();
    let admin = host.admin_addr().await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (code, body) = get(admin, "/healthz").await;
        if body.contains("audit-failing") {
            assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, ready) = get(admin, "/readyz").await;
    assert!(ready.contains("\"active\""), "the host runs on: {ready}");
    let (_, metrics) = get(admin, "/metrics").await;
    assert!(
        sample(&metrics, "legsync_event_log_errors_total").unwrap() >= 1.0,
        "{metrics}"
    );
    host.stop().await.unwrap();
    let said = host.log().matches("cannot write the event log").count();
    assert!((1..=2).contains(&said), "{said} log lines about it");

    full(true);
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(exe())
            .args(["run", "--config", path.to_str().unwrap()])
            .env("NO_COLOR", "1")
            .output(),
    )
    .await
    .expect("a required audit trail that fails stops the host")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`events_required` is set"), "{stderr}");
}

/// The commit the binary names in `--version`.
fn build_commit() -> String {
    let out = std::process::Command::new(exe())
        .arg("--version")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    said.split("commit ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string()
}

/// Waits until the host's `/readyz` answers 200 (each try bounded: a
/// connection may wait in the backlog).
async fn wait_ready(admin: SocketAddr) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let answered = tokio::time::timeout(Duration::from_secs(2), get(admin, "/readyz")).await;
        if answered.is_ok_and(|(code, _)| code == StatusCode::OK) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the host is not ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The admin port used against the host: a host short of file descriptors
/// (run under `ulimit -n`) with a flood of idle connections backs off its
/// accepts instead of spinning (it used to log millions of lines), keeps
/// its engine link and its ledger, and serves again once they go; an idle
/// connection is closed; a large POST body is refused without being read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_cannot_be_used_against_the_host() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProcess::spawn(
        exe(),
        &dir.path().join("engine.state"),
        None,
        &["--heartbeat-ms", "100", "--heartbeat-timeout-ms", "1000"],
    )
    .await
    .unwrap();
    // `legsync` with few file descriptors.
    let wrapper = dir.path().join("legsync-few-fds");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nulimit -n 128\nexec {} \"$@\"\n",
            exe().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = dir.path().join("pri.log");
    let mut host =
        HostProcess::spawn(&wrapper, &config(dir.path(), "pri", sim.listen), &log).unwrap();
    let admin = host.admin_addr().await.unwrap();
    wait_ready(admin).await;

    // More connections than the host has descriptors for, held open.
    let mut flood = Vec::new();
    for _ in 0..150 {
        match tokio::net::TcpStream::connect(admin).await {
            Ok(stream) => flood.push(stream),
            Err(_) => break,
        }
    }
    // Calls go on meanwhile: the engine link and the ledger still work.
    let id = sim
        .ok_id("call SIP_A 15145550100 14385550100")
        .await
        .unwrap();
    legsync_lab::demo::host_process::wait_for_count(
        &dir.path().join("cdr-pri.jsonl"),
        &format!("\"leg\":{id},"),
        1,
        WAIT,
    )
    .await
    .unwrap();
    // Idle connections are closed at the header timeout, so the host
    // serves again; the accept failures were logged once, not per attempt.
    wait_ready(admin).await;
    let mut closed = 0;
    // The first ones served have waited longest.
    for stream in flood.iter_mut().take(16) {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(50), stream.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert!(closed > 0, "idle connections are closed");
    drop(flood);
    let failures = legsync_lab::demo::host_process::count_lines(&log, "accept failed");
    assert!(
        failures <= 3,
        "{failures} accept-failure lines in {}",
        host.log()
    );

    // A web page cannot drive it: an Origin, or a Host that is a name
    // (DNS rebinding), is refused on the control routes; metrics stay open.
    let raw = async |head: String| {
        let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = String::new();
        let _ = tokio::time::timeout(WAIT, stream.read_to_string(&mut answer)).await;
        answer.lines().next().unwrap_or("").to_string()
    };
    let reload_from_page = format!(
        "POST /reload HTTP/1.1\r\nhost: {admin}\r\norigin: http://evil.example\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    assert_eq!(raw(reload_from_page).await, "HTTP/1.1 403 Forbidden");
    let rebound =
        "GET /legs HTTP/1.1\r\nhost: evil.example:9464\r\nconnection: close\r\n\r\n".to_string();
    assert_eq!(raw(rebound).await, "HTTP/1.1 403 Forbidden");
    let scrape = "GET /metrics HTTP/1.1\r\nhost: gw-3-cc.example:9464\r\norigin: http://grafana.example\r\nconnection: close\r\n\r\n".to_string();
    assert_eq!(raw(scrape).await, "HTTP/1.1 200 OK");
    let token = AdminToken::read(&dir.path().join("admin.token")).unwrap();
    let own = format!(
        "GET /legs HTTP/1.1\r\nhost: {admin}\r\nauthorization: {}\r\nconnection: close\r\n\r\n",
        token.header()
    );
    assert_eq!(raw(own).await, "HTTP/1.1 200 OK");

    // A large body is refused, not buffered.
    let mut stream = tokio::net::TcpStream::connect(admin).await.unwrap();
    let body = vec![b'x'; 8 << 20];
    let head = format!(
        "POST /reload HTTP/1.1\r\nhost: {admin}\r\nauthorization: {}\r\ncontent-length: {}\r\n\r\n",
        token.header(),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let _ = stream.write_all(&body).await;
    let mut answer = String::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    host.stop().await.unwrap();
}

/// The control routes answer only the host's token; the `metrics`
/// listener serves monitoring and nothing else; the commands say what is
/// wrong with a token they cannot use; `legsync check` names a bad token
/// file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_needs_the_token_and_metrics_can_be_served_alone() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimProcess::spawn(
        exe(),
        &dir.path().join("engine.state"),
        Some(100),
        &["--heartbeat-ms", "100", "--heartbeat-timeout-ms", "1000"],
    )
    .await
    .unwrap();
    let path = config(dir.path(), "pri", sim.listen);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("metrics = \"127.0.0.1:0\"\n{text}")).unwrap();
    let mut host = HostProcess::spawn(exe(), &path, &dir.path().join("pri.log")).unwrap();
    let admin = host.admin_addr().await.unwrap();
    let metrics = host.metrics_addr().await.unwrap();
    assert_ne!(admin, metrics);
    wait_ready(metrics).await;

    // The token was written beside the ledger, for the service's user only.
    let token_file = dir.path().join("admin.token");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().mode() & 0o777,
        0o600
    );

    // Without it, or with another, the control routes refuse; monitoring
    // routes need none.
    for path in ["/status", "/legs"] {
        let (code, body) = get(admin, path).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert!(body.contains("admin token"), "{body}");
    }
    let stranger = dir.path().join("stranger.token");
    std::fs::write(&stranger, format!("{}\n", "f".repeat(64))).unwrap();
    std::fs::set_permissions(
        &stranger,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let wrong = AdminToken::read(&stranger).unwrap();
    let (code, _) = request(&admin.to_string(), Method::POST, "/reload", Some(&wrong))
        .await
        .unwrap();
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _) = control(admin, dir.path(), Method::GET, "/status").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(get(admin, "/metrics").await.0, StatusCode::OK);

    // The metrics listener: monitoring only, whatever the credential.
    let (code, body) = get(metrics, "/metrics").await;
    assert_eq!(code, StatusCode::OK);
    assert!(body.contains("legsync_legs "), "{body}");
    assert_eq!(get(metrics, "/healthz").await.0, StatusCode::OK);
    let token = AdminToken::read(&token_file).unwrap();
    for (method, path) in [(Method::GET, "/legs"), (Method::POST, "/reload")] {
        let (code, body) = request(&metrics.to_string(), method, path, Some(&token))
            .await
            .unwrap();
        assert_eq!(code, StatusCode::NOT_FOUND, "{path}: {body}");
    }

    // The commands: a token the host does not hold, and none at all.
    let addr = admin.to_string();
    let out = legsync(&[
        "status",
        "--admin",
        &addr,
        "--token-file",
        stranger.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused the token in"), "{stderr}");
    let missing = dir.path().join("missing.token");
    let out = legsync(&[
        "reload",
        "--admin",
        &addr,
        "--token-file",
        missing.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("needs its admin token") && stderr.contains("missing.token"),
        "{stderr}"
    );
    host.stop().await.unwrap();

    // `legsync check` names a token file `run` could not use.
    std::fs::write(&token_file, "not a token\n").unwrap();
    let out = legsync(&["check", "--config", path.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("FAIL the admin token") && stdout.contains("is not a token"),
        "{stdout}"
    );
}

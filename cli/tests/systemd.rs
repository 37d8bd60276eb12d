//! The packaged unit (`dist/legsync.service`) with the real systemd tools:
//! `systemd-analyze verify` accepts it, and `legsync run` tells the service
//! manager it is ready (`Type=notify`) and stopping, over a real
//! `$NOTIFY_SOCKET` datagram socket.
//!
//! `systemd-analyze` comes with Debian's `systemd` package (`.ci/run`
//! installs it): without it the test says SKIPPED; under `CI=true` it fails.

mod common;

use std::time::Duration;

#[test]
fn systemd_analyze_verifies_the_shipped_unit() {
    let Some(analyze) = common::system_tool(
        &["/usr/bin/systemd-analyze", "/bin/systemd-analyze"],
        "systemd",
    ) else {
        return;
    };
    let shipped = include_str!("../../dist/legsync.service");
    assert!(
        shipped.contains("Type=notify"),
        "readiness, not just started"
    );
    let dir = tempfile::tempdir().unwrap();
    // The binary where this build put it (verify checks it is executable).
    let unit = dir.path().join("legsync.service");
    std::fs::write(
        &unit,
        shipped.replace("/usr/bin/legsync", env!("CARGO_BIN_EXE_legsync")),
    )
    .unwrap();
    let out = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        common::text(&out.stdout),
        common::text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_notifies_the_service_manager_that_it_is_ready_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let manager = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    // An engine nobody serves: a host is ready (a standby too) before it
    // has an engine.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let engine = closed.local_addr().unwrap().to_string();
    drop(closed);
    let mut host = tokio::process::Command::new(env!("CARGO_BIN_EXE_legsync"))
        .args(["run", "--admin", "off", "--engine", &engine])
        .arg("--cdr")
        .arg(dir.path().join("cdr.jsonl"))
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let next = async || {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(30), manager.recv(&mut buf))
            .await
            .expect("a notification")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert_eq!(next().await, "READY=1");
    // SAFETY: kill(2) on our own child with a valid signal.
    unsafe { libc::kill(host.id().unwrap() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(next().await, "STOPPING=1");
    assert!(host.wait().await.unwrap().success());
}

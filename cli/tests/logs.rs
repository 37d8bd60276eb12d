//! Logs for machines and people, on the real binary: JSON lines that parse,
//! no colour codes in a pipe, no panic when the reader of stderr or stdout
//! goes away.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn legsync() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_legsync"));
    command.env_remove("NO_COLOR").env("RUST_LOG", "info");
    command
}

/// `legsync run` against a port nobody listens on: it logs a line per
/// attempt, forever.
fn unreachable_host(dir: &std::path::Path, format: &str) -> std::process::Child {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    legsync()
        .args(["--log-format", format, "run", "--admin", "off"])
        .args(["--engine", &format!("127.0.0.1:{port}")])
        .arg("--cdr")
        .arg(dir.join("cdr.jsonl"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own child with a valid signal.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    child.wait().unwrap()
}

#[test]
fn json_logs_parse_line_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = unreachable_host(dir.path(), "json");
    let mut lines = BufReader::new(host.stderr.take().unwrap()).lines();
    for _ in 0..4 {
        let line = lines.next().unwrap().unwrap();
        let value: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            value["level"].is_string() && value["message"].is_string(),
            "{line}"
        );
        assert!(value["timestamp"].is_string(), "{line}");
    }
    assert!(terminate(&mut host).success());
}

#[test]
fn text_logs_in_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut host = unreachable_host(dir.path(), "text");
    let mut lines = BufReader::new(host.stderr.take().unwrap()).lines();
    for _ in 0..3 {
        let line = lines.next().unwrap().unwrap();
        assert!(!line.contains('\u{1b}'), "ANSI escape in a pipe: {line:?}");
    }
    assert!(terminate(&mut host).success());
}

/// `legsync run ... 2>&1 | head -1`: the reader goes, the host stays up and
/// stops cleanly (it used to panic, exit 101).
#[test]
fn a_closed_log_pipe_does_not_stop_the_host() {
    let dir = tempfile::tempdir().unwrap();
    // An "engine" that closes every connection: the host logs a warning
    // after each attempt, then tries again.
    let engine = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    engine.set_nonblocking(true).unwrap();
    let mut host = legsync()
        .args(["run", "--admin", "off"])
        .args(["--engine", &engine.local_addr().unwrap().to_string()])
        .arg("--cdr")
        .arg(dir.path().join("cdr.jsonl"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(host.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    drop(stderr);
    // Two more attempts: the warning between them met the closed pipe.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut attempts = 0;
    while attempts < 2 {
        match engine.accept() {
            Ok(_) => attempts += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(host.try_wait().unwrap().is_none(), "the host died");
                assert!(std::time::Instant::now() < deadline, "no retry");
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    }
    let status = terminate(&mut host);
    assert!(status.success(), "{status:?}");
}

/// `legsync cdr bill ... | head -1`: the tool ends quietly, no panic.
#[test]
fn a_closed_stdout_ends_a_tool_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("cdr.jsonl");
    let mut text = String::new();
    for i in 1..=20_000u64 {
        text.push_str(&format!(
            "{{\"record\":{i},\"kind\":\"start\",\"time_ms\":1,\"leg\":{i},\"session\":{i},\"nap\":\"N\",\"calling\":\"1\",\"called\":\"2\",\"offered_time_ms\":1,\"answer_time_ms\":2,\"start_reason\":\"answered\"}}\n"
        ));
    }
    std::fs::write(&ledger, text).unwrap();
    let mut bill = legsync()
        .args(["cdr", "bill"])
        .arg(&ledger)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(bill.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    drop(stdout);
    let output = bill.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(output.status.code(), Some(101), "{stderr}");
}

/// The first `count` log lines of `legsync run --config CONFIG` against an
/// engine nobody listens on.
fn first_lines_of_run(config: &std::path::Path, count: usize) -> Vec<String> {
    let mut host = legsync()
        .args(["--log-format", "json", "run", "--admin", "off", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(host.stderr.take().unwrap())
        .lines()
        .take(count)
        .map(Result::unwrap)
        .collect();
    terminate(&mut host);
    lines
}

/// The host watches its config's directory: a ledger or event log in it
/// would wake the watcher at every write. `legsync init` keeps them apart;
/// a config that puts them together gets a warning naming the file.
#[test]
fn a_ledger_beside_the_watched_config_is_warned_about() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let engine = closed.local_addr().unwrap().to_string();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let status = legsync()
        .args(["init", dir.path().to_str().unwrap(), "--engine", &engine])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let config = dir.path().join("legsync.toml");
    let warned = |lines: &[String]| lines.iter().any(|l| l.contains("watched for config"));
    let lines = first_lines_of_run(&config, 6);
    assert!(!warned(&lines), "{lines:#?}");
    // The plugin set as text, not a Rust Debug list.
    let set = lines
        .iter()
        .find(|l| l.contains("active plugin set"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    let set: serde_json::Value = serde_json::from_str(set).unwrap();
    let plugins = set["plugins"].as_str().unwrap();
    assert!(
        plugins.starts_with("20-rules@") && !plugins.contains('['),
        "{plugins}"
    );

    let beside = dir.path().join("beside.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("/data/cdr.jsonl", "/cdr.jsonl");
    std::fs::write(&beside, text).unwrap();
    let lines = first_lines_of_run(&beside, 6);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("watched for config") && l.contains("cdr.jsonl")),
        "{lines:#?}"
    );
}

/// A plugin's log message with line breaks stays one line in the text
/// log (breaks written as `\n`): a plugin cannot forge the host's lines.
#[test]
fn a_plugin_cannot_forge_text_log_lines() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let engine = closed.local_addr().unwrap().to_string();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins.d");
    std::fs::create_dir(&plugins).unwrap();
    let built = std::path::Path::new(legsync::BUILT_PLUGINS_DIR).join("fixture_forger.wasm");
    std::fs::copy(&built, plugins.join("10-forger.wasm")).unwrap();
    let mut host = legsync()
        .args([
            "--log-format",
            "text",
            "run",
            "--admin",
            "off",
            "--engine",
            &engine,
        ])
        .arg("--plugin-dir")
        .arg(&plugins)
        .arg("--cdr")
        .arg(dir.path().join("cdr.jsonl"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(host.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let forged = loop {
        let line = lines.next().unwrap().unwrap();
        seen.push(line.clone());
        if line.contains("FORGED") {
            break line;
        }
        assert!(seen.len() < 20, "{seen:#?}");
    };
    assert!(
        forged.contains(r"loaded\n2026-12-06T00:00:00.000000Z ERROR")
            && forged.contains(r"\nFORGED second line"),
        "{forged}"
    );
    assert!(terminate(&mut host).success());
    for line in lines.map_while(Result::ok) {
        assert!(
            !line.starts_with("FORGED") && !line.contains("00:00:00.000000Z ERROR"),
            "{line}"
        );
    }
}

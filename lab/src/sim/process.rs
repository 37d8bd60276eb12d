//! Runs `legsync engine-sim` as a real child process and drives it: the demo,
//! the integration tests and `legsync bench` all use this, so they exercise
//! the same process boundary and TCP links an operator would.

use super::READY_PREFIX;
use anyhow::{Context, bail};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// A running simulator.
#[derive(Debug)]
pub struct SimProcess {
    exe: PathBuf,
    state_file: PathBuf,
    preload: Option<u64>,
    extra_args: Vec<String>,
    child: Child,
    /// The engine port hosts connect to (kept across restarts).
    pub listen: SocketAddr,
    /// The control port (kept across restarts).
    pub control: SocketAddr,
    /// The boot id of the current process.
    pub boot_id: u64,
}

impl SimProcess {
    /// Starts `exe engine-sim` on loopback with ephemeral ports.
    pub async fn spawn(
        exe: &Path,
        state_file: &Path,
        preload: Option<u64>,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let localhost: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let (child, listen, control, boot_id) =
            start(exe, state_file, preload, &extra_args, localhost, localhost).await?;
        Ok(SimProcess {
            exe: exe.into(),
            state_file: state_file.into(),
            preload,
            extra_args,
            child,
            listen,
            control,
            boot_id,
        })
    }

    /// Sends one control command; returns the reply (for `list`, every line
    /// up to `END`).
    pub async fn control(&self, command: &str) -> anyhow::Result<String> {
        self.control_within(command, Duration::from_secs(30)).await
    }

    /// [`SimProcess::control`] for a command that may take up to `within`
    /// (`traffic`).
    pub async fn control_within(&self, command: &str, within: Duration) -> anyhow::Result<String> {
        control_at(self.control, command, within).await
    }

    /// Sends a command that must succeed; returns what follows `OK`.
    pub async fn ok(&self, command: &str) -> anyhow::Result<String> {
        self.ok_within(command, Duration::from_secs(30)).await
    }

    /// [`SimProcess::ok`] for a command that may take up to `within`.
    pub async fn ok_within(&self, command: &str, within: Duration) -> anyhow::Result<String> {
        let reply = self.control_within(command, within).await?;
        match reply.strip_prefix("OK") {
            Some(rest) => Ok(rest.trim().to_string()),
            None => bail!("`{command}` failed: {reply}"),
        }
    }

    /// Sends a command answered by `OK <id>`.
    pub async fn ok_id(&self, command: &str) -> anyhow::Result<u64> {
        let value = self.ok(command).await?;
        value
            .parse()
            .with_context(|| format!("`{command}` answered `{value}`, not an id"))
    }

    /// An engine restart: the process is killed (SIGKILL) and started again
    /// on the same ports. The media units (the state file) are current up to
    /// the kill, as real hardware would be.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        self.start_again().await
    }

    /// Kills the process (SIGKILL) after saving its media-unit view; it
    /// stays down until [`SimProcess::start_again`].
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.ok("sync").await?;
        self.child.kill().await.context("cannot kill engine-sim")?;
        Ok(())
    }

    /// The extra arguments of the next start (e.g. a test-only option).
    pub fn set_extra_args(&mut self, args: &[&str]) {
        self.extra_args = args.iter().map(|s| s.to_string()).collect();
    }

    /// Kills the process (SIGKILL) at once, as a crash would: whatever it
    /// had not saved is lost. It stays down until [`SimProcess::start_again`].
    pub async fn crash(&mut self) -> anyhow::Result<()> {
        let _ = self.signal(libc::SIGCONT);
        self.child.kill().await.context("cannot kill engine-sim")?;
        Ok(())
    }

    /// Starts the process again on the same ports.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        let (child, listen, control, boot_id) = start(
            &self.exe,
            &self.state_file,
            self.preload,
            &self.extra_args,
            self.listen,
            self.control,
        )
        .await?;
        self.child = child;
        self.boot_id = boot_id;
        debug_assert_eq!((listen, control), (self.listen, self.control));
        Ok(())
    }

    /// Freezes the process (SIGSTOP): its sockets stay open but silent, like
    /// a network partition without FIN.
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.signal(libc::SIGSTOP)
    }

    /// Resumes a frozen process (SIGCONT).
    pub fn thaw(&self) -> anyhow::Result<()> {
        self.signal(libc::SIGCONT)
    }

    /// The OS process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    fn signal(&self, signal: libc::c_int) -> anyhow::Result<()> {
        let pid = self.child.id().context("engine-sim is not running")?;
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
            bail!(
                "kill({pid}, {signal}) failed: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.signal(libc::SIGCONT);
        let _ = self.child.start_kill();
    }
}

async fn start(
    exe: &Path,
    state_file: &Path,
    preload: Option<u64>,
    extra_args: &[String],
    listen: SocketAddr,
    control: SocketAddr,
) -> anyhow::Result<(Child, SocketAddr, SocketAddr, u64)> {
    let mut command = Command::new(exe);
    command
        .arg("engine-sim")
        .arg("--listen")
        .arg(listen.to_string())
        .arg("--control")
        .arg(control.to_string())
        .arg("--state")
        .arg(state_file)
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env(
            "RUST_LOG",
            std::env::var("LEGSYNC_SIM_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .kill_on_drop(true);
    if let Some(count) = preload {
        command.arg("--preload").arg(count.to_string());
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {} engine-sim", exe.display()))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
        .await
        .context("engine-sim did not become ready")??
        .context("engine-sim exited before it was ready")?;
    let field = |name: &str| -> anyhow::Result<String> {
        ready
            .strip_prefix(READY_PREFIX)
            .and_then(|rest| rest.split_whitespace().find_map(|w| w.strip_prefix(name)))
            .map(str::to_string)
            .with_context(|| format!("unexpected engine-sim output: {ready}"))
    };
    let listen = field("listen=")?.parse()?;
    let control = field("control=")?.parse()?;
    let boot = field("boot=")?.parse()?;
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, listen, control, boot))
}

/// Sends one control command to the control port at `addr` (for a task
/// that does not hold the [`SimProcess`]); returns the reply, waiting at
/// most `within` for it.
pub async fn control_at(
    addr: std::net::SocketAddr,
    command: &str,
    within: Duration,
) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .context("cannot reach the control port")?;
    stream.write_all(format!("{command}\n").as_bytes()).await?;
    stream.shutdown().await?;
    let mut reply = String::new();
    tokio::time::timeout(within, stream.read_to_string(&mut reply))
        .await
        .context("control command timed out")??;
    Ok(reply.trim_end().to_string())
}

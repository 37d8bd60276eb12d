//! A host as a real `legsync run` child process, for what an in-process
//! host cannot show: a crash (SIGKILL) at any moment, and the restart that
//! recovers from the ledger. Used by the demo's crash scene and the
//! random-history tests.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::{Child, Command};

/// A running (or killed) `legsync run`.
#[derive(Debug)]
pub struct HostProcess {
    exe: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Where this run of the process starts in its log.
    log_start: usize,
}

impl HostProcess {
    /// Starts `exe run --config CONFIG`, its log appended to `log`.
    pub fn spawn(exe: &Path, config: &Path, log: &Path) -> anyhow::Result<HostProcess> {
        let mut host = HostProcess {
            exe: exe.into(),
            config: config.into(),
            log: log.into(),
            child: None,
            log_start: 0,
        };
        host.start()?;
        Ok(host)
    }

    /// Starts the process again (after [`HostProcess::crash`] or
    /// [`HostProcess::stop`]).
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("the host is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        self.log_start = log.metadata().map_or(0, |m| m.len() as usize);
        let child = Command::new(&self.exe)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env(
                "RUST_LOG",
                std::env::var("LEGSYNC_HOST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {} run", self.exe.display()))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL, at once: a crash.
    pub async fn crash(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("cannot kill the host")?;
        }
        Ok(())
    }

    /// SIGTERM, and waits for a clean exit.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            // A frozen host must run to stop.
            let _ = signal(pid, libc::SIGCONT);
            let _ = signal(pid, libc::SIGTERM);
        }
        let status = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait())
            .await
            .context("the host did not stop within 30 s of SIGTERM")??;
        if !status.success() {
            bail!("the host exited with {status}; see {}", self.log.display());
        }
        Ok(())
    }

    /// Freezes the process (SIGSTOP): alive, sockets open, silent (a hung
    /// host, as a standby must survive).
    pub fn freeze(&self) -> anyhow::Result<()> {
        signal(self.pid()?, libc::SIGSTOP)
    }

    /// Resumes a frozen host (SIGCONT).
    pub fn thaw(&self) -> anyhow::Result<()> {
        signal(self.pid()?, libc::SIGCONT)
    }

    /// The OS process id.
    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .context("the host is not running")
    }

    /// The admin endpoint's address, from the host's log (a config with
    /// `admin = "127.0.0.1:0"` gets a free port), once it listens.
    pub async fn admin_addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        self.listening("admin").await
    }

    /// The monitoring listener's address (`metrics` in the config), as
    /// [`HostProcess::admin_addr`].
    pub async fn metrics_addr(&self) -> anyhow::Result<std::net::SocketAddr> {
        self.listening("metrics").await
    }

    /// The address the `listener` endpoint logged it listens on.
    async fn listening(&self, listener: &str) -> anyhow::Result<std::net::SocketAddr> {
        let line = format!("{listener} endpoint listening");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            // This run's lines only: an earlier run's port is gone.
            let log = self.log();
            let found = log
                .get(self.log_start..)
                .unwrap_or("")
                .lines()
                .rev()
                .filter(|l| l.contains(&line))
                .find_map(|l| l.split("bound=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|addr| addr.parse().ok());
            if let Some(addr) = found {
                return Ok(addr);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the host never logged its {listener} address; see {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The host's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// This run's part of the log (since the last start).
    pub fn run_log(&self) -> String {
        self.log().get(self.log_start..).unwrap_or("").to_string()
    }

    /// Waits for the process to exit on its own (a start that refuses), at
    /// most `within`; returns how it exited.
    pub async fn wait_exit(
        &mut self,
        within: std::time::Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let child = self.child.as_mut().context("the host is not running")?;
        let status = tokio::time::timeout(within, child.wait())
            .await
            .context("the host did not exit")??;
        self.child = None;
        Ok(status)
    }
}

/// How many lines of `path` (a host's event log or ledger) contain `needle`.
pub fn count_lines(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Waits until `count` lines of `path` contain `needle`, for at most
/// `within`.
pub async fn wait_for_count(
    path: &Path,
    needle: &str,
    count: usize,
    within: std::time::Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    while count_lines(path, needle) < count {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not {count} lines with `{needle}` in {} within {within:?}",
            path.display()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Sends `sig` to our child `pid`.
fn signal(pid: u32, sig: libc::c_int) -> anyhow::Result<()> {
    // SAFETY: kill(2) on our own child with a valid signal number.
    if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
        bail!(
            "kill({pid}, {sig}) failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

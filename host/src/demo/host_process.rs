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
}

impl HostProcess {
    /// Starts `exe run --config CONFIG`, its log appended to `log`.
    pub fn spawn(exe: &Path, config: &Path, log: &Path) -> anyhow::Result<HostProcess> {
        let mut host = HostProcess {
            exe: exe.into(),
            config: config.into(),
            log: log.into(),
            child: None,
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
            // SAFETY: kill(2) on our own child with a valid signal.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        let status = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait())
            .await
            .context("the host did not stop within 30 s of SIGTERM")??;
        if !status.success() {
            bail!("the host exited with {status}; see {}", self.log.display());
        }
        Ok(())
    }

    /// The host's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

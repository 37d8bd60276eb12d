//! The host's config file (TOML). Every key is optional; command-line flags
//! override the file. Unknown keys are errors, so a typo never silently
//! falls back to a default.
//!
//! ```toml
//! engine = "127.0.0.1:7000"
//! grace_secs = 10
//! cdr = "/var/lib/legsync/cdr.jsonl"
//! events = "/var/log/legsync/events.jsonl"
//!
//! [link]
//! heartbeat_ms = 1000
//! heartbeat_timeout_ms = 3000
//!
//! [policy]
//! plugin_dir = "/etc/legsync/plugins.d"
//! ```

use crate::policy::PolicyConfig;
use anyhow::Context;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The engine's address.
    #[serde(default)]
    pub engine: Option<SocketAddr>,
    /// Grace time after a disconnection, in seconds (default 10).
    #[serde(default = "default_grace")]
    pub grace_secs: f64,
    /// The CDR file (default `cdr.jsonl` in the working directory).
    #[serde(default = "default_cdr")]
    pub cdr: PathBuf,
    /// The event log; none disables it.
    #[serde(default)]
    pub events: Option<PathBuf>,
    #[serde(default)]
    pub link: LinkConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
}

/// `[link]`: the engine connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkConfig {
    pub connect_timeout_ms: u64,
    /// How often a heartbeat is sent.
    pub heartbeat_ms: u64,
    /// Silence after which the link is declared dead.
    pub heartbeat_timeout_ms: u64,
    /// First reconnect delay; doubles up to `backoff_max_ms`.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Largest frame accepted from the engine.
    pub max_frame_bytes: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            connect_timeout_ms: 2_000,
            heartbeat_ms: 1_000,
            heartbeat_timeout_ms: 3_000,
            backoff_base_ms: 100,
            backoff_max_ms: 5_000,
            max_frame_bytes: crate::protocol::DEFAULT_MAX_FRAME,
        }
    }
}

fn default_grace() -> f64 {
    10.0
}

fn default_cdr() -> PathBuf {
    PathBuf::from("cdr.jsonl")
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            engine: None,
            grace_secs: default_grace(),
            cdr: default_cdr(),
            events: None,
            link: LinkConfig::default(),
            policy: PolicyConfig::default(),
        }
    }
}

impl HostConfig {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> anyhow::Result<HostConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let config: HostConfig =
            toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))?;
        config
            .validate()
            .with_context(|| format!("invalid config {}", path.display()))?;
        Ok(config)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.grace_secs.is_finite() && self.grace_secs >= 0.0,
            "grace_secs must be a number of seconds >= 0"
        );
        let link = &self.link;
        anyhow::ensure!(
            link.heartbeat_ms > 0,
            "link.heartbeat_ms must be at least 1"
        );
        anyhow::ensure!(
            link.heartbeat_timeout_ms > link.heartbeat_ms,
            "link.heartbeat_timeout_ms ({}) must exceed link.heartbeat_ms ({})",
            link.heartbeat_timeout_ms,
            link.heartbeat_ms
        );
        anyhow::ensure!(
            link.backoff_base_ms > 0 && link.backoff_max_ms >= link.backoff_base_ms,
            "link.backoff_max_ms must be >= link.backoff_base_ms > 0"
        );
        anyhow::ensure!(
            link.max_frame_bytes >= 1024,
            "link.max_frame_bytes must be at least 1024"
        );
        self.policy.validate().map_err(anyhow::Error::msg)
    }

    pub fn grace(&self) -> Duration {
        Duration::from_secs_f64(self.grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let config: HostConfig =
            toml::from_str("grace_secs = 2.5\n[link]\nheartbeat_ms = 200\n").unwrap();
        assert_eq!(config.grace(), Duration::from_millis(2500));
        assert_eq!(config.link.heartbeat_ms, 200);
        assert_eq!(config.link.heartbeat_timeout_ms, 3_000);
        config.validate().unwrap();
    }

    #[test]
    fn mistakes_are_named() {
        let err = toml::from_str::<HostConfig>("grace = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `grace`"), "{err}");
        let config: HostConfig = toml::from_str("[link]\nheartbeat_ms = 5000\n").unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("heartbeat_timeout_ms")
        );
    }
}

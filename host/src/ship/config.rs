//! `[ship]`: where the host publishes its ledger (see [`super`]).

use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The stream's defaults, shared by the host and `legsync cdr --nats`.
pub const DEFAULT_STREAM: &str = "LEGSYNC_CDR";
pub const DEFAULT_SUBJECT_PREFIX: &str = "legsync.cdr";

/// `[ship]`: the NATS JetStream stream the host publishes every durable
/// ledger record to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShipConfig {
    /// The cluster's servers (`nats://host:4222`, or `tls://` with `tls`);
    /// the client fails over between them.
    pub servers: Vec<String>,
    /// The stream's name (default `LEGSYNC_CDR`).
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Records go to `<subject_prefix>.<engine>.<host>` (default
    /// `legsync.cdr`); the stream takes `<subject_prefix>.>`.
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    /// Copies of each record in the cluster when the host creates the
    /// stream (default 3; an existing stream keeps its own settings).
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// How long the stream remembers a message id to drop a duplicate
    /// (default 120 s; a re-send after a crash or a lost ack comes within
    /// seconds, and billing drops identical records anyway).
    #[serde(default = "default_duplicate_window")]
    pub duplicate_window_secs: u64,
    /// How long the stream keeps records when the host creates it, in days
    /// (default 0: until deleted by the operator).
    #[serde(default)]
    pub max_age_days: u64,
    /// Records published and not yet acknowledged, at most (default 16384).
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    /// Records in one message at most (default 512; a message also stays
    /// under 256 KiB): a backlog goes out in full messages, the live
    /// path's few records after `linger_ms`.
    #[serde(default = "default_batch_records")]
    pub batch_records: usize,
    /// How long a few durable records wait for more before they are sent
    /// (default 5 ms; 0: at once). Fuller messages cost the servers less
    /// per record; the stream's lag grows by at most this.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// A NATS credentials file (`.creds`: JWT and NKey seed).
    #[serde(default)]
    pub credentials: Option<PathBuf>,
    /// TLS to the servers (PEM files): the CA the servers' certificates
    /// chain to, and this host's certificate and key if the servers ask
    /// for one.
    #[serde(default)]
    pub tls: Option<ShipTls>,
}

/// `[ship.tls]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShipTls {
    pub ca: PathBuf,
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
}

fn default_stream() -> String {
    DEFAULT_STREAM.to_string()
}

fn default_subject_prefix() -> String {
    DEFAULT_SUBJECT_PREFIX.to_string()
}

fn default_replicas() -> usize {
    3
}

fn default_duplicate_window() -> u64 {
    120
}

fn default_in_flight() -> usize {
    16_384
}

fn default_batch_records() -> usize {
    512
}

fn default_linger_ms() -> u64 {
    5
}

impl ShipConfig {
    /// A config with the defaults, for these servers.
    pub fn for_servers(servers: Vec<String>) -> ShipConfig {
        ShipConfig {
            servers,
            stream: default_stream(),
            subject_prefix: default_subject_prefix(),
            replicas: default_replicas(),
            duplicate_window_secs: default_duplicate_window(),
            max_age_days: 0,
            max_in_flight: default_in_flight(),
            batch_records: default_batch_records(),
            linger_ms: default_linger_ms(),
            credentials: None,
            tls: None,
        }
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.servers.is_empty(),
            "ship.servers is empty: name at least one NATS server (`nats://host:4222`), or remove [ship]"
        );
        anyhow::ensure!(
            !self.stream.is_empty()
                && !self
                    .stream
                    .contains(|c: char| c == '.' || c == '*' || c == '>' || c.is_whitespace()),
            "ship.stream `{}` is not a stream name: no dots, spaces, `*` or `>`",
            self.stream
        );
        anyhow::ensure!(
            !self.subject_prefix.is_empty()
                && self.subject_prefix.split('.').all(|token| {
                    !token.is_empty()
                        && !token.contains(|c: char| c == '*' || c == '>' || c.is_whitespace())
                }),
            "ship.subject_prefix `{}` is not a subject prefix: dot-separated tokens, none empty, no spaces, `*` or `>`",
            self.subject_prefix
        );
        anyhow::ensure!(
            (1..=5).contains(&self.replicas),
            "ship.replicas must be between 1 and 5 (JetStream's limit; it is {})",
            self.replicas
        );
        anyhow::ensure!(
            (1..=86_400).contains(&self.duplicate_window_secs),
            "ship.duplicate_window_secs must be between 1 and 86400 (it is {})",
            self.duplicate_window_secs
        );
        anyhow::ensure!(
            (1..=1_048_576).contains(&self.max_in_flight),
            "ship.max_in_flight must be between 1 and 1048576 (it is {})",
            self.max_in_flight
        );
        anyhow::ensure!(
            (1..=4096).contains(&self.batch_records),
            "ship.batch_records must be between 1 and 4096 (it is {})",
            self.batch_records
        );
        anyhow::ensure!(
            self.linger_ms <= 1_000,
            "ship.linger_ms must be at most 1000 (it is {})",
            self.linger_ms
        );
        if let Some(tls) = &self.tls {
            anyhow::ensure!(
                tls.cert.is_some() == tls.key.is_some(),
                "ship.tls needs both `cert` and `key`, or neither"
            );
        }
        Ok(())
    }

    pub fn duplicate_window(&self) -> Duration {
        Duration::from_secs(self.duplicate_window_secs)
    }
}

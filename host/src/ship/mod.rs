//! The fleet stream: every ledger record, once durable on this host's disk,
//! published to a replicated NATS JetStream stream, where billing reads the
//! whole fleet's records (`legsync cdr bill --nats`).
//!
//! - [`config`]: the `[ship]` section.
//! - [`shipper`]: the task that follows the ledger's durable mark and
//!   publishes consecutive records as messages (the ledger's own lines),
//!   with the message id `engine/host/epoch/first-last` so the stream
//!   drops what a retry sends twice, and resumes where the stream stands
//!   after a restart.
//! - [`cursor`]: the last record the stream acknowledged, beside the ledger.
//! - [`pieces`]: reading the ledger from a record on, across rotation.
//! - [`stream`]: reading the stream back, as ledger pieces for `bill` and
//!   `check`.
//!
//! The local ledger stays the source of truth: shipping reads it after the
//! writer made it durable, on tasks of its own, and never holds the writer,
//! the live path or a resync. NATS away for hours only makes the host
//! fall behind (its lag in metrics and `/status`); it catches up when NATS
//! is back.

pub mod config;
pub mod cursor;
pub mod pieces;
pub mod shipper;
pub mod stream;

use anyhow::Context;
use config::ShipConfig;
use std::time::Duration;

/// The subject a host's records of an engine go to:
/// `<prefix>.<engine>.<host>`, each name as one subject token.
pub fn subject(prefix: &str, engine: &str, host: &str) -> String {
    format!("{prefix}.{}.{}", token(engine), token(host))
}

/// A name as one subject token: letters, digits, `-` and `_` as they are,
/// every other byte as `%XX` (a dot would split the token, `*` and `>`
/// are wildcards); `_` for an empty name.
pub fn token(name: &str) -> String {
    if name.is_empty() {
        return "_".to_string();
    }
    let mut token = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            token.push(byte as char);
        } else {
            token.push_str(&format!("%{byte:02X}"));
        }
    }
    token
}

/// The message id of the records `first` to `last` (a message carries
/// consecutive records of one subject): engine, host, the first record's
/// epoch and the numbers. The stream drops a second message with it
/// (within its duplicate window).
pub fn message_id(engine: &str, host: &str, epoch: u64, first: u64, last: u64) -> String {
    format!("{engine}/{host}/{epoch}/{first}-{last}")
}

/// How long a publish or a stream request waits for its answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the cluster of `config` (TLS and credentials as it says).
/// With `retry`, the first connection is retried in the background (a
/// host starts while NATS is away); without, a failure is returned (the
/// billing tools).
pub async fn connect(
    config: &ShipConfig,
    name: &str,
    retry: bool,
) -> anyhow::Result<(async_nats::Client, async_nats::jetstream::Context)> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(REQUEST_TIMEOUT)
        .request_timeout(Some(REQUEST_TIMEOUT))
        // Back quickly when a node or the cluster returns: 0.1 s, then
        // doubling up to 2 s.
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(100u64.saturating_mul(1 << attempts.min(5)))
                .min(Duration::from_secs(2))
        });
    if retry {
        options = options.retry_on_initial_connect();
    }
    if let Some(creds) = &config.credentials {
        options = options.credentials_file(creds).await.with_context(|| {
            format!("cannot read the NATS credentials file {}", creds.display())
        })?;
    }
    if let Some(tls) = &config.tls {
        options = options
            .require_tls(true)
            .add_root_certificates(tls.ca.clone());
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    let servers = config
        .servers
        .iter()
        .map(|s| s.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| {
            format!(
                "ship.servers: not NATS server addresses: {}",
                config.servers.join(", ")
            )
        })?;
    let client = options
        .connect(servers)
        .await
        .with_context(|| format!("cannot connect to NATS at {}", config.servers.join(", ")))?;
    let jetstream = async_nats::jetstream::ContextBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .max_ack_inflight(config.max_in_flight)
        .build(client.clone());
    Ok((client, jetstream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_single_subject_tokens() {
        assert_eq!(token("gw-1_a"), "gw-1_a");
        assert_eq!(token("gw.1"), "gw%2E1");
        assert_eq!(token("a*b>c d"), "a%2Ab%3Ec%20d");
        assert_eq!(token(""), "_");
        assert_eq!(
            subject("legsync.cdr", "gw.1", "host-a"),
            "legsync.cdr.gw%2E1.host-a"
        );
    }
}

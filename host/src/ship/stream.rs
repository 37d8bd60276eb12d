//! Reading the fleet stream back for billing: each host's records of each
//! engine (one subject) become a ledger piece, so that `legsync cdr bill`
//! and `cdr check` apply the same rules to the stream as to files.

use super::config::ShipConfig;
use crate::cdr::bill::Line;
use anyhow::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// What to read of the stream.
#[derive(Debug, Clone, Default)]
pub struct StreamQuery {
    /// Engines to read (their names); empty: the whole fleet.
    pub engines: Vec<String>,
    /// Only messages stored from this time on (Unix ms), with a margin for
    /// the clocks of hosts and servers ([`CLOCK_MARGIN`]).
    pub since_ms: Option<u64>,
}

/// How much earlier than `since` the stream is read: records are stored
/// after they are written, but a host's clock may run ahead of the
/// servers'.
pub const CLOCK_MARGIN: Duration = Duration::from_secs(600);

/// The stream, read.
#[derive(Debug, Default)]
pub struct StreamRead {
    /// One piece per subject, named `<stream> <subject>`, its lines the
    /// records of its messages in stream order.
    pub ledgers: Vec<(String, Vec<Line>)>,
    /// Messages read.
    pub messages: u64,
    /// Every host's records from its first: read from the start of a
    /// stream that drops nothing by itself (no age, count or size limit).
    /// Otherwise each host's numbering begins where the stream does.
    pub whole: bool,
    /// Records that repeated one already read, byte for byte (published
    /// again past the stream's duplicate window): taken once.
    pub duplicates: u64,
}

/// Hands `each` every message of `stream` that `filter` takes, from
/// `deliver_policy` on, in stream order: its sequence, subject and body.
/// Returns at the last message there is (at once when there is none).
pub(crate) async fn each_message(
    stream: &async_nats::jetstream::stream::Stream,
    filter: &str,
    deliver_policy: DeliverPolicy,
    mut each: impl FnMut(u64, &str, &bytes::Bytes),
) -> anyhow::Result<()> {
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: filter.to_string(),
            deliver_policy,
            ..Default::default()
        })
        .await?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(());
    }
    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        let info = message
            .info()
            .map_err(|e| anyhow::anyhow!("a message without its stream position: {e}"))?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        each(sequence, message.subject.as_str(), &message.payload);
        if pending == 0 {
            break;
        }
    }
    Ok(())
}

/// Reads what `query` asks of the stream `[ship]` names.
pub async fn read(config: &ShipConfig, query: &StreamQuery) -> anyhow::Result<StreamRead> {
    let (client, jetstream) = super::connect(config, "legsync cdr", false).await?;
    let mut stream = jetstream
        .get_stream(&config.stream)
        .await
        .with_context(|| {
            format!(
                "cannot open the stream {} at {}",
                config.stream,
                config.servers.join(", ")
            )
        })?;
    let filters: Vec<String> = if query.engines.is_empty() {
        vec![format!("{}.>", config.subject_prefix)]
    } else {
        query
            .engines
            .iter()
            .map(|engine| format!("{}.{}.>", config.subject_prefix, super::token(engine)))
            .collect()
    };
    let deliver_policy = match query.since_ms {
        None => DeliverPolicy::All,
        Some(since) => {
            let from = since.saturating_sub(CLOCK_MARGIN.as_millis() as u64);
            DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(from) * 1_000_000,
                )
                .context("--since is out of range")?,
            }
        }
    };
    let limits = stream
        .info()
        .await
        .with_context(|| format!("cannot read the stream {}'s settings", config.stream))?
        .config
        .clone();
    let keeps_all = limits.max_age.is_zero()
        && limits.max_messages <= 0
        && limits.max_bytes <= 0
        && limits.max_messages_per_subject <= 0;
    let mut pieces: BTreeMap<String, Vec<Line>> = BTreeMap::new();
    // Each subject's records by number: the payload first read.
    let mut seen: HashMap<(String, u64), bytes::Bytes> = HashMap::new();
    let mut read = StreamRead {
        whole: keeps_all && query.since_ms.is_none(),
        ..Default::default()
    };
    for filter in filters {
        each_message(&stream, &filter, deliver_policy, |_, subject, payload| {
            read.messages += 1;
            let piece = pieces
                .entry(format!("{} {subject}", config.stream))
                .or_default();
            for raw in payload.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let record = serde_json::from_slice::<crate::cdr::record::CdrRecord>(raw)
                    .map_err(|e| e.to_string());
                if let Ok(record) = &record {
                    let key = (subject.to_string(), record.record);
                    match seen.get(&key) {
                        Some(first) if first.as_ref() == raw => {
                            read.duplicates += 1;
                            continue;
                        }
                        Some(_) => {}
                        None => {
                            seen.insert(key, payload.slice_ref(raw));
                        }
                    }
                }
                piece.push(Line {
                    number: piece.len() + 1,
                    record,
                    torn: false,
                });
            }
        })
        .await
        .with_context(|| format!("cannot read {filter} from the stream {}", config.stream))?;
    }
    drop(client);
    read.ledgers = pieces.into_iter().collect();
    Ok(read)
}

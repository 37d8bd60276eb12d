//! The shipper: follows the ledger's durable mark and publishes every
//! record to the stream, in order, acknowledged before the cursor moves.
//!
//! Records are read from the ledger file (after the writer made them
//! durable: never from the writer's memory), published with up to
//! `max_in_flight` acknowledgements outstanding, and the cursor is saved
//! after the acknowledgements, at most every [`CURSOR_EVERY`] and at the
//! stop. Any failure (NATS away, an acknowledgement late or refused, a
//! ledger piece missing) drops what is in flight and starts again after a
//! pause, past what the stream holds without a hole from the cursor on
//! (see `Shipper::resume`); a message sent again is dropped by its id.

use super::config::ShipConfig;
use super::cursor::{self, Cursor};
use super::pieces::{LedgerReader, RawRecord};
use crate::cdr::DurableMark;
use crate::metrics as m;
use anyhow::Context;
use async_nats::jetstream::{self, message::PublishMessage};
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the cursor is saved while records are acknowledged.
pub const CURSOR_EVERY: Duration = Duration::from_millis(200);
/// How long a stopping host waits for the acknowledgements in flight.
pub const DRAIN: Duration = Duration::from_secs(2);
/// The pause after a failure, doubling up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// A message's body stays under this size (the servers' default largest
/// payload is 1 MiB).
const BATCH_BYTES: usize = 256 * 1024;
/// Below this many records in flight, any durable record is read at once
/// (the live path: a few records at a time, sent without waiting).
const READ_AT_LEAST: usize = 64;
/// Durable marks remembered for the lag (older ones are merged).
const MARKS_KEPT: usize = 4096;

/// What `/status` and `legsync status` show of shipping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ShipStatus {
    pub stream: String,
    pub connected: bool,
    /// The last record the stream acknowledged (and every one before it).
    pub shipped: u64,
    /// The last record durable in the ledger.
    pub durable: u64,
    pub behind_records: u64,
    pub behind_seconds: f64,
    /// Records the stream acknowledged since the start.
    pub acknowledged: u64,
    pub duplicates: u64,
    /// Why shipping is interrupted, if it is.
    pub error: Option<String>,
}

/// A shipper ready to run.
pub struct Shipper {
    config: ShipConfig,
    ledger: PathBuf,
    host: String,
    marks: watch::Receiver<DurableMark>,
    status: watch::Sender<ShipStatus>,
    cursor: Cursor,
    /// The cursor as last saved.
    saved: u64,
    /// Durable marks not yet acknowledged: (record, durable at, µs).
    pending: VecDeque<(u64, u64)>,
    /// The host's state: no new reads while it resyncs (see
    /// [`Shipper::yield_to_resyncs`]).
    host_status: Option<watch::Receiver<crate::supervisor::HostStatus>>,
}

impl Shipper {
    /// A shipper for the ledger at `ledger`, written by `host`; reads the
    /// cursor (a damaged or foreign one is refused, named).
    pub fn new(
        config: ShipConfig,
        ledger: &Path,
        host: &str,
        marks: watch::Receiver<DurableMark>,
    ) -> anyhow::Result<Shipper> {
        let durable = *marks.borrow();
        let path = cursor::cursor_path(ledger);
        let mut cursor = cursor::read(&path, host, durable.record)?;
        cursor.host = host.to_string();
        let (status, _) = watch::channel(ShipStatus {
            stream: config.stream.clone(),
            shipped: cursor.record,
            durable: durable.record,
            behind_records: durable.record - cursor.record,
            ..Default::default()
        });
        let mut pending = VecDeque::new();
        if durable.record > cursor.record {
            // Their age is found when they are read (their own time).
            pending.push_back((durable.record, 0));
        }
        for name in [m::SHIP_RECORDS, m::SHIP_DUPLICATES, m::SHIP_FAILURES] {
            metrics::counter!(name).absolute(0);
        }
        Ok(Shipper {
            saved: cursor.record,
            config,
            ledger: ledger.to_path_buf(),
            host: host.to_string(),
            marks,
            status,
            cursor,
            pending,
            host_status: None,
        })
    }

    /// While the host resyncs, ship nothing new (what is in flight is
    /// acknowledged): a resync has the machine's cores to itself, and its
    /// STARTs go out right after it.
    pub fn yield_to_resyncs(
        mut self,
        host: watch::Receiver<crate::supervisor::HostStatus>,
    ) -> Shipper {
        self.host_status = Some(host);
        self
    }

    pub fn status(&self) -> watch::Receiver<ShipStatus> {
        self.status.subscribe()
    }

    /// Ships until `shutdown`, then waits up to [`DRAIN`] for what is in
    /// flight and saves the cursor.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let name = format!("legsync {}", self.host);
        let mut pause = RETRY_FIRST;
        let (client, jetstream) = loop {
            match super::connect(&self.config, &name, true).await {
                Ok(connected) => break connected,
                Err(e) => {
                    self.failed(&e);
                    if !wait(&shutdown, RETRY_MAX).await {
                        return;
                    }
                }
            }
        };
        tracing::info!(stream = %self.config.stream, servers = %self.config.servers.join(", "), from = self.cursor.record + 1, "shipping the ledger to the fleet stream");
        let mut stream_ready = false;
        while !shutdown.is_cancelled() {
            let connected = client.connection_state() == async_nats::connection::State::Connected;
            let shipped = match stream_ready {
                true => self.ship(&client, &jetstream, &shutdown).await,
                false => self.ensure_stream(&jetstream).await.map(|()| {
                    stream_ready = true;
                    pause = RETRY_FIRST;
                }),
            };
            match shipped {
                Ok(()) => {}
                Err(e) => {
                    if connected {
                        self.failed(&e);
                    } else {
                        self.failed(&anyhow::anyhow!(
                            "NATS is away ({}): {e:#}",
                            self.config.servers.join(", ")
                        ));
                    }
                    if !wait(&shutdown, pause).await {
                        break;
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
            if self.status.borrow().error.is_none() {
                pause = RETRY_FIRST;
            }
        }
        self.save_cursor().await;
        metrics::gauge!(m::SHIP_CONNECTED).set(0.0);
    }

    /// Finds the stream, or creates it with `[ship]`'s settings.
    async fn ensure_stream(&mut self, jetstream: &jetstream::Context) -> anyhow::Result<()> {
        let config = jetstream::stream::Config {
            name: self.config.stream.clone(),
            subjects: vec![format!("{}.>", self.config.subject_prefix)],
            num_replicas: self.config.replicas,
            duplicate_window: self.config.duplicate_window(),
            max_age: Duration::from_secs(self.config.max_age_days * 86_400),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        jetstream
            .get_or_create_stream(config)
            .await
            .with_context(|| format!("cannot find or create the stream {}", self.config.stream))?;
        Ok(())
    }

    /// Publishes from the record after the cursor on, until `shutdown` (Ok)
    /// or a failure (Err: in-flight records are sent again).
    async fn ship(
        &mut self,
        client: &async_nats::Client,
        jetstream: &jetstream::Context,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let max = self.config.max_in_flight;
        let mut reader = Some(LedgerReader::new(&self.ledger, self.cursor.record + 1));
        // Records read and not yet sent: the first, read to find where the
        // stream stands.
        let mut unsent = self.resume(jetstream, &mut reader).await?;
        // (last record, records) of each message in flight, with its ack.
        let mut in_flight = FuturesOrdered::new();
        let mut records_in_flight = 0usize;
        let mut tick = tokio::time::interval(CURSOR_EVERY);
        let mut draining: Option<Instant> = None;
        let mut host = self.host_status.clone();
        let linger = Duration::from_millis(self.config.linger_ms);
        let mut lingering: Option<Instant> = None;
        loop {
            let durable = self.note_mark();
            let resyncing = host.as_mut().is_some_and(|h| {
                h.borrow_and_update().link == Some(crate::events::LinkState::Resyncing)
            });
            let room = max.saturating_sub(records_in_flight);
            let next = reader.as_ref().map_or(u64::MAX, LedgerReader::next_record);
            // Read in batches: a read per acknowledgement would cost a
            // blocking-thread hop per message.
            let worth_reading = room >= max / 2 || records_in_flight < READ_AT_LEAST;
            // A few records wait up to `linger_ms` for more (fewer, fuller
            // messages: less work for the servers); a message's worth goes
            // at once.
            let available = durable.saturating_sub(next.saturating_sub(1)) as usize + unsent.len();
            if available == 0 {
                lingering = None;
            } else if lingering.is_none() {
                lingering = Some(Instant::now() + linger);
            }
            let due = available >= self.config.batch_records
                || lingering.is_some_and(|until| Instant::now() >= until)
                || shutdown.is_cancelled();
            if draining.is_none()
                && !resyncing
                && worth_reading
                && due
                && (next <= durable || !unsent.is_empty())
            {
                let mut records = std::mem::take(&mut unsent);
                if next <= durable && room > records.len() {
                    let taken = reader.take().expect("kept between reads");
                    let (back, read) =
                        read(&self.ledger, taken, durable, room - records.len()).await;
                    reader = Some(back);
                    records.extend(read?);
                }
                for message in messages(records, self.config.batch_records, BATCH_BYTES) {
                    self.age_from(&message[0]);
                    let (first, last) = (&message[0], &message[message.len() - 1]);
                    let subject =
                        super::subject(&self.config.subject_prefix, &first.engine, &first.host);
                    let id = super::message_id(
                        &first.engine,
                        &first.host,
                        first.epoch,
                        first.record,
                        last.record,
                    );
                    let (number, count) = (last.record, message.len());
                    let ack = jetstream
                        .send_publish(
                            subject,
                            PublishMessage::build()
                                .payload(payload(&message))
                                .message_id(id),
                        )
                        .await
                        .context("cannot publish to the stream")?;
                    records_in_flight += count;
                    in_flight.push_back(async move { (number, count, ack.await) });
                }
                self.report(client);
                continue;
            }
            if draining.is_none() && shutdown.is_cancelled() {
                draining = Some(Instant::now() + DRAIN);
            }
            if let Some(until) = draining
                && (in_flight.is_empty() || Instant::now() >= until)
            {
                return Ok(());
            }
            tokio::select! {
                acked = in_flight.next(), if !in_flight.is_empty() => {
                    let mut acked = acked;
                    // Every acknowledgement already in, before reading more.
                    while let Some((record, count, ack)) = acked {
                        let ack = ack.with_context(|| format!("the stream did not acknowledge records up to {record}"))?;
                        records_in_flight -= count;
                        self.acknowledged(record, count as u64, &ack);
                        acked = in_flight.next().now_or_never().flatten();
                    }
                }
                changed = self.marks.changed(), if draining.is_none() => {
                    if changed.is_err() {
                        // The writer is gone: the host is stopping.
                        draining.get_or_insert(Instant::now() + DRAIN);
                    }
                }
                _ = shutdown.cancelled(), if draining.is_none() => {}
                changed = async { host.as_mut().expect("with a host").changed().await }, if resyncing => {
                    if changed.is_err() {
                        host = None;
                    }
                }
                _ = tick.tick() => {
                    self.save_cursor().await;
                    self.report(client);
                }
                _ = tokio::time::sleep(DRAIN), if draining.is_some() => {}
                _ = tokio::time::sleep_until(lingering.unwrap_or_else(Instant::now).into()), if lingering.is_some() && !due => {}
            }
        }
    }

    /// Where the stream stands: its messages of the subject the next record
    /// goes to may hold records past the cursor (sent before a crash,
    /// acknowledged after the cursor was saved, or the cursor lost). Those
    /// the stream holds without a hole from the cursor on are not sent
    /// again: the cursor moves past them, once the last of them is found
    /// byte for byte in this ledger (a stream holding other records under
    /// this host's name is refused). Returns the records read and still to
    /// send.
    async fn resume(
        &mut self,
        jetstream: &jetstream::Context,
        reader: &mut Option<LedgerReader>,
    ) -> anyhow::Result<Vec<RawRecord>> {
        let durable = self.note_mark();
        if self.cursor.record >= durable {
            return Ok(Vec::new());
        }
        let taken = reader.take().expect("kept between reads");
        let (back, first) = read(&self.ledger, taken, durable, 1).await;
        *reader = Some(back);
        let first = first?;
        let Some(next) = first.first() else {
            return Ok(first);
        };
        let subject = super::subject(&self.config.subject_prefix, &next.engine, &next.host);
        let stream = jetstream
            .get_stream(&self.config.stream)
            .await
            .with_context(|| format!("cannot open the stream {}", self.config.stream))?;
        let Some((stored, sequence)) = self.stream_reach(&stream, &subject).await? else {
            return Ok(first);
        };
        anyhow::ensure!(
            stored <= durable,
            "the stream's records of {subject} go up to record {stored}, and this ledger to {durable}: \
             they are another ledger's under this host's name (a host renamed, or its ledger replaced). \
             Give this host its own name, or ship to another stream"
        );
        let message = stream
            .get_raw_message(sequence)
            .await
            .with_context(|| format!("cannot read message {sequence} of the stream"))?;
        let line = last_line(&message.payload);
        // Read on to the stream's last record, and compare it.
        let mut ours = first;
        while ours.last().is_some_and(|r| r.record < stored) {
            let taken = reader.take().expect("kept between reads");
            let (back, more) = read(&self.ledger, taken, stored, 4096).await;
            *reader = Some(back);
            let more = more?;
            anyhow::ensure!(!more.is_empty(), "the ledger ended before record {stored}");
            ours = more;
        }
        let found = ours.last().expect("read above");
        anyhow::ensure!(
            found.record == stored && found.line.as_ref() == line,
            "the stream's record {stored} of {subject} differs from this ledger's: they are another ledger's under this host's name \
             (a host renamed, or its ledger replaced). Give this host its own name, or ship to another stream"
        );
        tracing::info!(subject = %subject, from = self.cursor.record + 1, to = stored, "the stream already holds these records: not sent again");
        self.cursor.record = stored;
        self.cursor.sequence = sequence;
        self.pending.retain(|&(covered, _)| covered > stored);
        self.report_lag();
        Ok(Vec::new())
    }

    /// How far the stream holds this ledger's records past the cursor
    /// without a hole (a message lost while a later one was stored, in a
    /// leader change, must be sent again): the last such record and the
    /// sequence of its message. Reads `subject`'s messages after the
    /// cursor's (all of them if the cursor has no sequence: a lost cursor).
    async fn stream_reach(
        &self,
        stream: &jetstream::stream::Stream,
        subject: &str,
    ) -> anyhow::Result<Option<(u64, u64)>> {
        use async_nats::jetstream::consumer::DeliverPolicy;
        let deliver_policy = match self.cursor.sequence {
            0 => DeliverPolicy::All,
            sequence => DeliverPolicy::ByStartSequence {
                start_sequence: sequence + 1,
            },
        };
        // (first, last, sequence) of each message.
        let mut held = Vec::new();
        super::stream::each_message(stream, subject, deliver_policy, |sequence, _, body| {
            if let Some((first, last)) = records_of(body) {
                held.push((first, last, sequence));
            }
        })
        .await
        .with_context(|| format!("cannot read {subject} in the stream"))?;
        held.sort_unstable();
        let mut reach = None;
        let mut last = self.cursor.record;
        for (first, end, sequence) in held {
            if first > last + 1 {
                break;
            }
            if end > last {
                last = end;
                reach = Some((end, sequence));
            }
        }
        Ok(reach)
    }

    /// The latest durable record, its mark remembered for the lag.
    fn note_mark(&mut self) -> u64 {
        let mark = *self.marks.borrow_and_update();
        if mark.record > self.cursor.record
            && self.pending.back().is_none_or(|&(r, _)| r < mark.record)
        {
            if self.pending.len() >= MARKS_KEPT {
                // Merged into the last: the lag errs on the long side.
                if let Some(last) = self.pending.back_mut() {
                    last.0 = mark.record;
                }
            } else {
                self.pending.push_back((mark.record, mark.at_us));
            }
        }
        mark.record
    }

    /// Records from before this start have no mark: their age is their
    /// own time.
    fn age_from(&mut self, record: &RawRecord) {
        if let Some(front) = self.pending.front_mut()
            && front.1 == 0
        {
            front.1 = record.time_ms * 1000;
        }
    }

    fn acknowledged(&mut self, record: u64, records: u64, ack: &jetstream::publish::PublishAck) {
        let duplicate = ack.duplicate;
        self.cursor.record = record;
        self.cursor.sequence = ack.sequence;
        metrics::counter!(m::SHIP_RECORDS).increment(records);
        if duplicate {
            metrics::counter!(m::SHIP_DUPLICATES).increment(records);
        }
        let now = crate::model::now_us();
        while let Some(&(covered, at_us)) = self.pending.front() {
            if covered > record {
                break;
            }
            if at_us > 0 {
                metrics::histogram!(m::SHIP_LAG_SECONDS)
                    .record(now.saturating_sub(at_us) as f64 / 1e6);
            }
            self.pending.pop_front();
        }
        self.status.send_modify(|s| {
            s.acknowledged += records;
            s.duplicates += if duplicate { records } else { 0 };
            s.error = None;
        });
        self.report_lag();
    }

    /// Publishes the lag and the connection state.
    fn report(&self, client: &async_nats::Client) {
        let connected = client.connection_state() == async_nats::connection::State::Connected;
        metrics::gauge!(m::SHIP_CONNECTED).set(f64::from(u8::from(connected)));
        self.status.send_modify(|s| s.connected = connected);
        self.report_lag();
    }

    /// Publishes how far behind the stream is.
    fn report_lag(&self) {
        let durable = self.marks.borrow().record;
        let behind = durable.saturating_sub(self.cursor.record);
        let now = crate::model::now_us();
        let seconds = match self.pending.front() {
            Some(&(_, at_us)) if behind > 0 && at_us > 0 => now.saturating_sub(at_us) as f64 / 1e6,
            _ => 0.0,
        };
        metrics::gauge!(m::SHIP_BEHIND_RECORDS).set(behind as f64);
        metrics::gauge!(m::SHIP_BEHIND_SECONDS).set(seconds);
        self.status.send_modify(|s| {
            s.shipped = self.cursor.record;
            s.durable = durable;
            s.behind_records = behind;
            s.behind_seconds = seconds;
        });
    }

    fn failed(&self, error: &anyhow::Error) {
        let error = format!("{error:#}");
        metrics::counter!(m::SHIP_FAILURES).increment(1);
        metrics::gauge!(m::SHIP_CONNECTED).set(0.0);
        let repeated = self.status.borrow().error.as_deref() == Some(error.as_str());
        if !repeated {
            tracing::warn!(error = %error, shipped = self.cursor.record, "shipping interrupted; the ledger keeps every record, and shipping resumes from the last acknowledged one");
        }
        self.status.send_modify(|s| {
            s.error = Some(error);
            s.connected = false;
        });
    }

    /// Saves the cursor if it moved (off the runtime's threads).
    async fn save_cursor(&mut self) {
        if self.cursor.record == self.saved {
            return;
        }
        let (path, cursor) = (cursor::cursor_path(&self.ledger), self.cursor.clone());
        let record = cursor.record;
        let saved = tokio::task::spawn_blocking(move || cursor::write(&path, &cursor)).await;
        match saved {
            Ok(Ok(())) => self.saved = record,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, file = %cursor::cursor_path(&self.ledger).display(), "cannot save the shipping cursor (a restart sends more again; the stream drops the duplicates)")
            }
            Err(e) => tracing::warn!(error = %e, "the cursor's writer failed"),
        }
    }
}

/// Reads up to `max` records through `upto` on a blocking thread (the
/// ledger is a file), handing the reader back.
async fn read(
    ledger: &Path,
    mut reader: LedgerReader,
    upto: u64,
    max: usize,
) -> (LedgerReader, anyhow::Result<Vec<RawRecord>>) {
    let next = reader.next_record();
    let ledger_reader = tokio::task::spawn_blocking(move || {
        let mut out = Vec::with_capacity(max.min(4096));
        let read = reader.read(upto, max, &mut out).map(|()| out);
        (reader, read)
    })
    .await;
    match ledger_reader {
        Ok((reader, read)) => (reader, read.map_err(anyhow::Error::from)),
        Err(e) => (
            LedgerReader::new(ledger, next),
            Err(anyhow::anyhow!("the ledger reader failed: {e}")),
        ),
    }
}

/// Consecutive records cut into messages: one subject each (engine and
/// host), at most `records` records and about `bytes` bytes.
fn messages(records: Vec<RawRecord>, most: usize, bytes: usize) -> Vec<Vec<RawRecord>> {
    let mut out: Vec<Vec<RawRecord>> = Vec::new();
    let mut size = 0;
    for record in records {
        let fits = out.last().is_some_and(|message| {
            let first = &message[0];
            message.len() < most
                && size + record.line.len() < bytes
                && first.engine == record.engine
                && first.host == record.host
        });
        if !fits {
            out.push(Vec::new());
            size = 0;
        }
        size += record.line.len() + 1;
        out.last_mut().expect("pushed above").push(record);
    }
    out
}

/// A message's body: its ledger lines, each with its newline, as on disk.
fn payload(message: &[RawRecord]) -> bytes::Bytes {
    let mut body = Vec::with_capacity(message.iter().map(|r| r.line.len() + 1).sum());
    for record in message {
        body.extend_from_slice(&record.line);
        body.push(b'\n');
    }
    body.into()
}

/// The first and last record numbers of a message's body.
fn records_of(body: &[u8]) -> Option<(u64, u64)> {
    let number = |line: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(line)
            .ok()?
            .get("record")?
            .as_u64()
    };
    let first = body.split(|&b| b == b'\n').next()?;
    Some((number(first)?, number(last_line(body))?))
}

/// The last line of a message's body, without its newline.
fn last_line(body: &[u8]) -> &[u8] {
    let body = body.strip_suffix(b"\n").unwrap_or(body);
    match body.iter().rposition(|&b| b == b'\n') {
        Some(at) => &body[at + 1..],
        None => body,
    }
}

/// Waits `pause`; false if `shutdown` came first.
async fn wait(shutdown: &CancellationToken, pause: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => false,
        _ = tokio::time::sleep(pause) => true,
    }
}

//! The simulator's two listeners: the engine port, serving one controlling
//! host at a time, and the text control port.

use super::control::{ControlCommand, execute};
use super::controller::{Controller, ControllerSlot};
use super::media::{MediaView, StoredLeg};
use super::persist;
use super::state::EngineState;
use super::traffic::{self, Traffic};
use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use legsync::model::now_ms;
use legsync::protocol::codec::{encode_encoded_legs_frame, encode_frame};
use legsync::protocol::{
    Command, CommandResult, EngineEvent, EngineMessage, FrameCodec, HostMessage,
    OLDEST_PROTOCOL_VERSION, ProtocolError, SNAPSHOT_CHUNK,
};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, interval, timeout};
use tokio_util::codec::Framed;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

/// A host's connection: plain TCP, or TLS over it (`--tls-cert`).
pub type SimStream = Either<TcpStream, tokio_rustls::server::TlsStream<TcpStream>>;

/// What every connection handler shares.
pub struct Shared {
    pub state: Mutex<EngineState>,
    pub boot_id: u64,
    pub state_file: PathBuf,
    pub heartbeat: Duration,
    pub heartbeat_timeout: Duration,
    pub max_frame: usize,
    /// Stream snapshots in ascending leg id order instead of the table's
    /// own (FxHash) order: a neutral order, as an engine walking its leg
    /// array would send (see benches/README.md on what order costs).
    pub ascending: bool,
    /// The newest protocol version spoken: a host offering a newer one is
    /// closed on (as an engine of that version would).
    pub protocol: u8,
    /// Serializes writes of the state file.
    pub persist_lock: tokio::sync::Mutex<()>,
    /// Until when hosts are cut off (the `partition` control command).
    pub partitioned_until: Mutex<Option<Instant>>,
    /// Which host controls the engine, under which epoch.
    pub controller: ControllerSlot,
    /// This engine's name, in its hello and in every ledger record.
    pub name: String,
    /// TLS for hosts (mutual: a host must show a certificate of the
    /// client CA); none: plain TCP.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The traffic generator (`traffic`, `burst`).
    pub traffic: Mutex<Traffic>,
    /// A `traffic` command is running: the state file is saved when it
    /// ends, not during it (a save shares the whole view copy-on-write, and
    /// the next change then copies it under the state lock, stalling the
    /// generator for tens of milliseconds at 200,000 calls).
    pub generating: std::sync::atomic::AtomicBool,
    /// Gaps between the controller's heartbeats (`heartbeats`).
    pub heartbeat_gaps: Mutex<HeartbeatGaps>,
}

/// The longest gap between two heartbeats of the controller on one
/// connection, since last asked: a host that lets work delay its
/// heartbeats risks being dropped by its engine.
#[derive(Debug, Default)]
pub struct HeartbeatGaps {
    pub longest: Duration,
    pub count: u64,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, EngineState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The traffic generator (lock it after the state, never before).
    pub fn traffic(&self) -> MutexGuard<'_, Traffic> {
        self.traffic.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn heartbeat_gaps(&self) -> MutexGuard<'_, HeartbeatGaps> {
        self.heartbeat_gaps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts the host off for `duration`: its connection closes now and new
    /// ones are closed on accept until the time is up.
    pub fn partition(&self, duration: Duration) {
        *self
            .partitioned_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + duration);
        self.controller.disconnect();
        // Detached now, not when its task winds down: no event slips through
        // to the host once the partition is acknowledged.
        if duration > Duration::ZERO {
            self.lock().detach_host();
        }
    }

    fn partitioned(&self) -> bool {
        self.partitioned_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    /// Saves the media-unit view if it changed.
    pub async fn persist_if_dirty(self: &Arc<Self>) -> anyhow::Result<()> {
        let _guard = self.persist_lock.lock().await;
        let view = {
            let mut state = self.lock();
            if !state.unsaved() {
                return Ok(());
            }
            state.view_to_save()
        };
        // Written outside the lock: hosts and commands go on meanwhile.
        let path = self.state_file.clone();
        tokio::task::spawn_blocking(move || persist::save(&path, &view)).await?
    }
}

pub async fn accept_hosts(shared: Arc<Shared>, listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        if shared.partitioned() {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let stream = match &shared.tls {
                None => Either::Left(stream),
                Some(acceptor) => {
                    match timeout(shared.heartbeat_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => Either::Right(stream),
                        Ok(Err(e)) => {
                            tracing::warn!(%peer, error = %e, "TLS handshake with a host failed");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(%peer, "TLS handshake with a host timed out");
                            return;
                        }
                    }
                }
            };
            match serve_host(&shared, stream, &shutdown).await {
                Ok(()) => tracing::info!(%peer, "host disconnected"),
                Err(e) => tracing::warn!(%peer, error = format!("{e:#}"), "host connection closed"),
            }
        });
    }
}

async fn serve_host(
    shared: &Arc<Shared>,
    stream: SimStream,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut framed = Framed::new(
        stream,
        FrameCodec::<HostMessage, EngineMessage>::new(shared.max_frame),
    );
    let (host, protocol) = match timeout(shared.heartbeat_timeout, framed.next()).await {
        Ok(Some(Ok(HostMessage::Hello { protocol, host })))
            if legsync::protocol::speaks(protocol) && protocol <= shared.protocol =>
        {
            (host, protocol)
        }
        Ok(Some(Ok(HostMessage::Hello { protocol, .. }))) => {
            bail!(
                "host speaks protocol {protocol}, this engine {} (oldest {OLDEST_PROTOCOL_VERSION})",
                shared.protocol
            )
        }
        Ok(Some(Ok(_))) => bail!("expected a hello from the host"),
        Ok(Some(Err(e))) => return Err(e).context("bad hello frame"),
        Ok(None) => bail!("host closed before its hello"),
        Err(_) => bail!("no hello from the host"),
    };
    framed.codec_mut().set_version(protocol);
    if shared.controller.is_isolated(&host) {
        // Cut off: as if its packets never arrived.
        tracing::debug!(%host, "refused an isolated host");
        return Ok(());
    }
    // Attach and take the slot under the state lock: of two hosts racing
    // for a free engine, exactly one gets it.
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    let cancel = shutdown.child_token();
    let attached = {
        let mut state = shared.lock();
        if state.host_attached() {
            None
        } else {
            let snapshot = state.attach_host(events_tx.clone());
            Some((snapshot, shared.controller.take(&host, cancel.clone())))
        }
    };
    let Some((snapshot, controller)) = attached else {
        let reason = match shared.controller.current().0 {
            Some(c) => format!("the engine is controlled by {} (epoch {})", c.host, c.epoch),
            None => "another host is connecting".to_string(),
        };
        framed.send(EngineMessage::Busy { reason }).await?;
        tracing::debug!(%host, "refused a second host (busy)");
        return Ok(());
    };
    let result = async {
        // Durable before the host hears it: an epoch is never given twice.
        shared.controller.persist(controller.epoch).await?;
        framed
            .send(EngineMessage::Hello {
                protocol,
                boot_id: shared.boot_id,
                engine: shared.name.clone(),
                epoch: controller.epoch,
            })
            .await?;
        tracing::info!(%host, epoch = controller.epoch, "host connected: it controls the engine");
        let order = SnapshotOrder {
            version: protocol,
            max_frame: shared.max_frame,
            ascending: shared.ascending,
        };
        stream_snapshot(&mut framed, snapshot, order).await?;
        serve_attached(shared, framed, events, &controller).await
    }
    .await;
    shared.lock().detach_host_if(&events_tx);
    shared.controller.release(controller.epoch);
    result
}

/// Frames encoded ahead of the socket: enough to keep it busy, little memory.
const FRAMES_AHEAD: usize = 16;

/// How a snapshot is streamed.
#[derive(Debug, Clone, Copy)]
struct SnapshotOrder {
    /// The connection's protocol version (below 4: no mixers).
    version: u8,
    max_frame: usize,
    ascending: bool,
}

/// Streams the snapshot: a blocking thread walks the media view and builds
/// `SnapshotLegs` frames (from the legs' stored encodings), then (protocol
/// 4) `SnapshotMixers` and `SnapshotJoins` frames, then `SnapshotLinks`
/// frames, while this task writes the previous ones, so the
/// host starts decoding the first chunk while the last is still being
/// encoded (as a real engine walks its table). No lock is held here: the
/// view is shared copy-on-write with the live state.
async fn stream_snapshot(
    framed: &mut Framed<SimStream, FrameCodec<HostMessage, EngineMessage>>,
    snapshot: MediaView,
    order: SnapshotOrder,
) -> anyhow::Result<()> {
    let SnapshotOrder {
        version,
        max_frame,
        ascending,
    } = order;
    framed
        .send(EngineMessage::SnapshotBegin {
            legs: snapshot.legs.len() as u64,
            links: snapshot.links.len() as u64,
        })
        .await?;
    let (frames_tx, mut frames) = tokio::sync::mpsc::channel(FRAMES_AHEAD);
    let encoder = tokio::task::spawn_blocking(move || {
        let mut order: Vec<&StoredLeg> = snapshot.legs.values().collect();
        if ascending {
            order.sort_unstable_by_key(|stored| stored.leg.id);
        }
        let legs = order.into_iter().map(|stored| &*stored.wire);
        let mut sent = send_chunks(&frames_tx, legs, |chunk| {
            encode_encoded_legs_frame(&chunk, version, max_frame)
        })?;
        if sent && version >= 4 {
            let mixers = snapshot.mixers.values().cloned();
            sent = send_chunks(&frames_tx, mixers, |chunk| {
                encode_frame(&EngineMessage::SnapshotMixers(chunk), version, max_frame)
            })?;
            if sent {
                sent = send_chunks(&frames_tx, snapshot.answered_joins(), |chunk| {
                    encode_frame(&EngineMessage::SnapshotJoins(chunk), version, max_frame)
                })?;
            }
        }
        let links = snapshot.links.values().copied();
        if sent {
            send_chunks(&frames_tx, links, |chunk| {
                encode_frame(&EngineMessage::SnapshotLinks(chunk), version, max_frame)
            })?;
        }
        Ok::<_, ProtocolError>(())
    });
    let socket = framed.get_mut();
    while let Some(frame) = frames.recv().await {
        socket.write_all(&frame).await?;
    }
    encoder.await.context("snapshot encoder")??;
    framed.send(EngineMessage::SnapshotEnd).await?;
    Ok(())
}

/// Encodes `items` a `SNAPSHOT_CHUNK` at a time and sends the frames;
/// false if the connection went away first.
fn send_chunks<T>(
    frames: &tokio::sync::mpsc::Sender<bytes::Bytes>,
    mut items: impl Iterator<Item = T>,
    encode: impl Fn(Vec<T>) -> Result<bytes::Bytes, ProtocolError>,
) -> Result<bool, ProtocolError> {
    loop {
        let chunk: Vec<T> = items.by_ref().take(SNAPSHOT_CHUNK).collect();
        if chunk.is_empty() {
            return Ok(true);
        }
        if frames.blocking_send(encode(chunk)?).is_err() {
            return Ok(false);
        }
    }
}

/// Serves the controller: its frames are read here, while a writer task
/// sends events, acknowledgements and heartbeats. Reading never waits for
/// writing: a host slow to read events (the socket full) still has its
/// heartbeats and commands read on time, as a real engine's would be.
async fn serve_attached(
    shared: &Arc<Shared>,
    framed: Framed<SimStream, FrameCodec<HostMessage, EngineMessage>>,
    events: tokio::sync::mpsc::UnboundedReceiver<legsync::protocol::EngineEvent>,
    controller: &Controller,
) -> anyhow::Result<()> {
    let version = framed.codec().version();
    let (sink, mut stream) = framed.split();
    let (acks, acks_rx) = tokio::sync::mpsc::unbounded_channel();
    let writer = write_to_host(sink, events, acks_rx, shared.heartbeat, version);
    tokio::pin!(writer);
    let mut last_seen = Instant::now();
    let mut last_heartbeat: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = controller.cancel.cancelled() => return Ok(()),
            _ = controller.isolate.cancelled() => {
                // The network to this host is gone: nothing arrives, nothing
                // leaves, until the heartbeat timeout says so.
                tokio::select! {
                    _ = controller.cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep_until(last_seen + shared.heartbeat_timeout) => {}
                }
                bail!("no heartbeat from the host for {:?} (isolated)", shared.heartbeat_timeout);
            }
            written = &mut writer => return written,
            // Silence is noticed when the timeout passes, not at the next
            // tick: a standby's takeover waits for exactly this.
            _ = tokio::time::sleep_until(last_seen + shared.heartbeat_timeout) => {
                bail!("no heartbeat from the host for {:?}", shared.heartbeat_timeout);
            }
            frame = stream.next() => {
                last_seen = Instant::now();
                match frame {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e).context("bad frame from the host"),
                    Some(Ok(HostMessage::Heartbeat)) => {
                        if let Some(previous) = last_heartbeat.replace(last_seen) {
                            let mut gaps = shared.heartbeat_gaps();
                            gaps.longest = gaps.longest.max(last_seen - previous);
                            gaps.count += 1;
                        }
                    }
                    Some(Ok(HostMessage::Command { id, epoch, command })) => {
                        let result = if epoch != controller.epoch {
                            tracing::warn!(host = %controller.host, epoch, current = controller.epoch, "fenced a command from a stale epoch");
                            CommandResult::Fenced
                        } else {
                            let mut state = shared.lock();
                            match command {
                                Command::DropLeg(leg) => state.drop_leg(leg),
                                Command::DropLink(link) => state.drop_link(link),
                                Command::FreeMixer(mixer) => state.free_mixer_command(mixer),
                                Command::UnjoinLeg { mixer, leg } => state.unjoin_command(leg, mixer),
                            }
                        };
                        let _ = acks.send(EngineMessage::Ack { command: id, result });
                    }
                    Some(Ok(HostMessage::Hello { .. })) => bail!("unexpected second hello"),
                }
            }
        }
    }
}

/// Sends the controller its events, acknowledgements and heartbeats, in
/// batches: whatever is waiting goes out with one flush.
async fn write_to_host(
    mut sink: futures_util::stream::SplitSink<
        Framed<SimStream, FrameCodec<HostMessage, EngineMessage>>,
        EngineMessage,
    >,
    mut events: tokio::sync::mpsc::UnboundedReceiver<legsync::protocol::EngineEvent>,
    mut acks: tokio::sync::mpsc::UnboundedReceiver<EngineMessage>,
    every: Duration,
    version: u8,
) -> anyhow::Result<()> {
    // A version 3 host hears nothing of mixers.
    let heard = |event: &EngineEvent| {
        version >= 4
            || !matches!(
                event,
                EngineEvent::MixerCreated(_)
                    | EngineEvent::MixerFreed(_)
                    | EngineEvent::LegJoined(_)
                    | EngineEvent::LegUnjoined { .. }
            )
    };
    let mut heartbeat = interval(every);
    loop {
        tokio::select! {
            Some(event) = events.recv() => {
                if heard(&event) {
                    sink.feed(EngineMessage::Event(event)).await?;
                }
                while let Ok(event) = events.try_recv() {
                    if heard(&event) {
                        sink.feed(EngineMessage::Event(event)).await?;
                    }
                }
            }
            Some(ack) = acks.recv() => {
                sink.feed(ack).await?;
                // Acks are flushed once the burst of commands read so far is done.
                while let Ok(ack) = acks.try_recv() {
                    sink.feed(ack).await?;
                }
            }
            _ = heartbeat.tick() => sink.feed(EngineMessage::Heartbeat).await?,
        }
        sink.flush().await?;
    }
}

pub async fn accept_control(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_control(&shared, stream).await {
                tracing::debug!(error = %e, "control connection ended");
            }
        });
    }
}

async fn serve_control(shared: &Arc<Shared>, stream: TcpStream) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let reply = match ControlCommand::parse(&line) {
            Err(e) => format!("ERR {e}"),
            Ok(ControlCommand::Partition(ms)) => {
                shared.partition(Duration::from_millis(ms));
                "OK".to_string()
            }
            Ok(ControlCommand::Isolate(ms)) => {
                match shared.controller.isolate(Duration::from_millis(ms)) {
                    Some(host) => format!("OK {host}"),
                    None => "ERR no host controls the engine".to_string(),
                }
            }
            Ok(ControlCommand::Traffic { rate, ms }) => {
                use std::sync::atomic::Ordering;
                shared.generating.store(true, Ordering::Relaxed);
                let reply = traffic::run(shared, rate, Duration::from_millis(ms)).await;
                shared.generating.store(false, Ordering::Relaxed);
                reply
            }
            Ok(ControlCommand::Burst(count)) => {
                // A hundred thousand releases hold the state for a while:
                // off the runtime, whose threads serve the host's frames.
                let shared = shared.clone();
                tokio::task::spawn_blocking(move || traffic::burst(&shared, count))
                    .await
                    .unwrap_or_else(|e| format!("ERR the burst failed: {e}"))
            }
            Ok(ControlCommand::Heartbeats) => {
                let gaps = std::mem::take(&mut *shared.heartbeat_gaps());
                format!(
                    "OK longest_gap_ms={} count={}",
                    gaps.longest.as_millis(),
                    gaps.count
                )
            }
            Ok(ControlCommand::Controller) => match shared.controller.current() {
                (Some(c), _) => format!("OK {} epoch {}", c.host, c.epoch),
                (None, last) => format!("OK none epoch {last}"),
            },
            Ok(command) => {
                let reply = execute(&mut shared.lock(), &command, shared.boot_id, now_ms());
                // The media units are the truth: a change is saved before
                // it is acknowledged.
                if command.mutates() && !reply.starts_with("ERR") {
                    if let Err(e) = shared.persist_if_dirty().await {
                        format!("ERR cannot save the state file: {e:#}")
                    } else {
                        reply
                    }
                } else {
                    reply
                }
            }
        };
        write.write_all(reply.as_bytes()).await?;
        write.write_all(b"\n").await?;
    }
    Ok(())
}

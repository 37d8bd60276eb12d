//! One connection to the engine: a reader task and a writer task.
//!
//! The reader forwards frames to the supervisor and declares the link dead
//! when nothing arrives for the heartbeat timeout (a peer frozen without
//! closing its socket is caught this way). The writer sends commands and a
//! heartbeat every interval. Both run apart from the supervisor, so a long
//! decision batch never starves the heartbeats.

use crate::protocol::{
    Command, EngineMessage, FrameCodec, HostMessage, OLDEST_PROTOCOL_VERSION, ProtocolError,
};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::codec::Framed;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Link settings.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// `host:port`; a name is resolved at every attempt.
    pub engine: String,
    pub connect_timeout: Duration,
    pub heartbeat: Duration,
    /// Silence longer than this means the link is dead.
    pub heartbeat_timeout: Duration,
    pub max_frame: usize,
    /// The protocol version we offer (and then speak): 3 or 4.
    pub protocol: u8,
    /// Our name in the hello: the engine names its controller with it, and
    /// the ledger's records carry it. Unique within a host pair.
    pub host_name: String,
    /// TLS with the engine; none: plain TCP.
    pub tls: Option<LinkTls>,
    /// Where the links record their longest heartbeat gap.
    pub heartbeat_gaps: HeartbeatGaps,
}

/// The engine link's TLS: who we trust and are (see [`crate::tls`]), and
/// the name the engine's certificate must carry.
#[derive(Debug, Clone)]
pub struct LinkTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// The engine connection's bytes: plain TCP, or TLS over it.
pub type EngineStream = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// The longest engine name accepted in a hello.
pub const MAX_ENGINE_NAME: usize = 255;

/// Why the link is down (or could not come up).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    // `error`, not `source`: the cause is in the message once.
    #[error("cannot connect to the engine at {addr}: {error}")]
    Connect { addr: String, error: std::io::Error },
    #[error("the engine at {0} did not answer within the connect timeout")]
    ConnectTimeout(String),
    #[error("the engine has another controller: {0}")]
    Busy(String),
    #[error("TLS with the engine at {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
    #[error("the engine answered in protocol {found}, we offered {offered}")]
    Version { found: u8, offered: u8 },
    #[error(
        "the engine closed the connection on our hello (protocol {offered}): an engine that speaks protocol 3 only does this; if it is one, set link.protocol = 3"
    )]
    ClosedOnHello { offered: u8 },
    #[error(
        "the peer at {addr} does not speak the legsync protocol (it sent `{sample}`): is `engine` the engine's port?"
    )]
    NotLegsync { addr: String, sample: String },
    #[error(
        "the engine at {addr} answers with TLS and this host has no [tls]: configure [tls] (docs/operations.md, \"The engine link over TLS\")"
    )]
    TlsExpected { addr: String },
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("no frame from the engine for {0:?} (heartbeat lost)")]
    HeartbeatLost(Duration),
    #[error("the engine closed the connection")]
    Closed,
    #[error("the engine fenced our command: this connection's epoch is no longer the controller's")]
    Fenced,
    #[error("unexpected message from the engine: {message} {place}")]
    Unexpected {
        /// The message's name (`EngineMessage::name`).
        message: &'static str,
        place: Place,
    },
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
    #[error(transparent)]
    Stalled(#[from] Stall),
    /// The engine's controller epoch is below one the ledger has seen.
    #[error(transparent)]
    EpochWentBack(#[from] crate::cdr::index::EpochWentBack),
}

/// Where in the conversation an unexpected message came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    BeforeHello,
    InsteadOfSnapshot,
    InsideSnapshot,
    OutsideSnapshot,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Place::BeforeHello => "before hello",
            Place::InsteadOfSnapshot => "instead of a snapshot",
            Place::InsideSnapshot => "inside a snapshot",
            Place::OutsideSnapshot => "outside a snapshot",
        })
    }
}

/// What the engine sent past a bound of this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error(
        "the engine announces a snapshot of {legs} legs and {links} links, above max_legs ({max_legs}) or max_links ({max_links})"
    )]
    SnapshotAnnounced {
        legs: u64,
        links: u64,
        max_legs: usize,
        max_links: usize,
    },
    #[error("the engine's snapshot goes past max_legs ({max}) legs")]
    SnapshotLegs { max: usize },
    #[error("the engine's snapshot goes past max_links ({max}) links")]
    SnapshotLinks { max: usize },
    #[error("the engine's snapshot goes past max_mixers ({max}) mixers")]
    SnapshotMixers { max: usize },
    #[error("the engine's snapshot goes past max_joins ({max}) joins")]
    SnapshotJoins { max: usize },
    #[error(
        "the engine's name is {bytes} bytes long or holds control characters: at most {MAX_ENGINE_NAME} printable bytes (it is stamped on every ledger record)"
    )]
    EngineName { bytes: usize },
}

/// Why a resync was cut off before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Stall {
    #[error(
        "the resync was still running at the grace deadline: the engine is cut off, and the held contexts end"
    )]
    AtGraceDeadline,
    #[error("the resync took longer than its budget of {secs} s: the engine is cut off")]
    PastBudget { secs: u64 },
}

impl LinkError {
    /// Every [`LinkError::reason`], for the metrics shown at 0 from the start.
    pub const REASONS: &[&str] = &[
        "connect",
        "busy",
        "tls",
        "protocol",
        "heartbeat",
        "closed",
        "fenced",
        "unexpected",
        "limit",
        "stalled",
        "epoch-went-back",
    ];

    /// A short name for the reason, for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            LinkError::Connect { .. } | LinkError::ConnectTimeout(_) => "connect",
            LinkError::Busy(_) => "busy",
            LinkError::Tls { .. } | LinkError::TlsExpected { .. } => "tls",
            LinkError::Version { .. } | LinkError::Protocol(_) | LinkError::NotLegsync { .. } => {
                "protocol"
            }
            LinkError::HeartbeatLost(_) => "heartbeat",
            LinkError::Closed | LinkError::ClosedOnHello { .. } => "closed",
            LinkError::Fenced => "fenced",
            LinkError::Unexpected { .. } => "unexpected",
            LinkError::Limit(_) => "limit",
            LinkError::Stalled(_) => "stalled",
            LinkError::EpochWentBack(_) => "epoch-went-back",
        }
    }

    /// The engine sent something we cannot trust (bad frames, a wrong hello).
    pub fn is_peer_fault(&self) -> bool {
        match self {
            LinkError::Protocol(e) => e.is_peer_fault(),
            LinkError::Version { .. }
            | LinkError::EpochWentBack(_)
            | LinkError::Tls { .. }
            | LinkError::TlsExpected { .. }
            | LinkError::Unexpected { .. }
            | LinkError::NotLegsync { .. }
            | LinkError::Limit(_)
            | LinkError::Stalled(_) => true,
            _ => false,
        }
    }
}

type HostFramed = Framed<EngineStream, FrameCodec<EngineMessage, HostMessage>>;

/// A live connection.
#[derive(Debug)]
pub struct Connection {
    /// The engine's boot id from its hello.
    pub boot_id: u64,
    /// The engine's name from its hello.
    pub engine: String,
    /// The controller epoch the engine gave this connection.
    pub epoch: u64,
    /// The protocol version spoken (below 4: the engine has no mixers).
    pub protocol: u8,
    /// Frames from the engine; ends with the error that closed the link.
    pub inbound: mpsc::Receiver<Result<EngineMessage, LinkError>>,
    commands: mpsc::UnboundedSender<(u64, Command)>,
    next_command: u64,
    cancel: CancellationToken,
}

impl Connection {
    /// Connects, exchanges hellos and starts the reader and writer, owned
    /// by `tasks` (they end when the connection is dropped).
    pub async fn open(options: &LinkOptions, tasks: &TaskTracker) -> Result<Connection, LinkError> {
        let addr = options.engine.clone();
        let stream = match timeout(options.connect_timeout, TcpStream::connect(addr.as_str())).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(LinkError::Connect { addr, error }),
            Err(_) => return Err(LinkError::ConnectTimeout(addr)),
        };
        let _ = stream.set_nodelay(true);
        let stream = match &options.tls {
            None => Either::Left(stream),
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
                let handshake = connector.connect(tls.server_name.clone(), stream);
                match timeout(options.connect_timeout, handshake).await {
                    Ok(Ok(stream)) => {
                        let (_, session) = stream.get_ref();
                        if let Some(at) = session
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .and_then(|cert| crate::tls::not_after(cert))
                        {
                            crate::metrics::certificate_expiry("engine", at);
                        }
                        Either::Right(stream)
                    }
                    Ok(Err(error)) => {
                        return Err(LinkError::Tls {
                            addr,
                            reason: tls_reason(&error),
                        });
                    }
                    Err(_) => return Err(LinkError::ConnectTimeout(addr)),
                }
            }
        };
        let tls = options.tls.is_some();
        let mut codec = FrameCodec::new(options.max_frame);
        codec.set_version(options.protocol);
        let mut framed = Framed::new(stream, codec);
        framed
            .send(HostMessage::Hello {
                protocol: options.protocol,
                host: options.host_name.clone(),
            })
            .await?;
        let (boot_id, engine, epoch) = match timeout(options.connect_timeout, framed.next()).await {
            Err(_) => return Err(LinkError::ConnectTimeout(addr)),
            // With TLS 1.3 the engine judges our certificate after the
            // handshake: its refusal arrives as the first read's error.
            Ok(Some(Err(ProtocolError::Io(error)))) if tls => {
                return Err(LinkError::Tls {
                    addr,
                    reason: tls_reason(&error),
                });
            }
            Ok(None) if options.protocol > OLDEST_PROTOCOL_VERSION => {
                return Err(LinkError::ClosedOnHello {
                    offered: options.protocol,
                });
            }
            Ok(None) => return Err(LinkError::Closed),
            // A TLS record (an alert, most likely) read as a frame length.
            Ok(Some(Err(ProtocolError::Oversized { .. })))
                if !tls && looks_like_tls(framed.read_buffer()) =>
            {
                return Err(LinkError::TlsExpected { addr });
            }
            Ok(Some(Err(ProtocolError::Oversized { .. })))
                if looks_like_text(framed.read_buffer()) =>
            {
                let sample = String::from_utf8_lossy(
                    &framed.read_buffer()[..framed.read_buffer().len().min(24)],
                );
                return Err(LinkError::NotLegsync {
                    addr,
                    sample: sample.split(['\r', '\n']).next().unwrap_or("").to_string(),
                });
            }
            Ok(Some(frame)) => match frame? {
                EngineMessage::Hello {
                    protocol,
                    boot_id,
                    engine,
                    epoch,
                } if protocol == options.protocol => {
                    // Stamped on every ledger record: a name is a name.
                    if engine.len() > MAX_ENGINE_NAME || engine.chars().any(char::is_control) {
                        return Err(LimitExceeded::EngineName {
                            bytes: engine.len(),
                        }
                        .into());
                    }
                    (boot_id, engine, epoch)
                }
                EngineMessage::Hello { protocol, .. } => {
                    return Err(LinkError::Version {
                        found: protocol,
                        offered: options.protocol,
                    });
                }
                EngineMessage::Busy { reason } => return Err(LinkError::Busy(reason)),
                other => {
                    return Err(LinkError::Unexpected {
                        message: other.name(),
                        place: Place::BeforeHello,
                    });
                }
            },
        };
        let (sink, stream) = framed.split();
        let cancel = CancellationToken::new();
        // Bounded: a snapshot of a million legs waits for the supervisor
        // instead of piling up in memory.
        let (inbound_tx, inbound) = mpsc::channel(64);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        tasks.spawn(read_loop(
            stream,
            inbound_tx,
            options.heartbeat_timeout,
            cancel.clone(),
        ));
        tasks.spawn(write_loop(
            sink,
            epoch,
            commands_rx,
            options.heartbeat,
            options.heartbeat_gaps.clone(),
            cancel.clone(),
        ));
        Ok(Connection {
            boot_id,
            engine,
            epoch,
            protocol: options.protocol,
            inbound,
            commands,
            next_command: 1,
            cancel,
        })
    }

    /// Queues a command; returns its id (acknowledged by `Ack { command }`).
    pub fn send(&mut self, command: Command) -> u64 {
        let id = self.next_command;
        self.next_command += 1;
        let _ = self.commands.send((id, command));
        id
    }

    /// The next frame, or the error that closed the link.
    /// The next message if one is already waiting (never waits).
    pub fn try_next(&mut self) -> Option<Result<EngineMessage, LinkError>> {
        match self.inbound.try_recv() {
            Ok(result) => Some(result),
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => None,
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                Some(Err(LinkError::Closed))
            }
        }
    }

    pub async fn next(&mut self) -> Result<EngineMessage, LinkError> {
        match self.inbound.recv().await {
            Some(result) => result,
            None => Err(LinkError::Closed),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A TLS failure, with what the operator can do about it.
fn tls_reason(error: &std::io::Error) -> String {
    let text = error.to_string();
    // tokio-rustls carries rustls's own error inside the I/O error.
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_)) => format!(
            "{text} (the engine's certificate does not chain to [tls] ca, or does not carry [tls] server_name)"
        ),
        Some(rustls::Error::AlertReceived(_)) => format!(
            "{text} (the engine refused this host's certificate: [tls] cert must be signed by a CA the engine trusts)"
        ),
        _ => text,
    }
}

/// Whether `bytes` start as a TLS record: content type alert (21) or
/// handshake (22), then version 3.x.
fn looks_like_tls(bytes: &[u8]) -> bool {
    matches!(bytes, [21 | 22, 3, 0..=4, ..])
}

/// Whether a first frame's bytes are text: a peer speaking HTTP, SMTP,
/// SSH... (a legsync frame starts with a length whose first byte is 0 for
/// anything under 16 MiB).
fn looks_like_text(bytes: &[u8]) -> bool {
    bytes.len() >= 4
        && bytes[..4]
            .iter()
            .all(|b| b.is_ascii_graphic() || *b == b' ')
}

async fn read_loop(
    mut stream: futures_util::stream::SplitStream<HostFramed>,
    inbound: mpsc::Sender<Result<EngineMessage, LinkError>>,
    heartbeat_timeout: Duration,
    cancel: CancellationToken,
) {
    let outcome = loop {
        let frame = tokio::select! {
            _ = cancel.cancelled() => return,
            frame = timeout(heartbeat_timeout, stream.next()) => frame,
        };
        match frame {
            Err(_) => break LinkError::HeartbeatLost(heartbeat_timeout),
            Ok(None) => break LinkError::Closed,
            Ok(Some(Err(e))) => break LinkError::Protocol(e),
            Ok(Some(Ok(EngineMessage::Heartbeat))) => {}
            Ok(Some(Ok(message))) => {
                if inbound.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        }
    };
    cancel.cancel();
    let _ = inbound.send(Err(outcome)).await;
}

/// The longest gap between two heartbeats a host sent on its links since
/// last taken (one per host, shared by its connections through
/// [`LinkOptions`]): what `legsync bench --mode live` reports beside the
/// `legsync_heartbeat_gap_seconds` histogram.
#[derive(Debug, Clone, Default)]
pub struct HeartbeatGaps(Arc<AtomicU64>);

impl HeartbeatGaps {
    /// The longest gap since the last call.
    pub fn take_longest(&self) -> Duration {
        Duration::from_micros(self.0.swap(0, Ordering::Relaxed))
    }

    fn record(&self, gap: Duration) {
        self.0.fetch_max(gap.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Times the gap since the previous heartbeat sent: measured, and logged
/// when it is half an interval late (the host too busy to send on time).
fn heartbeat_sent(previous: &mut Option<Instant>, interval: Duration, gaps: &HeartbeatGaps) {
    let now = Instant::now();
    let Some(last) = previous.replace(now) else {
        return;
    };
    let gap = now - last;
    crate::metrics::observe(crate::metrics::HEARTBEAT_GAP_SECONDS, gap);
    gaps.record(gap);
    if gap > interval + interval / 2 {
        tracing::warn!(
            gap_ms = gap.as_millis() as u64,
            interval_ms = interval.as_millis() as u64,
            "a heartbeat went out {} ms late: the host was too busy to send it on time (the engine drops a controller silent for its heartbeat timeout)",
            (gap - interval).as_millis()
        );
    }
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<HostFramed, HostMessage>,
    epoch: u64,
    mut commands: mpsc::UnboundedReceiver<(u64, Command)>,
    heartbeat: Duration,
    gaps: HeartbeatGaps,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(heartbeat);
    let mut last_heartbeat = None;
    loop {
        let result = tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                let sent = sink.send(HostMessage::Heartbeat).await;
                heartbeat_sent(&mut last_heartbeat, heartbeat, &gaps);
                sent
            }
            Some((id, command)) = commands.recv() => {
                let mut result = sink.feed(HostMessage::Command { id, epoch, command }).await;
                while let (Ok(()), Ok((id, command))) = (&result, commands.try_recv()) {
                    result = sink.feed(HostMessage::Command { id, epoch, command }).await;
                }
                match result {
                    Ok(()) => sink.flush().await,
                    Err(e) => Err(e),
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "engine link write failed");
            cancel.cancel();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{:#}` prints an error's chain: a cause in the message must not also
    /// be a `source`, or operators read it twice.
    #[test]
    fn an_error_names_its_cause_once() {
        let errors = [
            LinkError::Protocol(ProtocolError::Io(std::io::Error::other("boom"))),
            LinkError::Connect {
                addr: "gw:7000".into(),
                error: std::io::Error::other("boom"),
            },
        ];
        for error in errors {
            let text = format!("{:#}", anyhow::Error::from(error));
            assert_eq!(text.matches("boom").count(), 1, "{text}");
        }
        let read = crate::policy::PolicyError::Read {
            path: "x.wasm".into(),
            error: std::io::Error::other("boom"),
        };
        let text = format!("{:#}", anyhow::Error::from(read));
        assert_eq!(text.matches("boom").count(), 1, "{text}");
    }
}

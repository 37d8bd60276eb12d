//! The messages of the protocol. Every frame holds exactly one.

use crate::model::{CallLeg, Join, LegId, Link, LinkId, Mixer, MixerId};
use serde::{Deserialize, Serialize};

/// Engine to host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EngineMessage {
    /// The engine's answer to the host's hello when it accepts the host as
    /// its controller. `boot_id` changes at every engine start, so the host
    /// can tell an engine restart from a network blip. `epoch` numbers the
    /// accepted controller connections of this engine: it only grows (the
    /// engine keeps it across restarts), so records written under a later
    /// epoch are newer knowledge than any written under an earlier one.
    Hello {
        protocol: u8,
        boot_id: u64,
        engine: String,
        epoch: u64,
    },
    /// Sent every heartbeat interval; silence means the link is dead.
    Heartbeat,
    /// The snapshot of active legs and links follows, in chunks.
    SnapshotBegin { legs: u64, links: u64 },
    /// A chunk of active legs.
    SnapshotLegs(Vec<CallLeg>),
    /// A chunk of links (sent after every leg, mixer and join chunk).
    SnapshotLinks(Vec<Link>),
    /// The snapshot is complete; live events follow.
    SnapshotEnd,
    /// Something changed in the engine.
    Event(EngineEvent),
    /// The outcome of a host command.
    Ack { command: u64, result: CommandResult },
    /// The engine already has a controller (named in `reason`); the
    /// connection will close. A host that gets it is a standby.
    Busy { reason: String },
    /// Protocol 4: a chunk of mixers (after every leg chunk, before joins).
    SnapshotMixers(Vec<Mixer>),
    /// Protocol 4: a chunk of joins (after every mixer chunk, before links).
    SnapshotJoins(Vec<Join>),
}

impl EngineMessage {
    /// The message's name, for logs and errors: never its contents (a
    /// snapshot chunk holds a thousand subscribers' numbers).
    pub fn name(&self) -> &'static str {
        match self {
            EngineMessage::Hello { .. } => "Hello",
            EngineMessage::Heartbeat => "Heartbeat",
            EngineMessage::SnapshotBegin { .. } => "SnapshotBegin",
            EngineMessage::SnapshotLegs(_) => "SnapshotLegs",
            EngineMessage::SnapshotLinks(_) => "SnapshotLinks",
            EngineMessage::SnapshotEnd => "SnapshotEnd",
            EngineMessage::Event(_) => "Event",
            EngineMessage::Ack { .. } => "Ack",
            EngineMessage::Busy { .. } => "Busy",
            EngineMessage::SnapshotMixers(_) => "SnapshotMixers",
            EngineMessage::SnapshotJoins(_) => "SnapshotJoins",
        }
    }
}

/// Host to engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMessage {
    /// First frame on a connection.
    Hello { protocol: u8, host: String },
    /// Sent every heartbeat interval.
    Heartbeat,
    /// A command; the engine answers with `Ack { command: id, .. }`.
    /// `epoch` is the one of the engine's hello on this connection: a
    /// fencing token, refused (`Fenced`) unless it is the current
    /// controller's.
    Command {
        id: u64,
        epoch: u64,
        command: Command,
    },
}

/// A live change in the engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EngineEvent {
    /// A new leg (offered or ringing).
    LegOffered(CallLeg),
    /// A leg started ringing.
    LegRinging(LegId),
    /// A leg was answered: the whole leg, `answered_at_ms` set, so a host
    /// that did not hold it can still decide it and bill it, and a host
    /// that did can tell whether it is the same call.
    LegAnswered(CallLeg),
    /// A leg started releasing.
    LegTerminating(LegId),
    /// A leg is gone.
    LegReleased(LegId),
    /// Two legs were joined.
    LinkCreated(Link),
    /// A link was undone (its legs may live on).
    LinkRemoved(LinkId),
    /// Protocol 4: a new mixer (no legs yet).
    MixerCreated(Mixer),
    /// Protocol 4: a mixer is gone (its legs were unjoined first, each with
    /// its own `LegUnjoined`).
    MixerFreed(MixerId),
    /// Protocol 4: a leg was joined to a mixer.
    LegJoined(Join),
    /// Protocol 4: a leg left a mixer (the leg lives on).
    LegUnjoined { mixer: MixerId, leg: LegId },
}

/// What the host asks of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Release a leg (a refused leg, for instance).
    DropLeg(LegId),
    /// Undo a link.
    DropLink(LinkId),
    /// Protocol 4: free a mixer, unjoining its legs (they live on).
    FreeMixer(MixerId),
    /// Protocol 4: take a leg out of a mixer.
    UnjoinLeg { mixer: MixerId, leg: LegId },
}

/// The engine's answer to a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Done,
    /// The leg, link, mixer or join did not exist (already gone): nothing
    /// to do.
    NotFound,
    /// The command carried an epoch that is not the current controller's:
    /// ignored.
    Fenced,
}

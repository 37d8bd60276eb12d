//! The wire protocol between legsync and the engine (see `docs/protocol.md`).
//!
//! - [`message`]: what each side says: hello, heartbeat, the snapshot stream,
//!   live events, commands and their acknowledgements.
//! - [`codec`]: frames: a 4-byte big-endian length, a version byte, then the
//!   message in postcard (compact serde). Pure, unit-tested.

pub mod codec;
pub mod message;

pub use codec::{FrameCodec, ProtocolError};
pub use message::{Command, CommandResult, EngineEvent, EngineMessage, HostMessage};

/// The newest protocol version: what the host offers by default, in its
/// hello and every frame of the connection.
/// 2: `LegAnswered` carries the whole leg (identity and parties).
/// 3: the engine's `Hello` carries the controller epoch, and commands carry
/// it back (fencing); the engine answers the host's hello (accept or `Busy`).
/// 4: conference mixers: in the snapshot, as live events and as commands.
pub const PROTOCOL_VERSION: u8 = 4;

/// The oldest version still spoken (an engine without mixers): a host set
/// to it (`link.protocol = 3`) sees no mixers, and engine-sim answers a
/// host's hello in the version the host chose.
pub const OLDEST_PROTOCOL_VERSION: u8 = 3;

/// Whether `version` is one this build speaks.
pub fn speaks(version: u8) -> bool {
    (OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version)
}

/// The default largest frame accepted, in bytes. A snapshot chunk of 1,024
/// legs is about 70 KB, so this leaves room without letting a broken peer
/// make us allocate without bound.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Legs (or links) per snapshot chunk.
pub const SNAPSHOT_CHUNK: usize = 1024;

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

/// The protocol version both sides put in every frame and in their hello.
/// 2: `LegAnswered` carries the whole leg (identity and parties).
/// 3: the engine's `Hello` carries the controller epoch, and commands carry
/// it back (fencing); the engine answers the host's hello (accept or `Busy`).
pub const PROTOCOL_VERSION: u8 = 3;

/// The default largest frame accepted, in bytes. A snapshot chunk of 1,024
/// legs is about 70 KB, so this leaves room without letting a broken peer
/// make us allocate without bound.
pub const DEFAULT_MAX_FRAME: usize = 1 << 20;

/// Legs (or links) per snapshot chunk.
pub const SNAPSHOT_CHUNK: usize = 1024;

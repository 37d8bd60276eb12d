//! The link to the engine: connect, hello, heartbeats both ways, and
//! reconnect [`backoff`]. See [`connection`].

pub mod backoff;
pub mod connection;

pub use backoff::Backoff;
pub use connection::{
    Connection, HeartbeatGaps, LimitExceeded, LinkError, LinkOptions, Place, Stall,
};

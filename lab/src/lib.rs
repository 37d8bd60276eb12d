//! legsync's lab: everything that exercises the product without being it.
//!
//! - [`sim`]: engine-sim, a stand-in for the media gateway's engine (real
//!   TCP, the real wire protocol, a state file so calls survive its
//!   restarts, a control port to drive it), and [`sim::process`] to run it
//!   as a child process.
//! - [`demo`]: the reference scenarios played end to end (`legsync demo`),
//!   and [`demo::host_process`] / [`demo::harness`] to run a host as a
//!   process or in-process, for the demo, the bench and the tests.
//! - [`bench`]: `legsync bench`, the resync and live-event throughput
//!   harness; [`native_rules`]: the `rules` policy called directly, to
//!   measure the WebAssembly boundary against it.
//!
//! It depends on the product crate (`legsync`), never the reverse: a change
//! here does not rebuild the product.

pub mod bench;
pub mod demo;
pub mod native_rules;
pub mod nats;
pub mod sim;

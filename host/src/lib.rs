//! legsync: a call-leg resynchronization host.
pub mod model;
pub mod policy;

//! The Troupe workflow engine.
//!
//! - [`definition`]: the workflow language, parsed from YAML or JSON and
//!   validated with every error reported at once.
//! - [`expr`]: CEL expressions and `${...}` templates.
//! - [`engine`]: the pure instance state machine, `(state, event) -> (state',
//!   effects)`, with no I/O, no clock and no randomness but what events carry.
//!
//! This crate must not depend on RocksDB, networking or any clock: the node
//! journals the events it is fed and carries out the effects it returns.

pub mod definition;
pub mod engine;
pub mod expr;

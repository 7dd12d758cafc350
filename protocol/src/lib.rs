//! Wire-level vocabulary shared by Troupe clients and nodes.
//!
//! This crate owns what both sides of a connection must agree on: the stable
//! error codes ([`ErrorCode`]), the stable hash that places an instance on a
//! shard ([`shard_of`]), and the native protocol: its messages
//! ([`ClientFrame`], [`ServerFrame`]), framing ([`frame`]) and the one codec
//! module ([`codec`]). It does not depend on tokio, RocksDB or ractor, so
//! that any client can use it. The wire format is described in
//! `docs/native-protocol.md`.

pub mod codec;
mod error_code;
pub mod frame;
mod hash;
mod messages;
mod task_error;

pub use error_code::ErrorCode;
pub use hash::{shard_of, stable_hash};
pub use messages::*;
pub use task_error::TaskError;

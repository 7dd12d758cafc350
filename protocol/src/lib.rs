//! Wire-level vocabulary shared by Troupe clients and nodes.
//!
//! This crate owns what both sides of a connection must agree on: the stable
//! error codes ([`ErrorCode`]) and the stable hash that places an instance on a
//! shard ([`shard_of`]). It must not depend on tokio, RocksDB or ractor, so
//! that any client can use it.

mod error_code;
mod hash;

pub use error_code::ErrorCode;
pub use hash::{shard_of, stable_hash};

//! Troupe's replication: every shard is a Raft group (openraft, kept
//! behind this crate so its API changes stay here), and its entries are
//! the shard's [`troupe_storage::ShardBatch`]es.
//!
//! - [`Cluster`]: the groups of the shards this node replicates, proposals
//!   by their leader, and [`Leadership`] events that activate a shard's
//!   actors where it is led.
//! - The log lives in the node's one RocksDB (`group | index`); the
//!   node-wide WAL syncer makes every group's appends durable with one
//!   fsync. Followers apply committed batches through the storage crate
//!   and never run the engine.
//! - A shard's snapshot is its whole key range, exported under a RocksDB
//!   snapshot; installing one replaces the range.
//! - One TCP connection per node pair carries every group's messages
//!   ([`transport`]), with a [`LinkFilter`] for partition tests.

mod cluster;
mod log_store;
pub mod metrics;
mod network;
mod state_machine;
pub mod transport;
mod types;

pub use cluster::{Cluster, ClusterConfig, Leadership, ProposeError, ShardStatus};
pub use log_store::LogStore;
pub use state_machine::ShardMachine;
pub use transport::LinkFilter;
pub use types::{GroupId, NodeId, TypeConfig};

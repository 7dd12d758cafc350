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
//! - One more group, [`troupe_storage::META_GROUP`], on every member,
//!   holds the cluster's metadata: deployed definitions and the cluster
//!   map with its epoch.
//! - One TCP connection per node pair carries every group's messages
//!   ([`transport`]), with a [`LinkFilter`] for partition tests.
//! - Membership ([`placement`], and the metadata leader's map changes):
//!   members join, drain and are removed through the cluster map; shard
//!   leaders move their groups' replicas where the map places them
//!   (learner, catch-up, joint consensus) and hand leadership to the
//!   preferred replica.
//! - [`control::Control`]: the control plane on `ractor_cluster` (cookie
//!   authentication, a directory process group, a failure detector and
//!   reconnection).

mod cluster;
pub mod control;
mod log_store;
mod membership;
pub mod metrics;
mod network;
pub mod placement;
mod state_machine;
pub mod transport;
mod types;

pub use cluster::{Cluster, ClusterConfig, Leadership, ProposeError, ShardStatus};
pub use control::{Control, ControlConfig, MemberState};
pub use log_store::LogStore;
pub use membership::ChangeError;
pub use state_machine::{MetaChange, ShardMachine};
pub use transport::GroupView;
pub use transport::LinkFilter;
pub use types::{GroupId, NodeId, TypeConfig};

//! Troupe's storage: the only crate that depends on RocksDB and the only one
//! that knows column families and key layouts.
//!
//! - [`Store`]: the node's one RocksDB, read per shard (snapshots, journals,
//!   timers, outbox, human tasks, incidents, subscriptions, counters) and
//!   through secondary indexes (by status, definition, recency); a shard's
//!   whole state can be exported, imported and deleted.
//! - [`ShardBatch`]: what transitions write, as a plain, encodable value
//!   built from engine state; applying it reads nothing, so any replica
//!   applies it identically.
//! - [`Committer`]: group commit: batches of many shards share one write
//!   and one fsync, and callers wait until theirs is durable.
//! - Retention: [`Store::ended_before`] lists instances that ended before
//!   a horizon and [`Store::purge_ended`] deletes one whole, in a batch.
//!
//! - [`WalSyncer`] and the `log_*` methods: the replication log of every
//!   Raft group, sharing the node's WAL and its fsyncs.
//!
//! Every per-instance key starts with the shard, so a shard is one
//! contiguous range in each column family. The layout is in `keys.rs` and
//! `docs/storage.md`.

mod batch;
mod codec;
mod commit;
mod disk;
mod error;
mod journal;
mod keys;
mod list;
pub mod metrics;
mod raft_log;
mod records;
mod retention;
mod shard_io;
mod store;

pub use batch::{
    Indexed, ShardBatch, human_task_id, human_task_shard, incident_id, incident_shard,
};
pub use commit::Committer;
pub use error::{Error, Result};
pub use keys::META_GROUP;
pub use list::{ListOrder, ListQuery, Page};
pub use raft_log::{Flushed, StateValue, WalSyncer};
pub use records::*;
pub use retention::Ended;
pub use shard_io::ShardEntry;
pub use store::{BackgroundWork, FORMAT, StorageMemory, Store, StoreOptions};

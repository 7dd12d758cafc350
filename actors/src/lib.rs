//! Troupe's actors: the effectful shell around the engine: ractor actors that own instances,
//! the timer service, the task runner, and the handle the listeners use.
//!
//! A command for an instance goes to the actor of its shard
//! (`shard_of(id)`), which forwards it to the instance's actor, spawning it
//! (and loading its snapshot and journal tail) when it is not live. The
//! instance actor applies the event with the engine, commits the journal
//! entries, head and side records (and from time to time a snapshot) in one
//! group commit, and only then carries out the effects and replies.
//!
//! The crate talks to storage through `troupe-storage` only (no RocksDB, no
//! keys) and carries out what the pure engine (`troupe-engine`) returns.

pub mod budget;
mod command;
mod definitions;
mod effects;
mod error;
mod instance;
mod live;
mod log;
pub mod metrics;
pub mod queue;
mod retention;
mod router;
mod runtime;
mod services;
mod shard;
mod stored;
mod tasks;
mod timers;
pub mod view;
mod waiters;

pub use command::{Applied, Command, ReplyTo, WireCommand};
pub use definitions::DefinitionCache;
pub use error::{Error, Result};
pub use log::{Appending, Settling, ShardLog};
pub use router::{Remote, RemoteReply, Router};
pub use runtime::Runtime;
pub use services::{Services, Settings};
pub use stored::{
    Loaded, Persisted, load as load_instance, read as read_instance,
    read_after as read_instance_after,
};
pub use tasks::{TaskError, TaskHandler, TaskHandlers, TaskRequest};
pub use waiters::FinishWaiters;

use troupe_engine::engine::Millis;

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

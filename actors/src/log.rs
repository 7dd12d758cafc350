//! [`ShardLog`]: where a shard's transitions become durable before they are
//! acknowledged. The single node writes them with the local group commit;
//! a cluster node proposes them to the shard's replication group.

use crate::Error;
use std::future::Future;
use std::pin::Pin;
use troupe_storage::{Committer, ShardBatch};

/// A pending append.
pub type Appending<'a> = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;

/// A pending wait for a shard's log to settle.
pub type Settling<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Makes shard batches durable (and, in a cluster, replicated).
pub trait ShardLog: Send + Sync + 'static {
    /// Returns once `batch` is durable and readable through the store.
    fn append(&self, batch: ShardBatch) -> Appending<'_>;

    /// Returns once every batch this node handed to `shard`'s log is in
    /// the store or can no longer be (or after a bounded wait), so that an
    /// instance reloaded after a refused commit reads what that commit
    /// finally became: a replicated log may still apply an entry it
    /// answered as timed out. The local group commit answers every append
    /// for good, so it has nothing to wait for.
    fn settle(&self, _shard: u32) -> Settling<'_> {
        Box::pin(std::future::ready(()))
    }
}

impl ShardLog for Committer {
    fn append(&self, batch: ShardBatch) -> Appending<'_> {
        Box::pin(async move { Ok(Committer::append(self, batch).await?) })
    }
}

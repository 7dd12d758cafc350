//! [`ShardLog`]: where a shard's transitions become durable before they are
//! acknowledged. The single node writes them with the local group commit;
//! a cluster node proposes them to the shard's replication group.

use crate::Error;
use std::future::Future;
use std::pin::Pin;
use troupe_storage::{Committer, ShardBatch};

/// A pending append.
pub type Appending<'a> = Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>;

/// Makes shard batches durable (and, in a cluster, replicated).
pub trait ShardLog: Send + Sync + 'static {
    /// Returns once `batch` is durable and readable through the store.
    fn append(&self, batch: ShardBatch) -> Appending<'_>;
}

impl ShardLog for Committer {
    fn append(&self, batch: ShardBatch) -> Appending<'_> {
        Box::pin(async move { Ok(Committer::append(self, batch).await?) })
    }
}

//! Group commit: many shards' batches share one RocksDB write and one
//! fsync. Callers wait until theirs is durable.

use crate::batch::ShardBatch;
use crate::error::{Error, Result};
use crate::store::Store;
use std::sync::{Arc, mpsc};
use std::time::Instant;
use tokio::sync::oneshot;

struct Request {
    batch: ShardBatch,
    done: oneshot::Sender<Result<(), String>>,
}

/// Handle to the group-commit thread. When the last handle is dropped the
/// thread finishes its queue and is joined, so the database it holds is
/// closed before the process can exit (RocksDB aborts if it is still open
/// while static destructors run).
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Request>,
    _thread: Arc<Joined>,
}

/// Joins a storage thread on drop.
pub(crate) struct Joined(pub(crate) Option<std::thread::JoinHandle<()>>);

impl Drop for Joined {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            let _ = thread.join();
        }
    }
}

impl Committer {
    /// Starts the commit thread; `sync` fsyncs every batch.
    pub fn start(store: Store, sync: bool, max_batch: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name("troupe-commit".into())
            .spawn(move || run(store, rx, sync, max_batch))
            .expect("spawn commit thread");
        Self {
            tx,
            _thread: Arc::new(Joined(Some(thread))),
        }
    }

    /// Writes `batch` atomically and returns once it is durable.
    pub async fn append(&self, batch: ShardBatch) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Request { batch, done })
            .map_err(|_| Error::Closed)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(Error::Commit(message)),
            Err(_) => Err(Error::Closed),
        }
    }
}

/// A group commit this slow is logged: transitions wait for it, so it shows
/// as a latency spike on every shard (fsync stalls of the disk, usually).
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(100);

fn run(store: Store, rx: mpsc::Receiver<Request>, sync: bool, max_batch: usize) {
    let mut options = rocksdb::WriteOptions::default();
    options.set_sync(sync);
    while let Ok(first) = rx.recv() {
        let mut requests = vec![first];
        while requests.len() < max_batch {
            match rx.try_recv() {
                Ok(request) => requests.push(request),
                Err(_) => break,
            }
        }
        let mut batch = rocksdb::WriteBatch::default();
        let mut ops = 0usize;
        let mut waiters = Vec::with_capacity(requests.len());
        for request in requests {
            ops += request.batch.len();
            request.batch.write_to(&store, &mut batch);
            waiters.push(request.done);
        }
        let started = Instant::now();
        let result = store
            .db
            .write_opt(batch, &options)
            .map_err(|e| e.to_string());
        let took = started.elapsed();
        if took >= SLOW_COMMIT {
            tracing::warn!(
                ms = took.as_millis() as u64,
                batches = waiters.len(),
                writes = ops,
                "slow group commit: every transition of the node waited for it"
            );
        }
        metrics::histogram!(crate::metrics::COMMIT_SECONDS).record(took.as_secs_f64());
        metrics::histogram!(crate::metrics::COMMIT_BATCHES).record(waiters.len() as f64);
        metrics::counter!(crate::metrics::WRITES_TOTAL).increment(ops as u64);
        for done in waiters {
            let _ = done.send(result.clone());
        }
    }
}

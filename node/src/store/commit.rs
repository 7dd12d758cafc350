//! Group commit: many instances' transitions share one write batch and one
//! fsync. Callers wait until their ops are durable.

use super::{Error, Result, Store};
use crate::codec;
use serde::Serialize;
use std::sync::{Arc, mpsc};
use std::time::Instant;
use tokio::sync::oneshot;

/// One write in a transition.
#[derive(Debug, Clone)]
pub enum Op {
    /// Put an encoded value.
    Put(&'static str, Vec<u8>, Vec<u8>),
    /// Delete a key.
    Delete(&'static str, Vec<u8>),
    /// Add to a counter (the `counters` column family).
    Add(&'static str, Vec<u8>, i64),
}

impl Op {
    /// A put of `value` encoded with the storage codec.
    pub fn put<T: Serialize + ?Sized>(
        cf: &'static str,
        key: impl Into<Vec<u8>>,
        value: &T,
    ) -> Self {
        Op::Put(cf, key.into(), codec::encode(value))
    }

    /// A delete.
    pub fn delete(cf: &'static str, key: impl Into<Vec<u8>>) -> Self {
        Op::Delete(cf, key.into())
    }

    pub(super) fn add_to(self, store: &Store, batch: &mut rocksdb::WriteBatch) {
        match self {
            Op::Put(cf, key, value) => batch.put_cf(store.cf(cf), key, value),
            Op::Delete(cf, key) => batch.delete_cf(store.cf(cf), key),
            Op::Add(cf, key, delta) => batch.merge_cf(store.cf(cf), key, delta.to_le_bytes()),
        }
    }
}

struct Request {
    ops: Vec<Op>,
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

/// Joins the commit thread on drop.
struct Joined(Option<std::thread::JoinHandle<()>>);

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

    /// Writes `ops` atomically and returns once they are durable.
    pub async fn commit(&self, ops: Vec<Op>) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Request { ops, done })
            .map_err(|_| Error::Closed)?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(Error::Commit(message)),
            Err(_) => Err(Error::Closed),
        }
    }
}

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
            ops += request.ops.len();
            for op in request.ops {
                op.add_to(&store, &mut batch);
            }
            waiters.push(request.done);
        }
        let started = Instant::now();
        let result = store
            .db
            .write_opt(batch, &options)
            .map_err(|e| e.to_string());
        metrics::histogram!(crate::metrics::JOURNAL_COMMIT_SECONDS)
            .record(started.elapsed().as_secs_f64());
        metrics::histogram!(crate::metrics::JOURNAL_BATCH_TRANSITIONS).record(waiters.len() as f64);
        metrics::counter!(crate::metrics::JOURNAL_OPS_TOTAL).increment(ops as u64);
        for done in waiters {
            let _ = done.send(result.clone());
        }
    }
}

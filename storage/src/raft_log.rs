//! The replication log of every Raft group on the node, in the node's one
//! RocksDB: one column family keyed `group | index`, so the appends of all
//! groups share one WAL and one fsync ([`WalSyncer`]). Entries and state
//! values are opaque bytes here; the cluster crate encodes them.
//!
//! Applying committed batches ([`Store::apply_replicated`]) writes the
//! shard's tables and the group's applied position in one write, so a crash
//! never separates them.

use crate::batch::ShardBatch;
use crate::error::Result;
use crate::keys;
use crate::shard_io::ShardEntry;
use crate::store::Store;
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};
use std::sync::mpsc;

/// A replication state value to write with an apply or an install.
pub type StateValue = (&'static str, Vec<u8>);

impl Store {
    /// Writes log entries `(index, bytes)` of `group`, readable at once,
    /// durable after the next [`WalSyncer`] flush.
    pub fn log_append(&self, group: u32, entries: Vec<(u64, Vec<u8>)>) -> Result<()> {
        let cf = self.cf(keys::RAFT_LOG);
        let mut batch = WriteBatch::default();
        for (index, bytes) in entries {
            batch.put_cf(cf, keys::raft_log(group, index), bytes);
        }
        Ok(self.db.write(batch)?)
    }

    /// Entries of `group` with `from <= index < to`, in order.
    pub fn log_entries(&self, group: u32, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let start = keys::raft_log(group, from);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(keys::RAFT_LOG),
            IteratorMode::From(&start, Direction::Forward),
        ) {
            let (key, value) = item?;
            let Some(index) = log_index(group, &key) else {
                break;
            };
            if index >= to {
                break;
            }
            out.push((index, value.to_vec()));
        }
        Ok(out)
    }

    /// The last entry of `group`'s log.
    pub fn log_last(&self, group: u32) -> Result<Option<(u64, Vec<u8>)>> {
        let end = keys::raft_log(group, u64::MAX);
        let mut iter = self.db.iterator_cf(
            self.cf(keys::RAFT_LOG),
            IteratorMode::From(&end, Direction::Reverse),
        );
        match iter.next() {
            Some(item) => {
                let (key, value) = item?;
                Ok(log_index(group, &key).map(|index| (index, value.to_vec())))
            }
            None => Ok(None),
        }
    }

    /// Removes `group`'s entries from `from` on (a follower's conflicting tail).
    pub fn log_truncate_from(&self, group: u32, from: u64) -> Result<()> {
        let cf = self.cf(keys::RAFT_LOG);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, keys::raft_log(group, from), keys::raft_log_end(group));
        Ok(self.db.write(batch)?)
    }

    /// Removes `group`'s entries up to `upto` included (behind a snapshot),
    /// recording `purged` first in the same write.
    pub fn log_purge(&self, group: u32, upto: u64, purged: Vec<u8>) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(keys::RAFT_STATE),
            keys::raft_state(group, "purged"),
            purged,
        );
        batch.delete_range_cf(
            self.cf(keys::RAFT_LOG),
            keys::raft_log(group, 0),
            keys::raft_log(group, upto.saturating_add(1)),
        );
        Ok(self.db.write(batch)?)
    }

    /// Replication state value `name` of `group`.
    pub fn raft_state(&self, group: u32, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .db
            .get_cf(self.cf(keys::RAFT_STATE), keys::raft_state(group, name))?)
    }

    /// Reads replication state values `names` of `group` as they stood
    /// together at one moment (a write of several of them may be under way).
    pub fn raft_states<const N: usize>(
        &self,
        group: u32,
        names: [&str; N],
    ) -> Result<[Option<Vec<u8>>; N]> {
        let snapshot = self.db.snapshot();
        let cf = self.cf(keys::RAFT_STATE);
        let mut values = [const { None }; N];
        for (value, name) in values.iter_mut().zip(names) {
            *value = snapshot.get_cf(cf, keys::raft_state(group, name))?;
        }
        Ok(values)
    }

    /// Writes replication state value `name` of `group`; with `sync`, it is
    /// durable when this returns (votes).
    pub fn put_raft_state(&self, group: u32, name: &str, value: &[u8], sync: bool) -> Result<()> {
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        Ok(self.db.put_cf_opt(
            self.cf(keys::RAFT_STATE),
            keys::raft_state(group, name),
            value,
            &options,
        )?)
    }

    /// Applies committed batches of `shard` and records the group's state
    /// values (applied position, membership) in the same write. Not synced:
    /// the log is the durable record, and a later sync covers this write.
    pub fn apply_replicated(
        &self,
        shard: u32,
        batches: Vec<ShardBatch>,
        state: Vec<StateValue>,
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        for shard_batch in batches {
            debug_assert_eq!(shard_batch.shard(), shard);
            shard_batch.write_to(self, &mut batch);
        }
        self.put_states(shard, state, &mut batch);
        Ok(self.db.write(batch)?)
    }

    /// Replaces everything of `shard` with `entries` (a snapshot received
    /// from another replica) and records the group's state values, in one
    /// synced write.
    pub fn install_shard(
        &self,
        shard: u32,
        entries: Vec<ShardEntry>,
        state: Vec<StateValue>,
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        self.delete_shard_into(shard, &mut batch);
        self.import_into(shard, entries, &mut batch)?;
        self.put_states(shard, state, &mut batch);
        let mut options = WriteOptions::default();
        options.set_sync(true);
        Ok(self.db.write_opt(batch, &options)?)
    }
}

impl Store {
    fn put_states(&self, group: u32, state: Vec<StateValue>, batch: &mut WriteBatch) {
        let cf = self.cf(keys::RAFT_STATE);
        for (name, value) in state {
            batch.put_cf(cf, keys::raft_state(group, name), value);
        }
    }
}

fn log_index(group: u32, key: &[u8]) -> Option<u64> {
    let (g, index) = key.split_first_chunk::<4>()?;
    (u32::from_be_bytes(*g) == group)
        .then(|| index.try_into().ok().map(u64::from_be_bytes))
        .flatten()
}

/// A flush request: called with the outcome once the WAL is synced.
pub type Flushed = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Makes log appends durable: one thread syncs the WAL once for every
/// request that arrived meanwhile, whatever their group (group commit
/// across groups).
#[derive(Clone)]
pub struct WalSyncer {
    // Dropped before `_thread`, so the thread sees its queue close and ends.
    tx: mpsc::Sender<Flushed>,
    _thread: std::sync::Arc<crate::commit::Joined>,
}

impl WalSyncer {
    /// Starts the sync thread; without `sync`, requests complete at once
    /// (the WAL is written but not fsynced, as the single node's `sync = false`).
    pub fn start(store: Store, sync: bool) -> Self {
        let (tx, rx) = mpsc::channel::<Flushed>();
        let thread = std::thread::Builder::new()
            .name("troupe-wal-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let started = std::time::Instant::now();
                    let result = if sync {
                        store.db.flush_wal(true).map_err(|e| e.to_string())
                    } else {
                        Ok(())
                    };
                    metrics::histogram!(crate::metrics::COMMIT_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    metrics::histogram!(crate::metrics::COMMIT_BATCHES)
                        .record(waiting.len() as f64);
                    for done in waiting {
                        done(result.clone());
                    }
                }
            })
            .expect("spawn wal sync thread");
        // The last handle joins the thread, which closes its store handle:
        // RocksDB must be closed before the process exits.
        Self {
            tx,
            _thread: std::sync::Arc::new(crate::commit::Joined(Some(thread))),
        }
    }

    /// Calls `done` once everything written before this call is durable.
    pub fn flush(&self, done: Flushed) {
        if let Err(mpsc::SendError(done)) = self.tx.send(done) {
            done(Err("storage is shutting down".into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;

    fn store(dir: &std::path::Path) -> Store {
        let options = StoreOptions {
            shards: 4,
            write_buffer_bytes: 8 << 20,
            block_cache_bytes: 8 << 20,
            background_write_bytes_per_sec: 0,
            direct_io: true,
        };
        Store::open(dir, options).unwrap()
    }

    #[test]
    fn groups_logs_stay_apart() {
        let dir = std::env::temp_dir().join(format!("troupe-raftlog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = store(&dir);
        store
            .log_append(1, (1..=5).map(|i| (i, vec![i as u8])).collect())
            .unwrap();
        store.log_append(2, vec![(1, vec![9])]).unwrap();
        assert_eq!(store.log_entries(1, 2, 4).unwrap().len(), 2);
        assert_eq!(store.log_last(1).unwrap(), Some((5, vec![5])));
        assert_eq!(store.log_last(3).unwrap(), None);
        store.log_truncate_from(1, 4).unwrap();
        assert_eq!(store.log_last(1).unwrap(), Some((3, vec![3])));
        store.log_purge(1, 2, vec![7]).unwrap();
        assert_eq!(store.log_entries(1, 0, 100).unwrap(), vec![(3, vec![3])]);
        assert_eq!(store.raft_state(1, "purged").unwrap(), Some(vec![7]));
        assert_eq!(store.log_entries(2, 0, 100).unwrap(), vec![(1, vec![9])]);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

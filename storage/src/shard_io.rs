//! A shard's whole state as a stream of entries: exported under one RocksDB
//! snapshot (a consistent cut), imported in chunks on another store, and
//! deleted by range. The replicated cluster uses these as Raft snapshots.

use crate::error::{Error, Result};
use crate::keys::{self, Table};
use crate::store::Store;
use serde::{Deserialize, Serialize};

/// One key and value of a shard, with the table it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Table.
    pub table: Table,
    /// Key (starts with the shard).
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Stored value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

impl Store {
    /// Every entry of `shard`, table by table in key order, read from one
    /// consistent snapshot; `emit` receives them in chunks of about
    /// `chunk_bytes`.
    pub fn export_shard(
        &self,
        shard: u32,
        chunk_bytes: usize,
        mut emit: impl FnMut(Vec<ShardEntry>) -> Result<()>,
    ) -> Result<()> {
        let snapshot = self.db.snapshot();
        let mut chunk = Vec::new();
        let mut size = 0;
        for (table, start, end) in keys::group_ranges(shard) {
            let mut options = rocksdb::ReadOptions::default();
            options.set_iterate_upper_bound(end);
            // Across instances: not limited to one prefix (the journal's).
            options.set_total_order_seek(true);
            let mut iter = snapshot.raw_iterator_cf_opt(self.cf(table.cf()), options);
            iter.seek(&start);
            while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
                size += key.len() + value.len();
                chunk.push(ShardEntry {
                    table,
                    key: key.to_vec(),
                    value: value.to_vec(),
                });
                if size >= chunk_bytes {
                    emit(std::mem::take(&mut chunk))?;
                    size = 0;
                }
                iter.next();
            }
            iter.status()?;
        }
        if !chunk.is_empty() {
            emit(chunk)?;
        }
        Ok(())
    }

    /// Writes exported entries of `shard` (synced). Entries of another
    /// shard are refused, so an import cannot touch what it does not own.
    pub fn import_shard(&self, shard: u32, entries: Vec<ShardEntry>) -> Result<()> {
        let mut batch = rocksdb::WriteBatch::default();
        self.import_into(shard, entries, &mut batch)?;
        self.write_synced(batch)
    }

    /// Deletes everything of `shard` in every table (synced).
    pub fn delete_shard(&self, shard: u32) -> Result<()> {
        let mut batch = rocksdb::WriteBatch::default();
        self.delete_shard_into(shard, &mut batch);
        self.write_synced(batch)
    }

    /// Deletes everything of `group` on this node, its replication log
    /// and state included (synced): the node no longer holds a replica.
    pub fn forget_group(&self, group: u32) -> Result<()> {
        if group == keys::META_GROUP {
            return Err(Error::Import(
                "the metadata group is on every member and is never forgotten".into(),
            ));
        }
        let mut batch = rocksdb::WriteBatch::default();
        self.delete_shard_into(group, &mut batch);
        batch.delete_range_cf(
            self.cf(keys::RAFT_LOG),
            keys::raft_log(group, 0),
            keys::raft_log_end(group),
        );
        batch.delete_range_cf(
            self.cf(keys::RAFT_STATE),
            keys::shard_start(group),
            keys::shard_end(group),
        );
        self.write_synced(batch)
    }

    pub(crate) fn import_into(
        &self,
        shard: u32,
        entries: Vec<ShardEntry>,
        batch: &mut rocksdb::WriteBatch,
    ) -> Result<()> {
        let ranges = keys::group_ranges(shard);
        for entry in entries {
            let inside = ranges.iter().any(|(table, start, end)| {
                *table == entry.table && entry.key >= *start && entry.key < *end
            });
            if !inside {
                return Err(Error::Import(format!(
                    "an entry of {} is not in shard {shard}",
                    entry.table.cf()
                )));
            }
            batch.put_cf(self.cf(entry.table.cf()), entry.key, entry.value);
        }
        Ok(())
    }

    pub(crate) fn delete_shard_into(&self, shard: u32, batch: &mut rocksdb::WriteBatch) {
        for (table, start, end) in keys::group_ranges(shard) {
            batch.delete_range_cf(self.cf(table.cf()), start, end);
        }
    }

    /// A digest of a shard's state (every key and value of every table),
    /// to compare replicas or check a move.
    pub fn shard_digest(&self, shard: u32) -> Result<u64> {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        self.export_shard(shard, 1 << 20, |chunk| {
            for entry in chunk {
                hasher.update(entry.table.cf().as_bytes());
                hasher.update(&(entry.key.len() as u64).to_le_bytes());
                hasher.update(&entry.key);
                hasher.update(&(entry.value.len() as u64).to_le_bytes());
                hasher.update(&entry.value);
            }
            Ok(())
        })?;
        Ok(hasher.digest())
    }
}

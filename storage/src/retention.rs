//! Retention: instances that ended long enough ago are deleted whole.
//!
//! When an instance ends, its transition also writes `ended`
//! (`shard | ended_at | id`), so the instances past a retention horizon
//! are one range read away, oldest first. [`Store::purge_ended`] turns
//! them into a [`ShardBatch`] of deletes (head, snapshot, journal records,
//! archived step runs, index entries, and one off the status count) that
//! goes through the shard's log like any transition, so replicas delete
//! the same keys. An ended instance never changes again, so reading what to
//! delete races with nothing.

use crate::batch::ShardBatch;
use crate::error::Result;
use crate::keys::{self, Table};
use crate::store::Store;
use troupe_engine::engine::{InstanceStatus, Millis};

impl Store {
    /// Up to `limit` instances of `shard` that ended from `from` on and
    /// before `horizon`, oldest first, each with when it ended.
    ///
    /// The entries of purged instances linger as tombstones at the start
    /// of the range until compactions drop them; a caller that goes on from
    /// where its last purge ended (`from`) never steps over them again.
    pub fn ended_before(
        &self,
        shard: u32,
        from: Millis,
        horizon: Millis,
        limit: usize,
    ) -> Result<Vec<(Millis, String)>> {
        let start = keys::ended(shard, from, "");
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_lower_bound(start.clone());
        options.set_iterate_upper_bound(keys::ended(shard, horizon, ""));
        let mut iter = self
            .db
            .raw_iterator_cf_opt(self.cf(Table::Ended.cf()), options);
        iter.seek(start);
        let mut ended = Vec::new();
        while let Some(key) = iter.key() {
            if ended.len() >= limit {
                break;
            }
            if let Some(entry) = keys::parse_ended(key) {
                ended.push(entry);
            }
            iter.next();
        }
        iter.status()?;
        Ok(ended)
    }

    /// Adds to `batch` (of `shard`) the deletion of everything instance
    /// `id`, which ended at `ended_at`, stored; returns the status it ended
    /// in, for the caller's gauges. An entry whose instance is gone (or was
    /// started again under the same id and has not ended) only loses its
    /// index entry.
    pub fn purge_ended(
        &self,
        batch: &mut ShardBatch,
        ended_at: Millis,
        id: &str,
    ) -> Result<Option<InstanceStatus>> {
        let shard = batch.shard();
        batch.delete(Table::Ended, keys::ended(shard, ended_at, id));
        let head = match self.instance_head(shard, id)? {
            Some(head) if head.status.is_terminal() && head.updated_at == ended_at => head,
            _ => return Ok(None),
        };
        batch.delete(Table::Instances, keys::instance(shard, id));
        if head.snapshot_events > 0 {
            batch.delete(Table::Snapshots, keys::instance(shard, id));
        }
        let prefix = keys::instance_prefix(shard, id);
        for table in [Table::Journal, Table::Steps] {
            for key in self.keys_with_prefix(table, &prefix)? {
                batch.delete(table, key);
            }
        }
        batch.delete(Table::ByStatus, keys::by_status(shard, head.status, id));
        batch.delete(
            Table::ByDefinition,
            keys::by_definition(shard, &head.definition, id),
        );
        batch.delete(
            Table::ByUpdated,
            keys::by_updated(shard, head.updated_at, id),
        );
        batch.count_status(head.status, -1);
        Ok(Some(head.status))
    }

    /// Every key of `table` under `prefix` (an instance prefix: the journal
    /// and step runs have bloom filters over them).
    fn keys_with_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<Vec<u8>>> {
        let mut options = rocksdb::ReadOptions::default();
        options.set_prefix_same_as_start(true);
        let mut iter = self.db.raw_iterator_cf_opt(self.cf(table.cf()), options);
        iter.seek(prefix);
        let mut found = Vec::new();
        while let Some(key) = iter.key() {
            if !key.starts_with(prefix) {
                break;
            }
            found.push(key.to_vec());
            iter.next();
        }
        iter.status()?;
        Ok(found)
    }
}

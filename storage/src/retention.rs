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
//!
//! Most entries carry what deleting their instance takes (an
//! [`EndedRecord`]: status, definition, journal record keys), so that
//! deleting it reads nothing more: reading each instance's head and seeking
//! its journal and step runs, in files long out of the block cache, was a
//! tenth of a busy node's CPU.

use crate::batch::ShardBatch;
use crate::codec;
use crate::error::Result;
use crate::keys::{self, Table};
use crate::records::EndedRecord;
use crate::store::Store;
use troupe_engine::engine::{InstanceStatus, Millis};

/// An instance past retention, as its `ended` entry tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// When it ended.
    pub at: Millis,
    /// Its id.
    pub id: String,
    /// What deleting it takes, when the entry says (see [`EndedRecord`]).
    pub record: Option<EndedRecord>,
}

impl Store {
    /// Up to `limit` instances of `shard` that ended from `from` on and
    /// before `horizon`, oldest first.
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
    ) -> Result<Vec<Ended>> {
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
            if let Some((at, id)) = keys::parse_ended(key) {
                let record = iter.value().and_then(|v| codec::decode(v).ok());
                ended.push(Ended { at, id, record });
            }
            iter.next();
        }
        iter.status()?;
        Ok(ended)
    }

    /// Adds to `batch` (of `shard`) the deletion of everything the ended
    /// instance stored; returns the status it ended in, for the caller's
    /// gauges. Without a record in its entry, the instance is read to find
    /// what to delete: an entry whose instance is gone (or was started again
    /// under the same id and has not ended) then only loses itself.
    pub fn purge_ended(
        &self,
        batch: &mut ShardBatch,
        ended: &Ended,
    ) -> Result<Option<InstanceStatus>> {
        let shard = batch.shard();
        let id = ended.id.as_str();
        batch.delete(Table::Ended, keys::ended(shard, ended.at, id));
        let record = match &ended.record {
            Some(record) => {
                for seq in &record.journal {
                    batch.delete(Table::Journal, keys::journal(shard, id, *seq));
                }
                record.clone()
            }
            None => match self.instance_head(shard, id)? {
                Some(head) if head.status.is_terminal() && head.updated_at == ended.at => {
                    let prefix = keys::instance_prefix(shard, id);
                    for table in [Table::Journal, Table::Steps] {
                        for key in self.keys_with_prefix(table, &prefix)? {
                            batch.delete(table, key);
                        }
                    }
                    EndedRecord {
                        status: head.status,
                        definition: head.definition,
                        snapshot: head.snapshot_events > 0,
                        journal: Vec::new(),
                    }
                }
                _ => return Ok(None),
            },
        };
        batch.delete(Table::Instances, keys::instance(shard, id));
        if record.snapshot {
            batch.delete(Table::Snapshots, keys::instance(shard, id));
        }
        batch.delete(Table::ByStatus, keys::by_status(shard, record.status, id));
        batch.delete(
            Table::ByDefinition,
            keys::by_definition(shard, &record.definition, id),
        );
        batch.delete(Table::ByUpdated, keys::by_updated(shard, ended.at, id));
        batch.count_status(record.status, -1);
        Ok(Some(record.status))
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

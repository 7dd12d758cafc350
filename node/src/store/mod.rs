//! RocksDB storage: definitions, instance snapshots, journals, timers, human
//! tasks, incidents and subscriptions, each in its own column family.
//!
//! Reads go straight to RocksDB; every write that belongs to an instance
//! transition goes through the group [`Committer`], so one transition's
//! journal entry, snapshot and side records land atomically in one batch.

mod commit;
pub mod keys;

pub use commit::{Committer, Op};

use crate::codec;
use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::path::Path;
use std::sync::Arc;
use troupe_actors::engine::{ErrorInfo, Event, Instance, Millis, TaskDispatch, TimerId};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// RocksDB reported an error.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored value could not be decoded.
    #[error("corrupt value in {cf}: {source}")]
    Corrupt {
        /// Column family.
        cf: &'static str,
        /// Decoding error.
        source: codec::Error,
    },
    /// The data dir was created with another shard count.
    #[error("data dir has {found} shards, config says {configured}; the shard count cannot change")]
    Shards {
        /// In the data dir.
        found: u32,
        /// In the config.
        configured: u32,
    },
    /// A group commit failed; nothing in it was written.
    #[error("commit failed: {0}")]
    Commit(String),
    /// The group committer is gone (node shutting down).
    #[error("storage is shutting down")]
    Closed,
}

/// Storage result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A deployed definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefinitionRecord {
    /// Name.
    pub name: String,
    /// Version.
    pub version: u32,
    /// The document as deployed.
    pub source: String,
    /// Deployment time.
    pub deployed_at: Millis,
}

/// Where a child instance reports back to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParentLink {
    /// Parent instance id.
    pub id: String,
    /// Step path in the parent.
    pub path: String,
}

/// The stored form of an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Engine state after the last journaled event.
    pub state: Instance,
    /// Parent, for child workflows.
    pub parent: Option<ParentLink>,
}

/// An armed timer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimerRecord {
    /// Instance id.
    pub instance: String,
    /// Which timer.
    pub timer: TimerId,
    /// Due time.
    pub at: Millis,
}

/// An open human task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HumanTaskRecord {
    /// Task id.
    pub id: String,
    /// Instance id.
    pub instance: String,
    /// Step path.
    pub path: String,
    /// Current assignee.
    pub assignee: String,
    /// What the person is shown.
    pub input: Json,
    /// Whether it was escalated.
    pub escalated: bool,
    /// Creation time.
    pub created_at: Millis,
}

/// An open incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentRecord {
    /// Incident id.
    pub id: String,
    /// Instance id.
    pub instance: String,
    /// Step whose compensation failed.
    pub path: String,
    /// The last error.
    pub error: ErrorInfo,
    /// Opening time.
    pub opened_at: Millis,
}

/// An effect to carry out at least once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutboxRecord {
    /// A task attempt to run.
    Task {
        /// Instance id.
        instance: String,
        /// The attempt.
        dispatch: TaskDispatch,
    },
    /// A child workflow to start.
    Child {
        /// Parent instance id.
        instance: String,
        /// Step path in the parent.
        path: String,
        /// Child instance id.
        child_id: String,
        /// Definition name.
        definition: String,
        /// Pinned version.
        version: Option<u32>,
        /// Child input.
        input: Json,
    },
}

/// The node's RocksDB.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
}

impl Store {
    /// Opens (or creates) the database in `dir` for `shards` shards, with
    /// at most `write_buffer_bytes` of memtables across column families and
    /// one block cache of `block_cache_bytes` shared by them.
    pub fn open(
        dir: &Path,
        shards: u32,
        write_buffer_bytes: usize,
        block_cache_bytes: usize,
    ) -> Result<Self> {
        let mut options = Options::default();
        options.set_db_write_buffer_size(write_buffer_bytes);
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        options.increase_parallelism(2);
        // Flushes and compactions yield the CPU to transitions, so that a
        // flush does not stall acknowledgements on a small machine.
        let mut env = rocksdb::Env::new()?;
        env.lower_thread_pool_cpu_priority();
        env.lower_high_priority_thread_pool_cpu_priority();
        options.set_env(&env);
        // One cache for every column family (each table factory would
        // otherwise get its own default cache), so memory stays bounded.
        let cache = rocksdb::Cache::new_lru_cache(block_cache_bytes);
        let cfs = keys::ALL.iter().map(|name| {
            let mut cf = Options::default();
            // Bloom filters: a start looks up an id that usually does not
            // exist yet, which without them reads index blocks of every file.
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_bloom_filter(10.0, false);
            table.set_block_cache(&cache);
            cf.set_block_based_table_factory(&table);
            if *name == keys::COUNTERS {
                cf.set_merge_operator_associative("add_i64", add_i64);
            }
            ColumnFamilyDescriptor::new(*name, cf)
        });
        let db = DB::open_cf_descriptors(&options, dir, cfs)?;
        let store = Self { db: Arc::new(db) };
        match store.get::<u32>(keys::META, b"shards")? {
            Some(found) if found != shards => {
                return Err(Error::Shards {
                    found,
                    configured: shards,
                });
            }
            Some(_) => {}
            None => store
                .db
                .put_cf(store.cf(keys::META), b"shards", codec::encode(&shards))?,
        }
        Ok(store)
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column families are created at open")
    }

    fn get<T: serde::de::DeserializeOwned>(
        &self,
        cf: &'static str,
        key: &[u8],
    ) -> Result<Option<T>> {
        match self.db.get_pinned_cf(self.cf(cf), key)? {
            Some(bytes) => codec::decode(&bytes)
                .map(Some)
                .map_err(|source| Error::Corrupt { cf, source }),
            None => Ok(None),
        }
    }

    /// Values under `prefix`, in key order, starting after `after` when given.
    fn scan<T: serde::de::DeserializeOwned>(
        &self,
        cf: &'static str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, T)>> {
        let start = after.map_or_else(|| prefix.to_vec(), |a| [a, &[0]].concat());
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf), IteratorMode::From(&start, Direction::Forward))
        {
            let (key, value) = item?;
            if !key.starts_with(prefix) || out.len() >= limit {
                break;
            }
            let value = codec::decode(&value).map_err(|source| Error::Corrupt { cf, source })?;
            out.push((key.to_vec(), value));
        }
        Ok(out)
    }

    /// Writes ops at once, synced (used outside instance transitions).
    pub fn write_now(&self, ops: Vec<Op>) -> Result<()> {
        let mut batch = rocksdb::WriteBatch::default();
        for op in ops {
            op.add_to(self, &mut batch);
        }
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        Ok(self.db.write_opt(batch, &options)?)
    }

    /// One definition version.
    pub fn definition(&self, name: &str, version: u32) -> Result<Option<DefinitionRecord>> {
        self.get(keys::DEFINITIONS, &keys::definition(name, version))
    }

    /// Every version of a definition, oldest first.
    pub fn definition_versions(&self, name: &str) -> Result<Vec<DefinitionRecord>> {
        Ok(self
            .scan(
                keys::DEFINITIONS,
                &keys::definition_prefix(name),
                None,
                usize::MAX,
            )?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Every definition version of every name.
    pub fn definitions(&self) -> Result<Vec<DefinitionRecord>> {
        Ok(self
            .scan(keys::DEFINITIONS, b"", None, usize::MAX)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// An instance.
    pub fn instance(&self, id: &str) -> Result<Option<InstanceRecord>> {
        self.get(keys::INSTANCES, id.as_bytes())
    }

    /// An instance and the size of its stored snapshot, bytes.
    pub fn instance_sized(&self, id: &str) -> Result<Option<(InstanceRecord, usize)>> {
        let cf = keys::INSTANCES;
        match self.db.get_pinned_cf(self.cf(cf), id.as_bytes())? {
            Some(bytes) => codec::decode(&bytes)
                .map(|record| Some((record, bytes.len())))
                .map_err(|source| Error::Corrupt { cf, source }),
            None => Ok(None),
        }
    }

    /// Instances in id order after `cursor`, at most `limit`.
    pub fn instances(&self, cursor: Option<&str>, limit: usize) -> Result<Vec<InstanceRecord>> {
        let after = cursor.map(str::as_bytes);
        Ok(self
            .scan(keys::INSTANCES, b"", after, limit)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// An instance's journal, oldest first.
    pub fn history(&self, shard: u32, id: &str) -> Result<Vec<Event>> {
        let prefix = keys::journal_prefix(shard, id);
        Ok(self
            .scan(keys::JOURNAL, &prefix, None, usize::MAX)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Every armed timer.
    pub fn timers(&self) -> Result<Vec<TimerRecord>> {
        Ok(self
            .scan(keys::TIMERS, b"", None, usize::MAX)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Armed timers of one instance.
    pub fn instance_timers(&self, id: &str) -> Result<Vec<TimerRecord>> {
        Ok(self
            .scan(keys::TIMERS, &keys::pair(id, ""), None, usize::MAX)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Open human tasks.
    pub fn human_tasks(&self) -> Result<Vec<HumanTaskRecord>> {
        Ok(self
            .scan(keys::HUMAN_TASKS, b"", None, usize::MAX)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// One open human task.
    pub fn human_task(&self, id: &str) -> Result<Option<HumanTaskRecord>> {
        self.get(keys::HUMAN_TASKS, id.as_bytes())
    }

    /// Open incidents.
    pub fn incidents(&self) -> Result<Vec<IncidentRecord>> {
        Ok(self
            .scan(keys::INCIDENTS, b"", None, usize::MAX)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// One open incident.
    pub fn incident(&self, id: &str) -> Result<Option<IncidentRecord>> {
        self.get(keys::INCIDENTS, id.as_bytes())
    }

    /// Instances awaiting event `name` with `correlation`.
    pub fn subscribers(&self, name: &str, correlation: Option<&str>) -> Result<Vec<String>> {
        let prefix = keys::subscription_prefix(name, correlation);
        Ok(self
            .scan::<()>(keys::SUBSCRIPTIONS, &prefix, None, usize::MAX)?
            .into_iter()
            .map(|(key, _)| String::from_utf8_lossy(&key[prefix.len()..]).into_owned())
            .collect())
    }

    /// Outbox entries of one instance.
    pub fn outbox_of(&self, id: &str) -> Result<Vec<OutboxRecord>> {
        Ok(self
            .scan(keys::OUTBOX, &keys::pair(id, ""), None, usize::MAX)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Instances with outbox entries (work that may need redoing after a crash).
    pub fn outbox_instances(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .scan::<OutboxRecord>(keys::OUTBOX, b"", None, usize::MAX)?
            .into_iter()
            .map(|(_, record)| match record {
                OutboxRecord::Task { instance, .. } | OutboxRecord::Child { instance, .. } => {
                    instance
                }
            })
            .collect();
        ids.dedup();
        Ok(ids)
    }

    /// Instances by status, as counted in step with transitions.
    pub fn status_counts(&self) -> Result<Vec<(String, i64)>> {
        let mut out = Vec::new();
        let prefix = b"status/";
        for item in self.db.iterator_cf(
            self.cf(keys::COUNTERS),
            IteratorMode::From(prefix, Direction::Forward),
        ) {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            let status = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            out.push((status, read_i64(&value)));
        }
        Ok(out)
    }

    /// Whether a published event id was already applied.
    pub fn event_seen(&self, id: &str) -> Result<bool> {
        Ok(self.get::<()>(keys::EVENTS_SEEN, id.as_bytes())?.is_some())
    }
}

fn read_i64(bytes: &[u8]) -> i64 {
    bytes.try_into().map_or(0, i64::from_le_bytes)
}

/// The `counters` merge: adds little-endian i64 operands.
fn add_i64(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    let sum = operands
        .into_iter()
        .fold(existing.map_or(0, read_i64), |sum, op| sum + read_i64(op));
    Some(sum.to_le_bytes().to_vec())
}

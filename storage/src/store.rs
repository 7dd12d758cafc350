//! [`Store`]: opening the node's RocksDB (and refusing a data dir of another
//! format), and the reads, each scoped to a shard or cluster-wide data.

use crate::codec;
use crate::disk;
use crate::error::{Error, Result};
use crate::keys::{self, Table};
use crate::records::{
    ClusterMap, DefinitionRecord, HumanTaskRecord, IncidentRecord, InstanceHead, OutboxRecord,
    StoredInstance, TimerRecord,
};
use rocksdb::{ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options};
use std::path::Path;
use std::sync::{Arc, Mutex};
use troupe_engine::engine::{Event, InstanceStatus, Millis, StepRun};

/// The storage format this build reads and writes (`meta/format`).
/// Format 1 (keys not scoped by shard) had no `format` key; format 2
/// rewrote the whole instance on every transition; format 3 had no
/// due-order timer index; format 5 journaled one key per event; format 6
/// had no retention index (`ended`).
pub const FORMAT: u32 = 7;

/// RocksDB's memory, in bytes, by what holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageMemory {
    /// Memtables (bounded by `write_buffer_bytes`).
    pub memtables: u64,
    /// Open files' readers, outside the block cache.
    pub table_readers: u64,
    /// The block cache (bounded by `block_cache_bytes`, unless pinned
    /// blocks exceed it).
    pub block_cache: u64,
    /// The part of the block cache that cannot be evicted now.
    pub block_cache_pinned: u64,
}

/// How far RocksDB's flushes and compactions are behind its writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackgroundWork {
    /// Level-0 files of the table that has the most (writes slow down at
    /// 20, the level's compaction starts at 4).
    pub level0_files: u64,
    /// Bytes compactions still have to rewrite, over all tables.
    pub pending_compaction_bytes: u64,
    /// Compactions running now.
    pub compactions_running: u64,
    /// Whether RocksDB holds writes back now: 0 no, 1 slowed, 2 stopped.
    pub write_stall: u8,
}

/// How to open the store.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Shard count (fixed for the data dir's life).
    pub shards: u32,
    /// Memtables across all column families, bytes.
    pub write_buffer_bytes: usize,
    /// Block cache shared by every column family, bytes.
    pub block_cache_bytes: usize,
    /// Most bytes a second that flushes and compactions write (0: no
    /// limit).
    pub background_write_bytes_per_sec: usize,
    /// Flushes and compactions read and write table files with direct I/O
    /// (bypassing the page cache) when the data dir's file system allows
    /// it; see [`Store::direct_io`].
    pub direct_io: bool,
}

/// The node's RocksDB.
#[derive(Clone)]
pub struct Store {
    pub(crate) db: Arc<DB>,
    /// The block cache every column family shares.
    cache: rocksdb::Cache,
    shards: u32,
    /// Whether flushes and compactions use direct I/O.
    direct_io: bool,
    /// Whether the data dir's file system trims freed space online.
    online_discard: bool,
    /// Serialises deploys (check, then write).
    deploy_lock: Arc<Mutex<()>>,
}

/// A stored value of table `cf`.
fn decode<T: serde::de::DeserializeOwned>(cf: &'static str, bytes: &[u8]) -> Result<T> {
    codec::decode(bytes).map_err(|source| Error::Corrupt { cf, source })
}

impl Store {
    /// Opens (or creates) the database in `dir`. A data dir written in
    /// another format is refused before anything in it changes.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Self> {
        if let Ok(existing) = DB::list_cf(&Options::default(), dir) {
            // Older formats are told apart by their column families, before
            // opening creates the missing ones.
            let has = |table: Table| existing.iter().any(|cf| cf == table.cf());
            let found = match (
                has(Table::Instances),
                has(Table::ByStatus),
                has(Table::Snapshots),
            ) {
                (true, false, _) => Some(1),
                (true, true, false) => Some(2),
                _ => None,
            };
            if let Some(found) = found {
                return Err(Error::Format {
                    found,
                    expected: FORMAT,
                });
            }
        }
        let mut db_options = Options::default();
        db_options.set_db_write_buffer_size(options.write_buffer_bytes);
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_compression_type(rocksdb::DBCompressionType::Lz4);
        db_options.increase_parallelism(2);
        // Compactions of different tables run side by side, so a large one
        // (the journal's) does not hold back another table's level 0 until
        // writes stall on it.
        db_options.set_max_background_jobs(4);
        // Flushes and compactions write their files back a megabyte at a
        // time instead of in one burst at the end, which would queue the
        // commit's WAL fsync behind it (a latency spike per flush).
        db_options.set_bytes_per_sync(1 << 20);
        // Table files that flushes and compactions write are not read back
        // soon (reads go through the block cache), so they bypass the page
        // cache: copying them into it, allocating and reclaiming its pages,
        // took about a tenth of the node's CPU at 12,000 wf/s (see
        // `docs/storage.md`).
        let direct_io = options.direct_io && disk::supports_direct_io(dir);
        if direct_io {
            db_options.set_use_direct_io_for_flush_and_compaction(true);
            // Direct reads get no readahead from the kernel.
            db_options.set_compaction_readahead_size(2 << 20);
        } else if options.direct_io {
            tracing::warn!(
                dir = %dir.display(),
                "the data dir's file system refuses direct I/O; flushes and compactions go through the page cache"
            );
        }
        // Flushes and compactions write at most this fast. Unbounded, a
        // compaction burst saturated the disk, the WAL's fsync waited
        // behind it, and every transition of the node with it (open-loop
        // p99 200-430 ms at 80% of the peak, 35 ms at 64 MiB/s). A fixed
        // rate, not RocksDB's auto-tuned one: that one starts at a
        // twentieth of it and climbs slowly, so a sudden burst of writes
        // (a replica installing snapshots) stopped writes for seconds.
        // Refilled every 10 ms, not RocksDB's default 100: each refill lets
        // the waiting writers issue their whole share at once, so at 100 ms
        // every tenth of a second 1.6 MB of table writes reached the disk
        // together and the WAL fsyncs queued behind them took 5-13 ms
        // (open-loop p99 40 ms at 10,800 wf/s; 12-15 ms with 10-ms refills).
        if options.background_write_bytes_per_sec > 0 {
            db_options.set_ratelimiter(options.background_write_bytes_per_sec as i64, 10_000, 10);
        }
        // Compactions yield the CPU to transitions, so that a compaction
        // does not stall acknowledgements on a small machine. Flushes do
        // not: they are what keeps memtables within their budget, and at a
        // lowered priority a saturated CPU starved them (memtables at 150
        // MB against an 8-MiB budget beside two busy loops).
        let mut env = rocksdb::Env::new()?;
        env.lower_thread_pool_cpu_priority();
        db_options.set_env(&env);
        // One cache for every column family (each table factory would
        // otherwise get its own default cache), so memory stays bounded.
        let cache = rocksdb::Cache::new_lru_cache(options.block_cache_bytes);
        let cfs = keys::all_cfs().map(|name| {
            let mut cf = Options::default();
            let mut table = rocksdb::BlockBasedOptions::default();
            // Bloom filters where keys are looked up one by one: a start
            // looks up an id that usually does not exist yet, which without
            // them reads index blocks of every file. Tables only ever
            // iterated would pay to build filters nothing reads.
            if keys::read_by_key(name) {
                table.set_bloom_filter(10.0, false);
            }
            // The journal is read one instance at a time (an ended short
            // instance is its journal alone): bloom filters over instance
            // prefixes let that read skip every file without the instance
            // instead of seeking an index in each. Step runs likewise, so
            // that retention's look for them costs next to nothing for the
            // many instances that archived none.
            if name == Table::Journal.cf() || name == Table::Steps.cf() {
                table.set_bloom_filter(10.0, false);
                table.set_whole_key_filtering(false);
                cf.set_prefix_extractor(rocksdb::SliceTransform::create(
                    "troupe.instance",
                    keys::instance_prefix_of,
                    Some(keys::has_instance_prefix),
                ));
                cf.set_memtable_prefix_bloom_ratio(0.05);
            }
            table.set_block_cache(&cache);
            // Index and filter blocks live in the cache too, so their memory
            // is bounded by it rather than growing with the data stored. They
            // are partitioned: a lookup reads one 4-KiB partition of a file's
            // filter and index instead of the whole block, which for a large
            // file is megabytes, and once the data outgrows the cache would
            // be read and checksummed again on every lookup.
            table.set_cache_index_and_filter_blocks(true);
            table.set_pin_l0_filter_and_index_blocks_in_cache(true);
            table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
            table.set_partition_filters(true);
            table.set_metadata_block_size(4096);
            table.set_pin_top_level_index_and_filter(true);
            cf.set_block_based_table_factory(&table);
            // The first levels are rewritten soonest: compressing them costs
            // CPU (taken from transitions on a small machine) for little.
            use rocksdb::DBCompressionType::{Lz4, None as Plain};
            cf.set_compression_per_level(&[Plain, Plain, Lz4, Lz4, Lz4, Lz4, Lz4]);
            // A snapshot is only looked up when a head names it, so always
            // found: the last level, where most keys sit, needs no filter.
            if name == Table::Snapshots.cf() {
                cf.set_optimize_filters_for_hits(true);
            }
            // Instance ids spread every table's writes over its whole key
            // range, so a compaction into a level rewrites all of it. Small
            // levels (RocksDB's default base is 256 MiB, below which level 0
            // goes straight to the last level) keep that rewrite bounded as
            // the data grows instead of growing with it.
            cf.set_max_bytes_for_level_base(32 << 20);
            cf.set_target_file_size_base(8 << 20);
            if name == Table::Counters.cf() {
                cf.set_merge_operator_associative("add_i64", add_i64);
            }
            ColumnFamilyDescriptor::new(name, cf)
        });
        let db = DB::open_cf_descriptors(&db_options, dir, cfs)?;
        // Probed once the dir exists (opening creates it).
        let online_discard = disk::online_discard(dir);
        if online_discard {
            tracing::warn!(
                dir = %dir.display(),
                "the data dir's file system is mounted with `discard`: it trims what RocksDB deletes inside its journal commits, which group commits' fsyncs wait for (latency spikes); mount it without `discard` and trim periodically (fstrim), see docs/operations.md"
            );
        }
        let store = Self {
            db: Arc::new(db),
            cache,
            shards: options.shards,
            direct_io,
            online_discard,
            deploy_lock: Arc::default(),
        };
        store.check_meta(options.shards)?;
        Ok(store)
    }

    /// Writes every table's memtable to table files (before a backup; tests
    /// use it to read through files rather than memtables).
    pub fn flush(&self) -> Result<()> {
        for name in keys::all_cfs() {
            self.db.flush_cf(self.cf(name))?;
        }
        Ok(())
    }

    /// Whether flushes and compactions use direct I/O: asked for and
    /// allowed by the data dir's file system.
    pub fn direct_io(&self) -> bool {
        self.direct_io
    }

    /// Whether the data dir's file system is mounted with online discard,
    /// which delays fsyncs whenever RocksDB deletes files (see
    /// `docs/operations.md`).
    pub fn online_discard(&self) -> bool {
        self.online_discard
    }

    /// What RocksDB holds in memory now (for the node's metrics).
    pub fn memory(&self) -> Result<StorageMemory> {
        let stats = rocksdb::perf::get_memory_usage_stats(Some(&[&self.db]), Some(&[&self.cache]))?;
        Ok(StorageMemory {
            memtables: stats.mem_table_total,
            table_readers: stats.mem_table_readers_total,
            block_cache: self.cache.get_usage() as u64,
            block_cache_pinned: self.cache.get_pinned_usage() as u64,
        })
    }

    /// How far flushes and compactions are behind (for the node's metrics).
    pub fn background_work(&self) -> Result<BackgroundWork> {
        use rocksdb::properties as p;
        let int = |name| Ok::<_, Error>(self.db.property_int_value(name)?.unwrap_or(0));
        let mut work = BackgroundWork {
            compactions_running: int(p::NUM_RUNNING_COMPACTIONS)?,
            write_stall: if int(p::IS_WRITE_STOPPED)? > 0 {
                2
            } else {
                u8::from(int(p::ACTUAL_DELAYED_WRITE_RATE)? > 0)
            },
            ..BackgroundWork::default()
        };
        for name in keys::all_cfs() {
            let cf = self.cf(name);
            let level0 = self
                .db
                .property_int_value_cf(cf, p::num_files_at_level(0))?;
            let pending = self
                .db
                .property_int_value_cf(cf, p::ESTIMATE_PENDING_COMPACTION_BYTES)?;
            work.level0_files = work.level0_files.max(level0.unwrap_or(0));
            work.pending_compaction_bytes += pending.unwrap_or(0);
        }
        Ok(work)
    }

    fn check_meta(&self, shards: u32) -> Result<()> {
        match self.get::<u32>(keys::META, b"format")? {
            Some(FORMAT) => {}
            Some(found) => {
                return Err(Error::Format {
                    found,
                    expected: FORMAT,
                });
            }
            None => self.put_meta(b"format", &FORMAT)?,
        }
        match self.get::<u32>(keys::META, b"shards")? {
            Some(found) if found != shards => Err(Error::Shards {
                found,
                configured: shards,
            }),
            Some(_) => Ok(()),
            None => self.put_meta(b"shards", &shards),
        }
    }

    fn put_meta<T: serde::Serialize>(&self, key: &[u8], value: &T) -> Result<()> {
        Ok(self
            .db
            .put_cf(self.cf(keys::META), key, codec::encode(value))?)
    }

    /// This data dir's incarnation: a random number drawn when the data dir
    /// was created. A cluster member whose data dir is lost comes back with
    /// another one, which its peers refuse. Returns it and whether it was
    /// drawn now.
    pub fn incarnation(&self) -> Result<(u64, bool)> {
        if let Some(found) = self.get::<u64>(keys::META, b"incarnation")? {
            return Ok((found, false));
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let drawn = troupe_protocol::stable_hash(
            format!("{nanos}/{}/{:p}", std::process::id(), &nanos).as_bytes(),
        ) | 1;
        self.put_meta(b"incarnation", &drawn)?;
        self.db.flush_wal(true)?;
        Ok((drawn, true))
    }

    /// The incarnation this node knows of member `node` (first seen).
    pub fn peer_incarnation(&self, node: u64) -> Result<Option<u64>> {
        self.get(keys::META, format!("peer/{node}").as_bytes())
    }

    /// Records member `node`'s incarnation (synced).
    pub fn set_peer_incarnation(&self, node: u64, incarnation: u64) -> Result<()> {
        self.put_meta(format!("peer/{node}").as_bytes(), &incarnation)?;
        Ok(self.db.flush_wal(true)?)
    }

    /// The shard count.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    pub(crate) fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
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

    /// Keys and values under `prefix` in key order, starting after `after`
    /// when given, at most `limit`.
    pub(crate) fn scan<T: serde::de::DeserializeOwned>(
        &self,
        cf: &'static str,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, T)>> {
        let start = after.map_or_else(|| prefix.to_vec(), |a| [a, &[0]].concat());
        let mut out = Vec::new();
        let mut options = rocksdb::ReadOptions::default();
        options.set_prefix_same_as_start(true);
        let mode = IteratorMode::From(&start, Direction::Forward);
        for item in self.db.iterator_cf_opt(self.cf(cf), options, mode) {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            let value = codec::decode(&value).map_err(|source| Error::Corrupt { cf, source })?;
            out.push((key.to_vec(), value));
        }
        Ok(out)
    }

    fn values<T: serde::de::DeserializeOwned>(
        &self,
        cf: &'static str,
        prefix: &[u8],
    ) -> Result<Vec<T>> {
        Ok(self
            .scan(cf, prefix, None, usize::MAX)?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    pub(crate) fn write_synced(&self, batch: rocksdb::WriteBatch) -> Result<()> {
        let mut options = rocksdb::WriteOptions::default();
        options.set_sync(true);
        Ok(self.db.write_opt(batch, &options)?)
    }

    // --- cluster-wide data ---

    /// One definition version.
    pub fn definition(&self, name: &str, version: u32) -> Result<Option<DefinitionRecord>> {
        self.get(keys::DEFINITIONS, &keys::definition(name, version))
    }

    /// Every version of a definition, oldest first.
    pub fn definition_versions(&self, name: &str) -> Result<Vec<DefinitionRecord>> {
        self.values(keys::DEFINITIONS, &keys::definition_prefix(name))
    }

    /// Every definition version of every name.
    pub fn definitions(&self) -> Result<Vec<DefinitionRecord>> {
        self.values(keys::DEFINITIONS, b"")
    }

    /// Stores `record` unless its name and version exist; returns what is
    /// stored under them afterwards and whether it is `record`. Deploys are
    /// serialised, so two concurrent deploys of one version cannot both win.
    pub fn deploy_definition(&self, record: &DefinitionRecord) -> Result<(bool, DefinitionRecord)> {
        let _one_at_a_time = self.deploy_lock.lock().expect("deploy lock");
        if let Some(existing) = self.definition(&record.name, record.version)? {
            return Ok((false, existing));
        }
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(
            self.cf(keys::DEFINITIONS),
            keys::definition(&record.name, record.version),
            codec::encode(record),
        );
        self.write_synced(batch)?;
        Ok((true, record.clone()))
    }

    /// The cluster map, once the metadata group has written one.
    pub fn cluster_map(&self) -> Result<Option<ClusterMap>> {
        self.get(keys::META, keys::CLUSTER_MAP)
    }

    /// Whether a published event id was already applied.
    pub fn event_seen(&self, id: &str) -> Result<bool> {
        Ok(self.get::<()>(keys::EVENTS_SEEN, id.as_bytes())?.is_some())
    }

    /// Records that a published event id was applied (synced).
    pub fn mark_event_seen(&self, id: &str) -> Result<()> {
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(
            self.cf(keys::EVENTS_SEEN),
            id.as_bytes(),
            codec::encode(&()),
        );
        self.write_synced(batch)
    }

    // --- one instance ---

    /// An instance's head.
    pub fn instance_head(&self, shard: u32, id: &str) -> Result<Option<InstanceHead>> {
        self.get(Table::Instances.cf(), &keys::instance(shard, id))
    }

    /// An instance as stored: head, latest snapshot and the journal after
    /// it, read from one RocksDB snapshot so that they agree even while the
    /// instance moves on.
    pub fn load_instance(&self, shard: u32, id: &str) -> Result<Option<StoredInstance>> {
        // Most loads are of instances about to be created, or of ended ones
        // (whose head and snapshot no longer change): answer those without
        // pinning a RocksDB snapshot.
        match self.instance_head(shard, id)? {
            None => Ok(None),
            Some(head) => self.load_instance_after(shard, id, head).map(Some),
        }
    }

    /// [`Store::load_instance`] for a caller that has just read the head.
    pub fn load_instance_after(
        &self,
        shard: u32,
        id: &str,
        head: InstanceHead,
    ) -> Result<StoredInstance> {
        // An ended instance no longer changes: its parts are read as they
        // are. A running one may move on meanwhile, so its head is read
        // again with the rest from one RocksDB snapshot.
        if head.status.is_terminal() {
            return self.instance_parts(shard, id, head, None);
        }
        let view = self.db.snapshot();
        let cf = Table::Instances.cf();
        let mut options = rocksdb::ReadOptions::default();
        options.set_snapshot(&view);
        let bytes = self
            .db
            .get_pinned_cf_opt(self.cf(cf), keys::instance(shard, id), &options)?
            .ok_or(Error::Missing {
                cf,
                what: "the head of an instance just read",
            })?;
        let head = decode(cf, &bytes)?;
        self.instance_parts(shard, id, head, Some(&view))
    }

    /// The snapshot, journal tail and armed timers `head` names, read at
    /// `view` (or as they are now).
    fn instance_parts(
        &self,
        shard: u32,
        id: &str,
        head: InstanceHead,
        view: Option<&rocksdb::Snapshot<'_>>,
    ) -> Result<StoredInstance> {
        let options = || {
            let mut options = rocksdb::ReadOptions::default();
            if let Some(view) = view {
                options.set_snapshot(view);
            }
            // Iterators stay inside the instance's prefix, so the journal's
            // prefix bloom filters can skip files.
            options.set_prefix_same_as_start(true);
            options
        };
        let (mut snapshot, mut snapshot_bytes) = (None, 0);
        if head.snapshot_events > 0 {
            let cf = Table::Snapshots.cf();
            let bytes = self
                .db
                .get_pinned_cf_opt(self.cf(cf), keys::instance(shard, id), &options())?
                .ok_or(Error::Missing {
                    cf,
                    what: "the snapshot an instance head names",
                })?;
            snapshot_bytes = bytes.len();
            snapshot = Some(decode(cf, &bytes)?);
        }
        let prefix = keys::instance_prefix(shard, id);
        let (tail, tail_bytes) = if head.events > head.snapshot_events {
            let (events, bytes) =
                self.journal_after(shard, id, head.snapshot_events, usize::MAX, options())?;
            (events.into_iter().map(|(_, event)| event).collect(), bytes)
        } else {
            (Vec::new(), 0)
        };
        let timers = if head.status.is_terminal() {
            Vec::new()
        } else {
            self.values_from(Table::Timers, &prefix, &prefix, options())?
                .0
        };
        Ok(StoredInstance {
            head,
            snapshot,
            snapshot_bytes,
            tail,
            tail_bytes,
            timers,
        })
    }

    /// Up to `limit` journaled events of an instance numbered after `after`,
    /// oldest first, each with its number, and the encoded size of the
    /// records they came from. A record is keyed by its last event, so the
    /// first one read may begin at or before `after`: those events are
    /// skipped.
    fn journal_after(
        &self,
        shard: u32,
        id: &str,
        after: u64,
        limit: usize,
        options: rocksdb::ReadOptions,
    ) -> Result<(Vec<(u64, Event)>, usize)> {
        let cf = Table::Journal.cf();
        let prefix = keys::instance_prefix(shard, id);
        let from = keys::journal(shard, id, after.saturating_add(1));
        let (mut events, mut bytes) = (Vec::new(), 0);
        let mode = IteratorMode::From(&from, Direction::Forward);
        for item in self.db.iterator_cf_opt(self.cf(cf), options, mode) {
            let (key, value) = item?;
            if events.len() >= limit || !key.starts_with(&prefix) {
                break;
            }
            let last = keys::journal_seq(&key).ok_or(Error::Missing {
                cf,
                what: "the sequence number a journal key ends with",
            })?;
            let record =
                crate::journal::decode(&value).map_err(|source| Error::Corrupt { cf, source })?;
            bytes += value.len();
            let first = (last + 1).saturating_sub(record.len() as u64);
            let numbered = (first..).zip(record).filter(|(seq, _)| *seq > after);
            events.extend(numbered.take(limit - events.len()));
        }
        Ok((events, bytes))
    }

    /// The values of `table` from key `from` on while keys start with
    /// `prefix`, decoded, with their encoded size in all.
    fn values_from<T: serde::de::DeserializeOwned>(
        &self,
        table: Table,
        from: &[u8],
        prefix: &[u8],
        options: rocksdb::ReadOptions,
    ) -> Result<(Vec<T>, usize)> {
        let (mut values, mut bytes) = (Vec::new(), 0);
        let mode = IteratorMode::From(from, Direction::Forward);
        for item in self.db.iterator_cf_opt(self.cf(table.cf()), options, mode) {
            let (key, value) = item?;
            if !key.starts_with(prefix) {
                break;
            }
            bytes += value.len();
            values.push(decode(table.cf(), &value)?);
        }
        Ok((values, bytes))
    }

    /// Up to `limit` archived step runs of an instance, by path, after
    /// `after` when given.
    pub fn archived_steps(
        &self,
        shard: u32,
        id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, StepRun)>> {
        let prefix = keys::instance_prefix(shard, id);
        let after = after.map(|path| keys::step(shard, id, path));
        Ok(self
            .scan(Table::Steps.cf(), &prefix, after.as_deref(), limit)?
            .into_iter()
            .map(|(key, run)| {
                (
                    String::from_utf8_lossy(&key[prefix.len()..]).into_owned(),
                    run,
                )
            })
            .collect())
    }

    /// Up to `limit` journaled events of an instance with sequence numbers
    /// after `after` (from the first when `None`), oldest first, each with
    /// its sequence number.
    pub fn history(
        &self,
        shard: u32,
        id: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<(u64, Event)>> {
        let mut options = rocksdb::ReadOptions::default();
        options.set_prefix_same_as_start(true);
        let after = after.unwrap_or(0);
        Ok(self.journal_after(shard, id, after, limit, options)?.0)
    }

    /// Armed timers of one instance.
    pub fn instance_timers(&self, shard: u32, id: &str) -> Result<Vec<TimerRecord>> {
        self.values(Table::Timers.cf(), &keys::instance_prefix(shard, id))
    }

    /// Outbox entries of one instance.
    pub fn outbox_of(&self, shard: u32, id: &str) -> Result<Vec<OutboxRecord>> {
        self.values(Table::Outbox.cf(), &keys::instance_prefix(shard, id))
    }

    // --- one shard ---

    /// Every armed timer of a shard.
    pub fn timers(&self, shard: u32) -> Result<Vec<TimerRecord>> {
        self.values(Table::Timers.cf(), &keys::shard_start(shard))
    }

    /// Timers of a shard due after `after` (from the start: `None`) and at
    /// or before `until`, in due order: a window of the due-order index.
    pub fn timers_due(
        &self,
        shard: u32,
        after: Option<Millis>,
        until: Millis,
    ) -> Result<Vec<TimerRecord>> {
        let from = keys::timer_due_from(shard, after.map_or(0, |a| a.saturating_add(1)));
        let to = keys::timer_due_from(shard, until.saturating_add(1));
        let mut options = rocksdb::ReadOptions::default();
        options.set_iterate_upper_bound(to);
        let mut iter = self
            .db
            .raw_iterator_cf_opt(self.cf(Table::TimersDue.cf()), options);
        iter.seek(&from);
        let mut due = Vec::new();
        while let Some(value) = iter.value() {
            due.push(codec::decode(value).map_err(|source| Error::Corrupt {
                cf: "timers_due",
                source,
            })?);
            iter.next();
        }
        iter.status()?;
        Ok(due)
    }

    /// Instances of a shard with outbox entries (work that may need redoing
    /// after a crash or a move).
    pub fn outbox_instances(&self, shard: u32) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .values::<OutboxRecord>(Table::Outbox.cf(), &keys::shard_start(shard))?
            .into_iter()
            .map(|record| match record {
                OutboxRecord::Task { instance, .. } | OutboxRecord::Child { instance, .. } => {
                    instance
                }
            })
            .collect();
        ids.dedup();
        Ok(ids)
    }

    /// Instances of a shard by status, as counted in step with transitions.
    pub fn status_counts(&self, shard: u32) -> Result<Vec<(InstanceStatus, i64)>> {
        let statuses = [
            InstanceStatus::Running,
            InstanceStatus::Waiting,
            InstanceStatus::Completed,
            InstanceStatus::Failed,
            InstanceStatus::Compensating,
            InstanceStatus::Compensated,
            InstanceStatus::CompensationFailed,
            InstanceStatus::Cancelled,
        ];
        let mut out = Vec::new();
        for status in statuses {
            let key = keys::status_counter(shard, status);
            if let Some(value) = self.db.get_pinned_cf(self.cf(Table::Counters.cf()), key)? {
                out.push((status, read_i64(&value)));
            }
        }
        Ok(out)
    }

    /// Open human tasks, in shard then id order, after `cursor` (a task id),
    /// at most `limit`, those for which `keep` holds.
    pub fn human_tasks(
        &self,
        cursor: Option<&str>,
        limit: usize,
        shards: Option<&[u32]>,
        keep: impl Fn(&HumanTaskRecord) -> bool,
    ) -> Result<Vec<HumanTaskRecord>> {
        let from = cursor.and_then(|c| Some((keys::shard_of_short_id("human", c)?, c)));
        self.across_shards(Table::HumanTasks, from, limit, shards, keep)
    }

    /// One open human task.
    pub fn human_task(&self, id: &str) -> Result<Option<HumanTaskRecord>> {
        match keys::shard_of_short_id("human", id) {
            Some(shard) if shard < self.shards => {
                self.get(Table::HumanTasks.cf(), &keys::by_id(shard, id))
            }
            _ => Ok(None),
        }
    }

    /// Open incidents, in shard then id order, after `cursor` (an incident
    /// id), at most `limit`, of `shards` (all when `None`).
    pub fn incidents(
        &self,
        cursor: Option<&str>,
        limit: usize,
        shards: Option<&[u32]>,
    ) -> Result<Vec<IncidentRecord>> {
        let from = cursor.and_then(|c| Some((keys::shard_of_short_id("incident", c)?, c)));
        self.across_shards(Table::Incidents, from, limit, shards, |_| true)
    }

    /// One open incident.
    pub fn incident(&self, id: &str) -> Result<Option<IncidentRecord>> {
        match keys::shard_of_short_id("incident", id) {
            Some(shard) if shard < self.shards => {
                self.get(Table::Incidents.cf(), &keys::by_id(shard, id))
            }
            _ => Ok(None),
        }
    }

    /// Records of a table keyed `shard | id`, shard by shard, from after
    /// `(shard, id)`, of `shards` (all when `None`).
    fn across_shards<T: serde::de::DeserializeOwned>(
        &self,
        table: Table,
        from: Option<(u32, &str)>,
        limit: usize,
        shards: Option<&[u32]>,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        let first = from.map_or(0, |(shard, _)| shard);
        for shard in first..self.shards {
            if shards.is_some_and(|only| !only.contains(&shard)) {
                continue;
            }
            let prefix = keys::shard_start(shard);
            let mut after = from
                .filter(|(s, _)| *s == shard)
                .map(|(_, id)| keys::by_id(shard, id));
            while out.len() < limit {
                let page = self.scan::<T>(table.cf(), &prefix, after.as_deref(), 256)?;
                let Some((last, _)) = page.last() else { break };
                after = Some(last.clone());
                let exhausted = page.len() < 256;
                out.extend(
                    page.into_iter()
                        .map(|(_, v)| v)
                        .filter(|v| keep(v))
                        .take(limit - out.len()),
                );
                if exhausted {
                    break;
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Instances awaiting event `name` with `correlation`, in `shards`
    /// (all when `None`).
    pub fn subscribers(
        &self,
        name: &str,
        correlation: Option<&str>,
        shards: Option<&[u32]>,
    ) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        for shard in 0..self.shards {
            if shards.is_some_and(|only| !only.contains(&shard)) {
                continue;
            }
            let prefix = keys::subscription_prefix(shard, name, correlation);
            ids.extend(
                self.scan::<()>(Table::Subscriptions.cf(), &prefix, None, usize::MAX)?
                    .into_iter()
                    .map(|(key, _)| String::from_utf8_lossy(&key[prefix.len()..]).into_owned()),
            );
        }
        Ok(ids)
    }
}

pub(crate) fn read_i64(bytes: &[u8]) -> i64 {
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

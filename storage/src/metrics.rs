//! Metric names of the storage crate, described once.

use crate::{BackgroundWork, StorageMemory};
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Time of one group commit (write + fsync).
pub const COMMIT_SECONDS: &str = "troupe_journal_commit_seconds";
/// Shard batches (transitions) per group commit.
pub const COMMIT_BATCHES: &str = "troupe_journal_batch_transitions";
/// Storage writes (puts, deletes, counter adds) committed.
pub const WRITES_TOTAL: &str = "troupe_journal_ops_total";

/// RocksDB's memory, by what holds it (`held_by`).
pub const MEMORY_BYTES: &str = "troupe_storage_memory_bytes";

/// Level-0 files of the table that has the most.
pub const LEVEL0_FILES: &str = "troupe_storage_level0_files";
/// Bytes compactions still have to rewrite.
pub const PENDING_COMPACTION_BYTES: &str = "troupe_storage_pending_compaction_bytes";
/// Compactions running.
pub const COMPACTIONS_RUNNING: &str = "troupe_storage_compactions_running";
/// Whether RocksDB holds writes back: 0 no, 1 slowed, 2 stopped.
pub const WRITE_STALL: &str = "troupe_storage_write_stall";

/// Whether the data dir's file system is mounted with online discard
/// (`discard`), which delays fsyncs: 1 yes, 0 no.
pub const ONLINE_DISCARD: &str = "troupe_storage_online_discard";

/// Sets the [`ONLINE_DISCARD`] gauge (once, when the store opens).
pub fn record_disk(online_discard: bool) {
    metrics::gauge!(ONLINE_DISCARD).set(f64::from(u8::from(online_discard)));
}

/// Sets the gauges of RocksDB's background work.
pub fn record_background_work(work: &BackgroundWork) {
    metrics::gauge!(LEVEL0_FILES).set(work.level0_files as f64);
    metrics::gauge!(PENDING_COMPACTION_BYTES).set(work.pending_compaction_bytes as f64);
    metrics::gauge!(COMPACTIONS_RUNNING).set(work.compactions_running as f64);
    metrics::gauge!(WRITE_STALL).set(f64::from(work.write_stall));
}

/// Sets the [`MEMORY_BYTES`] gauges.
pub fn record_memory(memory: &StorageMemory) {
    for (held_by, bytes) in [
        ("memtables", memory.memtables),
        ("table_readers", memory.table_readers),
        ("block_cache", memory.block_cache),
        ("block_cache_pinned", memory.block_cache_pinned),
    ] {
        metrics::gauge!(MEMORY_BYTES, "held_by" => held_by).set(bytes as f64);
    }
}

/// Describes this crate's metrics to the installed recorder.
pub fn describe() {
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "Duration of one group commit, fsync included"
    );
    describe_histogram!(COMMIT_BATCHES, "Shard batches sharing one group commit");
    describe_counter!(WRITES_TOTAL, "Storage writes committed");
    describe_gauge!(
        MEMORY_BYTES,
        Unit::Bytes,
        "RocksDB memory by holder (memtables, table readers, block cache, its pinned part)"
    );
    describe_gauge!(
        LEVEL0_FILES,
        "Level-0 files of the table that has the most (writes slow down at 20)"
    );
    describe_gauge!(
        PENDING_COMPACTION_BYTES,
        Unit::Bytes,
        "Bytes RocksDB's compactions still have to rewrite"
    );
    describe_gauge!(COMPACTIONS_RUNNING, "RocksDB compactions running");
    describe_gauge!(
        ONLINE_DISCARD,
        "Whether the data dir's file system is mounted with `discard` (1), which delays fsyncs when RocksDB deletes files"
    );
    describe_gauge!(
        WRITE_STALL,
        "Whether RocksDB holds writes back: 0 no, 1 slowed, 2 stopped"
    );
}

//! Metric names of the storage crate, described once.

use crate::StorageMemory;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Time of one group commit (write + fsync).
pub const COMMIT_SECONDS: &str = "troupe_journal_commit_seconds";
/// Shard batches (transitions) per group commit.
pub const COMMIT_BATCHES: &str = "troupe_journal_batch_transitions";
/// Storage writes (puts, deletes, counter adds) committed.
pub const WRITES_TOTAL: &str = "troupe_journal_ops_total";

/// RocksDB's memory, by what holds it (`held_by`).
pub const MEMORY_BYTES: &str = "troupe_storage_memory_bytes";

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
}

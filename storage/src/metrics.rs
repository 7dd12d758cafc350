//! Metric names of the storage crate, described once.

use metrics::{Unit, describe_counter, describe_histogram};

/// Time of one group commit (write + fsync).
pub const COMMIT_SECONDS: &str = "troupe_journal_commit_seconds";
/// Shard batches (transitions) per group commit.
pub const COMMIT_BATCHES: &str = "troupe_journal_batch_transitions";
/// Storage writes (puts, deletes, counter adds) committed.
pub const WRITES_TOTAL: &str = "troupe_journal_ops_total";

/// Describes this crate's metrics to the installed recorder.
pub fn describe() {
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "Duration of one group commit, fsync included"
    );
    describe_histogram!(COMMIT_BATCHES, "Shard batches sharing one group commit");
    describe_counter!(WRITES_TOTAL, "Storage writes committed");
}

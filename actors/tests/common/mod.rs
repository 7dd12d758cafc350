//! What the runtime's integration tests share: a small store in a fresh
//! temporary dir, and settings for one shard.

use std::path::PathBuf;
use std::time::Duration;
use troupe_actors::Settings;
use troupe_storage::{Store, StoreOptions};

/// A one-shard store with small buffers in a fresh dir named after `name`.
pub fn open_store(name: &str) -> (Store, PathBuf) {
    let dir = std::env::temp_dir().join(format!("troupe-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let options = StoreOptions {
        shards: 1,
        write_buffer_bytes: 8 << 20,
        block_cache_bytes: 8 << 20,
        background_write_bytes_per_sec: 0,
        direct_io: true,
    };
    (Store::open(&dir, options).unwrap(), dir)
}

/// Settings for one shard, with nothing passivated or retried on a timer
/// during a test, and at most `max_starts_in_flight` starts inside.
pub fn settings(max_starts_in_flight: usize) -> Settings {
    Settings {
        shards: 1,
        passivate_after: Duration::from_secs(60),
        timer_window: Duration::from_secs(60),
        restart_budget: 5,
        restart_window: Duration::from_secs(60),
        max_pending_per_shard: 100,
        max_starts_in_flight,
        memory_budget_bytes: 64 << 20,
        max_queued_tasks: 100,
        history_retention: None,
        retention: None,
    }
}

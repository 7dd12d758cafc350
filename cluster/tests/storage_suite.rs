//! openraft's own storage test suite, run on a shard group's log store and
//! state machine over a real RocksDB.

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use std::path::PathBuf;
use troupe_cluster::{LogStore, ShardMachine, TypeConfig};
use troupe_storage::{Store, StoreOptions, WalSyncer};

/// Removes the store's directory when the suite is done with it.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, ShardMachine, Dir> for Builder {
    async fn build(&self) -> Result<(Dir, LogStore, ShardMachine), StorageError<TypeConfig>> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("troupe-raft-suite-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let options = StoreOptions {
            shards: 4,
            write_buffer_bytes: 8 << 20,
            block_cache_bytes: 8 << 20,
            background_write_bytes_per_sec: 0,
            direct_io: true,
        };
        let store = Store::open(&dir, options).expect("store opens");
        let syncer = WalSyncer::start(store.clone(), true);
        let log = LogStore::new(store.clone(), 2, syncer);
        let machine = ShardMachine::new(store, 2);
        Ok((Dir(dir), log, machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_groups_pass_the_openraft_storage_suite() {
    Suite::test_all(Builder).await.expect("storage suite");
}

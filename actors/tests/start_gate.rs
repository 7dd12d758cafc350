//! The start gate: at most `max_starts_in_flight` starts are inside the
//! shards at once; the others wait their turn, and one that finds no room
//! within the admission wait is refused as `overloaded`, leaving nothing
//! behind. The log is held shut (commits wait) to make starts stay inside.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use troupe_actors::{Appending, Applied, Command, Runtime, ShardLog, TaskHandlers};
use troupe_engine::definition::{Definition, load};
use troupe_protocol::ErrorCode;
use troupe_storage::{Committer, ShardBatch};

/// The local group commit, behind a door the test opens.
struct HeldLog {
    committer: Committer,
    door: Semaphore,
    appends: AtomicUsize,
}

impl HeldLog {
    fn open(&self) {
        self.door.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

impl ShardLog for HeldLog {
    fn append(&self, batch: ShardBatch) -> Appending<'_> {
        Box::pin(async move {
            self.appends.fetch_add(1, Ordering::SeqCst);
            let _pass = self.door.acquire().await.expect("the door is never closed");
            Ok(self.committer.append(batch).await?)
        })
    }
}

struct World {
    runtime: Runtime,
    log: Arc<HeldLog>,
    definition: Arc<Definition>,
    dir: std::path::PathBuf,
}

async fn world(name: &str, max_starts_in_flight: usize) -> World {
    let (store, dir) = common::open_store(&format!("gate-{name}"));
    let log = Arc::new(HeldLog {
        committer: Committer::start(store.clone(), false, 64),
        door: Semaphore::new(0),
        appends: AtomicUsize::new(0),
    });
    let settings = common::settings(max_starts_in_flight);
    let runtime = Runtime::start(store, log.clone(), settings, TaskHandlers::default())
        .await
        .unwrap();
    let definition =
        load("name: gated\nversion: 1\nsteps:\n  - { id: go, await: go, timeout: never }\n")
            .unwrap();
    World {
        runtime,
        log,
        definition: Arc::new(definition),
        dir,
    }
}

impl World {
    fn start(&self, id: &str) -> tokio::task::JoinHandle<Result<Applied, troupe_actors::Error>> {
        let router = self.runtime.router().clone();
        let (id, definition) = (id.to_owned(), self.definition.clone());
        tokio::spawn(async move {
            let start = Command::Start {
                definition,
                input: serde_json::json!({}),
                parent: None,
            };
            router.call(&id, start).await
        })
    }

    async fn stop(self) {
        self.runtime.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn at_most_the_configured_starts_are_inside_the_shards_and_the_rest_wait_their_turn() {
    let world = world("turn", 2).await;
    let starts: Vec<_> = (0..6).map(|i| world.start(&format!("w{i}"))).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        world.log.appends.load(Ordering::SeqCst),
        2,
        "only two starts reached their commit"
    );
    assert!(starts.iter().all(|s| !s.is_finished()));

    world.log.open();
    for start in starts {
        let applied = start
            .await
            .unwrap()
            .expect("every start is admitted in turn");
        assert!(matches!(applied, Applied::Started { created: true, .. }));
    }
    assert_eq!(world.log.appends.load(Ordering::SeqCst), 6);
    world.stop().await;
}

#[tokio::test]
async fn a_start_that_finds_no_room_in_time_is_refused_as_overloaded_and_leaves_nothing() {
    let world = world("refused", 1).await;
    let first = world.start("first");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = world.start("second").await.unwrap().unwrap_err();
    assert_eq!(refused.code, ErrorCode::Overloaded, "{}", refused.message);
    assert_eq!(world.log.appends.load(Ordering::SeqCst), 1);

    world.log.open();
    let applied = first.await.unwrap().unwrap();
    assert!(matches!(applied, Applied::Started { created: true, .. }));
    let store = &world.runtime.services.store;
    assert!(store.instance_head(0, "first").unwrap().is_some());
    assert!(store.instance_head(0, "second").unwrap().is_none());
    // The gate has room again once the first start is answered.
    let again = world.start("second").await.unwrap().unwrap();
    assert!(matches!(again, Applied::Started { created: true, .. }));
    world.stop().await;
}

//! A commit the shard's log refuses (leadership moved, no quorum) while the
//! shard stays active here: the instance is reloaded from what is durable,
//! so a refused timer firing fires again, and commands queued behind the
//! refused one are carried out by the reloaded actor, not dropped. The
//! reload waits for the log to settle (a replicated log may still apply
//! what it answered as timed out).

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use troupe_actors::{Appending, Applied, Command, Runtime, Settling, ShardLog, TaskHandlers};
use troupe_engine::definition::load;
use troupe_engine::engine::{EventKind, InstanceStatus};
use troupe_protocol::ErrorCode;
use troupe_storage::{Committer, DefinitionRecord, ShardBatch};

/// The local group commit, refusing the appends whose numbers (from 1) the
/// test lists, after `delay`, as a cluster log refuses a lost lead; it
/// settles only while its door is open.
struct RefusingLog {
    committer: Committer,
    refuse: Mutex<HashSet<usize>>,
    delay: Duration,
    appends: AtomicUsize,
    settled: Semaphore,
}

impl ShardLog for RefusingLog {
    fn append(&self, batch: ShardBatch) -> Appending<'_> {
        Box::pin(async move {
            let n = self.appends.fetch_add(1, Ordering::SeqCst) + 1;
            if self.refuse.lock().unwrap().remove(&n) {
                tokio::time::sleep(self.delay).await;
                return Err(troupe_actors::Error::new(
                    ErrorCode::Unavailable,
                    "shard 0 is now led by another node; retry",
                ));
            }
            Ok(self.committer.append(batch).await?)
        })
    }

    fn settle(&self, _shard: u32) -> Settling<'_> {
        Box::pin(async move {
            let _pass = self.settled.acquire().await.expect("never closed");
        })
    }
}

struct World {
    runtime: Runtime,
    log: Arc<RefusingLog>,
    dir: std::path::PathBuf,
}

async fn world(name: &str, refuse: &[usize], delay: Duration) -> World {
    let (store, dir) = common::open_store(&format!("refused-{name}"));
    let log = Arc::new(RefusingLog {
        committer: Committer::start(store.clone(), false, 64),
        refuse: Mutex::new(refuse.iter().copied().collect()),
        delay,
        appends: AtomicUsize::new(0),
        settled: Semaphore::new(1),
    });
    let settings = common::settings(16);
    let runtime = Runtime::start(store, log.clone(), settings, TaskHandlers::default())
        .await
        .unwrap();
    World { runtime, log, dir }
}

impl World {
    /// Deploys `yaml` (a reload reads the definition from the store) and
    /// starts instance `id` of it.
    async fn start(&self, id: &str, yaml: &str) {
        let definition = load(yaml).unwrap();
        let record = DefinitionRecord {
            name: definition.name.clone(),
            version: definition.version,
            source: yaml.to_owned(),
            deployed_at: troupe_actors::now_millis(),
        };
        self.runtime
            .services
            .store
            .deploy_definition(&record)
            .unwrap();
        let start = Command::Start {
            definition: Arc::new(definition),
            input: serde_json::json!({}),
            parent: None,
        };
        let started = self.runtime.router().call(id, start).await.unwrap();
        assert!(matches!(started, Applied::Started { created: true, .. }));
    }

    fn status(&self, id: &str) -> InstanceStatus {
        let store = &self.runtime.services.store;
        store.instance_head(0, id).unwrap().expect("stored").status
    }

    async fn wait_for(&self, id: &str, status: InstanceStatus) {
        for _ in 0..100 {
            if self.status(id) == status {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{id} stayed {:?}, never {status:?}", self.status(id));
    }

    async fn stop(self) {
        self.runtime.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn signal(id: &str, name: &str) -> Command {
    Command::Event(EventKind::Signal {
        id: id.into(),
        name: name.into(),
        payload: serde_json::json!({}),
    })
}

#[tokio::test]
async fn a_refused_timer_firing_fires_again_and_the_workflow_completes() {
    // Append 1 starts the workflow and arms the timer; append 2, the
    // firing, is refused. Nothing sends that firing again but the reload.
    let world = world("timer", &[2], Duration::ZERO).await;
    let flow = "name: flow\nversion: 1\nsteps:\n  - { id: a, task: noop }\n  - { id: nap, wait: 100ms }\n  - { id: b, task: noop }\n";
    world.start("w", flow).await;
    world.wait_for("w", InstanceStatus::Completed).await;
    world.stop().await;
}

#[tokio::test]
async fn a_reload_waits_until_the_log_has_settled() {
    let world = world("settle", &[2], Duration::ZERO).await;
    let held = world.log.settled.acquire().await.unwrap();
    let flow = "name: flow\nversion: 1\nsteps:\n  - { id: nap, wait: 50ms }\n";
    world.start("w", flow).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(world.log.appends.load(Ordering::SeqCst), 2, "no reload yet");
    assert_eq!(world.status("w"), InstanceStatus::Waiting);
    drop(held);
    world.wait_for("w", InstanceStatus::Completed).await;
    world.stop().await;
}

#[tokio::test]
async fn commands_queued_behind_a_refused_commit_are_carried_out_by_the_reloaded_actor() {
    // The first signal's commit (append 2) is refused after 300 ms; the
    // second, sent meanwhile, waits in the actor's mailbox behind it.
    let world = world("queued", &[2], Duration::from_millis(300)).await;
    let flow = "name: twice\nversion: 1\nsteps:\n  - { id: one, await: go, timeout: never }\n  - { id: two, await: go, timeout: never }\n";
    world.start("w", flow).await;
    let router = world.runtime.router().clone();
    let first = tokio::spawn(async move { router.call("w", signal("s1", "go")).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = world.runtime.router().call("w", signal("s2", "go")).await;

    let refused = first.await.unwrap().unwrap_err();
    assert_eq!(refused.code, ErrorCode::Unavailable, "{}", refused.message);
    assert!(
        matches!(second, Ok(Applied::Done)),
        "the queued signal was carried out: {second:?}"
    );
    assert_eq!(
        world.status("w"),
        InstanceStatus::Waiting,
        "one of two steps done"
    );
    let third = world.runtime.router().call("w", signal("s3", "go")).await;
    assert!(matches!(third, Ok(Applied::Done)), "{third:?}");
    world.wait_for("w", InstanceStatus::Completed).await;
    world.stop().await;
}

//! The effectful shell around the engine: ractor actors that own instances,
//! the timer service, the task runner, and the handle the listeners use.
//!
//! A command for an instance goes to the actor of its shard
//! (`shard_of(id)`), which forwards it to the instance's actor, spawning it
//! (and loading its snapshot) when it is not live. The instance actor applies
//! the event with the engine, commits the journal entry, snapshot and side
//! records in one group commit, and only then carries out the effects and
//! replies.

pub mod budget;
mod effects;
mod instance;
mod live;
pub mod queue;
mod shard;
mod tasks;
mod timers;
pub mod view;

pub use tasks::{TaskError, TaskHandler, TaskHandlers, TaskRequest};

use crate::store::{Committer, ParentLink, Store};
use ractor::{Actor, ActorRef};
use serde_json::Value as Json;
use shard::{ShardActor, ShardArgs, ShardMsg};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;
use tokio::sync::oneshot;
use troupe_actors::definition::{self, Definition};
use troupe_actors::engine::{EventKind, Millis};
use troupe_protocol::{ErrorCode, shard_of};

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Failure {
    /// Stable code.
    pub code: ErrorCode,
    /// What happened.
    pub message: String,
}

impl Failure {
    /// A failure with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<crate::store::Error> for Failure {
    fn from(e: crate::store::Error) -> Self {
        match e {
            crate::store::Error::Closed => Self::new(ErrorCode::Unavailable, e.to_string()),
            other => Self::new(ErrorCode::Internal, other.to_string()),
        }
    }
}

/// What a command did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The event was journaled and its effects carried out.
    Done,
    /// An instance with this id already exists with the same definition and input.
    Existing,
    /// The answer to a start: whether it created the instance, and its view
    /// (rendered by the actor, so the caller needs no read).
    Started {
        /// `false` when the instance already existed.
        created: bool,
        /// The instance's view after the start.
        view: Json,
    },
    /// The event changed nothing (duplicate, stale, not applicable), with why.
    Ignored(String),
}

/// A command for one instance.
#[derive(Debug)]
pub enum Command {
    /// Create and start the instance.
    Start {
        /// Its definition.
        definition: Arc<Definition>,
        /// Start input.
        input: Json,
        /// Parent, for a child workflow.
        parent: Option<ParentLink>,
    },
    /// Apply an event to an existing instance.
    Event(EventKind),
    /// A worker's report, preceded by the attempt's deferred `TaskStarted`
    /// when it has not been applied yet; all applied in one commit. The
    /// answer is about the last event.
    Report(Vec<EventKind>),
    /// Load the instance and redo what may have been lost in a crash.
    Recover,
}

/// Reply channel of a command.
pub type ReplyTo = oneshot::Sender<Result<Applied, Failure>>;

/// Definitions parsed once and shared by every instance of a version, and
/// the latest version of each name (so starts need no storage scan).
#[derive(Default)]
pub struct DefinitionCache {
    parsed: RwLock<HashMap<(String, u32), Arc<Definition>>>,
    latest: RwLock<HashMap<String, u32>>,
}

impl DefinitionCache {
    /// The latest deployed version of `name`.
    pub fn latest(&self, store: &Store, name: &str) -> Result<Option<u32>, Failure> {
        if let Some(v) = self.latest.read().expect("cache lock").get(name) {
            return Ok(Some(*v));
        }
        let latest = store.definition_versions(name)?.last().map(|d| d.version);
        if let Some(v) = latest {
            self.deployed(name, v);
        }
        Ok(latest)
    }

    /// Records that `name` v`version` was deployed.
    pub fn deployed(&self, name: &str, version: u32) {
        let mut latest = self.latest.write().expect("cache lock");
        let entry = latest.entry(name.to_owned()).or_insert(version);
        *entry = (*entry).max(version);
    }

    /// The parsed definition `name` v`version`, loading it from the store.
    pub fn get(
        &self,
        store: &Store,
        name: &str,
        version: u32,
    ) -> Result<Option<Arc<Definition>>, Failure> {
        let key = (name.to_owned(), version);
        if let Some(def) = self.parsed.read().expect("cache lock").get(&key) {
            return Ok(Some(def.clone()));
        }
        let Some(record) = store.definition(name, version)? else {
            return Ok(None);
        };
        let def = definition::load(&record.source).map_err(|_| {
            Failure::new(
                ErrorCode::Internal,
                format!("stored definition {name} v{version} no longer parses"),
            )
        })?;
        let def = Arc::new(def);
        self.parsed
            .write()
            .expect("cache lock")
            .insert(key, def.clone());
        Ok(Some(def))
    }
}

/// Callers waiting for instances to reach a terminal state.
#[derive(Default)]
pub struct FinishWaiters {
    waiting: std::sync::Mutex<HashMap<String, Vec<oneshot::Sender<Json>>>>,
}

impl FinishWaiters {
    /// A receiver that resolves when `id` ends (register before reading the
    /// instance's status, so that no ending falls between the two).
    pub fn wait(&self, id: &str) -> oneshot::Receiver<Json> {
        let (tx, rx) = oneshot::channel();
        let mut waiting = self.waiting.lock().expect("waiters lock");
        let list = waiting.entry(id.to_owned()).or_default();
        list.retain(|tx| !tx.is_closed());
        list.push(tx);
        rx
    }

    /// Forgets the waiters of `id` that gave up.
    pub fn forget_closed(&self, id: &str) {
        let mut waiting = self.waiting.lock().expect("waiters lock");
        if let Some(list) = waiting.get_mut(id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                waiting.remove(id);
            }
        }
    }

    /// Hands the final view (rendered only if someone waits) to the waiters.
    fn notify(&self, id: &str, view: impl FnOnce() -> Json) {
        let Some(list) = self.waiting.lock().expect("waiters lock").remove(id) else {
            return;
        };
        let view = view();
        for tx in list {
            let _ = tx.send(view.clone());
        }
    }
}

/// Runtime settings taken from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Shard count.
    pub shards: u32,
    /// Idle time before an instance is passivated.
    pub passivate_after: Duration,
    /// Restarts allowed per instance within `restart_window`.
    pub restart_budget: u32,
    /// Restart budget window.
    pub restart_window: Duration,
    /// Client commands waiting or running per shard before new ones are refused.
    pub max_pending_per_shard: usize,
    /// Bytes of live instances and queued work before new starts are refused.
    pub memory_budget_bytes: usize,
    /// Worker tasks waiting for a worker before new starts are refused.
    pub max_queued_tasks: usize,
}

/// Everything the actors share.
pub struct Services {
    /// Storage.
    pub store: Store,
    /// Group commit.
    pub committer: Committer,
    /// Parsed definitions.
    pub definitions: DefinitionCache,
    /// Settings.
    pub settings: Settings,
    /// Queues of task attempts for workers.
    pub queues: queue::TaskQueues,
    /// Instance actors in memory.
    pub live: Arc<AtomicUsize>,
    /// What live instances and queued work may cost in memory.
    pub budget: Arc<budget::MemoryBudget>,
    /// When idle instances were last shed, ms since the Unix epoch.
    last_shed: std::sync::atomic::AtomicU64,
    /// Callers waiting for instances to end.
    pub finished: FinishWaiters,
    /// Leased attempts whose start is deferred to their report.
    pub pending_starts: queue::PendingStarts,
    router: OnceLock<Router>,
    timers: timers::TimerHandle,
    tasks: Arc<tasks::TaskRunner>,
}

impl Services {
    /// The router (set once the shard actors exist).
    pub fn router(&self) -> &Router {
        self.router.get().expect("router is set at start")
    }

    /// Runs an attempt in the node, or queues it for workers.
    fn dispatch_task(&self, instance: &str, task: troupe_actors::engine::TaskDispatch) {
        if self.tasks.runs(&task.task_type) {
            self.tasks.dispatch(instance, task);
        } else {
            self.queues.push(instance, task);
        }
    }

    /// Stops an attempt wherever it waits or runs.
    fn cancel_task(&self, instance: &str, path: &str, attempt: u32) {
        self.tasks.cancel(instance, path, attempt);
        self.queues.cancel(instance, path, attempt);
    }

    /// Refuses new work when the node holds as much as its limits allow:
    /// its memory budget is spent although idle instances were shed, or too
    /// many tasks wait for workers.
    pub fn admit_new_work(&self) -> Result<(), Failure> {
        if self.budget.under_pressure() {
            self.shed_idle();
        }
        let settings = &self.settings;
        let queued = self.queues.queued();
        let refused = if self.budget.spent() {
            let used = self.budget.used() >> 20;
            let live = self.live.load(Ordering::Relaxed);
            Some((
                "memory",
                format!("{used} MiB held by {live} live instances and {queued} queued tasks"),
            ))
        } else if queued >= settings.max_queued_tasks {
            Some(("queued_tasks", format!("{queued} tasks wait for workers")))
        } else {
            None
        };
        match refused {
            None => Ok(()),
            Some((limit, what)) => {
                metrics::counter!(crate::metrics::OVERLOADED_TOTAL, "limit" => limit).increment(1);
                Err(Failure::new(
                    ErrorCode::Overloaded,
                    format!("node is at its limit ({what}); retry later"),
                ))
            }
        }
    }
}

impl Services {
    /// Asks every shard to passivate its least recently used eighth of
    /// live instances, at most once per 20 ms.
    fn shed_idle(&self) {
        let now = now_millis();
        let last = self.last_shed.load(Ordering::Relaxed);
        if now < last + 20
            || self
                .last_shed
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        metrics::counter!(crate::metrics::MEMORY_SHEDS_TOTAL).increment(1);
        for shard in self.router().shards.iter() {
            let _ = shard.cast(ShardMsg::Shed { one_in: 8 });
        }
    }
}

/// Sends commands to the shard actor owning an instance.
#[derive(Clone)]
pub struct Router {
    shards: Arc<Vec<ActorRef<ShardMsg>>>,
    /// Client commands sent to each shard and not yet answered.
    pending: Arc<Vec<AtomicUsize>>,
    max_pending: usize,
}

/// Counts a client command as pending on its shard until dropped.
struct Pending<'a>(&'a AtomicUsize);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Router {
    /// Sends a command without waiting.
    pub fn cast(&self, id: &str, command: Command) {
        let shard = &self.shards[shard_of(id, self.shards.len() as u32) as usize];
        let _ = shard.cast(ShardMsg::Deliver {
            id: id.to_owned(),
            command,
            reply: None,
        });
    }

    /// Sends a command and waits until it is durable (or refused). When the
    /// shard already has its limit of commands pending, the command is
    /// refused as overloaded, except worker reports: they finish work, so
    /// they are always let through.
    pub async fn call(&self, id: &str, command: Command) -> Result<Applied, Failure> {
        let index = shard_of(id, self.shards.len() as u32) as usize;
        let pending = &self.pending[index];
        let bounded = !matches!(command, Command::Report(_));
        if bounded && pending.load(Ordering::Relaxed) >= self.max_pending {
            metrics::counter!(crate::metrics::OVERLOADED_TOTAL, "limit" => "shard_pending")
                .increment(1);
            return Err(Failure::new(
                ErrorCode::Overloaded,
                format!(
                    "shard {index} has {} commands pending; retry later",
                    self.max_pending
                ),
            ));
        }
        pending.fetch_add(1, Ordering::Relaxed);
        let _pending = Pending(pending);
        let (reply, wait) = oneshot::channel();
        let shard = &self.shards[index];
        shard
            .cast(ShardMsg::Deliver {
                id: id.to_owned(),
                command,
                reply: Some(reply),
            })
            .map_err(|_| Failure::new(ErrorCode::Unavailable, "node is shutting down"))?;
        match tokio::time::timeout(Duration::from_secs(30), wait).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Failure::new(
                ErrorCode::Unavailable,
                "instance restarted before answering; retry",
            )),
            Err(_) => Err(Failure::new(
                ErrorCode::Unavailable,
                "timed out waiting for the instance; retry",
            )),
        }
    }
}

/// Applies deferred starts whose report has not come within the delay.
async fn apply_deferred_starts(services: std::sync::Weak<Services>) {
    let mut tick = tokio::time::interval(queue::START_DELAY / 5);
    loop {
        tick.tick().await;
        let Some(services) = services.upgrade() else {
            return;
        };
        for (instance, path, attempt) in services.pending_starts.due() {
            let started = EventKind::TaskStarted { path, attempt };
            services.router().cast(&instance, Command::Event(started));
        }
    }
}

/// Keeps the memory budget from filling with idle instances while no new
/// work comes in to notice (admission sheds too): above the soft mark,
/// idle instances are shed ten times a second.
async fn shed_under_pressure(services: std::sync::Weak<Services>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(services) = services.upgrade() else {
            return;
        };
        if services.budget.under_pressure() {
            services.shed_idle();
        }
    }
}

/// The running engine: shard actors, timers and tasks.
#[derive(Clone)]
pub struct Runtime {
    /// Shared services.
    pub services: Arc<Services>,
    shard_actors: Vec<ActorRef<ShardMsg>>,
}

impl Runtime {
    /// Starts timers, the task runner and one actor per shard, then recovers
    /// instances that had work in flight.
    pub async fn start(
        store: Store,
        committer: Committer,
        settings: Settings,
        handlers: TaskHandlers,
    ) -> anyhow::Result<Self> {
        let armed = store.timers()?;
        crate::metrics::status_counts(&store.status_counts()?);
        let budget = budget::MemoryBudget::new(settings.memory_budget_bytes);
        let services = Arc::new_cyclic(|weak: &std::sync::Weak<Services>| Services {
            store: store.clone(),
            committer,
            definitions: DefinitionCache::default(),
            settings: settings.clone(),
            queues: queue::TaskQueues::new(budget.clone()),
            live: Arc::new(AtomicUsize::new(0)),
            budget,
            last_shed: Default::default(),
            finished: FinishWaiters::default(),
            pending_starts: queue::PendingStarts::default(),
            router: OnceLock::new(),
            timers: timers::TimerHandle::start(weak.clone(), armed),
            tasks: Arc::new(tasks::TaskRunner::new(weak.clone(), handlers)),
        });
        let mut shard_actors = Vec::new();
        for shard in 0..settings.shards {
            let args = ShardArgs {
                shard,
                services: services.clone(),
            };
            let (actor, _) = Actor::spawn(None, ShardActor, args).await?;
            shard_actors.push(actor);
        }
        let _ = services.router.set(Router {
            shards: Arc::new(shard_actors.clone()),
            pending: Arc::new((0..settings.shards).map(|_| AtomicUsize::new(0)).collect()),
            max_pending: settings.max_pending_per_shard,
        });
        services.timers.begin();
        tokio::spawn(apply_deferred_starts(Arc::downgrade(&services)));
        tokio::spawn(shed_under_pressure(Arc::downgrade(&services)));
        let runtime = Self {
            services,
            shard_actors,
        };
        runtime.recover()?;
        Ok(runtime)
    }

    /// The router.
    pub fn router(&self) -> &Router {
        self.services.router()
    }

    /// Activates every instance with outbox entries, so that work lost in a
    /// crash (task attempts, child starts) is carried out again.
    fn recover(&self) -> anyhow::Result<()> {
        for id in self.services.store.outbox_instances()? {
            self.router().cast(&id, Command::Recover);
        }
        Ok(())
    }

    /// Stops the shard actors (and their instances).
    pub fn stop(&self) {
        for shard in &self.shard_actors {
            shard.stop(None);
        }
    }
}

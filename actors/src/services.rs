//! [`Services`]: what every actor of the node shares, and admission.

use crate::budget;
use crate::definitions::DefinitionCache;
use crate::router::Router;
use crate::shard::ShardMsg;
use crate::waiters::FinishWaiters;
use crate::{Command, Error, queue, tasks, timers};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use troupe_engine::engine::{CANCELLED, ErrorInfo, EventKind};
use troupe_protocol::ErrorCode;
use troupe_storage::Store;

/// Runtime settings taken from the config.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Shard count.
    pub shards: u32,
    /// Idle time before an instance is passivated.
    pub passivate_after: Duration,
    /// Timers due within this window are held in memory; later ones are
    /// read from storage as the window moves.
    pub timer_window: Duration,
    /// Restarts allowed per instance within `restart_window`.
    pub restart_budget: u32,
    /// Restart budget window.
    pub restart_window: Duration,
    /// Client commands waiting or running per shard before new ones are refused.
    pub max_pending_per_shard: usize,
    /// Starts inside the shards at once; more wait at the start gate.
    pub max_starts_in_flight: usize,
    /// Bytes of live instances and queued work before new starts are refused.
    pub memory_budget_bytes: usize,
    /// Worker tasks waiting for a worker before new starts are refused.
    pub max_queued_tasks: usize,
    /// Journal events kept before an instance's latest snapshot (`None`:
    /// the whole history).
    pub history_retention: Option<u64>,
    /// How long ended instances are kept before they are deleted (`None`:
    /// for ever).
    pub retention: Option<Duration>,
}

/// Everything the actors share.
pub struct Services {
    /// Storage.
    pub store: Store,
    /// Where transitions become durable (group commit or replication).
    pub log: Arc<dyn crate::ShardLog>,
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
    pub(crate) last_shed: std::sync::atomic::AtomicU64,
    /// Instances that ended here so far (retention paces its deletes by it).
    pub(crate) ended: std::sync::atomic::AtomicU64,
    /// Callers waiting for instances to end.
    pub finished: FinishWaiters,
    /// Leased attempts whose start is deferred to their report.
    pub pending_starts: queue::PendingStarts,
    pub(crate) router: Router,
    pub(crate) timers: timers::TimerHandle,
    pub(crate) tasks: Arc<tasks::TaskRunner>,
    /// Serialises shard activations and deactivations.
    pub(crate) activation: tokio::sync::Mutex<()>,
}

impl Services {
    /// The router.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Runs an attempt in the node, or queues it for workers.
    pub(crate) fn dispatch_task(&self, instance: &str, task: troupe_engine::engine::TaskDispatch) {
        if self.tasks.runs(&task.task_type) {
            self.tasks.dispatch(instance, task);
        } else {
            self.queues.push(instance, task);
        }
    }

    /// Stops an attempt wherever it waits or runs.
    pub(crate) fn cancel_task(&self, instance: &str, path: &str, attempt: u32) {
        let stopped = self.tasks.cancel(instance, path, attempt);
        let withdrawn = self.queues.cancel(instance, path, attempt);
        // The instance keeps a cancelled attempt open until it hears back
        // (a rollback waits for it); an aborted builtin or a withdrawn queued
        // attempt would otherwise never answer. An attempt the engine
        // already settled ignores this report.
        if stopped || withdrawn {
            let event = EventKind::TaskFailed {
                path: path.to_owned(),
                attempt,
                error: ErrorInfo::new(CANCELLED, "cancelled before it ran to its end"),
                retryable: false,
            };
            self.router().cast(instance, Command::Event(event));
        }
    }

    /// Refuses new work when the node holds as much as its limits allow:
    /// its memory budget is spent although idle instances were shed, or too
    /// many tasks wait for workers.
    pub fn admit_new_work(&self) -> Result<(), Error> {
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
                Err(Error::new(
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
    pub(crate) fn shed_idle(&self) {
        let now = crate::now_millis();
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
        for shard in self.router.active() {
            let _ = shard.cast(ShardMsg::Shed { one_in: 8 });
        }
    }
}

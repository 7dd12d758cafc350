//! [`Runtime`]: starts the services and the shard actors, activates and
//! deactivates shards, and runs the node's background loops.

use crate::services::{Services, Settings};
use crate::shard::{ShardActor, ShardArgs, ShardMsg};
use crate::{
    Command, DefinitionCache, FinishWaiters, Router, TaskHandlers, budget, queue, tasks, timers,
};
use ractor::Actor;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;
use troupe_engine::engine::EventKind;
use troupe_storage::Store;

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
}

impl Runtime {
    /// Starts the timer service and the task runner, with no shard active.
    pub fn new(
        store: Store,
        log: Arc<dyn crate::ShardLog>,
        settings: Settings,
        handlers: TaskHandlers,
    ) -> Self {
        let budget = budget::MemoryBudget::new(settings.memory_budget_bytes);
        let router = Router::new(
            settings.shards,
            settings.max_pending_per_shard,
            settings.max_starts_in_flight,
        );
        let services = Arc::new_cyclic(|weak: &std::sync::Weak<Services>| Services {
            store: store.clone(),
            log,
            definitions: DefinitionCache::default(),
            settings: settings.clone(),
            queues: queue::TaskQueues::new(budget.clone()),
            live: Arc::new(AtomicUsize::new(0)),
            budget,
            last_shed: Default::default(),
            ended: Default::default(),
            finished: FinishWaiters::default(),
            pending_starts: queue::PendingStarts::default(),
            router,
            timers: timers::TimerHandle::start(
                weak.clone(),
                settings.shards,
                settings.timer_window,
            ),
            tasks: Arc::new(tasks::TaskRunner::new(weak.clone(), handlers)),
            activation: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(apply_deferred_starts(Arc::downgrade(&services)));
        tokio::spawn(shed_under_pressure(Arc::downgrade(&services)));
        if let Some(retention) = settings.retention {
            crate::retention::start(Arc::downgrade(&services), retention);
        }
        Self { services }
    }

    /// Starts a runtime that owns every shard (the single node).
    pub async fn start(
        store: Store,
        log: Arc<dyn crate::ShardLog>,
        settings: Settings,
        handlers: TaskHandlers,
    ) -> crate::Result<Self> {
        let runtime = Self::new(store, log, settings, handlers);
        for shard in 0..runtime.services.settings.shards {
            runtime.activate(shard).await?;
        }
        Ok(runtime)
    }

    /// The router.
    pub fn router(&self) -> &Router {
        self.services.router()
    }

    /// Makes `shard` live on this node: loads its timers due within the
    /// timer window (not all of them: activation costs the same with a
    /// million instances waiting on later timers) and its status counts,
    /// starts its supervisor, and redoes its outbox (work that may have been
    /// lost in a crash or a move). Activating an active shard does nothing.
    pub async fn activate(&self, shard: u32) -> crate::Result<()> {
        let services = &self.services;
        let _one_at_a_time = services.activation.lock().await;
        if services.router.is_active(shard) {
            return Ok(());
        }
        let until = crate::now_millis() + services.settings.timer_window.as_millis() as u64;
        services.timers.open_shard(shard, until).await;
        let store = services.store.clone();
        let (timers, counts, outbox) = tokio::task::spawn_blocking(move || {
            Ok::<_, troupe_storage::Error>((
                store.timers_due(shard, None, until)?,
                store.status_counts(shard)?,
                store.outbox_instances(shard)?,
            ))
        })
        .await
        .map_err(|e| crate::Error::new(troupe_protocol::ErrorCode::Internal, e.to_string()))??;
        let args = ShardArgs {
            shard,
            services: services.clone(),
        };
        let (actor, _) = Actor::spawn(None, ShardActor, args)
            .await
            .map_err(|e| crate::Error::new(troupe_protocol::ErrorCode::Internal, e.to_string()))?;
        crate::metrics::status_counts(&counts, 1.0);
        // Route first: a timer already due fires at once, and a firing
        // into a shard not yet routed would be lost until the next start.
        services.router.set(shard, Some(actor));
        for timer in timers {
            services.timers.arm(&timer.instance, timer.timer, timer.at);
        }
        for id in outbox {
            services.router.cast(&id, Command::Recover);
        }
        tracing::info!(shard_id = shard, "shard activated");
        Ok(())
    }

    /// Stops `shard` on this node: new commands for it are answered
    /// `unavailable` at once; commands already queued for its instances are
    /// carried out or answered `unavailable`; its timers and queued tasks
    /// leave memory. Its state stays in storage for whoever activates it.
    pub async fn deactivate(&self, shard: u32) -> crate::Result<()> {
        let services = &self.services;
        let _one_at_a_time = services.activation.lock().await;
        let Some(actor) = services.router.actor(shard) else {
            return Ok(());
        };
        services.router.set(shard, None);
        let (done, stopped) = tokio::sync::oneshot::channel();
        if actor.cast(ShardMsg::Stop { done }).is_ok() {
            let _ = stopped.await;
        }
        let _ = actor.stop_and_wait(None, None).await;
        let shards = services.settings.shards;
        services.timers.drop_shard(shard);
        services
            .queues
            .retain(|instance| troupe_protocol::shard_of(instance, shards) != shard);
        services
            .pending_starts
            .retain(|instance| troupe_protocol::shard_of(instance, shards) != shard);
        let store = services.store.clone();
        if let Ok(Ok(counts)) =
            tokio::task::spawn_blocking(move || store.status_counts(shard)).await
        {
            crate::metrics::status_counts(&counts, -1.0);
        }
        tracing::info!(shard_id = shard, "shard deactivated");
        Ok(())
    }

    /// Stops every shard (and their instances).
    pub async fn stop(&self) {
        for shard in 0..self.services.settings.shards {
            let _ = self.deactivate(shard).await;
        }
    }
}

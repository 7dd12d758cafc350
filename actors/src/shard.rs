//! `ShardActor`: supervises the live instances of one shard. It routes
//! commands to instance actors (spawning them on demand), passivates idle
//! and ended ones without losing messages, sheds the least recently used
//! under memory pressure, and restarts crashed ones under a budget.

use crate::instance::{WorkflowActor, WorkflowArgs, WorkflowMsg};
use crate::live::LiveSet;
use crate::{Command, Error, ReplyTo, Services};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use troupe_protocol::ErrorCode;

/// The actor.
pub struct ShardActor;

/// Messages of [`ShardActor`].
pub enum ShardMsg {
    /// Route a command to an instance.
    Deliver {
        /// Instance id.
        id: String,
        /// The command.
        command: Command,
        /// Where the result goes.
        reply: Option<ReplyTo>,
    },
    /// An idle or ended instance asks to be passivated.
    Passivate {
        /// Instance id.
        id: String,
        /// The asking actor.
        actor: ActorId,
    },
    /// The log refused a commit of this instance's actor: take it out of
    /// service (the commands it still holds come back as deliveries) and
    /// reload the instance from what is durable after a backoff.
    Reload {
        /// Instance id.
        id: String,
        /// The refused actor.
        actor: ActorId,
    },
    /// Restart a crashed instance after its backoff.
    Respawn {
        /// Instance id.
        id: String,
    },
    /// Memory is short: ask this share (1/n) of the live instances, least
    /// recently used first, to passivate.
    Shed {
        /// The share's denominator.
        one_in: usize,
    },
    /// The shard is deactivated: let every instance finish what it has
    /// queued, answer parked commands `unavailable`, then report.
    Stop {
        /// Told when every instance actor has stopped.
        done: tokio::sync::oneshot::Sender<()>,
    },
}

// Local only: never sent to another node.
impl ractor::Message for ShardMsg {}

/// Spawn arguments.
pub struct ShardArgs {
    /// Shard number.
    pub shard: u32,
    /// Shared services.
    pub services: Arc<Services>,
}

/// Live state.
pub struct ShardState {
    shard: u32,
    services: Arc<Services>,
    live: LiveSet,
    /// Commands held while an instance's actor stops or restarts.
    parked: HashMap<String, Vec<(Command, Option<ReplyTo>)>>,
    restarts: HashMap<String, Vec<Instant>>,
    quarantined: HashSet<String>,
    /// Reloads after refused commits: how many in a row, and the last.
    reloads: HashMap<String, (u32, Instant)>,
    /// Set once the shard is deactivated: nothing new is spawned.
    stopping: bool,
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(
        &self,
        _: ActorRef<ShardMsg>,
        args: ShardArgs,
    ) -> Result<ShardState, ActorProcessingErr> {
        Ok(ShardState {
            shard: args.shard,
            live: LiveSet::new(args.services.live.clone()),
            services: args.services,
            parked: HashMap::new(),
            restarts: HashMap::new(),
            quarantined: HashSet::new(),
            reloads: HashMap::new(),
            stopping: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ShardMsg>,
        message: ShardMsg,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ShardMsg::Deliver { id, command, reply } => {
                deliver(&myself, state, id, command, reply).await?
            }
            ShardMsg::Passivate { id, actor } => {
                if state.live.is_live(&id, &actor) {
                    let actor = state.live.remove(&id).expect("checked");
                    state.parked.entry(id).or_default();
                    // drain: messages already queued are still processed, then it stops.
                    let _ = actor.drain();
                }
            }
            ShardMsg::Stop { done } => {
                state.stopping = true;
                for actor in state.live.drain() {
                    let _ = actor.drain_and_wait(None).await;
                }
                for (id, parked) in state.parked.drain() {
                    for (_, reply) in parked {
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(moved(&id)));
                        }
                    }
                }
                let _ = done.send(());
            }
            ShardMsg::Shed { one_in } => {
                let n = state.live.len().div_ceil(one_in.max(1));
                for actor in state.live.least_recent(n) {
                    let _ = actor.cast(WorkflowMsg::Shed);
                }
            }
            ShardMsg::Reload { id, actor } => reload(&myself, state, id, actor),
            ShardMsg::Respawn { .. } if state.stopping => {}
            ShardMsg::Respawn { id } => {
                let parked = state.parked.remove(&id).unwrap_or_default();
                let actor = spawn(&myself, state, &id, true).await?;
                for (command, reply) in parked {
                    let _ = actor.cast(WorkflowMsg::Command(command, reply));
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ShardMsg>,
        event: SupervisionEvent,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                let Some(id) = state.forget(cell.get_id()) else {
                    return Ok(());
                };
                let window = state.services.settings.restart_window;
                if state
                    .restarts
                    .get(&id)
                    .is_some_and(|recent| recent.iter().all(|t| t.elapsed() >= window))
                {
                    state.restarts.remove(&id);
                }
                // Commands that arrived while it stopped go to a fresh actor.
                match state.parked.remove(&id) {
                    Some(parked) if !parked.is_empty() && !state.stopping => {
                        let actor = spawn(&myself, state, &id, false).await?;
                        for (command, reply) in parked {
                            let _ = actor.cast(WorkflowMsg::Command(command, reply));
                        }
                    }
                    _ => {}
                }
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some(id) = state.forget(cell.get_id()) else {
                    return Ok(());
                };
                metrics::counter!(crate::metrics::INSTANCE_RESTARTS_TOTAL).increment(1);
                let settings = &state.services.settings;
                let now = Instant::now();
                let recent = state.restarts.entry(id.clone()).or_default();
                recent.retain(|t| now.duration_since(*t) < settings.restart_window);
                recent.push(now);
                if recent.len() as u32 > settings.restart_budget {
                    tracing::error!(shard_id = state.shard, workflow_id = %id, %error, "instance keeps failing; quarantined until the node restarts");
                    state.quarantined.insert(id.clone());
                    for (_, reply) in state.parked.remove(&id).unwrap_or_default() {
                        if let Some(reply) = reply {
                            let _ = reply.send(Err(quarantined(&id)));
                        }
                    }
                    return Ok(());
                }
                let backoff = Duration::from_millis(50 * 2u64.pow(recent.len() as u32 - 1));
                tracing::warn!(shard_id = state.shard, workflow_id = %id, %error, ?backoff, "instance actor failed; restarting");
                state.parked.entry(id.clone()).or_default();
                let me = myself.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(backoff).await;
                    let _ = me.cast(ShardMsg::Respawn { id });
                });
            }
            _ => {}
        }
        Ok(())
    }
}

impl ShardState {
    /// Drops an ended actor from the maps; returns the instance it served.
    fn forget(&mut self, actor: ActorId) -> Option<String> {
        self.live.ended(actor)
    }
}

/// Takes a refused actor out of service and schedules its reload: a
/// `Recover` that loads the instance afresh once the old actor has stopped
/// and the shard's log has settled, and redoes its outbox and timers. Refused again and again (a quorum lost
/// for long), the reloads back off, up to one every 6.4 s.
fn reload(myself: &ActorRef<ShardMsg>, state: &mut ShardState, id: String, actor: ActorId) {
    if state.live.is_live(&id, &actor) {
        let actor = state.live.remove(&id).expect("checked");
        state.parked.entry(id.clone()).or_default();
        let _ = actor.drain();
    }
    if state.stopping {
        return;
    }
    let window = state.services.settings.restart_window;
    state.reloads.retain(|_, (_, last)| last.elapsed() < window);
    let (count, last) = state
        .reloads
        .entry(id.clone())
        .or_insert((0, Instant::now()));
    *count += 1;
    *last = Instant::now();
    let backoff = Duration::from_millis(100 << (*count - 1).min(6));
    tracing::debug!(shard_id = state.shard, workflow_id = %id, ?backoff, "commit refused; reloading the instance");
    let (me, log, shard) = (myself.clone(), state.services.log.clone(), state.shard);
    tokio::spawn(async move {
        tokio::time::sleep(backoff).await;
        log.settle(shard).await;
        let _ = me.cast(ShardMsg::Deliver {
            id,
            command: Command::Recover,
            reply: None,
        });
    });
}

pub(crate) fn moved(id: &str) -> Error {
    Error::new(
        ErrorCode::Unavailable,
        format!("shard of {id} is no longer active on this node; retry"),
    )
}

fn quarantined(id: &str) -> Error {
    Error::new(
        ErrorCode::Unavailable,
        format!("workflow {id} keeps crashing and is quarantined; see the node log"),
    )
}

async fn deliver(
    myself: &ActorRef<ShardMsg>,
    state: &mut ShardState,
    id: String,
    command: Command,
    reply: Option<ReplyTo>,
) -> Result<(), ActorProcessingErr> {
    if state.quarantined.contains(&id) {
        if let Some(reply) = reply {
            let _ = reply.send(Err(quarantined(&id)));
        }
        return Ok(());
    }
    if state.stopping {
        if let Some(reply) = reply {
            let _ = reply.send(Err(moved(&id)));
        }
        return Ok(());
    }
    if let Some(parked) = state.parked.get_mut(&id) {
        parked.push((command, reply));
        return Ok(());
    }
    let actor = match state.live.use_actor(&id) {
        Some(actor) => actor,
        None => spawn(myself, state, &id, false).await?,
    };
    // The actor is stopping: keep the command for its successor.
    if let Err(ractor::MessagingErr::SendErr(WorkflowMsg::Command(command, reply))) =
        actor.cast(WorkflowMsg::Command(command, reply))
    {
        state.live.remove(&id);
        state.parked.entry(id).or_default().push((command, reply));
    }
    Ok(())
}

async fn spawn(
    myself: &ActorRef<ShardMsg>,
    state: &mut ShardState,
    id: &str,
    recover: bool,
) -> Result<ActorRef<WorkflowMsg>, ActorProcessingErr> {
    let args = WorkflowArgs {
        id: id.to_owned(),
        shard: state.shard,
        shard_actor: myself.clone(),
        services: state.services.clone(),
        recover,
    };
    let (actor, _) = Actor::spawn_linked(None, WorkflowActor, args, myself.get_cell()).await?;
    state.live.insert(id, actor.clone());
    Ok(actor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Runtime, Settings, TaskHandlers};
    use std::sync::atomic::Ordering;
    use troupe_storage::{Committer, Store, StoreOptions};

    /// A delivery to an actor that stopped on its own (a crash, say) parks
    /// the command for its successor; once the stop is seen, the node's
    /// live count is back where it was.
    #[tokio::test]
    async fn delivery_to_a_stopped_actor_keeps_the_live_count_exact() {
        let dir = std::env::temp_dir().join(format!("troupe-shard-live-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let options = StoreOptions {
            shards: 1,
            write_buffer_bytes: 8 << 20,
            block_cache_bytes: 8 << 20,
            background_write_bytes_per_sec: 0,
            direct_io: true,
        };
        let store = Store::open(&dir, options).unwrap();
        let committer = Committer::start(store.clone(), false, 64);
        let settings = Settings {
            shards: 1,
            passivate_after: Duration::from_secs(60),
            timer_window: Duration::from_secs(60),
            restart_budget: 5,
            restart_window: Duration::from_secs(60),
            max_pending_per_shard: 100,
            max_starts_in_flight: 16,
            memory_budget_bytes: 64 << 20,
            max_queued_tasks: 100,
            history_retention: None,
            retention: None,
        };
        let runtime = Runtime::start(
            store,
            Arc::new(committer),
            settings,
            TaskHandlers::default(),
        )
        .await
        .unwrap();
        let services = runtime.services.clone();
        // A shard state of our own, beside the runtime's shard actor (which
        // receives the supervision events of the actors spawned here).
        let myself = services.router().actor(0).expect("shard 0 is active");
        let mut state = ShardState {
            shard: 0,
            live: LiveSet::new(services.live.clone()),
            services: services.clone(),
            parked: HashMap::new(),
            restarts: HashMap::new(),
            quarantined: HashSet::new(),
            reloads: HashMap::new(),
            stopping: false,
        };
        let before = services.live.load(Ordering::Relaxed);
        deliver(&myself, &mut state, "x".into(), Command::Recover, None)
            .await
            .unwrap();
        assert_eq!(services.live.load(Ordering::Relaxed), before + 1);
        let actor = state.live.use_actor("x").expect("spawned");
        actor.stop_and_wait(None, None).await.unwrap();

        deliver(&myself, &mut state, "x".into(), Command::Recover, None)
            .await
            .unwrap();
        assert_eq!(state.parked.get("x").map(Vec::len), Some(1), "parked");
        assert_eq!(state.forget(actor.get_id()).as_deref(), Some("x"));
        assert_eq!(
            services.live.load(Ordering::Relaxed),
            before,
            "the stopped actor no longer counts as live"
        );
        runtime.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! `ShardActor`: supervises the live instances of one shard. It routes
//! commands to instance actors (spawning them on demand), passivates idle
//! ones without losing messages, and restarts crashed ones under a budget.

use super::instance::{WorkflowActor, WorkflowArgs, WorkflowMsg};
use super::{Command, Failure, ReplyTo, Services};
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
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
    /// An idle instance asks to be passivated.
    Passivate {
        /// Instance id.
        id: String,
        /// The asking actor.
        actor: ActorId,
    },
    /// Restart a crashed instance after its backoff.
    Respawn {
        /// Instance id.
        id: String,
    },
}

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
    live: HashMap<String, ActorRef<WorkflowMsg>>,
    ids: HashMap<ActorId, String>,
    /// Commands held while an instance's actor stops or restarts.
    parked: HashMap<String, Vec<(Command, Option<ReplyTo>)>>,
    restarts: HashMap<String, Vec<Instant>>,
    quarantined: HashSet<String>,
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
            services: args.services,
            live: HashMap::new(),
            ids: HashMap::new(),
            parked: HashMap::new(),
            restarts: HashMap::new(),
            quarantined: HashSet::new(),
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
                if state.live.get(&id).is_some_and(|a| a.get_id() == actor) {
                    let actor = state.live.remove(&id).expect("checked");
                    state.parked.entry(id).or_default();
                    // drain: messages already queued are still processed, then it stops.
                    let _ = actor.drain();
                    metrics::gauge!(crate::metrics::INSTANCES_LIVE).decrement(1.0);
                    state.services.live.fetch_sub(1, Ordering::Relaxed);
                }
            }
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
                // Commands that arrived while it stopped go to a fresh actor.
                match state.parked.remove(&id) {
                    Some(parked) if !parked.is_empty() => {
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
        let id = self.ids.remove(&actor)?;
        if self.live.get(&id).is_some_and(|a| a.get_id() == actor) {
            self.live.remove(&id);
            metrics::gauge!(crate::metrics::INSTANCES_LIVE).decrement(1.0);
            self.services.live.fetch_sub(1, Ordering::Relaxed);
        }
        Some(id)
    }
}

fn quarantined(id: &str) -> Failure {
    Failure::new(
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
    if let Some(parked) = state.parked.get_mut(&id) {
        parked.push((command, reply));
        return Ok(());
    }
    let actor = match state.live.get(&id) {
        Some(actor) => actor.clone(),
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
    state.ids.insert(actor.get_id(), id.to_owned());
    state.live.insert(id.to_owned(), actor.clone());
    metrics::gauge!(crate::metrics::INSTANCES_LIVE).increment(1.0);
    state.services.live.fetch_add(1, Ordering::Relaxed);
    Ok(actor)
}

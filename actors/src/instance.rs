//! `WorkflowActor`: one live instance. It applies events with the engine,
//! commits them, then carries out the effects. Its state on disk is always
//! the truth: after any failure it is rebuilt from its snapshot and journal tail.
//!
//! An actor stays in memory only while its instance works: it asks to be
//! passivated as soon as the instance has ended (or does not exist), after
//! `passivate-after` without commands, and at once when its shard sheds
//! memory. Its memory is charged to the node's budget while it lives.

use crate::budget::{Charge, INSTANCE_OVERHEAD_BYTES, instance_bytes};
use crate::shard::ShardMsg;
use crate::stored::{self, Persisted};
use crate::{Applied, Command, Error, ReplyTo, Services, effects};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::Value as Json;
use std::sync::Arc;
use std::time::Instant;
use troupe_engine::definition::Definition;
use troupe_engine::engine::{Effect, Event, EventKind, Instance, apply};
use troupe_protocol::ErrorCode;
use troupe_storage::{Indexed, InstanceRecord, ParentLink};

/// The actor.
pub struct WorkflowActor;

/// Messages of [`WorkflowActor`].
pub enum WorkflowMsg {
    /// A command, with where to send the result.
    Command(Command, Option<ReplyTo>),
    /// Passivate if idle long enough, else check again later.
    IdleCheck,
    /// Memory is short: passivate now.
    Shed,
}

// Local only: never sent to another node.
impl ractor::Message for WorkflowMsg {}

/// Spawn arguments.
pub struct WorkflowArgs {
    /// Instance id.
    pub id: String,
    /// Shard it belongs to.
    pub shard: u32,
    /// The shard actor (for passivation).
    pub shard_actor: ActorRef<ShardMsg>,
    /// Shared services.
    pub services: Arc<Services>,
    /// Redo the outbox on start (restart after a crash).
    pub recover: bool,
}

/// Live state.
pub struct WorkflowState {
    args: WorkflowArgs,
    record: Option<InstanceRecord>,
    definition: Option<Arc<Definition>>,
    /// What is on disk of it.
    persisted: Persisted,
    /// Its timers as stored, with when each is due.
    armed: effects::ArmedTimers,
    last_active: Instant,
    /// What this actor costs, charged to the node's memory budget.
    charge: Charge,
    /// A commit failed after the state changed in memory.
    diverged: bool,
    /// The log refused a commit: the shard reloads the instance, and this
    /// actor hands every command still queued back to the shard.
    refused: bool,
}

impl Actor for WorkflowActor {
    type Msg = WorkflowMsg;
    type State = WorkflowState;
    type Arguments = WorkflowArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        args: WorkflowArgs,
    ) -> Result<WorkflowState, ActorProcessingErr> {
        let charge = Charge::new(&args.services.budget, INSTANCE_OVERHEAD_BYTES);
        Ok(WorkflowState {
            args,
            record: None,
            definition: None,
            persisted: Persisted::default(),
            armed: Default::default(),
            last_active: Instant::now(),
            charge,
            diverged: false,
            refused: false,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut WorkflowState,
    ) -> Result<(), ActorProcessingErr> {
        let services = state.args.services.clone();
        // Point reads (bloom-filtered, usually from the memtable or the
        // block cache) and a short replay: cheaper inline than a hop to the
        // blocking pool, which costs two context switches per activation.
        if let Some(loaded) = stored::load(&services, state.args.shard, &state.args.id)? {
            state.charge.resize(instance_bytes(loaded.persisted.size()));
            state.definition = Some(loaded.definition);
            state.record = Some(loaded.record);
            state.persisted = loaded.persisted;
            state.armed = loaded.armed;
            if state.args.recover {
                effects::redo_outbox(&services, &state.args.id)?;
            }
        }
        check_idle_after(&myself, state.args.services.settings.passivate_after);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: WorkflowMsg,
        state: &mut WorkflowState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            WorkflowMsg::Command(command, reply) if state.refused => {
                let id = state.args.id.clone();
                let deliver = ShardMsg::Deliver { id, command, reply };
                if let Err(ractor::MessagingErr::SendErr(ShardMsg::Deliver {
                    id,
                    reply: Some(reply),
                    ..
                })) = state.args.shard_actor.cast(deliver)
                {
                    let _ = reply.send(Err(crate::shard::moved(&id)));
                }
            }
            WorkflowMsg::Command(command, reply) => {
                let result = execute(state, command).await;
                let storage_failed =
                    state.diverged || matches!(&result, Err(f) if f.code == ErrorCode::Internal);
                if let Some(reply) = reply {
                    let _ = reply.send(result.clone());
                }
                if state.diverged && result.as_ref().is_err_and(|f| f.code.is_retryable()) {
                    // The log refused the commit (the shard's leadership
                    // moved, or no quorum answered): nothing is wrong with
                    // the instance, so it is not restarted as a failure
                    // (which would back off, then quarantine it). The shard
                    // reloads it from what is durable, redoing its timers
                    // and outbox: the refused event may have been a timer
                    // firing or a task's result that nothing sends again.
                    state.refused = true;
                    let _ = state.args.shard_actor.cast(ShardMsg::Reload {
                        id: state.args.id.clone(),
                        actor: myself.get_id(),
                    });
                    return Ok(());
                }
                if storage_failed {
                    // Memory may be ahead of disk: restart from what is stored.
                    return Err(format!(
                        "instance {} failed to commit: {:?}",
                        state.args.id, result
                    )
                    .into());
                }
                state.last_active = Instant::now();
                // Ended (or never existed): nothing more will happen here
                // that storage cannot answer.
                if state
                    .record
                    .as_ref()
                    .is_none_or(|r| r.state.status.is_terminal())
                {
                    passivate(&myself, state);
                }
            }
            WorkflowMsg::IdleCheck => {
                let after = state.args.services.settings.passivate_after;
                let idle = state.last_active.elapsed();
                if idle >= after {
                    passivate(&myself, state);
                } else {
                    check_idle_after(&myself, after.saturating_sub(idle).max(after / 4));
                }
            }
            WorkflowMsg::Shed => passivate(&myself, state),
        }
        Ok(())
    }
}

/// Asks the shard to stop this actor once its queued messages are handled.
fn passivate(myself: &ActorRef<WorkflowMsg>, state: &WorkflowState) {
    let _ = state.args.shard_actor.cast(ShardMsg::Passivate {
        id: state.args.id.clone(),
        actor: myself.get_id(),
    });
}

/// One pending idle check per actor: it re-arms itself until the actor is idle.
fn check_idle_after(myself: &ActorRef<WorkflowMsg>, after: std::time::Duration) {
    let me = myself.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let _ = me.cast(WorkflowMsg::IdleCheck);
    });
}

async fn execute(state: &mut WorkflowState, command: Command) -> Result<Applied, Error> {
    match command {
        Command::Start {
            definition,
            input,
            parent,
        } => {
            let created = match start(state, definition, input, parent).await? {
                Applied::Done => true,
                Applied::Existing => false,
                other => return Ok(other),
            };
            let record = state.record.as_ref().expect("started");
            Ok(Applied::Started {
                created,
                view: super::view::instance(&record.state),
            })
        }
        Command::Event(kind) => existing(state, vec![kind]).await,
        Command::Report(kinds) => existing(state, kinds).await,
        Command::Recover => {
            if state.record.is_some() && !state.args.recover {
                effects::redo_outbox(&state.args.services, &state.args.id)?;
            }
            Ok(Applied::Done)
        }
    }
}

/// Applies events to an instance that must exist.
async fn existing(state: &mut WorkflowState, kinds: Vec<EventKind>) -> Result<Applied, Error> {
    if state.record.is_none() {
        return Err(Error::new(
            ErrorCode::WorkflowNotFound,
            format!("no workflow {}", state.args.id),
        ));
    }
    transition(state, kinds).await
}

async fn start(
    state: &mut WorkflowState,
    definition: Arc<Definition>,
    input: Json,
    parent: Option<ParentLink>,
) -> Result<Applied, Error> {
    if let Some(record) = &state.record {
        let same = record.state.definition == definition.name
            && record.state.version == definition.version
            && record.state.input == input;
        if !same {
            return Err(Error::new(
                ErrorCode::WorkflowConflict,
                format!(
                    "workflow {} exists with another definition or input",
                    state.args.id
                ),
            ));
        }
        // A repeated child start (after a crash) gets the outcome again.
        if let (Some(link), true) = (&record.parent, record.state.status.is_terminal()) {
            let s = &record.state;
            effects::notify_parent(
                &state.args.services,
                link,
                s.status,
                s.output.clone(),
                s.error.clone(),
            );
        }
        return Ok(Applied::Existing);
    }
    state.record = Some(InstanceRecord {
        state: Instance::blank(&definition),
        parent,
    });
    state.definition = Some(definition);
    let result = transition(
        state,
        vec![EventKind::Started {
            id: state.args.id.clone(),
            input,
        }],
    )
    .await;
    if result.is_err() {
        state.record = None;
        state.persisted = Persisted::default();
        state.armed.clear();
    }
    result
}

/// Most `noop` completions applied inline in one transition; the rest run
/// through the task runner like any builtin.
const MAX_INLINE: usize = 64;

/// Applies `kinds` in order and commits what applied in one batch. The
/// answer is about the last event: `Ignored` when it changed nothing.
async fn transition(state: &mut WorkflowState, kinds: Vec<EventKind>) -> Result<Applied, Error> {
    let services = state.args.services.clone();
    let def = state.definition.clone().expect("loaded with the record");
    let record = state.record.as_mut().expect("checked by caller");
    let before = record.state.status;
    let is_start = matches!(kinds.first(), Some(EventKind::Started { .. }));
    let previous = (!is_start).then_some(Indexed {
        status: record.state.status,
        updated_at: record.state.updated_at,
    });
    let mut journal = Vec::with_capacity(kinds.len());
    let mut effects = Vec::new();
    let mut last_ignored = None;
    for kind in kinds {
        let event = Event {
            at: effects::event_time(record.state.updated_at),
            kind,
        };
        let outcome = apply(&def, &mut record.state, &event);
        last_ignored = outcome.ignored;
        if last_ignored.is_none() {
            journal.push(effects::Journaled {
                event,
                inline: false,
            });
            effects.extend(outcome.effects);
        }
    }
    if journal.is_empty() {
        return Ok(Applied::Ignored(last_ignored.unwrap_or_default()));
    }
    complete_noops_inline(&def, &mut record.state, &mut journal, &mut effects);
    let effects = effects::net_out(effects, &journal);
    let built = effects::batch(
        state.args.shard,
        services.settings.history_retention,
        record,
        previous,
        state.persisted,
        &mut state.armed,
        &journal,
        &effects,
    );
    let after = record.state.status;
    let started = std::time::Instant::now();
    if let Err(e) = services.log.append(built.batch).await {
        // Memory is ahead of what is durable: the actor restarts from storage.
        state.diverged = true;
        return Err(e);
    }
    state.persisted = built.persisted;
    state.charge.resize(instance_bytes(built.persisted.size()));
    metrics::counter!(crate::metrics::JOURNAL_BYTES_TOTAL).increment(built.journal_bytes as u64);
    if let Some(bytes) = built.snapshot_bytes {
        metrics::counter!(crate::metrics::SNAPSHOTS_TOTAL).increment(1);
        metrics::counter!(crate::metrics::SNAPSHOT_BYTES_TOTAL).increment(bytes as u64);
    }
    if is_start {
        metrics::counter!(crate::metrics::WORKFLOWS_STARTED_TOTAL, "definition" => def.name.clone())
            .increment(1);
    }
    metrics::histogram!(crate::metrics::TRANSITION_SECONDS).record(started.elapsed().as_secs_f64());
    metrics::counter!(crate::metrics::TRANSITIONS_TOTAL).increment(journal.len() as u64);
    if before != after || is_start {
        crate::metrics::status_moved((!is_start).then_some(before), after);
        if after.is_terminal() && (is_start || !before.is_terminal()) {
            services
                .ended
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    effects::perform(&services, record, effects);
    Ok(last_ignored.map_or(Applied::Done, Applied::Ignored))
}

/// A `noop` attempt's outcome is known the moment it is dispatched (its
/// output is its input), so its completion is applied at once and journaled
/// in the same commit as its dispatch, saving a commit and two actor hops
/// per `noop` step. Replay sees the same events in the same order.
fn complete_noops_inline(
    def: &Definition,
    inst: &mut Instance,
    journal: &mut Vec<effects::Journaled>,
    effects: &mut Vec<Effect>,
) {
    let mut from = 0;
    for _ in 0..MAX_INLINE {
        let Some(offset) = effects[from..]
            .iter()
            .position(|e| matches!(e, Effect::DispatchTask(t) if t.task_type == "noop"))
        else {
            return;
        };
        let at = from + offset;
        let Effect::DispatchTask(task) = effects[at].clone() else {
            unreachable!("matched above")
        };
        let event = Event {
            at: journal.last().map_or(0, |j| j.event.at),
            kind: EventKind::TaskCompleted {
                path: task.path.clone(),
                attempt: task.attempt,
                output: task.input,
            },
        };
        let outcome = apply(def, inst, &event);
        if outcome.ignored.is_some() {
            from = at + 1;
            continue;
        }
        effects.remove(at);
        from = at;
        metrics::counter!(crate::metrics::TASKS_DISPATCHED_TOTAL, "task_type" => "noop")
            .increment(1);
        journal.push(effects::Journaled {
            event,
            inline: true,
        });
        effects.extend(outcome.effects);
    }
}

//! Turning one applied event into storage ops (committed with it) and, once
//! durable, into actions in the world.

use super::{Command, Services};
use crate::store::{
    HumanTaskRecord, IncidentRecord, InstanceRecord, Op, OutboxRecord, ParentLink, TimerRecord,
    keys,
};
use troupe_actors::engine::{Effect, ErrorInfo, Event, EventKind, InstanceStatus, Millis};
use troupe_protocol::ErrorCode;

/// One journaled event of a transition; `inline` marks a `noop` completion
/// applied in the same transition as its dispatch (it never had an outbox
/// entry).
pub(super) struct Journaled {
    pub event: Event,
    pub inline: bool,
}

/// Storage ops of a transition (one or more events applied together):
/// journal entries, the snapshot, and every side record the effects create
/// or remove, so they all land in one atomic batch.
pub(super) fn ops(
    services: &Services,
    shard: u32,
    record: &InstanceRecord,
    journal: &[Journaled],
    effects: &[Effect],
) -> Vec<Op> {
    let id = record.state.id.as_str();
    let now = journal.last().map_or(0, |j| j.event.at);
    let first_seq = record.state.events_applied + 1 - journal.len() as u64;
    let mut ops = Vec::with_capacity(journal.len() * 2 + effects.len() + 1);
    for (n, entry) in journal.iter().enumerate() {
        let seq = first_seq + n as u64;
        ops.push(Op::put(
            keys::JOURNAL,
            keys::journal(shard, id, seq),
            &entry.event,
        ));
        match &entry.event.kind {
            EventKind::TimerFired { timer } => {
                ops.push(Op::delete(keys::TIMERS, keys::pair(id, &timer.to_string())))
            }
            EventKind::HumanCompleted { path, .. } | EventKind::ChildEnded { path, .. } => {
                ops.push(Op::delete(
                    keys::HUMAN_TASKS,
                    keys::short_id("human", id, path),
                ));
                ops.push(Op::delete(keys::OUTBOX, keys::pair(id, path)));
            }
            EventKind::TaskCompleted { path, .. } | EventKind::TaskFailed { path, .. }
                if !entry.inline =>
            {
                ops.push(Op::delete(keys::OUTBOX, keys::pair(id, path)));
            }
            _ => {}
        }
    }
    ops.push(Op::put(keys::INSTANCES, id, record));
    for effect in effects {
        match effect {
            Effect::DispatchTask(task) => {
                let entry = OutboxRecord::Task {
                    instance: id.to_owned(),
                    dispatch: task.clone(),
                };
                ops.push(Op::put(keys::OUTBOX, keys::pair(id, &task.path), &entry));
            }
            Effect::CancelTask { path, .. } => {
                ops.push(Op::delete(keys::OUTBOX, keys::pair(id, path)))
            }
            Effect::StartChild {
                path,
                child_id,
                definition,
                version,
                input,
            } => {
                let entry = OutboxRecord::Child {
                    instance: id.to_owned(),
                    path: path.clone(),
                    child_id: child_id.clone(),
                    definition: definition.clone(),
                    version: *version,
                    input: input.clone(),
                };
                ops.push(Op::put(keys::OUTBOX, keys::pair(id, path), &entry));
            }
            Effect::ArmTimer { timer, at } => {
                let entry = TimerRecord {
                    instance: id.to_owned(),
                    timer: timer.clone(),
                    at: *at,
                };
                ops.push(Op::put(
                    keys::TIMERS,
                    keys::pair(id, &timer.to_string()),
                    &entry,
                ));
            }
            Effect::CancelTimer { timer } => {
                ops.push(Op::delete(keys::TIMERS, keys::pair(id, &timer.to_string())))
            }
            Effect::OpenHumanTask {
                path,
                assignee,
                input,
            } => {
                let task_id = keys::short_id("human", id, path);
                let entry = HumanTaskRecord {
                    id: task_id.clone(),
                    instance: id.to_owned(),
                    path: path.clone(),
                    assignee: assignee.clone(),
                    input: input.clone(),
                    escalated: false,
                    created_at: now,
                };
                ops.push(Op::put(keys::HUMAN_TASKS, task_id, &entry));
            }
            Effect::EscalateHumanTask { path, assignee } => {
                let task_id = keys::short_id("human", id, path);
                if let Ok(Some(mut entry)) = services.store.human_task(&task_id) {
                    entry.assignee = assignee.clone();
                    entry.escalated = true;
                    ops.push(Op::put(keys::HUMAN_TASKS, task_id, &entry));
                }
            }
            Effect::CloseHumanTask { path } => ops.push(Op::delete(
                keys::HUMAN_TASKS,
                keys::short_id("human", id, path),
            )),
            Effect::Subscribe { name, correlation } => {
                ops.push(Op::put(
                    keys::SUBSCRIPTIONS,
                    keys::subscription(name, correlation.as_deref(), id),
                    &(),
                ));
            }
            Effect::Unsubscribe { name, correlation } => {
                ops.push(Op::delete(
                    keys::SUBSCRIPTIONS,
                    keys::subscription(name, correlation.as_deref(), id),
                ));
            }
            Effect::OpenIncident { path, error } => {
                let incident_id = keys::short_id("incident", id, path);
                let entry = IncidentRecord {
                    id: incident_id.clone(),
                    instance: id.to_owned(),
                    path: path.clone(),
                    error: error.clone(),
                    opened_at: now,
                };
                ops.push(Op::put(keys::INCIDENTS, incident_id, &entry));
            }
            Effect::CloseIncident { path } => ops.push(Op::delete(
                keys::INCIDENTS,
                keys::short_id("incident", id, path),
            )),
            Effect::CancelChild { .. } | Effect::Finished { .. } => {}
        }
    }
    ops
}

/// Drops timer work that cancels out within one transition: a timer armed
/// and then withdrawn needs no arming (the withdrawal stays, for any copy
/// stored earlier). For attempts completed inline, the withdrawal goes too:
/// their timers were first armed by the dispatch in this same transition
/// (timer ids name the attempt, so no earlier copy is stored).
pub(super) fn net_out(effects: Vec<Effect>, journal: &[Journaled]) -> Vec<Effect> {
    let inline = |timer: &troupe_actors::engine::TimerId| {
        journal.iter().any(|j| {
            j.inline
                && matches!(&j.event.kind, EventKind::TaskCompleted { path, attempt, .. }
                    if *path == timer.path && *attempt == timer.attempt)
        })
    };
    let cancelled_after = |i: usize, timer: &troupe_actors::engine::TimerId| {
        effects[i + 1..]
            .iter()
            .position(|e| matches!(e, Effect::CancelTimer { timer: t } if t == timer))
            .map(|p| p + i + 1)
    };
    let mut dropped = vec![false; effects.len()];
    for (i, effect) in effects.iter().enumerate() {
        match effect {
            Effect::ArmTimer { timer, .. } => dropped[i] = cancelled_after(i, timer).is_some(),
            // Never stored: armed (if at all) and withdrawn right here.
            Effect::CancelTimer { timer } if inline(timer) => dropped[i] = true,
            _ => {}
        }
    }
    effects
        .into_iter()
        .zip(dropped)
        .filter_map(|(e, d)| (!d).then_some(e))
        .collect()
}

/// Carries out the effects of a durable transition.
pub(super) fn perform(services: &Services, record: &InstanceRecord, effects: Vec<Effect>) {
    let id = record.state.id.as_str();
    for effect in effects {
        match effect {
            Effect::DispatchTask(task) => {
                metrics::counter!(crate::metrics::TASKS_DISPATCHED_TOTAL, "task_type" => task.task_type.clone()).increment(1);
                if task.attempt > 1 {
                    metrics::counter!(crate::metrics::RETRIES_TOTAL).increment(1);
                }
                if task.path.ends_with("/compensate") && task.attempt == 1 {
                    metrics::counter!(crate::metrics::COMPENSATIONS_TOTAL).increment(1);
                }
                services.dispatch_task(id, task);
            }
            Effect::CancelTask { path, attempt } => services.cancel_task(id, &path, attempt),
            Effect::ArmTimer { timer, at } => services.timers.arm(id, timer, at),
            Effect::CancelTimer { timer } => services.timers.cancel(id, timer),
            Effect::StartChild {
                path,
                child_id,
                definition,
                version,
                input,
            } => {
                start_child(services, id, path, child_id, &definition, version, input);
            }
            Effect::CancelChild { child_id } => {
                let reason = format!("parent {id} is rolling back");
                services.router().cast(
                    &child_id,
                    Command::Event(EventKind::CancelRequested { reason }),
                );
            }
            Effect::Finished {
                status,
                output,
                error,
            } => {
                metrics::counter!(crate::metrics::WORKFLOWS_FINISHED_TOTAL, "definition" => record.state.definition.clone(), "status" => status.as_str())
                    .increment(1);
                services
                    .finished
                    .notify(id, || super::view::instance(&record.state));
                if let Some(parent) = &record.parent {
                    notify_parent(services, parent, status, output, error);
                }
            }
            Effect::OpenIncident { .. } => {
                metrics::counter!(crate::metrics::INCIDENTS_OPENED_TOTAL).increment(1)
            }
            Effect::OpenHumanTask { .. }
            | Effect::EscalateHumanTask { .. }
            | Effect::CloseHumanTask { .. }
            | Effect::Subscribe { .. }
            | Effect::Unsubscribe { .. }
            | Effect::CloseIncident { .. } => {}
        }
    }
}

/// Tells a parent its child ended.
pub(super) fn notify_parent(
    services: &Services,
    parent: &ParentLink,
    status: InstanceStatus,
    output: Option<serde_json::Value>,
    error: Option<ErrorInfo>,
) {
    let outcome = match status {
        InstanceStatus::Completed => Ok(output.unwrap_or_default()),
        other => Err(error.unwrap_or_else(|| {
            ErrorInfo::new("child_failed", format!("child ended {}", other.as_str()))
        })),
    };
    let event = EventKind::ChildEnded {
        path: parent.path.clone(),
        outcome,
    };
    services.router().cast(&parent.id, Command::Event(event));
}

/// Starts a child workflow (idempotent by child id), or reports to the parent
/// why it cannot start.
pub(super) fn start_child(
    services: &Services,
    parent: &str,
    path: String,
    child_id: String,
    definition: &str,
    version: Option<u32>,
    input: serde_json::Value,
) {
    let link = ParentLink {
        id: parent.to_owned(),
        path: path.clone(),
    };
    let resolved = match version {
        Some(v) => services.definitions.get(&services.store, definition, v),
        None => latest_version(services, definition).and_then(|v| {
            v.map_or(Ok(None), |v| {
                services.definitions.get(&services.store, definition, v)
            })
        }),
    };
    match resolved {
        Ok(Some(def)) => services.router().cast(
            &child_id,
            Command::Start {
                definition: def,
                input,
                parent: Some(link),
            },
        ),
        Ok(None) => {
            let error = ErrorInfo::new(
                ErrorCode::DefinitionNotFound.as_str(),
                format!("no definition {definition}"),
            );
            services.router().cast(
                parent,
                Command::Event(EventKind::ChildEnded {
                    path,
                    outcome: Err(error),
                }),
            );
        }
        Err(failure) => {
            tracing::error!(workflow_id = parent, step = %path, error = %failure, "cannot start child")
        }
    }
}

/// Latest deployed version of a definition.
pub(super) fn latest_version(
    services: &Services,
    name: &str,
) -> Result<Option<u32>, super::Failure> {
    services.definitions.latest(&services.store, name)
}

/// Redoes the outbox of an instance after a crash: runs its task attempts
/// again (same attempt, same idempotency key) and re-issues child starts.
pub(super) fn redo_outbox(services: &Services, id: &str) -> Result<(), crate::store::Error> {
    for entry in services.store.outbox_of(id)? {
        match entry {
            OutboxRecord::Task { dispatch, .. } => services.dispatch_task(id, dispatch),
            OutboxRecord::Child {
                path,
                child_id,
                definition,
                version,
                input,
                ..
            } => {
                start_child(services, id, path, child_id, &definition, version, input);
            }
        }
    }
    for timer in services.store.instance_timers(id)? {
        services.timers.arm(id, timer.timer, timer.at);
    }
    Ok(())
}

/// Time for an event: now, but never before the instance's last event.
pub(super) fn event_time(last: Millis) -> Millis {
    super::now_millis().max(last)
}

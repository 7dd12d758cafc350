//! Turning one applied event into storage ops (committed with it) and, once
//! durable, into actions in the world.

use crate::stored::{JournalRecords, Persisted};
use crate::{Command, Services};
use troupe_engine::engine::{
    Effect, ErrorInfo, Event, EventKind, InstanceStatus, Millis, RunDetail, TimerId,
};
use troupe_protocol::ErrorCode;
use troupe_storage::{
    HumanTaskRecord, IncidentRecord, Indexed, InstanceHead, InstanceRecord, OutboxRecord,
    ParentLink, ShardBatch, TimerRecord, human_task_id, incident_id,
};

/// One journaled event of a transition; `inline` marks a `noop` completion
/// applied in the same transition as its dispatch (it never had an outbox
/// entry).
pub(crate) struct Journaled {
    pub event: Event,
    pub inline: bool,
}

/// A transition's batch, and what it writes.
pub(crate) struct Built {
    /// The batch.
    pub batch: ShardBatch,
    /// What will be on disk of the instance once it is committed.
    pub persisted: Persisted,
    /// Encoded journal events, bytes.
    pub journal_bytes: usize,
    /// Encoded snapshot, bytes, when one is written.
    pub snapshot_bytes: Option<usize>,
}

/// When each armed timer of an instance is due, as stored: the due-order
/// index is keyed by it, so withdrawing or re-arming a timer needs it.
pub(crate) type ArmedTimers = std::collections::HashMap<TimerId, Millis>;

/// What a transition (one or more events applied together) writes:
/// journal entries, the head with its index entries, the whole state when
/// a snapshot is due (see `stored.rs`), and every side record the effects
/// create or remove, in one batch of the instance's shard. Everything comes
/// from the engine state and what the actor knows is stored (`previous`,
/// `persisted`, `armed`, kept up to date here); nothing is read.
#[allow(clippy::too_many_arguments)]
pub(crate) fn batch(
    shard: u32,
    history_retention: Option<u64>,
    record: &InstanceRecord,
    previous: Option<Indexed>,
    persisted: Persisted,
    armed: &mut ArmedTimers,
    journal: &[Journaled],
    effects: &[Effect],
) -> Built {
    let id = record.state.id.as_str();
    let now = journal.last().map_or(0, |j| j.event.at);
    let first_seq = record.state.events_applied + 1 - journal.len() as u64;
    let mut batch = ShardBatch::new(shard);
    let events: Vec<&Event> = journal.iter().map(|entry| &entry.event).collect();
    let journal_bytes = batch.append_events(id, first_seq, &events);
    let mut records = persisted.journal;
    if !events.is_empty() {
        records = records.with(record.state.events_applied);
    }
    // Step runs are deleted by looking for them.
    if effects
        .iter()
        .any(|e| matches!(e, Effect::ArchiveRuns { .. }))
    {
        records = JournalRecords::UNKNOWN;
    }
    for entry in journal {
        match &entry.event.kind {
            EventKind::TimerFired { timer } => batch.cancel_timer(id, timer, armed.remove(timer)),
            EventKind::HumanCompleted { path, .. } | EventKind::ChildEnded { path, .. } => {
                batch.delete_human_task(id, path);
                batch.delete_outbox(id, path);
            }
            EventKind::TaskCompleted { path, .. } | EventKind::TaskFailed { path, .. }
                if !entry.inline =>
            {
                batch.delete_outbox(id, path);
            }
            _ => {}
        }
    }
    let mut snapshot_bytes = None;
    let ended = record.state.status.is_terminal();
    let persisted = if persisted.snapshot_due(journal_bytes, ended, history_retention.is_some()) {
        let bytes = batch.put_snapshot(&record.state);
        snapshot_bytes = Some(bytes);
        // Events the snapshot includes, older than the retention, go.
        if let Some(drop_to) = history_retention
            .and_then(|keep| record.state.events_applied.checked_sub(keep))
            .filter(|seq| *seq > 0)
        {
            batch.drop_history(id, drop_to);
            records = JournalRecords::UNKNOWN;
        }
        Persisted {
            snapshot_events: record.state.events_applied,
            snapshot_bytes: bytes,
            tail_bytes: 0,
            journal: records,
        }
    } else {
        Persisted {
            tail_bytes: persisted.tail_bytes + journal_bytes,
            journal: records,
            ..persisted
        }
    };
    batch.put_head(
        &InstanceHead::of(record, persisted.snapshot_events),
        previous,
        persisted.journal.known(),
    );
    let (before, after) = (previous.map(|p| p.status), record.state.status);
    if before != Some(after) {
        if let Some(before) = before {
            batch.count_status(before, -1);
        }
        batch.count_status(after, 1);
    }
    for effect in effects {
        match effect {
            Effect::DispatchTask(task) => {
                let entry = OutboxRecord::Task {
                    instance: id.to_owned(),
                    dispatch: task.clone(),
                };
                batch.put_outbox(id, &task.path, &entry);
            }
            Effect::CancelTask { path, .. } => batch.delete_outbox(id, path),
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
                batch.put_outbox(id, path, &entry);
            }
            Effect::ArmTimer { timer, at } => {
                let replaces = armed.insert(timer.clone(), *at);
                let record = TimerRecord {
                    instance: id.to_owned(),
                    timer: timer.clone(),
                    at: *at,
                };
                batch.arm_timer(&record, replaces);
            }
            Effect::CancelTimer { timer } => batch.cancel_timer(id, timer, armed.remove(timer)),
            Effect::OpenHumanTask {
                path,
                assignee,
                input,
            } => batch.put_human_task(&HumanTaskRecord {
                id: human_task_id(shard, id, path),
                instance: id.to_owned(),
                path: path.clone(),
                assignee: assignee.clone(),
                input: input.clone(),
                escalated: false,
                created_at: now,
            }),
            Effect::EscalateHumanTask { path, assignee } => {
                // The whole record again, from the step's run: the input it
                // shows and when it opened.
                let run = record.state.steps.get(path);
                let input = match run.map(|r| &r.detail) {
                    Some(RunDetail::Human { input, .. }) => input.clone(),
                    _ => serde_json::Value::Null,
                };
                batch.put_human_task(&HumanTaskRecord {
                    id: human_task_id(shard, id, path),
                    instance: id.to_owned(),
                    path: path.clone(),
                    assignee: assignee.clone(),
                    input,
                    escalated: true,
                    created_at: run.map_or(now, |r| r.started_at),
                });
            }
            Effect::CloseHumanTask { path } => batch.delete_human_task(id, path),
            Effect::Subscribe { name, correlation } => {
                batch.subscribe(name, correlation.as_deref(), id)
            }
            Effect::Unsubscribe { name, correlation } => {
                batch.unsubscribe(name, correlation.as_deref(), id)
            }
            Effect::OpenIncident { path, error } => batch.put_incident(&IncidentRecord {
                id: incident_id(shard, id, path),
                instance: id.to_owned(),
                path: path.clone(),
                error: error.clone(),
                opened_at: now,
            }),
            Effect::CloseIncident { path } => batch.delete_incident(id, path),
            Effect::ArchiveRuns { runs } => {
                for (path, run) in runs {
                    batch.archive_run(id, path, run);
                }
            }
            Effect::CancelChild { .. } | Effect::Finished { .. } => {}
        }
    }
    Built {
        batch,
        persisted,
        journal_bytes,
        snapshot_bytes,
    }
}

/// Drops timer work that cancels out within one transition: a timer armed
/// and then withdrawn needs no arming (the withdrawal stays, for any copy
/// stored earlier). For attempts completed inline, the withdrawal goes too:
/// their timers were first armed by the dispatch in this same transition
/// (timer ids name the attempt, so no earlier copy is stored).
pub(crate) fn net_out(effects: Vec<Effect>, journal: &[Journaled]) -> Vec<Effect> {
    let inline = |timer: &troupe_engine::engine::TimerId| {
        journal.iter().any(|j| {
            j.inline
                && matches!(&j.event.kind, EventKind::TaskCompleted { path, attempt, .. }
                    if *path == timer.path && *attempt == timer.attempt)
        })
    };
    let cancelled_after = |i: usize, timer: &troupe_engine::engine::TimerId| {
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
pub(crate) fn perform(services: &Services, record: &InstanceRecord, effects: Vec<Effect>) {
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
            | Effect::ArchiveRuns { .. }
            | Effect::EscalateHumanTask { .. }
            | Effect::CloseHumanTask { .. }
            | Effect::Subscribe { .. }
            | Effect::Unsubscribe { .. }
            | Effect::CloseIncident { .. } => {}
        }
    }
}

/// Tells a parent its child ended.
pub(crate) fn notify_parent(
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
pub(crate) fn start_child(
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
pub(crate) fn latest_version(services: &Services, name: &str) -> Result<Option<u32>, super::Error> {
    services.definitions.latest(&services.store, name)
}

/// Redoes the outbox of an instance after a crash: runs its task attempts
/// again (same attempt, same idempotency key) and re-issues child starts.
pub(crate) fn redo_outbox(services: &Services, id: &str) -> troupe_storage::Result<()> {
    let shard = services.router.shard_of(id);
    for entry in services.store.outbox_of(shard, id)? {
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
    for timer in services.store.instance_timers(shard, id)? {
        services.timers.arm(id, timer.timer, timer.at);
    }
    Ok(())
}

/// Time for an event: now, but never before the instance's last event.
pub(crate) fn event_time(last: Millis) -> Millis {
    super::now_millis().max(last)
}

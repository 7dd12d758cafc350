//! `troupe simulate`: a dry run of a definition through the pure engine.
//!
//! No node, no workers: every task completes with its input (or a scripted
//! response, or a scripted failure), people approve, signals arrive, children
//! complete, and timers fire in simulated time. It prints the timeline, so a
//! definition's flow, retries and compensations can be checked before deploying.

use anyhow::{Context, bail};
use serde_json::{Value as Json, json};
use std::collections::{BTreeMap, VecDeque};
use troupe_engine::definition::Definition;
use troupe_engine::engine::{
    Effect, ErrorInfo, Event, EventKind, Instance, InstanceStatus, Millis, TimerId, apply,
};

/// Scripted behaviour of the simulated world.
#[derive(Default)]
pub struct Script {
    /// Path -> JSON a task, person, signal or child answers with.
    pub responses: BTreeMap<String, Json>,
    /// Path -> error code a task fails with (permanently).
    pub failures: BTreeMap<String, String>,
    /// Cancel the instance after this many events.
    pub cancel_after: Option<usize>,
}

/// Parses `PATH=VALUE` pairs.
pub fn pairs(items: &[String], what: &str) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => bail!("{what} takes PATH=VALUE, got {item:?}"),
        })
        .collect()
}

/// Runs `def` with `input` to the end and prints each event and effect.
pub fn run(def: &Definition, input: Json, script: &Script) -> anyhow::Result<Instance> {
    const START: Millis = 0;
    let mut inst = Instance::blank(def);
    let mut now = START;
    let mut timers: BTreeMap<TimerId, Millis> = BTreeMap::new();
    let mut queue: VecDeque<EventKind> = VecDeque::new();
    queue.push_back(EventKind::Started {
        id: "simulated".into(),
        input,
    });
    let mut applied = 0usize;
    while applied == 0 || !inst.status.is_terminal() {
        let kind = match queue.pop_front() {
            Some(kind) => kind,
            None => {
                let Some((timer, at)) = timers
                    .iter()
                    .min_by_key(|(t, at)| (**at, (*t).clone()))
                    .map(|(t, a)| (t.clone(), *a))
                else {
                    bail!(
                        "stuck: the instance is {} with nothing left to happen",
                        inst.status.as_str()
                    );
                };
                timers.remove(&timer);
                now = now.max(at);
                EventKind::TimerFired { timer }
            }
        };
        println!("{:>10}  <- {}", clock(now), describe_event(&kind));
        let outcome = apply(def, &mut inst, &Event { at: now, kind });
        if let Some(why) = outcome.ignored {
            println!("{:>10}     (ignored: {why})", "");
            continue;
        }
        applied += 1;
        for effect in outcome.effects {
            if let Some(line) = describe_effect(&effect) {
                println!("{:>10}  -> {line}", "");
            }
            react(&effect, script, &mut queue, &mut timers);
        }
        if script.cancel_after == Some(applied) {
            queue.push_back(EventKind::CancelRequested {
                reason: "cancelled by --cancel-after".into(),
            });
        }
        if applied > 100_000 {
            bail!("gave up after 100000 events");
        }
    }
    Ok(inst)
}

/// What the simulated world does in answer to an effect.
fn react(
    effect: &Effect,
    script: &Script,
    queue: &mut VecDeque<EventKind>,
    timers: &mut BTreeMap<TimerId, Millis>,
) {
    match effect {
        Effect::DispatchTask(t) => {
            let (path, attempt) = (t.path.clone(), t.attempt);
            queue.push_back(match script.failures.get(&t.path) {
                Some(code) => EventKind::TaskFailed {
                    path,
                    attempt,
                    error: ErrorInfo::new(code.clone(), "scripted failure"),
                    retryable: false,
                },
                None => EventKind::TaskCompleted {
                    path,
                    attempt,
                    output: script
                        .responses
                        .get(&t.path)
                        .cloned()
                        .unwrap_or_else(|| t.input.clone()),
                },
            });
        }
        Effect::ArmTimer { timer, at } => {
            timers.insert(timer.clone(), *at);
        }
        Effect::CancelTimer { timer } => {
            timers.remove(timer);
        }
        Effect::OpenHumanTask { path, .. } => {
            let payload = script
                .responses
                .get(path)
                .cloned()
                .unwrap_or_else(|| json!({"approved": true}));
            if payload != json!("timeout") {
                queue.push_back(EventKind::HumanCompleted {
                    path: path.clone(),
                    payload,
                });
            }
        }
        Effect::Subscribe { name, .. } => queue.push_back(EventKind::Signal {
            id: format!("sim-{name}-{}", queue.len()),
            name: name.clone(),
            payload: script.responses.get(name).cloned().unwrap_or(Json::Null),
        }),
        Effect::StartChild { path, .. } => queue.push_back(EventKind::ChildEnded {
            path: path.clone(),
            outcome: Ok(script.responses.get(path).cloned().unwrap_or(Json::Null)),
        }),
        Effect::CancelChild { child_id } => {
            let path = child_id
                .split_once('/')
                .map_or(child_id.as_str(), |(_, p)| p)
                .to_owned();
            queue.push_back(EventKind::ChildEnded {
                path,
                outcome: Err(ErrorInfo::new("cancelled", "cancelled")),
            });
        }
        Effect::OpenIncident { path, .. } => {
            queue.push_back(EventKind::IncidentResolved { path: path.clone() })
        }
        Effect::CancelTask { .. }
        | Effect::EscalateHumanTask { .. }
        | Effect::CloseHumanTask { .. }
        | Effect::Unsubscribe { .. }
        | Effect::CloseIncident { .. }
        | Effect::ArchiveRuns { .. }
        | Effect::Finished { .. } => {}
    }
}

/// Simulated time since start, e.g. `+1h30m`.
fn clock(ms: Millis) -> String {
    let shown = humantime::format_duration(std::time::Duration::from_millis(ms)).to_string();
    format!("+{}", shown.replace(' ', ""))
}

fn describe_event(kind: &EventKind) -> String {
    match kind {
        EventKind::Started { id, .. } => format!("started {id}"),
        EventKind::TaskStarted { path, attempt } => format!("task started {path}#{attempt}"),
        EventKind::TaskHeartbeat { path, attempt, .. } => format!("heartbeat {path}#{attempt}"),
        EventKind::TaskCompleted {
            path,
            attempt,
            output,
        } => format!("completed {path}#{attempt} {output}"),
        EventKind::TaskFailed {
            path,
            attempt,
            error,
            ..
        } => format!("failed {path}#{attempt} {}", error.code),
        EventKind::TimerFired { timer } => format!("timer {timer}"),
        EventKind::Signal { name, .. } => format!("signal {name}"),
        EventKind::HumanCompleted { path, payload } => format!("decided {path} {payload}"),
        EventKind::ChildEnded { path, outcome } => {
            format!("child ended {path} ok={}", outcome.is_ok())
        }
        EventKind::CancelRequested { reason } => format!("cancel requested ({reason})"),
        EventKind::IncidentRetried { path } => format!("incident retried {path}"),
        EventKind::IncidentResolved { path } => format!("incident resolved {path}"),
    }
}

fn describe_effect(effect: &Effect) -> Option<String> {
    Some(match effect {
        Effect::DispatchTask(t) => format!(
            "dispatch {}#{} ({}) key={}",
            t.path, t.attempt, t.task_type, t.idempotency_key
        ),
        Effect::CancelTask { path, attempt } => format!("cancel task {path}#{attempt}"),
        Effect::ArmTimer { timer, at } => format!("arm timer {timer} at {}", clock(*at)),
        Effect::CancelTimer { .. } | Effect::ArchiveRuns { .. } => return None,
        Effect::OpenHumanTask { path, assignee, .. } => format!("human task {path} for {assignee}"),
        Effect::EscalateHumanTask { path, assignee } => format!("escalate {path} to {assignee}"),
        Effect::CloseHumanTask { path } => format!("close human task {path}"),
        Effect::Subscribe { name, correlation } => {
            format!("await {name} {}", correlation.as_deref().unwrap_or(""))
        }
        Effect::Unsubscribe { name, .. } => format!("stop awaiting {name}"),
        Effect::StartChild {
            child_id,
            definition,
            ..
        } => format!("start child {child_id} ({definition})"),
        Effect::CancelChild { child_id } => format!("cancel child {child_id}"),
        Effect::OpenIncident { path, error } => format!("INCIDENT {path}: {}", error.code),
        Effect::CloseIncident { path } => format!("incident closed {path}"),
        Effect::Finished { status, .. } => format!("finished: {}", status.as_str()),
    })
}

/// Exit status for a simulated end: 0 completed, 3 otherwise.
pub fn exit_code(status: InstanceStatus) -> u8 {
    if status == InstanceStatus::Completed {
        0
    } else {
        3
    }
}

/// Reads a JSON argument: inline JSON or `@file`.
pub fn read_input(arg: &str) -> anyhow::Result<Json> {
    let text = match arg.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => arg.to_owned(),
    };
    serde_json::from_str(&text).with_context(|| format!("not valid JSON: {arg}"))
}

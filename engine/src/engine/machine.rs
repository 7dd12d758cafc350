//! `apply`: routes one event to its handler, then re-drives the instance.

use super::effect::{Effect, TimerKind};
use super::event::{Event, EventKind};
use super::state::*;
use crate::definition::{Definition, Step};
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet};

/// What applying one event produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    /// Effects to carry out once the event is durable, in order.
    pub effects: Vec<Effect>,
    /// Why the event changed nothing (duplicate, stale, not applicable).
    pub ignored: Option<String>,
}

/// Applies `event` to `inst` (a blank instance for `Started`).
pub fn apply(def: &Definition, inst: &mut Instance, event: &Event) -> Outcome {
    let mut m = Machine {
        def,
        inst,
        now: event.at,
        effects: Vec::new(),
        touched: Touched::of(&event.kind),
    };
    let ignored = m.handle(&event.kind).err();
    if ignored.is_none() {
        m.inst.events_applied += 1;
        m.inst.updated_at = m.now;
        m.drive();
        m.refresh_status();
    }
    Outcome {
        effects: m.effects,
        ignored,
    }
}

/// Walks the whole instance again as if every run had changed. On an
/// instance `apply` left, this must change nothing and yield no effect: the
/// walk is a fixpoint, which is what lets `apply` advance only the
/// iterations an event touched. For tests.
#[doc(hidden)]
pub fn redrive_all(def: &Definition, inst: &mut Instance) -> Vec<Effect> {
    let mut m = Machine {
        def,
        now: inst.updated_at,
        inst,
        effects: Vec::new(),
        touched: Touched::All,
    };
    m.drive();
    m.refresh_status();
    m.effects
}

/// Rebuilds an instance from its events.
pub fn replay<'a>(def: &Definition, events: impl IntoIterator<Item = &'a Event>) -> Instance {
    let mut inst = Instance::blank(def);
    for event in events {
        apply(def, &mut inst, event);
    }
    inst
}

impl Instance {
    /// An instance that has not started; `Started` fills it in.
    pub fn blank(def: &Definition) -> Self {
        Self {
            id: String::new(),
            definition: def.name.clone(),
            version: def.version,
            status: InstanceStatus::Running,
            input: Json::Null,
            vars: BTreeMap::new(),
            scopes: BTreeMap::new(),
            output: None,
            error: None,
            steps: BTreeMap::new(),
            folded: BTreeMap::new(),
            archived: BTreeMap::new(),
            runs_created: 0,
            completions: Vec::new(),
            rollback: None,
            signals: Vec::new(),
            seen_signals: BTreeSet::new(),
            events_applied: 0,
            created_at: 0,
            updated_at: 0,
        }
    }
}

/// Result of a handler: `Err(reason)` when the event does not apply.
pub(super) type Handled = Result<(), String>;

/// One event's worth of work on one instance.
pub(super) struct Machine<'a> {
    pub def: &'a Definition,
    pub inst: &'a mut Instance,
    pub now: Millis,
    pub effects: Vec<Effect>,
    /// The run the event changed (the walk advances only what holds it).
    pub touched: Touched,
}

/// Which run an event changed. After an event only the containers holding
/// that run can move: every other `foreach` iteration is where the last
/// walk left it (the walk is a fixpoint; the property tests check it).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Touched {
    /// Walk everything (a new instance, or a check of the fixpoint).
    All,
    /// The run at this step path, or a run under it.
    Path(String),
    /// No run (a buffered signal, a cancel).
    Nothing,
}

impl Touched {
    fn of(kind: &EventKind) -> Self {
        match kind {
            EventKind::Started { .. } => Touched::All,
            EventKind::TaskStarted { path, .. }
            | EventKind::TaskHeartbeat { path, .. }
            | EventKind::TaskCompleted { path, .. }
            | EventKind::TaskFailed { path, .. }
            | EventKind::HumanCompleted { path, .. }
            | EventKind::ChildEnded { path, .. }
            | EventKind::IncidentRetried { path }
            | EventKind::IncidentResolved { path } => Touched::Path(path.clone()),
            EventKind::TimerFired { timer } => Touched::Path(timer.path.clone()),
            // The signal handler names the run it completed, if any.
            EventKind::Signal { .. } | EventKind::CancelRequested { .. } => Touched::Nothing,
        }
    }
}

impl<'a> Machine<'a> {
    fn handle(&mut self, kind: &EventKind) -> Handled {
        let started = !self.inst.id.is_empty();
        match kind {
            EventKind::Started { .. } if started => return Err("already started".into()),
            EventKind::Started { id, input } => {
                self.inst.id = id.clone();
                self.inst.input = input.clone();
                self.inst.created_at = self.now;
                return Ok(());
            }
            _ if !started => return Err("instance not started".into()),
            _ if self.inst.status.is_terminal() => {
                return Err(format!("instance is {}", self.inst.status.as_str()));
            }
            _ => {}
        }
        match kind {
            EventKind::Started { .. } => unreachable!("handled above"),
            EventKind::TaskStarted { path, attempt } => self.task_started(path, *attempt),
            EventKind::TaskHeartbeat {
                path,
                attempt,
                progress,
            } => self.task_heartbeat(path, *attempt, progress.as_ref()),
            EventKind::TaskCompleted {
                path,
                attempt,
                output,
            } => self.task_completed(path, *attempt, output),
            EventKind::TaskFailed {
                path,
                attempt,
                error,
                retryable,
            } => self.task_failed(path, *attempt, error.clone(), *retryable),
            EventKind::TimerFired { timer } => match timer.kind {
                TimerKind::Retry
                | TimerKind::StartToClose
                | TimerKind::ScheduleToStart
                | TimerKind::Heartbeat => self.task_timer(timer),
                TimerKind::Wait
                | TimerKind::AwaitTimeout
                | TimerKind::HumanTimeout
                | TimerKind::HumanEscalation => self.wait_timer(timer),
            },
            EventKind::Signal { id, name, payload } => self.signal(id, name, payload),
            EventKind::HumanCompleted { path, payload } => self.human_completed(path, payload),
            EventKind::ChildEnded { path, outcome } => self.child_ended(path, outcome),
            EventKind::CancelRequested { reason } => self.cancel(reason),
            EventKind::IncidentRetried { path } => self.incident_retried(path),
            EventKind::IncidentResolved { path } => self.incident_resolved(path),
        }
    }

    /// Looks a step up by id.
    pub fn step(&self, id: &str) -> &'a Step {
        let def: &'a Definition = self.def;
        def.step(id)
            .unwrap_or_else(|| panic!("step {id:?} is not in definition {}", self.def.name))
    }

    /// The run at `path`, or why an event about it does not apply.
    pub fn run_mut(&mut self, path: &str) -> Result<&mut StepRun, String> {
        self.inst
            .steps
            .get_mut(path)
            .ok_or_else(|| format!("no step run at {path}"))
    }

    /// Records a new run at `path` in `status`.
    pub fn new_run(
        &mut self,
        path: &str,
        step: &Step,
        frame: &Frame,
        status: StepStatus,
        detail: RunDetail,
    ) {
        let order = self.inst.runs_created;
        self.inst.runs_created += 1;
        self.inst.steps.insert(
            path.to_owned(),
            StepRun {
                step_id: step.id.clone(),
                status,
                started_at: self.now,
                ended_at: None,
                result: None,
                error: None,
                scopes: frame.scopes.clone(),
                write_scope: frame.write.clone(),
                order,
                task: None,
                compensation: None,
                fallback: None,
                detail,
            },
        );
    }

    /// Marks a run completed with `result`, writes its output variable and
    /// remembers it for rollback when it declares a compensation.
    pub fn complete_run(&mut self, path: &str, result: Json) {
        let step = self.step(&self.inst.steps[path].step_id);
        let (output, compensable) = (step.output.clone(), step.compensate.is_some());
        let run = self.inst.steps.get_mut(path).expect("run exists");
        run.status = StepStatus::Completed;
        run.ended_at = Some(self.now);
        run.result = Some(result.clone());
        let write_scope = run.write_scope.clone();
        if let Some(name) = output {
            self.write_var(write_scope.as_deref(), name, result);
        }
        if compensable {
            self.inst.completions.push(path.to_owned());
        }
    }

    /// Marks a run failed with `error`.
    pub fn fail_run(&mut self, path: &str, error: ErrorInfo) {
        let now = self.now;
        let run = self.inst.steps.get_mut(path).expect("run exists");
        run.status = StepStatus::Failed;
        run.ended_at = Some(now);
        run.error = Some(error.at(path));
    }

    /// Writes a variable into a scope (`None`: instance variables).
    pub fn write_var(&mut self, scope: Option<&str>, name: String, value: Json) {
        match scope {
            Some(key) => {
                self.inst
                    .scopes
                    .entry(key.to_owned())
                    .or_default()
                    .insert(name, value);
            }
            None => {
                self.inst.vars.insert(name, value);
            }
        }
    }

    /// Ends the instance with a terminal status.
    pub fn finish(&mut self, status: InstanceStatus) {
        debug_assert!(status.is_terminal());
        self.inst.status = status;
        self.effects.push(Effect::Finished {
            status,
            output: self.inst.output.clone(),
            error: self.inst.error.clone(),
        });
    }

    /// Running or waiting, from what is outstanding; rollback and terminal states are kept.
    fn refresh_status(&mut self) {
        if self.inst.status.is_terminal() || self.inst.rollback.is_some() {
            return;
        }
        let busy = self.inst.steps.values().any(|r| {
            r.task
                .as_ref()
                .is_some_and(|t| t.phase.in_flight() || t.phase == TaskPhase::Backoff)
                && r.status != StepStatus::Completed
        });
        self.inst.status = if busy {
            InstanceStatus::Running
        } else {
            InstanceStatus::Waiting
        };
    }
}

/// Where a walk stands: the scopes it sees and where outputs go.
#[derive(Debug, Clone, Default)]
pub(super) struct Frame {
    pub scopes: Vec<String>,
    pub write: Option<String>,
}

impl Frame {
    /// A frame with one more readable scope; `writable` makes it the output target.
    pub fn nested(&self, key: String, writable: bool) -> Frame {
        let mut scopes = self.scopes.clone();
        scopes.push(key.clone());
        Frame {
            scopes,
            write: if writable {
                Some(key)
            } else {
                self.write.clone()
            },
        }
    }
}

/// `a/b` path join.
pub(super) fn join(prefix: &str, segment: impl std::fmt::Display) -> String {
    if prefix.is_empty() {
        segment.to_string()
    } else {
        format!("{prefix}/{segment}")
    }
}

//! A small simulator around the pure engine for tests: it applies events,
//! remembers what is dispatched and armed, and checks invariants on the way.
#![allow(dead_code, missing_docs)]

use serde_json::{Value as Json, json};
use std::collections::BTreeMap;
use troupe_engine::definition::{self, Definition};
use troupe_engine::engine::*;

pub const T0: Millis = 1_700_000_000_000;

pub fn load(yaml: &str) -> Definition {
    definition::load(yaml).unwrap_or_else(|issues| {
        panic!(
            "invalid test definition:\n{}",
            issues
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

pub fn example(name: &str) -> Definition {
    let path = format!("{}/../examples/{name}.yaml", env!("CARGO_MANIFEST_DIR"));
    load(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

/// One instance under test.
pub struct Sim {
    pub def: Definition,
    pub inst: Instance,
    pub now: Millis,
    pub events: Vec<Event>,
    /// Attempts currently out with workers, by task path.
    pub tasks: BTreeMap<String, TaskDispatch>,
    /// Armed timers.
    pub timers: BTreeMap<TimerId, Millis>,
    /// Open human tasks: path -> assignee.
    pub humans: BTreeMap<String, String>,
    /// Children started: path -> child id.
    pub children: BTreeMap<String, String>,
    /// Incidents open.
    pub incidents: Vec<String>,
    /// Await subscriptions: (name, correlation).
    pub subscriptions: Vec<(String, Option<String>)>,
    /// Compensable completions not yet compensated, in completion order.
    pub comp_stack: Vec<String>,
    /// Order in which compensations were dispatched (first attempts).
    pub compensated_order: Vec<String>,
    /// Every effect, in order.
    pub log: Vec<Effect>,
    /// Complete `noop` tasks with their input, as the node does.
    pub auto_noop: bool,
    pub finished: Option<InstanceStatus>,
}

impl Sim {
    pub fn start(def: Definition, input: Json) -> Self {
        let inst = Instance::blank(&def);
        let mut sim = Sim {
            def,
            inst,
            now: T0,
            events: Vec::new(),
            tasks: BTreeMap::new(),
            timers: BTreeMap::new(),
            humans: BTreeMap::new(),
            children: BTreeMap::new(),
            incidents: Vec::new(),
            subscriptions: Vec::new(),
            comp_stack: Vec::new(),
            compensated_order: Vec::new(),
            log: Vec::new(),
            auto_noop: true,
            finished: None,
        };
        sim.apply(EventKind::Started {
            id: "wf-1".into(),
            input,
        });
        sim
    }

    /// Applies one event and tracks its effects; returns them.
    pub fn apply(&mut self, kind: EventKind) -> Outcome {
        let event = Event { at: self.now, kind };
        let completed_before: Vec<String> = self.completed_compensable();
        let outcome = apply(&self.def, &mut self.inst, &event);
        if outcome.ignored.is_none() {
            self.events.push(event.clone());
        }
        if let EventKind::TimerFired { timer } = &event.kind {
            self.timers.remove(timer);
        }
        // Track compensable completions in the order the engine records them.
        for path in self.completed_compensable() {
            if !completed_before.contains(&path) {
                self.comp_stack.push(path);
            }
        }
        for effect in &outcome.effects {
            self.track(effect);
        }
        // Attempts the engine no longer waits for (timed out) are gone.
        let inst = &self.inst;
        self.tasks.retain(|path, t| {
            let (step, compensation) = match path.strip_suffix("/compensate") {
                Some(step) => (step, true),
                None => (path.as_str(), false),
            };
            inst.steps.get(step).is_some_and(|r| {
                let progress = if compensation {
                    &r.compensation
                } else {
                    &r.task
                };
                progress
                    .as_ref()
                    .is_some_and(|p| p.attempt == t.attempt && p.phase.in_flight())
            })
        });
        if outcome.ignored.is_none() {
            let replayed = replay(&self.def, &self.events);
            assert_eq!(
                replayed, self.inst,
                "replaying the journal must rebuild the same state"
            );
            // The walk is a fixpoint: walking everything again changes
            // nothing (what lets `apply` walk only what an event touched).
            let mut again = self.inst.clone();
            let effects = redrive_all(&self.def, &mut again);
            assert!(
                effects.is_empty(),
                "a full walk found more to do: {effects:?}"
            );
            assert_eq!(again, self.inst, "a full walk changed the state");
        }
        let noops: Vec<TaskDispatch> = outcome
            .effects
            .iter()
            .filter_map(|e| match e {
                Effect::DispatchTask(t) if self.auto_noop && t.task_type == "noop" => {
                    Some(t.clone())
                }
                _ => None,
            })
            .collect();
        for t in noops {
            self.tasks.remove(&t.path);
            self.apply(EventKind::TaskCompleted {
                path: t.path,
                attempt: t.attempt,
                output: t.input,
            });
        }
        outcome
    }

    /// Runs that completed and declare a compensation (whatever happened since).
    fn completed_compensable(&self) -> Vec<String> {
        self.inst
            .steps
            .iter()
            .chain(&self.inst.folded)
            .filter(|(_, r)| {
                matches!(
                    r.status,
                    StepStatus::Completed | StepStatus::Compensating | StepStatus::Compensated
                ) && self
                    .def
                    .step(&r.step_id)
                    .is_some_and(|s| s.compensate.is_some())
            })
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn track(&mut self, effect: &Effect) {
        self.log.push(effect.clone());
        match effect {
            Effect::DispatchTask(t) => {
                if let Some(step) = t.path.strip_suffix("/compensate")
                    && t.attempt == 1
                {
                    let expected = self.comp_stack.pop();
                    assert_eq!(
                        expected.as_deref(),
                        Some(step),
                        "compensation must follow reverse completion order"
                    );
                    self.compensated_order.push(step.to_owned());
                }
                self.tasks.insert(t.path.clone(), t.clone());
            }
            Effect::CancelTask { .. } => {}
            Effect::ArmTimer { timer, at } => {
                self.timers.insert(timer.clone(), *at);
            }
            Effect::CancelTimer { timer } => {
                self.timers.remove(timer);
            }
            Effect::OpenHumanTask { path, assignee, .. } => {
                self.humans.insert(path.clone(), assignee.clone());
            }
            Effect::EscalateHumanTask { path, assignee } => {
                self.humans.insert(path.clone(), assignee.clone());
            }
            Effect::CloseHumanTask { path } => {
                self.humans.remove(path);
            }
            Effect::StartChild { path, child_id, .. } => {
                self.children.insert(path.clone(), child_id.clone());
            }
            Effect::OpenIncident { path, .. } => self.incidents.push(path.clone()),
            Effect::CloseIncident { path } => self.incidents.retain(|p| p != path),
            Effect::Finished { status, .. } => {
                assert!(self.finished.is_none(), "finished twice");
                self.finished = Some(*status);
            }
            Effect::Subscribe { name, correlation } => {
                self.subscriptions.push((name.clone(), correlation.clone()))
            }
            Effect::Unsubscribe { name, correlation } => {
                if let Some(i) = self
                    .subscriptions
                    .iter()
                    .position(|s| s.0 == *name && s.1 == *correlation)
                {
                    self.subscriptions.remove(i);
                }
            }
            Effect::CancelChild { .. } | Effect::ArchiveRuns { .. } => {}
        }
    }

    pub fn task(&self, path: &str) -> &TaskDispatch {
        self.tasks
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not dispatched; out: {:?}", self.out()))
    }

    /// Task paths currently dispatched and unanswered.
    pub fn out(&self) -> Vec<String> {
        self.tasks.keys().cloned().collect()
    }

    pub fn complete(&mut self, path: &str, output: Json) -> Outcome {
        let attempt = self.task(path).attempt;
        self.tasks.remove(path);
        self.apply(EventKind::TaskCompleted {
            path: path.into(),
            attempt,
            output,
        })
    }

    pub fn fail(&mut self, path: &str, code: &str, retryable: bool) -> Outcome {
        let attempt = self.task(path).attempt;
        self.tasks.remove(path);
        let error = ErrorInfo::new(code, format!("{code} from worker"));
        self.apply(EventKind::TaskFailed {
            path: path.into(),
            attempt,
            error,
            retryable,
        })
    }

    /// Advances time to the earliest armed timer and fires it.
    pub fn fire_next_timer(&mut self) -> Option<(TimerId, Outcome)> {
        let (timer, at) = self
            .timers
            .iter()
            .min_by_key(|(t, at)| (**at, (*t).clone()))
            .map(|(t, a)| (t.clone(), *a))?;
        self.now = self.now.max(at);
        let outcome = self.apply(EventKind::TimerFired {
            timer: timer.clone(),
        });
        Some((timer, outcome))
    }

    /// Fires the timer of `kind` on `path`.
    pub fn fire(&mut self, kind: TimerKind, path: &str) -> Outcome {
        let (timer, at) = self
            .timers
            .iter()
            .find(|(t, _)| t.kind == kind && t.path == path)
            .map(|(t, a)| (t.clone(), *a))
            .unwrap_or_else(|| {
                panic!(
                    "no {kind:?} timer on {path}; armed: {:?}",
                    self.timers.keys().collect::<Vec<_>>()
                )
            });
        self.now = self.now.max(at);
        self.apply(EventKind::TimerFired { timer })
    }

    pub fn signal(&mut self, id: &str, name: &str, payload: Json) -> Outcome {
        self.apply(EventKind::Signal {
            id: id.into(),
            name: name.into(),
            payload,
        })
    }

    pub fn human(&mut self, path: &str, payload: Json) -> Outcome {
        self.apply(EventKind::HumanCompleted {
            path: path.into(),
            payload,
        })
    }

    pub fn status(&self) -> InstanceStatus {
        self.inst.status
    }

    pub fn step_status(&self, path: &str) -> StepStatus {
        self.inst
            .steps
            .get(path)
            .unwrap_or_else(|| panic!("no run at {path}"))
            .status
    }

    /// Runs every remaining retry/timeout timer until nothing is dispatched or armed
    /// for tasks, completing each dispatched task with `{}` (compensations included).
    pub fn complete_everything(&mut self) {
        for _ in 0..1000 {
            if let Some(path) = self.out().into_iter().next() {
                self.complete(&path, json!({}));
            } else {
                return;
            }
        }
        panic!("did not settle");
    }
}

/// Compact, readable form of effects for table assertions (timer
/// cancellations left out: they only save work).
pub fn show(effects: &[Effect], now: Millis) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| {
            Some(match e {
                Effect::DispatchTask(t) => {
                    format!("dispatch {}#{} {}", t.path, t.attempt, t.task_type)
                }
                Effect::CancelTask { path, attempt } => format!("cancel {path}#{attempt}"),
                Effect::ArmTimer { timer, at } => {
                    format!(
                        "arm {:?} {}#{} +{}ms",
                        timer.kind,
                        timer.path,
                        timer.attempt,
                        at - now
                    )
                }
                Effect::CancelTimer { .. } | Effect::ArchiveRuns { .. } => return None,
                Effect::OpenHumanTask { path, assignee, .. } => {
                    format!("human {path} -> {assignee}")
                }
                Effect::EscalateHumanTask { path, assignee } => {
                    format!("escalate {path} -> {assignee}")
                }
                Effect::CloseHumanTask { path } => format!("close human {path}"),
                Effect::Subscribe { name, correlation } => {
                    format!("subscribe {name} {correlation:?}")
                }
                Effect::Unsubscribe { name, correlation } => {
                    format!("unsubscribe {name} {correlation:?}")
                }
                Effect::StartChild {
                    child_id,
                    definition,
                    ..
                } => format!("start child {child_id} {definition}"),
                Effect::CancelChild { child_id } => format!("cancel child {child_id}"),
                Effect::OpenIncident { path, error } => format!("incident {path} {}", error.code),
                Effect::CloseIncident { path } => format!("close incident {path}"),
                Effect::Finished { status, .. } => format!("finished {}", status.as_str()),
            })
        })
        .collect()
}

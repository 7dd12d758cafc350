//! Rollback: cancel what is in flight, then compensate completed steps one at
//! a time in reverse order of completion.

use super::codes::CANCELLED;
use super::effect::{Effect, TimerId, TimerKind};
use super::machine::{Handled, Machine, join};
use super::state::*;
use crate::definition::StepKind;

impl Machine<'_> {
    /// Starts a rollback: records why, and stops everything that can be stopped.
    pub fn begin_rollback(&mut self, cause: RollbackCause, error: ErrorInfo) {
        self.inst.error = Some(error);
        self.inst.rollback = Some(Rollback {
            cause,
            current: None,
            incident: false,
            compensated: 0,
        });
        self.inst.status = InstanceStatus::Compensating;
        let open: Vec<String> = self
            .inst
            .steps
            .iter()
            .filter(|(_, r)| {
                matches!(
                    r.status,
                    StepStatus::Scheduled | StepStatus::Running | StepStatus::Retrying
                )
            })
            .map(|(p, _)| p.clone())
            .collect();
        for path in open {
            self.interrupt(&path);
        }
        self.advance_rollback();
    }

    /// Stops one open run. Task attempts and children out in the world are
    /// asked to stop and stay open until they report back.
    fn interrupt(&mut self, path: &str) {
        let run = &self.inst.steps[path];
        let cancelled = || ErrorInfo::new(CANCELLED, "interrupted by rollback");
        let timer = |kind| TimerId {
            kind,
            path: path.to_owned(),
            attempt: 0,
        };
        match (&run.task, &run.detail) {
            (Some(task), _) if task.phase.in_flight() => {
                self.effects.push(Effect::CancelTask {
                    path: path.to_owned(),
                    attempt: task.attempt,
                });
                return;
            }
            (Some(task), _) if task.phase == TaskPhase::Backoff => {
                let timer = TimerId {
                    kind: TimerKind::Retry,
                    path: path.to_owned(),
                    attempt: task.attempt,
                };
                self.effects.push(Effect::CancelTimer { timer });
                self.run_mut(path)
                    .expect("run")
                    .task
                    .as_mut()
                    .expect("task")
                    .phase = TaskPhase::Failed;
            }
            (_, RunDetail::Child { child_id }) => {
                self.effects.push(Effect::CancelChild {
                    child_id: child_id.clone(),
                });
                return;
            }
            (_, RunDetail::Human { .. }) if run.fallback.is_none() => {
                self.effects.push(Effect::CloseHumanTask {
                    path: path.to_owned(),
                });
                self.effects.push(Effect::CancelTimer {
                    timer: timer(TimerKind::HumanTimeout),
                });
                self.effects.push(Effect::CancelTimer {
                    timer: timer(TimerKind::HumanEscalation),
                });
            }
            (_, RunDetail::Await { name, correlation }) if run.fallback.is_none() => {
                let unsubscribe = Effect::Unsubscribe {
                    name: name.clone(),
                    correlation: correlation.clone(),
                };
                self.effects.push(unsubscribe);
                self.effects.push(Effect::CancelTimer {
                    timer: timer(TimerKind::AwaitTimeout),
                });
            }
            _ if matches!(self.step(&run.step_id).kind, StepKind::Wait(_)) => {
                self.effects.push(Effect::CancelTimer {
                    timer: timer(TimerKind::Wait),
                });
            }
            _ => {}
        }
        self.fail_run(path, cancelled());
    }

    /// Starts the next compensation, or ends the rollback when nothing is left
    /// to compensate and nothing is still in flight.
    pub fn advance_rollback(&mut self) {
        let rollback = self.inst.rollback.as_ref().expect("rolling back");
        if rollback.current.is_some() {
            return;
        }
        // Work still out in the world may yet complete; its compensation must
        // come first, so nothing is compensated until everything settled.
        let in_flight = self.inst.steps.values().any(|r| {
            r.task.as_ref().is_some_and(|t| t.phase.in_flight())
                || (r.status == StepStatus::Running && matches!(r.detail, RunDetail::Child { .. }))
        });
        if in_flight {
            return;
        }
        if let Some(path) = self.inst.completions.pop() {
            self.start_compensation(&path);
            return;
        }
        let status = match rollback.cause {
            RollbackCause::Cancelled => InstanceStatus::Cancelled,
            RollbackCause::Failed if rollback.compensated > 0 => InstanceStatus::Compensated,
            RollbackCause::Failed => InstanceStatus::Failed,
        };
        self.finish(status);
    }

    fn start_compensation(&mut self, path: &str) {
        // A run of a finished iteration comes back to compensate.
        if let Some(run) = self.inst.folded.remove(path) {
            self.inst.steps.insert(path.to_owned(), run);
        }
        self.inst.rollback.as_mut().expect("rolling back").current = Some(path.to_owned());
        let run = self.run_mut(path).expect("run");
        run.status = StepStatus::Compensating;
        run.compensation = Some(TaskProgress {
            attempt: 1,
            series_start: 1,
            phase: TaskPhase::Scheduled,
            heartbeat_deadline: None,
            lease_deadline: None,
            progress: None,
        });
        let spec = &self
            .step(&self.inst.steps[path].step_id)
            .compensate
            .as_ref()
            .expect("compensable")
            .task;
        match self.task_input(path, true) {
            Ok(input) => self.dispatch(&join(path, "compensate"), spec, 1, input),
            Err(error) => {
                self.run_mut(path)
                    .expect("run")
                    .compensation
                    .as_mut()
                    .expect("set above")
                    .phase = TaskPhase::Failed;
                self.compensation_failed(path, error);
            }
        }
    }

    /// The compensation of `path` completed.
    pub fn compensation_done(&mut self, path: &str) {
        let now = self.now;
        let run = self.run_mut(path).expect("run");
        run.status = StepStatus::Compensated;
        run.ended_at = Some(now);
        let rollback = self.inst.rollback.as_mut().expect("rolling back");
        rollback.current = None;
        rollback.compensated += 1;
    }

    /// The compensation of `path` failed for good: stop and open an incident.
    pub fn compensation_failed(&mut self, path: &str, error: ErrorInfo) {
        let error = error.at(path);
        self.run_mut(path).expect("run").error = Some(error.clone());
        self.inst.rollback.as_mut().expect("rolling back").incident = true;
        self.inst.status = InstanceStatus::CompensationFailed;
        self.effects.push(Effect::OpenIncident {
            path: path.to_owned(),
            error,
        });
    }

    fn open_incident(&mut self, path: &str) -> Result<(), String> {
        match &self.inst.rollback {
            Some(Rollback {
                current: Some(current),
                incident: true,
                ..
            }) if current == path => Ok(()),
            _ => Err(format!("no open incident on {path}")),
        }
    }

    pub(super) fn cancel(&mut self, reason: &str) -> Handled {
        if self.inst.rollback.is_some() {
            return Err("instance is already rolling back".into());
        }
        self.begin_rollback(RollbackCause::Cancelled, ErrorInfo::new(CANCELLED, reason));
        Ok(())
    }

    pub(super) fn incident_retried(&mut self, path: &str) -> Handled {
        self.open_incident(path)?;
        self.inst.rollback.as_mut().expect("checked").incident = false;
        self.inst.status = InstanceStatus::Compensating;
        let progress = self
            .run_mut(path)?
            .compensation
            .as_mut()
            .expect("compensation started");
        progress.series_start = progress.attempt + 1;
        self.effects.push(Effect::CloseIncident {
            path: path.to_owned(),
        });
        self.next_attempt(&join(path, "compensate"))
    }

    pub(super) fn incident_resolved(&mut self, path: &str) -> Handled {
        self.open_incident(path)?;
        self.inst.rollback.as_mut().expect("checked").incident = false;
        self.inst.status = InstanceStatus::Compensating;
        self.effects.push(Effect::CloseIncident {
            path: path.to_owned(),
        });
        self.compensation_done(path);
        Ok(())
    }
}

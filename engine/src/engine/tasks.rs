//! Task attempts: dispatch, worker reports, timeouts and retries.
//!
//! The same logic serves a task step (path `p`) and its compensation (path
//! `p/compensate`); only what happens when the task ends differs.

use super::codes::*;
use super::effect::{Effect, TaskDispatch, TimerId, TimerKind};
use super::machine::{Handled, Machine};
use super::retry::backoff_delay;
use super::scope::Bindings;
use super::state::*;
use crate::definition::{StepKind, TaskStep};
use serde_json::Value as Json;

/// Splits a task path into the step path and whether it is the compensation.
fn split(task_path: &str) -> (&str, bool) {
    match task_path.strip_suffix("/compensate") {
        Some(step) => (step, true),
        None => (task_path, false),
    }
}

impl<'a> Machine<'a> {
    /// The task spec behind a step's own task or its compensation.
    fn spec(&self, step_path: &str, compensation: bool) -> &'a TaskStep {
        let step = self.step(&self.inst.steps[step_path].step_id);
        match (&step.kind, &step.compensate) {
            (_, Some(c)) if compensation => &c.task,
            (StepKind::Task(t), _) if !compensation => t,
            _ => unreachable!("task event on step {} without such a task", step.id),
        }
    }

    fn progress(
        &mut self,
        step_path: &str,
        compensation: bool,
    ) -> Result<&mut TaskProgress, String> {
        let run = self.run_mut(step_path)?;
        let progress = if compensation {
            run.compensation.as_mut()
        } else {
            run.task.as_mut()
        };
        progress.ok_or_else(|| format!("no task at {step_path}"))
    }

    /// The attempt in flight at `task_path`, or why a report about `attempt` is stale.
    fn in_flight(&mut self, task_path: &str, attempt: u32) -> Result<&mut TaskProgress, String> {
        let (step_path, compensation) = split(task_path);
        let progress = self.progress(step_path, compensation)?;
        if progress.attempt != attempt || !progress.phase.in_flight() {
            return Err(format!("attempt {attempt} of {task_path} is not in flight"));
        }
        Ok(progress)
    }

    /// Renders the input of a step's task or compensation.
    pub fn task_input(&self, step_path: &str, compensation: bool) -> Result<Json, ErrorInfo> {
        let run = &self.inst.steps[step_path];
        let Some(template) = &self.spec(step_path, compensation).input else {
            return Ok(Json::Null);
        };
        let result = run.result.clone().unwrap_or(Json::Null);
        let bindings = Bindings::new(self.inst, &run.scopes);
        let bindings = if compensation {
            bindings.with("result", &result)
        } else {
            bindings
        };
        template
            .render(&bindings)
            .map_err(|m| ErrorInfo::new(EXPRESSION_ERROR, format!("input: {m}")))
    }

    /// Hands attempt `attempt` to a worker and arms its timeouts.
    pub fn dispatch(&mut self, task_path: &str, spec: &TaskStep, attempt: u32, input: Json) {
        let timer = |kind| TimerId {
            kind,
            path: task_path.to_owned(),
            attempt,
        };
        let start_to_close = spec.timeouts.start_to_close.as_millis() as u64;
        self.effects.push(Effect::DispatchTask(TaskDispatch {
            path: task_path.to_owned(),
            task_type: spec.task_type.clone(),
            attempt,
            input,
            idempotency_key: format!("{}/{task_path}/{attempt}", self.inst.id),
            start_to_close_ms: start_to_close,
            heartbeat_ms: spec.timeouts.heartbeat.map(|d| d.as_millis() as u64),
            schedule_to_start_ms: spec
                .timeouts
                .schedule_to_start
                .map(|d| d.as_millis() as u64),
        }));
        self.renew_lease(task_path, attempt);
        if let Some(d) = spec.timeouts.schedule_to_start {
            let at = self.now + d.as_millis() as u64;
            self.effects.push(Effect::ArmTimer {
                timer: timer(TimerKind::ScheduleToStart),
                at,
            });
        }
    }

    /// Withdraws an attempt's timeouts (only those its step configures).
    fn cancel_attempt_timers(&mut self, task_path: &str, attempt: u32) {
        let (step_path, compensation) = split(task_path);
        let timeouts = &self.spec(step_path, compensation).timeouts;
        let configured = [
            (TimerKind::StartToClose, true),
            (
                TimerKind::ScheduleToStart,
                timeouts.schedule_to_start.is_some(),
            ),
            (TimerKind::Heartbeat, timeouts.heartbeat.is_some()),
        ];
        for (kind, _) in configured.into_iter().filter(|(_, armed)| *armed) {
            let timer = TimerId {
                kind,
                path: task_path.to_owned(),
                attempt,
            };
            self.effects.push(Effect::CancelTimer { timer });
        }
    }

    pub(super) fn task_started(&mut self, task_path: &str, attempt: u32) -> Handled {
        let progress = self.in_flight(task_path, attempt)?;
        if progress.phase == TaskPhase::Running {
            return Err(format!("attempt {attempt} of {task_path} already started"));
        }
        progress.phase = TaskPhase::Running;
        let (step_path, compensation) = split(task_path);
        if !compensation {
            self.run_mut(step_path)?.status = StepStatus::Running;
        }
        if self
            .spec(step_path, compensation)
            .timeouts
            .schedule_to_start
            .is_some()
        {
            let timer = TimerId {
                kind: TimerKind::ScheduleToStart,
                path: task_path.to_owned(),
                attempt,
            };
            self.effects.push(Effect::CancelTimer { timer });
        }
        self.touch_heartbeat(task_path, attempt);
        self.renew_lease(task_path, attempt);
        Ok(())
    }

    /// A heartbeat starts a scheduled attempt, pushes the heartbeat deadline
    /// (when the task has one) and records the progress it carries.
    pub(super) fn task_heartbeat(
        &mut self,
        task_path: &str,
        attempt: u32,
        progress: Option<&Json>,
    ) -> Handled {
        let slot = self.in_flight(task_path, attempt)?;
        if progress.is_some() {
            slot.progress = progress.cloned();
        }
        if slot.phase == TaskPhase::Scheduled {
            return self.task_started(task_path, attempt);
        }
        self.touch_heartbeat(task_path, attempt);
        self.renew_lease(task_path, attempt);
        Ok(())
    }

    /// Starts or extends an attempt's lease: its start-to-close deadline
    /// moves to now + `start_to_close`. Runs at dispatch, when a worker picks
    /// the attempt up, and on every heartbeat.
    fn renew_lease(&mut self, task_path: &str, attempt: u32) {
        let (step_path, compensation) = split(task_path);
        let spec = self.spec(step_path, compensation);
        let at = self.now + spec.timeouts.start_to_close.as_millis() as u64;
        if let Ok(progress) = self.progress(step_path, compensation) {
            progress.lease_deadline = Some(at);
        }
        let timer = TimerId {
            kind: TimerKind::StartToClose,
            path: task_path.to_owned(),
            attempt,
        };
        self.effects.push(Effect::ArmTimer { timer, at });
    }

    /// Pushes the heartbeat deadline of a running attempt forward.
    fn touch_heartbeat(&mut self, task_path: &str, attempt: u32) {
        let (step_path, compensation) = split(task_path);
        let Some(every) = self.spec(step_path, compensation).timeouts.heartbeat else {
            return;
        };
        let at = self.now + every.as_millis() as u64;
        if let Ok(progress) = self.progress(step_path, compensation) {
            progress.heartbeat_deadline = Some(at);
        }
        let timer = TimerId {
            kind: TimerKind::Heartbeat,
            path: task_path.to_owned(),
            attempt,
        };
        self.effects.push(Effect::ArmTimer { timer, at });
    }

    pub(super) fn task_completed(
        &mut self,
        task_path: &str,
        attempt: u32,
        output: &Json,
    ) -> Handled {
        self.in_flight(task_path, attempt)?.phase = TaskPhase::Done;
        self.cancel_attempt_timers(task_path, attempt);
        match split(task_path) {
            (step_path, false) => self.complete_run(step_path, output.clone()),
            (step_path, true) => self.compensation_done(step_path),
        }
        Ok(())
    }

    pub(super) fn task_failed(
        &mut self,
        task_path: &str,
        attempt: u32,
        error: ErrorInfo,
        retryable: bool,
    ) -> Handled {
        self.in_flight(task_path, attempt)?;
        self.cancel_attempt_timers(task_path, attempt);
        self.attempt_failed(task_path, error, retryable);
        Ok(())
    }

    /// Retries with backoff, or fails the task for good.
    fn attempt_failed(&mut self, task_path: &str, error: ErrorInfo, retryable: bool) {
        let (step_path, compensation) = split(task_path);
        let policy = self.spec(step_path, compensation).retry.clone();
        let rolling_back = self.inst.rollback.is_some() && !compensation;
        let id = self.inst.id.clone();
        let now = self.now;
        let progress = self
            .progress(step_path, compensation)
            .expect("checked by caller");
        let used = progress.attempt - progress.series_start + 1;
        let permanent =
            !retryable || policy.non_retryable.contains(&error.code) || used >= policy.max_attempts;
        if permanent || rolling_back {
            progress.phase = TaskPhase::Failed;
            if compensation {
                self.compensation_failed(step_path, error);
            } else {
                self.fail_run(step_path, error);
            }
            return;
        }
        progress.phase = TaskPhase::Backoff;
        let attempt = progress.attempt;
        let at = now + backoff_delay(&policy, &id, task_path, attempt).as_millis() as u64;
        let timer = TimerId {
            kind: TimerKind::Retry,
            path: task_path.to_owned(),
            attempt,
        };
        self.effects.push(Effect::ArmTimer { timer, at });
        if !compensation {
            let run = self.run_mut(step_path).expect("run exists");
            run.status = StepStatus::Retrying;
            run.error = Some(error.at(step_path));
        }
    }

    pub(super) fn task_timer(&mut self, timer: &TimerId) -> Handled {
        let (task_path, attempt) = (timer.path.as_str(), timer.attempt);
        let (step_path, compensation) = split(task_path);
        let progress = self.progress(step_path, compensation)?;
        if progress.attempt != attempt {
            return Err(format!("timer {timer} is stale"));
        }
        let (phase, deadline) = (progress.phase, progress.heartbeat_deadline);
        let lease = progress.lease_deadline;
        let code = match (timer.kind, phase) {
            (TimerKind::Retry, TaskPhase::Backoff) => return self.next_attempt(task_path),
            (TimerKind::StartToClose, p)
                if p.in_flight() && lease.is_none_or(|d| d <= self.now) =>
            {
                START_TO_CLOSE_TIMEOUT
            }
            (TimerKind::ScheduleToStart, TaskPhase::Scheduled) => SCHEDULE_TO_START_TIMEOUT,
            (TimerKind::Heartbeat, TaskPhase::Running)
                if deadline.is_some_and(|d| d <= self.now) =>
            {
                HEARTBEAT_TIMEOUT
            }
            _ => return Err(format!("timer {timer} is stale")),
        };
        self.effects.push(Effect::CancelTask {
            path: task_path.to_owned(),
            attempt,
        });
        self.cancel_attempt_timers(task_path, attempt);
        let message = format!("attempt {attempt} timed out ({code})");
        self.attempt_failed(task_path, ErrorInfo::new(code, message), true);
        Ok(())
    }

    /// Dispatches the next attempt after a backoff (or an incident retry).
    pub fn next_attempt(&mut self, task_path: &str) -> Handled {
        let (step_path, compensation) = split(task_path);
        let progress = self.progress(step_path, compensation)?;
        progress.attempt += 1;
        progress.phase = TaskPhase::Scheduled;
        progress.heartbeat_deadline = None;
        let attempt = progress.attempt;
        if !compensation {
            self.run_mut(step_path)?.status = StepStatus::Scheduled;
        }
        match self.task_input(step_path, compensation) {
            Ok(input) => {
                let spec = self.spec(step_path, compensation);
                self.dispatch(task_path, spec, attempt, input);
            }
            Err(error) => {
                self.progress(step_path, compensation)?.phase = TaskPhase::Failed;
                if compensation {
                    self.compensation_failed(step_path, error);
                } else {
                    self.fail_run(step_path, error);
                }
            }
        }
        Ok(())
    }
}

//! Steps that wait on the world: timers, signals, people and children.

use super::codes::TIMEOUT;
use super::effect::{Effect, TimerId, TimerKind};
use super::machine::{Handled, Machine};
use super::state::*;
use crate::definition::{HumanStep, StepKind, TimeoutAction};
use serde_json::Value as Json;

/// Most signals buffered for await steps not reached yet.
pub const MAX_BUFFERED_SIGNALS: usize = 1000;

impl<'a> Machine<'a> {
    /// A run at `path` that is still running and not in a fallback.
    fn waiting_run(&self, path: &str) -> Result<&StepRun, String> {
        let run = self
            .inst
            .steps
            .get(path)
            .ok_or_else(|| format!("no step run at {path}"))?;
        if run.status != StepStatus::Running || run.fallback.is_some() {
            return Err(format!("{path} is not waiting"));
        }
        Ok(run)
    }

    pub(super) fn wait_timer(&mut self, timer: &TimerId) -> Handled {
        let path = timer.path.as_str();
        let run = self.waiting_run(path)?;
        let step = self.step(&run.step_id);
        match (timer.kind, &step.kind, &run.detail) {
            (TimerKind::Wait, StepKind::Wait(_), _) => self.complete_run(path, Json::Null),
            (
                TimerKind::AwaitTimeout,
                StepKind::Await(wait),
                RunDetail::Await { name, correlation },
            ) => {
                let unsubscribe = Effect::Unsubscribe {
                    name: name.clone(),
                    correlation: correlation.clone(),
                };
                self.effects.push(unsubscribe);
                self.timed_out(path, &wait.on_timeout);
            }
            (
                TimerKind::HumanTimeout,
                StepKind::Human(human),
                RunDetail::Human {
                    escalated: false, ..
                },
            ) => self.human_deadline(path, human),
            (
                TimerKind::HumanEscalation,
                StepKind::Human(human),
                RunDetail::Human {
                    escalated: true, ..
                },
            ) => {
                self.effects.push(Effect::CloseHumanTask {
                    path: path.to_owned(),
                });
                self.timed_out(path, &human.on_timeout);
            }
            _ => return Err(format!("timer {timer} is stale")),
        }
        Ok(())
    }

    /// First deadline of a human step: escalate if configured, else time out.
    fn human_deadline(&mut self, path: &str, human: &'a HumanStep) {
        match (&human.escalate_to, human.escalation_timeout) {
            (Some(to), Some(after)) => {
                if let RunDetail::Human { escalated, .. } =
                    &mut self.run_mut(path).expect("run").detail
                {
                    *escalated = true;
                }
                self.effects.push(Effect::EscalateHumanTask {
                    path: path.to_owned(),
                    assignee: to.clone(),
                });
                let timer = TimerId {
                    kind: TimerKind::HumanEscalation,
                    path: path.to_owned(),
                    attempt: 0,
                };
                self.effects.push(Effect::ArmTimer {
                    timer,
                    at: self.now + after.as_millis() as u64,
                });
            }
            _ => {
                self.effects.push(Effect::CloseHumanTask {
                    path: path.to_owned(),
                });
                self.timed_out(path, &human.on_timeout);
            }
        }
    }

    /// Takes the timeout path of an await or human step.
    fn timed_out(&mut self, path: &str, action: &TimeoutAction) {
        match action {
            TimeoutAction::Fail => self.fail_run(path, ErrorInfo::new(TIMEOUT, "deadline passed")),
            TimeoutAction::Continue => self.complete_run(path, Json::Null),
            TimeoutAction::Steps(_) => {
                self.run_mut(path).expect("run").fallback = Some(Fallback::OnTimeout)
            }
        }
    }

    pub(super) fn signal(&mut self, id: &str, name: &str, payload: &Json) -> Handled {
        if self.inst.seen_signals.contains(id) {
            return Err(format!("signal {id} already applied"));
        }
        let waiting = self
            .inst
            .steps
            .iter()
            .filter(|(_, r)| r.status == StepStatus::Running && r.fallback.is_none())
            .filter(|(_, r)| matches!(&r.detail, RunDetail::Await { name: n, .. } if n == name))
            .min_by_key(|(_, r)| r.order)
            .map(|(path, r)| (path.clone(), r.detail.clone()));
        match waiting {
            Some((path, RunDetail::Await { name, correlation })) => {
                self.effects.push(Effect::Unsubscribe { name, correlation });
                let timer = TimerId {
                    kind: TimerKind::AwaitTimeout,
                    path: path.clone(),
                    attempt: 0,
                };
                self.effects.push(Effect::CancelTimer { timer });
                self.complete_run(&path, payload.clone());
                self.touched = super::machine::Touched::Path(path);
            }
            _ if self.inst.signals.len() >= MAX_BUFFERED_SIGNALS => {
                return Err(format!(
                    "{MAX_BUFFERED_SIGNALS} signals are already buffered"
                ));
            }
            _ => self.inst.signals.push(BufferedSignal {
                name: name.to_owned(),
                payload: payload.clone(),
            }),
        }
        self.inst.seen_signals.insert(id.to_owned());
        Ok(())
    }

    pub(super) fn human_completed(&mut self, path: &str, payload: &Json) -> Handled {
        let run = self.waiting_run(path)?;
        if !matches!(run.detail, RunDetail::Human { .. }) {
            return Err(format!("{path} is not a human task"));
        }
        for kind in [TimerKind::HumanTimeout, TimerKind::HumanEscalation] {
            let timer = TimerId {
                kind,
                path: path.to_owned(),
                attempt: 0,
            };
            self.effects.push(Effect::CancelTimer { timer });
        }
        self.complete_run(path, payload.clone());
        Ok(())
    }

    pub(super) fn child_ended(&mut self, path: &str, outcome: &Result<Json, ErrorInfo>) -> Handled {
        let run = self
            .inst
            .steps
            .get(path)
            .ok_or_else(|| format!("no step run at {path}"))?;
        if run.status != StepStatus::Running || !matches!(run.detail, RunDetail::Child { .. }) {
            return Err(format!("no child is running at {path}"));
        }
        match outcome {
            Ok(output) => self.complete_run(path, output.clone()),
            Err(error) => self.fail_run(path, error.clone()),
        }
        Ok(())
    }
}

//! The forward walk: after every event, walk the definition against the
//! recorded runs, start what should run next and settle containers.

use super::codes::{EXPRESSION_ERROR, LOOP_SPIN};
use super::effect::{Effect, TimerId, TimerKind};
use super::machine::{Frame, Machine, Touched, join};
use super::scope::Bindings;
use super::state::*;
use crate::definition::{ChildStep, Step, StepKind, TimeoutAction, WaitStep};
use serde_json::Value as Json;

/// How far a step (or list of steps) has got.
pub(super) enum Flow {
    /// Ended; carries the result.
    Done(Json),
    /// Still in progress.
    Pending,
    /// Failed for good and unhandled.
    Failed(ErrorInfo),
    /// A `succeed` step ended the instance.
    Succeeded,
}

impl<'a> Machine<'a> {
    /// Moves the instance forward as far as the recorded runs allow.
    pub fn drive(&mut self) {
        if self.inst.status.is_terminal() {
            return;
        }
        if self.inst.rollback.is_some() {
            self.advance_rollback();
            return;
        }
        let def = self.def;
        match self.run_list(&def.steps, "", &Frame::default()) {
            Flow::Pending => {}
            Flow::Succeeded => self.finish(InstanceStatus::Completed),
            Flow::Failed(error) => self.begin_rollback(RollbackCause::Failed, error),
            Flow::Done(_) => {
                let output = match &def.output {
                    Some(t) => t.render(&Bindings::new(self.inst, &[])),
                    None => Ok(Json::Object(self.inst.vars.clone().into_iter().collect())),
                };
                match output {
                    Ok(output) => {
                        self.inst.output = Some(output);
                        self.finish(InstanceStatus::Completed);
                    }
                    Err(msg) => self.begin_rollback(
                        RollbackCause::Failed,
                        ErrorInfo::new(EXPRESSION_ERROR, format!("output: {msg}")),
                    ),
                }
            }
        }
    }

    /// Runs a sequence: each step in turn until one is not done.
    pub(super) fn run_list(&mut self, steps: &'a [Step], prefix: &str, frame: &Frame) -> Flow {
        let mut last = Json::Null;
        for (n, step) in steps.iter().enumerate() {
            let path = join(prefix, &step.id);
            // A settled step before the last: nothing to do, and its result
            // (maybe large) is not the list's.
            if n + 1 < steps.len()
                && self
                    .inst
                    .steps
                    .get(&path)
                    .is_some_and(|r| r.status.is_settled())
            {
                continue;
            }
            match self.run_step(step, &path, frame) {
                Flow::Done(result) => last = result,
                other => return other,
            }
        }
        Flow::Done(last)
    }

    fn run_step(&mut self, step: &'a Step, path: &str, frame: &Frame) -> Flow {
        if !self.inst.steps.contains_key(path)
            && let Some(flow) = self.enter(step, path, frame)
        {
            return flow;
        }
        let run = &self.inst.steps[path];
        match run.status {
            StepStatus::Skipped => Flow::Done(Json::Null),
            StepStatus::Completed | StepStatus::Compensating | StepStatus::Compensated => {
                Flow::Done(run.result.clone().unwrap_or(Json::Null))
            }
            StepStatus::Failed => self.after_failure(step, path, frame),
            StepStatus::Pending
            | StepStatus::Scheduled
            | StepStatus::Running
            | StepStatus::Retrying => self.in_progress(step, path, frame),
        }
    }

    /// A failed step: its `on_failure` steps if any, else the failure itself.
    fn after_failure(&mut self, step: &'a Step, path: &str, frame: &Frame) -> Flow {
        let run = &self.inst.steps[path];
        let error = run.error.clone().expect("failed runs carry an error");
        let Some(fallback) = &step.on_failure else {
            return Flow::Failed(error);
        };
        if let Some(result) = &run.result {
            return Flow::Done(result.clone());
        }
        let key = join(path, "on_failure");
        if run.fallback.is_none() {
            let bound = serde_json::json!({ "code": error.code, "message": error.message });
            self.inst
                .scopes
                .entry(key.clone())
                .or_default()
                .insert("error".into(), bound);
            self.run_mut(path).expect("run exists").fallback = Some(Fallback::OnFailure);
        }
        let flow = self.run_list(fallback, &key, &frame.nested(key.clone(), false));
        if let Flow::Done(result) = &flow {
            let run = self.run_mut(path).expect("run exists");
            run.result = Some(result.clone());
            if let Some(name) = step.output.clone() {
                let scope = run.write_scope.clone();
                self.write_var(scope.as_deref(), name, result.clone());
            }
        }
        flow
    }

    /// A step that is not finished: containers and fallbacks advance, leaves wait.
    fn in_progress(&mut self, step: &'a Step, path: &str, frame: &Frame) -> Flow {
        let flow = match &step.kind {
            StepKind::Parallel(branches) => self.parallel(branches, path, frame),
            StepKind::Choice(choice) => {
                let RunDetail::Choice { branch: Some(b) } = self.inst.steps[path].detail else {
                    unreachable!("a running choice has a branch")
                };
                let steps = choice.branches.get(b).map_or_else(
                    || {
                        choice
                            .otherwise
                            .as_deref()
                            .expect("branch past the whens is otherwise")
                    },
                    |branch| &branch.steps,
                );
                self.run_list(steps, &join(path, b), frame)
            }
            StepKind::Foreach(each) => self.foreach(each, path, frame),
            StepKind::Loop(each) => self.run_loop(step, each, path, frame),
            StepKind::Human(h) if self.inst.steps[path].fallback.is_some() => {
                self.on_timeout(&h.on_timeout, path, frame)
            }
            StepKind::Await(a) if self.inst.steps[path].fallback.is_some() => {
                self.on_timeout(&a.on_timeout, path, frame)
            }
            _ => return Flow::Pending,
        };
        if let Flow::Done(result) = &flow {
            self.complete_run(path, result.clone());
        }
        flow
    }

    fn on_timeout(&mut self, action: &'a TimeoutAction, path: &str, frame: &Frame) -> Flow {
        let TimeoutAction::Steps(steps) = action else {
            unreachable!("only step lists run as fallback")
        };
        self.run_list(steps, &join(path, "on_timeout"), frame)
    }

    fn parallel(&mut self, branches: &'a [Vec<Step>], path: &str, frame: &Frame) -> Flow {
        let mut results = Vec::with_capacity(branches.len());
        let mut pending = false;
        for (b, branch) in branches.iter().enumerate() {
            match self.run_list(branch, &join(path, b), frame) {
                Flow::Done(result) => results.push(result),
                Flow::Pending => pending = true,
                other => return other,
            }
        }
        if pending {
            Flow::Pending
        } else {
            Flow::Done(Json::Array(results))
        }
    }

    /// A foreach advances only the iterations the event touched, then
    /// starts new ones while there is room; an iteration that finishes is
    /// folded out of the state. Its cost per event does not grow with the
    /// number of items.
    fn foreach(
        &mut self,
        each: &'a crate::definition::ForeachStep,
        path: &str,
        frame: &Frame,
    ) -> Flow {
        let touched: Vec<usize> = match (&self.touched, self.foreach_detail(path)) {
            (Touched::All, (_, _, active)) => active.iter().copied().collect(),
            (Touched::Path(p), (_, _, active)) => iteration_under(p, path)
                .filter(|i| active.contains(i))
                .into_iter()
                .collect(),
            (Touched::Nothing, _) => Vec::new(),
        };
        for i in touched {
            if let Some(flow) = self.walk_iteration(each, path, i, frame) {
                return flow;
            }
        }
        loop {
            let (total, started, active) = self.foreach_detail(path);
            if started == total || active.len() >= each.concurrency as usize {
                break;
            }
            let RunDetail::Foreach {
                items,
                started,
                active,
                results,
            } = &mut self.run_mut(path).expect("run").detail
            else {
                unreachable!("a running foreach has items")
            };
            let (i, item) = (*started, items[*started].clone());
            *started += 1;
            active.insert(i);
            results.push(Json::Null);
            self.inst
                .scopes
                .entry(join(path, i))
                .or_default()
                .insert(each.var.clone(), item);
            if let Some(flow) = self.walk_iteration(each, path, i, frame) {
                return flow;
            }
        }
        let (total, started, active) = self.foreach_detail(path);
        if started < total || !active.is_empty() {
            return Flow::Pending;
        }
        let RunDetail::Foreach { results, .. } = &self.inst.steps[path].detail else {
            unreachable!("a running foreach has items")
        };
        Flow::Done(Json::Array(results.clone()))
    }

    /// A loop runs its current iteration; when it ends (and is folded away),
    /// the condition decides on the next. Iterations that end without
    /// waiting are bounded: by `max_iterations`, or else by the spin limit.
    fn run_loop(
        &mut self,
        step: &'a Step,
        each: &'a crate::definition::LoopStep,
        path: &str,
        frame: &Frame,
    ) -> Flow {
        let mut ended_here = 0;
        loop {
            let RunDetail::Loop {
                iterations,
                running,
                ..
            } = self.inst.steps[path].detail
            else {
                unreachable!("a running loop has its progress")
            };
            if running {
                let key = join(path, iterations - 1);
                match self.run_list(&each.steps, &key, &frame.nested(key.clone(), false)) {
                    Flow::Done(result) => {
                        if let RunDetail::Loop { running, last, .. } =
                            &mut self.run_mut(path).expect("run").detail
                        {
                            *running = false;
                            *last = result;
                        }
                        self.fold(&key);
                        ended_here += 1;
                    }
                    other => return other,
                }
            }
            let done = || {
                let RunDetail::Loop { last, .. } = &self.inst.steps[path].detail else {
                    unreachable!("a running loop has its progress")
                };
                Flow::Done(serde_json::json!({ "iterations": iterations, "last": last }))
            };
            match each.max_iterations {
                Some(max) if iterations >= max => return done(),
                None if ended_here >= crate::definition::LoopStep::SPIN_LIMIT => {
                    let error = ErrorInfo::new(
                        LOOP_SPIN,
                        format!(
                            "{ended_here} iterations ended without waiting; give the loop max_iterations or a step that waits"
                        ),
                    );
                    self.fail_run(path, error);
                    return self.after_failure(step, path, frame);
                }
                _ => {}
            }
            let index = Json::from(iterations);
            let bindings = Bindings::new(self.inst, &frame.scopes).with("iteration", &index);
            match each.condition.eval_bool(&bindings) {
                Ok(false) => return done(),
                Ok(true) => {}
                Err(msg) => {
                    let error = ErrorInfo::new(EXPRESSION_ERROR, format!("loop: {msg}"));
                    self.fail_run(path, error);
                    return self.after_failure(step, path, frame);
                }
            }
            self.inst
                .scopes
                .entry(join(path, iterations))
                .or_default()
                .insert("iteration".into(), index);
            if let RunDetail::Loop {
                iterations,
                running,
                ..
            } = &mut self.run_mut(path).expect("run").detail
            {
                *iterations += 1;
                *running = true;
            }
        }
    }

    /// `(items, started, active iterations)` of the foreach at `path`.
    fn foreach_detail(&self, path: &str) -> (usize, usize, &std::collections::BTreeSet<usize>) {
        let RunDetail::Foreach {
            items,
            started,
            active,
            ..
        } = &self.inst.steps[path].detail
        else {
            unreachable!("a running foreach has items")
        };
        (items.len(), *started, active)
    }

    /// Walks iteration `i`; a finished one is recorded and folded. Returns a
    /// flow when the iteration failed (or otherwise ends the foreach).
    fn walk_iteration(
        &mut self,
        each: &'a crate::definition::ForeachStep,
        path: &str,
        i: usize,
        frame: &Frame,
    ) -> Option<Flow> {
        let key = join(path, i);
        match self.run_list(&each.steps, &key, &frame.nested(key.clone(), true)) {
            Flow::Done(result) => {
                let RunDetail::Foreach {
                    active, results, ..
                } = &mut self.run_mut(path).expect("run").detail
                else {
                    unreachable!("a running foreach has items")
                };
                active.remove(&i);
                results[i] = result;
                self.fold(&key);
                None
            }
            Flow::Pending => None,
            other => Some(other),
        }
    }

    /// Takes the runs of a finished iteration out of the state: compensable
    /// completed runs move to `folded` (rollback still needs them, with the
    /// iteration's scopes), the others are archived and counted.
    fn fold(&mut self, key: &str) {
        let prefix = format!("{key}/");
        let paths: Vec<String> = self
            .inst
            .steps
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .map(|(p, _)| p.clone())
            .collect();
        let mut archived = Vec::new();
        let mut keep_scopes = false;
        for p in paths {
            let run = self.inst.steps.remove(&p).expect("listed above");
            let compensable = self.step(&run.step_id).compensate.is_some();
            if run.status == StepStatus::Completed && compensable {
                keep_scopes = true;
                self.inst.folded.insert(p, run);
            } else {
                *self.inst.archived.entry(run.status).or_default() += 1;
                archived.push((p, run));
            }
        }
        if !keep_scopes {
            self.inst.scopes.remove(key);
            let nested: Vec<String> = self
                .inst
                .scopes
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, _)| k.clone())
                .collect();
            for k in nested {
                self.inst.scopes.remove(&k);
            }
        }
        if !archived.is_empty() {
            self.effects.push(Effect::ArchiveRuns { runs: archived });
        }
    }

    /// First visit of a step: create its run and start it. Returns a flow when
    /// the step settles at once without a run to inspect.
    fn enter(&mut self, step: &'a Step, path: &str, frame: &Frame) -> Option<Flow> {
        let bindings = Bindings::new(self.inst, &frame.scopes);
        if let Some(condition) = &step.condition {
            match condition.eval_bool(&bindings) {
                Ok(true) => {}
                Ok(false) => {
                    self.new_run(path, step, frame, StepStatus::Skipped, RunDetail::None);
                    self.run_mut(path).expect("run").ended_at = Some(self.now);
                    return Some(Flow::Done(Json::Null));
                }
                Err(msg) => {
                    return Some(self.expression_failure(step, path, frame, &format!("if: {msg}")));
                }
            }
        }
        match &step.kind {
            StepKind::Task(task) => {
                self.new_run(path, step, frame, StepStatus::Scheduled, RunDetail::None);
                self.run_mut(path).expect("run").task = Some(TaskProgress {
                    attempt: 1,
                    series_start: 1,
                    phase: TaskPhase::Scheduled,
                    heartbeat_deadline: None,
                    lease_deadline: None,
                    progress: None,
                });
                match self.task_input(path, false) {
                    Ok(input) => self.dispatch(path, task, 1, input),
                    Err(error) => {
                        self.run_mut(path)
                            .expect("run")
                            .task
                            .as_mut()
                            .expect("task")
                            .phase = TaskPhase::Failed;
                        self.fail_run(path, error);
                    }
                }
            }
            StepKind::Parallel(_) => {
                self.new_run(path, step, frame, StepStatus::Running, RunDetail::None)
            }
            StepKind::Choice(choice) => {
                let mut chosen = None;
                for (b, branch) in choice.branches.iter().enumerate() {
                    match branch.when.eval_bool(&bindings) {
                        Ok(true) => {
                            chosen = Some(b);
                            break;
                        }
                        Ok(false) => {}
                        Err(msg) => {
                            let msg = format!("choice[{b}].when: {msg}");
                            return Some(self.expression_failure(step, path, frame, &msg));
                        }
                    }
                }
                let branch = chosen.or(choice.otherwise.as_ref().map(|_| choice.branches.len()));
                let status = if branch.is_some() {
                    StepStatus::Running
                } else {
                    StepStatus::Skipped
                };
                self.new_run(path, step, frame, status, RunDetail::Choice { branch });
                if branch.is_none() {
                    self.run_mut(path).expect("run").ended_at = Some(self.now);
                }
            }
            StepKind::Foreach(each) => match each.items.eval(&bindings) {
                Ok(Json::Array(items)) => self.new_run(
                    path,
                    step,
                    frame,
                    StepStatus::Running,
                    RunDetail::Foreach {
                        items,
                        started: 0,
                        active: Default::default(),
                        results: Vec::new(),
                    },
                ),
                Ok(other) => {
                    let msg = format!(
                        "foreach: expected a list, got {}",
                        crate::expr::type_name(&other)
                    );
                    return Some(self.expression_failure(step, path, frame, &msg));
                }
                Err(msg) => {
                    return Some(self.expression_failure(
                        step,
                        path,
                        frame,
                        &format!("foreach: {msg}"),
                    ));
                }
            },
            StepKind::Loop(_) => self.new_run(
                path,
                step,
                frame,
                StepStatus::Running,
                RunDetail::Loop {
                    iterations: 0,
                    running: false,
                    last: Json::Null,
                },
            ),
            StepKind::Human(human) => {
                let input = match human
                    .input
                    .as_ref()
                    .map(|t| t.render(&bindings))
                    .transpose()
                {
                    Ok(input) => input.unwrap_or(Json::Null),
                    Err(msg) => {
                        return Some(self.expression_failure(
                            step,
                            path,
                            frame,
                            &format!("input: {msg}"),
                        ));
                    }
                };
                self.new_run(
                    path,
                    step,
                    frame,
                    StepStatus::Running,
                    RunDetail::Human {
                        escalated: false,
                        input: input.clone(),
                    },
                );
                self.effects.push(Effect::OpenHumanTask {
                    path: path.to_owned(),
                    assignee: human.assignee.clone(),
                    input,
                });
                self.arm_deadline(TimerKind::HumanTimeout, path, human.timeout);
            }
            StepKind::Await(wait) => {
                let correlation = match wait
                    .correlation
                    .as_ref()
                    .map(|t| t.render(&bindings))
                    .transpose()
                {
                    Ok(value) => value.map(|v| match v {
                        Json::String(s) => s,
                        other => other.to_string(),
                    }),
                    Err(msg) => {
                        return Some(self.expression_failure(
                            step,
                            path,
                            frame,
                            &format!("correlation: {msg}"),
                        ));
                    }
                };
                let detail = RunDetail::Await {
                    name: wait.name.clone(),
                    correlation: correlation.clone(),
                };
                self.new_run(path, step, frame, StepStatus::Running, detail);
                if let Some(i) = self.inst.signals.iter().position(|s| s.name == wait.name) {
                    let signal = self.inst.signals.remove(i);
                    self.complete_run(path, signal.payload);
                } else {
                    self.effects.push(Effect::Subscribe {
                        name: wait.name.clone(),
                        correlation,
                    });
                    self.arm_deadline(TimerKind::AwaitTimeout, path, wait.timeout);
                }
            }
            StepKind::Wait(wait) => {
                let at = match wait {
                    WaitStep::For(d) => Ok(self.now.saturating_add(d.as_millis() as u64)),
                    WaitStep::Until(expr) => expr.eval(&bindings).and_then(|v| parse_instant(&v)),
                };
                match at {
                    Ok(at) => {
                        self.new_run(path, step, frame, StepStatus::Running, RunDetail::None);
                        let timer = TimerId {
                            kind: TimerKind::Wait,
                            path: path.to_owned(),
                            attempt: 0,
                        };
                        self.effects.push(Effect::ArmTimer { timer, at });
                    }
                    Err(msg) => {
                        return Some(self.expression_failure(
                            step,
                            path,
                            frame,
                            &format!("until: {msg}"),
                        ));
                    }
                }
            }
            StepKind::Workflow(ChildStep {
                name,
                version,
                input,
            }) => {
                let input = match input.as_ref().map(|t| t.render(&bindings)).transpose() {
                    Ok(input) => input.unwrap_or(Json::Null),
                    Err(msg) => {
                        return Some(self.expression_failure(
                            step,
                            path,
                            frame,
                            &format!("input: {msg}"),
                        ));
                    }
                };
                let child_id = format!("{}/{path}", self.inst.id);
                self.new_run(
                    path,
                    step,
                    frame,
                    StepStatus::Running,
                    RunDetail::Child {
                        child_id: child_id.clone(),
                    },
                );
                self.effects.push(Effect::StartChild {
                    path: path.to_owned(),
                    child_id,
                    definition: name.clone(),
                    version: *version,
                    input,
                });
            }
            StepKind::Set(vars) => {
                let rendered: Result<Vec<(String, Json)>, String> = vars
                    .iter()
                    .map(|(name, t)| {
                        t.render(&bindings)
                            .map(|v| (name.clone(), v))
                            .map_err(|m| format!("{name}: {m}"))
                    })
                    .collect();
                match rendered {
                    Ok(values) => {
                        self.new_run(path, step, frame, StepStatus::Running, RunDetail::None);
                        for (name, value) in &values {
                            self.write_var(frame.write.as_deref(), name.clone(), value.clone());
                        }
                        self.complete_run(path, Json::Object(values.into_iter().collect()));
                    }
                    Err(msg) => {
                        return Some(self.expression_failure(
                            step,
                            path,
                            frame,
                            &format!("set.{msg}"),
                        ));
                    }
                }
            }
            StepKind::Fail(fail) => {
                let message = match fail
                    .message
                    .as_ref()
                    .map(|t| t.render(&bindings))
                    .transpose()
                {
                    Ok(Some(Json::String(s))) => s,
                    Ok(Some(other)) => other.to_string(),
                    Ok(None) => format!("failed by step {}", step.id),
                    Err(msg) => {
                        return Some(self.expression_failure(
                            step,
                            path,
                            frame,
                            &format!("message: {msg}"),
                        ));
                    }
                };
                self.new_run(path, step, frame, StepStatus::Running, RunDetail::None);
                self.fail_run(path, ErrorInfo::new(fail.code.clone(), message));
            }
            StepKind::Succeed(output) => {
                let output = match output.as_ref().map(|t| t.render(&bindings)).transpose() {
                    Ok(Some(v)) => v,
                    Ok(None) => Json::Object(self.inst.vars.clone().into_iter().collect()),
                    Err(msg) => {
                        return Some(self.expression_failure(
                            step,
                            path,
                            frame,
                            &format!("output: {msg}"),
                        ));
                    }
                };
                self.new_run(path, step, frame, StepStatus::Running, RunDetail::None);
                self.complete_run(path, output.clone());
                self.inst.output = Some(output);
                return Some(Flow::Succeeded);
            }
        }
        None
    }

    /// Records a step that failed because an expression failed, and reports it.
    fn expression_failure(
        &mut self,
        step: &'a Step,
        path: &str,
        frame: &Frame,
        message: &str,
    ) -> Flow {
        self.new_run(path, step, frame, StepStatus::Running, RunDetail::None);
        self.fail_run(path, ErrorInfo::new(EXPRESSION_ERROR, message));
        self.after_failure(step, path, frame)
    }

    fn arm_deadline(&mut self, kind: TimerKind, path: &str, deadline: crate::definition::Deadline) {
        if let crate::definition::Deadline::After(d) = deadline {
            let timer = TimerId {
                kind,
                path: path.to_owned(),
                attempt: 0,
            };
            self.effects.push(Effect::ArmTimer {
                timer,
                at: self.now.saturating_add(d.as_millis() as u64),
            });
        }
    }
}

/// An `until` value: epoch milliseconds or an RFC 3339 timestamp.
fn parse_instant(value: &Json) -> Result<Millis, String> {
    match value {
        Json::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("{n} is not a time in epoch milliseconds")),
        Json::String(s) => humantime::parse_rfc3339_weak(s)
            .map_err(|e| format!("{s:?} is not an RFC 3339 timestamp: {e}"))
            .and_then(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .map_err(|_| format!("{s:?} is before 1970"))
            }),
        other => Err(format!(
            "expected a timestamp, got {}",
            crate::expr::type_name(other)
        )),
    }
}

/// The iteration index of `touched` when it lies under the foreach at `path`
/// (`{path}/{i}/...`).
fn iteration_under(touched: &str, path: &str) -> Option<usize> {
    let rest = if path.is_empty() {
        touched
    } else {
        touched.strip_prefix(path)?.strip_prefix('/')?
    };
    let (index, _) = rest.split_once('/')?;
    index.parse().ok()
}

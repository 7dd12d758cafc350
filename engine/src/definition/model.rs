//! The workflow definition model: what a validated YAML/JSON document becomes.
//!
//! Every type here is immutable once built and cheap to share (`Arc`); the
//! engine walks it while keeping all mutable progress in the instance state.
//! The document schema is described in `docs/workflow-language.md`.

use crate::expr::{Expr, Template};
use std::collections::BTreeMap;
use std::time::Duration;

/// A deployed workflow definition, pinned by `name` and `version`.
#[derive(Debug, Clone)]
pub struct Definition {
    /// Definition name, e.g. `order-fulfillment`.
    pub name: String,
    /// Positive integer version; instances stay on the version they started with.
    pub version: u32,
    /// Free text for people.
    pub description: Option<String>,
    /// The top-level sequence.
    pub steps: Vec<Step>,
    /// Instance output on completion; when absent, the instance's variables.
    pub output: Option<Template>,
}

/// One step: an id, an optional guard, what it does, and where its result goes.
#[derive(Debug, Clone)]
pub struct Step {
    /// Unique across the whole definition.
    pub id: String,
    /// `if:` guard; when it evaluates to false the step is skipped.
    pub condition: Option<Expr>,
    /// What the step does.
    pub kind: StepKind,
    /// Variable that receives the step's result.
    pub output: Option<String>,
    /// Undo action run during rollback once this step has completed.
    pub compensate: Option<Compensation>,
    /// Steps that run instead of failing the instance when this step fails for good.
    pub on_failure: Option<Vec<Step>>,
}

/// The kinds of step of the workflow language.
#[derive(Debug, Clone)]
pub enum StepKind {
    /// Run a task (builtin or served by workers).
    Task(TaskStep),
    /// Run branches at once; ends when every branch ends.
    Parallel(Vec<Vec<Step>>),
    /// Run the first branch whose condition holds, else `otherwise`.
    Choice(ChoiceStep),
    /// Run the body once per item of a list, up to `concurrency` at a time.
    Foreach(ForeachStep),
    /// Run the body again and again while a condition holds.
    Loop(LoopStep),
    /// Wait for a person's decision, with timeout and escalation.
    Human(HumanStep),
    /// Wait for a named signal or correlated event.
    Await(AwaitStep),
    /// A durable timer.
    Wait(WaitStep),
    /// Start a child workflow and wait for it to end.
    Workflow(ChildStep),
    /// Assign variables.
    Set(BTreeMap<String, Template>),
    /// End the instance as failed (rolling back what completed).
    Fail(FailStep),
    /// End the instance as completed at once.
    Succeed(Option<Template>),
}

/// A task step.
#[derive(Debug, Clone)]
pub struct TaskStep {
    /// Task type: a builtin (`noop`, `http`) or a type workers poll for.
    pub task_type: String,
    /// Input mapping; `null` when absent.
    pub input: Option<Template>,
    /// Retry policy for transient failures.
    pub retry: RetryPolicy,
    /// Timeouts per attempt.
    pub timeouts: Timeouts,
}

/// An undo action: a task with its own retry policy and timeouts.
#[derive(Debug, Clone)]
pub struct Compensation {
    /// The task that undoes the step.
    pub task: TaskStep,
}

/// Retry policy: `min(initial_delay * multiplier^n, max_delay)` with jitter.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means no retry.
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub initial_delay: Duration,
    /// Upper bound on any delay.
    pub max_delay: Duration,
    /// Growth factor per attempt, at least 1.
    pub multiplier: f64,
    /// Fraction of the delay drawn at random (deterministically), 0 to 1.
    pub jitter: f64,
    /// Error codes that skip remaining retries.
    pub non_retryable: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.1,
            non_retryable: Vec::new(),
        }
    }
}

/// Per-attempt timeouts of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    /// From dispatch to completion of one attempt.
    pub start_to_close: Duration,
    /// From dispatch until a worker picks the task up.
    pub schedule_to_start: Option<Duration>,
    /// Longest silence between heartbeats of a running attempt.
    pub heartbeat: Option<Duration>,
}

impl Timeouts {
    /// Start-to-close applied when a definition names none: nothing waits forever.
    pub const DEFAULT_START_TO_CLOSE: Duration = Duration::from_secs(300);
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            start_to_close: Self::DEFAULT_START_TO_CLOSE,
            schedule_to_start: None,
            heartbeat: None,
        }
    }
}

/// A choice step.
#[derive(Debug, Clone)]
pub struct ChoiceStep {
    /// Conditional branches, tried in order.
    pub branches: Vec<ChoiceBranch>,
    /// Branch taken when no condition holds; without it the step is skipped.
    pub otherwise: Option<Vec<Step>>,
}

/// One `when` branch of a choice.
#[derive(Debug, Clone)]
pub struct ChoiceBranch {
    /// CEL condition.
    pub when: Expr,
    /// Steps run when it holds.
    pub steps: Vec<Step>,
}

/// A foreach step.
#[derive(Debug, Clone)]
pub struct ForeachStep {
    /// CEL expression yielding a list.
    pub items: Expr,
    /// Name the current item is bound to inside the body.
    pub var: String,
    /// Iterations running at once, at least 1.
    pub concurrency: u32,
    /// The body, run once per item.
    pub steps: Vec<Step>,
}

/// A loop step: `loop: <CEL condition>` with `steps`, checked before each
/// iteration; the body's outputs go to the enclosing variables, so that the
/// condition sees what the last iteration did. Its result is
/// `{iterations, last}` (the last iteration's result).
#[derive(Debug, Clone)]
pub struct LoopStep {
    /// Checked before each iteration; the loop ends when it is false.
    pub condition: Expr,
    /// Most iterations; the loop ends after them. Without it, a loop whose
    /// iterations end without waiting on anything fails after
    /// [`LoopStep::SPIN_LIMIT`] in a row.
    pub max_iterations: Option<u64>,
    /// The body.
    pub steps: Vec<Step>,
}

impl LoopStep {
    /// Iterations a loop without `max_iterations` may run without waiting.
    pub const SPIN_LIMIT: u64 = 1000;
}

/// How long an await or human step may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// Time out after this long.
    After(Duration),
    /// Wait forever; must be written out as `timeout: never`.
    Never,
}

/// What happens when an await or human step times out.
#[derive(Debug, Clone)]
pub enum TimeoutAction {
    /// The step fails with code `timeout` (not retried).
    Fail,
    /// The step completes with a `null` result.
    Continue,
    /// These steps run in its place; their last result is the step's result.
    Steps(Vec<Step>),
}

/// A human task step.
#[derive(Debug, Clone)]
pub struct HumanStep {
    /// Who should decide (a user or group name).
    pub assignee: String,
    /// What the person is shown.
    pub input: Option<Template>,
    /// Time to decide before escalation (or the timeout path).
    pub timeout: Deadline,
    /// Who gets the task when the first timeout passes.
    pub escalate_to: Option<String>,
    /// Time the escalation target has before the timeout path.
    pub escalation_timeout: Option<Duration>,
    /// What happens when the last deadline passes.
    pub on_timeout: TimeoutAction,
}

/// An await step: waits for a signal sent to the instance or a correlated event.
#[derive(Debug, Clone)]
pub struct AwaitStep {
    /// Signal or event name.
    pub name: String,
    /// Correlation key for published events (`${...}` template).
    pub correlation: Option<Template>,
    /// How long to wait.
    pub timeout: Deadline,
    /// What happens on timeout.
    pub on_timeout: TimeoutAction,
}

/// A durable timer.
#[derive(Debug, Clone)]
pub enum WaitStep {
    /// Wait this long.
    For(Duration),
    /// Wait until the timestamp (RFC 3339 string or epoch milliseconds) the expression yields.
    Until(Expr),
}

/// A child workflow step.
#[derive(Debug, Clone)]
pub struct ChildStep {
    /// Child definition name.
    pub name: String,
    /// Pinned version; the latest at start when absent.
    pub version: Option<u32>,
    /// Child input mapping.
    pub input: Option<Template>,
}

/// A fail step.
#[derive(Debug, Clone)]
pub struct FailStep {
    /// Error code recorded on the instance.
    pub code: String,
    /// Message, may use `${...}`.
    pub message: Option<Template>,
}

impl Definition {
    /// Every step of the definition, depth first, containers before their children.
    pub fn all_steps(&self) -> Vec<&Step> {
        let mut out = Vec::new();
        collect(&self.steps, &mut out);
        out
    }

    /// The step with this id, wherever it is nested.
    pub fn step(&self, id: &str) -> Option<&Step> {
        find(&self.steps, id)
    }
}

fn find<'a>(steps: &'a [Step], id: &str) -> Option<&'a Step> {
    steps.iter().find_map(|s| {
        if s.id == id {
            Some(s)
        } else {
            s.bodies().into_iter().find_map(|b| find(b, id))
        }
    })
}

fn collect<'a>(steps: &'a [Step], out: &mut Vec<&'a Step>) {
    for step in steps {
        out.push(step);
        for body in step.bodies() {
            collect(body, out);
        }
    }
}

impl Step {
    /// The nested step lists of this step, in declaration order.
    pub fn bodies(&self) -> Vec<&[Step]> {
        let mut out: Vec<&[Step]> = match &self.kind {
            StepKind::Parallel(branches) => branches.iter().map(Vec::as_slice).collect(),
            StepKind::Choice(choice) => {
                let mut v: Vec<&[Step]> =
                    choice.branches.iter().map(|b| b.steps.as_slice()).collect();
                v.extend(choice.otherwise.as_deref());
                v
            }
            StepKind::Foreach(each) => vec![each.steps.as_slice()],
            StepKind::Loop(each) => vec![each.steps.as_slice()],
            StepKind::Human(HumanStep {
                on_timeout: TimeoutAction::Steps(s),
                ..
            })
            | StepKind::Await(AwaitStep {
                on_timeout: TimeoutAction::Steps(s),
                ..
            }) => {
                vec![s.as_slice()]
            }
            _ => Vec::new(),
        };
        out.extend(self.on_failure.as_deref());
        out
    }

    /// Short name of the step kind, as written in documents.
    pub fn kind_name(&self) -> &'static str {
        match &self.kind {
            StepKind::Task(_) => "task",
            StepKind::Parallel(_) => "parallel",
            StepKind::Choice(_) => "choice",
            StepKind::Foreach(_) => "foreach",
            StepKind::Loop(_) => "loop",
            StepKind::Human(_) => "human",
            StepKind::Await(_) => "await",
            StepKind::Wait(_) => "wait",
            StepKind::Workflow(_) => "workflow",
            StepKind::Set(_) => "set",
            StepKind::Fail(_) => "fail",
            StepKind::Succeed(_) => "succeed",
        }
    }
}

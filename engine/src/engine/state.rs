//! The durable state of one workflow instance.
//!
//! Everything here is plain data, serializable, and rebuilt exactly by
//! replaying the instance's events (`Instance::replay`).

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet};

/// Milliseconds since the Unix epoch; all engine time comes from events.
pub type Millis = u64;

/// Lifecycle of an instance.
///
/// Stored by position in compact records: add variants at the end only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    /// Work is dispatched or being retried.
    Running,
    /// Only timers, signals, people or children are awaited.
    Waiting,
    /// Ended successfully.
    Completed,
    /// Failed with nothing to compensate.
    Failed,
    /// Rolling back completed steps.
    Compensating,
    /// Rolled back after a failure.
    Compensated,
    /// A compensation failed for good; an incident is open.
    CompensationFailed,
    /// Cancelled (and rolled back).
    Cancelled,
}

impl InstanceStatus {
    /// Whether the instance has ended for good.
    pub fn is_terminal(self) -> bool {
        match self {
            Self::Completed | Self::Failed | Self::Compensated | Self::Cancelled => true,
            Self::Running | Self::Waiting | Self::Compensating | Self::CompensationFailed => false,
        }
    }

    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Waiting => "waiting",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Compensating => "compensating",
            Self::Compensated => "compensated",
            Self::CompensationFailed => "compensation_failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Lifecycle of one step run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not reached yet (only in views).
    Pending,
    /// A task attempt is dispatched, not yet picked up.
    Scheduled,
    /// In progress (task picked up, timer armed, waiting for a signal or person, container running).
    Running,
    /// Ended successfully.
    Completed,
    /// Ended in failure.
    Failed,
    /// Waiting for the backoff before the next attempt.
    Retrying,
    /// Its compensation is running.
    Compensating,
    /// Its compensation completed (or an operator resolved it).
    Compensated,
    /// Not run: guard false, choice without a match, or never reached.
    Skipped,
}

impl StepStatus {
    /// Whether the run is done with in forward progress: its flow is a result.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Compensating | Self::Compensated | Self::Skipped
        )
    }

    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Retrying => "retrying",
            Self::Compensating => "compensating",
            Self::Compensated => "compensated",
            Self::Skipped => "skipped",
        }
    }
}

/// An error with a stable code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Machine-readable code, e.g. `card_declined`, `start_to_close_timeout`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Path of the step it came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
}

impl ErrorInfo {
    /// An error with no step attached.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            step: None,
        }
    }

    /// The same error attributed to `step`.
    pub fn at(mut self, step: &str) -> Self {
        self.step.get_or_insert_with(|| step.to_owned());
        self
    }
}

/// Progress of a task (a step's own task or its compensation) across attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskProgress {
    /// Current attempt, from 1.
    pub attempt: u32,
    /// First attempt of the current series (an incident retry starts a new one).
    pub series_start: u32,
    /// Where the current attempt stands.
    pub phase: TaskPhase,
    /// When the running attempt times out for lack of heartbeats.
    pub heartbeat_deadline: Option<Millis>,
    /// When the attempt's lease (start-to-close) ends: set at dispatch,
    /// renewed when a worker picks the attempt up and on every heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_deadline: Option<Millis>,
    /// Progress from the attempt's last heartbeat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<serde_json::Value>,
}

/// Where a task attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskPhase {
    /// Dispatched, not picked up.
    Scheduled,
    /// Picked up by a worker.
    Running,
    /// Waiting for the retry backoff.
    Backoff,
    /// Completed.
    Done,
    /// Failed for good.
    Failed,
}

impl TaskPhase {
    /// Whether an attempt is out with a worker.
    pub fn in_flight(self) -> bool {
        matches!(self, Self::Scheduled | Self::Running)
    }
}

/// Which nested list of a leaf step is running in its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// `on_failure` steps after the step failed for good.
    OnFailure,
    /// `on_timeout` steps after an await or human step timed out.
    OnTimeout,
}

/// One run of a step at one path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRun {
    /// The definition's step id.
    pub step_id: String,
    /// Current status.
    pub status: StepStatus,
    /// When the step was reached.
    pub started_at: Millis,
    /// When it ended.
    pub ended_at: Option<Millis>,
    /// Its result once completed.
    pub result: Option<Json>,
    /// Its error once failed.
    pub error: Option<ErrorInfo>,
    /// Scope keys visible to it, outermost first.
    pub scopes: Vec<String>,
    /// Scope its output variable is written to (`None`: instance variables).
    pub write_scope: Option<String>,
    /// Order in which runs were reached, for fair signal delivery.
    pub order: u64,
    /// The step's own task, for task steps.
    pub task: Option<TaskProgress>,
    /// Its compensation, once rollback reaches it.
    pub compensation: Option<TaskProgress>,
    /// A fallback list running in its place.
    pub fallback: Option<Fallback>,
    /// Kind-specific progress.
    pub detail: RunDetail,
}

/// Kind-specific progress of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunDetail {
    /// Nothing beyond the status.
    None,
    /// A choice: the branch taken.
    Choice {
        /// Index of the branch (otherwise is `branches.len()`), `None` when skipped.
        branch: Option<usize>,
    },
    /// A foreach: the items, which iterations run, and the results of
    /// those that finished (their runs are folded away, see
    /// [`Instance::folded`]).
    Foreach {
        /// The evaluated list.
        items: Vec<Json>,
        /// Iterations started so far.
        started: usize,
        /// Iterations started and not finished.
        active: BTreeSet<usize>,
        /// Result of each started iteration (`null` until it finishes).
        results: Vec<Json>,
    },
    /// A loop: iterations started, whether the last one still runs, and the
    /// result of the last one that ended (earlier ones are folded away).
    Loop {
        /// Iterations started so far.
        iterations: u64,
        /// Whether iteration `iterations - 1` is still running.
        running: bool,
        /// Result of the last iteration that ended.
        last: Json,
    },
    /// A human task: whether it was escalated, and what the person is shown
    /// (kept so that an escalation can rewrite the whole task record).
    Human {
        /// Escalated to `escalate_to`.
        escalated: bool,
        /// The rendered input.
        #[serde(default)]
        input: Json,
    },
    /// An await: what it waits for.
    Await {
        /// Signal or event name.
        name: String,
        /// Correlation key.
        correlation: Option<String>,
    },
    /// A child workflow.
    Child {
        /// The child's instance id.
        child_id: String,
    },
}

/// A signal that arrived before an await step asked for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BufferedSignal {
    /// Signal name.
    pub name: String,
    /// Its payload.
    pub payload: Json,
}

/// Why a rollback started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackCause {
    /// A step failed for good or a `fail` step ran.
    Failed,
    /// The instance was cancelled.
    Cancelled,
}

/// Progress of a rollback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollback {
    /// Why it started.
    pub cause: RollbackCause,
    /// The step whose compensation is running.
    pub current: Option<String>,
    /// Set while `current`'s compensation has failed for good.
    pub incident: bool,
    /// Compensations completed (or resolved) so far.
    pub compensated: u32,
}

/// A workflow instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// Instance id.
    pub id: String,
    /// Definition name.
    pub definition: String,
    /// Definition version the instance is pinned to.
    pub version: u32,
    /// Current status.
    pub status: InstanceStatus,
    /// Start input.
    pub input: Json,
    /// Instance variables.
    pub vars: BTreeMap<String, Json>,
    /// Iteration and fallback scopes, by path prefix.
    pub scopes: BTreeMap<String, BTreeMap<String, Json>>,
    /// Output once completed.
    pub output: Option<Json>,
    /// Why it failed, was compensated or cancelled.
    pub error: Option<ErrorInfo>,
    /// Step runs by path: every run, except those of finished `foreach`
    /// iterations, which are folded away (see `folded`).
    pub steps: BTreeMap<String, StepRun>,
    /// Compensable completed runs of finished iterations, kept for rollback
    /// (which moves each back into `steps` when it compensates it). The
    /// other runs of a finished iteration leave the state: the shell
    /// archives them (`Effect::ArchiveRuns`) and only their count stays.
    pub folded: BTreeMap<String, StepRun>,
    /// Runs archived out of the state, by status.
    pub archived: BTreeMap<StepStatus, u64>,
    /// Runs created so far (the next run's `order`).
    pub runs_created: u64,
    /// Completed steps that declare a compensation, in order of completion;
    /// rollback pops from the end.
    pub completions: Vec<String>,
    /// Set once a rollback started.
    pub rollback: Option<Rollback>,
    /// Signals not yet consumed, oldest first.
    pub signals: Vec<BufferedSignal>,
    /// Ids of signals already applied (deduplication).
    pub seen_signals: BTreeSet<String>,
    /// Events applied so far.
    pub events_applied: u64,
    /// Start time.
    pub created_at: Millis,
    /// Time of the last applied event.
    pub updated_at: Millis,
}

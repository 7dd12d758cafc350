//! Outputs of the state machine: what the shell carries out once the event
//! that produced them is durable.

use super::state::{ErrorInfo, InstanceStatus, Millis, StepRun};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use std::fmt;

/// A timer's identity: what it is for, which step and which attempt.
///
/// A fired timer that no longer matches the state (the attempt completed,
/// the step moved on) is ignored, so timers never need to be cancelled for
/// correctness; `CancelTimer` only saves work.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TimerId {
    /// What the timer is for.
    pub kind: TimerKind,
    /// Step path (with `/compensate` for compensation attempts).
    pub path: String,
    /// Attempt it belongs to (0 where attempts do not apply).
    pub attempt: u32,
}

/// What a timer is for.
///
/// Stored by position in compact records: add variants at the end only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    /// Backoff before the next attempt.
    Retry,
    /// Start-to-close timeout of an attempt.
    StartToClose,
    /// Schedule-to-start timeout of an attempt.
    ScheduleToStart,
    /// Heartbeat timeout of a running attempt.
    Heartbeat,
    /// A `wait` or `until` step.
    Wait,
    /// Timeout of an `await` step.
    AwaitTimeout,
    /// First timeout of a human step.
    HumanTimeout,
    /// Timeout after escalation of a human step.
    HumanEscalation,
}

impl fmt::Display for TimerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}:{}:{}", self.kind, self.path, self.attempt)
    }
}

/// A task attempt handed to a worker or builtin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDispatch {
    /// Task path (`…/compensate` for compensations).
    pub path: String,
    /// Task type.
    pub task_type: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Rendered input.
    pub input: Json,
    /// `{instance}/{path}/{attempt}`: the same for redeliveries of one attempt.
    pub idempotency_key: String,
    /// Start-to-close timeout, milliseconds.
    pub start_to_close_ms: u64,
    /// Heartbeat timeout, milliseconds.
    pub heartbeat_ms: Option<u64>,
    /// Schedule-to-start timeout, milliseconds.
    #[serde(default)]
    pub schedule_to_start_ms: Option<u64>,
}

/// Something for the shell to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Effect {
    /// Hand a task attempt to a worker or builtin.
    DispatchTask(TaskDispatch),
    /// Tell the worker holding this attempt to stop; its result may still arrive.
    CancelTask {
        /// Task path.
        path: String,
        /// Attempt number.
        attempt: u32,
    },
    /// Fire `timer` at `at` (replacing an earlier arming of the same id).
    ArmTimer {
        /// Timer identity.
        timer: TimerId,
        /// Due time.
        at: Millis,
    },
    /// The timer is no longer needed.
    CancelTimer {
        /// Timer identity.
        timer: TimerId,
    },
    /// Create a human task.
    OpenHumanTask {
        /// Step path.
        path: String,
        /// User or group.
        assignee: String,
        /// What the person is shown.
        input: Json,
    },
    /// Reassign a human task after its first timeout.
    EscalateHumanTask {
        /// Step path.
        path: String,
        /// New assignee.
        assignee: String,
    },
    /// Withdraw a human task (timed out or instance rolled back).
    CloseHumanTask {
        /// Step path.
        path: String,
    },
    /// Route published events with this name and correlation key here.
    Subscribe {
        /// Event name.
        name: String,
        /// Correlation key.
        correlation: Option<String>,
    },
    /// Stop routing those events here.
    Unsubscribe {
        /// Event name.
        name: String,
        /// Correlation key.
        correlation: Option<String>,
    },
    /// Start a child workflow (idempotently, by `child_id`).
    StartChild {
        /// Step path in the parent.
        path: String,
        /// Child instance id, `{parent}/{path}`.
        child_id: String,
        /// Definition name.
        definition: String,
        /// Pinned version, or the latest.
        version: Option<u32>,
        /// Child input.
        input: Json,
    },
    /// Cancel a child workflow; it reports back through `ChildEnded`.
    CancelChild {
        /// Child instance id.
        child_id: String,
    },
    /// A compensation failed for good and needs an operator.
    OpenIncident {
        /// Step whose compensation failed.
        path: String,
        /// The last error.
        error: ErrorInfo,
    },
    /// The incident on `path` is closed (retried or resolved).
    CloseIncident {
        /// Step whose compensation failed.
        path: String,
    },
    /// These runs of a finished `foreach` iteration left the state: keep
    /// them where the step list can still show them.
    ArchiveRuns {
        /// The runs, by path.
        runs: Vec<(String, StepRun)>,
    },
    /// The instance ended.
    Finished {
        /// Terminal status.
        status: InstanceStatus,
        /// Output when completed.
        output: Option<Json>,
        /// Error otherwise.
        error: Option<ErrorInfo>,
    },
}

//! Inputs of the state machine: what gets journaled.

use super::effect::TimerId;
use super::state::{ErrorInfo, Millis};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// One journaled input, with the time it was accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Acceptance time; the engine's only clock.
    pub at: Millis,
    /// What happened.
    pub kind: EventKind,
}

/// What happened to an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The instance was started.
    Started {
        /// Instance id.
        id: String,
        /// Start input.
        input: Json,
    },
    /// A worker picked up a task attempt. `path` ends in `/compensate` for compensations.
    TaskStarted {
        /// Task path.
        path: String,
        /// Attempt number.
        attempt: u32,
    },
    /// A worker reported it is still working.
    TaskHeartbeat {
        /// Task path.
        path: String,
        /// Attempt number.
        attempt: u32,
        /// What the worker reports about its progress, shown on the step.
        #[serde(default)]
        progress: Option<Json>,
    },
    /// A task attempt completed.
    TaskCompleted {
        /// Task path.
        path: String,
        /// Attempt number.
        attempt: u32,
        /// Its result.
        output: Json,
    },
    /// A task attempt failed.
    TaskFailed {
        /// Task path.
        path: String,
        /// Attempt number.
        attempt: u32,
        /// The failure.
        error: ErrorInfo,
        /// `false` when retrying cannot help.
        retryable: bool,
    },
    /// A timer armed by the engine fired.
    TimerFired {
        /// Which timer.
        timer: TimerId,
    },
    /// A signal, or a published event routed to this instance.
    Signal {
        /// Deduplication id.
        id: String,
        /// Signal name.
        name: String,
        /// Payload.
        payload: Json,
    },
    /// A person completed a human task.
    HumanCompleted {
        /// Step path.
        path: String,
        /// The decision.
        payload: Json,
    },
    /// A child workflow ended.
    ChildEnded {
        /// Step path.
        path: String,
        /// Its output, or why it failed.
        outcome: Result<Json, ErrorInfo>,
    },
    /// Someone asked to cancel the instance.
    CancelRequested {
        /// Why.
        reason: String,
    },
    /// An operator retried the failed compensation of `path`.
    IncidentRetried {
        /// Step whose compensation failed.
        path: String,
    },
    /// An operator marked the failed compensation of `path` as done by hand.
    IncidentResolved {
        /// Step whose compensation failed.
        path: String,
    },
}

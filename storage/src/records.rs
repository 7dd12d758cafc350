//! The values stored per key, as the rest of the node sees them.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use troupe_engine::engine::{ErrorInfo, Instance, Millis, TaskDispatch, TimerId};

/// A deployed definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefinitionRecord {
    /// Name.
    pub name: String,
    /// Version.
    pub version: u32,
    /// The document as deployed.
    pub source: String,
    /// Deployment time.
    pub deployed_at: Millis,
}

/// Where a child instance reports back to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParentLink {
    /// Parent instance id.
    pub id: String,
    /// Step path in the parent.
    pub path: String,
}

/// The stored form of an instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Engine state after the last journaled event.
    pub state: Instance,
    /// Parent, for child workflows.
    pub parent: Option<ParentLink>,
}

/// An armed timer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimerRecord {
    /// Instance id.
    pub instance: String,
    /// Which timer.
    pub timer: TimerId,
    /// Due time.
    pub at: Millis,
}

/// An open human task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HumanTaskRecord {
    /// Task id.
    pub id: String,
    /// Instance id.
    pub instance: String,
    /// Step path.
    pub path: String,
    /// Current assignee.
    pub assignee: String,
    /// What the person is shown.
    pub input: Json,
    /// Whether it was escalated.
    pub escalated: bool,
    /// Creation time.
    pub created_at: Millis,
}

/// An open incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentRecord {
    /// Incident id.
    pub id: String,
    /// Instance id.
    pub instance: String,
    /// Step whose compensation failed.
    pub path: String,
    /// The last error.
    pub error: ErrorInfo,
    /// Opening time.
    pub opened_at: Millis,
}

/// An effect to carry out at least once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutboxRecord {
    /// A task attempt to run.
    Task {
        /// Instance id.
        instance: String,
        /// The attempt.
        dispatch: TaskDispatch,
    },
    /// A child workflow to start.
    Child {
        /// Parent instance id.
        instance: String,
        /// Step path in the parent.
        path: String,
        /// Child instance id.
        child_id: String,
        /// Definition name.
        definition: String,
        /// Pinned version.
        version: Option<u32>,
        /// Child input.
        input: Json,
    },
}

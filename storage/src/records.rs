//! The values stored per key, as the rest of the node sees them.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use troupe_engine::engine::{
    ErrorInfo, Event, Instance, InstanceStatus, Millis, TaskDispatch, TimerId,
};

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

/// The cluster map, held by the metadata group: members with their
/// addresses and states, each shard's placement, and an epoch that grows
/// with every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    /// Grows by one with every change of the map.
    pub epoch: u64,
    /// Members, in id order (removed ones stay, so they stay refused).
    pub members: Vec<MemberRecord>,
    /// Shard count.
    pub shards: u32,
    /// Replicas per shard.
    pub replication_factor: u32,
    /// Each shard's replicas as placed, its preferred leader first.
    pub placement: Vec<Vec<u64>>,
}

impl ClusterMap {
    /// Member `id`, if the map has it.
    pub fn member(&self, id: u64) -> Option<&MemberRecord> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Ids of the members in `state`.
    pub fn in_state(&self, state: MemberState) -> Vec<u64> {
        self.members
            .iter()
            .filter(|m| m.state == state)
            .map(|m| m.id)
            .collect()
    }

    /// The shards placed on `node`.
    pub fn shards_on(&self, node: u64) -> Vec<u32> {
        (0..self.shards)
            .filter(|s| self.placement[*s as usize].contains(&node))
            .collect()
    }
}

/// A member of the cluster map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Node id.
    pub id: u64,
    /// Where it stands.
    pub state: MemberState,
    /// Its Raft address.
    pub raft_addr: String,
    /// Its HTTP address.
    pub http_addr: String,
    /// Its native-protocol address.
    pub native_addr: String,
    /// Its control-plane address, when the cluster has one.
    pub control_addr: Option<String>,
}

/// Where a member stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// Catching up the metadata group; holds no replica yet.
    Joining,
    /// Holds replicas and leads shards.
    Active,
    /// Its replicas and leaderships move to the others.
    Draining,
    /// Out of the cluster for good; refused if it comes back.
    Removed,
}

impl MemberState {
    /// The state as `/v1/cluster` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Joining => "joining",
            MemberState::Active => "active",
            MemberState::Draining => "draining",
            MemberState::Removed => "removed",
        }
    }
}

/// Where a child instance reports back to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParentLink {
    /// Parent instance id.
    pub id: String,
    /// Step path in the parent.
    pub path: String,
}

/// An instance in memory: its engine state and where it reports back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceRecord {
    /// Engine state after the last journaled event.
    pub state: Instance,
    /// Parent, for child workflows.
    pub parent: Option<ParentLink>,
}

/// What is stored of an instance on every transition: a few fixed fields,
/// whatever the instance's size. Its whole state is stored only from time
/// to time (a snapshot); the journal after it brings it up to date.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceHead {
    /// Instance id.
    pub id: String,
    /// Definition name.
    pub definition: String,
    /// Definition version.
    pub version: u32,
    /// Current status.
    pub status: InstanceStatus,
    /// Start time.
    pub created_at: Millis,
    /// Time of the last event.
    pub updated_at: Millis,
    /// Events journaled so far.
    pub events: u64,
    /// Events the stored snapshot includes (0: no snapshot yet, the state
    /// is the replay of the whole journal).
    pub snapshot_events: u64,
    /// Parent, for child workflows.
    pub parent: Option<ParentLink>,
}

/// What retention needs to delete an ended instance without reading it,
/// stored in its `ended` entry when its actor wrote every journal record it
/// has and archived no step run (entries without one, such as those of
/// earlier builds, are deleted by reading the instance).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedRecord {
    /// The status it ended in.
    pub status: InstanceStatus,
    /// Definition name.
    pub definition: String,
    /// Whether a snapshot of it is stored.
    pub snapshot: bool,
    /// The key (last event number) of each of its journal records.
    pub journal: Vec<u64>,
}

impl InstanceHead {
    /// The head of `record` after its last event, with a snapshot of
    /// `snapshot_events` events stored.
    pub fn of(record: &InstanceRecord, snapshot_events: u64) -> Self {
        let state = &record.state;
        Self {
            id: state.id.clone(),
            definition: state.definition.clone(),
            version: state.version,
            status: state.status,
            created_at: state.created_at,
            updated_at: state.updated_at,
            events: state.events_applied,
            snapshot_events,
            parent: record.parent.clone(),
        }
    }
}

/// An instance as read from storage, before the journal tail is replayed
/// (which needs its definition, so the caller does it).
#[derive(Debug, Clone)]
pub struct StoredInstance {
    /// Its head.
    pub head: InstanceHead,
    /// Its latest snapshot, if one was taken.
    pub snapshot: Option<Instance>,
    /// Encoded size of that snapshot, bytes.
    pub snapshot_bytes: usize,
    /// The events after the snapshot, oldest first.
    pub tail: Vec<Event>,
    /// Encoded size of those events, bytes.
    pub tail_bytes: usize,
    /// Its armed timers (none for an ended instance).
    pub timers: Vec<TimerRecord>,
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

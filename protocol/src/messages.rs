//! Messages of the native protocol. A client sends [`ClientFrame`]s, each
//! with a request id it chose; the node answers each with a [`ServerFrame`]
//! carrying the same id, in any order, so many requests can be in flight on
//! one connection. A task stream ([`Request::OpenTaskStream`]) is answered by
//! any number of frames with its id. Id 0 is reserved for errors about the
//! connection itself (a malformed frame), after which the node closes it.
//!
//! Enum variants are encoded by position: new variants go at the end.

use serde::{Deserialize, Serialize};

/// A JSON document as text. The codec cannot carry self-describing values,
/// so payloads (inputs, outputs, views) travel as JSON text.
pub type JsonText = String;

/// A request with its id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientFrame {
    /// Chosen by the client, echoed in the answer; not 0.
    pub id: u64,
    /// What to do.
    pub request: Request,
}

/// An answer (or a stream push) with the id of its request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerFrame {
    /// The request's id; 0 for connection errors.
    pub id: u64,
    /// The answer.
    pub response: Response,
}

/// Every client operation. Each mirrors an HTTP route of the same name and
/// answers with the same JSON body ([`Response::Json`]) or error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// `PUT /v1/definitions`: YAML or JSON source.
    Deploy {
        /// The document.
        source: String,
    },
    /// `GET /v1/definitions`.
    Definitions,
    /// `GET /v1/definitions/{name}[/{version}]`.
    Definition {
        /// Name.
        name: String,
        /// A version, or every version.
        version: Option<u32>,
    },
    /// `POST /v1/workflows`.
    Start(StartWorkflow),
    /// `GET /v1/workflows/{id}`.
    Workflow {
        /// Instance id.
        id: String,
    },
    /// `GET /v1/workflows/{id}/history?cursor=&limit=`.
    History {
        /// Instance id.
        id: String,
        /// Which page.
        page: Page,
    },
    /// `GET /v1/workflows/{id}/steps?cursor=&limit=`.
    Steps {
        /// Instance id.
        id: String,
        /// Which page.
        page: Page,
    },
    /// `GET /v1/workflows?...`.
    List(ListWorkflows),
    /// `POST /v1/workflows/{id}/signals/{name}`.
    Signal {
        /// Instance id.
        workflow: String,
        /// Signal name.
        name: String,
        /// Deduplication id.
        signal_id: Option<String>,
        /// Payload.
        payload: JsonText,
    },
    /// `POST /v1/workflows/{id}/cancel`.
    Cancel {
        /// Instance id.
        workflow: String,
        /// Why.
        reason: Option<String>,
    },
    /// `POST /v1/events/{name}`.
    Publish {
        /// Event name.
        name: String,
        /// Deduplication id.
        event_id: String,
        /// Correlation key.
        correlation_key: Option<String>,
        /// Payload.
        payload: JsonText,
    },
    /// `GET /v1/human-tasks?assignee=&cursor=&limit=`.
    HumanTasks {
        /// Only this assignee.
        assignee: Option<String>,
        /// Which page.
        page: Page,
    },
    /// `POST /v1/human-tasks/{id}/complete`.
    CompleteHumanTask {
        /// Human task id.
        id: String,
        /// The decision.
        payload: JsonText,
    },
    /// `GET /v1/incidents?cursor=&limit=`.
    Incidents {
        /// Which page.
        page: Page,
    },
    /// `POST /v1/incidents/{id}/retry|resolve`.
    SettleIncident {
        /// Incident id.
        id: String,
        /// Retry (`true`) or mark resolved by hand (`false`).
        retry: bool,
    },
    /// `GET /v1/cluster`.
    Cluster,
    /// Node to node: a command for an instance of a shard the receiver
    /// leads, as JSON (`troupe_actors::WireCommand`); answered with the
    /// command's outcome as JSON.
    Deliver {
        /// Instance id.
        id: String,
        /// The command.
        command: JsonText,
    },
    /// Node to node: deploy a definition as the leader of the cluster's
    /// metadata group (answered `unavailable` by any other node).
    DeployAsLeader {
        /// The document.
        source: String,
    },
    /// Node to node: answers once the receiver has applied entry `index`
    /// of the metadata group (a deploy made elsewhere).
    AwaitMeta {
        /// Entry index.
        index: u64,
    },
    /// `POST /v1/tasks/poll`: answered with [`Response::Tasks`] (maybe empty).
    Poll(PollTasks),
    /// Opens a task stream: the node pushes [`Response::Tasks`] frames with
    /// this request's id, never more tasks in all than the credit granted.
    OpenTaskStream {
        /// Worker name (for logs and metrics).
        worker: String,
        /// Task types served.
        task_types: Vec<String>,
        /// Tasks the worker can take now.
        credit: u32,
    },
    /// Grants more credit to an open stream (no answer unless it fails).
    AddCredit {
        /// The id of the `OpenTaskStream` request.
        stream: u64,
        /// Additional tasks the worker can take.
        credit: u32,
    },
    /// `POST /v1/tasks/{token}/complete`.
    CompleteTask {
        /// The assignment's token.
        token: String,
        /// The task's output.
        output: JsonText,
    },
    /// `POST /v1/tasks/{token}/fail`.
    FailTask {
        /// The assignment's token.
        token: String,
        /// Error code, matched against the retry policy's `non_retryable`.
        code: String,
        /// Message.
        message: String,
        /// `false` when retrying cannot help.
        retryable: bool,
    },
    /// `POST /v1/tasks/{token}/heartbeat`.
    Heartbeat {
        /// The assignment's token.
        token: String,
        /// Progress to show on the step.
        progress: Option<JsonText>,
    },
    /// `GET /v1/workflows/{id}/result?wait_ms=`: the instance's view once it
    /// has ended, or after `wait_ms` (at most 60 s) with its current status.
    AwaitWorkflow {
        /// Instance id.
        id: String,
        /// Longest wait, milliseconds.
        wait_ms: u64,
    },
    /// A request about one instance, sent by a client to the leader of the
    /// instance's shard by its cached cluster map. A node that does not
    /// lead that shard answers `not_leader` (with the leader's address and
    /// the map's epoch) instead of forwarding it.
    Routed(Box<Request>),
}

impl Request {
    /// The instance a request is about, which decides its shard.
    pub fn instance(&self) -> Option<&str> {
        match self {
            Request::Start(start) => start.id.as_deref(),
            Request::Workflow { id }
            | Request::History { id, .. }
            | Request::Steps { id, .. }
            | Request::AwaitWorkflow { id, .. } => Some(id),
            Request::Signal { workflow, .. } | Request::Cancel { workflow, .. } => Some(workflow),
            Request::Routed(inner) => inner.instance(),
            _ => None,
        }
    }
}

/// `POST /v1/workflows` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartWorkflow {
    /// Definition name.
    pub definition: String,
    /// Version; the latest when absent.
    pub version: Option<u32>,
    /// Instance id (idempotency key of the start); generated when absent.
    pub id: Option<String>,
    /// Input.
    pub input: JsonText,
}

/// Which page of a paginated list: the first (no cursor) or the one after
/// a previous page's `next_cursor`; the node's default size when no limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Page {
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Most entries returned.
    pub limit: Option<u32>,
}

/// `GET /v1/workflows` filters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ListWorkflows {
    /// Only this status.
    pub status: Option<String>,
    /// Only this definition.
    pub definition: Option<String>,
    /// Page size.
    pub limit: Option<u32>,
    /// Continue after this id.
    pub cursor: Option<String>,
}

/// `POST /v1/tasks/poll` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PollTasks {
    /// Worker name.
    pub worker: String,
    /// Task types served.
    pub task_types: Vec<String>,
    /// At most this many tasks (the worker's credit).
    pub max: u32,
    /// How long to wait for a first task, milliseconds.
    pub wait_ms: u64,
}

/// A task attempt leased to a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAssignment {
    /// Names this attempt in complete, fail and heartbeat.
    pub token: String,
    /// Instance id.
    pub workflow_id: String,
    /// Task path (`…/compensate` for compensations).
    pub path: String,
    /// Task type.
    pub task_type: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// `{instance}/{path}/{attempt}`: pass it on to make effects idempotent.
    pub idempotency_key: String,
    /// Rendered input.
    pub input: JsonText,
    /// Time left on the lease (start-to-close), milliseconds.
    pub lease_ms: u64,
    /// Longest silence allowed between heartbeats, milliseconds.
    pub heartbeat_ms: Option<u64>,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// Success: the same JSON body the HTTP route answers with.
    Json(JsonText),
    /// Tasks for a poll or a stream.
    Tasks(Vec<TaskAssignment>),
    /// Failure, with a stable code.
    Error(WireError),
}

/// A failure: the same `{code, message, details}` as HTTP errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    /// Stable code (the string form of [`crate::ErrorCode`]).
    pub code: String,
    /// What happened.
    pub message: String,
    /// Details as JSON text (`null` when none).
    pub details: JsonText,
    /// For retryable codes: wait this long before retrying, milliseconds.
    pub retry_after_ms: Option<u64>,
}

//! Worker operations of the API, shared by the HTTP and native listeners:
//! polls and task streams that lease queued attempts within a worker's
//! credit, and the reports (complete, fail, heartbeat) that settle them.
//!
//! A report is applied by the engine like any event: one about an attempt
//! that is no longer in flight (a duplicate, or late after its lease ended
//! and the attempt was retried) changes nothing and is answered
//! `accepted: false`.

use crate::api::{ApiError, Result};
use serde_json::{Value as Json, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use troupe_actors::queue::{PendingStarts, Queued, token};
use troupe_actors::{Applied, Command, Runtime, Services};
use troupe_engine::engine::{ErrorInfo, EventKind};
use troupe_protocol::{ErrorCode, TaskAssignment};

/// Most tasks one poll may ask for.
pub const MAX_POLL: u32 = 1_000;
/// Longest wait of one poll.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// A registered waiter; dropping it unregisters it and puts attempts it
/// received but did not lease back in their queues.
pub struct Subscription {
    services: Arc<Services>,
    id: u64,
    inbox: mpsc::UnboundedReceiver<Queued>,
}

impl Subscription {
    /// Registers a waiter for `task_types` with `credit`.
    pub fn open(rt: &Runtime, task_types: Vec<String>, credit: u32) -> Result<Self> {
        check_task_types(&task_types)?;
        let (tx, inbox) = mpsc::unbounded_channel();
        let id = rt.services.queues.register(task_types, credit, tx);
        Ok(Self {
            services: rt.services.clone(),
            id,
            inbox,
        })
    }

    /// The waiter's id in the queues (for granting credit).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The next attempt handed to this waiter.
    pub async fn next(&mut self) -> Option<Queued> {
        self.inbox.recv().await
    }

    /// An attempt already handed to this waiter, without waiting.
    pub fn try_next(&mut self) -> Option<Queued> {
        self.inbox.try_recv().ok()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut undelivered = Vec::new();
        while let Ok(task) = self.inbox.try_recv() {
            undelivered.push(task);
        }
        self.services.queues.unregister(self.id, undelivered);
    }
}

fn check_task_types(task_types: &[String]) -> Result<()> {
    if task_types.is_empty() || task_types.len() > 100 {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "task_types must list 1 to 100 task types",
        ));
    }
    Ok(())
}

/// Leases an attempt to a worker: tells the instance it started (journaled,
/// and ordered before any report about it; this starts a fresh lease of
/// `start_to_close`) and builds the assignment.
pub fn lease(rt: &Runtime, task: Queued) -> TaskAssignment {
    let Queued { instance, dispatch } = task;
    if PendingStarts::can_defer(&dispatch) {
        let pending = &rt.services.pending_starts;
        pending.add(&instance, &dispatch.path, dispatch.attempt);
    } else {
        rt.router().cast(
            &instance,
            Command::Event(EventKind::TaskStarted {
                path: dispatch.path.clone(),
                attempt: dispatch.attempt,
            }),
        );
    }
    metrics::counter!(crate::metrics::TASKS_LEASED_TOTAL, "task_type" => dispatch.task_type.clone())
        .increment(1);
    TaskAssignment {
        token: token::encode(&instance, &dispatch.path, dispatch.attempt),
        workflow_id: instance,
        path: dispatch.path,
        task_type: dispatch.task_type,
        attempt: dispatch.attempt,
        idempotency_key: dispatch.idempotency_key,
        input: dispatch.input.to_string(),
        lease_ms: dispatch.start_to_close_ms,
        heartbeat_ms: dispatch.heartbeat_ms,
    }
}

/// An assignment as HTTP JSON: the same fields, with `input` as JSON.
pub fn assignment_json(task: &TaskAssignment) -> Json {
    let input: Json = serde_json::from_str(&task.input).unwrap_or(Json::Null);
    json!({
        "token": task.token,
        "workflow_id": task.workflow_id,
        "path": task.path,
        "task_type": task.task_type,
        "attempt": task.attempt,
        "idempotency_key": task.idempotency_key,
        "input": input,
        "lease_ms": task.lease_ms,
        "heartbeat_ms": task.heartbeat_ms,
    })
}

/// Leases up to `max` attempts of `task_types`, waiting up to `wait` for the
/// first one.
pub async fn poll(
    rt: &Runtime,
    task_types: Vec<String>,
    max: u32,
    wait: Duration,
) -> Result<Vec<TaskAssignment>> {
    if max == 0 || max > MAX_POLL {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("max must be between 1 and {MAX_POLL}"),
        ));
    }
    let mut subscription = Subscription::open(rt, task_types, max)?;
    let mut got: Vec<Queued> = std::iter::from_fn(|| subscription.try_next()).collect();
    if got.is_empty()
        && let Ok(Some(first)) = tokio::time::timeout(wait.min(MAX_WAIT), subscription.next()).await
    {
        got.push(first);
        got.extend(std::iter::from_fn(|| subscription.try_next()));
    }
    drop(subscription);
    Ok(got.into_iter().map(|task| lease(rt, task)).collect())
}

/// What a worker reports about an attempt.
#[derive(Debug, Clone)]
pub enum Report {
    /// It completed with this output.
    Complete(Json),
    /// It failed.
    Fail {
        /// Error code.
        code: String,
        /// Message.
        message: String,
        /// `false` when retrying cannot help.
        retryable: bool,
    },
    /// It is still running.
    Heartbeat(Option<Json>),
}

impl Report {
    fn kind(&self) -> &'static str {
        match self {
            Self::Complete(_) => "complete",
            Self::Fail { .. } => "fail",
            Self::Heartbeat(_) => "heartbeat",
        }
    }
}

/// Applies a worker's report. The answer says whether it was accepted; for
/// a heartbeat, `cancelled: true` tells the worker to stop.
pub async fn report(rt: &Runtime, task_token: &str, report: Report) -> Result<Json> {
    let unknown = || ApiError::new(ErrorCode::TaskNotFound, "unknown task token");
    let (instance, path, attempt) = token::decode(task_token).ok_or_else(unknown)?;
    let kind = report.kind();
    // The report is checked whole before it takes the attempt's deferred
    // start, so a refused report leaves that start pending.
    let event = match report {
        Report::Complete(output) => EventKind::TaskCompleted {
            path: path.clone(),
            attempt,
            output,
        },
        Report::Fail {
            code,
            message,
            retryable,
        } => {
            if code.is_empty() || code.len() > 100 {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    "code must be 1 to 100 characters",
                ));
            }
            EventKind::TaskFailed {
                path: path.clone(),
                attempt,
                error: ErrorInfo::new(code, message),
                retryable,
            }
        }
        Report::Heartbeat(progress) => EventKind::TaskHeartbeat {
            path: path.clone(),
            attempt,
            progress,
        },
    };
    let pending = &rt.services.pending_starts;
    let deferred = pending.take(&instance, &path, attempt);
    let mut events = Vec::with_capacity(2);
    if deferred {
        events.push(EventKind::TaskStarted {
            path: path.clone(),
            attempt,
        });
    }
    events.push(event);
    let applied = match rt.router().call(&instance, Command::Report(events)).await {
        Err(f) if f.code == ErrorCode::WorkflowNotFound => return Err(unknown()),
        Err(f) => {
            if deferred {
                pending.add(&instance, &path, attempt);
            }
            return Err(f.into());
        }
        Ok(applied) => applied,
    };
    let accepted = matches!(applied, Applied::Done);
    metrics::counter!(crate::metrics::TASK_REPORTS_TOTAL, "kind" => kind, "accepted" => if accepted { "true" } else { "false" })
        .increment(1);
    let mut answer = json!({ "accepted": accepted });
    if let Applied::Ignored(why) = applied {
        answer["reason"] = json!(why);
    }
    if kind == "heartbeat" {
        answer["cancelled"] = json!(!accepted);
    }
    Ok(answer)
}

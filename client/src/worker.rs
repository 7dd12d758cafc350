//! [`Worker`]: serves task types over a task stream. It grants the node as
//! much credit as it has free slots, runs each task with its handler,
//! heartbeats while a task runs (when the task has a heartbeat timeout),
//! reports the outcome, and then grants one more credit. A broken
//! connection is reopened with backoff; attempts leased on it and not
//! reported are redelivered by the node when their lease ends.
//!
//! In a cluster, each node hands out the tasks of the shards it leads, so
//! the worker opens a stream to every member it learns of from the node it
//! was given (`concurrency` applies per node).

use crate::{Client, Error};
use serde_json::Value as Json;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
pub use troupe_protocol::TaskError;
use troupe_protocol::{Request, Response, TaskAssignment};

/// A task attempt handed to a handler.
#[derive(Debug, Clone)]
pub struct Task {
    /// Names the attempt in reports (for logs; the worker reports for you).
    pub token: String,
    /// Instance id.
    pub workflow_id: String,
    /// Task path.
    pub path: String,
    /// Task type.
    pub task_type: String,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Pass this on to downstream services to make the effect idempotent.
    pub idempotency_key: String,
    /// Input.
    pub input: Json,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Json, TaskError>> + Send>>;
type Handler = Arc<dyn Fn(Task) -> BoxFuture + Send + Sync>;

/// A worker process's task loop.
pub struct Worker {
    client: Client,
    name: String,
    concurrency: u32,
    handlers: HashMap<String, Handler>,
}

impl Worker {
    /// A worker named `name` using `client`'s node (on its own connection).
    pub fn new(client: &Client, name: &str) -> Self {
        Self {
            client: client.clone(),
            name: name.to_owned(),
            concurrency: 16,
            handlers: HashMap::new(),
        }
    }

    /// Tasks run at once (the credit granted to the node).
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// Serves `task_type` with `handler`.
    pub fn handle<F, Fut>(mut self, task_type: &str, handler: F) -> Self
    where
        F: Fn(Task) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Json, TaskError>> + Send + 'static,
    {
        self.handlers.insert(
            task_type.to_owned(),
            Arc::new(move |task| Box::pin(handler(task))),
        );
        self
    }

    /// Runs until the process ends, reconnecting when a node goes away and
    /// following the cluster's members: a node that joins gets a stream, a
    /// removed one loses its stream.
    pub async fn run(self) -> Result<(), Error> {
        let types: Vec<String> = self.handlers.keys().cloned().collect();
        let handlers = Arc::new(self.handlers);
        let mut streams = tokio::task::JoinSet::new();
        let mut open: HashMap<Option<String>, tokio::task::AbortHandle> = HashMap::new();
        let mut refresh = tokio::time::interval(MEMBERS_REFRESH);
        loop {
            tokio::select! {
                _ = refresh.tick() => {
                    let Some(members) = members(&self.client).await else {
                        if open.is_empty() {
                            // Not answered yet: serve the client's own node meanwhile.
                            open.insert(None, streams.spawn(NodeStream {
                                addr: None,
                                base: self.client.clone(),
                                name: self.name.clone(),
                                types: types.clone(),
                                handlers: handlers.clone(),
                                concurrency: self.concurrency,
                            }.run()));
                        }
                        continue;
                    };
                    open.retain(|addr, stream| {
                        let kept = members.contains(addr);
                        if !kept {
                            stream.abort();
                        }
                        kept
                    });
                    for addr in members {
                        if open.contains_key(&addr) {
                            continue;
                        }
                        let stream = NodeStream {
                            addr: addr.clone(),
                            base: self.client.clone(),
                            name: self.name.clone(),
                            types: types.clone(),
                            handlers: handlers.clone(),
                            concurrency: self.concurrency,
                        };
                        open.insert(addr, streams.spawn(stream.run()));
                    }
                }
                Some(ended) = streams.join_next() => match ended {
                    Ok(result) => return result,
                    Err(e) if e.is_cancelled() => {}
                    Err(e) => return Err(Error::Connection(e.to_string())),
                },
            }
        }
    }
}

/// How often a worker re-reads the cluster's members.
const MEMBERS_REFRESH: Duration = Duration::from_secs(5);

/// The native addresses of the cluster's members, removed ones aside
/// (`None`: the client's own node, when it is alone or does not say);
/// `None` when the node did not answer.
async fn members(client: &Client) -> Option<Vec<Option<String>>> {
    let cluster = match client.request(Request::Cluster, true).await {
        Ok(Response::Json(text)) => serde_json::from_str::<Json>(&text).ok()?,
        _ => return None,
    };
    let addrs: Vec<Option<String>> = crate::routing::members_of(&cluster)
        .into_iter()
        .map(Some)
        .collect();
    Some(if addrs.len() > 1 { addrs } else { vec![None] })
}

/// One node's task stream.
struct NodeStream {
    /// The node (`None`: the base client's).
    addr: Option<String>,
    base: Client,
    name: String,
    types: Vec<String>,
    handlers: Arc<HashMap<String, Handler>>,
    concurrency: u32,
}

impl NodeStream {
    async fn run(self) -> Result<(), Error> {
        let NodeStream {
            addr,
            base,
            name,
            types,
            handlers,
            concurrency,
        } = self;
        let mut backoff = Duration::from_millis(100);
        let client = loop {
            let connected = match &addr {
                Some(addr) => Client::connect(addr.clone()).await,
                None => base.reconnect().await,
            };
            match connected {
                Ok(client) => break client,
                Err(e) => tracing::warn!(worker = %name, error = %e, "cannot reach node"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        };
        loop {
            match client.open_stream(&name, types.clone(), concurrency).await {
                Ok((conn, stream, mut pushes)) => {
                    backoff = Duration::from_millis(100);
                    tracing::info!(worker = %name, ?types, "task stream open");
                    let (done, mut finished) = mpsc::unbounded_channel::<()>();
                    loop {
                        tokio::select! {
                            push = pushes.recv() => match push {
                                Some(Response::Tasks(tasks)) => {
                                    for task in tasks {
                                        let (client, handlers, done) = (client.clone(), handlers.clone(), done.clone());
                                        tokio::spawn(async move {
                                            run_task(&client, &handlers, task).await;
                                            let _ = done.send(());
                                        });
                                    }
                                }
                                Some(Response::Error(e)) => {
                                    return Err(Error::from_wire(e));
                                }
                                Some(Response::Json(_)) => {}
                                None => break,
                            },
                            Some(()) = finished.recv() => {
                                let credit = Request::AddCredit { stream, credit: 1 };
                                if conn.notify(credit).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    tracing::warn!(worker = %name, "task stream closed; reconnecting");
                }
                Err(e) => {
                    tracing::warn!(worker = %name, error = %e, "cannot open task stream")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Runs one attempt, heartbeating meanwhile, and reports its outcome.
async fn run_task(
    client: &Client,
    handlers: &HashMap<String, Handler>,
    assignment: TaskAssignment,
) {
    let token = assignment.token.clone();
    let Some(handler) = handlers.get(&assignment.task_type) else {
        let message = format!("this worker has no handler for {}", assignment.task_type);
        let _ = client.fail(&token, "no_handler", &message, true).await;
        return;
    };
    let task = Task {
        token: token.clone(),
        workflow_id: assignment.workflow_id,
        path: assignment.path,
        task_type: assignment.task_type,
        attempt: assignment.attempt,
        idempotency_key: assignment.idempotency_key,
        input: serde_json::from_str(&assignment.input).unwrap_or(Json::Null),
    };
    let mut work = tokio::spawn(handler(task));
    let result = match assignment.heartbeat_ms {
        None => (&mut work).await,
        Some(every) => {
            let period = Duration::from_millis((every / 3).max(10));
            loop {
                tokio::select! {
                    result = &mut work => break result,
                    _ = tokio::time::sleep(period) => {
                        if let Ok(answer) = client.heartbeat(&token, None).await
                            && answer["cancelled"] == Json::Bool(true)
                        {
                            work.abort();
                            return;
                        }
                    }
                }
            }
        }
    };
    let reported = match result {
        Ok(Ok(output)) => client.complete(&token, &output).await,
        Ok(Err(e)) => client.fail(&token, &e.code, &e.message, e.retryable).await,
        Err(panic) => {
            let message = format!("handler panicked: {panic}");
            client.fail(&token, "worker_panic", &message, true).await
        }
    };
    if let Err(e) = reported {
        tracing::warn!(%token, error = %e, "could not report a task; its lease will expire");
    }
}

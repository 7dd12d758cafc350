//! [`Client`]: typed operations over a shared connection, reconnecting when
//! it breaks and retrying overload answers with backoff.

use crate::Error;
use crate::connection::Connection;
use crate::routing::{Routing, Via};
use serde_json::Value as Json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc};
use troupe_protocol::{
    ErrorCode, ListWorkflows, Page, PollTasks, Request, Response, StartWorkflow, TaskAssignment,
};

/// How requests refused as overloaded or unavailable (or lost with a broken
/// connection, when safe) are retried: exponential backoff from `initial` to
/// `max`, at most `attempts` tries in all. A node's `retry_after` hint is a
/// floor for the next delay.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// First delay.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 10,
            initial: Duration::from_millis(20),
            max: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> Self {
        Self {
            attempts: 1,
            ..Self::default()
        }
    }

    fn delay(&self, retry: u32, hint_ms: Option<u64>) -> Duration {
        let exp = self.initial.saturating_mul(1 << retry.min(16));
        let base = exp.min(self.max);
        // Spread retries of many callers: 50-100% of the delay.
        let jitter = 0.5 + 0.5 * fastrand_unit();
        base.mul_f64(jitter)
            .max(Duration::from_millis(hint_ms.unwrap_or(0)))
    }
}

/// A cheap pseudo-random number in [0, 1), enough to spread retries.
fn fastrand_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// A handle to a node. Cloning is cheap; clones share the connection, and
/// any number of requests may be in flight on it at once.
///
/// Connected to a cluster node, requests about one instance go straight to
/// the leader of its shard (see `routing.rs`); everything else goes to the
/// node given.
#[derive(Clone)]
pub struct Client {
    addr: String,
    connection: Arc<Mutex<Option<Arc<Connection>>>>,
    retry: RetryPolicy,
    routing: Option<Arc<Routing>>,
}

impl Client {
    /// Connects to a node's native address (`host:port`).
    pub async fn connect(addr: impl Into<String>) -> Result<Self, Error> {
        let client = Self {
            routing: Some(Arc::default()),
            ..Self::direct(addr).await?
        };
        Ok(client)
    }

    /// Connects to a node, sending it everything (no routing by shard).
    pub(crate) async fn direct(addr: impl Into<String>) -> Result<Self, Error> {
        let client = Self {
            addr: addr.into(),
            connection: Arc::new(Mutex::new(None)),
            retry: RetryPolicy::default(),
            routing: None,
        };
        client.live().await?;
        Ok(client)
    }

    /// The same client, sending everything to the node given.
    pub fn without_routing(mut self) -> Self {
        self.routing = None;
        self
    }

    /// The node's address.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// The node's `/v1/cluster` view (one try).
    pub(crate) async fn cluster_map(&self) -> Result<Json, Error> {
        match self.once(Request::Cluster).await? {
            Response::Json(text) => serde_json::from_str(&text)
                .map_err(|e| Error::Protocol(format!("answer is not JSON: {e}"))),
            other => Err(Error::Protocol(format!("unexpected answer {other:?}"))),
        }
    }

    /// One try of `request` on this client's node.
    async fn once(&self, request: Request) -> Result<Response, Error> {
        let conn = self.live().await?;
        conn.call(request).await.and_then(|r| match r {
            Response::Error(e) => Err(Error::from_wire(e)),
            other => Ok(other),
        })
    }

    /// The same client with another retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// A client with its own connection to the same node.
    pub async fn reconnect(&self) -> Result<Self, Error> {
        let client = Self::direct(self.addr.clone()).await?;
        Ok(Self {
            routing: self.routing.as_ref().map(|_| Arc::default()),
            ..client.with_retry(self.retry.clone())
        })
    }

    /// The current connection, opening a new one if it broke.
    pub(crate) async fn live(&self) -> Result<Arc<Connection>, Error> {
        let mut slot = self.connection.lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(conn.clone());
        }
        let conn = Arc::new(Connection::open(self.addr.as_str()).await?);
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Sends a request, retrying by the policy. `idempotent` requests are
    /// also retried when the connection broke before their answer came.
    pub async fn request(&self, request: Request, idempotent: bool) -> Result<Response, Error> {
        let mut retry = 0;
        loop {
            let via = match &self.routing {
                Some(routing) => routing.via(self, request.instance()).await,
                None => Via::Home,
            };
            let result = match &via {
                Via::Leader(leader) => {
                    leader
                        .once(Request::Routed(Box::new(request.clone())))
                        .await
                }
                Via::StandIn(node) => node.once(request.clone()).await,
                Via::Home => self.once(request.clone()).await,
            };
            let err = match result {
                Ok(response) => return Ok(response),
                Err(e) => e,
            };
            if let Some(routing) = &self.routing {
                match &err {
                    Error::Node {
                        code: ErrorCode::NotLeader,
                        details,
                        ..
                    } => {
                        // Straight to the leader it names, no backoff.
                        routing.learn(details);
                        retry += 1;
                        if retry >= self.retry.attempts {
                            return Err(err);
                        }
                        continue;
                    }
                    // The node is gone: skip it a while, and try at once
                    // through another (the client's node waits for a new
                    // leader itself; a stand-in forwards).
                    Error::Connection(_) => {
                        routing.unreachable(via.addr(self));
                        if idempotent && routing.any_reachable(self) {
                            retry += 1;
                            if retry >= self.retry.attempts {
                                return Err(err);
                            }
                            continue;
                        }
                    }
                    Error::Node {
                        code: ErrorCode::Unavailable,
                        ..
                    } => routing.forget(),
                    _ => {}
                }
            }
            let retryable = match &err {
                Error::Node { code, .. } => code.is_retryable(),
                Error::Connection(_) => idempotent,
                Error::Protocol(_) => false,
            };
            retry += 1;
            if !retryable || retry >= self.retry.attempts {
                return Err(err);
            }
            let hint = match &err {
                Error::Node { retry_after_ms, .. } => *retry_after_ms,
                _ => None,
            };
            tokio::time::sleep(self.retry.delay(retry - 1, hint)).await;
        }
    }

    async fn json(&self, request: Request, idempotent: bool) -> Result<Json, Error> {
        match self.request(request, idempotent).await? {
            Response::Json(text) => serde_json::from_str(&text)
                .map_err(|e| Error::Protocol(format!("answer is not JSON: {e}"))),
            other => Err(Error::Protocol(format!("unexpected answer {other:?}"))),
        }
    }

    /// Deploys a definition (YAML or JSON source).
    pub async fn deploy(&self, source: &str) -> Result<Json, Error> {
        let source = source.to_owned();
        self.json(Request::Deploy { source }, true).await
    }

    /// Starts an instance of the latest version of `definition`. With `id`
    /// the start is idempotent: the same id and input answer with the
    /// existing instance. Without one, the client makes one up, so retries
    /// are still safe. The answer is the instance view, with `created`.
    pub async fn start(
        &self,
        definition: &str,
        id: Option<&str>,
        input: &Json,
    ) -> Result<Json, Error> {
        let id = id.map_or_else(|| generated_id(definition), str::to_owned);
        self.start_with(StartWorkflow {
            definition: definition.to_owned(),
            version: None,
            id: Some(id),
            input: input.to_string(),
        })
        .await
    }

    /// Starts an instance with every option.
    pub async fn start_with(&self, start: StartWorkflow) -> Result<Json, Error> {
        self.json(Request::Start(start), true).await
    }

    /// An instance's current view.
    pub async fn workflow(&self, id: &str) -> Result<Json, Error> {
        let id = id.to_owned();
        self.json(Request::Workflow { id }, true).await
    }

    /// The instance's view once it has ended, waiting up to `wait` (at
    /// most 60 s); after that the view shows its current status.
    pub async fn result(&self, id: &str, wait: Duration) -> Result<Json, Error> {
        let request = Request::AwaitWorkflow {
            id: id.to_owned(),
            wait_ms: wait.as_millis() as u64,
        };
        self.json(request, true).await
    }

    /// Starts an instance and waits up to `wait` (at most 60 s) for it to
    /// end; the answer is its view either way, `status` saying which. A
    /// workflow whose steps all run inline (`noop` tasks, choices) has
    /// ended by the time its start is answered: that answer is the result,
    /// and no second request is sent.
    pub async fn run(
        &self,
        definition: &str,
        id: Option<&str>,
        input: &Json,
        wait: Duration,
    ) -> Result<Json, Error> {
        let started = self.start(definition, id, input).await?;
        if has_ended(&started) || wait.is_zero() {
            return Ok(started);
        }
        let id = started["id"]
            .as_str()
            .ok_or_else(|| Error::Protocol("start answered without an id".into()))?;
        self.result(id, wait).await
    }

    /// The first page of an instance's history (`{events, next_cursor}`).
    pub async fn history(&self, id: &str) -> Result<Json, Error> {
        self.history_page(id, Page::default()).await
    }

    /// A page of an instance's history: events after `page.cursor`.
    pub async fn history_page(&self, id: &str, page: Page) -> Result<Json, Error> {
        let id = id.to_owned();
        self.json(Request::History { id, page }, true).await
    }

    /// A page of an instance's step runs in path order (`{steps, next_cursor}`).
    pub async fn steps(&self, id: &str, page: Page) -> Result<Json, Error> {
        let id = id.to_owned();
        self.json(Request::Steps { id, page }, true).await
    }

    /// A page of instances.
    pub async fn list(&self, query: ListWorkflows) -> Result<Json, Error> {
        self.json(Request::List(query), true).await
    }

    /// Signals an instance; with `signal_id` a repeat is recognised and ignored.
    pub async fn signal(
        &self,
        workflow: &str,
        name: &str,
        signal_id: Option<&str>,
        payload: &Json,
    ) -> Result<Json, Error> {
        let request = Request::Signal {
            workflow: workflow.to_owned(),
            name: name.to_owned(),
            signal_id: signal_id.map(str::to_owned),
            payload: payload.to_string(),
        };
        self.json(request, signal_id.is_some()).await
    }

    /// Cancels an instance.
    pub async fn cancel(&self, workflow: &str, reason: Option<&str>) -> Result<Json, Error> {
        let request = Request::Cancel {
            workflow: workflow.to_owned(),
            reason: reason.map(str::to_owned),
        };
        self.json(request, false).await
    }

    /// Publishes an event to the instances awaiting it.
    pub async fn publish(
        &self,
        name: &str,
        event_id: &str,
        correlation_key: Option<&str>,
        payload: &Json,
    ) -> Result<Json, Error> {
        let request = Request::Publish {
            name: name.to_owned(),
            event_id: event_id.to_owned(),
            correlation_key: correlation_key.map(str::to_owned),
            payload: payload.to_string(),
        };
        self.json(request, true).await
    }

    /// Leases up to `max` tasks of `task_types`, waiting up to `wait` for one.
    pub async fn poll(
        &self,
        worker: &str,
        task_types: &[&str],
        max: u32,
        wait: Duration,
    ) -> Result<Vec<TaskAssignment>, Error> {
        let request = Request::Poll(PollTasks {
            worker: worker.to_owned(),
            task_types: task_types.iter().map(|t| (*t).to_owned()).collect(),
            max,
            wait_ms: wait.as_millis() as u64,
        });
        match self.request(request, false).await? {
            Response::Tasks(tasks) => Ok(tasks),
            other => Err(Error::Protocol(format!("unexpected answer {other:?}"))),
        }
    }

    /// Reports an attempt complete. `accepted: false` in the answer means
    /// the attempt was no longer in flight (a duplicate or late report).
    pub async fn complete(&self, token: &str, output: &Json) -> Result<Json, Error> {
        let request = Request::CompleteTask {
            token: token.to_owned(),
            output: output.to_string(),
        };
        self.json(request, true).await
    }

    /// Reports an attempt failed.
    pub async fn fail(
        &self,
        token: &str,
        code: &str,
        message: &str,
        retryable: bool,
    ) -> Result<Json, Error> {
        let request = Request::FailTask {
            token: token.to_owned(),
            code: code.to_owned(),
            message: message.to_owned(),
            retryable,
        };
        self.json(request, true).await
    }

    /// Extends an attempt's heartbeat deadline; `cancelled: true` in the
    /// answer means the worker should stop.
    pub async fn heartbeat(&self, token: &str, progress: Option<&Json>) -> Result<Json, Error> {
        let request = Request::Heartbeat {
            token: token.to_owned(),
            progress: progress.map(Json::to_string),
        };
        self.json(request, true).await
    }

    /// Opens a task stream with `credit`; pushes arrive on the receiver.
    pub(crate) async fn open_stream(
        &self,
        worker: &str,
        task_types: Vec<String>,
        credit: u32,
    ) -> Result<(Arc<Connection>, u64, mpsc::UnboundedReceiver<Response>), Error> {
        let conn = self.live().await?;
        let (id, rx) = conn.stream(Request::OpenTaskStream {
            worker: worker.to_owned(),
            task_types,
            credit,
        })?;
        Ok((conn, id, rx))
    }
}

fn generated_id(definition: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let salt = (fastrand_unit() * (1u64 << 52) as f64) as u64;
    format!("{definition}-{nanos:x}-{salt:x}")
}

/// Whether an instance view shows a terminal status (the node's terminal
/// statuses: nothing happens to such an instance any more).
fn has_ended(view: &Json) -> bool {
    matches!(
        view["status"].as_str(),
        Some("completed" | "failed" | "compensated" | "cancelled")
    )
}

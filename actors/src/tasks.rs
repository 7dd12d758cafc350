//! Running task attempts inside the node: the builtins (`noop`, `http`) and
//! handlers registered by an embedding program. Other task types are served
//! by workers from the outbox.

use crate::{Command, Services};
use serde_json::{Value as Json, json};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::task::AbortHandle;
use troupe_engine::engine::{ErrorInfo, EventKind, TaskDispatch};
pub use troupe_protocol::TaskError;

/// A task attempt handed to an in-process handler.
#[derive(Debug, Clone)]
pub struct TaskRequest {
    /// Instance id.
    pub instance: String,
    /// Task path.
    pub path: String,
    /// Task type.
    pub task_type: String,
    /// Attempt number.
    pub attempt: u32,
    /// Rendered input.
    pub input: Json,
    /// `{instance}/{path}/{attempt}`.
    pub idempotency_key: String,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Json, TaskError>> + Send>>;

/// An in-process task handler.
pub type TaskHandler = Arc<dyn Fn(TaskRequest) -> BoxFuture + Send + Sync>;

/// Task handlers registered by an embedding program, by task type.
#[derive(Clone, Default)]
pub struct TaskHandlers {
    handlers: HashMap<String, TaskHandler>,
}

impl TaskHandlers {
    /// Serves `task_type` with `handler` inside the node.
    pub fn register<F, Fut>(&mut self, task_type: &str, handler: F)
    where
        F: Fn(TaskRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Json, TaskError>> + Send + 'static,
    {
        self.handlers.insert(
            task_type.to_owned(),
            Arc::new(move |request| Box::pin(handler(request))),
        );
    }
}

/// Runs attempts of in-node task types.
pub(super) struct TaskRunner {
    services: Weak<Services>,
    handlers: TaskHandlers,
    http: reqwest::Client,
    running: Mutex<HashMap<(String, String), (u32, AbortHandle)>>,
}

impl TaskRunner {
    pub fn new(services: Weak<Services>, handlers: TaskHandlers) -> Self {
        let http = reqwest::Client::builder()
            .user_agent("troupe")
            .build()
            .expect("http client");
        Self {
            services,
            handlers,
            http,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Whether attempts of `task_type` run inside the node.
    pub fn runs(&self, task_type: &str) -> bool {
        matches!(task_type, "noop" | "http") || self.handlers.handlers.contains_key(task_type)
    }

    /// Starts an attempt of a task type it [runs](Self::runs); its outcome
    /// is delivered to the instance as an event.
    pub fn dispatch(self: &Arc<Self>, instance: &str, task: TaskDispatch) {
        let request = TaskRequest {
            instance: instance.to_owned(),
            path: task.path.clone(),
            task_type: task.task_type.clone(),
            attempt: task.attempt,
            input: task.input.clone(),
            idempotency_key: task.idempotency_key.clone(),
        };
        let run: BoxFuture = match task.task_type.as_str() {
            "noop" => Box::pin(std::future::ready(Ok(task.input.clone()))),
            "http" => Box::pin(http_task(
                self.http.clone(),
                request.clone(),
                task.start_to_close_ms,
            )),
            other => (self.handlers.handlers[other])(request.clone()),
        };
        let runner = self.clone();
        let key = (request.instance.clone(), request.path.clone());
        let handle = tokio::spawn(async move {
            let started = Instant::now();
            let result = run.await;
            let outcome = if result.is_ok() {
                "completed"
            } else {
                "failed"
            };
            metrics::histogram!(crate::metrics::TASK_SECONDS, "task_type" => request.task_type.clone(), "outcome" => outcome)
                .record(started.elapsed().as_secs_f64());
            runner.finished(&request, result);
        });
        self.running
            .lock()
            .expect("running lock")
            .insert(key, (task.attempt, handle.abort_handle()));
    }

    /// Stops an attempt if it is still running here; returns whether it was.
    pub fn cancel(&self, instance: &str, path: &str, attempt: u32) -> bool {
        let mut running = self.running.lock().expect("running lock");
        let key = (instance.to_owned(), path.to_owned());
        if running.get(&key).is_some_and(|(a, _)| *a == attempt) {
            let (_, handle) = running.remove(&key).expect("checked");
            handle.abort();
            true
        } else {
            false
        }
    }

    fn finished(&self, request: &TaskRequest, result: Result<Json, TaskError>) {
        {
            let mut running = self.running.lock().expect("running lock");
            let key = (request.instance.clone(), request.path.clone());
            if running
                .get(&key)
                .is_some_and(|(a, _)| *a == request.attempt)
            {
                running.remove(&key);
            }
        }
        let Some(services) = self.services.upgrade() else {
            return;
        };
        let (path, attempt) = (request.path.clone(), request.attempt);
        let event = match result {
            Ok(output) => EventKind::TaskCompleted {
                path,
                attempt,
                output,
            },
            Err(e) => EventKind::TaskFailed {
                path,
                attempt,
                error: ErrorInfo::new(e.code, e.message),
                retryable: e.retryable,
            },
        };
        services
            .router()
            .cast(&request.instance, Command::Event(event));
    }
}

/// The `http` builtin: input `{method, url, headers?, body?, timeout?}`,
/// output `{status, headers, body}`.
async fn http_task(
    client: reqwest::Client,
    request: TaskRequest,
    start_to_close_ms: u64,
) -> Result<Json, TaskError> {
    let input = &request.input;
    let invalid = |m: &str| TaskError::permanent("http_invalid_input", m);
    let url = input
        .get("url")
        .and_then(Json::as_str)
        .ok_or_else(|| invalid("input.url must be a string"))?;
    let method = input.get("method").and_then(Json::as_str).unwrap_or("GET");
    let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| invalid("input.method is not an HTTP method"))?;
    let timeout = match input.get("timeout").and_then(Json::as_str) {
        Some(text) => humantime::parse_duration(text)
            .map_err(|_| invalid("input.timeout is not a duration"))?,
        None => Duration::from_millis(start_to_close_ms),
    };
    let mut builder = client
        .request(method, url)
        .timeout(timeout)
        .header("Idempotency-Key", &request.idempotency_key);
    if let Some(headers) = input.get("headers").and_then(Json::as_object) {
        for (name, value) in headers {
            let value = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            builder = builder.header(name.as_str(), value);
        }
    }
    match input.get("body") {
        None | Some(Json::Null) => {}
        Some(Json::String(text)) => builder = builder.body(text.clone()),
        Some(body) => builder = builder.json(body),
    }
    let response = builder.send().await.map_err(|e| {
        if e.is_timeout() {
            TaskError::transient("http_timeout", e.to_string())
        } else if e.is_builder() {
            TaskError::permanent("http_invalid_input", e.to_string())
        } else {
            TaskError::transient("http_connect", e.to_string())
        }
    })?;
    let status = response.status();
    let headers: serde_json::Map<String, Json> = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                Json::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| TaskError::transient("http_timeout", e.to_string()))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_slice(&bytes).unwrap_or(Json::String(text.clone()));
    let code = status.as_u16();
    let short: String = text.chars().take(200).collect();
    match code {
        200..=299 => Ok(json!({"status": code, "headers": headers, "body": body})),
        408 | 429 => Err(TaskError::transient(
            format!("http_{code}"),
            format!("{status}: {short}"),
        )),
        500..=599 => Err(TaskError::transient(
            "http_5xx",
            format!("{status}: {short}"),
        )),
        400..=499 => Err(TaskError::permanent(
            "http_4xx",
            format!("{status}: {short}"),
        )),
        _ => Err(TaskError::permanent(
            "http_status",
            format!("unexpected {status}"),
        )),
    }
}
